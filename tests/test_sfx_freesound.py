"""Freesound adapter end to end: real gRPC channel, real server, fake Freesound APIv2."""

from __future__ import annotations

import contextlib

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2
from grpc_status import rpc_status

from mediagen.v1 import (
    catalog_pb2,
    common_pb2,
    sound_effect_pb2,
    sound_effect_pb2_grpc,
)
from providers.mock.media import probe
from providers.retry import RetryPolicy
from providers.sound_effect.freesound import describe_license
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.freesound import API_KEY, OAUTH_TOKEN, FakeFreesound
from tests.fakes.mubert import audio_bytes
from tests.fakes.server import dropped, malformed_json, rate_limited, server_error, slow, truncated
from tests.helpers import assert_failed, bad_fields, error_info, serving, vendor_env

FAST = RetryPolicy(initial=0.01, maximum=0.02, max_retry_after=2.0, max_attempts=3)
SFX = common_pb2.MEDIA_TYPE_SOUND_EFFECT


@contextlib.asynccontextmanager
async def _env(tmp_path, monkeypatch, oauth: bool):
    with FakeFreesound() as fake:
        variables = {"FREESOUND_BASE_URL": fake.base_url, "FREESOUND_API_KEY": API_KEY}
        unset: tuple[str, ...] = ()
        if oauth:
            variables["FREESOUND_OAUTH_TOKEN"] = OAUTH_TOKEN
        else:
            unset = ("FREESOUND_OAUTH_TOKEN", "FREESOUND_ACCESS_TOKEN")
        async with vendor_env(
            monkeypatch,
            tmp_path,
            SFX,
            "freesound",
            variables,
            unset=unset,
            retry=FAST,
            fake=fake,
            watch_timeout=None,
            require_end=True,
        ) as env:
            yield env


@pytest.fixture
async def env(tmp_path, monkeypatch):
    async with _env(tmp_path, monkeypatch, oauth=False) as env:
        yield env


@pytest.fixture
async def oauth_env(tmp_path, monkeypatch):
    async with _env(tmp_path, monkeypatch, oauth=True) as env:
        yield env


def request(**fields) -> sound_effect_pb2.GenerateSoundEffectRequest:
    msg = sound_effect_pb2.GenerateSoundEffectRequest()
    json_format.ParseDict({"provider": "freesound", **fields}, msg)
    return msg


def searches(env):
    return env.fake.calls("GET", FakeFreesound.SEARCH)


# --- success ---------------------------------------------------------------------------


async def test_preview_end_to_end_with_licence_and_attribution(env, tmp_path):
    job = await env.run(prompt="door slam", duration_seconds=2)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    (search,) = searches(env)
    assert search.headers["authorization"] == f"Token {API_KEY}"
    assert search.arg("query") == "door slam"
    assert search.arg("filter") == "duration:[1 TO 3]"
    assert search.arg("sort") == "score" and search.arg("page_size") == "15"
    assert {"previews", "license", "username", "url", "duration"} <= set(
        search.arg("fields").split(",")
    )
    (preview,) = env.fake.calls("GET", FakeFreesound.PREVIEW)
    assert preview.path == "/previews/1001-hq.mp3"

    (artifact,) = job.artifacts
    data = await env.download(job.id)
    path = tmp_path / "sfx.mp3"
    path.write_bytes(data)
    info = probe(path)
    assert info.content_type == artifact.content_type == "audio/mpeg"
    assert abs(info.duration_seconds - 2.0) < 0.1
    meta = artifact.metadata
    assert meta["freesound_sound_id"] == "1001" == job.vendor_job_id
    assert meta["name"] == "Door slam hard" and meta["author"] == "alice"
    assert meta["sound_url"] == "https://freesound.org/people/alice/sounds/1001/"
    assert meta["license"] == "CC BY-NC 4.0"
    assert meta["license_url"] == "http://creativecommons.org/licenses/by-nc/4.0/"
    assert meta["commercial_use"] == "false" and meta["attribution_required"] == "true"
    assert meta["attribution"] == (
        '"Door slam hard" by alice (https://freesound.org/people/alice/sounds/1001/), '
        "licensed under CC BY-NC 4.0"
    )
    assert meta["source"] == "preview-hq-mp3"

    for cost in (job.estimated_cost, job.final_cost):
        assert cost.amount_micros == 0 and cost.basis == common_pb2.COST_BASIS_FREE
        assert cost.unit == common_pb2.PRICE_UNIT_REQUEST


async def test_commercial_use_only_excludes_non_commercial_licences(env):
    job = await env.run(prompt="door slam", duration_seconds=2, commercial_use_only=True)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert searches(env)[0].arg("filter") == (
        'duration:[1 TO 3] license:("Attribution" OR "Creative Commons 0")'
    )
    meta = job.artifacts[0].metadata
    # 1002 (CC BY, 2.6 s) and 1003 (CC0, 1.5 s) qualify; 1.5 s is closer to 2 s.
    assert meta["freesound_sound_id"] == "1003"
    assert meta["license"] == "CC0 1.0" and meta["commercial_use"] == "true"
    assert meta["attribution_required"] == "false"


