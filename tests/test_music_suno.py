"""Suno adapter end to end: real gRPC channel, real server, fake sunoapi.org-style gateway."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2, music_pb2, music_pb2_grpc
from providers.mock.media import probe
from providers.retry import RetryPolicy
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.fakes.mubert import audio_bytes
from tests.fakes.server import dropped, malformed_json, rate_limited, server_error, slow, truncated
from tests.fakes.suno import API_KEY, FakeSuno
from tests.helpers import assert_failed, bad_fields, error_info, serving, vendor_env

FAST = RetryPolicy(initial=0.01, maximum=0.02, max_retry_after=2.0, max_attempts=3)
MUSIC = common_pb2.MEDIA_TYPE_MUSIC
LYRICS = "[Verse]\nHello night city\nNeon on the rain\n[Chorus]\nWe run, we run"


@pytest.fixture
async def env(tmp_path, monkeypatch):
    with FakeSuno() as fake:
        variables = {
            "SUNO_BASE_URL": fake.url,
            "SUNO_API_KEY": API_KEY,
            "SUNO_CALLBACK_URL": "https://hooks.example.com/suno",
            "SUNO_CREDIT_PRICE_USD": "0.005",
        }
        async with vendor_env(
            monkeypatch,
            tmp_path,
            MUSIC,
            "suno",
            variables,
            retry=FAST,
            fake=fake,
            watch_timeout=None,
            require_end=True,
        ) as env:
            yield env


def request(**fields) -> music_pb2.GenerateMusicRequest:
    msg = music_pb2.GenerateMusicRequest()
    json_format.ParseDict({"provider": "suno", **fields}, msg)
    return msg


async def events_of(env, **fields) -> list[common_pb2.JobEvent]:
    return await env.events((await env.generate(**fields)).id)


# --- success --------------------------------------------------------------------------


async def test_description_mode_end_to_end(env, tmp_path):
    events = await events_of(
        env,
        prompt="driving synthwave",
        genre="synthwave",
        mood="nostalgic",
        tempo_bpm=118,
        instrumental=True,
    )
    job = events[-1].job
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    (generate,) = env.fake.calls("POST", FakeSuno.GENERATE)
    assert generate.headers["authorization"] == f"Bearer {API_KEY}"
    assert generate.json() == {
        "customMode": False,
        "instrumental": True,
        "model": "V4_5ALL",
        "prompt": "driving synthwave, synthwave, nostalgic, 118 bpm",
        "callBackUrl": "https://hooks.example.com/suno",
    }
    assert job.model == "V4_5ALL" and job.vendor_job_id in env.fake.tasks
    polls = env.fake.calls("GET", FakeSuno.RECORD_INFO)
    assert polls[0].query["taskId"] == [job.vendor_job_id]
    seen = [
        (e.job.progress.vendor_status, e.job.progress.fraction)
        for e in events
        if e.job.progress.vendor_status
    ]
    assert ("TEXT_SUCCESS", pytest.approx(0.33)) in seen and (
        "FIRST_SUCCESS",
        pytest.approx(0.66),
    ) in seen

    (artifact,) = job.artifacts
    _, data = await env.download_artifact(job.id)
    path = tmp_path / "clip.mp3"
    path.write_bytes(data)
    assert probe(path).content_type == artifact.content_type == "audio/mpeg"
    assert abs(artifact.duration_seconds - 3.0) < 0.1  # the first clip
    meta = artifact.metadata
    assert meta["suno_task_id"] == job.vendor_job_id and meta["clip_count"] == "2"
    assert meta["clip_id"].endswith("clip0") and meta["duration"] == "3.0"
    (other,) = json.loads(meta["other_clips"])
    assert other["id"].endswith("clip1") and other["audio_url"].endswith("clip1.mp3")
    assert other["title"] == "Fake song 2" and other["duration"] == 4.0

    assert job.estimated_cost.unit == common_pb2.PRICE_UNIT_CREDIT
    assert job.estimated_cost.units == 12 and job.estimated_cost.amount_micros == 60_000
    assert job.final_cost.amount_micros == 60_000
    assert job.final_cost.basis == common_pb2.COST_BASIS_MEASURED


async def test_lyrics_select_custom_mode(env):
    job = await env.run(
        lyrics=LYRICS,
        genre="synth rock",
        mood="dark",
        model="V5",
        provider_options={"vocalGender": "f", "negativeTags": "screaming", "styleWeight": 0.65},
    )
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    body = env.fake.calls("POST", FakeSuno.GENERATE)[0].json()
    assert body == {
        "customMode": True,
        "instrumental": False,
        "model": "V5",
        "prompt": LYRICS,
        "style": "synth rock, dark",
        "title": "Hello night city",
        "negativeTags": "screaming",
        "vocalGender": "f",
        "styleWeight": 0.65,
        "callBackUrl": "https://hooks.example.com/suno",
    }
    assert job.artifacts[0].metadata["title"] == "Hello night city"
    assert job.artifacts[0].metadata["lyrics"] == LYRICS


async def test_custom_instrumental_from_style_and_title(env):
    job = await env.run(
        prompt="slow piano",
        instrumental=True,
        provider_options={"style": "classical", "title": "Rain"},
    )
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    body = env.fake.calls("POST", FakeSuno.GENERATE)[0].json()
    assert body["customMode"] is True and body["instrumental"] is True
    assert body["style"] == "classical, slow piano" and body["title"] == "Rain"
    assert "prompt" not in body


async def test_callback_exception_with_clips_is_a_success(env):
    env.fake.next_outcome = "CALLBACK_EXCEPTION"
    job = await env.run(prompt="lofi beat")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error


# --- validation -------------------------------------------------------------------------------


REFUSED = [
    ({"prompt": "song", "duration_seconds": 30}, "duration_seconds"),
    ({"lyrics": LYRICS, "genre": "pop", "instrumental": True}, "lyrics"),
    ({"prompt": "song", "format": "AUDIO_FORMAT_WAV"}, "format"),
    ({"prompt": "song", "model": "V9"}, "model"),
    ({"prompt": "x" * 490, "genre": "electronic pop"}, "prompt"),
    ({"lyrics": "la " * 1100, "genre": "pop", "model": "V4"}, "lyrics"),
    ({"lyrics": LYRICS}, "genre"),
    ({"genre": "pop", "provider_options": {"style": "pop"}}, "lyrics"),
    (
        {"lyrics": LYRICS, "genre": "pop", "provider_options": {"title": "t" * 101}},
        "provider_options.title",
    ),
    (
        {"prompt": "song", "provider_options": {"vocalGender": "f"}},
        "provider_options.vocalGender",
    ),
    (
        {"lyrics": LYRICS, "genre": "pop", "provider_options": {"vocalGender": "x"}},
        "provider_options.vocalGender",
    ),
    (
        {"prompt": "song", "provider_options": {"styleWeight": 2}},
        "provider_options.styleWeight",
    ),
    ({"prompt": "song", "provider_options": {"duration": 30}}, "provider_options.duration"),
    (
        {"lyrics": LYRICS, "genre": "pop", "provider_options": {"customMode": False}},
        "provider_options.customMode",
    ),
]


async def test_what_suno_cannot_do_is_refused(env):
    for fields, field in REFUSED:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.stub.GenerateMusic(request(**fields))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(caught.value)
        assert field in bad_fields(caught.value), (fields, status)
        assert env.fake.requests == []


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({"SUNO_API_KEY": API_KEY}, "set SUNO_BASE_URL: Suno has no first-party public API"),
        ({}, "set SUNO_BASE_URL and SUNO_API_KEY: Suno has no first-party public API"),
        ({"SUNO_BASE_URL": "https://api.sunoapi.org"}, "set SUNO_API_KEY"),
    ],
)
async def test_not_configured_without_a_gateway_and_key(tmp_path, monkeypatch, variables, expected):
    for name in ("SUNO_BASE_URL", "SUNO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    async with serving(MediagenServer(make_settings(tmp_path))) as channel:
        stub = music_pb2_grpc.MusicServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GenerateMusic(request(prompt="song"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            error_info(rpc_status.from_call(caught.value)).reason == "PROVIDER_NOT_CONFIGURED"
        )
        assert expected in caught.value.details()


async def test_catalog_entry(env):
    entry = (
        await env.catalog.GetProvider(catalog_pb2.GetProviderRequest(name="suno", media_type=MUSIC))
    ).provider
    assert entry.configured and list(entry.limits.formats) == ["mp3"]
    models = {m.name: m for m in entry.models}
    assert models["V4_5ALL"].default and not models["V4_5ALL"].retired
    assert models["V3_5"].retired and models["V3_5"].retired_note and not models["V3_5"].default
    assert (
        entry.prices[0].unit == common_pb2.PRICE_UNIT_CREDIT
        and entry.prices[0].unit_price_micros == 5_000
    )
    assert any("no first-party public API" in n for n in entry.notes)
    assert API_KEY not in str(entry)


# --- vendor failures -------------------------------------------------------------------------


GATEWAY_ERRORS = [
    (
        401,
        "You do not have access permissions",
        code_pb2.FAILED_PRECONDITION,
        "PROVIDER_AUTH_FAILED",
    ),
    (
        429,
        "The current credits are insufficient",
        code_pb2.RESOURCE_EXHAUSTED,
        "PROVIDER_OUT_OF_CREDIT",
    ),
    (413, "Theme or prompt too long", code_pb2.INVALID_ARGUMENT, "PROVIDER_INVALID_REQUEST"),
    (400, "The prompt contains sensitive words", code_pb2.INVALID_ARGUMENT, "CONTENT_REJECTED"),
    (455, "System maintenance", code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
]


@pytest.mark.parametrize("envelope_only", [False, True])
async def test_gateway_error_codes_on_submit(env, envelope_only):
    env.fake.envelope_only = envelope_only
    for code, msg, grpc_code, reason in GATEWAY_ERRORS:
        submits = len(env.fake.calls("POST", FakeSuno.GENERATE))
        env.fake.fail_next("POST", FakeSuno.GENERATE, env.fake.error(code, msg))
        job = await env.run(prompt="song")
        assert_failed(job, grpc_code, reason)
        assert msg in job.error.message
        assert len(env.fake.calls("POST", FakeSuno.GENERATE)) == submits + 1


async def test_bad_key_fails_with_auth_error(env):
    env.fake.key = "another-key"
    job = await env.run(prompt="song")
    assert_failed(job, code_pb2.FAILED_PRECONDITION, "PROVIDER_AUTH_FAILED")
    assert API_KEY not in job.error.message


TRANSPORT_FAILURES = [
    (server_error(503), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (dropped(), code_pb2.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    (malformed_json(), code_pb2.UNAVAILABLE, "PROVIDER_BAD_RESPONSE"),
    (slow(2.0), code_pb2.UNAVAILABLE, "PROVIDER_TIMEOUT"),
]


async def test_submit_transport_failures(env):
    for reply, grpc_code, reason in TRANSPORT_FAILURES:
        env.provider.http.timeout = httpx.Timeout(0.3)
        env.fake.fail_next("POST", FakeSuno.GENERATE, reply)
        job = await env.run(prompt="song")
        assert_failed(job, grpc_code, reason)


async def test_poll_retries_honour_retry_after(env):
    env.fake.script(
        "GET",
        FakeSuno.RECORD_INFO,
        [rate_limited(retry_after=0.3, body={"code": 429, "msg": "Too many requests"})],
    )
    job = await env.run(prompt="song")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    first, second = env.fake.calls("GET", FakeSuno.RECORD_INFO)[:2]
    assert second.at - first.at >= 0.29


async def test_poll_430_5xx_and_malformed_are_retried(env):
    env.fake.script(
        "GET",
        FakeSuno.RECORD_INFO,
        [
            env.fake.error(430, "Call frequency too high"),
            server_error(500),
            malformed_json(),
            server_error(503),
        ],
    )
    job = await env.run(prompt="song")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error


async def test_generation_failed(env):
    env.fake.next_outcome = "GENERATE_AUDIO_FAILED"
    job = await env.run(prompt="song")
    info = assert_failed(job, code_pb2.ABORTED, "PROVIDER_JOB_FAILED")
    assert info.metadata["vendorStatus"] == "GENERATE_AUDIO_FAILED"
    assert "fake failure: GENERATE_AUDIO_FAILED" in job.error.message


async def test_moderation_failure_is_content_rejected(env):
    env.fake.next_outcome = "SENSITIVE_WORD_ERROR"
    job = await env.run(prompt="song")
    assert_failed(job, code_pb2.INVALID_ARGUMENT, "CONTENT_REJECTED")
    assert env.stored_files() == []


async def test_output_404_fails_and_cut_short_is_fetched_again(env):
    env.fake.fail_next("GET", FakeSuno.FILE, server_error(404, "Not Found"))
    job = await env.run(prompt="song")
    assert_failed(job, code_pb2.UNAVAILABLE, "PROVIDER_OUTPUT_UNAVAILABLE")
    assert env.stored_files() == []

    whole = audio_bytes("mp3", 3.0)
    env.fake.fail_next("GET", FakeSuno.FILE, truncated(whole, len(whole) // 2))
    job = await env.run(prompt="song")
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    _, data = await env.download_artifact(job.id)
    assert data == whole


async def test_cancel_has_no_vendor_call(env):
    env.fake.hold_pending = True
    job = (await env.stub.GenerateMusic(request(prompt="song"))).job
    async for response in env.stub.WatchMusicJob(music_pb2.WatchMusicJobRequest(job_id=job.id)):
        if response.event.job.progress.vendor_status == "PENDING":
            break
    cancelled = (await env.stub.CancelMusicJob(music_pb2.CancelMusicJobRequest(job_id=job.id))).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    assert {(r.method, r.path) for r in env.fake.requests} == {
        ("POST", FakeSuno.GENERATE),
        ("GET", FakeSuno.RECORD_INFO),
    }
