"""The OpenAI images adapter end to end: gRPC -> MediagenServer -> adapter -> fake OpenAI over real HTTP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import time
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2, image_pb2
from providers.base import JobContext, VendorHandle
from providers.errors import ProviderBadResponse, ProviderOutputUnavailable
from providers.image import openai_images
from providers.image.openai_images import OpenAIImages, _ImagesAnswer
from providers.mock.media import probe
from providers.retry import RetryPolicy
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.openai_images import (
    OPENAI_KEY,
    FakeOpenAIImages,
    insufficient_quota,
    rate_limit_exceeded,
)
from tests.fakes.server import (
    FakeVendorServer,
    dropped,
    malformed_json,
    server_error,
    slow,
    truncated,
)
from tests.helpers import Env, bad_fields, error_reason, png, serving, set_env

Code = grpc.StatusCode
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0, max_attempts=4)
IMAGE = common_pb2.MEDIA_TYPE_IMAGE


class OpenAIEnv(Env):
    """An Env that also shows the adapter's spool of fetched images."""

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool" / "openai-images"

    def spooled(self) -> list[str]:
        return sorted(os.listdir(self.spool)) if self.spool.exists() else []


@pytest.fixture
def fake():
    with FakeVendorServer() as server:
        yield FakeOpenAIImages(server)


@pytest.fixture
async def start(fake, tmp_path, monkeypatch):
    """Start a server with the given env and settings; stopped after the test."""

    async def _start(key: str | None = OPENAI_KEY, **overrides) -> OpenAIEnv:
        variables = {"OPENAI_BASE_URL": fake.base_url}
        unset = ["OPENAI_ORG_ID", "OPENAI_PROJECT_ID"]
        if key is None:
            unset.append("OPENAI_API_KEY")
        else:
            variables["OPENAI_API_KEY"] = key
        set_env(monkeypatch, variables, unset)
        monkeypatch.setattr(openai_images, "RETRY", FAST)
        monkeypatch.setattr(openai_images, "TIMEOUT", httpx.Timeout(1.0))
        server = MediagenServer(make_settings(tmp_path, **overrides))
        server.runner.output_retry = FAST
        channel = await servers.enter_async_context(serving(server))
        return OpenAIEnv(
            server,
            channel,
            IMAGE,
            "openai",
            fake=fake,
            defaults={"prompt": "a lighthouse at dusk"},
            watch_timeout=None,
        )

    async with contextlib.AsyncExitStack() as servers:
        yield _start


@pytest.fixture
async def env(start):
    return await start()


# --- success ----------------------------------------------------------------------


