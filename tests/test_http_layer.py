"""The shared vendor HTTP layer, over real HTTP against the fake vendor server on 127.0.0.1.

Waits between retries go through a fake clock (nothing sleeps for real); only
the timeout tests wait, for a fraction of a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from providers import secrets
from providers.base import JobContext
from providers.errors import (
    ContentRejected,
    JobDeadlineExceeded,
    OutputTooLarge,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderError,
    ProviderInvalidRequest,
    ProviderJobFailed,
    ProviderOutOfCredit,
    ProviderOutputUnavailable,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    UnsafeOutputURL,
)
from providers.http import (
    CHUNK_SIZE,
    USER_AGENT,
    UrlPolicy,
    VendorHTTP,
    base_url_from_env,
    check_url,
    classify,
    vendor_message,
)
from providers.retry import RetryPolicy
from tests.fakes.server import (
    FakeVendorServer,
    PatternStream,
    Reply,
    dropped,
    error_reply,
    http_date,
    large_body,
    malformed_json,
    rate_limited,
    server_error,
    slow,
    truncated,
)

API_KEY = "sk-test-MEDIAGEN-LEAK-CANARY-0123456789abcdef"
secrets.register(API_KEY)

LOCAL = UrlPolicy(allow_http=True, allow_private=True)


class FakeClock:
    """Monotonic time that moves only when the retry policy sleeps."""

    def __init__(self) -> None:
        self.now = 5000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def vendor() -> Iterator[FakeVendorServer]:
    with FakeVendorServer() as server:
        yield server


@pytest.fixture
def cdn() -> Iterator[FakeVendorServer]:
    """A second server: another origin, like a vendor's output CDN."""
    with FakeVendorServer() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def vendor_logs() -> Iterator[list[dict]]:
    """Every structlog event, info level included, whatever the app's logging set-up filters."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)


@pytest.fixture
async def make_http(vendor: FakeVendorServer, clock: FakeClock) -> AsyncIterator:
    made: list[VendorHTTP] = []

    def make(provider: str = "openai", **options) -> VendorHTTP:
        options.setdefault("base_url", vendor.url)
        options.setdefault("headers", {"Authorization": f"Bearer {API_KEY}"})
        options.setdefault("url_policy", LOCAL)
        options.setdefault("timeout", httpx.Timeout(5.0))
        # random() == 1.0: full jitter waits its whole cap, so delays are exact.
        options.setdefault("retry", RetryPolicy(sleep=clock.sleep, clock=clock, random=lambda: 1.0))
        http = VendorHTTP(provider, **options)
        made.append(http)
        return http

    yield make
    for http in made:
        await http.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def fail(coro) -> Exception:
    with pytest.raises(Exception) as raised:
        await coro
    return raised.value


async def read_all(
    http: VendorHTTP, url: str, *, max_bytes: int = 64 * 1024 * 1024, **options
) -> list[bytes]:
    chunks = []
    async with http.open_stream(url, ctx=None, max_bytes=max_bytes, **options) as body:
        async for chunk in body:
            chunks.append(chunk)
    return chunks


# --- classification -------------------------------------------------------------------

OPENAI_BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided: sk-abc***. You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
OPENAI_RATE = {
    "error": {
        "message": "Rate limit reached for tts-1 in organization org-x on requests per min (RPM): Limit 50.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_POLICY = {
    "error": {
        "message": "Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.",
        "type": "invalid_request_error",
        "param": None,
        "code": "content_policy_violation",
    }
}
OPENAI_MODERATION = {
    "error": {
        "message": "Your request was rejected by the safety system. safety_violations=[sexual].",
        "type": "image_generation_user_error",
        "param": None,
        "code": "moderation_blocked",
    }
}
OPENAI_MODEL_NOT_FOUND = {
    "error": {
        "message": "The model `dall-e-3` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}
ELEVENLABS_QUOTA = {
    "detail": {
        "status": "quota_exceeded",
        "message": "This request exceeds your quota of 10000. You have 0 credits remaining, while 120 credits are required for this request.",
    }
}
ELEVENLABS_BUSY = {
    "detail": {
        "status": "too_many_concurrent_requests",
        "message": "Too many concurrent requests. Your plan allows 2.",
    }
}
FAL_BALANCE = {
    "detail": "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing"
}
FAL_422 = {
    "detail": [
        {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"},
        {
            "loc": ["body", "duration"],
            "msg": "unexpected value; permitted: '5', '10'",
            "type": "value_error.const",
        },
    ]
}
RUNWAY_400 = {
    "error": "Validation of body failed",
    "issues": [{"code": "invalid_string", "path": ["promptImage"], "message": "Invalid url"}],
    "docUrl": "https://docs.dev.runwayml.com/api",
}
RUNWAY_CREDITS = {"error": "You do not have enough credits to run this task."}
STABILITY_400 = {"id": "e4c1b2a", "name": "bad_request", "errors": ["prompt: is required"]}
STABILITY_413 = {
    "id": "77aa",
    "name": "payload_too_large",
    "errors": ["body: payloads cannot be larger than 10MiB in size"],
}
STABILITY_MODERATION = {
    "id": "ed14",
    "name": "content_moderation",
    "errors": [
        "Your request was flagged by our content moderation system, as a result your request was denied and you were not charged."
    ],
}
MUBERT_422 = {
    "message": "The given data was invalid.",
    "errors": {"duration": ["The duration must be at least 5."]},
}
GOOGLE_400 = {
    "error": {
        "code": 400,
        "message": "Invalid value at 'audio_config.speaking_rate' (TYPE_DOUBLE), 9",
        "status": "INVALID_ARGUMENT",
    }
}
GOOGLE_403 = {
    "error": {
        "code": 403,
        "message": "Cloud Text-to-Speech API has not been used in project 123 before or it is disabled.",
        "status": "PERMISSION_DENIED",
    }
}
SUNO_CREDITS = {
    "code": 429,
    "msg": "The current credits are insufficient. Please top up.",
    "data": None,
}
CLOUDFLARE_502 = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>"


@pytest.mark.parametrize(
    ("method", "status", "body", "expected", "says"),
    [
        ("POST", 401, OPENAI_BAD_KEY, ProviderAuthFailed, "Incorrect API key"),
        ("POST", 403, GOOGLE_403, ProviderAuthFailed, "has not been used"),
        ("POST", 403, None, ProviderAuthFailed, "HTTP 403"),  # Midjourney proxy: bare 403
        (
            "POST",
            402,
            {"detail": "Insufficient balance"},
            ProviderOutOfCredit,
            "Insufficient balance",
        ),
        ("POST", 429, OPENAI_QUOTA, ProviderOutOfCredit, "exceeded your current quota"),
        ("POST", 401, ELEVENLABS_QUOTA, ProviderOutOfCredit, "exceeds your quota"),
        ("POST", 403, FAL_BALANCE, ProviderOutOfCredit, "Exhausted balance"),
        ("POST", 400, RUNWAY_CREDITS, ProviderOutOfCredit, "enough credits"),
        ("POST", 429, SUNO_CREDITS, ProviderOutOfCredit, "credits are insufficient"),
        ("POST", 429, OPENAI_RATE, ProviderRateLimited, "Rate limit reached"),
        ("POST", 429, ELEVENLABS_BUSY, ProviderRateLimited, "Too many concurrent requests"),
        (
            "POST",
            400,
            RUNWAY_400,
            ProviderInvalidRequest,
            "Validation of body failed: promptImage: Invalid url",
        ),
        (
            "POST",
            422,
            FAL_422,
            ProviderInvalidRequest,
            "body.prompt: field required; body.duration",
        ),
        ("POST", 400, STABILITY_400, ProviderInvalidRequest, "prompt: is required"),
        ("POST", 413, STABILITY_413, ProviderInvalidRequest, "larger than 10MiB"),
        (
            "POST",
            422,
            MUBERT_422,
            ProviderInvalidRequest,
            "duration: The duration must be at least 5.",
        ),
        ("POST", 400, GOOGLE_400, ProviderInvalidRequest, "speaking_rate"),
        (
            "POST",
            409,
            {"message": "A task with this id already exists"},
            ProviderInvalidRequest,
            "already exists",
        ),
        ("POST", 404, OPENAI_MODEL_NOT_FOUND, ProviderInvalidRequest, "does not exist"),
        ("GET", 404, {"error": "Task not found"}, ProviderJobFailed, "Task not found"),
        ("POST", 403, STABILITY_MODERATION, ContentRejected, "content moderation"),
        ("POST", 400, OPENAI_POLICY, ContentRejected, "safety system"),
        ("POST", 400, OPENAI_MODERATION, ContentRejected, "safety system"),
        (
            "POST",
            500,
            {"error": {"message": "The server had an error"}},
            ProviderUnavailable,
            "server had an error",
        ),
        ("POST", 502, CLOUDFLARE_502, ProviderUnavailable, "502 Bad Gateway"),
        (
            "POST",
            503,
            {"code": 5001, "message": "system maintenance"},
            ProviderUnavailable,
            "maintenance",
        ),
        ("POST", 504, None, ProviderTimeout, "HTTP 504"),
        ("POST", 408, None, ProviderTimeout, "HTTP 408"),
    ],
)
async def test_vendor_answers_are_classified(
    make_http, vendor, method, status, body, expected, says
):
    vendor.route(method, "/call", error_reply(status, body))
    http = make_http()
    # Non-idempotent POSTs are never retried; GETs get one attempt here.
    http.retry = http.retry.with_options(max_attempts=1)
    error = await fail(
        http.request_json(method, "/call", json={}, idempotent=False, ctx=None, model="m-1")
    )
    assert type(error) is expected
    assert says in error.message
    assert error.metadata["provider"] == "openai"
    assert error.metadata["model"] == "m-1"
    assert error.metadata["httpStatus"] == str(status)


async def test_request_ids_come_from_the_vendors_header_or_body(make_http, vendor):
    vendor.route(
        "POST", "/openai", error_reply(400, OPENAI_BAD_KEY, {"x-request-id": "req_abc123"})
    )
    vendor.route(
        "POST", "/elevenlabs", error_reply(400, {"detail": "bad"}, {"request-id": "el-42"})
    )
    vendor.route(
        "POST", "/kling", error_reply(400, {"code": 1201, "message": "bad", "request_id": "kl-7"})
    )
    vendor.route("POST", "/cloudflare", error_reply(502, "oops", {"cf-ray": "8a1b2c3d4e-AMS"}))
    http = make_http()
    found = {}
    for name in ("openai", "elevenlabs", "kling", "cloudflare"):
        error = await fail(http.request_json("POST", f"/{name}", idempotent=False, ctx=None))
        found[name] = error.metadata.get("vendorRequestId")
    assert found == {
        "openai": "req_abc123",
        "elevenlabs": "el-42",
        "kling": "kl-7",
        "cloudflare": "8a1b2c3d4e-AMS",
    }


async def test_long_vendor_text_is_truncated(make_http, vendor):
    vendor.route("POST", "/call", error_reply(400, {"error": {"message": "x" * 10_000}}))
    error = await fail(make_http().request_json("POST", "/call", idempotent=False, ctx=None))
    assert len(error.message) < 600


async def test_rate_limit_carries_retry_after(make_http, vendor):
    vendor.route("POST", "/call", rate_limited(20, body=OPENAI_RATE))
    error = await fail(make_http().request_json("POST", "/call", idempotent=False, ctx=None))
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == 20.0
    assert error.retryable


async def test_retry_after_ms_is_read(make_http, vendor):
    vendor.route("POST", "/call", rate_limited(retry_after_ms=1500, body=OPENAI_RATE))
    error = await fail(make_http().request_json("POST", "/call", idempotent=False, ctx=None))
    assert error.retry_after == 1.5


def test_classify_works_on_any_read_response():
    request = httpx.Request("POST", "https://api.openai.com/v1/images/generations")
    response = httpx.Response(429, json=OPENAI_QUOTA, request=request)
    error = classify(response, "openai", "gpt-image-1")
    assert isinstance(error, ProviderOutOfCredit)
    assert not error.retryable


def test_vendor_message_reads_the_common_shapes():
    assert vendor_message({"error": {"message": "m", "param": "size"}}) == "size: m"
    assert vendor_message({"detail": "d"}) == "d"
    assert (
        vendor_message({"detail": {"status": "voice_not_found", "message": "no voice"}})
        == "no voice"
    )
    assert vendor_message(
        {"message": "Forbidden", "code": "LicenseForbiddenDuration", "description": "max 60 s"}
    ) == ("Forbidden (max 60 s)")
    assert vendor_message({"errors": [{"message": "bad", "field": "prompt"}]}) == "prompt: bad"
    assert vendor_message({"msg": "success"}) == "success"
    assert vendor_message(None) == ""


# --- vendor-specific envelopes through the hook ------------------------------------------


def kling_envelope(response: httpx.Response, body) -> ProviderError | None:
    """Kling answers {code, message, request_id}; HTTP 200 alone is not success."""
    if not isinstance(body, dict) or body.get("code") in (None, 0):
        return None
    code, message = body["code"], body.get("message", "")
    if code in (1101, 1102):
        return ProviderOutOfCredit(
            f"kling: resource pack depleted or account in arrears ({message})"
        )
    if code == 1301:
        return ContentRejected(f"kling: content safety ({message})")
    if code in (1302, 1303):
        return ProviderRateLimited(f"kling: {message}")
    return ProviderInvalidRequest(f"kling: {message}")


async def test_hook_turns_an_http_200_envelope_into_an_error(make_http, vendor):
    vendor.route(
        "POST",
        "/v1/videos/text2video",
        {"code": 1102, "message": "resource pack exhausted", "request_id": "kl-123"},
    )
    http = make_http("kling", classify_hook=kling_envelope)
    error = await fail(
        http.request_json(
            "POST", "/v1/videos/text2video", json={}, idempotent=False, ctx=None, model="kling-v2"
        )
    )
    assert isinstance(error, ProviderOutOfCredit)
    # The hook said nothing about where; the layer filled it in.
    assert error.metadata == {
        "provider": "kling",
        "model": "kling-v2",
        "vendorRequestId": "kl-123",
        "httpStatus": "200",
    }


async def test_hook_lets_success_through(make_http, vendor):
    vendor.route(
        "GET",
        "/v1/videos/text2video/{id}",
        lambda req: {"code": 0, "data": {"task_id": req.params["id"]}},
    )
    http = make_http("kling", classify_hook=kling_envelope)
    body, response = await http.request_json(
        "GET", "/v1/videos/text2video/t-9", idempotent=True, ctx=None
    )
    assert body["data"]["task_id"] == "t-9"
    assert response.status_code == 200


async def test_hook_errors_are_retried_when_retryable(make_http, vendor, clock):
    vendor.script(
        "GET",
        "/v1/videos/text2video/{id}",
        [Reply(body={"code": 1303, "message": "parallel task over resource pack limit"})],
    )
    vendor.route("GET", "/v1/videos/text2video/{id}", {"code": 0, "data": {}})
    http = make_http("kling", classify_hook=kling_envelope)
    await http.request_json("GET", "/v1/videos/text2video/t-1", idempotent=True, ctx=None)
    assert len(vendor.calls()) == 2
    assert clock.sleeps == [0.5]


# --- retries ---------------------------------------------------------------------------------


async def test_5xx_is_retried_then_succeeds(make_http, vendor, clock):
    vendor.route("GET", "/v1/tasks/{id}", lambda req: {"id": req.params["id"], "status": "RUNNING"})
    vendor.fail_next("GET", "/v1/tasks/{id}", server_error(503), times=2)
    body, _ = await make_http().request_json("GET", "/v1/tasks/t-1", idempotent=True, ctx=None)
    assert body == {"id": "t-1", "status": "RUNNING"}
    assert len(vendor.calls("GET", "/v1/tasks/{id}")) == 3
    assert clock.sleeps == [0.5, 1.0]


async def test_retries_stop_after_max_attempts(make_http, vendor, clock):
    vendor.route("GET", "/poll", server_error(502))
    http = make_http(
        retry=RetryPolicy(sleep=clock.sleep, clock=clock, random=lambda: 1.0, max_attempts=3)
    )
    error = await fail(http.request_json("GET", "/poll", idempotent=True, ctx=None))
    assert isinstance(error, ProviderUnavailable)
    assert len(vendor.calls()) == 3


async def test_retry_after_seconds_is_honoured(make_http, vendor, clock):
    vendor.script("GET", "/poll", [rate_limited(7)])
    vendor.route("GET", "/poll", {"ok": True})
    await make_http().request_json("GET", "/poll", idempotent=True, ctx=None)
    assert clock.sleeps == [7.0]


async def test_retry_after_http_date_is_honoured(make_http, vendor, clock):
    sent = 1_800_000_000.0
    vendor.script(
        "GET",
        "/poll",
        [
            Reply(
                status=429,
                body=OPENAI_RATE,
                headers={"Date": http_date(sent), "Retry-After": http_date(sent + 12)},
            )
        ],
    )
    vendor.route("GET", "/poll", {"ok": True})
    await make_http().request_json("GET", "/poll", idempotent=True, ctx=None)
    assert clock.sleeps == [12.0]


async def test_retry_after_is_capped(make_http, vendor, clock):
    vendor.script("GET", "/poll", [rate_limited(3600)])
    vendor.route("GET", "/poll", {"ok": True})
    await make_http().request_json("GET", "/poll", idempotent=True, ctx=None)
    assert clock.sleeps == [60.0]


async def test_quota_exhausted_429_is_not_retried(make_http, vendor, clock):
    vendor.route("GET", "/poll", error_reply(429, OPENAI_QUOTA, {"Retry-After": "1"}))
    error = await fail(make_http().request_json("GET", "/poll", idempotent=True, ctx=None))
    assert isinstance(error, ProviderOutOfCredit)
    assert len(vendor.calls()) == 1
    assert clock.sleeps == []


async def test_post_is_not_retried_unless_idempotent(make_http, vendor, clock):
    vendor.route("POST", "/v1/generations", server_error(503))
    http = make_http()
    error = await fail(
        http.request_json(
            "POST", "/v1/generations", json={"prompt": "a fox"}, idempotent=False, ctx=None
        )
    )
    assert isinstance(error, ProviderUnavailable)
    assert len(vendor.calls()) == 1

    vendor.reset()
    vendor.script("POST", "/v1/generations", [server_error(503)])
    vendor.route("POST", "/v1/generations", (201, {"id": "gen-1"}))
    body, response = await http.request_json(
        "POST",
        "/v1/generations",
        json={"prompt": "a fox"},
        headers={"Idempotency-Key": "job-42"},
        idempotent=True,
        ctx=None,
    )
    assert (body, response.status_code) == ({"id": "gen-1"}, 201)
    calls = vendor.calls("POST", "/v1/generations")
    assert [c.headers["idempotency-key"] for c in calls] == ["job-42", "job-42"]
    assert [c.json() for c in calls] == [{"prompt": "a fox"}] * 2


async def test_post_is_retried_when_the_connection_never_opened(make_http, clock):
    # Connection refused: the vendor cannot have seen the request, so a retry is safe.
    http = make_http(base_url=f"http://127.0.0.1:{closed_port()}")
    error = await fail(
        http.request_json("POST", "/v1/generations", json={}, idempotent=False, ctx=None)
    )
    assert isinstance(error, ProviderUnavailable)
    assert "ConnectError" in error.message
    assert len(clock.sleeps) == 4  # five attempts


async def test_x_should_retry_false_stops_retries(make_http, vendor, clock):
    vendor.route("GET", "/poll", error_reply(503, {"error": "down"}, {"x-should-retry": "false"}))
    error = await fail(make_http().request_json("GET", "/poll", idempotent=True, ctx=None))
    assert isinstance(error, ProviderUnavailable)
    assert not error.retryable
    assert len(vendor.calls()) == 1


async def test_retry_after_beyond_the_deadline_stops(make_http, vendor, clock):
    vendor.route("GET", "/poll", rate_limited(30, body=OPENAI_RATE))
    ctx = JobContext(job_id="j1", deadline=clock.now + 10)
    error = await fail(make_http().request_json("GET", "/poll", idempotent=True, ctx=ctx))
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == 30.0
    assert len(vendor.calls()) == 1
    assert clock.sleeps == []


async def test_a_passed_deadline_sends_nothing(make_http, vendor, clock):
    ctx = JobContext(job_id="j1", deadline=clock.now - 1)
    error = await fail(make_http().request_json("GET", "/poll", idempotent=True, ctx=ctx))
    assert isinstance(error, JobDeadlineExceeded)
    assert vendor.calls() == []


# --- transport failures --------------------------------------------------------------------


async def test_timeout_becomes_provider_timeout(make_http, vendor):
    vendor.route("POST", "/v1/audio/speech", slow(3.0))
    http = make_http(timeout=httpx.Timeout(5.0, read=0.2))
    error = await fail(
        http.request_json("POST", "/v1/audio/speech", json={}, idempotent=False, ctx=None)
    )
    assert isinstance(error, ProviderTimeout)
    assert error.retryable
    assert len(vendor.calls()) == 1


async def test_requests_cancelled_while_waiting_for_a_connection_do_not_leak_it(make_http, vendor):
    """httpcore#1093: a request cancelled just after the pool handed it a new connection,
    before it connected, left that connection in the pool for good. Once every slot was
    held that way, every call failed with PoolTimeout against a healthy vendor."""
    vendor.route("GET", "/slow", slow(0.3, Reply(body={})))
    vendor.route("GET", "/fast", {"ok": True})
    # No keep-alive: a finished request closes its connection, so the next one queued
    # gets a brand-new connection, the case httpcore leaks.
    http = make_http(
        timeout=httpx.Timeout(5.0, pool=0.5),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
        retry=RetryPolicy(max_attempts=1),
    )
    queued: list[asyncio.Task] = []

    async def slow_then_cancel_the_queue() -> None:
        await http.request_json("GET", "/slow", idempotent=True, ctx=None)
        for task in queued:  # e.g. jobs cancelled while their polls wait for a connection
            task.cancel()

    holding = asyncio.create_task(slow_then_cancel_the_queue())
    await asyncio.sleep(0.1)
    queued += [
        asyncio.create_task(http.request_json("GET", "/fast", idempotent=True, ctx=None))
        for _ in range(6)
    ]
    await holding
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
    # The slot is free again.
    for _ in range(3):
        body, _ = await http.request_json("GET", "/fast", idempotent=True, ctx=None)
        assert body == {"ok": True}


async def test_a_call_waits_for_a_free_connection_no_longer_than_the_pool_timeout(make_http, vendor):
    vendor.route("GET", "/v1/outputs/big", large_body(4 * 1024 * 1024))
    vendor.route("GET", "/fast", {"ok": True})
    http = make_http(
        timeout=httpx.Timeout(5.0, pool=0.1),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        retry=RetryPolicy(max_attempts=1),
    )
    # An open stream holds its connection until it is closed...
    async with http.open_stream("/v1/outputs/big", ctx=None, max_bytes=8 << 20) as body:
        await anext(body)
        error = await fail(http.request_json("GET", "/fast", idempotent=True, ctx=None))
        assert isinstance(error, ProviderTimeout)
    # ...and gives it back after.
    body_json, _ = await http.request_json("GET", "/fast", idempotent=True, ctx=None)
    assert body_json == {"ok": True}


async def test_connections_are_reused_and_no_more_than_the_pool_size_are_used_at_once(make_http, vendor):
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def busy(request):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return Reply(body={"ok": True})

    vendor.route("GET", "/busy", busy)
    http = make_http(limits=httpx.Limits(max_connections=2, max_keepalive_connections=2))
    for _ in range(3):
        await http.request_json("GET", "/busy", idempotent=True, ctx=None)
    assert len({call.client_port for call in vendor.calls()}) == 1  # one kept-alive connection
    answers = await asyncio.gather(*(http.request_json("GET", "/busy", idempotent=True, ctx=None) for _ in range(8)))
    assert [body for body, _ in answers] == [{"ok": True}] * 8
    assert most[0] == 2
    assert len({call.client_port for call in vendor.calls()}) == 2

async def test_deadline_shortens_each_attempt(make_http, vendor, clock):
    vendor.route("GET", "/poll", slow(3.0))
    http = make_http(timeout=httpx.Timeout(30.0))
    ctx = JobContext(job_id="j1", deadline=clock.now + 0.3)
    error = await fail(http.request_json("GET", "/poll", idempotent=True, ctx=ctx))
    assert isinstance(error, ProviderTimeout)
    # One attempt: the backoff (0.5 s) would end past the deadline.
    assert len(vendor.calls()) == 1


async def test_dropped_connection_is_unavailable_and_a_post_is_not_retried(make_http, vendor):
    vendor.route("POST", "/v1/generations", dropped())
    error = await fail(
        make_http().request_json("POST", "/v1/generations", json={}, idempotent=False, ctx=None)
    )
    assert isinstance(error, ProviderUnavailable)
    assert len(vendor.calls()) == 1


async def test_dropped_connection_on_a_poll_is_retried(make_http, vendor, clock):
    vendor.script("GET", "/poll", [dropped()])
    vendor.route("GET", "/poll", {"status": "done"})
    body, _ = await make_http().request_json("GET", "/poll", idempotent=True, ctx=None)
    assert body == {"status": "done"}
    assert clock.sleeps == [0.5]


async def test_malformed_json_is_a_bad_response(make_http, vendor):
    vendor.route("POST", "/v1/generations", malformed_json())
    error = await fail(
        make_http().request_json("POST", "/v1/generations", idempotent=False, ctx=None)
    )
    assert isinstance(error, ProviderBadResponse)
    assert error.metadata["httpStatus"] == "200"


async def test_malformed_json_on_a_poll_is_retried(make_http, vendor):
    vendor.script("GET", "/poll", [malformed_json()])
    vendor.route("GET", "/poll", {"status": "done"})
    body, _ = await make_http().request_json("GET", "/poll", idempotent=True, ctx=None)
    assert body == {"status": "done"}


async def test_body_cut_short_on_a_plain_call_is_unavailable(make_http, vendor):
    vendor.route("POST", "/call", truncated(b'{"id": "task-1", "status": "PENDING"}', 10))
    error = await fail(make_http().request_json("POST", "/call", idempotent=False, ctx=None))
    assert isinstance(error, ProviderUnavailable)


# --- requests as sent ------------------------------------------------------------------------


async def test_requests_carry_auth_user_agent_and_body(make_http, vendor):
    vendor.route("POST", "/v1/image_to_video", (200, {"id": "task-1"}))
    http = make_http(
        "runway", headers={"Authorization": f"Bearer {API_KEY}", "X-Runway-Version": "2024-11-06"}
    )
    body, _ = await http.request_json(
        "POST", "/v1/image_to_video", json={"model": "gen4_turbo"}, idempotent=False, ctx=None
    )
    assert body == {"id": "task-1"}
    (call,) = vendor.calls("POST", "/v1/image_to_video")
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    assert call.headers["x-runway-version"] == "2024-11-06"
    assert call.headers["user-agent"] == USER_AGENT
    assert call.json() == {"model": "gen4_turbo"}


async def test_multipart_uploads_are_sent(make_http, vendor):
    vendor.route("POST", "/v2beta/image-to-video", {"id": "gen-1"})
    await make_http("stability").request_json(
        "POST",
        "/v2beta/image-to-video",
        data={"seed": "0"},
        files={"image": ("frame.png", b"\x89PNG fake", "image/png")},
        idempotent=False,
        ctx=None,
    )
    (call,) = vendor.calls()
    assert call.headers["content-type"].startswith("multipart/form-data")
    assert b"\x89PNG fake" in call.body


async def test_base_url_path_is_a_prefix():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={})

    http = VendorHTTP(
        "mubert",
        base_url="https://music-api.mubert.com/api/v3",
        transport=httpx.MockTransport(handler),
        url_policy=LOCAL,
    )
    await http.request_json("POST", "/public/tracks", json={}, idempotent=False, ctx=None)
    async with http.open_stream("/public/tracks/t1/file", ctx=None, max_bytes=10) as body:
        async for _ in body:
            pass
    await http.aclose()
    assert seen == [
        "https://music-api.mubert.com/api/v3/public/tracks",
        "https://music-api.mubert.com/api/v3/public/tracks/t1/file",
    ]


def test_base_url_from_env(monkeypatch):
    monkeypatch.delenv("RUNWAY_BASE_URL", raising=False)
    assert (
        base_url_from_env("RUNWAY", "https://api.dev.runwayml.com")
        == "https://api.dev.runwayml.com"
    )
    monkeypatch.setenv("RUNWAY_BASE_URL", "http://127.0.0.1:9999")
    assert base_url_from_env("runway", "https://api.dev.runwayml.com") == "http://127.0.0.1:9999"


# --- raw responses -----------------------------------------------------------------------------


async def test_request_returns_bytes_or_json_as_the_vendor_answers(make_http, vendor):
    vendor.script(
        "GET",
        "/v2beta/image-to-video/result/{id}",
        [Reply(status=202, body={"id": "g1", "status": "in-progress"})],
    )
    vendor.route(
        "GET",
        "/v2beta/image-to-video/result/{id}",
        Reply(
            body=b"\x00\x00\x00\x18ftypmp42",
            headers={"Content-Type": "video/mp4", "finish-reason": "SUCCESS"},
        ),
    )
    http = make_http("stability")
    pending = await http.request(
        "GET", "/v2beta/image-to-video/result/g1", idempotent=True, ctx=None
    )
    assert pending.status_code == 202
    assert pending.json()["status"] == "in-progress"
    done = await http.request("GET", "/v2beta/image-to-video/result/g1", idempotent=True, ctx=None)
    assert done.content == b"\x00\x00\x00\x18ftypmp42"


async def test_content_filtered_success_is_a_rejection(make_http, vendor):
    vendor.route(
        "POST",
        "/v2beta/stable-image/generate/core",
        Reply(
            body=b"blurred",
            headers={"Content-Type": "image/png", "finish-reason": "CONTENT_FILTERED"},
        ),
    )
    error = await fail(
        make_http("stability").request(
            "POST", "/v2beta/stable-image/generate/core", idempotent=False, ctx=None
        )
    )
    assert isinstance(error, ContentRejected)


async def test_content_filtered_json_is_a_rejection(make_http, vendor):
    vendor.route(
        "GET", "/result", {"video": "AAAA", "finish_reason": "CONTENT_FILTERED", "seed": 1}
    )
    error = await fail(
        make_http("stability").request_json("GET", "/result", idempotent=True, ctx=None)
    )
    assert isinstance(error, ContentRejected)


async def test_request_refuses_oversized_bodies(make_http, vendor):
    vendor.route("GET", "/image", large_body(2 * 1024 * 1024))
    vendor.route("GET", "/image-chunked", large_body(2 * 1024 * 1024, declare_length=False))
    http = make_http()
    for path in ("/image", "/image-chunked"):
        error = await fail(
            http.request("GET", path, idempotent=True, ctx=None, max_bytes=1024 * 1024)
        )
        assert isinstance(error, OutputTooLarge), path


# --- streamed downloads --------------------------------------------------------------------------


@pytest.mark.parametrize("declare_length", [True, False])
async def test_multi_megabyte_download_streams_in_bounded_chunks(make_http, vendor, declare_length):
    size = 6 * 1024 * 1024 + 123
    vendor.route(
        "GET",
        "/outputs/{name}",
        large_body(size, content_type="video/mp4", declare_length=declare_length),
    )
    chunks = await read_all(make_http(), "/outputs/video.mp4")
    assert max(len(c) for c in chunks) <= CHUNK_SIZE
    assert sum(len(c) for c in chunks) == size
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    assert digest.hexdigest() == PatternStream(size).sha256()


@pytest.mark.parametrize(
    "reply",
    [
        large_body(3 * 1024 * 1024, cut_after=1024 * 1024),
        large_body(3 * 1024 * 1024, cut_after=1024 * 1024, declare_length=False),
        truncated(b"x" * 100_000, 40_000),
    ],
    ids=["content-length", "chunked", "small"],
)
async def test_body_cut_short_is_detected(make_http, vendor, reply):
    vendor.route("GET", "/outputs/video.mp4", reply)
    received = 0
    with pytest.raises(ProviderOutputUnavailable) as raised:
        async with make_http().open_stream("/outputs/video.mp4", ctx=None, max_bytes=10**8) as body:
            async for chunk in body:
                received += len(chunk)
    assert raised.value.retryable  # the runner fetches again; nothing partial is kept
    assert "cut short" in raised.value.message
    assert received < 3 * 1024 * 1024


async def test_a_stalled_body_is_cut_short(make_http, vendor):
    stalled = large_body(1024 * 1024, chunk_size=256 * 1024)
    stalled.chunk_delay = 2.0
    vendor.route("GET", "/outputs/slow.mp4", stalled)
    http = make_http(timeout=httpx.Timeout(5.0, read=0.2))
    with pytest.raises(ProviderOutputUnavailable, match="stalled"):
        await read_all(http, "/outputs/slow.mp4")


async def test_declared_size_over_the_limit_is_refused_before_reading(make_http, vendor):
    vendor.route("GET", "/outputs/huge.mp4", large_body(20 * 1024 * 1024))
    http = make_http()
    with pytest.raises(OutputTooLarge):
        async with http.open_stream("/outputs/huge.mp4", ctx=None, max_bytes=1024 * 1024):
            pytest.fail("the stream must not open")


async def test_undeclared_size_over_the_limit_stops_the_stream(make_http, vendor):
    vendor.route("GET", "/outputs/huge.mp4", large_body(20 * 1024 * 1024, declare_length=False))
    received = 0
    with pytest.raises(OutputTooLarge):
        async with make_http().open_stream(
            "/outputs/huge.mp4", ctx=None, max_bytes=1024 * 1024
        ) as body:
            async for chunk in body:
                received += len(chunk)
    assert received <= 1024 * 1024


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (410, False), (403, True)])
async def test_output_url_errors(make_http, cdn, status, retryable):
    cdn.route(
        "GET", "/files/{name}", error_reply(status, "<Error><Code>AccessDenied</Code></Error>")
    )
    http = make_http(base_url="https://api.vendor.test")
    with pytest.raises(ProviderOutputUnavailable) as raised:
        await read_all(http, f"{cdn.url}/files/out.mp4?X-Amz-Signature=abc")
    assert raised.value.retryable is retryable
    assert raised.value.metadata["httpStatus"] == str(status)


async def test_output_host_5xx_is_retried_when_opening(make_http, cdn, clock):
    cdn.script("GET", "/files/{name}", [server_error(503)])
    cdn.route("GET", "/files/{name}", large_body(1000))
    chunks = await read_all(make_http(base_url="https://api.vendor.test"), f"{cdn.url}/files/a.wav")
    assert sum(map(len, chunks)) == 1000
    assert clock.sleeps == [0.5]


async def test_outputs_on_another_origin_get_no_api_credentials(make_http, cdn):
    cdn.route("GET", "/files/{name}", large_body(10))
    await read_all(make_http(base_url="https://api.vendor.test"), f"{cdn.url}/files/a.png")
    (call,) = cdn.calls()
    assert "authorization" not in call.headers
    assert call.headers["user-agent"] == USER_AGENT


async def test_api_downloads_keep_credentials(make_http, vendor):
    vendor.route("GET", "/videos/{id}/content", large_body(10))
    await read_all(make_http(), "/videos/v1/content")
    (call,) = vendor.calls()
    assert call.headers["authorization"] == f"Bearer {API_KEY}"


async def test_redirect_to_another_origin_drops_credentials(make_http, vendor, cdn):
    vendor.route(
        "GET",
        "/videos/{id}/content",
        Reply(status=302, headers={"Location": f"{cdn.url}/files/v1.mp4"}),
    )
    cdn.route("GET", "/files/{name}", large_body(4096))
    http = make_http()
    chunks = await read_all(http, "/videos/v1/content", headers={"X-Api-Key": API_KEY})
    assert sum(map(len, chunks)) == 4096
    (call,) = cdn.calls()
    assert "authorization" not in call.headers
    assert "x-api-key" not in call.headers


async def test_redirects_are_limited(make_http, vendor):
    vendor.route("GET", "/loop", Reply(status=302, headers={"Location": "/loop"}))
    with pytest.raises(ProviderOutputUnavailable) as raised:
        await read_all(make_http(), "/loop")
    assert not raised.value.retryable
    assert len(vendor.calls()) == 6  # the first request and five redirects


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://10.0.0.5/internal",
        "http://[::ffff:127.0.0.1]:8080/",
        "http://[::1]/",
        "http://internal.vendor.test/x",  # resolves to a private address
    ],
)
async def test_redirect_to_a_private_address_is_refused(make_http, vendor, target):
    async def resolver(host: str, port: int) -> list[str]:
        return {"internal.vendor.test": ["10.9.8.7"]}[host]

    vendor.route("GET", "/videos/{id}/content", Reply(status=302, headers={"Location": target}))
    http = make_http(url_policy=UrlPolicy(allow_http=True, allow_private=False), resolver=resolver)
    with pytest.raises(UnsafeOutputURL) as raised:
        await read_all(http, "/videos/v1/content")
    assert raised.value.metadata["provider"] == "openai"
    assert not raised.value.retryable


async def test_api_paths_only_when_absolute_urls_are_not_ok(make_http, cdn):
    http = make_http(base_url="https://api.vendor.test")
    with pytest.raises(UnsafeOutputURL):
        await read_all(http, f"{cdn.url}/files/a.mp3", absolute_url_ok=False)
    assert cdn.calls() == []


async def test_post_stream_delivers_audio(make_http, vendor):
    vendor.route(
        "POST", "/v1/text-to-speech/{voice}", large_body(700_000, content_type="audio/mpeg")
    )
    http = make_http("elevenlabs", headers={"xi-api-key": API_KEY})
    chunks = await read_all(
        http,
        "/v1/text-to-speech/voice-1",
        method="POST",
        json={"text": "hello"},
        params={"output_format": "mp3_44100_128"},
    )
    assert sum(map(len, chunks)) == 700_000
    (call,) = vendor.calls()
    assert call.json() == {"text": "hello"}
    assert call.arg("output_format") == "mp3_44100_128"


async def test_post_stream_errors_are_classified_and_not_retried(make_http, vendor):
    vendor.route("POST", "/v1/text-to-speech/{voice}", error_reply(401, ELEVENLABS_QUOTA))
    vendor.route("POST", "/v1/sound-generation", server_error(503))
    http = make_http("elevenlabs", headers={"xi-api-key": API_KEY})
    with pytest.raises(ProviderOutOfCredit):
        await read_all(http, "/v1/text-to-speech/voice-1", method="POST", json={"text": "hi"})
    with pytest.raises(ProviderUnavailable):
        await read_all(http, "/v1/sound-generation", method="POST", json={"text": "rain"})
    assert len(vendor.calls("POST", "/v1/sound-generation")) == 1


# --- outbound URL safety ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x",
        "https://10.0.0.1/x",
        "https://172.16.5.4/x",
        "https://192.168.1.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://0.0.0.0/x",
        "https://100.64.0.1/x",
        "https://224.0.0.1/x",
        "https://[::1]/x",
        "https://[::]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://[fe80::1]/x",
        "https://[fc00::1]/x",
        "https://[ff02::1]/x",
        "https://[2002:a00:1::1]/x",  # 6to4 wrapping 10.0.0.1
    ],
)
async def test_private_targets_are_refused_by_default(url):
    with pytest.raises(UnsafeOutputURL) as raised:
        await check_url(url)
    assert raised.value.reason == "OUTPUT_URL_REJECTED"
    assert raised.value.to_status().code == 9  # FAILED_PRECONDITION


async def test_private_targets_are_allowed_with_the_flag():
    for url in ("http://127.0.0.1:8080/x", "https://10.0.0.1/x", "http://[::1]/x"):
        await check_url(url, allow_private=True)


async def test_http_is_refused_unless_allowed():
    with pytest.raises(UnsafeOutputURL, match="only https"):
        await check_url("http://93.184.216.34/video.mp4")
    assert await check_url("http://93.184.216.34/video.mp4", allow_http=True) == ["93.184.216.34"]


async def test_every_resolved_address_is_checked():
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    with pytest.raises(UnsafeOutputURL, match="10.0.0.7"):
        await check_url("https://cdn.vendor.test/out.mp4", resolver=resolver)


async def test_public_hosts_pass():
    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("cdn.vendor.test", 443)
        return ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]

    assert await check_url("https://cdn.vendor.test/out.mp4", resolver=resolver) == [
        "93.184.216.34",
        "2606:2800:220:1:248:1893:25c8:1946",
    ]


async def test_credentials_in_urls_are_refused():
    with pytest.raises(UnsafeOutputURL, match="credentials"):
        await check_url("https://user:pass@93.184.216.34/x")


async def test_unresolvable_hosts_are_retryable():
    async def resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(ProviderOutputUnavailable) as raised:
        await check_url("https://cdn.vendor.test/x", resolver=resolver)
    assert raised.value.retryable


def test_url_policy_from_env(monkeypatch):
    monkeypatch.delenv("MEDIAGEN_ALLOW_PRIVATE_URLS", raising=False)
    assert UrlPolicy.from_env() == UrlPolicy(allow_http=False, allow_private=False)
    monkeypatch.setenv("MEDIAGEN_ALLOW_PRIVATE_URLS", "1")
    assert UrlPolicy.from_env() == UrlPolicy(allow_http=True, allow_private=True)


async def test_downloads_connect_to_the_checked_address():
    """DNS rebinding: the connection goes to the address that was checked, TLS still names the host."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"data")

    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    http = VendorHTTP(
        "luma",
        base_url="https://api.lumalabs.ai",
        headers={"Authorization": f"Bearer {API_KEY}"},
        transport=httpx.MockTransport(handler),
        url_policy=UrlPolicy(),
        resolver=resolver,
    )
    async with http.open_stream(
        "https://cdn.vendor.test/out.mp4?sig=abc", ctx=None, max_bytes=100
    ) as body:
        assert [chunk async for chunk in body] == [b"data"]
    await http.aclose()
    (request,) = sent
    assert request.url.host == "93.184.216.34"
    assert request.url.params["sig"] == "abc"
    assert request.headers["host"] == "cdn.vendor.test"
    assert request.extensions["sni_hostname"] == "cdn.vendor.test"
    assert "authorization" not in request.headers