async def test_results_are_checked_again_on_their_licence(env):
    env.fake.ignore_license_filter = True  # the search lets NC and Sampling+ sounds through
    job = await env.run(prompt="door", duration_seconds=1.2, commercial_use_only=True)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    # 1001 is NC and 1005 (1.0 s, closest) is Sampling+: both skipped.
    assert job.artifacts[0].metadata["freesound_sound_id"] == "1003"


async def test_without_a_duration_the_most_relevant_short_sound_wins(env):
    job = await env.run(prompt="door", provider_options={"filter": "tag:wood"})
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert searches(env)[0].arg("filter") == "duration:[0 TO 30] tag:wood"
    assert job.artifacts[0].metadata["freesound_sound_id"] == "1002"


async def test_no_matching_sound_is_not_found(env):
    job = await env.run(prompt="spaceship engine", duration_seconds=3)
    info = assert_failed(job, code_pb2.NOT_FOUND, "NO_MATCHING_SOUND")
    assert info.metadata["query"] == "spaceship engine"
    assert info.metadata["filter"] == "duration:[1.5 TO 4.5]"
    assert env.stored_files() == []


async def test_original_download_with_oauth(oauth_env, tmp_path):
    env = oauth_env
    job = await env.run(prompt="door slam", duration_seconds=2, format="AUDIO_FORMAT_WAV")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert searches(env)[0].arg("filter") == "duration:[1 TO 3] type:wav"
    (fetch,) = env.fake.calls("GET", FakeFreesound.DOWNLOAD)
    assert fetch.path == "/apiv2/sounds/1001/download/"
    assert fetch.headers["authorization"] == f"Bearer {OAUTH_TOKEN}"
    assert env.fake.calls("GET", FakeFreesound.PREVIEW) == []
    (artifact,) = job.artifacts
    assert artifact.content_type == "audio/wav" and abs(artifact.duration_seconds - 2.0) < 0.01
    assert artifact.metadata["source"] == "original" and artifact.metadata["original_type"] == "wav"
    data = await env.download(job.id)
    assert data == audio_bytes("wav", 2.0, "sound_effect")


async def test_oauth_flac_and_preview_fallbacks(oauth_env):
    env = oauth_env
    job = await env.run(prompt="rain", duration_seconds=12, format="AUDIO_FORMAT_FLAC")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.artifacts[0].content_type == "audio/flac"
    # An AIFF original cannot be stored as such: the MP3 preview is taken instead.
    job = await env.run(prompt="door slam metal")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.artifacts[0].metadata["source"] == "preview-hq-mp3"
    # format mp3 with a wav original: the preview too.
    job = await env.run(prompt="door slam wooden", format="AUDIO_FORMAT_MP3")
    assert job.artifacts[0].metadata["source"] == "preview-hq-mp3"
    # provider_options.preview forces it.
    job = await env.run(prompt="rain", provider_options={"preview": True})
    assert job.artifacts[0].metadata["source"] == "preview-hq-mp3"
    assert len(env.fake.calls("GET", FakeFreesound.DOWNLOAD)) == 1


async def test_expired_oauth_token_fails_with_auth_error(oauth_env):
    oauth_env.fake.oauth_token = "a-newer-token"
    job = await oauth_env.run(prompt="door slam", duration_seconds=2, format="AUDIO_FORMAT_WAV")
    assert_failed(job, code_pb2.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    assert OAUTH_TOKEN not in job.error.message
    assert oauth_env.stored_files() == []


def test_licence_names():
    assert describe_license("http://creativecommons.org/licenses/by/3.0/") == (
        "CC BY 3.0",
        True,
        True,
    )
    assert describe_license("https://creativecommons.org/licenses/by-nc/4.0/") == (
        "CC BY-NC 4.0",
        False,
        True,
    )
    assert describe_license("http://creativecommons.org/publicdomain/zero/1.0/") == (
        "CC0 1.0",
        True,
        False,
    )
    assert describe_license("http://creativecommons.org/licenses/sampling+/1.0/")[1] is False
    assert describe_license("Attribution NonCommercial") == ("CC BY-NC", False, True)
    assert describe_license("Creative Commons 0") == ("CC0", True, False)
    assert describe_license("something else")[1] is False


# --- validation --------------------------------------------------------------------------------


REFUSED = [
    ({"format": "AUDIO_FORMAT_WAV"}, "format", "FREESOUND_OAUTH_TOKEN"),
    ({"format": "AUDIO_FORMAT_OGG_OPUS"}, "format", "mp3"),
    ({"prompt_influence": 0.5}, "prompt_influence", "generation"),
    ({"model": "v2"}, "model", "no models"),
    ({"provider_options": {"license": "cc0"}}, "provider_options.license", "known"),
    ({"provider_options": {"sort": "random"}}, "provider_options.sort", "score"),
    ({"provider_options": {"preview": "yes"}}, "provider_options.preview", "true or false"),
]


async def test_what_freesound_cannot_do_is_refused(env):
    for fields, field, words in REFUSED:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.stub.GenerateSoundEffect(request(prompt="door slam", **fields))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)
        assert field in bad_fields(caught.value), (fields, status)
        assert words in caught.value.details()
        assert env.fake.requests == []


