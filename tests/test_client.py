"""The Python client against a real server over a real gRPC channel."""

from __future__ import annotations

import hashlib
import io
import uuid

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from clients import (
    AsyncMediagenClient,
    DownloadVerificationError,
    FailedPreconditionError,
    InvalidArgumentError,
    JobFailedError,
    MediagenClient,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    WaitTimeoutError,
    from_status,
)
from mediagen.v1 import common_pb2
from tests.test_client_support import (
    FAST_RETRY,
    FlakyProxy,
    Recorder,
    assert_media_file,
    serve_in_thread,
)

SLOW = {"mock_latency_seconds": 0.3}  # long enough to see progress events


@pytest.fixture
def threaded_server(settings):
    with serve_in_thread(settings) as address:
        yield address


@pytest.fixture
async def recorder(server):
    return Recorder()


@pytest.fixture
async def client(server, recorder):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", interceptors=recorder.interceptors())
    async with AsyncMediagenClient(channel=channel, token="s3cret", retry=FAST_RETRY) as client:
        yield client
    await channel.close()


@pytest.fixture
async def proxy(server):
    proxy = FlakyProxy(server.port)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.fixture
async def proxied_client(proxy, recorder):
    """A client whose connection goes through the breakable proxy."""
    channel = grpc.aio.insecure_channel(proxy.address, interceptors=recorder.interceptors())
    async with AsyncMediagenClient(channel=channel, retry=FAST_RETRY) as client:
        yield client
    await channel.close()


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(buffer, format="PNG")
    return buffer.getvalue()


async def _succeeded(client: AsyncMediagenClient, media: str, **fields) -> common_pb2.Job:
    return await client.generate_and_wait(media, **fields)


# --- generate, wait, download ---------------------------------------------------------


@pytest.mark.parametrize(
    ("media", "fields", "content_type"),
    [
        ("video", {"prompt": "a red fox", "duration_seconds": 1}, "video/mp4"),
        ("speech", {"text": "Hello from the client tests."}, "audio/wav"),
        ("image", {"prompt": "a lighthouse", "width": 64, "height": 48}, "image/png"),
    ],
)
async def test_generate_wait_download(client, tmp_path, media, fields, content_type):
    job = await client.generate(media, provider_options=SLOW, **fields)
    assert job.state == common_pb2.JOB_STATE_QUEUED
    seen: list[common_pb2.Job] = []

    job = await client.wait(media, job.id, on_progress=seen.append)

    assert job.state == common_pb2.JOB_STATE_SUCCEEDED
    assert seen[-1] == job
    fractions = [j.progress.fraction for j in seen if j.progress.HasField("fraction")]
    assert fractions and fractions == sorted(fractions)
    assert common_pb2.JOB_PHASE_GENERATING in {j.progress.phase for j in seen}
    artifact = job.artifacts[0]
    assert artifact.content_type == content_type
    progress: list[tuple[int, int]] = []

    path = await client.download_to(media, job.id, tmp_path / "out", on_progress=lambda d, t: progress.append((d, t)))

    data = path.read_bytes()
    assert path == tmp_path / "out"
    assert len(data) == artifact.size_bytes
    assert hashlib.sha256(data).hexdigest() == artifact.sha256
    assert_media_file(data, content_type)
    assert progress[-1] == (artifact.size_bytes, artifact.size_bytes)
    assert not (tmp_path / "out.part").exists()


async def test_generate_sends_a_request_id_and_bearer_token(client, recorder):
    job = await client.generate("video", prompt="x", duration_seconds=1)

    request = recorder.requests("/GenerateVideo")[0]
    assert uuid.UUID(request.request_id) and job.request_id == request.request_id
    assert ("authorization", "Bearer s3cret") in list(recorder.calls[0][2])


async def test_generate_with_the_same_request_id_returns_the_same_job(client):
    request_id = str(uuid.uuid4())
    first = await client.generate("speech", text="once", request_id=request_id)
    second = await client.generate("speech", text="once", request_id=request_id)
    assert first.id == second.id