async def test_gpt_image_two_images_one_job(env):
    job = await env.run(count=2, aspect_ratio="3:2", format="IMAGE_FORMAT_PNG", provider_options={"background": "opaque"})
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    (call,) = env.fake.generations()
    sent = call.json()
    assert call.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent == {
        "model": "gpt-image-1",
        "prompt": "a lighthouse at dusk",
        "n": 2,
        "size": "1536x1024",
        "output_format": "png",
        "background": "opaque",
    }
    assert len(job.artifacts) == 2
    for index, artifact in enumerate(job.artifacts):
        data = await env.download(job.id, index)
        assert hashlib.sha256(data).hexdigest() == artifact.sha256 and len(data) == artifact.size_bytes
        info = probe(io.BytesIO(data))
        assert info.content_type == "image/png" and (info.width, info.height) == (1536 // 8, 1024 // 8)
        assert (artifact.width, artifact.height) == (192, 128)
        assert artifact.metadata["size"] == "1536x1024" and artifact.metadata["output_format"] == "png"
    assert job.artifacts[0].sha256 != job.artifacts[1].sha256
    # Estimate: quality auto is priced as high (upper bound), a non-square size: $0.25 each.
    assert job.estimated_cost.amount_micros == 500_000
    assert job.estimated_cost.basis == common_pb2.COST_BASIS_ESTIMATED
    # Final: from the reported tokens: 50 text in at $5/M + 2112 image out at $40/M.
    assert job.final_cost.basis == common_pb2.COST_BASIS_VENDOR_REPORTED
    assert abs(job.final_cost.amount_micros - (50 * 5 + 2112 * 40)) <= 2
    assert env.spooled() == []  # stored, then the spool was emptied


async def test_mini_webp_measured_cost(env):
    job = await env.run(model="gpt-image-1-mini", quality="low", format="IMAGE_FORMAT_WEBP", width=1024, height=1024)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    sent = env.fake.generations()[0].json()
    assert sent["quality"] == "low" and sent["output_format"] == "webp" and sent["size"] == "1024x1024"
    data = await env.download(job.id)
    assert probe(io.BytesIO(data)).content_type == "image/webp"
    assert job.artifacts[0].content_type == "image/webp"
    assert job.estimated_cost.amount_micros == 5_000
    assert job.final_cost.amount_micros == 5_000 and job.final_cost.basis == common_pb2.COST_BASIS_MEASURED


async def test_gpt_image_2_takes_free_sizes(env):
    job = await env.run(model="gpt-image-2", width=1280, height=720)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert env.fake.generations()[0].json()["size"] == "1280x720"
    assert (job.artifacts[0].width, job.artifacts[0].height) == (160, 90)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.generate(model="gpt-image-2", width=1000, height=1000)
    assert err.value.code() == Code.INVALID_ARGUMENT and "width" in bad_fields(err.value)


async def test_dall_e_3_is_retired(env):
    job = await env.run(model="dall-e-3")
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.code == Code.FAILED_PRECONDITION.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_RETIRED"
    assert "deprecated" in job.error.message


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
async def test_dall_e_3_on_a_stand_in_keeps_the_revised_prompt(env, response_format):
    env.fake.dalle_retired = False
    job = await env.run(
        model="dall-e-3", style="natural", quality="hd", aspect_ratio="7:4", provider_options={"response_format": response_format}
    )
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    sent = env.fake.generations()[0].json()
    assert sent == {
        "model": "dall-e-3",
        "prompt": "a lighthouse at dusk",
        "n": 1,
        "size": "1792x1024",
        "quality": "hd",
        "style": "natural",
        "response_format": response_format,
    }
    artifact = job.artifacts[0]
    assert artifact.metadata["revised_prompt"] == "A detailed rendering of: a lighthouse at dusk"
    assert (artifact.width, artifact.height) == (1792 // 8, 1024 // 8)
    assert job.final_cost.amount_micros == 120_000  # hd, wide
    assert len(env.fake.server.calls("GET", "/files/{name}")) == (1 if response_format == "url" else 0)
    assert env.spooled() == []


# --- failures -----------------------------------------------------------------------------


async def test_moderation_is_content_rejected(env):
    job = await env.run(prompt="something [moderated]")
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.code == Code.INVALID_ARGUMENT.value[0]
    assert error_reason(job.error)[0] == "CONTENT_REJECTED"
    assert env.stored_files(partial=False) == [] and env.spooled() == []


async def test_wrong_key_is_auth_failed(start):
    env = await start(key="sk-wrong-key-123456")
    job = await env.run()
    assert job.error.code == Code.FAILED_PRECONDITION.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_AUTH_FAILED"
    assert "sk-wrong-key-123456" not in job.error.message


async def test_missing_key_is_not_configured(start):
    env = await start(key=None)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.generate()
    assert err.value.code() == Code.FAILED_PRECONDITION
    status = rpc_status.from_call(err.value)
    assert error_reason(status)[0] == "PROVIDER_NOT_CONFIGURED"
    assert "OPENAI_API_KEY" in err.value.details()
    request = catalog_pb2.GetProviderRequest(name="openai", media_type=common_pb2.MEDIA_TYPE_IMAGE)
    entry = (await env.catalog.GetProvider(request)).provider
    assert not entry.configured and entry.not_configured_reason == "set OPENAI_API_KEY"
    assert env.fake.generations() == []


async def test_insufficient_quota_is_not_retried(env):
    env.fake.server.fail_next("POST", "/v1/images/generations", insufficient_quota(), times=5)
    job = await env.run()
    assert job.error.code == Code.RESOURCE_EXHAUSTED.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_OUT_OF_CREDIT"
    assert len(env.fake.generations()) == 1


async def test_rate_limit_is_retried_after_retry_after(env):
    env.fake.server.script(
        "POST",
        "/v1/images/generations",
        [rate_limit_exceeded(retry_after_ms=150), rate_limit_exceeded(retry_after=0.2)],
    )
    job = await env.run()
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    calls = env.fake.generations()
    assert len(calls) == 3
    assert calls[1].at - calls[0].at >= 0.14 and calls[2].at - calls[1].at >= 0.19


@pytest.mark.parametrize("retry_after", [None, 0.01])
async def test_rate_limit_gives_up(env, retry_after):
    env.fake.server.fail_next("POST", "/v1/images/generations", rate_limit_exceeded(retry_after=retry_after), times=10)
    job = await env.run()
    assert job.error.code == Code.RESOURCE_EXHAUSTED.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_RATE_LIMITED"
    assert len(env.fake.generations()) == FAST.max_attempts  # backoff without Retry-After
    has_retry_info = any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in job.error.details)
    assert has_retry_info == (retry_after is not None)


@pytest.mark.parametrize(
    "reply, code, reason",
    [
        (server_error(500, {"error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}}), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (server_error(503), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (slow(3.0), Code.UNAVAILABLE, "PROVIDER_TIMEOUT"),
        (dropped(), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (malformed_json(), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        (truncated(b'{"created": 1, "data": [{"b64_json": "iVBORw0KGgo', 20), Code.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE"),
    ],
    ids=["500", "503", "slow", "dropped", "malformed", "cut-short"],
)
async def test_vendor_failures_are_not_resubmitted(env, reply, code, reason):
    env.fake.server.fail_next("POST", "/v1/images/generations", reply)
    job = await env.run()
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert job.error.code == code.value[0]
    assert error_reason(job.error)[0] == reason
    # The POST costs money: after the vendor saw it, it is never sent again.
    assert len(env.fake.generations()) == 1
    assert env.stored_files(partial=False) == [] and env.spooled() == []


async def test_vendor_400_names_the_param(env):
    job = await env.run(model="gpt-image-1.5", width=1024, height=1536, quality="high")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    env.fake.server.fail_next(
        "POST",
        "/v1/images/generations",
        server_error(400, {"error": {"message": "Invalid size.", "type": "invalid_request_error", "param": "size", "code": None}}),
    )
    job = await env.run()
    assert job.error.code == Code.INVALID_ARGUMENT.value[0]
    assert error_reason(job.error)[0] == "PROVIDER_INVALID_REQUEST" and "Invalid size." in job.error.message


async def test_image_over_the_size_limit(start):
    env = await start(max_output_bytes=20_000)
    env.fake.pad_images_to = 30_000
    job = await env.run()
    assert job.error.code == Code.RESOURCE_EXHAUSTED.value[0]
    assert error_reason(job.error)[0] == "OUTPUT_TOO_LARGE"
    assert env.stored_files(partial=False) == [] and env.spooled() == []


async def test_dall_e_output_url_404_and_cut_short(env):
    env.fake.dalle_retired = False
    env.fake.server.fail_next("GET", "/files/{name}", truncated(b"\x89PNG" + b"\0" * 2000, 100))
    job = await env.run(model="dall-e-3")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error  # fetched again after the cut
    assert len(env.fake.server.calls("GET", "/files/{name}")) == 2
    env.fake.server.fail_next("GET", "/files/{name}", server_error(404, "gone"), times=5)
    job = await env.run(model="dall-e-3")
    assert error_reason(job.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    assert job.error.code == Code.UNAVAILABLE.value[0]
    assert len(env.stored_files(partial=False)) == 1  # only the first job's image


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"negative_prompt": "fog"}, "negative_prompt"),
        ({"seed": 7}, "seed"),
        ({"style": "vivid"}, "style"),
        ({"quality": "hd"}, "quality"),
        ({"width": 1792, "height": 1024}, "width"),
        ({"aspect_ratio": "16:9"}, "aspect_ratio"),
        ({"model": "dall-e-3", "count": 2}, "count"),
        ({"model": "dall-e-3", "format": "IMAGE_FORMAT_JPEG"}, "format"),
        ({"model": "dall-e-3", "style": "moody"}, "style"),
        ({"format": "IMAGE_FORMAT_JPEG", "provider_options": {"background": "transparent"}}, "provider_options.background"),
        ({"provider_options": {"output_compression": 50}}, "provider_options.output_compression"),
        ({"provider_options": {"response_format": "url"}}, "provider_options.response_format"),
        ({"provider_options": {"moderation": "none"}}, "provider_options.moderation"),
        ({"input_image": {"data": base64.b64encode(png(16, 16)).decode()}}, "input_image"),
    ],
)
async def test_unsupported_fields_are_refused_before_any_call(env, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.generate(**fields)
    assert err.value.code() == Code.INVALID_ARGUMENT
    assert field in bad_fields(err.value)
    assert env.fake.generations() == []


async def test_catalog_entry(env):
    request = catalog_pb2.GetProviderRequest(name="openai", media_type=common_pb2.MEDIA_TYPE_IMAGE)
    entry = (await env.catalog.GetProvider(request)).provider
    assert entry.configured and not entry.retired
    models = {m.name: m for m in entry.models}
    assert models["gpt-image-1"].default and not models["gpt-image-1"].retired
    assert models["dall-e-3"].retired and "2026-05-12" in models["dall-e-3"].retired_note
    assert "1536x1024" in entry.limits.sizes and entry.limits.max_count == 10
    prices = {(p.model, p.note.split(":")[0]): p.unit_price_micros for p in entry.prices}
    assert prices[("gpt-image-1", "quality=high, other sizes")] == 250_000
    assert prices[("dall-e-3", "quality=standard, 1024x1024")] == 40_000


# --- the spool, without a server ------------------------------------------------------------


def _settings(tmp_path, **overrides):
    return make_settings(tmp_path, **overrides)


async def test_spool_survives_a_restart_and_is_dropped_on_cancel(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    provider = OpenAIImages(_settings(tmp_path))
    request = image_pb2.GenerateImageRequest(provider="openai", prompt="two boats", count=2)
    ctx = JobContext(job_id="job_" + "1" * 32, deadline=time.monotonic() + 30)
    try:
        handle = await provider.submit(request, "gpt-image-1", ctx)
        stored = json.loads(json.dumps(handle.to_json()))  # what the job store keeps
        assert "b64_json" not in json.dumps(stored) and len(json.dumps(stored)) < 2000
        # A restarted server (a new provider) finds the images from the stored handle.
        await provider.aclose()
        provider = OpenAIImages(_settings(tmp_path))
        handle = VendorHandle.from_json(stored)
        result = await provider.poll(handle, ctx)
        assert [o.content_type for o in result.outputs] == ["image/png", "image/png"]
        spooled = sorted(provider.spool_dir.iterdir())
        assert len(spooled) == 2
        # Storing the first output keeps the spool (a restart re-stores every output).
        async with provider.open_output(handle, result.outputs[0], ctx) as chunks:
            first = b"".join([c async for c in chunks])
        assert first == spooled[0].read_bytes() or first == spooled[1].read_bytes()
        assert len(list(provider.spool_dir.iterdir())) == 2
        assert await provider.cancel(handle, ctx) is False  # nothing to stop at OpenAI
        assert list(provider.spool_dir.iterdir()) == []
        with pytest.raises(ProviderOutputUnavailable) as err:
            async with provider.open_output(handle, result.outputs[1], ctx) as chunks:
                pass
        assert not err.value.retryable
    finally:
        await provider.aclose()


async def test_old_spool_files_are_swept(tmp_path):
    spool = tmp_path / "data" / "spool" / "openai-images"
    spool.mkdir(parents=True)
    old, new = spool / "old.img", spool / "new.img"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    long_ago = time.time() - 10 * 24 * 3600
    os.utime(old, (long_ago, long_ago))
    provider = OpenAIImages(_settings(tmp_path))
    await provider.aclose()
    assert sorted(p.name for p in spool.iterdir()) == ["new.img"]


# --- the streamed answer ------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 1000, 65536])
def test_streamed_answer_decodes_base64_into_files(tmp_path, chunk_size):
    images = [os.urandom(5000), os.urandom(70_000)]
    answer = {
        "created": 1,
        "data": [{"b64_json": base64.b64encode(d).decode(), "revised_prompt": 'say "b64_json": \\ /'} for d in images],
        "usage": {"input_tokens": 3},
    }
    # Escaped slashes (some encoders write \/), as JSON allows.
    raw = json.dumps(answer).encode().replace(b"/", b"\\/")
    reader = _ImagesAnswer(tmp_path, "t", 10**6, "openai", "gpt-image-1")
    for offset in range(0, len(raw), chunk_size):
        reader.feed(raw[offset : offset + chunk_size])
    parsed = reader.finish()
    assert [p.read_bytes() for p in reader.paths] == images
    assert parsed["data"][1]["b64_json"] == "mediagen-spool:1"
    assert parsed["data"][0]["revised_prompt"] == 'say "b64_json": \\ /'
    assert parsed["usage"] == {"input_tokens": 3}
    assert len(reader._skeleton) < 500  # the base64 never lands in memory as a whole


def test_streamed_answer_refuses_garbage(tmp_path):
    reader = _ImagesAnswer(tmp_path, "t", 10**6, "openai", "gpt-image-1")
    with pytest.raises(ProviderBadResponse):
        reader.feed(b'{"data": [{"b64_json": "ab*d"}]}')
    reader.abort()
    assert list(tmp_path.iterdir()) == []
    cut = _ImagesAnswer(tmp_path, "u", 10**6, "openai", "gpt-image-1")
    cut.feed(b'{"data": [{"b64_json": "abcd')
    with pytest.raises(ProviderBadResponse):
        cut.finish()
    cut.abort()
    assert list(tmp_path.iterdir()) == []