async def test_missing_key_is_failed_precondition(tmp_path, monkeypatch):
    monkeypatch.delenv("FREESOUND_API_KEY", raising=False)
    async with serving(MediagenServer(make_settings(tmp_path))) as channel:
        stub = sound_effect_pb2_grpc.SoundEffectServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GenerateSoundEffect(request(prompt="door slam"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            error_info(rpc_status.from_call(caught.value)).reason == "PROVIDER_NOT_CONFIGURED"
        )
        assert "FREESOUND_API_KEY" in caught.value.details()


async def test_catalog_entries(env, oauth_env):
    get = catalog_pb2.GetProviderRequest(name="freesound", media_type=SFX)
    plain = (await env.catalog.GetProvider(get)).provider
    assert plain.configured and list(plain.limits.formats) == ["mp3"]
    assert any(
        "non-commercial use only (CC BY-NC) unless commercial_use_only" in n for n in plain.notes
    )
    assert plain.prices[0].unit_price_micros == 0 and "MTG/UPF" in plain.prices[0].note
    with_oauth = (await oauth_env.catalog.GetProvider(get)).provider
    assert list(with_oauth.limits.formats) == ["mp3", "wav", "flac"]
    assert "original_files" in with_oauth.capabilities
    assert API_KEY not in str(plain) and OAUTH_TOKEN not in str(with_oauth)


# --- vendor failures ---------------------------------------------------------------------------


async def test_bad_key(env):
    env.fake.key = "another-key"
    job = await env.run(prompt="door slam")
    assert_failed(job, code_pb2.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    assert "Invalid token." in job.error.message and API_KEY not in job.error.message


async def test_search_429_honours_retry_after(env):
    env.fake.fail_next(
        "GET", FakeFreesound.SEARCH, rate_limited(retry_after=0.3, body={"detail": "slow down"})
    )
    job = await env.run(prompt="door slam")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    first, second = searches(env)
    assert second.at - first.at >= 0.29


async def test_search_429_without_retry_after_and_5xx_are_retried(env):
    throttled = {
        "detail": "Request was throttled because of exceeding a request limit rate (60/minute)"
    }
    env.fake.script("GET", FakeFreesound.SEARCH, [rate_limited(body=throttled), server_error(503)])
    job = await env.run(prompt="door slam")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert len(searches(env)) == 3


async def test_daily_limit_is_out_of_credit_and_not_retried(env):
    daily = {"detail": "Request was throttled because of exceeding a request limit rate (2000/day)"}
    env.fake.fail_next("GET", FakeFreesound.SEARCH, rate_limited(body=daily))
    job = await env.run(prompt="door slam")
    assert_failed(job, code_pb2.RESOURCE_EXHAUSTED, "PROVIDER_OUT_OF_CREDIT")
    assert len(searches(env)) == 1


SEARCH_FAILURES = [
    (server_error(503, {"detail": "down"}), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (dropped(), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (malformed_json(), code_pb2.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
    (slow(2.0), code_pb2.UNAVAILABLE, "PROVIDER_TIMEOUT"),
    (
        FakeFreesound.detail(400, "Invalid filter"),
        code_pb2.INVALID_ARGUMENT,
        "PROVIDER_INVALID_REQUEST",
    ),
]


async def test_search_failures(env):
    for reply, grpc_code, reason in SEARCH_FAILURES:
        env.provider.http.timeout = httpx.Timeout(0.2)
        env.fake.fail_next("GET", FakeFreesound.SEARCH, reply, times=3)
        job = await env.run(prompt="door slam")
        assert_failed(job, grpc_code, reason)
        assert env.stored_files() == []


async def test_preview_404_fails_and_cut_short_is_fetched_again(env):
    env.fake.fail_next("GET", FakeFreesound.PREVIEW, server_error(404, "Not Found"))
    job = await env.run(prompt="door slam", duration_seconds=2)
    assert_failed(job, code_pb2.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE")
    assert env.stored_files() == []

    whole = audio_bytes("mp3", 2.0, "sound_effect")
    env.fake.fail_next("GET", FakeFreesound.PREVIEW, truncated(whole, 500))
    job = await env.run(prompt="door slam", duration_seconds=2)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert await env.download(job.id) == whole


async def test_cancel_during_a_slow_search(env):
    env.fake.fail_next("GET", FakeFreesound.SEARCH, slow(5.0))
    job = (await env.stub.GenerateSoundEffect(request(prompt="door slam"))).job
    watch = env.stub.WatchSoundEffectJob(sound_effect_pb2.WatchSoundEffectJobRequest(job_id=job.id))
    async for response in watch:
        if response.event.job.progress.phase == common_pb2.JOB_PHASE_SUBMITTING:
            break
    cancel = sound_effect_pb2.CancelSoundEffectJobRequest(job_id=job.id)
    cancelled = (await env.stub.CancelSoundEffectJob(cancel)).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    # Freesound has nothing to cancel: it saw only the search.
    assert [(r.method, r.path) for r in env.fake.requests] == [("GET", FakeFreesound.SEARCH)]
