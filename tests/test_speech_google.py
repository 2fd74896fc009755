"""Google Cloud TTS end to end: gRPC -> MediagenServer -> adapter -> fake Google over HTTP."""

from __future__ import annotations

import base64
import json

import grpc
import httpx
import pytest
import pytest_asyncio

from mediagen.v1 import common_pb2
from providers.speech.google_tts import GoogleSpeech
from tests.fakes.google_tts import FakeGoogleTTS, google_error
from tests.fakes.server import (
    FakeVendorServer,
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
    vendor_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
TIMEOUT = httpx.Timeout(5.0)
GOOGLE_ENV = ("GOOGLE_API_KEY", "GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN", "GOOGLE_CLOUD_QUOTA_PROJECT")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gg_server(tmp_path_factory):
    with FakeVendorServer() as api:
        fake = FakeGoogleTTS(api)
        async with vendor_server(
            tmp_path_factory.mktemp("google"),
            SPEECH,
            "google",
            {"GOOGLE_TTS_BASE_URL": api.url, "GOOGLE_API_KEY": fake.api_key},
            [(GoogleSpeech, "retry", FAST), (GoogleSpeech, "timeout", TIMEOUT)],
            unset=GOOGLE_ENV,
        ) as env:
            env.fake = fake
            yield env


@pytest.fixture
def gg(gg_server):
    gg_server.fake.reset()
    gg_server.provider._voices.clear()
    gg_server.provider.http.timeout = TIMEOUT
    return gg_server


async def test_speech_end_to_end_with_an_api_key_in_a_header(gg):
    text = "Hello from Google."
    job = await gg.generate(text=text, voice="en-US-Wavenet-D", speed=0.9)
    assert job.estimated_cost.unit_price_micros == 16_000 and job.estimated_cost.units == pytest.approx(len(text) / 1000)
    final = await gg.wait(job.id)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    (call,) = gg.fake.calls()
    assert call.headers["x-goog-api-key"] == gg.fake.api_key
    assert "key" not in call.query and "authorization" not in call.headers
    assert call.json() == {
        "input": {"text": text},
        "voice": {"languageCode": "en-US", "name": "en-US-Wavenet-D"},
        "audioConfig": {"audioEncoding": "MP3", "speakingRate": 0.9},
    }
    assert not gg.fake.server.calls("GET", "/v1/voices")  # a full voice name needs no listing
    info = probe_bytes(await gg.download(final.id))
    assert info.content_type == "audio/mpeg" and abs(info.duration_seconds - gg.fake.durations[0]) < 0.1
    (artifact,) = final.artifacts
    assert artifact.metadata["voice"] == "en-US-Wavenet-D" and artifact.metadata["voice_family"] == "wavenet"
    record = await gg.server.store.get(job.id)
    assert gg.fake.api_key not in json.dumps(record.handle) and gg.fake.api_key not in str(final)
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED
    assert final.final_cost.amount_micros == round(len(text) / 1000 * 16_000)


async def test_text_over_5000_bytes_is_split_by_bytes_and_joined_into_one_wav(gg):
    gg.fake.seconds_per_character = 0.002
    sentence = "これは日本語の文です。"  # 11 characters, 33 bytes
    text = sentence * 300  # 3,300 characters but 9,900 bytes
    final = await gg.run(text=text, language="ja-JP", format="AUDIO_FORMAT_WAV", voice="female_calm")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    calls = gg.fake.calls()
    assert len(calls) == 2
    inputs = [c.json()["input"]["text"] for c in calls]
    assert all(len(t.encode()) <= 5000 and t.endswith("。") for t in inputs)
    assert "".join(inputs) == text
    assert {c.json()["voice"]["name"] for c in calls} == {"ja-JP-Neural2-B"}  # the only female ja-JP Neural2
    assert {c.json()["audioConfig"]["audioEncoding"] for c in calls} == {"LINEAR16"}
    data = await gg.download(final.id)
    assert data.count(b"RIFF") == 1
    info = probe_bytes(data)
    assert info.content_type == "audio/wav"
    assert info.duration_seconds == pytest.approx(sum(gg.fake.durations), abs=1e-3)
    assert final.final_cost.units == pytest.approx(len(text) / 1000)


async def test_voice_choice_from_the_listing(gg):
    final = await gg.run(text="Default voice.")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert gg.fake.calls()[-1].json()["voice"] == {"languageCode": "en-US", "name": "en-US-Neural2-A"}
    (listing,) = gg.fake.server.calls("GET", "/v1/voices")
    assert listing.arg("languageCode") == "en-US" and listing.headers["x-goog-api-key"] == gg.fake.api_key
    for voice, model, expected in (
        ("casual_male", "", "en-US-Neural2-D"),
        ("C", "neural2", "en-US-Neural2-C"),
        ("Kore", "chirp3-hd", "en-US-Chirp3-HD-Kore"),
    ):
        final = await gg.run(text="Pick.", voice=voice, model=model)
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
        assert gg.fake.calls()[-1].json()["voice"]["name"] == expected
    assert final.final_cost.unit_price_micros == 30_000
    assert len(gg.fake.server.calls("GET", "/v1/voices")) == 1  # cached
    final = await gg.run(text="Nobody.", voice="Zed")
    metadata = assert_failed(final, Code.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert metadata["field"] == "voice"


async def test_pcm_is_24khz_without_header(gg):
    final = await gg.run(
        text="Raw samples.", format="AUDIO_FORMAT_PCM", voice="en-US-Neural2-F", provider_options={"pitch": -2}
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    config = gg.fake.calls()[-1].json()["audioConfig"]
    assert config == {"audioEncoding": "LINEAR16", "sampleRateHertz": 24000, "pitch": -2}
    data = await gg.download(final.id)
    assert not data.startswith(b"RIFF")
    assert final.artifacts[0].duration_seconds == pytest.approx(gg.fake.durations[-1], abs=1e-3)


async def test_oauth_token_and_quota_project(tmp_path_factory):
    with FakeVendorServer() as api:
        fake = FakeGoogleTTS(api)
        async with vendor_server(
            tmp_path_factory.mktemp("google-oauth"),
            SPEECH,
            "google",
            {
                "GOOGLE_TTS_BASE_URL": api.url,
                "GOOGLE_OAUTH_ACCESS_TOKEN": fake.token,
                "GOOGLE_API_KEY": fake.api_key,  # the token wins
                "GOOGLE_CLOUD_QUOTA_PROJECT": "my-project",
            },
            unset=GOOGLE_ENV,
        ) as env:
            final = await env.run(text="Token.", voice="en-US-Neural2-C", format="AUDIO_FORMAT_OGG_OPUS")
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
            (call,) = fake.calls()
            assert call.headers["authorization"] == f"Bearer {fake.token}"
            assert call.headers["x-goog-user-project"] == "my-project"
            assert "x-goog-api-key" not in call.headers
            assert final.artifacts[0].content_type == "audio/ogg"
            fake.token = "ya29.expired"
            final = await env.run(text="Expired.", voice="en-US-Neural2-C")
            assert_failed(final, Code.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")


async def test_invalid_api_key_is_auth_failed_not_invalid_argument(gg):
    gg.fake.api_key = "AIzaOther"
    final = await gg.run(text="Hello.", voice="en-US-Neural2-C")
    assert_failed(final, Code.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    assert "API key not valid" in final.error.message


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (google_error(400, "INVALID_ARGUMENT", "Voice 'x' does not exist."), Code.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
        (google_error(403, "PERMISSION_DENIED", "Cloud Text-to-Speech API has not been used in project 1 before or it is disabled."),
         Code.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED"),
        (google_error(403, "PERMISSION_DENIED", "This API method requires billing to be enabled.", "BILLING_DISABLED"),
         Code.RESOURCE_EXHAUSTED, "PROVIDER_OUT_OF_CREDIT"),
        (google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Characters' and limit 'Characters per day'"),
         Code.RESOURCE_EXHAUSTED, "PROVIDER_OUT_OF_CREDIT"),
        (rate_limited(body={"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Requests per minute"}}),
         Code.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
        (server_error(500), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (server_error(503), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (dropped(), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (malformed_json(), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        ({"audioContent": "not base64!!"}, Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        ({"audioContent": base64.b64encode(b"RIFF....WAVEjunk").decode()}, Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
    ],
)
async def test_failures_end_in_the_right_code_with_nothing_stored(gg, fault, code, reason):
    from tests.fakes.server import _to_reply

    gg.fake.server.fail_next("POST", "/v1/text:synthesize", _to_reply(fault), times=3)
    final = await gg.run(text="Hello failure.", voice="en-US-Neural2-C", format="AUDIO_FORMAT_WAV")
    assert_failed(final, code, reason)
    assert not gg.stored_files(final.id)


async def test_rate_limit_then_success(gg):
    gg.fake.server.script("POST", "/v1/text:synthesize", [rate_limited(retry_after=0.2), server_error(503)])
    final = await gg.run(text="Retry me.", voice="en-US-Neural2-C")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    calls = gg.fake.calls()
    assert len(calls) == 3 and calls[1].at - calls[0].at >= 0.19


async def test_a_slow_answer_times_out(gg):
    gg.provider.http.timeout = httpx.Timeout(5.0, read=0.2)
    gg.fake.server.fail_next("POST", "/v1/text:synthesize", slow(0.6), times=3)
    final = await gg.run(text="Slow.", voice="en-US-Neural2-C")
    assert_failed(final, Code.UNAVAILABLE, "PROVIDER_TIMEOUT")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"speed": 5}, "speed"),
        ({"format": "AUDIO_FORMAT_AAC"}, "format"),
        ({"instructions": "happy"}, "instructions"),
        ({"voice": "en-US-Neural2-C", "model": "wavenet"}, "model"),
        ({"voice": "en-US-Neural2-C", "language": "de-DE"}, "language"),
        ({"voice": "en-US-Journey-D"}, "voice"),
        ({"format": "AUDIO_FORMAT_PCM", "provider_options": {"sample_rate_hertz": 16000}}, "provider_options.sample_rate_hertz"),
        ({"provider_options": {"pitch": 30}}, "provider_options.pitch"),
        ({"language": "english"}, "language"),
    ],
)
async def test_invalid_requests_are_refused_before_any_vendor_call(gg, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gg.generate(text="Hello.", **fields)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert field in bad_fields(caught.value)
    assert not gg.fake.server.requests
