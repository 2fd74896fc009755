"""The retired Stability video adapter against a compatible fake server, end to end over gRPC."""

from __future__ import annotations

import base64

import grpc
import pytest
from google.rpc import code_pb2
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2, video_pb2
from providers.base import JobContext
from providers.errors import InvalidArgument
from providers.mock.media import probe
from providers.retry import RetryPolicy
from tests.fakes.server import FakeVendorServer, error_reply, malformed_json, rate_limited
from tests.fakes.stability import STABILITY_KEY, FakeStability, moderation_refusal
from tests.helpers import Env, bad_fields, error_reason, png, vendor_env

VIDEO = common_pb2.MEDIA_TYPE_VIDEO
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0)
SUBMIT = "/v2beta/image-to-video"
RESULT = "/v2beta/image-to-video/result/{id}"


def inline(data: bytes) -> dict[str, str]:
    return {"data": base64.b64encode(data).decode()}


async def _env(monkeypatch, tmp_path, *, key: str | None = STABILITY_KEY):
    with FakeVendorServer() as api, FakeVendorServer() as images:
        fake = FakeStability(api)
        variables = {"STABILITY_BASE_URL": api.url}
        if key is not None:
            variables["STABILITY_API_KEY"] = key
        async with vendor_env(
            monkeypatch,
            tmp_path,
            VIDEO,
            "stability",
            variables,
            unset=("STABILITY_API_KEY", "STABILITY_KEY"),
            retry=FAST,
            fake=fake,
            cdn=images,
            # input_image=None leaves the image out
            defaults={"prompt": "make it move", "input_image": inline(png(1024, 576))},
        ) as env:
            yield env


@pytest.fixture
async def svd(monkeypatch, tmp_path):
    async for env in _env(monkeypatch, tmp_path):
        yield env


async def test_image_to_video_end_to_end(svd, tmp_path):
    picture = png(1024, 576)
    job = await svd.generate(
        input_image=inline(picture),
        seed=99,
        provider_options={"cfg_scale": 2.5, "motion_bucket_id": 90},
    )
    assert job.model == "stable-video-diffusion"
    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_CREDIT
    assert job.estimated_cost.units == 20 and job.estimated_cost.amount_micros == 200_000
    call = svd.stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job.id), timeout=20)
    events = [r.event async for r in call]
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error

    (submit,) = svd.fake.server.calls("POST", SUBMIT)
    assert submit.headers["authorization"] == f"Bearer {STABILITY_KEY}"
    (video,) = svd.fake.videos.values()
    assert video.image == picture
    assert video.form == {"seed": "99", "cfg_scale": "2.5", "motion_bucket_id": "90"}
    assert final.vendor_job_id == video.id and len(video.id) == 64
    assert any(e.job.progress.vendor_status == "in-progress" for e in events)
    # Polled until 200, then fetched once more (streamed) to store it; always as video/*.
    assert video.fetches == ["video/*", "video/*"]

    (artifact,) = final.artifacts
    assert artifact.content_type == "video/mp4"
    assert (artifact.width, artifact.height) == (1024, 576)
    assert abs(artifact.duration_seconds - 2.0) < 0.1
    assert artifact.metadata == {"seed": "99", "finishReason": "SUCCESS"}
    call = svd.stub.DownloadVideo(video_pb2.DownloadVideoRequest(job_id=job.id))
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"".join([m.data async for m in call]))
    assert probe(path).content_type == "video/mp4"
    assert final.final_cost.amount_micros == 200_000
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED


async def submit_direct(env: Env, uri: str):
    """The adapter's submit for an input image at ``uri`` (the server only takes https URIs,
    and the fake image host speaks http, so this goes past the gRPC layer)."""
    provider = env.server.registry.get(VIDEO, "stability")
    request = video_pb2.GenerateVideoRequest(
        provider="stability", prompt="move", input_image=common_pb2.MediaInput(uri=uri)
    )
    return await provider.submit(request, "stable-video-diffusion", JobContext(job_id="job_1"))


async def test_image_given_by_uri_is_fetched_and_uploaded(svd):
    picture = png(768, 768, "JPEG")
    svd.cdn.route("GET", "/in/square.jpg", (200, picture, {"Content-Type": "image/jpeg"}))
    handle = await submit_direct(svd, f"{svd.cdn.url}/in/square.jpg")
    video = svd.fake.videos[handle.vendor_job_id]
    assert video.image == picture and video.size == (768, 768)
    # The image host never sees the Stability key.
    (fetch,) = svd.cdn.calls("GET", "/in/square.jpg")
    assert "authorization" not in fetch.headers


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ((200, png(640, 480), {"Content-Type": "image/png"}), "1024x576"),
        (error_reply(404, "gone"), "could not be fetched"),
    ],
)
async def test_an_unusable_image_uri_is_invalid_argument(svd, reply, message):
    svd.cdn.route("GET", "/in/bad.png", reply)
    with pytest.raises(InvalidArgument) as caught:
        await submit_direct(svd, f"{svd.cdn.url}/in/bad.png")
    assert message in caught.value.message
    assert caught.value.field_violations[0].field == "input_image.uri"
    assert svd.fake.server.requests == []