async def test_generate_converts_friendly_field_values(client, recorder, tmp_path):
    image = tmp_path / "frame.png"
    image.write_bytes(_png(32, 32))

    await client.generate("video", prompt="x", timeout=90, input_image=image, provider_options=SLOW)
    await client.generate("speech", text="x", format="mp3")

    video, speech = recorder.requests("/GenerateVideo")[0], recorder.requests("/GenerateSpeech")[0]
    assert video.timeout.seconds == 90
    assert video.input_image.data == image.read_bytes() and video.input_image.content_type == "image/png"
    assert video.provider_options["mock_latency_seconds"] == 0.3
    assert speech.format == common_pb2.AUDIO_FORMAT_MP3
    with pytest.raises(TypeError, match="duration"):
        await client.generate("image", prompt="x", duration_seconds=3)


# --- downloads that resume, and that refuse bad bytes ------------------------------------------


async def test_download_resumes_from_a_part_file(client, recorder, tmp_path):
    job = await _succeeded(client, "image", prompt="a kite", width=128, height=128)
    whole = (await client.download_to("image", job.id, tmp_path / "whole.png")).read_bytes()
    half = len(whole) // 2
    (tmp_path / "resumed.png.part").write_bytes(whole[:half])

    path = await client.download_to("image", job.id, tmp_path / "resumed.png")

    assert path.read_bytes() == whole
    assert [r.offset for r in recorder.requests("/DownloadImage")] == [0, half]


async def test_download_refetches_a_corrupted_part_file(client, recorder, tmp_path):
    # Decided behaviour: a leftover .part that fails the sha256 check may be
    # the culprit, so the artifact is fetched once more from the start.
    job = await _succeeded(client, "image", prompt="a kite", width=64, height=64)
    size = job.artifacts[0].size_bytes
    (tmp_path / "out.png.part").write_bytes(b"\0" * 100)

    path = await client.download_to("image", job.id, tmp_path / "out.png")

    assert hashlib.sha256(path.read_bytes()).hexdigest() == job.artifacts[0].sha256
    assert [r.offset for r in recorder.requests("/DownloadImage")] == [100, 0]
    assert path.stat().st_size == size


async def test_download_restarts_when_the_part_file_is_longer_than_the_artifact(client, recorder, tmp_path):
    job = await _succeeded(client, "image", prompt="a kite", width=64, height=64)
    size = job.artifacts[0].size_bytes
    (tmp_path / "out.png.part").write_bytes(b"\0" * (size + 10))

    path = await client.download_to("image", job.id, tmp_path / "out.png")

    assert hashlib.sha256(path.read_bytes()).hexdigest() == job.artifacts[0].sha256
    assert [r.offset for r in recorder.requests("/DownloadImage")] == [size + 10, 0]


async def test_download_with_bad_bytes_raises_and_leaves_no_file(client, recorder, tmp_path):
    job = await _succeeded(client, "image", prompt="a kite", width=64, height=64)
    recorder.corrupt_downloads = True
    folder = tmp_path / "downloads"
    folder.mkdir()

    with pytest.raises(DownloadVerificationError) as caught:
        await client.download_to("image", job.id, folder / "out.png")

    assert caught.value.reason == "DOWNLOAD_CHECKSUM_MISMATCH"
    assert caught.value.code == grpc.StatusCode.DATA_LOSS
    assert list(folder.iterdir()) == []


