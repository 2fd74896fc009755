"""The Luma adapter end to end: gRPC -> MediagenServer -> adapter -> fake Dream Machine API over real HTTP."""

from __future__ import annotations

import base64

import grpc
import httpx
import pytest
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2, video_pb2, video_pb2_grpc
from providers.mock.media import probe
from providers.retry import RetryPolicy
from providers.video.luma import LumaVideo
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.luma import FakeLuma
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
from tests.helpers import bad_fields, error_reason, png, retry_delay, serving, vendor_env

VIDEO = common_pb2.MEDIA_TYPE_VIDEO
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0)
Code = grpc.StatusCode
KEY_VARS = ("LUMAAI_API_KEY", "LUMA_API_KEY")


@pytest.fixture
async def luma(monkeypatch, tmp_path):
    with FakeVendorServer() as api, FakeVendorServer() as cdn:
        fake = FakeLuma(api, cdn=cdn)
        async with vendor_env(
            monkeypatch,
            tmp_path,
            VIDEO,
            "luma",
            {"LUMA_BASE_URL": fake.base_url, "LUMAAI_API_KEY": fake.key},
            unset=["LUMA_API_KEY"],
            retry=FAST,
            # Failure tests run many jobs in a row: keep the circuit breaker out of their way.
            settings={"circuit_threshold": 1000},
            fake=fake,
            cdn=cdn,
            defaults={"prompt": "a red fox in snow"},
        ) as env:
            yield env


async def test_text_to_video_end_to_end(luma, tmp_path):
    job = await luma.generate(
        duration_seconds=9, aspect_ratio="9:16", provider_options={"loop": True}
    )
    assert job.model == "ray-2"
    # ray-2 at 720p: $0.0064/Mpx x 1280x720 x 24 fps = $0.14156/s
    assert job.estimated_cost.unit_price_micros == 141_558
    assert job.estimated_cost.units == 9 and job.estimated_cost.amount_micros == 9 * 141_558
    events = await luma.events(job.id)
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error

    (create,) = luma.fake.creates()
    assert create.path == "/dream-machine/v1/generations/video"
    assert create.headers["authorization"] == f"Bearer {luma.fake.key}"
    assert create.json() == {
        "generation_type": "video",
        "model": "ray-2",
        "prompt": "a red fox in snow",
        "aspect_ratio": "9:16",
        "duration": "9s",
        "loop": True,
        "resolution": "720p",
    }
    assert [
        s for s in ("queued", "dreaming") if any(e.job.progress.vendor_status == s for e in events)
    ] == [
        "queued",
        "dreaming",
    ]
    data = b"".join(
        [
            m.data
            async for m in luma.stub.DownloadVideo(video_pb2.DownloadVideoRequest(job_id=job.id))
        ]
    )
    (tmp_path / "l.mp4").write_bytes(data)
    info = probe(tmp_path / "l.mp4")
    assert (info.width, info.height) == (90, 160) and abs(info.duration_seconds - 9.0) < 0.1
    assert "authorization" not in luma.cdn.calls("GET", "/luma/{name}")[0].headers
    assert final.artifacts[0].metadata["lumaGenerationId"] == final.vendor_job_id
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED
    assert final.final_cost.units == pytest.approx(9.0, abs=0.05)
    assert final.final_cost.unit_price_micros == 141_558


