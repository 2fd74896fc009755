"""ElevenLabs text to speech end to end: gRPC -> MediagenServer -> adapter -> fake ElevenLabs over HTTP."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import pytest
import pytest_asyncio

from mediagen.v1 import common_pb2
from providers.speech.elevenlabs import ElevenLabsSpeech
from providers.speech_text import Mp3Joiner
from tests.fakes.elevenlabs import FakeElevenLabs, detail_error
from tests.fakes.server import (
    FakeVendorServer,
    Reply,
    dropped,
    error_reply,
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

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "


pytestmark = pytest.mark.asyncio(loop_scope="module")
TIMEOUT = httpx.Timeout(5.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def el_server(tmp_path_factory):
    with FakeVendorServer() as api:
        fake = FakeElevenLabs(api)
        async with vendor_server(
            tmp_path_factory.mktemp("elevenlabs"),
            SPEECH,
            "elevenlabs",
            {"ELEVENLABS_BASE_URL": api.url, "ELEVENLABS_API_KEY": fake.api_key},
            [(ElevenLabsSpeech, "retry", FAST), (ElevenLabsSpeech, "timeout", TIMEOUT)],
            unset=["ELEVEN_API_KEY"],
        ) as env:
            env.fake = fake
            yield env


@pytest.fixture
def el(el_server):
    """The shared server, with the fake and the adapter's caches as new."""
    el_server.fake.reset()
    el_server.provider._voices = None
    el_server.provider.http.timeout = TIMEOUT
    return el_server