async def test_absolute_urls_on_the_api_origin_are_called(make_http, vendor):
    # fal hands out status_url/response_url on its own queue host.
    vendor.route(
        "GET", "/fal-ai/pika/requests/{id}/status", {"status": "IN_QUEUE", "queue_position": 3}
    )
    body, _ = await make_http("pika").request_json(
        "GET", f"{vendor.url}/fal-ai/pika/requests/r-1/status", idempotent=True, ctx=None
    )
    assert body["queue_position"] == 3
    assert vendor.calls()[0].headers["authorization"] == f"Bearer {API_KEY}"


async def test_api_credentials_never_go_to_another_origin(make_http, cdn):
    http = make_http("pika")
    with pytest.raises(UnsafeOutputURL):
        await http.request_json("GET", f"{cdn.url}/status", idempotent=True, ctx=None)
    assert cdn.calls() == []


async def test_unusable_output_urls_are_bad_responses(make_http):
    with pytest.raises(ProviderBadResponse) as raised:
        await read_all(make_http(), "https://cdn.vendor.test:abc/x.mp4")
    assert not raised.value.retryable


async def test_retries_move_on_to_the_next_checked_address():
    tried: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        if request.url.host == "2606:4700::6810:84e5":
            raise httpx.ConnectError("Network is unreachable", request=request)
        return httpx.Response(200, content=b"ok")

    async def resolver(host: str, port: int) -> list[str]:
        return ["2606:4700::6810:84e5", "93.184.216.34"]

    clock = FakeClock()
    http = VendorHTTP(
        "luma",
        base_url="https://api.lumalabs.ai",
        transport=httpx.MockTransport(handler),
        url_policy=UrlPolicy(),
        resolver=resolver,
        retry=RetryPolicy(sleep=clock.sleep, clock=clock),
    )
    async with http.open_stream("https://cdn.vendor.test/v.mp4", ctx=None, max_bytes=10) as body:
        assert [chunk async for chunk in body] == [b"ok"]
    await http.aclose()
    assert tried == ["2606:4700::6810:84e5", "93.184.216.34"]


