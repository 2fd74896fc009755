"""The Runway adapter end to end: gRPC -> MediagenServer -> adapter -> fake Runway over real HTTP."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from mediagen.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, video_pb2, video_pb2_grpc
from providers.errors import InvalidArgument
from providers.mock.media import probe
from providers.retry import RetryPolicy
from providers.video.runway import RunwayVideo
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.runway import FakeRunway
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

VIDEO = common_pb2.MEDIA_TYPE_VIDEO
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0)
Code = grpc.StatusCode


def png(width: int = 64, height: int = 36) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: random pixels."""
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def error_reason(status) -> tuple[str, dict[str, str]]:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo")


def retry_delay(status) -> float | None:
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def bad_fields(err: grpc.aio.AioRpcError) -> list[str]:
    fields = []
    for detail in rpc_status.from_call(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


@dataclass
class Env:
    fake: FakeRunway
    cdn: FakeVendorServer
    server: MediagenServer
    stub: video_pb2_grpc.VideoServiceStub
    catalog: catalog_pb2_grpc.CatalogServiceStub
    data_dir: Path

    @property
    def provider(self):
        return self.server.registry.get(VIDEO, "runway")

    async def generate(self, **fields) -> common_pb2.Job:
        request = video_pb2.GenerateVideoRequest()
        json_format.ParseDict(
            {"provider": "runway", "prompt": "a red fox in snow", **fields}, request
        )
        return (await self.stub.GenerateVideo(request)).job

    async def events(self, job_id: str) -> list[common_pb2.JobEvent]:
        call = self.stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job_id), timeout=20)
        return [r.event async for r in call]

    async def run(self, **fields) -> common_pb2.Job:
        job = await self.generate(**fields)
        return (await self.events(job.id))[-1].job

    async def download(self, job_id: str) -> bytes:
        call = self.stub.DownloadVideo(video_pb2.DownloadVideoRequest(job_id=job_id))
        return b"".join([m.data async for m in call])

    def stored_files(self) -> list[Path]:
        root = self.data_dir / "artifacts"
        return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture
async def runway(monkeypatch, tmp_path):
    with FakeVendorServer() as api, FakeVendorServer() as cdn:
        fake = FakeRunway(api, cdn=cdn)
        monkeypatch.setenv("RUNWAY_BASE_URL", api.url)
        monkeypatch.setenv("RUNWAYML_API_SECRET", fake.key)
        monkeypatch.delenv("RUNWAY_API_KEY", raising=False)
        # Failure tests run many jobs in a row: keep the circuit breaker out of their way.
        server = MediagenServer(make_settings(tmp_path, circuit_threshold=1000))
        server.registry.get(VIDEO, "runway").http.retry = FAST
        server.runner.output_retry = FAST
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                yield Env(
                    fake,
                    cdn,
                    server,
                    video_pb2_grpc.VideoServiceStub(channel),
                    catalog_pb2_grpc.CatalogServiceStub(channel),
                    tmp_path / "data",
                )
        finally:
            await server.stop(grace=0.1)


async def test_text_to_video_end_to_end(runway, tmp_path):
    job = await runway.generate(duration_seconds=2, aspect_ratio="16:9", seed=42)
    assert job.model == "gen4.5"
    assert job.estimated_cost.amount_micros == 2 * 120_000
    assert job.estimated_cost.basis == common_pb2.COST_BASIS_ESTIMATED
    events = await runway.events(job.id)
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error

    (create,) = runway.fake.creates()
    assert create.path == "/v1/text_to_video"
    assert create.headers["authorization"] == f"Bearer {runway.fake.key}"
    assert create.headers["x-runway-version"] == "2024-11-06"
    assert create.json() == {
        "model": "gen4.5",
        "promptText": "a red fox in snow",
        "duration": 2,
        "ratio": "1280:720",
        "seed": 42,
    }
    # The vendor's statuses reached the job as progress.
    seen = [(e.job.progress.vendor_status, e.job.progress.fraction) for e in events]
    assert ("THROTTLED", 0.0) in seen and ("RUNNING", 0.25) in seen and ("RUNNING", 0.75) in seen
    assert final.vendor_job_id == next(iter(runway.fake.tasks))

    # The output came from the signed URL, without our API key, and is a real 2 s clip.
    (fetch,) = runway.cdn.calls("GET", "/outputs/{name}")
    assert "authorization" not in fetch.headers
    data = await runway.download(job.id)
    path = tmp_path / "out.mp4"
    path.write_bytes(data)
    info = probe(path)
    assert info.content_type == "video/mp4" and (info.width, info.height) == (160, 90)
    assert abs(info.duration_seconds - 2.0) < 0.1
    (artifact,) = final.artifacts
    assert artifact.metadata["runwayTaskId"] == final.vendor_job_id
    assert final.final_cost.amount_micros == 2 * 120_000
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED
    assert final.final_cost.unit == common_pb2.PRICE_UNIT_SECOND