async def test_download_resumes_after_the_connection_breaks(proxied_client, proxy, recorder, tmp_path):
    job = await _succeeded(proxied_client, "music", prompt="a long drone", duration_seconds=20)
    size = job.artifacts[0].size_bytes
    assert size > 1_000_000, "the artifact must span several chunks for this test"
    proxy.cut_after(size // 2)

    path = await proxied_client.download_to("music", job.id, tmp_path / "out.wav")

    assert hashlib.sha256(path.read_bytes()).hexdigest() == job.artifacts[0].sha256
    offsets = [r.offset for r in recorder.requests("/DownloadMusic")]
    assert len(offsets) == 2 and offsets[0] == 0 and 0 < offsets[1] < size  # resumed, not restarted
    assert proxy.connections == 2


async def test_download_of_an_unfinished_job_is_a_typed_error(client, tmp_path):
    job = await client.generate("video", prompt="x", provider_options={"mock_behavior": "stall"})
    with pytest.raises(FailedPreconditionError) as caught:
        await client.download_to("video", job.id, tmp_path / "out.mp4")
    assert caught.value.reason == "JOB_NOT_SUCCEEDED"
    await client.cancel("video", job.id)


# --- watch ------------------------------------------------------------------------------------


async def test_watch_resumes_after_the_connection_drops(proxied_client, proxy, recorder):
    job = await proxied_client.generate(
        "video", prompt="x", duration_seconds=1, provider_options={"mock_latency_seconds": 0.5}
    )
    events = []
    async for event in proxied_client.watch("video", job.id):
        events.append(event)
        if len(events) == 1:
            proxy.drop()

    assert [e.sequence for e in events] == list(range(1, len(events) + 1))  # none missed, none twice
    assert events[-1].type == common_pb2.JOB_EVENT_TYPE_ENDED
    resumed_after = [r.after_sequence for r in recorder.requests("/WatchVideoJob")]
    assert len(resumed_after) == 2 and resumed_after[0] == 0 and 1 <= resumed_after[1] < events[-1].sequence
    assert proxy.connections == 2


async def test_watch_after_a_sequence_number(client):
    job = await _succeeded(client, "speech", text="hi")

    rest = [e.sequence async for e in client.watch("speech", job.id, after_sequence=2)]
    nothing = [e async for e in client.watch("speech", job.id, after_sequence=job.last_sequence)]

    assert rest == list(range(3, job.last_sequence + 1))
    assert nothing == []


async def test_watch_shows_heartbeats_only_when_asked(client):
    job = await client.generate("sound_effect", prompt="wind", provider_options={"mock_behavior": "stall"})
    async for event in client.watch("sound_effect", job.id, include_heartbeats=True):
        if event.type == common_pb2.JOB_EVENT_TYPE_HEARTBEAT:
            break
    cancelled = await client.cancel("sound_effect", job.id)
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED


# --- typed errors -------------------------------------------------------------------------------


async def test_empty_prompt_is_an_invalid_argument_naming_the_field(client):
    with pytest.raises(InvalidArgumentError) as caught:
        await client.generate("video", prompt="")
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.domain == "mediagen.v1"
    assert [v.field for v in error.field_violations] == ["prompt"]
    assert error.field_violations[0].reason == "REQUIRED"


async def test_unknown_job_is_not_found(client):
    job_id = "job_" + "0" * 32
    with pytest.raises(NotFoundError) as caught:
        await client.get_job("music", job_id)
    assert caught.value.reason == "JOB_NOT_FOUND"
    with pytest.raises(NotFoundError):
        await client.find_job(job_id)


async def test_rate_limited_job_fails_with_its_reason_and_retry_delay(client):
    job = await client.generate("video", prompt="x", provider_options={"mock_behavior": "rate_limit"})

    with pytest.raises(JobFailedError) as caught:
        await client.wait("video", job.id)

    error = caught.value
    assert error.job.state == common_pb2.JOB_STATE_FAILED
    assert error.reason == "PROVIDER_RATE_LIMITED"
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.retry_delay == 30
    returned = await client.wait("video", job.id, raise_on_failure=False)
    assert returned.state == common_pb2.JOB_STATE_FAILED


async def test_wait_timeout_can_cancel_the_job(client):
    job = await client.generate("music", prompt="drone", provider_options={"mock_behavior": "stall"})

    with pytest.raises(WaitTimeoutError) as caught:
        await client.wait("music", job.id, timeout=0.2, cancel_on_timeout=True)

    assert caught.value.job_id == job.id
    assert (await client.get_job("music", job.id)).state == common_pb2.JOB_STATE_CANCELLED
    with pytest.raises(JobFailedError) as cancelled:
        await client.wait("music", job.id)
    assert cancelled.value.code == grpc.StatusCode.CANCELLED


def test_error_from_status_reads_every_detail():
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="budget spent")
    details = [
        error_details_pb2.ErrorInfo(reason="BUDGET_EXCEEDED", domain="mediagen.v1", metadata={"tenant": "t1"}),
        error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(subject="t1", description="daily")]),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)),
    ]
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)

    error = from_status(status)

    assert isinstance(error, ResourceExhaustedError)
    assert (error.reason, error.metadata, error.retry_delay) == ("BUDGET_EXCEEDED", {"tenant": "t1"}, 2.5)
    assert error.quota_violations == [("t1", "daily")]
    assert str(error) == "BUDGET_EXCEEDED: budget spent"


