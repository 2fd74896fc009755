"""Every media type end to end over a real gRPC channel, on the mock providers."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mediagen.v1 import (
    common_pb2,
    image_pb2,
    image_pb2_grpc,
    music_pb2,
    music_pb2_grpc,
    sound_effect_pb2,
    sound_effect_pb2_grpc,
    speech_pb2,
    speech_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from providers.mock.media import probe

# noun -> (pb2, pb2_grpc, a valid request's fields)
MEDIA = {
    "Video": (video_pb2, video_pb2_grpc, {"prompt": "a red fox in snow", "duration_seconds": 1.5, "width": 160, "height": 96}),
    "Speech": (speech_pb2, speech_pb2_grpc, {"text": "Hello there. This is mediagen speaking."}),
    "Music": (music_pb2, music_pb2_grpc, {"prompt": "calm piano", "duration_seconds": 2.0}),
    "SoundEffect": (sound_effect_pb2, sound_effect_pb2_grpc, {"prompt": "door slam", "duration_seconds": 1.0}),
    "Image": (image_pb2, image_pb2_grpc, {"prompt": "a lighthouse", "width": 320, "height": 200}),
}


class Api:
    """The seven RPCs of one media service under generic names."""

    def __init__(self, channel, noun: str) -> None:
        self.pb2, grpc_mod, self.fields = MEDIA[noun]
        self.noun = noun
        self.stub = getattr(grpc_mod, f"{noun}ServiceStub")(channel)

    def msg(self, pattern: str, **kw):
        return getattr(self.pb2, pattern.format(N=self.noun))(**kw)

    async def generate(self, **fields):
        request = self.msg("Generate{N}Request")
        json_format.ParseDict({**self.fields, **fields}, request)
        return (await getattr(self.stub, f"Generate{self.noun}")(request)).job

    async def get(self, job_id):
        return (await getattr(self.stub, f"Get{self.noun}Job")(self.msg("Get{N}JobRequest", job_id=job_id))).job

    def watch(self, job_id, after=0):
        return getattr(self.stub, f"Watch{self.noun}Job")(self.msg("Watch{N}JobRequest", job_id=job_id, after_sequence=after))

    async def events(self, job_id, after=0):
        return [r.event async for r in self.watch(job_id, after)]

    async def download(self, job_id, offset=0, index=0):
        call = getattr(self.stub, f"Download{self.noun}")(
            self.msg("Download{N}Request", job_id=job_id, offset=offset, artifact_index=index)
        )
        messages = [m async for m in call]
        return messages[0].artifact, b"".join(m.data for m in messages), messages

    async def cancel(self, job_id):
        return (await getattr(self.stub, f"Cancel{self.noun}Job")(self.msg("Cancel{N}JobRequest", job_id=job_id))).job

    async def list(self, **kw):
        return await getattr(self.stub, f"List{self.noun}Jobs")(self.msg("List{N}JobsRequest", **kw))


def error_info(err: grpc.aio.AioRpcError):
    status = rpc_status.from_call(err)
    infos, bad = [], []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            bad.extend(v.field for v in request.field_violations)
    assert len(infos) == 1, "exactly one ErrorInfo"
    return infos[0], bad


@pytest.mark.parametrize("noun", list(MEDIA))
async def test_generate_watch_download_each_media_type(channel, noun, tmp_path):
    api = Api(channel, noun)
    job = await api.generate()
    assert job.state == common_pb2.JOB_STATE_QUEUED and job.id.startswith("job_")
    events = await api.events(job.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == common_pb2.JOB_EVENT_TYPE_ENDED
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    artifact, data, _ = await api.download(job.id)
    assert artifact.size_bytes == len(data) and artifact.sha256 == hashlib.sha256(data).hexdigest()
    path = tmp_path / f"out{noun}"
    path.write_bytes(data)
    info = probe(path)
    assert info.content_type == artifact.content_type
    if noun == "Video":
        assert info.content_type == "video/mp4"
        assert abs(info.duration_seconds - 1.5) < 0.1 and (info.width, info.height) == (160, 96)
    elif noun == "Image":
        assert info.content_type == "image/png" and (info.width, info.height) == (320, 200)
    else:
        assert info.content_type == "audio/wav" and info.duration_seconds > 0.5
        if noun in ("Music", "SoundEffect"):
            assert abs(info.duration_seconds - api.fields["duration_seconds"]) < 0.05
    assert abs(artifact.duration_seconds - info.duration_seconds) < 1e-3
    got = await api.get(job.id)
    assert got == final


async def test_download_from_offset(channel):
    api = Api(channel, "Video")
    job = await api.generate()
    await api.events(job.id)
    _, whole, _ = await api.download(job.id)
    _, tail, messages = await api.download(job.id, offset=1000)
    assert tail == whole[1000:] and messages[0].offset == 1000
    _, empty, messages = await api.download(job.id, offset=len(whole))
    assert empty == b"" and messages[0].artifact.size_bytes == len(whole)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.download(job.id, offset=len(whole) + 1)
    assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_cancel_running_job(channel):
    api = Api(channel, "Video")
    job = await api.generate(provider_options={"mock_behavior": "stall"})
    stream = api.watch(job.id)
    async for response in stream:
        if response.event.job.state == common_pb2.JOB_STATE_RUNNING:
            break
    cancelled = await api.cancel(job.id)
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    info = json_format.MessageToDict(cancelled.error)
    assert info["details"][0]["reason"] == "JOB_CANCELLED"
    rest = [r.event async for r in stream]
    assert rest[-1].type == common_pb2.JOB_EVENT_TYPE_ENDED
    assert (await api.cancel(job.id)).state == common_pb2.JOB_STATE_CANCELLED  # idempotent


async def test_same_request_id_gives_one_job(channel, server):
    api = Api(channel, "Image")
    request_id = str(uuid.uuid4())
    first = await api.generate(request_id=request_id)
    again = await api.generate(request_id=request_id)
    assert again.id == first.id
    other = str(uuid.uuid4())
    racing = await asyncio.gather(*(api.generate(request_id=other) for _ in range(20)))
    assert len({j.id for j in racing}) == 1
    listed = await api.list(page_size=100)
    assert len(listed.jobs) == 2


async def test_two_watchers_see_the_same_events(channel):
    api = Api(channel, "Music")
    job = await api.generate(provider_options={"mock_latency_seconds": 0.3})
    a, b = await asyncio.gather(api.events(job.id), api.events(job.id))
    assert [e.SerializeToString() for e in a] == [e.SerializeToString() for e in b]
    assert a[-1].job.state == common_pb2.JOB_STATE_SUCCEEDED


async def test_watch_resumes_after_a_sequence_number(channel):
    api = Api(channel, "SoundEffect")
    job = await api.generate(provider_options={"mock_latency_seconds": 0.3})
    seen = []
    async for response in api.watch(job.id):
        seen.append(response.event)
        if len(seen) == 2:
            break  # the client goes away mid-stream
    rest = await api.events(job.id, after=seen[-1].sequence)
    sequences = [e.sequence for e in seen + rest]
    assert sequences == list(range(1, sequences[-1] + 1))
    assert rest[-1].type == common_pb2.JOB_EVENT_TYPE_ENDED
    assert await api.events(job.id, after=rest[-1].sequence) == []


async def test_watch_sends_heartbeats(channel):
    api = Api(channel, "Video")
    job = await api.generate(provider_options={"mock_behavior": "stall"})
    kinds = []
    async for response in api.watch(job.id):
        kinds.append(response.event.type)
        if response.event.type == common_pb2.JOB_EVENT_TYPE_HEARTBEAT:
            assert response.event.sequence >= 1
            break
    await api.cancel(job.id)
    assert common_pb2.JOB_EVENT_TYPE_HEARTBEAT in kinds


async def test_failed_and_rate_limited_mock_jobs(channel):
    api = Api(channel, "Speech")
    failed = await api.generate(provider_options={"mock_behavior": "fail"})
    events = await api.events(failed.id)
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.error.code == grpc.StatusCode.ABORTED.value[0]
    limited = await api.generate(provider_options={"mock_behavior": "rate_limit"})
    final = (await api.events(limited.id))[-1].job
    error = json_format.MessageToDict(final.error)
    assert final.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert error["details"][0]["reason"] == "PROVIDER_RATE_LIMITED"
    assert any(d.get("retryDelay") == "30s" for d in error["details"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.download(limited.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    "noun, fields, field",
    [
        ("Video", {"prompt": ""}, "prompt"),
        ("Video", {"prompt": "   "}, "prompt"),
        ("Video", {"duration_seconds": -1}, "duration_seconds"),
        ("Video", {"duration_seconds": 1e9}, "duration_seconds"),
        ("Video", {"duration_seconds": 31}, "duration_seconds"),  # over the mock's own limit
        ("Video", {"provider": "nosuchvendor"}, "provider"),
        ("Video", {"request_id": "not-a-uuid"}, "request_id"),
        ("Video", {"aspect_ratio": "wide"}, "aspect_ratio"),
        ("Speech", {"text": ""}, "text"),
        ("Speech", {"text": "a\x00b"}, "text"),
        ("Image", {"count": 99}, "count"),
        ("Image", {"model": "no-such-model"}, "model"),
        ("Music", {"prompt": "", "duration_seconds": 0}, "prompt"),
        ("Video", {"provider_options": {"mock_behavior": "explode"}}, "provider_options.mock_behavior"),
    ],
)
async def test_bad_requests_name_the_field(channel, noun, fields, field):
    api = Api(channel, noun)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.generate(**fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields_named = error_info(err.value)
    assert field in fields_named
    assert info.domain == "mediagen.v1" and info.reason


@pytest.mark.parametrize("job_id, code", [("job_" + "0" * 32, grpc.StatusCode.NOT_FOUND), ("nope", grpc.StatusCode.INVALID_ARGUMENT), ("", grpc.StatusCode.INVALID_ARGUMENT)])
async def test_unknown_or_malformed_job_ids(channel, job_id, code):
    api = Api(channel, "Video")
    for call in (api.get(job_id), api.cancel(job_id), api.events(job_id), api.download(job_id)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code


async def test_jobs_of_another_media_type_are_not_found(channel):
    job = await Api(channel, "Image").generate()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await Api(channel, "Video").get(job.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_jobs_pages_and_filters(channel):
    api = Api(channel, "Image")
    ids = [(await api.generate()).id for _ in range(5)]
    for job_id in ids:
        await api.events(job_id)
    seen, token = [], ""
    while True:
        page = await api.list(page_size=2, page_token=token)
        seen += [j.id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(ids))
    done = await api.list(state=common_pb2.JOB_STATE_SUCCEEDED)
    assert len(done.jobs) == 5
    assert not (await api.list(state=common_pb2.JOB_STATE_FAILED)).jobs
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.list(page_token="garbage!")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_generate_stream_runs_to_the_end(channel):
    stub = video_pb2_grpc.VideoServiceStub(channel)
    request = video_pb2.GenerateVideoStreamRequest(
        request=video_pb2.GenerateVideoRequest(prompt="waves", duration_seconds=1, width=64, height=64)
    )
    events = [r.event async for r in stub.GenerateVideoStream(request)]
    assert events[0].type == common_pb2.JOB_EVENT_TYPE_CREATED
    assert events[-1].job.state == common_pb2.JOB_STATE_SUCCEEDED


async def test_job_deadline_fails_with_deadline_exceeded(channel):
    api = Api(channel, "Video")
    job = await api.generate(provider_options={"mock_behavior": "stall"}, timeout="0.3s")
    final = (await api.events(job.id))[-1].job
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert json_format.MessageToDict(final.error)["details"][0]["reason"] == "JOB_DEADLINE_EXCEEDED"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.generate(timeout="-1s")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
