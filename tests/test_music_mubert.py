"""Mubert adapter end to end: real gRPC channel, real server, fake Mubert v3 over real HTTP."""

from __future__ import annotations

import hashlib

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, music_pb2, music_pb2_grpc
from providers.mock.media import probe
from providers.retry import RetryPolicy
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.mubert import ACCESS_TOKEN, CUSTOMER_ID, FakeMubert
from tests.fakes.server import dropped, malformed_json, rate_limited, server_error, slow, truncated
from tests.helpers import assert_failed, bad_fields, error_info, serving, vendor_env

FAST = RetryPolicy(initial=0.01, maximum=0.02, max_retry_after=2.0, max_attempts=3)
MUSIC = common_pb2.MEDIA_TYPE_MUSIC


@pytest.fixture
async def env(tmp_path, monkeypatch):
    with FakeMubert() as fake:
        variables = {
            "MUBERT_BASE_URL": fake.base_url,
            "MUBERT_CUSTOMER_ID": CUSTOMER_ID,
            "MUBERT_ACCESS_TOKEN": ACCESS_TOKEN,
            "MUBERT_TRACK_PRICE_USD": "0.25",
        }
        async with vendor_env(
            monkeypatch,
            tmp_path,
            MUSIC,
            "mubert",
            variables,
            retry=FAST,
            fake=fake,
            watch_timeout=None,
            require_end=True,
        ) as env:
            yield env


def request(**fields) -> music_pb2.GenerateMusicRequest:
    msg = music_pb2.GenerateMusicRequest()
    json_format.ParseDict({"provider": "mubert", **fields}, msg)
    return msg


# --- success -------------------------------------------------------------------------


async def test_prompt_track_end_to_end(env, tmp_path):
    job = await env.run(prompt="calm piano", mood="happy", genre="ambient", duration_seconds=5)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    (create,) = env.fake.calls("POST", FakeMubert.TRACKS)
    assert create.headers["customer-id"] == CUSTOMER_ID
    assert create.headers["access-token"] == ACCESS_TOKEN
    assert create.json() == {"duration": 5, "format": "mp3", "prompt": "calm piano, happy, ambient"}
    assert len(env.fake.calls("GET", FakeMubert.TRACK)) >= 2  # processing, then done

    artifact, data = await env.download_artifact(job.id)
    assert artifact.size_bytes == len(data) and artifact.sha256 == hashlib.sha256(data).hexdigest()
    path = tmp_path / "track.mp3"
    path.write_bytes(data)
    info = probe(path)
    assert info.content_type == artifact.content_type == "audio/mpeg"
    assert abs(info.duration_seconds - 5.0) < 0.1
    assert abs(artifact.duration_seconds - 5.0) < 0.1
    assert artifact.metadata["mubert_track_id"] == job.vendor_job_id
    assert artifact.metadata["prompt"] == "calm piano, happy, ambient"

    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_TRACK
    assert job.estimated_cost.amount_micros == 250_000
    assert job.estimated_cost.basis == common_pb2.COST_BASIS_ESTIMATED
    assert job.final_cost.amount_micros == 250_000 and job.final_cost.units == 1
    assert job.final_cost.basis == common_pb2.COST_BASIS_MEASURED


async def test_playlist_track_with_bpm_key_and_wav(env, tmp_path):
    job = await env.run(
        mood="dreamy",
        tempo_bpm=92.4,
        duration_seconds=6,
        format="AUDIO_FORMAT_WAV",
        provider_options={
            "playlist_index": "1.0.0",
            "key": "Am",
            "intensity": "low",
            "mode": "loop",
            "bitrate": 320,
        },
    )
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    (create,) = env.fake.calls("POST", FakeMubert.TRACKS)
    assert create.json() == {
        "duration": 6,
        "format": "wav",
        "playlist_index": "1.0.0",
        "bpm": 92,
        "intensity": "low",
        "mode": "loop",
        "bitrate": 320,
        "key": "Am",
    }
    artifact, data = await env.download_artifact(job.id)
    assert artifact.content_type == "audio/wav"
    assert abs(artifact.duration_seconds - 6.0) < 0.01
    assert artifact.metadata["playlist_index"] == "1.0.0"
    assert artifact.metadata["playlist_mood_label"] == "dreamy"
    assert artifact.metadata["key"] == "Am" and artifact.metadata["bpm"] == "92"


# --- validation before any vendor call ------------------------------------------------------


