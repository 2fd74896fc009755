"""Soundraw adapter end to end: real gRPC channel, real server, fake Soundraw over real HTTP."""

from __future__ import annotations

import hashlib

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2, music_pb2, music_pb2_grpc
from providers.mock.media import probe
from providers.music.soundraw import SoundrawProvider, tempo_for_bpm
from providers.retry import RetryPolicy
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.mubert import audio_bytes
from tests.fakes.server import (
    dropped,
    error_reply,
    malformed_json,
    rate_limited,
    server_error,
    slow,
    truncated,
)
from tests.fakes.soundraw import API_TOKEN, FakeSoundraw
from tests.helpers import assert_failed, bad_fields, error_info, serving, vendor_env

FAST = RetryPolicy(initial=0.01, maximum=0.02, max_retry_after=2.0, max_attempts=3)
MUSIC = common_pb2.MEDIA_TYPE_MUSIC


@pytest.fixture
async def env(tmp_path, monkeypatch):
    with FakeSoundraw() as fake:
        variables = {
            "SOUNDRAW_BASE_URL": fake.url,
            "SOUNDRAW_API_KEY": API_TOKEN,
        }
        async with vendor_env(
            monkeypatch,
            tmp_path,
            MUSIC,
            "soundraw",
            variables,
            retry=FAST,
            fake=fake,
            watch_timeout=None,
            require_end=True,
        ) as env:
            yield env


def request(**fields) -> music_pb2.GenerateMusicRequest:
    msg = music_pb2.GenerateMusicRequest()
    json_format.ParseDict({"provider": "soundraw", **fields}, msg)
    return msg


# --- success ---------------------------------------------------------------------------


async def test_compose_end_to_end(env, tmp_path):
    job = await env.run(
        mood="happy, dreamy",
        genre="lofi  hip hop",
        theme="corporate",
        tempo_bpm=80,
        duration_seconds=10,
    )
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    (compose,) = env.fake.calls("POST", FakeSoundraw.COMPOSE)
    assert compose.headers["authorization"] == f"Bearer {API_TOKEN}"
    assert compose.json() == {
        "moods": ["Happy", "Dreamy"],
        "genres": ["Lofi Hip Hop"],
        "themes": ["Corporate"],
        "length": 10,
        "tempo": "low",
        "file_format": "mp3",
    }
    artifact, data = await env.download_artifact(job.id)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    path = tmp_path / "song.mp3"
    path.write_bytes(data)
    info = probe(path)
    assert info.content_type == artifact.content_type == "audio/mpeg"
    assert abs(info.duration_seconds - 10.0) < 0.1
    assert artifact.metadata["bpm"] == "80"
    assert artifact.metadata["share_link"].startswith("https://soundraw.io/")
    assert artifact.metadata["moods"] == "Happy, Dreamy"
    assert job.vendor_job_id == compose_id(env)

    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_TRACK
    assert job.estimated_cost.amount_micros == 299_900
    assert job.final_cost.amount_micros == 299_900
    assert job.final_cost.basis == common_pb2.COST_BASIS_MEASURED


def compose_id(env) -> str:
    return next(iter(env.fake.songs))


async def test_wav_with_tempo_energy_levels_and_stems(env):
    job = await env.run(
        genre="Rock",
        duration_seconds=12,
        format="AUDIO_FORMAT_WAV",
        provider_options={
            "tempo": "high",
            "energy_levels": [
                {"start": 0, "end": 6, "energy": "low"},
                {"start": 6, "end": 12, "energy": "Very High"},
            ],
            "mute_stems": ["bs"],
        },
    )
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    (compose,) = env.fake.calls("POST", FakeSoundraw.COMPOSE)
    body = compose.json()
    assert body["tempo"] == "high" and body["file_format"] == "wav" and body["mute_stems"] == ["bs"]
    assert body["energy_levels"] == [
        {"start": 0, "end": 6, "energy": "Low"},
        {"start": 6, "end": 12, "energy": "Very High"},
    ]
    artifact, _ = await env.download_artifact(job.id)
    assert artifact.content_type == "audio/wav"
    assert abs(artifact.duration_seconds - 12.0) < 0.01
    assert '"energy":"Very High"' in artifact.metadata["timestamps"]