async def until(condition, within: float = 5.0) -> None:
    """Wait for ``condition()`` to be true (the fake's request log has no event to await)."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


async def test_speech_end_to_end(el):
    text = "Hello there. This is mediagen speaking through ElevenLabs."
    job = await el.generate(text=text)
    assert job.model == "eleven_multilingual_v2"
    assert job.estimated_cost.basis == common_pb2.COST_BASIS_ESTIMATED
    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS
    assert job.estimated_cost.amount_micros == round(len(text) / 1000 * 100_000)
    final = await el.wait(job.id)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error

    (call,) = el.fake.tts_calls()
    assert call.path == "/v1/text-to-speech/pNInz6obpgDQGcFmaJgB/stream"  # default preset (Adam)
    assert call.headers["xi-api-key"] == el.fake.api_key
    assert "x-mediagen-capture" not in call.headers
    assert call.arg("output_format") == "mp3_44100_128"
    assert call.json() == {"text": text, "model_id": "eleven_multilingual_v2"}

    data = await el.download(job.id)
    info = probe_bytes(data)
    (artifact,) = final.artifacts
    assert info.content_type == artifact.content_type == "audio/mpeg"
    expected = el.fake.durations[0]
    assert abs(info.duration_seconds - expected) < 0.1
    assert abs(artifact.duration_seconds - info.duration_seconds) < 1e-3
    assert artifact.metadata["characters_billed"] == str(len(text))
    assert artifact.metadata["vendor_request_ids"] == "req0001"
    # The key is in no stored handle, job or artifact.
    record = await el.server.store.get(job.id)
    assert el.fake.api_key not in json.dumps(record.handle) and el.fake.api_key not in str(final)
    # character-cost header -> vendor-reported cost
    assert final.final_cost.basis == common_pb2.COST_BASIS_VENDOR_REPORTED
    assert final.final_cost.amount_micros == round(len(text) / 1000 * 100_000)


async def test_long_text_is_split_at_sentences_and_joined_into_one_mp3(el):
    el.fake.seconds_per_character = 0.0004
    text = SENTENCE * 290  # ~20,900 characters: three pieces under the 10,000 limit
    final = await el.run(text=text)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error

    calls = el.fake.tts_calls()
    assert len(calls) == 3
    bodies = [c.json() for c in calls]
    pieces = [b["text"] for b in bodies]
    assert all(len(p) <= 10_000 for p in pieces)
    assert all(p.endswith(".") for p in pieces)  # cut at sentence ends
    assert " ".join(pieces) == text.strip()
    # request stitching: neighbours are sent as context
    assert "previous_text" not in bodies[0] and bodies[0]["next_text"] == pieces[1][:1000]
    assert bodies[1]["previous_text"] == pieces[0][-1000:] and bodies[1]["next_text"] == pieces[2][:1000]
    assert bodies[2]["previous_text"] == pieces[1][-1000:] and "next_text" not in bodies[2]

    data = await el.download(final.id)
    # One MPEG stream with one Info header in front: no ID3 or Xing header of a piece left inside.
    assert data.count(b"Xing") + data.count(b"Info") == 1 and b"Info" in data[:64]
    assert b"ID3" not in data
    info = probe_bytes(data)
    # The joined file lasts exactly what its pieces' frames last (each piece keeps
    # its encoder padding, a few tens of ms per join) ...
    frames = 0.0
    for index in range(3):
        joiner = Mp3Joiner()
        joiner.begin()
        joiner.feed(el.fake.served_audio[index])
        joiner.end()
        frames += joiner.samples / joiner.sample_rate_hz
    assert info.duration_seconds == pytest.approx(frames, abs=1e-3)
    # ... and that is the sum of the spoken pieces.
    assert abs(info.duration_seconds - sum(el.fake.durations)) < 3 * 0.08
    assert final.artifacts[0].metadata["pieces"] == "3"
    assert final.final_cost.units == pytest.approx(sum(len(p) for p in pieces) / 1000)


async def test_long_text_as_wav_has_one_header_and_exact_duration(el):
    el.fake.seconds_per_character = 0.0004
    text = SENTENCE * 290
    final = await el.run(text=text, format="AUDIO_FORMAT_WAV", model="eleven_v3")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    calls = el.fake.tts_calls()
    assert len(calls) == 7  # eleven_v3: 3,000 characters per request
    assert all(c.arg("output_format") == "pcm_24000" for c in calls)
    assert all("previous_text" not in c.json() for c in calls)  # v3 takes no stitching
    data = await el.download(final.id)
    assert data[:4] == b"RIFF" and data.count(b"RIFF") == 1 and data.count(b"WAVE") == 1
    info = probe_bytes(data)
    assert info.content_type == "audio/wav" and info.sample_rate_hz == 24000
    assert info.duration_seconds == pytest.approx(sum(el.fake.durations), abs=1e-3)
    assert final.artifacts[0].duration_seconds == pytest.approx(info.duration_seconds)


async def test_pcm_and_opus_outputs(el):
    final = await el.run(text="Raw samples please.", format="AUDIO_FORMAT_PCM")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.artifacts[0].content_type == "audio/pcm"
    assert final.artifacts[0].duration_seconds == pytest.approx(el.fake.durations[-1], abs=1e-3)
    final = await el.run(
        text="Opus now.", format="AUDIO_FORMAT_OGG_OPUS", provider_options={"output_format": "opus_48000_96"}
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert el.fake.tts_calls()[-1].arg("output_format") == "opus_48000_96"
    assert final.artifacts[0].content_type == "audio/ogg"


async def test_presets_names_and_voice_settings(el):
    final = await el.run(
        text="Once upon a time.",
        voice="narrator",
        speed=1.1,
        language="de-DE",
        model="eleven_flash_v2_5",
        provider_options={"stability": 0.4, "use_speaker_boost": True, "seed": 7},
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    call = el.fake.tts_calls()[-1]
    assert call.path == "/v1/text-to-speech/VR6AewLTigWG4xSOukaG/stream"
    body = call.json()
    assert body["voice_settings"] == {"stability": 0.4, "use_speaker_boost": True, "speed": 1.1}
    assert body["language_code"] == "de" and body["seed"] == 7 and body["model_id"] == "eleven_flash_v2_5"
    # flash/turbo price: $0.05 per 1K characters
    assert final.final_cost.unit_price_micros == 50_000

    # A voice name is looked up in GET /v1/voices (legacy voices included), once.
    for _ in range(2):
        final = await el.run(text="By name.", voice="studio narrator")
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
        assert el.fake.tts_calls()[-1].path == "/v1/text-to-speech/Zx9CustomVoice000001/stream"
    (listing,) = el.fake.server.calls("GET", "/v1/voices")
    assert listing.arg("show_legacy") == "true" and listing.headers["xi-api-key"] == el.fake.api_key
    # language is not sent to models that reject language_code
    await el.run(text="Hallo.", language="de")
    assert "language_code" not in el.fake.tts_calls()[-1].json()

    final = await el.run(text="Who?", voice="Nobody Here")
    metadata = assert_failed(final, Code.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert metadata["field"] == "voice" and "Rachel" in final.error.message


async def test_quota_exceeded_401_is_out_of_credit_not_auth(el):
    el.fake.quota_characters = 5
    final = await el.run(text="This text costs more than five characters.")
    assert_failed(final, Code.RESOURCE_EXHAUSTED, "PROVIDER_OUT_OF_CREDIT")
    assert "quota" in final.error.message
    assert not el.stored_files(final.id)


async def test_bad_key_is_auth_failed(el, monkeypatch):
    el.fake.api_key = "another-key-entirely"
    final = await el.run(text="Hello.")
    metadata = assert_failed(final, Code.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    assert metadata["httpStatus"] == "401" and "Invalid API key" in final.error.message
    assert "el-test-key" not in final.error.message
    assert not el.stored_files(final.id)


@pytest.mark.parametrize(
    ("fault", "code", "reason"),
    [
        (detail_error(400, "max_character_limit_exceeded", "too long"), Code.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
        (
            error_reply(422, {"detail": [{"loc": ["body", "text"], "msg": "field required", "type": "missing"}]}),
            Code.INVALID_ARGUMENT,
            "PROVIDER_INVALID_REQUEST",
        ),
        (detail_error(403, "only_for_creator+", "This voice needs a Creator plan"), Code.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
        (rate_limited(body={"detail": {"status": "too_many_concurrent_requests", "message": "max 2"}}),
         Code.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
        (server_error(500), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (server_error(503), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (dropped(), Code.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
        (Reply(body={"detail": "not audio"}), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        (Reply(body=b"\x00garbage" * 50, headers={"Content-Type": "audio/mpeg"}), Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
        (Reply(body=b"\xff\xfb" * 3000, content_length=9000, cut_after=3000, headers={"Content-Type": "audio/mpeg"}),
         Code.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE"),
    ],
)
async def test_failures_end_in_the_right_code_with_nothing_stored(el, fault, code, reason):
    el.fake.server.fail_next("POST", "/v1/text-to-speech/{voice}/stream", fault, times=3)
    final = await el.run(text="Hello failure.")
    assert_failed(final, code, reason)
    assert not el.stored_files(final.id)


async def test_transient_failures_are_retried_honouring_retry_after(el):
    el.fake.server.script(
        "POST",
        "/v1/text-to-speech/{voice}/stream",
        [rate_limited(retry_after=0.3), server_error(503)],
    )
    final = await el.run(text="Eventually it works.")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    calls = el.fake.tts_calls()
    assert len(calls) == 3
    assert calls[1].at - calls[0].at >= 0.29  # waited as the vendor asked
    assert len(el.fake.durations) == 1


async def test_voice_listing_failures(el):
    el.fake.server.fail_next("GET", "/v1/voices", malformed_json(), times=3)
    final = await el.run(text="Named voice.", voice="Rachel")
    assert_failed(final, Code.UNAVAILABLE, "PROVIDER_BAD_RESPONSE")
    assert len(el.fake.server.calls("GET", "/v1/voices")) == 3  # retried: a GET is idempotent
    el.fake.server.fail_next("GET", "/v1/voices", server_error(503))
    final = await el.run(text="Named voice.", voice="Rachel")
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(el.fake.server.calls("GET", "/v1/voices")) == 5
    assert el.fake.tts_calls()[-1].path == "/v1/text-to-speech/21m00Tcm4TlvDq8ikWAM/stream"


async def test_a_piece_failing_midway_restarts_the_synthesis_and_bills_again(el):
    el.fake.seconds_per_character = 0.0002
    text = SENTENCE * 150  # two pieces
    served = []

    def tts(request):
        served.append(request)
        if len(served) == 2:  # the second piece of the first attempt breaks
            return server_error(503)
        return el.fake._tts(request)

    el.fake.server.route("POST", "/v1/text-to-speech/{voice_id}/stream", tts)
    final = await el.run(text=text)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert len(served) == 4  # piece 1, piece 2 (503), then pieces 1 and 2 again
    billed = sum(len(r.json()["text"]) for r in served[:1] + served[2:])
    assert final.final_cost.units == pytest.approx(billed / 1000)
    stored = sum(len(r.json()["text"]) for r in served[2:])
    assert final.artifacts[0].metadata["characters_billed"] == str(stored)
    data = await el.download(final.id)
    assert abs(probe_bytes(data).duration_seconds - sum(el.fake.durations[1:])) < 2 * 0.08


async def test_a_slow_answer_times_out(el):
    el.provider.http.timeout = httpx.Timeout(5.0, read=0.2)
    el.fake.server.fail_next("POST", "/v1/text-to-speech/{voice}/stream", slow(0.6), times=3)
    final = await el.run(text="Too slow.")
    assert_failed(final, Code.UNAVAILABLE, "PROVIDER_TIMEOUT")
    assert not el.stored_files(final.id)


async def test_without_character_cost_the_cost_is_measured(el):
    el.fake.send_character_cost = False
    final = await el.run(text="Counting characters.")
    assert final.final_cost.basis == common_pb2.COST_BASIS_MEASURED
    assert final.final_cost.units == pytest.approx(len("Counting characters.") / 1000)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"speed": 1.5}, "speed"),
        ({"instructions": "whisper"}, "instructions"),
        ({"format": "AUDIO_FORMAT_FLAC"}, "format"),
        ({"provider_options": {"stabilty": 0.5}}, "provider_options.stabilty"),
        ({"provider_options": {"stability": 2}}, "provider_options.stability"),
        ({"format": "AUDIO_FORMAT_PCM", "provider_options": {"output_format": "pcm_44100"}}, "provider_options.output_format"),
        ({"format": "AUDIO_FORMAT_MP3", "provider_options": {"output_format": "pcm_24000"}}, "provider_options.output_format"),
        ({"model": "eleven_v9"}, "model"),
    ],
)
async def test_invalid_requests_are_refused_before_any_vendor_call(el, fields, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await el.generate(text="Hello.", **fields)
    assert caught.value.code() == Code.INVALID_ARGUMENT
    assert field in bad_fields(caught.value)
    assert not el.fake.server.requests


@pytest.mark.parametrize("key_kept", [True, False])
async def test_a_restart_while_synthesising_speaks_the_text_again(tmp_path, key_kept):
    """No vendor job survives a restart: the resumed job synthesises (and pays) again."""
    with FakeVendorServer() as api:
        fake = FakeElevenLabs(api)
        fake.server.fail_next("POST", "/v1/text-to-speech/{voice}/stream", slow(3.0))
        env = {"ELEVENLABS_BASE_URL": api.url, "ELEVENLABS_API_KEY": fake.api_key}
        patched = [(ElevenLabsSpeech, "retry", FAST), (ElevenLabsSpeech, "timeout", TIMEOUT)]
        async with vendor_server(tmp_path, SPEECH, "elevenlabs", env, patched, unset=["ELEVEN_API_KEY"]) as first:
            job = await first.generate(text="Said twice.")
            await until(fake.tts_calls)
        if not key_kept:
            env.pop("ELEVENLABS_API_KEY")
        unset = ["ELEVEN_API_KEY", "ELEVENLABS_API_KEY"]
        async with vendor_server(tmp_path, SPEECH, "elevenlabs", env, patched, unset=unset) as second:
            final = await second.wait(job.id)
        if key_kept:
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
            assert len(fake.tts_calls()) == 2
        else:
            metadata = assert_failed(final, Code.FAILED_PRECONDITION, "PROVIDER_NOT_CONFIGURED")
            assert "ELEVENLABS_API_KEY" in final.error.message and metadata["provider"] == "elevenlabs"
            assert len(fake.tts_calls()) == 1


async def test_cancel_while_synthesising(el):
    el.fake.server.fail_next("POST", "/v1/text-to-speech/{voice}/stream", slow(0.8))
    job = await el.generate(text="Slow speech.")
    await until(el.fake.tts_calls)
    cancelled = await el.cancel(job.id)
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    assert not cancelled.artifacts and not el.stored_files(job.id)
    # ElevenLabs has no cancel call: the request in flight was simply abandoned.
    assert len(el.fake.tts_calls()) == 1
