"""OpenAI text to speech end to end: gRPC -> MediagenServer -> adapter -> fake OpenAI over HTTP."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
import pytest_asyncio

from mediagen.v1 import common_pb2
from providers.speech.openai_tts import OpenAISpeech, openai_base_url
from tests.fakes.openai_audio import FakeOpenAIAudio, insufficient_quota, openai_error
from tests.fakes.server import (
    FakeVendorServer,
    Reply,
    dropped,
    malformed_json,
    rate_limited,
    server_error,
    slow,
)
from tests.test_speech_common import (
    FAST,
    SPEECH,
    Code,
    assert_failed,
    bad_fields,
    probe_bytes,
    retry_delay,
    vendor_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
TIMEOUT = httpx.Timeout(5.0)
SENTENCE = "Speech synthesis turns written words into a voice, one sentence at a time! "


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def oa_server(tmp_path_factory):
    with FakeVendorServer() as api:
        fake = FakeOpenAIAudio(api)
        async with vendor_server(
            tmp_path_factory.mktemp("openai"),
            SPEECH,
            "openai",
            # The SDK convention: the base URL includes /v1.
            {"OPENAI_BASE_URL": api.url + "/v1", "OPENAI_API_KEY": fake.api_key, "OPENAI_PROJECT_ID": "proj_test"},
            [(OpenAISpeech, "retry", FAST), (OpenAISpeech, "timeout", TIMEOUT)],
            unset=["OPENAI_ORG_ID"],
        ) as env:
            env.fake = fake
            yield env


@pytest.fixture
def oa(oa_server):
    oa_server.fake.reset()
    oa_server.provider.http.timeout = TIMEOUT
    return oa_server


async def test_speech_end_to_end(oa):
    text = "Hello from OpenAI."
    job = await oa.generate(text=text, voice="narrator", speed=1.25)
    assert job.model == "tts-1"
    assert job.estimated_cost.amount_micros == round(len(text) / 1000 * 15_000)
    final = await oa.wait(job.id)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (call,) = oa.fake.calls()
    assert call.path == "/v1/audio/speech"
    assert call.headers["authorization"] == f"Bearer {oa.fake.api_key}"
    assert call.headers["openai-project"] == "proj_test"
    assert "x-mediagen-capture" not in call.headers
    assert call.json() == {"model": "tts-1", "input": text, "voice": "fable", "response_format": "mp3", "speed": 1.25}
    data = await oa.download(final.id)
    info = probe_bytes(data)
    assert info.content_type == "audio/mpeg"
    assert abs(info.duration_seconds - oa.fake.durations[0]) < 0.1
    (artifact,) = final.artifacts
    assert artifact.metadata["vendor_request_ids"] == "req_0001" and artifact.metadata["voice"] == "fable"
    record = await oa.server.store.get(job.id)
    assert oa.fake.api_key not in json.dumps(record.handle) and oa.fake.api_key not in str(final)
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED
    assert final.final_cost.amount_micros == round(len(text) / 1000 * 15_000)


async def test_long_text_over_4096_characters_is_joined_into_one_wav(oa):
    oa.fake.seconds_per_character = 0.0005
    text = SENTENCE * 150  # ~11,400 characters: three requests
    final = await oa.run(text=text, format="AUDIO_FORMAT_WAV", model="tts-1-hd")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    calls = oa.fake.calls()
    assert len(calls) == 3
    inputs = [c.json()["input"] for c in calls]
    assert all(len(i) <= 4096 and i.endswith("!") for i in inputs)
    assert " ".join(inputs) == text.strip()
    assert {c.json()["response_format"] for c in calls} == {"pcm"}  # joined sample for sample
    data = await oa.download(final.id)
    assert data.count(b"RIFF") == 1
    info = probe_bytes(data)
    assert info.content_type == "audio/wav" and info.sample_rate_hz == 24000
    assert info.duration_seconds == pytest.approx(sum(oa.fake.durations), abs=1e-3)
    assert final.final_cost.units == pytest.approx(sum(len(i) for i in inputs) / 1000)
    assert final.final_cost.unit_price_micros == 30_000


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("AUDIO_FORMAT_FLAC", "audio/flac"), ("AUDIO_FORMAT_OGG_OPUS", "audio/ogg"), ("AUDIO_FORMAT_AAC", "audio/aac")],
)
async def test_long_text_in_other_formats_decodes_with_the_sum_of_the_pieces(oa, fmt, content_type):
    oa.fake.seconds_per_character = 0.0003
    final = await oa.run(text=SENTENCE * 60, format=fmt)  # two pieces
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(oa.fake.calls()) == 2
    info = probe_bytes(await oa.download(final.id))
    assert info.content_type == content_type
    pieces = [probe_bytes(audio).duration_seconds for audio in oa.fake.served_audio]
    # One stream as long as its pieces (Opus pieces lose their few ms of pre-skip each).
    assert abs(info.duration_seconds - sum(pieces)) < 0.02


async def test_instructions_and_the_minute_priced_model(oa):
    final = await oa.run(text="Calm words.", model="gpt-4o-mini-tts", instructions="Speak softly.", voice="coral")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    body = oa.fake.calls()[-1].json()
    assert body["instructions"] == "Speak softly." and body["voice"] == "coral"
    assert final.final_cost.unit == common_pb2.PRICE_UNIT_MINUTE
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED
    assert final.final_cost.units == pytest.approx(final.artifacts[0].duration_seconds / 60)
    final = await oa.run(text="Custom voice.", voice="voice_abc123", format="AUDIO_FORMAT_PCM")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert oa.fake.calls()[-1].json()["voice"] == {"id": "voice_abc123"}
    assert final.artifacts[0].duration_seconds == pytest.approx(oa.fake.durations[-1], abs=1e-3)


async def test_insufficient_quota_is_out_of_credit_and_not_retried(oa):
    oa.fake.server.fail_next("POST", "/v1/audio/speech", insufficient_quota(), times=3)
    final = await oa.run(text="No money.")
    assert_failed(final, Code.RESOURCE_EXHAUSTED, "PROVIDER_OUT_OF_CREDIT")
    assert len(oa.fake.calls()) == 1


async def test_bad_key_is_auth_failed_and_never_echoed(oa):
    oa.fake.api_key = "sk-other"
    final = await oa.run(text="Hello.")
    assert_failed(final, Code.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    assert "Incorrect API key" in final.error.message


async def test_rate_limit_is_retried_after_the_vendors_wait(oa):
    oa.fake.server.script("POST", "/v1/audio/speech", [rate_limited(retry_after=0.25), rate_limited(retry_after_ms=50)])
    final = await oa.run(text="Patience.")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    calls = oa.fake.calls()
    assert len(calls) == 3 and calls[1].at - calls[0].at >= 0.24


async def test_persistent_rate_limit_reports_retry_info(oa):
    limited = rate_limited(
        retry_after=0.01, body={"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    )
    oa.fake.server.fail_next("POST", "/v1/audio/speech", limited, times=3)
    final = await oa.run(text="Busy.")
    assert_failed(final, Code.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    assert retry_delay(final.error) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (openai_error(400, "speed must be between 0.25 and 4.0", "invalid_request_error", param="speed"),
         Code.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
        (server_error(500), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (server_error(503), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (dropped(), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (malformed_json(), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        (Reply(body=b"ID3" + b"\x00" * 400, headers={"Content-Type": "audio/mpeg"}), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        (Reply(body=b"\xff\xf3" * 900, content_length=4000, cut_after=1800, headers={"Content-Type": "audio/mpeg"}),
         Code.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE"),
    ],
)
async def test_failures_end_in_the_right_code_with_nothing_stored(oa, fault, code, reason):
    oa.fake.server.fail_next("POST", "/v1/audio/speech", fault, times=3)
    final = await oa.run(text="Hello failure.")
    assert_failed(final, code, reason)
    assert not oa.stored_files(final.id)


async def test_a_slow_answer_times_out(oa):
    oa.provider.http.timeout = httpx.Timeout(5.0, read=0.2)
    oa.fake.server.fail_next("POST", "/v1/audio/speech", slow(0.6), times=3)
    final = await oa.run(text="Slow.")
    assert_failed(final, Code.UNAVAILABLE, "PROVIDER_TIMEOUT")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"speed": 4.5}, "speed"),
        ({"instructions": "cheerful"}, "instructions"),  # tts-1 takes none
        ({"voice": "robot"}, "voice"),
        ({"provider_options": {"stream_format": "sse"}}, "provider_options.stream_format"),
        ({"model": "tts-2"}, "model"),
    ],
)
async def test_invalid_requests_are_refused_before_any_vendor_call(oa, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await oa.generate(text="Hello.", **fields)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert field in bad_fields(caught.value)
    assert not oa.fake.server.requests


async def test_base_url_follows_the_sdk_convention(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert openai_base_url() == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "https://proxy.example.com/openai/v1/")
    assert openai_base_url() == "https://proxy.example.com/openai/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:4000")
    assert openai_base_url() == "http://127.0.0.1:4000/v1"


async def test_a_bare_host_base_url_reaches_v1(tmp_path_factory):
    with FakeVendorServer() as api:
        fake = FakeOpenAIAudio(api)
        async with vendor_server(
            tmp_path_factory.mktemp("openai-bare"),
            SPEECH,
            "openai",
            {"OPENAI_BASE_URL": api.url, "OPENAI_API_KEY": fake.api_key},
            unset=["OPENAI_ORG_ID", "OPENAI_PROJECT_ID"],
        ) as env:
            final = await env.run(text="Bare host.")
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
            assert [c.path for c in fake.calls()] == ["/v1/audio/speech"]