def test_tempo_buckets():
    assert [tempo_for_bpm(b) for b in (60, 89.9, 90, 125, 125.1, 170)] == [
        "low",
        "low",
        "normal",
        "normal",
        "high",
        "high",
    ]


# --- validation ---------------------------------------------------------------------------


REFUSED = [
    ({"mood": "happy", "prompt": "a happy song"}, "prompt"),
    ({"mood": "happy", "lyrics": "la la"}, "lyrics"),
    ({"mood": "jolly"}, "mood"),
    ({"genre": "Polka"}, "genre"),
    ({"theme": "Space Opera"}, "theme"),
    ({"mood": "happy", "duration_seconds": 5}, "duration_seconds"),
    ({"mood": "happy", "duration_seconds": 400}, "duration_seconds"),
    ({"mood": "happy", "format": "AUDIO_FORMAT_FLAC"}, "format"),
    ({"mood": "happy", "model": "v3"}, "model"),
    ({"mood": "happy", "provider_options": {"tempo": "fast"}}, "provider_options.tempo"),
    ({"mood": "happy", "tempo_bpm": 100, "provider_options": {"tempo": "low"}}, "tempo_bpm"),
    ({"mood": "happy", "provider_options": {"bpm": 100}}, "provider_options.bpm"),
    (
        {
            "mood": "happy",
            "provider_options": {"energy_levels": [{"start": 0, "end": 99, "energy": "Low"}]},
        },
        "provider_options.energy_levels[0]",
    ),
    (
        {
            "mood": "happy",
            "provider_options": {"energy_levels": [{"start": 0, "end": 5, "energy": "Loud"}]},
        },
        "provider_options.energy_levels[0].energy",
    ),
    (
        {"mood": "happy", "provider_options": {"mute_stems": ["bass guitar"]}},
        "provider_options.mute_stems",
    ),
]


async def test_what_soundraw_cannot_do_is_refused(env):
    for fields, field in REFUSED:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.stub.GenerateMusic(request(**fields))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)
        assert field in bad_fields(caught.value), (fields, status)
        assert env.fake.requests == []


async def test_unknown_mood_lists_the_allowed_values(env):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.stub.GenerateMusic(request(mood="jolly"))
    assert (
        "'jolly' is not a Soundraw mood; allowed: Angry, Busy & Frantic" in caught.value.details()
    )
    assert "Suspense" in caught.value.details()


async def test_taxonomy_can_be_replaced_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDRAW_API_KEY", API_TOKEN)
    monkeypatch.setenv("SOUNDRAW_MOODS", "Jolly, Happy")
    provider = SoundrawProvider(make_settings(tmp_path))
    try:
        provider.validate(request(mood="jolly"))
        assert provider._body(request(mood="JOLLY"))["moods"] == ["Jolly"]
        assert "mood: Jolly, Happy" in provider.describe().notes
    finally:
        await provider.aclose()


async def test_missing_key_is_failed_precondition(tmp_path, monkeypatch):
    monkeypatch.delenv("SOUNDRAW_API_KEY", raising=False)
    monkeypatch.delenv("SOUNDRAW_API_TOKEN", raising=False)
    async with serving(MediagenServer(make_settings(tmp_path))) as channel:
        stub = music_pb2_grpc.MusicServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GenerateMusic(request(mood="happy"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            error_info(rpc_status.from_call(caught.value)).reason == "PROVIDER_NOT_CONFIGURED"
        )
        assert "SOUNDRAW_API_KEY" in caught.value.details()


async def test_catalog_entry(env):
    entry = (
        await env.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="soundraw", media_type=MUSIC)
        )
    ).provider
    assert entry.configured
    assert (entry.limits.min_duration_seconds, entry.limits.max_duration_seconds) == (10, 300)
    assert list(entry.limits.formats) == ["mp3", "wav"]
    assert entry.prices[0].unit_price_micros == 299_900 and "Starter" in entry.prices[0].note
    assert any(note.startswith("mood: Angry") for note in entry.notes)
    assert API_TOKEN not in str(entry)


# --- vendor failures -------------------------------------------------------------------------


