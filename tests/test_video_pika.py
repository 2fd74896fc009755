"""The Pika adapter end to end: gRPC -> MediagenServer -> adapter -> fake fal.ai queue over real HTTP."""

from __future__ import annotations

import asyncio
import base64

import grpc
import httpx
import pytest
from google.rpc import code_pb2
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2, video_pb2
from providers.mock.media import probe
from providers.retry import RetryPolicy
from tests.fakes.fal import APP, FAL_KEY, STALLED_PLAN, FakeFal, exhausted_balance, model_error
from tests.fakes.server import (
    FakeVendorServer,
    dropped,
    error_reply,
    malformed_json,
    rate_limited,
    server_error,
    slow,
    truncated,
)
from tests.helpers import bad_fields, error_reason, png, retry_delay, vendor_env

VIDEO = common_pb2.MEDIA_TYPE_VIDEO
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0)
KEY_VARIABLES = ("FAL_KEY", "PIKA_API_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET")
STATUS = f"/{APP}/requests/{{id}}/status"
SUBMIT = f"/{APP}/{{endpoint:path}}"


async def _env(monkeypatch, tmp_path, keys: dict[str, str] | None = None):
    """A server whose pika adapter talks to a fake fal; ``keys``: the key variables to set."""
    with FakeVendorServer() as api, FakeVendorServer() as cdn:
        fake = FakeFal(api, cdn=cdn)
        variables = {"FAL_BASE_URL": api.url, **({"FAL_KEY": FAL_KEY} if keys is None else keys)}
        async with vendor_env(
            monkeypatch,
            tmp_path,
            VIDEO,
            "pika",
            variables,
            unset=KEY_VARIABLES,
            retry=FAST,
            fake=fake,
            cdn=cdn,
            defaults={"prompt": "a red fox in snow"},
        ) as env:
            yield env


@pytest.fixture
async def pika(monkeypatch, tmp_path):
    async for env in _env(monkeypatch, tmp_path):
        yield env


@pytest.fixture
async def pika_without_key(monkeypatch, tmp_path):
    async for env in _env(monkeypatch, tmp_path, {}):
        yield env


async def test_text_to_video_end_to_end(pika, tmp_path):
    job = await pika.generate(
        duration_seconds=10,
        aspect_ratio="9:16",
        negative_prompt="blurry",
        seed=7,
        provider_options={"resolution": "1080p"},
    )
    assert job.model == "pika-v2.2"
    # $0.45 per 5 s at 1080p: 10 s = $0.90, priced per second.
    assert job.estimated_cost.amount_micros == 900_000
    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_SECOND
    events = await pika.events(job.id)
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error

    (submit,) = pika.fake.submits()
    assert submit.path == f"/{APP}/v2.2/text-to-video"
    assert submit.headers["authorization"] == f"Key {FAL_KEY}"
    assert submit.json() == {
        "prompt": "a red fox in snow",
        "negative_prompt": "blurry",
        "seed": 7,
        "aspect_ratio": "9:16",
        "resolution": "1080p",
        "duration": 10,
    }
    request = pika.fake.only()
    assert final.vendor_job_id == request.id
    polls = pika.fake.server.calls("GET", STATUS)
    assert polls and all(p.arg("logs") == "1" for p in polls)
    assert len(pika.fake.server.calls("GET", f"/{APP}/requests/{{id}}")) == 1

    progress = [e.job.progress for e in events]
    assert any(p.vendor_status == "IN_QUEUE" and p.queue_position == 2 for p in progress)
    assert any(
        p.vendor_status == "IN_PROGRESS" and p.message == "Generating video frames"
        for p in progress
    )

    (artifact,) = final.artifacts
    assert artifact.content_type == "video/mp4"
    assert (artifact.width, artifact.height) == (108, 192)  # 1080p 9:16, scaled down 10x
    assert abs(artifact.duration_seconds - 10) < 0.2
    data = await pika.download(job.id)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    info = probe(path)
    assert info.content_type == "video/mp4" and abs(info.duration_seconds - 10) < 0.2
    assert final.final_cost.amount_micros == 900_000
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED
    assert artifact.metadata["inferenceSeconds"] == "12.500"


async def test_image_to_video_sends_the_image_as_a_data_uri(pika):
    image = png(64, 36)
    final = await pika.run(input_image={"data": base64.b64encode(image).decode()})
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (submit,) = pika.fake.submits()
    assert submit.path == f"/{APP}/v2.2/image-to-video"
    body = submit.json()
    assert "aspect_ratio" not in body and body["duration"] == 5 and body["resolution"] == "720p"
    prefix = "data:image/png;base64,"
    assert body["image_url"].startswith(prefix)
    assert base64.b64decode(body["image_url"][len(prefix) :]) == image
    (artifact,) = final.artifacts
    assert (artifact.width, artifact.height) == (128, 72)  # the image's 16:9
    assert final.final_cost.amount_micros == 200_000  # 5 s at 720p