# --- retries ------------------------------------------------------------------------------------


async def test_unavailable_is_retried_with_the_same_request_id(client, recorder):
    recorder.fail_unary = 2

    job = await client.generate("image", prompt="x", width=32, height=32)

    attempts = recorder.requests("/GenerateImage")
    assert len(attempts) == 3
    assert {a.request_id for a in attempts} == {job.request_id}


async def test_retries_give_up_after_the_policy_attempts(client, recorder):
    recorder.fail_unary = 10
    with pytest.raises(UnavailableError):
        await client.providers()
    assert len(recorder.requests("/ListProviders")) == FAST_RETRY.attempts


async def test_other_errors_are_not_retried(client, recorder):
    with pytest.raises(NotFoundError):
        await client.get_job("video", "job_" + "1" * 32)
    assert len(recorder.requests("/GetVideoJob")) == 1


# --- listing and the catalog --------------------------------------------------------------------


async def test_list_jobs_walks_every_page_and_filters_by_state(client):
    one = await _succeeded(client, "speech", text="one")
    two = await _succeeded(client, "speech", text="two")
    failing = await client.generate("speech", text="three", provider_options={"mock_behavior": "fail"})
    await client.wait("speech", failing.id, raise_on_failure=False)

    every = [j.id async for j in client.list_jobs("speech", page_size=1)]
    succeeded = [j.id async for j in client.list_jobs(common_pb2.MEDIA_TYPE_SPEECH, state="succeeded")]

    assert sorted(every) == sorted([one.id, two.id, failing.id])
    assert sorted(succeeded) == sorted([one.id, two.id])


async def test_providers_by_media(client):
    images = await client.providers("image")
    everything = await client.providers()
    assert "mock" in [p.name for p in images]
    assert {p.media_type for p in images} == {common_pb2.MEDIA_TYPE_IMAGE}
    assert {p.media_type for p in everything} >= {common_pb2.MEDIA_TYPE_VIDEO, common_pb2.MEDIA_TYPE_IMAGE}


# --- the blocking client ------------------------------------------------------------------------------


def test_sync_client_generates_waits_and_downloads(threaded_server, tmp_path):
    seen: list[common_pb2.Job] = []
    with MediagenClient(threaded_server, retry=FAST_RETRY) as client:
        job = client.generate_and_wait("speech", text="Blocking hello.", on_progress=seen.append, provider_options=SLOW)
        path = client.download_to("speech", job.id, tmp_path / "hello.wav")
        events = list(client.watch("speech", job.id))
        listed = list(client.list_jobs("speech"))
        found = client.find_job(job.id)

    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == job.artifacts[0].sha256
    assert_media_file(data, "audio/wav")
    assert seen[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    assert events[-1].type == common_pb2.JOB_EVENT_TYPE_ENDED
    assert [j.id for j in listed] == [job.id] and found.media_type == common_pb2.MEDIA_TYPE_SPEECH


def test_sync_client_raises_typed_errors_and_stops_iterators_early(threaded_server):
    with MediagenClient(threaded_server, retry=FAST_RETRY) as client:
        with pytest.raises(InvalidArgumentError):
            client.generate("image", prompt="   ")
        job = client.generate("video", prompt="x", provider_options={"mock_behavior": "stall"})
        for _event in client.watch("video", job.id):
            break  # closes the stream; the next call must still work
        assert client.cancel("video", job.id).state == common_pb2.JOB_STATE_CANCELLED
    with pytest.raises(RuntimeError, match="closed"):
        client.providers()


async def test_sync_client_works_inside_a_running_event_loop(threaded_server):
    # Its private loop thread does not clash with the caller's running loop.
    with MediagenClient(threaded_server) as client:
        assert client.providers("video")
