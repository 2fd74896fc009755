"""The Stability image adapter end to end: gRPC -> MediagenServer -> adapter -> fake Stability v2beta."""

from __future__ import annotations

import base64

import grpc
import httpx
import pytest
from google.rpc import code_pb2
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2, image_pb2
from providers.mock.media import probe
from providers.retry import RetryPolicy
from tests.fakes.server import (
    FakeVendorServer,
    Reply,
    dropped,
    rate_limited,
    server_error,
    slow,
    truncated,
)
from tests.fakes.stability import (
    STABILITY_KEY,
    FakeStability,
    moderation_refusal,
    stability_error,
)
from tests.helpers import bad_fields, error_reason, vendor_env

IMAGE = common_pb2.MEDIA_TYPE_IMAGE
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0)
GENERATE = "/v2beta/stable-image/generate/{kind}"


async def _env(monkeypatch, tmp_path, *, key: str | None = STABILITY_KEY):
    with FakeVendorServer() as api:
        fake = FakeStability(api)
        variables = {"STABILITY_BASE_URL": api.url}
        if key is not None:
            variables["STABILITY_API_KEY"] = key
        async with vendor_env(
            monkeypatch,
            tmp_path,
            IMAGE,
            "stability",
            variables,
            unset=("STABILITY_API_KEY", "STABILITY_KEY"),
            retry=FAST,
            fake=fake,
            defaults={"prompt": "a lighthouse at dusk"},
        ) as env:
            yield env


@pytest.fixture
async def stability(monkeypatch, tmp_path):
    async for env in _env(monkeypatch, tmp_path):
        yield env