async def test_turbo_image_to_video_passes_an_https_image_url(pika):
    job = await pika.generate(
        model="pika-v2-turbo", input_image={"uri": "https://images.example.com/cat.png"}
    )
    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_REQUEST
    assert job.estimated_cost.amount_micros == 200_000
    final = (await pika.events(job.id))[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (submit,) = pika.fake.submits()
    assert submit.path == f"/{APP}/v2/turbo/image-to-video"
    assert submit.json()["image_url"] == "https://images.example.com/cat.png"


#: (request fields, the field the refusal must name)
PIKA_CANNOT = [
    ({"duration_seconds": 7}, "duration_seconds"),
    ({"model": "pika-v2-turbo", "duration_seconds": 10}, "duration_seconds"),
    ({"aspect_ratio": "21:9"}, "aspect_ratio"),
    ({"width": 1280, "height": 720}, "width"),
    ({"fps": 24}, "fps"),
    ({"provider_options": {"resolution": "4k"}}, "provider_options.resolution"),
    ({"provider_options": {"style": "anime"}}, "provider_options.style"),
    ({"model": "pika-v9"}, "model"),
    ({"input_image": {"asset_id": "asset-1"}}, "input_image.asset_id"),
    ({"input_image": {"data": base64.b64encode(b"not an image").decode()}}, "input_image.data"),
    (
        {"input_image": {"uri": "https://images.example.com/a.png"}, "aspect_ratio": "1:1"},
        "aspect_ratio",
    ),
]


async def test_what_pika_cannot_do_is_refused_before_any_vendor_call(pika):
    for fields, field in PIKA_CANNOT:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pika.generate(**fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert field in bad_fields(caught.value), (fields, bad_fields(caught.value))
    assert pika.fake.server.requests == []


async def test_missing_key_is_failed_precondition_naming_the_variable(pika_without_key):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pika_without_key.generate()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "FAL_KEY" in caught.value.details()
    status = rpc_status.from_call(caught.value)
    assert error_reason(status)[0] == "PROVIDER_NOT_CONFIGURED"
    entry = (
        await pika_without_key.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="pika", media_type=VIDEO)
        )
    ).provider
    assert not entry.configured and "FAL_KEY" in entry.not_configured_reason
    assert pika_without_key.fake.server.requests == []


async def test_fal_key_id_and_secret_are_sent_as_one_key(monkeypatch, tmp_path):
    keys = {"FAL_KEY_ID": "key-id-1234", "FAL_KEY_SECRET": "key-secret-5678"}
    async for env in _env(monkeypatch, tmp_path, keys):
        env.fake.key = "key-id-1234:key-secret-5678"
        final = await env.run()
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error


async def test_spec_variable_pika_api_key_configures_it(monkeypatch, tmp_path):
    async for env in _env(monkeypatch, tmp_path, {"PIKA_API_KEY": FAL_KEY}):
        final = await env.run()
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error