async def test_an_image_uri_on_the_api_is_refused(svd):
    with pytest.raises(InvalidArgument):
        await submit_direct(svd, f"{svd.fake.server.url}/v1/user/balance")
    assert svd.fake.server.requests == []


#: (request fields, the field the refusal must name)
API_COULD_NOT = [
    ({"input_image": None}, "input_image"),
    ({"input_image": inline(png(640, 480))}, "input_image.data"),
    ({"input_image": inline(png(1024, 576, "WEBP"))}, "input_image.data"),
    ({"input_image": {"asset_id": "a1"}}, "input_image.asset_id"),
    ({"duration_seconds": 4}, "duration_seconds"),
    ({"negative_prompt": "blur"}, "negative_prompt"),
    ({"fps": 24}, "fps"),
    ({"aspect_ratio": "9:16"}, "aspect_ratio"),
    ({"width": 576, "height": 1024}, "width"),
    ({"width": 640, "height": 360}, "width"),
    ({"seed": 4294967295}, "seed"),
    ({"provider_options": {"motion_bucket_id": 300}}, "provider_options.motion_bucket_id"),
    ({"provider_options": {"motion_bucket_id": 1.5}}, "provider_options.motion_bucket_id"),
    ({"provider_options": {"cfg_scale": -1}}, "provider_options.cfg_scale"),
    ({"provider_options": {"frames": 25}}, "provider_options.frames"),
    ({"model": "svd-xt"}, "model"),
]


async def test_what_the_api_could_not_do_is_refused_before_any_call(svd):
    for fields, field in API_COULD_NOT:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await svd.generate(**fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert field in bad_fields(caught.value), (fields, bad_fields(caught.value))
    assert svd.fake.server.requests == []


async def test_catalog_marks_it_retired_and_it_is_never_the_default(svd):
    entry = (
        await svd.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="stability", media_type=VIDEO)
        )
    ).provider
    assert entry.configured and entry.retired and not entry.default
    assert entry.retire_time.ToDatetime().date().isoformat() == "2025-07-24"
    assert "2025-07-24" in entry.retired_note
    assert entry.limits.input_image_required
    assert list(entry.limits.sizes) == ["1024x576", "576x1024", "768x768"]
    (model,) = entry.models
    assert model.retired and not model.default
    assert svd.server.registry.default_name(VIDEO) != "stability"


async def test_missing_key_is_failed_precondition(monkeypatch, tmp_path):
    async for env in _env(monkeypatch, tmp_path, key=None):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.generate()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "STABILITY_API_KEY" in caught.value.details()
        assert error_reason(rpc_status.from_call(caught.value))[0] == "PROVIDER_NOT_CONFIGURED"


async def test_a_filtered_clip_is_content_rejected(svd):
    svd.fake.video_outcome = "filtered"
    final = await svd.run()
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert error_reason(final.error)[0] == "CONTENT_REJECTED"
    assert svd.stored_files() == []


async def test_moderation_refusal_at_submit(svd):
    svd.fake.server.fail_next("POST", SUBMIT, moderation_refusal())
    final = await svd.run()
    assert final.error.code == code_pb2.INVALID_ARGUMENT
    assert error_reason(final.error)[0] == "CONTENT_REJECTED"


async def test_an_expired_result_fails_the_job(svd):
    svd.fake.server.fail_next(
        "GET", RESULT, error_reply(404, {"id": "e9", "name": "not_found", "errors": ["expired"]})
    )
    final = await svd.run()
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.error.code == code_pb2.ABORTED
    assert error_reason(final.error)[0] == "PROVIDER_JOB_FAILED"


async def test_result_polls_honour_retry_after(svd):
    svd.fake.server.fail_next("GET", RESULT, rate_limited(0.4))
    final = await svd.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    first, second = svd.fake.server.calls("GET", RESULT)[:2]
    assert second.at - first.at >= 0.39


async def test_submit_answer_without_an_id_is_a_bad_response(svd):
    svd.fake.server.fail_next("POST", SUBMIT, malformed_json())
    final = await svd.run()
    assert final.error.code == code_pb2.UNAVAILABLE
    assert error_reason(final.error)[0] == "PROVIDER_BAD_RESPONSE"
    assert len(svd.fake.server.calls("POST", SUBMIT)) == 1


async def test_cancel_has_no_vendor_call(svd):
    svd.fake.video_polls = 10_000
    job = await svd.generate()
    cancelled = (await svd.stub.CancelVideoJob(video_pb2.CancelVideoJobRequest(job_id=job.id))).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    assert {r.method for r in svd.fake.server.requests} <= {"POST", "GET"}
