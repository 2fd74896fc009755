"""Image-to-video (and an image prompt) from an uploaded asset, through every adapter that
takes an input image, each against its vendor fake: the fake must get the image in the
form its vendor documents, byte for byte.

- Runway: a data URI within 5 MB; above that, its ephemeral upload (POST /v1/uploads,
  then a presigned multipart POST) and a runway:// URI.
- Luma: a URL only: a presigned URL of the asset on S3 (the moto emulator), fetched by
  the fake; with local storage, FAILED_PRECONDITION naming the storage setting.
- Kling: bare base64, within Kling's limits, or re-encoded when fit_input is set.
- Pika (fal): a presigned URL on S3, else a data URI up to 10 MiB.
- Stability (retired contract): a multipart file of an exact size, or fitted to one.
- Midjourney: a URL in front of the prompt on S3, else the base64 image prompt.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_status import rpc_status
from PIL import Image

from clients import AsyncMediagenClient
from mediagen.v1 import asset_pb2, common_pb2
from providers.retry import RetryPolicy
from tests.fakes.fal import FAL_KEY, FakeFal
from tests.fakes.kling import ACCESS_KEY, SECRET_KEY, FakeKling
from tests.fakes.luma import FakeLuma
from tests.fakes.midjourney import MJ_SECRET, FakeMidjourneyProxy
from tests.fakes.runway import FakeRunway
from tests.fakes.server import FakeVendorServer
from tests.fakes.stability import STABILITY_KEY, FakeStability
from tests.helpers import Env, bad_fields, error_reason, noise_png, png, vendor_env
from tests.s3_emulator import S3Emulator, s3_emulator  # noqa: F401 - the fixture

VIDEO = common_pb2.MEDIA_TYPE_VIDEO
IMAGE = common_pb2.MEDIA_TYPE_IMAGE
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0)
Code = grpc.StatusCode
MiB = 1024 * 1024


def s3_settings(emulator: S3Emulator) -> dict[str, object]:
    return {
        "storage": "s3",
        "s3_bucket": emulator.new_bucket(),
        "s3_prefix": "mg",
        "s3_endpoint_url": emulator.endpoint_url,
        "s3_region": emulator.region,
        "s3_path_style": True,
    }


async def upload(env: Env, data: bytes, name: str = "frame.png") -> asset_pb2.Asset:
    path = env.data_dir.parent / name
    path.write_bytes(data)
    async with AsyncMediagenClient(channel=env.channel) as client:
        return await client.upload(path)


def asset_input(asset: asset_pb2.Asset) -> dict[str, str]:
    return {"asset_id": asset.id}


async def refused(env: Env, **fields) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.generate(**fields)
    return err.value


def decoded(data: bytes) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return image.format or "", image.size


# --- Runway ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def runway_env(monkeypatch, tmp_path) -> AsyncIterator[Env]:
    with FakeVendorServer() as api, FakeVendorServer() as cdn:
        fake = FakeRunway(api, cdn=cdn)
        async with vendor_env(
            monkeypatch,
            tmp_path,
            VIDEO,
            "runway",
            {"RUNWAY_BASE_URL": api.url, "RUNWAYML_API_SECRET": fake.key},
            unset=("RUNWAY_API_KEY",),
            retry=FAST,
            fake=fake,
            cdn=cdn,
            defaults={"prompt": "the waves roll in", "model": "gen4_turbo", "duration_seconds": 5},
        ) as env:
            yield env


async def test_runway_small_asset_goes_as_a_data_uri(monkeypatch, tmp_path):
    async with runway_env(monkeypatch, tmp_path) as env:
        image = png(1280, 720)
        asset = await upload(env, image)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (task,) = env.fake.tasks.values()
        assert task.body["promptImage"].startswith("data:image/png;base64,")
        assert task.image == image
        assert env.fake.server.calls("POST", "/v1/uploads") == []


async def test_runway_large_asset_goes_through_runways_upload(monkeypatch, tmp_path):
    async with runway_env(monkeypatch, tmp_path) as env:
        image = noise_png(1900, 1900)  # ~10 MiB: far above what a 5 MB data URI holds
        asset = await upload(env, image)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (slot,) = env.fake.server.calls("POST", "/v1/uploads")
        assert slot.json() == {"filename": "input.png", "type": "ephemeral"}
        (sent,) = env.cdn.calls("POST", "/runway-uploads")
        # The presigned POST gets neither the API key nor the version header, and a length.
        assert "authorization" not in sent.headers and "x-runway-version" not in sent.headers
        assert int(sent.headers["content-length"]) == len(sent.body)
        (task,) = env.fake.tasks.values()
        assert task.body["promptImage"].startswith("runway://")
        assert task.image == image
        (upload_slot,) = env.fake.uploads.values()
        assert upload_slot.content_type == "image/png"


async def test_runway_large_inline_image_goes_through_the_upload_too(monkeypatch, tmp_path):
    async with runway_env(monkeypatch, tmp_path) as env:
        image = noise_png(1250, 1250)  # ~4.5 MiB: a 6 MB data URI
        job = await env.run(input_image={"data": base64.b64encode(image).decode()})
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (task,) = env.fake.tasks.values()
        assert task.body["promptImage"].startswith("runway://") and task.image == image


async def test_runway_upload_host_errors_are_retried_then_reported(monkeypatch, tmp_path):
    from tests.fakes.server import server_error

    async with runway_env(monkeypatch, tmp_path) as env:
        asset = await upload(env, noise_png(1900, 1900))
        env.cdn.fail_next("POST", "/runway-uploads", server_error(503), times=1)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        assert len(env.cdn.calls("POST", "/runway-uploads")) == 2
        env.cdn.fail_next("POST", "/runway-uploads", server_error(403, "<Error><Code>AccessDenied</Code></Error>"))
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_FAILED
        assert error_reason(job.error)[0] == "PROVIDER_INVALID_REQUEST"
        assert len(env.fake.tasks) == 1  # no task was created for the failed upload


# --- Luma -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def luma_env(monkeypatch, tmp_path, settings=None) -> AsyncIterator[Env]:
    with FakeVendorServer() as api, FakeVendorServer() as cdn:
        fake = FakeLuma(api, cdn=cdn)
        fake.fetch_inputs = fake.allow_http_inputs = True
        async with vendor_env(
            monkeypatch,
            tmp_path,
            VIDEO,
            "luma",
            {"LUMA_BASE_URL": fake.base_url, "LUMAAI_API_KEY": fake.key},
            unset=("LUMA_API_KEY",),
            retry=FAST,
            settings=settings,
            fake=fake,
            cdn=cdn,
            defaults={"prompt": "the waves roll in"},
        ) as env:
            yield env


async def test_luma_gets_a_presigned_url_of_an_asset_on_s3(monkeypatch, tmp_path, s3_emulator):  # noqa: F811
    async with luma_env(monkeypatch, tmp_path, s3_settings(s3_emulator)) as env:
        image = png(1280, 720, "JPEG")
        asset = await upload(env, image, "frame.jpg")
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (generation,) = env.fake.generations.values()
        url = generation.body["keyframes"]["frame0"]["url"]
        assert url.startswith(s3_emulator.endpoint_url) and f"/mg/default/assets/{asset.id}.jpg" in url
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=" in url
        assert generation.frames["frame0"] == image  # fetched by the vendor from the presigned URL


async def test_luma_refuses_an_asset_on_local_storage_naming_the_setting(monkeypatch, tmp_path):
    async with luma_env(monkeypatch, tmp_path) as env:
        asset = await upload(env, png(1280, 720))
        error = await refused(env, input_image=asset_input(asset))
        assert error.code() == Code.FAILED_PRECONDITION
        reason, info = error_reason(rpc_status.from_call(error))
        assert reason == "INPUT_URL_UNAVAILABLE" and info["setting"] == "storage"
        assert 'storage = "s3"' in error.details()
        # Inline bytes have nothing Luma could fetch either.
        error = await refused(env, input_image={"data": base64.b64encode(png(64, 64)).decode()})
        assert error.code() == Code.INVALID_ARGUMENT and "input_image" in bad_fields(error)
        assert env.fake.creates() == []


# --- Kling -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def kling_env(monkeypatch, tmp_path) -> AsyncIterator[Env]:
    with FakeVendorServer() as api, FakeVendorServer() as cdn:
        fake = FakeKling(api, cdn=cdn)
        async with vendor_env(
            monkeypatch,
            tmp_path,
            VIDEO,
            "kling",
            {"KLING_BASE_URL": api.url, "KLING_ACCESS_KEY": ACCESS_KEY, "KLING_SECRET_KEY": SECRET_KEY},
            unset=("KLING_API_KEY",),
            retry=FAST,
            fake=fake,
            cdn=cdn,
            defaults={"prompt": "the waves roll in"},
        ) as env:
            yield env


async def test_kling_gets_bare_base64_of_an_asset(monkeypatch, tmp_path):
    async with kling_env(monkeypatch, tmp_path) as env:
        image = png(1280, 720)
        asset = await upload(env, image)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (task,) = env.fake.tasks.values()
        assert task.kind == "image2video" and task.image == image
        assert not task.body["image"].startswith("data:")


async def test_kling_limits_refuse_or_fit_when_asked(monkeypatch, tmp_path):
    async with kling_env(monkeypatch, tmp_path) as env:
        small = await upload(env, png(200, 200), "small.png")
        webp = await upload(env, png(800, 200, "WEBP"), "wide.webp")  # 4:1, and WebP
        for asset, expected in ((small, "TOO_SMALL"), (webp, "UNSUPPORTED_VALUE")):
            error = await refused(env, input_image=asset_input(asset))
            assert error.code() == Code.INVALID_ARGUMENT, error.details()
            assert bad_fields(error) == ["input_image.asset_id"]
            assert "fit_input" in error.details() or expected == "TOO_SMALL"
        assert env.fake.creates() == []

        for asset in (small, webp):
            job = await env.run(input_image=asset_input(asset), provider_options={"fit_input": True})
            assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
            image = list(env.fake.tasks.values())[-1].image
            kind, (width, height) = decoded(image)
            assert kind == "JPEG" and min(width, height) >= 300 and max(width / height, height / width) <= 2.5


# --- Pika (fal) ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pika_env(monkeypatch, tmp_path, settings=None) -> AsyncIterator[Env]:
    with FakeVendorServer() as api, FakeVendorServer() as cdn:
        fake = FakeFal(api, cdn=cdn)
        fake.fetch_inputs = fake.allow_http_inputs = True
        async with vendor_env(
            monkeypatch,
            tmp_path,
            VIDEO,
            "pika",
            {"FAL_BASE_URL": api.url, "FAL_KEY": FAL_KEY},
            unset=("PIKA_API_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"),
            retry=FAST,
            settings=settings,
            fake=fake,
            cdn=cdn,
            defaults={"prompt": "the waves roll in"},
        ) as env:
            yield env


async def test_pika_gets_a_data_uri_with_local_storage(monkeypatch, tmp_path):
    async with pika_env(monkeypatch, tmp_path) as env:
        image = png(1280, 720)
        asset = await upload(env, image)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        request = env.fake.only()
        assert request.input["image_url"].startswith("data:image/png;base64,")
        assert request.image == image


async def test_pika_gets_a_presigned_url_with_s3(monkeypatch, tmp_path, s3_emulator):  # noqa: F811
    async with pika_env(monkeypatch, tmp_path, s3_settings(s3_emulator)) as env:
        image = noise_png(1700, 1700)  # ~8 MiB: by URL, whatever its size
        asset = await upload(env, image)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        request = env.fake.only()
        assert request.input["image_url"].startswith(s3_emulator.endpoint_url)
        assert request.image == image


async def test_pika_data_uri_limit_refuses_or_fits(monkeypatch, tmp_path):
    async with pika_env(monkeypatch, tmp_path) as env:
        asset = await upload(env, noise_png(1950, 1950))  # ~11 MiB
        assert asset.size_bytes > 10 * MiB
        error = await refused(env, input_image=asset_input(asset))
        assert error.code() == Code.INVALID_ARGUMENT and bad_fields(error) == ["input_image.asset_id"]
        assert "fit_input" in error.details()
        job = await env.run(input_image=asset_input(asset), provider_options={"fit_input": True})
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        image = env.fake.only().image
        assert image is not None and len(image) <= 10 * MiB
        assert decoded(image)[0] == "JPEG"


# --- Stability (retired image-to-video contract) ---------------------------------------------


@contextlib.asynccontextmanager
async def stability_env(monkeypatch, tmp_path) -> AsyncIterator[Env]:
    with FakeVendorServer() as api:
        fake = FakeStability(api)
        async with vendor_env(
            monkeypatch,
            tmp_path,
            VIDEO,
            "stability",
            {"STABILITY_BASE_URL": api.url, "STABILITY_API_KEY": STABILITY_KEY},
            unset=("STABILITY_KEY",),
            retry=FAST,
            fake=fake,
            defaults={"prompt": "make it move"},
        ) as env:
            yield env


async def test_stability_gets_the_asset_as_a_multipart_file(monkeypatch, tmp_path):
    async with stability_env(monkeypatch, tmp_path) as env:
        image = png(1024, 576)
        asset = await upload(env, image)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (video,) = env.fake.videos.values()
        assert video.image == image and video.size == (1024, 576)


async def test_stability_exact_sizes_refuse_or_fit(monkeypatch, tmp_path):
    async with stability_env(monkeypatch, tmp_path) as env:
        asset = await upload(env, png(800, 600))
        error = await refused(env, input_image=asset_input(asset))
        assert error.code() == Code.INVALID_ARGUMENT and bad_fields(error) == ["input_image.asset_id"]
        assert env.fake.videos == {}
        job = await env.run(input_image=asset_input(asset), provider_options={"fit_input": True})
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (video,) = env.fake.videos.values()
        assert decoded(video.image) == ("PNG", (768, 768))  # 4:3 is nearest to 1:1


# --- Midjourney (an image prompt) -------------------------------------------------------------


@contextlib.asynccontextmanager
async def midjourney_env(monkeypatch, tmp_path, settings=None) -> AsyncIterator[Env]:
    with FakeVendorServer() as api:
        fake = FakeMidjourneyProxy(api)
        fake.fetch_inputs = fake.allow_http_inputs = True
        async with vendor_env(
            monkeypatch,
            tmp_path,
            IMAGE,
            "midjourney",
            {"MIDJOURNEY_BASE_URL": fake.base_url, "MIDJOURNEY_API_SECRET": MJ_SECRET},
            unset=("MJ_API_SECRET",),
            settings=settings,
            fake=fake,
            defaults={"prompt": "a lighthouse at dusk"},
        ) as env:
            yield env


async def test_midjourney_image_prompt_from_an_asset(monkeypatch, tmp_path, s3_emulator):  # noqa: F811
    image = png(512, 512)
    async with midjourney_env(monkeypatch, tmp_path) as env:
        asset = await upload(env, image)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (task,) = env.fake.tasks.values()
        assert task.body["base64"].startswith("data:image/png;base64,") and task.images == [image]
    async with midjourney_env(monkeypatch, tmp_path / "s3", s3_settings(s3_emulator)) as env:
        asset = await upload(env, image)
        job = await env.run(input_image=asset_input(asset))
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        (task,) = env.fake.tasks.values()
        assert task.prompt.startswith(s3_emulator.endpoint_url) and task.prompt.endswith("a lighthouse at dusk")
        assert "base64" not in task.body and task.images == [image]


# --- the catalog -----------------------------------------------------------------------------


async def test_the_catalog_states_input_forms_and_limits(monkeypatch, tmp_path):
    async with runway_env(monkeypatch, tmp_path) as env:
        expected = {
            ("runway", VIDEO): ["url", "data_uri", "upload"],
            ("luma", VIDEO): ["url"],
            ("kling", VIDEO): ["url", "base64"],
            ("pika", VIDEO): ["url", "data_uri"],
            ("stability", VIDEO): ["multipart"],
            ("midjourney", IMAGE): ["url", "data_uri"],
        }
        for (name, media_type), forms in expected.items():
            entry = env.server.registry.get(media_type, name).describe()
            assert list(entry.limits.input_forms) == forms, name
            # Luma's Dream Machine API states no size for images it fetches.
            assert (entry.limits.max_input_bytes > 0) == (name != "luma"), name
        assert env.server.registry.get(VIDEO, "stability").describe().limits.max_input_pixels == 1024 * 576