#: (fal's answer to the submit, the job's gRPC code, ErrorInfo.reason)
SUBMIT_FAILURES = [
    (
        error_reply(401, {"detail": "Authentication is required to access this application."}),
        code_pb2.FAILED_PRECONDITION,
        "PROVIDER_AUTH_FAILED",
    ),
    (exhausted_balance(), code_pb2.RESOURCE_EXHAUSTED, "PROVIDER_OUT_OF_CREDIT"),
    (
        error_reply(
            422,
            {
                "detail": [
                    model_error(
                        "prompt",
                        "String should have at most 2000 characters",
                        "string_too_long",
                    )
                ]
            },
        ),
        code_pb2.INVALID_ARGUMENT,
        "PROVIDER_INVALID_REQUEST",
    ),
    (rate_limited(3), code_pb2.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
    (server_error(503), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (malformed_json(), code_pb2.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
    (dropped(), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
]


async def test_submit_failures_end_the_job_with_the_right_error(pika):
    for reply, code, reason in SUBMIT_FAILURES:
        submitted = len(pika.fake.submits())
        pika.fake.server.fail_next("POST", SUBMIT, reply)
        final = await pika.run()
        assert final.state == common_pb2.JOB_STATE_FAILED, reason
        assert final.error.code == code, reason
        (got, metadata), delay = error_reason(final.error), retry_delay(final.error)
        assert got == reason and metadata["provider"] == "pika"
        if reason == "PROVIDER_RATE_LIMITED":
            assert delay == 3.0  # the vendor's Retry-After reaches the caller as RetryInfo
        if reason == "PROVIDER_INVALID_REQUEST":
            assert "prompt: String should have at most 2000 characters" in final.error.message
        # The submit is not idempotent at fal: it is never sent twice.
        assert len(pika.fake.submits()) == submitted + 1, reason
        assert not final.artifacts
        assert FAL_KEY not in final.error.message
    assert pika.stored_files() == []


async def test_a_submit_slower_than_the_timeout_fails_once(pika):
    pika.provider.http.timeout = httpx.Timeout(0.3)
    pika.fake.server.fail_next("POST", SUBMIT, slow(2.0))
    final = await pika.run()
    assert final.error.code == code_pb2.UNAVAILABLE
    assert error_reason(final.error)[0] == "PROVIDER_TIMEOUT"
    assert len(pika.fake.submits()) == 1


async def test_status_polls_honour_retry_after(pika):
    pika.fake.server.fail_next("GET", STATUS, rate_limited(0.4))
    final = await pika.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    first, second = pika.fake.server.calls("GET", STATUS)[:2]
    assert second.at - first.at >= 0.39


async def test_transient_status_failures_are_retried(pika):
    # Short enough to time out the slow answer, long enough for a healthy one on a busy machine.
    pika.provider.http.timeout = httpx.Timeout(0.8)
    pika.fake.server.script(
        "GET",
        STATUS,
        [rate_limited(), server_error(500), slow(2.0), dropped(), malformed_json()],
    )
    final = await pika.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(pika.fake.server.calls("GET", STATUS)) >= 5 + 4


async def test_failed_requests_end_the_job_failed(pika):
    for outcome, code, reason in (
        ("moderated", code_pb2.INVALID_ARGUMENT, "CONTENT_REJECTED"),
        ("invalid", code_pb2.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
        ("crashed", code_pb2.ABORTED, "PROVIDER_JOB_FAILED"),
    ):
        pika.fake.outcome = outcome
        final = await pika.run()
        assert final.state == common_pb2.JOB_STATE_FAILED, outcome
        assert final.error.code == code, outcome
        got, metadata = error_reason(final.error)
        assert got == reason, outcome
        if outcome == "crashed":
            assert metadata["falErrorType"] == "runner_server_error"
        if outcome == "moderated":
            assert "flagged by a content checker" in final.error.message
        assert not final.artifacts
    assert pika.stored_files() == [] and pika.cdn.requests == []


async def test_an_output_url_that_404s_stores_nothing(pika):
    pika.cdn.fail_next("GET", "/files/{name}", error_reply(404, "Not Found"))
    final = await pika.run()
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert error_reason(final.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    assert pika.stored_files() == []


async def test_an_output_cut_short_is_fetched_again(pika):
    pika.cdn.fail_next("GET", "/files/{name}", truncated(b"\0" * 50_000, 1_000))
    final = await pika.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(pika.cdn.calls("GET", "/files/{name}")) == 2
    assert len(pika.stored_files()) == 1


async def test_an_output_always_cut_short_fails_and_stores_nothing(pika):
    pika.cdn.fail_next("GET", "/files/{name}", truncated(b"\0" * 50_000, 1_000), times=20)
    final = await pika.run()
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert error_reason(final.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    assert pika.stored_files() == []


async def test_cancel_reaches_fal(pika):
    pika.fake.plan = list(STALLED_PLAN)
    job = await pika.generate()
    for _ in range(200):
        if pika.fake.server.calls("GET", STATUS):
            break
        await asyncio.sleep(0.01)
    cancelled = (await pika.stub.CancelVideoJob(video_pb2.CancelVideoJobRequest(job_id=job.id))).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    (cancel,) = pika.fake.server.calls("PUT", f"/{APP}/requests/{{id}}/cancel")
    assert cancel.headers["authorization"] == f"Key {FAL_KEY}"
    assert pika.fake.only().cancelled


async def test_catalog_entry(pika):
    entry = (
        await pika.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="pika", media_type=VIDEO)
        )
    ).provider
    assert entry.configured and not entry.retired
    assert set(entry.capabilities) == {"text_to_video", "image_to_video"}
    assert [m.name for m in entry.models if m.default] == ["pika-v2.2"]
    assert list(entry.limits.allowed_durations_seconds) == [5, 10]
    prices = {p.model: p for p in entry.prices}
    assert prices["pika-v2.2"].unit_price_micros == 40_000
    assert prices["pika-v2-turbo"].unit == common_pb2.PRICE_UNIT_REQUEST
    assert all("fal" in p.note for p in entry.prices)