async def test_image_url_resolution_and_flash_model(luma):
    final = await luma.run(
        model="ray-flash-2",
        input_image={"uri": "https://images.example.com/first.jpg"},
        provider_options={"resolution": "1080p"},
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    body = luma.fake.creates()[0].json()
    assert body["keyframes"] == {
        "frame0": {"type": "image", "url": "https://images.example.com/first.jpg"}
    }
    assert (
        body["model"] == "ray-flash-2"
        and body["resolution"] == "1080p"
        and body["duration"] == "5s"
    )
    # $0.0022/Mpx x 1920x1080 x 24 fps
    assert final.estimated_cost.unit_price_micros == 109_486


async def test_ray_1_6_takes_no_duration_or_resolution(luma):
    final = await luma.run(model="ray-1-6", aspect_ratio="21:9")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    body = luma.fake.creates()[0].json()
    assert "duration" not in body and "resolution" not in body and body["aspect_ratio"] == "21:9"


def refused():
    return [
        ({"prompt": "ab"}, "prompt"),
        ({"prompt": "x" * 3999, "duration_seconds": 7}, "duration_seconds"),
        ({"duration_seconds": 10}, "duration_seconds"),
        ({"model": "ray-1-6", "duration_seconds": 9}, "duration_seconds"),
        ({"aspect_ratio": "2:1"}, "aspect_ratio"),
        ({"width": 1280, "height": 720}, "width"),
        ({"fps": 24}, "fps"),
        ({"seed": 1}, "seed"),
        ({"negative_prompt": "blur"}, "negative_prompt"),
        ({"input_image": {"data": base64.b64encode(png()).decode()}}, "input_image"),
        ({"input_image": {"uri": "http://images.example.com/a.jpg"}}, "input_image.uri"),
        ({"provider_options": {"resolution": "8k"}}, "provider_options.resolution"),
        (
            {"model": "ray-1-6", "provider_options": {"resolution": "720p"}},
            "provider_options.resolution",
        ),
        ({"provider_options": {"loop": "yes"}}, "provider_options.loop"),
        ({"provider_options": {"concepts": []}}, "provider_options.concepts"),
        ({"model": "ray-3.2"}, "model"),
    ]


async def test_refused_before_any_vendor_call(luma):
    for fields, field in refused():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await luma.generate(**fields)
        assert err.value.code() == Code.INVALID_ARGUMENT, fields
        assert field in bad_fields(err.value), (fields, err.value.details())
    assert luma.fake.creates() == []


def create_failures():
    return [
        (
            error_reply(401, {"detail": "Invalid API key"}),
            Code.FAILED_PRECONDITION,
            "PROVIDER_AUTH_FAILED",
        ),
        (
            error_reply(403, {"detail": "Forbidden"}),
            Code.FAILED_PRECONDITION,
            "PROVIDER_AUTH_FAILED",
        ),
        (
            error_reply(402, {"detail": "Insufficient credits"}),
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_OUT_OF_CREDIT",
        ),
        (
            error_reply(400, {"detail": "Insufficient credits to create this generation"}),
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_OUT_OF_CREDIT",
        ),
        (
            error_reply(400, {"detail": "Loop is not supported for keyframes"}),
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        (
            error_reply(
                422,
                {
                    "detail": [
                        {
                            "loc": ["body", "aspect_ratio"],
                            "msg": "Input should be 16:9",
                            "type": "enum",
                        }
                    ]
                },
            ),
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        (rate_limited(), Code.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
        (server_error(500), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (server_error(503), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (dropped(), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (malformed_json(201), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        (slow(3.0), Code.UNAVAILABLE, "PROVIDER_TIMEOUT"),
    ]


async def test_create_failures(luma):
    luma.provider.http.timeout = httpx.Timeout(0.5)
    for number, (reply, code, reason) in enumerate(create_failures(), start=1):
        luma.fake.server.fail_next("POST", "/dream-machine/v1/generations/video", reply)
        final = await luma.run()
        assert final.state == common_pb2.JOB_STATE_FAILED
        assert final.error.code == code.value[0], (reason, final.error)
        got, metadata = error_reason(final.error)
        assert got == reason and metadata["provider"] == "luma", (reason, final.error)
        assert not final.artifacts and luma.stored_files() == []
        assert (
            len(luma.fake.creates()) == number
        )  # never sent twice: it may have started a paid generation
        assert luma.fake.key not in final.error.message
    assert luma.fake.generations == {}


async def test_vendor_messages_reach_the_caller(luma):
    luma.fake.credit_cents = 0
    final = await luma.run()
    assert error_reason(final.error)[0] == "PROVIDER_OUT_OF_CREDIT"
    assert "Insufficient credits" in final.error.message
    luma.fake.server.fail_next(
        "POST", "/dream-machine/v1/generations/video", rate_limited(retry_after=9)
    )
    final = await luma.run()
    assert (
        error_reason(final.error)[0] == "PROVIDER_RATE_LIMITED" and retry_delay(final.error) == 9.0
    )


async def test_polls_retry_honouring_retry_after(luma):
    luma.fake.server.script(
        "GET",
        "/dream-machine/v1/generations/{id}",
        [rate_limited(retry_after=0.3), server_error(502), dropped(), malformed_json()],
    )
    final = await luma.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    polls = luma.fake.server.calls("GET", "/dream-machine/v1/generations/{id}")
    assert polls[1].at - polls[0].at >= 0.3


async def test_generation_failures(luma):
    for reason_text, code, reason in [
        ("Frame moderation failed", Code.INVALID_ARGUMENT, "CONTENT_REJECTED"),
        ("Contains blacklisted words", Code.INVALID_ARGUMENT, "CONTENT_REJECTED"),
        ("Failed to read user input frames", Code.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
        ("Prompt processing failed", Code.ABORTED, "PROVIDER_JOB_FAILED"),
    ]:
        luma.fake.plan_failure(reason_text)
        final = await luma.run()
        assert final.state == common_pb2.JOB_STATE_FAILED
        assert final.error.code == code.value[0] and error_reason(final.error)[0] == reason, (
            final.error
        )
        assert reason_text in final.error.message
    assert luma.stored_files() == []


async def test_output_failures(luma):
    luma.cdn.fail_next("GET", "/luma/{name}", error_reply(404, "Not Found"))
    final = await luma.run()
    assert error_reason(final.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    assert luma.stored_files() == []
    body = luma.fake.video_bytes(5, 160, 90)
    luma.cdn.fail_next("GET", "/luma/{name}", truncated(body, 3000), times=20)
    final = await luma.run()
    assert error_reason(final.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    assert luma.stored_files() == []
    luma.cdn._faults.clear()
    luma.cdn.fail_next("GET", "/luma/{name}", truncated(body, 3000))
    final = await luma.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.artifacts[0].size_bytes == len(body)


async def test_cancel_deletes_the_generation(luma):
    luma.fake.plan_stall()
    job = await luma.generate()
    async for response in luma.stub.WatchVideoJob(
        video_pb2.WatchVideoJobRequest(job_id=job.id), timeout=10
    ):
        if response.event.job.progress.vendor_status == "dreaming":
            break
    cancelled = (await luma.stub.CancelVideoJob(video_pb2.CancelVideoJobRequest(job_id=job.id))).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    (delete,) = luma.fake.deletes()
    assert delete.path == f"/dream-machine/v1/generations/{cancelled.vendor_job_id}"
    assert luma.fake.generations[cancelled.vendor_job_id].deleted


async def test_catalog_entry(luma):
    entry = (
        await luma.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="luma", media_type=VIDEO)
        )
    ).provider
    assert entry.configured and not entry.retired
    assert [m.name for m in entry.models] == ["ray-2", "ray-flash-2", "ray-1-6"]
    assert [m.name for m in entry.models if m.default] == ["ray-2"]
    prices = {(p.model, p.note.split(":")[0]): p.unit_price_micros for p in entry.prices}
    assert prices[("ray-2", "540p")] == 79_626  # the ~$0.08/s figure
    assert list(entry.limits.allowed_durations_seconds) == [5, 9]
    assert any("ray-3.2" in note for note in entry.notes)


async def test_missing_key_is_not_configured(monkeypatch, tmp_path):
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    async with serving(MediagenServer(make_settings(tmp_path))) as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GenerateVideo(video_pb2.GenerateVideoRequest(provider="luma", prompt="a fox"))
        assert err.value.code() == Code.FAILED_PRECONDITION
        assert error_reason(rpc_status.from_call(err.value))[0] == "PROVIDER_NOT_CONFIGURED"
        assert "LUMAAI_API_KEY" in err.value.details()


async def test_spec_names_for_key_and_base_url(monkeypatch, tmp_path):
    for name in (*KEY_VARS, "LUMA_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LUMA_API_KEY", "luma-spec-name-key")
    monkeypatch.setenv("LUMAAI_BASE_URL", "https://proxy.example.com/dream-machine/v1")
    provider = LumaVideo(make_settings(tmp_path))
    try:
        assert provider.describe().configured
        assert str(provider.http.base_url).startswith("https://proxy.example.com/dream-machine/v1")
    finally:
        await provider.aclose()