REFUSED = [
    ({"prompt": "song", "lyrics": "la la la"}, "lyrics"),
    ({"prompt": "song", "tempo_bpm": 120}, "tempo_bpm"),
    ({"prompt": "x" * 150, "mood": "y" * 60}, "prompt"),
    ({"prompt": "song", "provider_options": {"playlist_index": "1.0.0"}}, "prompt"),
    (
        {"mood": "calm", "provider_options": {"playlist_index": "not a playlist"}},
        "provider_options.playlist_index",
    ),
    ({"prompt": "song", "duration_seconds": 3}, "duration_seconds"),
    ({"prompt": "song", "format": "AUDIO_FORMAT_OGG_OPUS"}, "format"),
    ({"prompt": "song", "model": "v2"}, "model"),
    ({"prompt": "song", "provider_options": {"tempo": "fast"}}, "provider_options.tempo"),
    ({"prompt": "song", "provider_options": {"mode": "jingle"}}, "provider_options.mode"),
    (
        {"prompt": "song", "provider_options": {"intensity": "extreme"}},
        "provider_options.intensity",
    ),
    ({"prompt": "song", "provider_options": {"bitrate": 64}}, "provider_options.bitrate"),
    ({"prompt": "song", "provider_options": {"key": "Am"}}, "provider_options.key"),
]


async def test_what_mubert_cannot_do_is_refused_before_any_call(env):
    for fields, field in REFUSED:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.stub.GenerateMusic(request(**fields))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)
        assert field in bad_fields(caught.value), status
        assert env.fake.requests == []