async def test_image_to_video_with_inline_png(runway, tmp_path):
    image = png()
    final = await runway.run(
        model="gen4_turbo",
        duration_seconds=3,
        aspect_ratio="9:16",
        input_image={"data": base64.b64encode(image).decode()},
        provider_options={"contentModeration": {"publicFigureThreshold": "low"}},
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (create,) = runway.fake.creates()
    body = create.json()
    assert create.path == "/v1/image_to_video"
    assert body["promptImage"] == "data:image/png;base64," + base64.b64encode(image).decode()
    assert body["ratio"] == "720:1280" and body["duration"] == 3
    assert body["contentModeration"] == {"publicFigureThreshold": "low"}
    assert (final.artifacts[0].width, final.artifacts[0].height) == (90, 160)
    assert final.estimated_cost.amount_micros == 3 * 50_000


async def test_image_url_and_exact_size(runway):
    final = await runway.run(
        model="gen4_turbo",
        width=1584,
        height=672,
        input_image={"uri": "https://images.example.com/fox.jpg"},
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    body = runway.fake.creates()[0].json()
    assert body["promptImage"] == "https://images.example.com/fox.jpg"
    assert body["ratio"] == "1584:672" and body["duration"] == 5


REFUSED = [
    ({"model": "gen4_turbo"}, "input_image"),  # image-to-video only
    ({"model": "veo3", "input_image": {"uri": "https://x.example/a.png"}}, "input_image"),
    ({"aspect_ratio": "4:3"}, "aspect_ratio"),  # gen4.5 text-to-video: 16:9 and 9:16 only
    ({"aspect_ratio": "2:1"}, "aspect_ratio"),
    ({"width": 1000, "height": 1000}, "width"),
    ({"duration_seconds": 11}, "duration_seconds"),
    ({"duration_seconds": 2.5}, "duration_seconds"),
    ({"model": "veo3.1", "duration_seconds": 5}, "duration_seconds"),
    ({"prompt": "🦊" * 501}, "prompt"),  # 1002 UTF-16 code units
    ({"negative_prompt": "blur"}, "negative_prompt"),
    ({"model": "veo3", "seed": 1}, "seed"),
    ({"seed": -1}, "seed"),
    ({"fps": 24}, "fps"),
    (
        {"model": "gen4_turbo", "input_image": {"uri": "http://x.example/a.png"}},
        "input_image.uri",
    ),
    (
        {"model": "gen4_turbo", "input_image": {"uri": "https://10.0.0.1/a.png"}},
        "input_image.uri",
    ),
    ({"model": "gen4_turbo", "input_image": {"asset_id": "a1"}}, "input_image.asset_id"),
    ({"provider_options": {"motion": 5}}, "provider_options.motion"),
    ({"provider_options": {"audio": True}}, "provider_options.audio"),
    ({"model": "no-such-model"}, "model"),
]


async def test_refused_before_any_vendor_call(runway):
    for fields, field in REFUSED:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await runway.generate(**fields)
        assert err.value.code() == Code.INVALID_ARGUMENT, fields
        assert field in bad_fields(err.value), (fields, err.value.details())
    assert runway.fake.creates() == []


def create_failures():
    return [
        (
            error_reply(401, {"error": "Invalid API key."}),
            Code.FAILED_PRECONDITION,
            "PROVIDER_AUTH_FAILED",
        ),
        (
            error_reply(400, {"error": "You do not have enough credits to run this task."}),
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_OUT_OF_CREDIT",
        ),
        (
            error_reply(402, {"error": "Payment required"}),
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_OUT_OF_CREDIT",
        ),
        (
            error_reply(
                400,
                {
                    "error": "Validation of body failed",
                    "issues": [
                        {"code": "custom", "path": ["promptImage"], "message": "Invalid asset"}
                    ],
                    "docUrl": "https://docs.dev.runwayml.com/api",
                },
            ),
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        (
            error_reply(422, {"error": "Unprocessable"}),
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        (rate_limited(), Code.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
        (server_error(500), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (server_error(503), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (dropped(), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (malformed_json(), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        (slow(3.0), Code.UNAVAILABLE, "PROVIDER_TIMEOUT"),
    ]


async def test_create_failures(runway):
    runway.provider.http.timeout = httpx.Timeout(0.5)
    for number, (reply, code, reason) in enumerate(create_failures(), start=1):
        runway.fake.server.fail_next("POST", "/v1/text_to_video", reply)
        final = await runway.run(duration_seconds=2)
        assert final.state == common_pb2.JOB_STATE_FAILED
        assert final.error.code == code.value[0], (reason, final.error)
        got, metadata = error_reason(final.error)
        assert got == reason and metadata["provider"] == "runway", (reason, final.error)
        assert not final.artifacts and runway.stored_files() == []
        # A create is never repeated blindly: it may have started a paid task.
        assert len(runway.fake.creates()) == number
        assert runway.fake.key not in final.error.message


async def test_adapter_refuses_image_types_runway_cannot_read(runway):
    # The server already refuses undecodable inline images; the adapter also checks what it sends.
    request = video_pb2.GenerateVideoRequest(
        provider="runway",
        model="gen4_turbo",
        prompt="a fox",
        input_image={"data": b"GIF89a" + b"\0" * 20},
    )
    with pytest.raises(InvalidArgument) as err:
        runway.provider.validate(request)
    assert [v.field for v in err.value.field_violations] == ["input_image.content_type"]
    # Above what a 5 MB data URI holds is not refused: it goes through Runway's upload.
    request.input_image.content_type = "image/jpeg"
    request.input_image.data = b"\xff\xd8\xff" + b"\0" * 4_000_000
    runway.provider.validate(request)


async def test_rate_limit_on_create_carries_retry_after(runway):
    runway.fake.server.fail_next("POST", "/v1/text_to_video", rate_limited(retry_after=7))
    final = await runway.run(duration_seconds=2)
    assert error_reason(final.error)[0] == "PROVIDER_RATE_LIMITED"
    assert retry_delay(final.error) == 7.0


async def test_missing_version_header_gets_runways_error(runway):
    runway.provider.http._client.headers.pop("X-Runway-Version")
    final = await runway.run(duration_seconds=2)
    assert error_reason(final.error)[0] == "PROVIDER_INVALID_REQUEST"
    assert "X-Runway-Version" in final.error.message


async def test_polls_retry_honouring_retry_after(runway):
    runway.fake.server.script(
        "GET",
        "/v1/tasks/{id}",
        [
            rate_limited(retry_after=0.3),
            server_error(503),
            dropped(),
            malformed_json(),
            rate_limited(),
        ],
    )
    final = await runway.run(duration_seconds=2)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    polls = runway.fake.server.calls("GET", "/v1/tasks/{id}")
    assert polls[1].at - polls[0].at >= 0.3  # the vendor's Retry-After was honoured


async def test_retired_model_is_sent_as_documented_and_refused_by_runway(runway):
    final = await runway.run(
        model="gen3a_turbo",
        duration_seconds=10,
        input_image={"uri": "https://img.example.com/a.png"},
    )
    body = runway.fake.creates()[0].json()
    assert body["model"] == "gen3a_turbo" and body["ratio"] == "1280:768" and body["duration"] == 10
    assert error_reason(final.error)[0] == "PROVIDER_INVALID_REQUEST"


TASK_FAILURES = [
    (
        "An unexpected error occurred.",
        "INTERNAL.BAD_OUTPUT",
        Code.ABORTED,
        "PROVIDER_JOB_FAILED",
    ),
    (
        "The prompt was flagged by moderation.",
        "SAFETY.INPUT.TEXT",
        Code.INVALID_ARGUMENT,
        "CONTENT_REJECTED",
    ),
    (
        "The output was flagged.",
        "SAFETY.OUTPUT.VIDEO",
        Code.INVALID_ARGUMENT,
        "CONTENT_REJECTED",
    ),
    (
        "The image could not be read.",
        "ASSET.INVALID",
        Code.INVALID_ARGUMENT,
        "PROVIDER_INVALID_REQUEST",
    ),
    ("Something failed.", None, Code.ABORTED, "PROVIDER_JOB_FAILED"),
]


async def test_task_failures(runway):
    for failure, failure_code, code, reason in TASK_FAILURES:
        runway.fake.plan_failure(failure, failure_code)
        final = await runway.run(duration_seconds=2)
        assert final.state == common_pb2.JOB_STATE_FAILED
        assert final.error.code == code.value[0], (reason, final.error)
        got, metadata = error_reason(final.error)
        assert got == reason
        assert metadata.get("failureCode", "") == (failure_code or "")
        assert failure in final.error.message
        assert not final.artifacts and runway.stored_files() == []


async def test_task_cancelled_at_runway(runway):
    runway.fake.plan_cancelled()
    final = await runway.run(duration_seconds=2)
    assert final.error.code == Code.CANCELLED.value[0]
    assert error_reason(final.error)[0] == "VENDOR_CANCELLED"


async def test_output_404_fails_without_storing(runway):
    runway.cdn.fail_next("GET", "/outputs/{name}", error_reply(404, "Not Found"), times=10)
    final = await runway.run(duration_seconds=2)
    assert error_reason(final.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    assert runway.stored_files() == []


async def test_output_cut_short_is_fetched_again(runway):
    body = runway.fake.video_bytes(2, 160, 90)
    runway.cdn.fail_next("GET", "/outputs/{name}", truncated(body, len(body) // 2))
    final = await runway.run(duration_seconds=2)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.artifacts[0].size_bytes == len(body)
    assert len(runway.cdn.calls("GET", "/outputs/{name}")) == 2


async def test_output_always_cut_short_fails_without_storing(runway):
    body = runway.fake.video_bytes(2, 160, 90)
    runway.cdn.fail_next("GET", "/outputs/{name}", truncated(body, 1000), times=20)
    final = await runway.run(duration_seconds=2)
    assert error_reason(final.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    assert runway.stored_files() == []


async def test_cancel_reaches_runway(runway):
    runway.fake.plan_stall()
    job = await runway.generate(duration_seconds=2)
    async for response in runway.stub.WatchVideoJob(
        video_pb2.WatchVideoJobRequest(job_id=job.id), timeout=10
    ):
        if response.event.job.progress.vendor_status == "RUNNING":
            break
    cancelled = (
        await runway.stub.CancelVideoJob(video_pb2.CancelVideoJobRequest(job_id=job.id))
    ).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    (delete,) = runway.fake.deletes()
    assert delete.path == f"/v1/tasks/{cancelled.vendor_job_id}"
    assert delete.headers["x-runway-version"] == "2024-11-06"
    assert runway.fake.tasks[cancelled.vendor_job_id].deleted


async def test_catalog_entry(runway):
    entry = (
        await runway.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="runway", media_type=VIDEO)
        )
    ).provider
    assert entry.configured and not entry.retired
    models = {m.name: m for m in entry.models}
    assert [m.name for m in entry.models if m.default] == ["gen4.5"]
    assert models["gen3a_turbo"].retired and "2026-07-30" in models["gen3a_turbo"].retired_note
    assert list(models["gen4_turbo"].capabilities) == ["image_to_video"]
    prices = {p.model: p.unit_price_micros for p in entry.prices}
    assert prices["gen4_turbo"] == 50_000 and prices["gen4.5"] == 120_000
    assert "16:9" in entry.limits.aspect_ratios and "1280:720" in entry.limits.aspect_ratios
    assert entry.limits.max_prompt_characters == 1000
    assert entry.documentation_uri.startswith("https://docs.dev.runwayml.com")


async def test_missing_key_is_not_configured(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNWAYML_API_SECRET", raising=False)
    monkeypatch.delenv("RUNWAY_API_KEY", raising=False)
    server = MediagenServer(make_settings(tmp_path))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = video_pb2_grpc.VideoServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GenerateVideo(
                    video_pb2.GenerateVideoRequest(provider="runway", prompt="a fox")
                )
            assert err.value.code() == Code.FAILED_PRECONDITION
            reason, _ = error_reason(rpc_status.from_call(err.value))
            assert reason == "PROVIDER_NOT_CONFIGURED"
            assert "RUNWAYML_API_SECRET" in err.value.details()
            entry = (
                await catalog_pb2_grpc.CatalogServiceStub(channel).GetProvider(
                    catalog_pb2.GetProviderRequest(name="runway", media_type=VIDEO)
                )
            ).provider
            assert not entry.configured and "RUNWAYML_API_SECRET" in entry.not_configured_reason
    finally:
        await server.stop(grace=0.1)


async def test_spec_key_name_is_accepted(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNWAYML_API_SECRET", raising=False)
    monkeypatch.setenv("RUNWAY_API_KEY", "key_" + "1" * 128)
    provider = RunwayVideo(make_settings(tmp_path))
    try:
        assert provider.describe().configured
    finally:
        await provider.aclose()
