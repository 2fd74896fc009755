"""ElevenLabs sound effects end to end: gRPC -> MediagenServer -> adapter -> fake ElevenLabs over HTTP."""

from __future__ import annotations

import grpc
import httpx
import pytest
import pytest_asyncio

from mediagen.v1 import catalog_pb2, common_pb2
from providers.sound_effect.elevenlabs import ElevenLabsSoundEffect
from tests.fakes.elevenlabs import FakeElevenLabs, detail_error
from tests.fakes.server import FakeVendorServer, Reply, dropped, rate_limited, server_error, slow
from tests.test_speech_common import (
    FAST,
    SOUND_EFFECT,
    Code,
    assert_failed,
    bad_fields,
    probe_bytes,
    vendor_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
TIMEOUT = httpx.Timeout(5.0)
PATH = "/v1/sound-generation"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sfx_server(tmp_path_factory):
    with FakeVendorServer() as api:
        fake = FakeElevenLabs(api)
        async with vendor_server(
            tmp_path_factory.mktemp("sfx"),
            SOUND_EFFECT,
            "elevenlabs",
            {"ELEVENLABS_BASE_URL": api.url, "ELEVENLABS_API_KEY": fake.api_key},
            [(ElevenLabsSoundEffect, "retry", FAST), (ElevenLabsSoundEffect, "timeout", TIMEOUT)],
            unset=["ELEVEN_API_KEY"],
        ) as env:
            env.fake = fake
            yield env


@pytest.fixture
def sfx(sfx_server):
    sfx_server.fake.reset()
    sfx_server.provider.http.timeout = TIMEOUT
    return sfx_server


async def test_sound_effect_end_to_end(sfx):
    job = await sfx.generate(prompt="a heavy wooden door slams", duration_seconds=1.5, prompt_influence=0.7)
    assert job.model == "eleven_text_to_sound_v2"
    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_CREDIT
    assert job.estimated_cost.units == 60 and job.estimated_cost.amount_micros == 6_000
    final = await sfx.wait(job.id)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (call,) = sfx.fake.sound_calls()
    assert call.headers["xi-api-key"] == sfx.fake.api_key
    assert call.arg("output_format") == "mp3_44100_128"
    assert call.json() == {
        "text": "a heavy wooden door slams",
        "model_id": "eleven_text_to_sound_v2",
        "duration_seconds": 1.5,
        "prompt_influence": pytest.approx(0.7),
    }
    info = probe_bytes(await sfx.download(final.id))
    assert info.content_type == "audio/mpeg" and abs(info.duration_seconds - 1.5) < 0.1
    (artifact,) = final.artifacts
    assert artifact.metadata["credits_billed"] == "60"
    assert final.final_cost.basis == common_pb2.COST_BASIS_VENDOR_REPORTED
    assert final.final_cost.units == 60


async def test_automatic_length_wav_and_loop(sfx):
    final = await sfx.run(prompt="rain on a tin roof", format="AUDIO_FORMAT_WAV", provider_options={"loop": True})
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    call = sfx.fake.sound_calls()[-1]
    assert call.arg("output_format") == "pcm_24000"
    assert call.json() == {"text": "rain on a tin roof", "model_id": "eleven_text_to_sound_v2", "loop": True}
    data = await sfx.download(final.id)
    info = probe_bytes(data)
    assert data.startswith(b"RIFF") and info.duration_seconds == pytest.approx(2.0, abs=1e-3)
    assert final.final_cost.units == 100  # the fake's character-cost for an automatic length


async def test_without_character_cost_the_measured_seconds_price_it(sfx):
    sfx.fake.send_character_cost = False
    final = await sfx.run(prompt="glass breaks", duration_seconds=2.0, format="AUDIO_FORMAT_PCM")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.artifacts[0].content_type == "audio/pcm"
    assert "credits_billed" not in final.artifacts[0].metadata
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED
    assert final.final_cost.units == pytest.approx(80, abs=0.1)


async def test_quota_vs_key(sfx):
    sfx.fake.quota_characters = 10
    final = await sfx.run(prompt="thunder", duration_seconds=3)
    assert_failed(final, Code.RESOURCE_EXHAUSTED, "PROVIDER_OUT_OF_CREDIT")
    sfx.fake.quota_characters = None
    sfx.fake.api_key = "changed-key-0000"
    final = await sfx.run(prompt="thunder", duration_seconds=3)
    assert_failed(final, Code.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (Reply(status=422, body={"detail": [{"loc": ["body", "duration_seconds"], "msg": "too long", "type": "value_error"}]}),
         Code.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
        (detail_error(400, "invalid_parameters", "bad prompt"), Code.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
        (rate_limited(retry_after=0.01), Code.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
        (server_error(503), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (dropped(), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (Reply(body={"detail": {"status": "ok"}}), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        (Reply(body=b"\xff\xfb" * 500, content_length=3000, cut_after=500, headers={"Content-Type": "audio/mpeg"}),
         Code.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE"),
    ],
)
async def test_failures_end_in_the_right_code_with_nothing_stored(sfx, fault, code, reason):
    sfx.fake.server.fail_next("POST", PATH, fault, times=3)
    final = await sfx.run(prompt="a bell", duration_seconds=1)
    assert_failed(final, code, reason)
    assert not sfx.stored_files(final.id)


async def test_retry_after_then_success_and_a_slow_answer(sfx):
    sfx.fake.server.script("POST", PATH, [rate_limited(retry_after=0.2)])
    final = await sfx.run(prompt="a bell", duration_seconds=1)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    calls = sfx.fake.sound_calls()
    assert len(calls) == 2 and calls[1].at - calls[0].at >= 0.19
    sfx.provider.http.timeout = httpx.Timeout(5.0, read=0.2)
    sfx.fake.server.fail_next("POST", PATH, slow(0.6), times=3)
    final = await sfx.run(prompt="a slow bell", duration_seconds=1)
    assert_failed(final, Code.UNAVAILABLE, "PROVIDER_TIMEOUT")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"duration_seconds": 31}, "duration_seconds"),
        ({"duration_seconds": 0.2}, "duration_seconds"),
        ({"prompt_influence": 1.5}, "prompt_influence"),
        ({"format": "AUDIO_FORMAT_FLAC"}, "format"),
        ({"provider_options": {"loop": "yes"}}, "provider_options.loop"),
        ({"provider_options": {"seed": 1}}, "provider_options.seed"),
    ],
)
async def test_invalid_requests_are_refused_before_any_vendor_call(sfx, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sfx.generate(prompt="a bell", **fields)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert field in bad_fields(caught.value)
    assert not sfx.fake.server.requests


async def test_catalog_entry(sfx):
    request = catalog_pb2.GetProviderRequest(name="elevenlabs", media_type=SOUND_EFFECT)
    entry = (await sfx.catalog.GetProvider(request)).provider
    assert entry.configured and entry.media_type == SOUND_EFFECT
    assert (entry.limits.min_duration_seconds, entry.limits.max_duration_seconds) == (0.5, 30)
    assert [m.name for m in entry.models] == ["eleven_text_to_sound_v2"]
    (price,) = entry.prices
    assert price.unit == common_pb2.PRICE_UNIT_CREDIT and price.unit_price_micros == 100 and price.note