async def test_missing_credentials_is_failed_precondition(tmp_path, monkeypatch):
    monkeypatch.delenv("MUBERT_ACCESS_TOKEN", raising=False)
    monkeypatch.delenv("MUBERT_API_KEY", raising=False)
    monkeypatch.setenv("MUBERT_CUSTOMER_ID", CUSTOMER_ID)
    async with serving(MediagenServer(make_settings(tmp_path))) as channel:
        stub = music_pb2_grpc.MusicServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GenerateMusic(request(prompt="song"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(rpc_status.from_call(caught.value))
        assert info.reason == "PROVIDER_NOT_CONFIGURED"
        assert "MUBERT_ACCESS_TOKEN" in caught.value.details()
        entry = (
            await catalog_pb2_grpc.CatalogServiceStub(channel).GetProvider(
                catalog_pb2.GetProviderRequest(name="mubert", media_type=MUSIC)
            )
        ).provider
        assert not entry.configured and entry.not_configured_reason == "set MUBERT_ACCESS_TOKEN"


async def test_api_key_alias_configures_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv("MUBERT_CUSTOMER_ID", CUSTOMER_ID)
    monkeypatch.delenv("MUBERT_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("MUBERT_API_KEY", ACCESS_TOKEN)
    from providers.music.mubert import MubertProvider

    provider = MubertProvider(make_settings(tmp_path))
    try:
        assert provider.describe().configured
    finally:
        await provider.aclose()


async def test_catalog_entry(env):
    entry = (
        await env.catalog.GetProvider(
            catalog_pb2.GetProviderRequest(name="mubert", media_type=MUSIC)
        )
    ).provider
    assert entry.configured and not entry.retired
    assert list(entry.limits.formats) == ["mp3", "wav"]
    assert entry.limits.min_duration_seconds == 5 and entry.limits.max_prompt_characters == 200
    assert (
        entry.prices[0].unit == common_pb2.PRICE_UNIT_TRACK
        and entry.prices[0].unit_price_micros == 250_000
    )
    assert entry.documentation_uri.startswith("https://mubert.com")
    assert ACCESS_TOKEN not in str(entry)


# --- vendor failures ----------------------------------------------------------------------


async def test_bad_credentials_fail_with_auth_error(env):
    env.fake.access_token = "something-else"
    job = await env.run(prompt="song", duration_seconds=5)
    info = assert_failed(job, code_pb2.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    assert info.metadata["httpStatus"] == "401"
    assert ACCESS_TOKEN not in job.error.message


LICENCE_ERRORS = [
    ("LicenseLimitTracksCount", code_pb2.RESOURCE_EXHAUSTED, "PROVIDER_OUT_OF_CREDIT"),
    (
        "LicenseLimitConcurrentTrackGenerationsCount",
        code_pb2.RESOURCE_EXHAUSTED,
        "PROVIDER_RATE_LIMITED",
    ),
    ("LicenseForbiddenDuration", code_pb2.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
    ("LicenseExpired", code_pb2.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED"),
]


async def test_licence_errors(env):
    for code, grpc_code, reason in LICENCE_ERRORS:
        creates = len(env.fake.calls("POST", FakeMubert.TRACKS))
        env.fake.fail_next(
            "POST", FakeMubert.TRACKS, FakeMubert.licence_error(code, type="monthly")
        )
        job = await env.run(prompt="song", duration_seconds=5)
        info = assert_failed(job, grpc_code, reason)
        assert info.metadata["vendorCode"] == code
        # A create is never repeated.
        assert len(env.fake.calls("POST", FakeMubert.TRACKS)) == creates + 1


async def test_validation_error_carries_the_vendor_message(env):
    env.fake.fail_next(
        "POST",
        FakeMubert.TRACKS,
        FakeMubert.validation_error("duration", "The duration is too long."),
    )
    job = await env.run(prompt="song", duration_seconds=5)
    assert_failed(job, code_pb2.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST")
    assert "The duration is too long." in job.error.message


async def test_generation_failed_at_the_vendor(env):
    env.fake.next_outcome = "failed"
    job = await env.run(prompt="song", duration_seconds=5)
    info = assert_failed(job, code_pb2.ABORTED, "PROVIDER_JOB_FAILED")
    assert info.metadata["vendorStatus"] == "failed"
    assert env.stored_files() == []


async def test_poll_429_honours_retry_after(env):
    env.fake.fail_next(
        "GET",
        FakeMubert.TRACK,
        rate_limited(retry_after=0.3, body={"message": "Too Many Attempts."}),
    )
    job = await env.run(prompt="song", duration_seconds=5)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    polls = env.fake.calls("GET", FakeMubert.TRACK)
    assert polls[1].at - polls[0].at >= 0.29


async def test_poll_429_without_retry_after_and_5xx_are_retried(env):
    env.fake.script(
        "GET",
        FakeMubert.TRACK,
        [
            rate_limited(body={"message": "Too Many Attempts."}),
            server_error(503),
            server_error(500),
            malformed_json(),
        ],
    )
    job = await env.run(prompt="song", duration_seconds=5)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error


async def test_submit_429_is_not_repeated(env):
    env.fake.fail_next(
        "POST",
        FakeMubert.TRACKS,
        rate_limited(retry_after=7, body={"message": "Too Many Attempts."}),
    )
    job = await env.run(prompt="song", duration_seconds=5)
    assert_failed(job, code_pb2.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED")
    retry = [d for d in job.error.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, "RetryInfo carries the vendor's Retry-After"
    assert len(env.fake.calls("POST", FakeMubert.TRACKS)) == 1


SUBMIT_FAILURES = [
    (server_error(503), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (dropped(), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (malformed_json(), code_pb2.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
    (slow(2.0), code_pb2.UNAVAILABLE, "PROVIDER_TIMEOUT"),
]


async def test_submit_failures(env):
    for reply, grpc_code, reason in SUBMIT_FAILURES:
        env.provider.http.timeout = httpx.Timeout(0.3)
        env.fake.fail_next("POST", FakeMubert.TRACKS, reply)
        job = await env.run(prompt="song", duration_seconds=5)
        assert_failed(job, grpc_code, reason)
        assert env.stored_files() == []


async def test_output_url_404_fails_and_stores_nothing(env):
    env.fake.fail_next("GET", FakeMubert.FILE, server_error(404, "gone"), times=5)
    job = await env.run(prompt="song", duration_seconds=5)
    assert_failed(job, code_pb2.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE")
    assert env.stored_files() == []


async def test_output_cut_short_is_fetched_again(env):
    from tests.fakes.mubert import audio_bytes

    whole = audio_bytes("mp3", 5.0)
    env.fake.fail_next("GET", FakeMubert.FILE, truncated(whole, len(whole) // 2))
    job = await env.run(prompt="song", duration_seconds=5)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    artifact, data = await env.download_artifact(job.id)
    assert data == whole
    assert len(env.fake.calls("GET", FakeMubert.FILE)) == 2


async def test_output_always_cut_short_fails_and_stores_nothing(env):
    from tests.fakes.mubert import audio_bytes

    whole = audio_bytes("mp3", 5.0)
    env.fake.fail_next("GET", FakeMubert.FILE, truncated(whole, 1000), times=10)
    job = await env.run(prompt="song", duration_seconds=5)
    assert_failed(job, code_pb2.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE")
    assert env.stored_files() == []


async def test_cancel_stops_polling_without_a_vendor_cancel_call(env):
    env.fake.polls_until_done = 10_000
    job = (await env.stub.GenerateMusic(request(prompt="song", duration_seconds=5))).job
    async for response in env.stub.WatchMusicJob(music_pb2.WatchMusicJobRequest(job_id=job.id)):
        if response.event.job.progress.vendor_status == "processing":
            break  # the vendor has the track and is being polled
    cancelled = (await env.stub.CancelMusicJob(music_pb2.CancelMusicJobRequest(job_id=job.id))).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    # Mubert documents no cancel call: nothing but creates and polls reached it.
    assert {(r.method, r.path.rsplit("/", 1)[0]) for r in env.fake.requests} <= {
        ("POST", "/api/v3/public"),
        ("GET", "/api/v3/public/tracks"),
    }
