"""The Kling adapter end to end: gRPC -> MediagenServer -> adapter -> fake Kling over real HTTP."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from mediagen.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, video_pb2, video_pb2_grpc
from providers.mock.media import probe
from providers.retry import RetryPolicy
from providers.video.kling import KlingAuth, KlingVideo, encode_jwt
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.kling import ACCESS_KEY, SECRET_KEY, FakeKling
from tests.fakes.server import (
    FakeVendorServer,
    dropped,
    error_reply,
    json_reply,
    malformed_json,
    server_error,
    slow,
    truncated,
)

VIDEO = common_pb2.MEDIA_TYPE_VIDEO
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0)
Code = grpc.StatusCode
KEY_VARS = ("KLING_ACCESS_KEY", "KLING_SECRET_KEY", "KLING_API_KEY")


def image_bytes(width: int, height: int, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buffer, kind)
    return buffer.getvalue()


def error_reason(status) -> tuple[str, dict[str, str]]:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo")


def bad_fields(err: grpc.aio.AioRpcError) -> list[str]:
    fields = []
    for detail in rpc_status.from_call(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


def envelope(code: int, message: str) -> dict:
    return {"code": code, "message": message, "request_id": "req-1"}


@dataclass
class Env:
    fake: FakeKling
    cdn: FakeVendorServer
    server: MediagenServer
    stub: video_pb2_grpc.VideoServiceStub
    catalog: catalog_pb2_grpc.CatalogServiceStub
    data_dir: Path

    @property
    def provider(self) -> KlingVideo:
        return self.server.registry.get(VIDEO, "kling")

    async def generate(self, **fields) -> common_pb2.Job:
        request = video_pb2.GenerateVideoRequest()
        json_format.ParseDict(
            {"provider": "kling", "prompt": "a red fox in snow", **fields}, request
        )
        return (await self.stub.GenerateVideo(request)).job

    async def events(self, job_id: str) -> list[common_pb2.JobEvent]:
        call = self.stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job_id), timeout=20)
        return [r.event async for r in call]

    async def run(self, **fields) -> common_pb2.Job:
        job = await self.generate(**fields)
        return (await self.events(job.id))[-1].job

    def stored_files(self) -> list[Path]:
        root = self.data_dir / "artifacts"
        return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture
async def kling(monkeypatch, tmp_path):
    with FakeVendorServer() as api, FakeVendorServer() as cdn:
        fake = FakeKling(api, cdn=cdn)
        monkeypatch.setenv("KLING_BASE_URL", api.url)
        monkeypatch.setenv("KLING_ACCESS_KEY", ACCESS_KEY)
        monkeypatch.setenv("KLING_SECRET_KEY", SECRET_KEY)
        monkeypatch.delenv("KLING_API_KEY", raising=False)
        # Failure tests run many jobs in a row: keep the circuit breaker out of their way.
        server = MediagenServer(make_settings(tmp_path, circuit_threshold=1000))
        server.registry.get(VIDEO, "kling").http.retry = FAST
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


async def test_text_to_video_end_to_end(kling, tmp_path):
    job = await kling.generate(duration_seconds=5, aspect_ratio="9:16", negative_prompt="blur")
    assert job.model == "kling-v2-5-turbo"
    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_CREDIT
    assert job.estimated_cost.units == 1.5 and job.estimated_cost.amount_micros == 210_000
    final = (await kling.events(job.id))[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error

    (create,) = kling.fake.creates()
    assert create.path == "/v1/videos/text2video"
    assert create.json() == {
        "model_name": "kling-v2-5-turbo",
        "prompt": "a red fox in snow",
        "negative_prompt": "blur",
        "mode": "std",
        "aspect_ratio": "9:16",
        "duration": "5",
        "external_task_id": job.id,
    }
    # One JWT, as Kling documents it, signed once and reused for the create and every poll.
    tokens = set(kling.fake.tokens)
    assert len(tokens) == 1 and len(kling.fake.tokens) >= 3
    header, claims = FakeKling.claims(tokens.pop())
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims["iss"] == ACCESS_KEY and claims["exp"] - claims["nbf"] == 1805
    polls = kling.fake.server.calls("GET", "/v1/videos/text2video/{id}")
    assert polls and all(p.params["id"] == final.vendor_job_id for p in polls)

    data = b"".join(
        [
            m.data
            async for m in kling.stub.DownloadVideo(video_pb2.DownloadVideoRequest(job_id=job.id))
        ]
    )
    (tmp_path / "k.mp4").write_bytes(data)
    info = probe(tmp_path / "k.mp4")
    assert (info.width, info.height) == (90, 160) and abs(info.duration_seconds - 5.0) < 0.1
    assert "authorization" not in kling.cdn.calls("GET", "/kling/{name}")[0].headers
    artifact = final.artifacts[0]
    assert artifact.metadata["klingDuration"] == "5"
    # Kling reported what it deducted: the final cost uses it.
    assert final.final_cost.basis == common_pb2.COST_BASIS_VENDOR_REPORTED
    assert final.final_cost.units == 1.5 and final.final_cost.amount_micros == 210_000


async def test_image_to_video_sends_bare_base64(kling):
    image = image_bytes(640, 360, "JPEG")
    kling.fake.deduction = "7"
    final = await kling.run(
        model="kling-v1-6",
        duration_seconds=10,
        input_image={"data": base64.b64encode(image).decode()},
        provider_options={"mode": "pro", "cfg_scale": 0.7},
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (create,) = kling.fake.creates()
    body = create.json()
    assert create.path == "/v1/videos/image2video"
    assert body["image"] == base64.b64encode(image).decode() and "aspect_ratio" not in body
    assert body["mode"] == "pro" and body["cfg_scale"] == 0.7 and body["duration"] == "10"
    assert kling.fake.server.calls("GET", "/v1/videos/image2video/{id}")
    assert abs(final.artifacts[0].duration_seconds - 10.0) < 0.1
    assert final.estimated_cost.units == 7.0  # pro: 3.5 units per 5 s
    assert final.final_cost.units == 7.0


async def test_sound_and_long_durations_on_v3(kling):
    final = await kling.run(
        model="kling-v3", duration_seconds=12, provider_options={"sound": "on", "mode": "pro"}
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    body = kling.fake.creates()[0].json()
    assert body["sound"] == "on" and body["duration"] == "12" and body["mode"] == "pro"
    assert final.estimated_cost.units == pytest.approx(6 * 12 / 5)


async def test_master_models_take_no_mode(kling):
    final = await kling.run(model="kling-v2-master")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert "mode" not in kling.fake.creates()[0].json()


def refused():
    small = base64.b64encode(image_bytes(200, 200)).decode()
    skinny = base64.b64encode(image_bytes(1200, 300)).decode()
    webp = base64.b64encode(image_bytes(400, 400, "WEBP")).decode()
    good = base64.b64encode(image_bytes(400, 400)).decode()
    return [
        ({"model": "kling-v1-5"}, "input_image"),
        ({"model": "kling-v2-1"}, "input_image"),
        ({"duration_seconds": 7}, "duration_seconds"),
        ({"duration_seconds": 5.5}, "duration_seconds"),
        ({"model": "kling-v3", "duration_seconds": 16}, "duration_seconds"),
        ({"aspect_ratio": "4:3"}, "aspect_ratio"),
        ({"aspect_ratio": "16:9", "input_image": {"data": good}}, "aspect_ratio"),
        ({"width": 1280, "height": 720}, "width"),
        ({"fps": 30}, "fps"),
        ({"seed": 3}, "seed"),
        ({"prompt": "x" * 2501}, "prompt"),
        ({"negative_prompt": "x" * 2501}, "negative_prompt"),
        ({"provider_options": {"mode": "ultra"}}, "provider_options.mode"),
        (
            {"model": "kling-v2-master", "provider_options": {"mode": "pro"}},
            "provider_options.mode",
        ),
        ({"provider_options": {"cfg_scale": 0.5}}, "provider_options.cfg_scale"),
        ({"model": "kling-v1", "provider_options": {"cfg_scale": 2}}, "provider_options.cfg_scale"),
        ({"provider_options": {"sound": "on"}}, "provider_options.sound"),
        (
            {"model": "kling-v2-6", "provider_options": {"sound": "on"}},
            "provider_options.sound",
        ),  # std: no audio
        ({"provider_options": {"camera": "zoom"}}, "provider_options.camera"),
        ({"input_image": {"data": small}}, "input_image.data"),
        ({"input_image": {"data": skinny}}, "input_image.data"),
        ({"input_image": {"data": webp}}, "input_image.content_type"),
        ({"input_image": {"uri": "http://img.example.com/a.png"}}, "input_image.uri"),
        ({"input_image": {"asset_id": "a-1"}}, "input_image.asset_id"),
        ({"model": "kling-v9"}, "model"),
    ]


async def test_refused_before_any_vendor_call(kling):
    for fields, field in refused():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await kling.generate(**fields)
        assert err.value.code() == Code.INVALID_ARGUMENT, fields
        assert field in bad_fields(err.value), (fields, err.value.details())
    assert kling.fake.creates() == []


def create_failures():
    """(reply, how many times, gRPC code, reason): each in Kling's envelope, inside 200 or 4xx/5xx."""
    return [
        (
            json_reply(envelope(1102, "Resource pack depleted or expired"), 200),
            1,
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_OUT_OF_CREDIT",
        ),
        (
            json_reply(envelope(1102, "Resource pack depleted or expired"), 429),
            1,
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_OUT_OF_CREDIT",
        ),
        (
            json_reply(envelope(1101, "Account in arrears"), 429),
            1,
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_OUT_OF_CREDIT",
        ),
        (
            json_reply(envelope(1201, "duration: illegal value"), 400),
            1,
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        (
            json_reply(envelope(1200, "Invalid request parameters"), 200),
            1,
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        (
            json_reply(envelope(1203, "model not found"), 404),
            1,
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        (
            json_reply(envelope(1301, "content security policy"), 400),
            1,
            Code.INVALID_ARGUMENT,
            "CONTENT_REJECTED",
        ),
        (
            json_reply(envelope(1103, "no access to model"), 403),
            1,
            Code.FAILED_PRECONDITION,
            "PROVIDER_AUTH_FAILED",
        ),
        (
            json_reply(envelope(1002, "Authorization is invalid"), 401),
            1,
            Code.FAILED_PRECONDITION,
            "PROVIDER_AUTH_FAILED",
        ),
        (
            error_reply(422, {"detail": "unprocessable"}),
            1,
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        # Retryable answers are retried (the create carries external_task_id); these never get better.
        (
            json_reply(envelope(1303, "parallel task over resource pack limit"), 429),
            10,
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_RATE_LIMITED",
        ),
        (
            json_reply(envelope(1302, "rate limit"), 429),
            10,
            Code.RESOURCE_EXHAUSTED,
            "PROVIDER_RATE_LIMITED",
        ),
        (
            json_reply(envelope(5000, "Server internal error"), 500),
            10,
            Code.UNAVAILABLE,
            "PROVIDER_UNAVAILABLE",
        ),
        (
            json_reply(envelope(5001, "maintenance"), 503),
            10,
            Code.UNAVAILABLE,
            "PROVIDER_UNAVAILABLE",
        ),
        (json_reply(envelope(5002, "timeout"), 504), 10, Code.UNAVAILABLE, "PROVIDER_TIMEOUT"),
        (
            server_error(502, "<html>Bad Gateway</html>"),
            10,
            Code.UNAVAILABLE,
            "PROVIDER_UNAVAILABLE",
        ),
        (dropped(), 10, Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (malformed_json(), 10, Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
    ]


async def test_create_failures(kling):
    for reply, times, code, reason in create_failures():
        kling.fake.server.fail_next("POST", "/v1/videos/text2video", reply, times=times)
        final = await kling.run()
        assert final.state == common_pb2.JOB_STATE_FAILED
        assert final.error.code == code.value[0], (reason, final.error)
        got, metadata = error_reason(final.error)
        assert got == reason and metadata["provider"] == "kling", (reason, final.error)
        assert not final.artifacts and kling.stored_files() == []
        assert SECRET_KEY not in final.error.message
        kling.fake.server._faults.clear()  # what a retried case did not use up
    assert kling.fake.tasks == {}


async def test_out_of_credit_and_concurrency_from_the_fake_itself(kling):
    kling.fake.units_left = 0
    final = await kling.run()
    assert error_reason(final.error)[0] == "PROVIDER_OUT_OF_CREDIT"
    assert error_reason(final.error)[1]["vendorCode"] == "1102"
    kling.fake.units_left = None
    kling.fake.concurrency = 0
    final = await kling.run()
    assert error_reason(final.error)[0] == "PROVIDER_RATE_LIMITED"


async def test_rate_limit_then_success(kling):
    kling.fake.server.fail_next(
        "POST",
        "/v1/videos/text2video",
        json_reply(envelope(1303, "parallel task over resource pack limit"), 429),
        times=2,
    )
    final = await kling.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(kling.fake.creates()) == 3 and len(kling.fake.tasks) == 1


async def test_lost_create_answer_is_recovered_by_external_task_id(kling):
    kling.fake.drop_after_create = True
    job = await kling.generate()
    final = (await kling.events(job.id))[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(kling.fake.creates()) == 2  # the lost one, and the repeat Kling refused
    (task,) = kling.fake.tasks.values()  # paid once
    assert final.vendor_job_id == task.task_id
    lookups = kling.fake.server.calls("GET", "/v1/videos/text2video/{id}")
    assert lookups[0].params["id"] == job.id


async def test_expired_token_is_signed_again(kling):
    kling.fake.server.fail_next(
        "POST",
        "/v1/videos/text2video",
        json_reply(envelope(1004, "Authorization has expired"), 401),
    )
    final = await kling.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(kling.fake.creates()) == 2


async def test_token_from_a_skewed_clock_is_refused_as_kling_does(kling):
    kling.fake.clock_offset = -60  # the fake's clock is a minute behind: our nbf is in its future
    final = await kling.run()
    got, metadata = error_reason(final.error)
    assert got == "PROVIDER_AUTH_FAILED" and metadata["vendorCode"] == "1003"


async def test_poll_errors_are_retried(kling):
    kling.provider.http.timeout = httpx.Timeout(0.3)
    kling.fake.server.script(
        "GET",
        "/v1/videos/text2video/{id}",
        [
            # Kling documents no Retry-After; when one comes anyway, it is honoured.
            json_reply(envelope(1302, "slow down"), 429, headers={"Retry-After": "0.3"}),
            json_reply(envelope(5000, "Server internal error"), 500),
            dropped(),
            json_reply(envelope(1302, "slow down"), 429),
            slow(2.0),
            malformed_json(),
        ],
    )
    final = await kling.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    polls = kling.fake.server.calls("GET", "/v1/videos/text2video/{id}")
    assert polls[1].at - polls[0].at >= 0.3


async def test_task_vanishing_fails_the_job(kling):
    kling.fake.server.fail_next(
        "GET",
        "/v1/videos/text2video/{id}",
        json_reply(envelope(1201, "Task not found"), 400),
        times=50,
    )
    final = await kling.run()
    assert final.error.code == Code.ABORTED.value[0]
    assert error_reason(final.error)[0] == "PROVIDER_JOB_FAILED"


async def test_task_failures(kling):
    for message, code, reason in [
        ("Failure to pass the risk control system", Code.INVALID_ARGUMENT, "CONTENT_REJECTED"),
        ("Video generation failed, please try again", Code.ABORTED, "PROVIDER_JOB_FAILED"),
    ]:
        kling.fake.plan_failure(message)
        final = await kling.run()
        assert final.state == common_pb2.JOB_STATE_FAILED
        assert final.error.code == code.value[0] and error_reason(final.error)[0] == reason
        assert message in final.error.message
    assert kling.stored_files() == []


async def test_output_failures(kling):
    kling.cdn.fail_next("GET", "/kling/{name}", error_reply(404, "Not Found"))
    final = await kling.run()
    assert error_reason(final.error)[0] == "PROVIDER_OUTPUT_UNAVAILABLE"
    body = kling.fake.video_bytes(5, 160, 90)
    kling.cdn.fail_next("GET", "/kling/{name}", truncated(body, 5000))
    final = await kling.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.artifacts[0].size_bytes == len(body)
    assert len(kling.stored_files()) == 1


async def test_cancel_has_no_vendor_call(kling):
    kling.fake.plan_stall()
    job = await kling.generate()
    async for response in kling.stub.WatchVideoJob(
        video_pb2.WatchVideoJobRequest(job_id=job.id), timeout=10
    ):
        if response.event.job.progress.vendor_status == "processing":
            break
    cancelled = (
        await kling.stub.CancelVideoJob(video_pb2.CancelVideoJobRequest(job_id=job.id))
    ).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    assert [r for r in kling.fake.server.requests if r.method not in ("GET", "POST")] == []


async def test_catalog_entry(kling):
    entry = (
        await kling.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="kling", media_type=VIDEO)
        )
    ).provider
    assert entry.configured
    assert [m.name for m in entry.models if m.default] == ["kling-v2-5-turbo"]
    models = {m.name: m for m in entry.models}
    assert list(models["kling-v1-5"].capabilities) == ["image_to_video"]
    assert all(
        p.unit == common_pb2.PRICE_UNIT_CREDIT and p.unit_price_micros == 140_000
        for p in entry.prices
    )
    assert list(entry.limits.aspect_ratios) == ["16:9", "9:16", "1:1"]


async def test_missing_keys_are_not_configured(monkeypatch, tmp_path):
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLING_ACCESS_KEY", ACCESS_KEY)  # half a pair is not enough
    server = MediagenServer(make_settings(tmp_path))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = video_pb2_grpc.VideoServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GenerateVideo(
                    video_pb2.GenerateVideoRequest(provider="kling", prompt="a fox")
                )
            assert err.value.code() == Code.FAILED_PRECONDITION
            assert error_reason(rpc_status.from_call(err.value))[0] == "PROVIDER_NOT_CONFIGURED"
            assert "KLING_SECRET_KEY" in err.value.details()
    finally:
        await server.stop(grace=0.1)


def test_spec_key_variable_holds_both_keys(monkeypatch, tmp_path):
    for name in KEY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KLING_API_KEY", f"{ACCESS_KEY}:{SECRET_KEY}")
    provider = KlingVideo(make_settings(tmp_path))
    assert provider.describe().configured
    _, claims = FakeKling.claims(provider.auth.token())
    assert claims["iss"] == ACCESS_KEY
    monkeypatch.setenv("KLING_API_KEY", "no-separator-here")
    entry = KlingVideo(make_settings(tmp_path)).describe()
    assert not entry.configured and "KLING_API_KEY" in entry.not_configured_reason


def test_token_is_cached_and_renewed_before_expiry():
    now = [1_000_000.0]
    auth = KlingAuth(ACCESS_KEY, SECRET_KEY, clock=lambda: now[0])
    first = auth.token()
    now[0] += 1499  # 301 s left: still good
    assert auth.token() == first
    now[0] += 1  # 300 s left: renew
    second = auth.token()
    assert second != first
    assert FakeKling.claims(second)[1] == {
        "iss": ACCESS_KEY,
        "exp": 1_001_500 + 1800,
        "nbf": 1_001_500 - 5,
    }
    auth.invalidate()
    assert auth.token() == second  # same second, same claims: same token
    request = httpx.Request("GET", "https://api-singapore.klingai.com/v1/videos/text2video/1")
    flow = auth.auth_flow(request)
    assert next(flow).headers["Authorization"] == f"Bearer {second}"


def test_jwt_signature_is_hs256():
    import hashlib
    import hmac

    token, exp = encode_jwt("ak", "sk", 100.0)
    signing_input, signature = token.rsplit(".", 1)
    expected = hmac.new(b"sk", signing_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    assert exp == 1900 and "=" not in token