async def test_core_image_end_to_end(stability, tmp_path):
    job = await stability.generate(
        aspect_ratio="16:9", negative_prompt="fog", seed=42, style="cinematic"
    )
    assert job.model == "core"
    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_CREDIT
    assert job.estimated_cost.units == 3 and job.estimated_cost.amount_micros == 30_000
    call = stability.stub.WatchImageJob(image_pb2.WatchImageJobRequest(job_id=job.id), timeout=20)
    final = [r.event async for r in call][-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error

    (request,) = stability.fake.image_calls()
    assert request.path == "/v2beta/stable-image/generate/core"
    assert request.headers["authorization"] == f"Bearer {STABILITY_KEY}"
    assert request.headers["accept"] == "image/*"
    assert request.headers["content-type"].startswith("multipart/form-data")
    (generation,) = stability.fake.generations
    assert generation.form == {
        "prompt": "a lighthouse at dusk",
        "output_format": "png",
        "negative_prompt": "fog",
        "aspect_ratio": "16:9",
        "style_preset": "cinematic",
        "seed": "42",
    }

    (artifact,) = final.artifacts
    assert artifact.content_type == "image/png"
    assert (artifact.width, artifact.height) == (336, 192)
    assert artifact.metadata["seed"] == "42" and artifact.metadata["finishReason"] == "SUCCESS"
    path = tmp_path / "out.png"
    path.write_bytes(await stability.download(job.id))
    assert probe(path).content_type == "image/png"
    assert final.final_cost.amount_micros == 30_000
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED


async def test_sd3_model_sends_model_mode_and_cfg_scale(stability):
    final = await stability.run(
        model="sd3.5-large", format="IMAGE_FORMAT_WEBP", provider_options={"cfg_scale": 5.5}
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (generation,) = stability.fake.generations
    assert generation.kind == "sd3"
    assert generation.form["model"] == "sd3.5-large"
    assert generation.form["mode"] == "text-to-image"
    assert generation.form["cfg_scale"] == "5.5"
    assert generation.form["output_format"] == "webp"
    assert "seed" not in generation.form  # none asked: Stability picks one
    assert final.artifacts[0].content_type == "image/webp"
    assert final.final_cost.units == 6.5 and final.final_cost.amount_micros == 65_000


async def test_retired_sd3_name_sends_its_3_5_replacement(stability):
    final = await stability.run(model="sd3-medium", format="IMAGE_FORMAT_JPEG")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert stability.fake.generations[0].form["model"] == "sd3.5-medium"
    assert final.artifacts[0].content_type == "image/jpeg"


async def test_count_makes_one_call_per_image_with_stepped_seeds(stability):
    final = await stability.run(model="ultra", count=3, seed=4294967293)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert [g.kind for g in stability.fake.generations] == ["ultra"] * 3
    assert [g.form["seed"] for g in stability.fake.generations] == ["4294967293", "4294967294", "1"]
    assert [a.index for a in final.artifacts] == [0, 1, 2]
    assert len({a.sha256 for a in final.artifacts}) == 3
    assert final.final_cost.units == 24 and final.final_cost.amount_micros == 240_000


#: (request fields, the field the refusal must name)
STABILITY_CANNOT = [
    ({"width": 1024, "height": 1024}, "width"),
    ({"quality": "hd"}, "quality"),
    ({"style": "watercolour"}, "style"),
    ({"aspect_ratio": "4:3"}, "aspect_ratio"),
    ({"count": 11}, "count"),
    ({"seed": 4294967295}, "seed"),
    ({"model": "dall-e-3"}, "model"),
    ({"provider_options": {"cfg_scale": 5}}, "provider_options.cfg_scale"),
    ({"model": "sd3.5-flash", "provider_options": {"cfg_scale": 11}}, "provider_options.cfg_scale"),
    ({"provider_options": {"steps": 30}}, "provider_options.steps"),
    ({"input_image": {"uri": "https://images.example.com/a.png"}}, "input_image"),
]


async def test_what_stability_cannot_do_is_refused_before_any_vendor_call(stability):
    for fields, field in STABILITY_CANNOT:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stability.generate(**fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
        assert field in bad_fields(caught.value), (fields, bad_fields(caught.value))
    assert stability.fake.server.requests == []


async def test_missing_key_is_failed_precondition(monkeypatch, tmp_path):
    async for env in _env(monkeypatch, tmp_path, key=None):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.generate()
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "STABILITY_API_KEY" in caught.value.details()
        assert error_reason(rpc_status.from_call(caught.value))[0] == "PROVIDER_NOT_CONFIGURED"


async def test_a_filtered_image_is_content_rejected_not_a_blurred_success(stability):
    final = await stability.run(prompt="please blurme now", count=2)
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.error.code == code_pb2.INVALID_ARGUMENT
    assert error_reason(final.error)[0] == "CONTENT_REJECTED"
    assert "CONTENT_FILTERED" in final.error.message
    assert not final.artifacts and stability.stored_files() == []


async def test_a_second_image_refused_leaves_nothing_stored(stability):
    answer_first = stability.fake._generate
    calls = []

    def refuse_the_second(request):
        calls.append(request)
        return moderation_refusal() if len(calls) == 2 else answer_first(request)

    stability.fake.server.route("POST", GENERATE, refuse_the_second)
    final = await stability.run(count=2)
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert error_reason(final.error)[0] == "CONTENT_REJECTED"
    assert "not charged" in final.error.message
    assert len(calls) == 2 and stability.stored_files() == []


#: (Stability's refusal, the job's gRPC code, ErrorInfo.reason)
REFUSALS = [
    (
        stability_error(401, "unauthorized", "authorization: invalid"),
        code_pb2.FAILED_PRECONDITION,
        "PROVIDER_AUTH_FAILED",
    ),
    (
        stability_error(402, "payment_required", "insufficient credits"),
        code_pb2.RESOURCE_EXHAUSTED,
        "PROVIDER_OUT_OF_CREDIT",
    ),
    (
        stability_error(400, "bad_request", "prompt: is required"),
        code_pb2.INVALID_ARGUMENT,
        "PROVIDER_INVALID_REQUEST",
    ),
    (
        stability_error(413, "payload_too_large", "request too large"),
        code_pb2.INVALID_ARGUMENT,
        "PROVIDER_INVALID_REQUEST",
    ),
    (
        stability_error(422, "invalid_language", "prompt: English only"),
        code_pb2.INVALID_ARGUMENT,
        "PROVIDER_INVALID_REQUEST",
    ),
]


async def test_refusals_end_the_job_with_the_vendors_reason(stability):
    for reply, code, reason in REFUSALS:
        calls = len(stability.fake.image_calls())
        stability.fake.server.fail_next("POST", GENERATE, reply)
        final = await stability.run()
        assert final.state == common_pb2.JOB_STATE_FAILED, reason
        assert final.error.code == code, reason
        got, metadata = error_reason(final.error)
        assert got == reason and metadata["provider"] == "stability"
        # The error id Stability support asks for.
        assert metadata["vendorRequestId"] == reply.body["id"]
        assert reply.body["errors"][0] in final.error.message
        assert len(stability.fake.image_calls()) == calls + 1, reason  # refusals are not retried
        assert STABILITY_KEY not in final.error.message
    assert stability.stored_files() == []


async def test_rate_limits_are_retried_honouring_retry_after(stability):
    stability.fake.server.fail_next("POST", GENERATE, rate_limited(0.4))
    stability.fake.server.fail_next("POST", GENERATE, rate_limited())  # Stability sends none
    final = await stability.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    first, second, third = stability.fake.image_calls()
    assert second.at - first.at >= 0.39
    assert len(final.artifacts) == 1


async def test_transient_failures_are_retried(stability):
    # Short enough to time out the slow answer, long enough for a healthy one on a busy machine.
    stability.provider.http.timeout = httpx.Timeout(0.8)
    stability.server.runner.output_retry = FAST.with_options(max_attempts=8)
    stability.fake.server.script(
        "POST",
        GENERATE,
        [
            server_error(500, {"id": "e1", "name": "internal_error", "errors": ["oops"]}),
            slow(2.0),
            dropped(),
            truncated(b"\x89PNG" + b"\0" * 5000, 100, {"Content-Type": "image/png"}),
        ],
    )
    final = await stability.run()
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    # Each fault cost one more call (a POST is retried by the runner, not the HTTP layer).
    assert len(stability.fake.image_calls()) >= 5


async def test_persistent_outage_fails_unavailable(stability):
    stability.fake.server.fail_next("POST", GENERATE, server_error(503), times=10)
    final = await stability.run()
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.error.code == code_pb2.UNAVAILABLE
    assert error_reason(final.error)[0] == "PROVIDER_UNAVAILABLE"
    assert stability.stored_files() == []


async def test_json_answer_is_not_taken_for_an_image(stability):
    stability.fake.server.fail_next(
        "POST",
        GENERATE,
        Reply(body={"image": base64.b64encode(b"x").decode(), "finish_reason": "SUCCESS"}),
    )
    final = await stability.run()
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert error_reason(final.error)[0] == "PROVIDER_BAD_RESPONSE"
    assert len(stability.fake.image_calls()) == 1


async def test_catalog_entry(stability):
    entry = (
        await stability.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="stability", media_type=IMAGE)
        )
    ).provider
    assert entry.configured and not entry.retired
    assert [m.name for m in entry.models if m.default] == ["core"]
    retired = {m.name for m in entry.models if m.retired}
    assert retired == {"sd3-large", "sd3-large-turbo", "sd3-medium"}
    prices = {p.model: p for p in entry.prices}
    assert prices["ultra"].unit == common_pb2.PRICE_UNIT_CREDIT
    assert prices["ultra"].unit_price_micros == 10_000 and "8 credits" in prices["ultra"].note
    assert list(entry.limits.formats) == ["png", "jpeg", "webp"]