# --- the fake server itself -----------------------------------------------------------------


async def test_fake_server_answers_unknown_routes_and_reports_handler_bugs(make_http, vendor):
    def broken(request):
        raise KeyError("prompt")

    vendor.route("POST", "/v1/broken", broken)
    http = make_http()
    http.retry = http.retry.with_options(max_attempts=1)
    missing = await fail(http.request_json("POST", "/v1/missing", idempotent=False, ctx=None))
    assert isinstance(missing, ProviderInvalidRequest)  # 404 on a create
    bug = await fail(http.request_json("POST", "/v1/broken", idempotent=False, ctx=None))
    assert isinstance(bug, ProviderUnavailable)
    assert [type(e) for e in vendor.errors] == [KeyError]
    assert [(c.method, c.path) for c in vendor.calls()] == [
        ("POST", "/v1/missing"),
        ("POST", "/v1/broken"),
    ]


# --- secrets --------------------------------------------------------------------------------------


async def test_no_secret_in_errors_or_logs(make_http, vendor, vendor_logs):
    echo = {
        "error": {"message": f"Incorrect API key provided: {API_KEY}.", "code": "invalid_api_key"}
    }
    vendor.route("POST", "/v1/text:synthesize", error_reply(401, echo, {"x-request-id": "r1"}))
    vendor.route("GET", "/v1/voices", {"voices": []})
    vendor.route("GET", "/files/{name}", truncated(b"x" * 1000, 10))
    http = make_http("google", headers={"X-Goog-Api-Key": API_KEY})
    errors: list[Exception] = []
    errors.append(
        await fail(
            http.request_json(
                "POST",
                "/v1/text:synthesize",
                params={"key": API_KEY},
                json={},
                idempotent=False,
                ctx=None,
            )
        )
    )
    await http.request_json("GET", "/v1/voices", params={"key": API_KEY}, idempotent=True, ctx=None)
    with pytest.raises(ProviderOutputUnavailable) as cut:
        await read_all(http, f"/files/a.wav?token={API_KEY}")
    errors.append(cut.value)
    unreachable = make_http("google", base_url=f"http://127.0.0.1:{closed_port()}")
    unreachable.retry = unreachable.retry.with_options(max_attempts=1)
    errors.append(
        await fail(
            unreachable.request_json("GET", f"/v1/voices?key={API_KEY}", idempotent=True, ctx=None)
        )
    )

    assert vendor_logs, "vendor calls must be logged"
    assert {entry["event"] for entry in vendor_logs} >= {"vendor_call"}
    assert all("?" not in str(entry.get("path", "")) for entry in vendor_logs)
    assert API_KEY not in repr(vendor_logs)
    for error in errors:
        status = error.to_status()
        assert API_KEY not in str(error)
        assert API_KEY not in status.message
        assert API_KEY.encode() not in status.SerializeToString()
    assert isinstance(errors[0], ProviderAuthFailed)


async def test_log_lines_name_provider_path_status_time_and_attempt(make_http, vendor, vendor_logs):
    vendor.script("GET", "/v1/tasks/{id}", [server_error(503)])
    vendor.route("GET", "/v1/tasks/{id}", {"status": "RUNNING"})
    await make_http("runway").request_json(
        "GET", "/v1/tasks/t-1", params={"x": "1"}, idempotent=True, ctx=None
    )
    calls = [entry for entry in vendor_logs if entry["event"] == "vendor_call"]
    assert [(c["provider"], c["method"], c["path"], c["status"], c["attempt"]) for c in calls] == [
        ("runway", "GET", "/v1/tasks/t-1", 503, 1),
        ("runway", "GET", "/v1/tasks/t-1", 200, 2),
    ]
    assert all(isinstance(c["elapsed_ms"], float) for c in calls)
    assert any(
        e["event"] == "vendor_retry" and e["reason"] == "PROVIDER_UNAVAILABLE" for e in vendor_logs
    )