COMPOSE_FAILURES = [
    (
        error_reply(401, {"message": "Unauthenticated."}),
        code_pb2.FAILED_PRECONDITION,
        "PROVIDER_AUTH_FAILED",
    ),
    (
        error_reply(402, {"message": "Payment required."}),
        code_pb2.RESOURCE_EXHAUSTED,
        "PROVIDER_OUT_OF_CREDIT",
    ),
    (
        error_reply(
            422,
            {
                "message": "The length is invalid.",
                "errors": {"length": ["The length is invalid."]},
            },
        ),
        code_pb2.INVALID_ARGUMENT,
        "PROVIDER_INVALID_REQUEST",
    ),
    (
        rate_limited(retry_after=5, body={"message": "Too many requests."}),
        code_pb2.RESOURCE_EXHAUSTED,
        "PROVIDER_RATE_LIMITED",
    ),
    (server_error(500), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (dropped(), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (malformed_json(), code_pb2.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
    (slow(2.0), code_pb2.UNAVAILABLE, "PROVIDER_TIMEOUT"),
]


async def test_compose_failures(env):
    for reply, grpc_code, reason in COMPOSE_FAILURES:
        env.provider.http.timeout = httpx.Timeout(0.3)
        composes = len(env.fake.calls("POST", FakeSoundraw.COMPOSE))
        env.fake.fail_next("POST", FakeSoundraw.COMPOSE, reply)
        job = await env.run(mood="happy", duration_seconds=10)
        assert_failed(job, grpc_code, reason)
        # A paid call is never repeated.
        assert len(env.fake.calls("POST", FakeSoundraw.COMPOSE)) == composes + 1
        assert API_TOKEN not in job.error.message
        assert env.stored_files() == []


async def test_validation_error_keeps_the_vendor_message(env):
    env.fake.fail_next(
        "POST",
        FakeSoundraw.COMPOSE,
        FakeSoundraw.invalid("themes", "The selected themes is invalid."),
    )
    job = await env.run(mood="happy", duration_seconds=10)
    assert_failed(job, code_pb2.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST")
    assert "themes: The selected themes is invalid." in job.error.message


async def test_answer_without_a_file_url(env):
    env.fake.omit_url = True
    job = await env.run(mood="happy", duration_seconds=10)
    assert_failed(job, code_pb2.UNAVAILABLE, "PROVIDER_BAD_RESPONSE")


async def test_download_429_honours_retry_after(env):
    env.fake.fail_next("GET", FakeSoundraw.FILE, rate_limited(retry_after=0.3))
    job = await env.run(mood="happy", duration_seconds=10)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    first, second = env.fake.calls("GET", FakeSoundraw.FILE)
    assert second.at - first.at >= 0.29


async def test_download_5xx_and_cut_short_are_fetched_again(env):
    whole = audio_bytes("mp3", 10.0)
    env.fake.script(
        "GET", FakeSoundraw.FILE, [server_error(503), truncated(whole, len(whole) // 3)]
    )
    job = await env.run(mood="happy", duration_seconds=10)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    _, data = await env.download_artifact(job.id)
    assert data == whole


@pytest.mark.parametrize("times", [1, 10])
async def test_download_404_or_always_cut_short_fails_and_stores_nothing(env, times):
    whole = audio_bytes("mp3", 10.0)
    if times == 1:
        env.fake.fail_next("GET", FakeSoundraw.FILE, error_reply(404, "Not Found"))
    else:
        env.fake.fail_next("GET", FakeSoundraw.FILE, truncated(whole, 2000), times=times)
    job = await env.run(mood="happy", duration_seconds=10)
    assert_failed(job, code_pb2.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE")
    assert env.stored_files() == []


async def test_cancel_during_the_synchronous_compose(env):
    env.fake.fail_next("POST", FakeSoundraw.COMPOSE, slow(5.0))
    job = (await env.stub.GenerateMusic(request(mood="happy", duration_seconds=10))).job
    watch = env.stub.WatchMusicJob(music_pb2.WatchMusicJobRequest(job_id=job.id))
    async for response in watch:
        if response.event.job.progress.phase == common_pb2.JOB_PHASE_SUBMITTING:
            break
    cancelled = (await env.stub.CancelMusicJob(music_pb2.CancelMusicJobRequest(job_id=job.id))).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    # Soundraw has no cancel call: the only request it saw is the compose.
    assert [(r.method, r.path) for r in env.fake.requests] == [("POST", FakeSoundraw.COMPOSE)]
    assert env.stored_files() == []
