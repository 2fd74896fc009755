"""kill -9 of a real server process while jobs are queued, polling and storing.

After a restart every job ends; each stored file is exactly what the vendor
served; no job was submitted to the vendor twice; watchers resume from their
sequence numbers; no half-written file is left behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from mediagen.v1 import common_pb2, video_pb2, video_pb2_grpc
from tests.fakes.runway import RUNWAY_KEY, FakeRunway
from tests.fakes.server import FakeVendorServer, Reply

ROOT = Path(__file__).resolve().parent.parent
JOBS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.main"], cwd=ROOT, env=self.env, stdout=out, stderr=out
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _ready(port: int) -> None:
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        while True:
            try:
                await asyncio.wait_for(channel.channel_ready(), 1)
                return
            except TimeoutError:
                assert time.monotonic() < deadline, "server did not start"


@pytest.fixture
def runway():
    with FakeVendorServer() as api:
        fake = FakeRunway(api)
        # Long enough to be caught polling: a few pending and running polls.
        fake.plan = [{"status": "PENDING"}, *({"status": "RUNNING", "progress": p / 10} for p in range(1, 9)), {"status": "SUCCEEDED"}]
        # The first three jobs run at once: staggered, so that one is still generating
        # when the first is storing.
        for i, running_polls in enumerate((4, 10, 16)):
            steps = ({"status": "RUNNING", "progress": (p + 1) / (running_polls + 1)} for p in range(running_polls))
            fake.plans_by_prompt[f"job-{i}"] = [{"status": "PENDING"}, *steps, {"status": "SUCCEEDED"}]
        serve_output = fake._output

        def slow_output(request):
            # Slow enough to be caught storing: the body trickles in 16 pieces.
            reply = serve_output(request)
            if reply.status != 200:
                return reply
            data = reply.body
            step = max(len(data) // 16, 1)
            pieces = [data[i : i + step] for i in range(0, len(data), step)]
            return Reply(200, headers=reply.headers, chunks=pieces, content_length=len(data), chunk_delay=0.1)

        api.route("GET", "/outputs/{name}", slow_output)
        yield fake


async def test_kill_9_while_queued_polling_and_storing(tmp_path, runway):
    port = _free_port()
    env = {
        **os.environ,
        "MEDIAGEN_LISTEN": f"127.0.0.1:{port}",
        "MEDIAGEN_DATA_DIR": str(tmp_path / "data"),
        "MEDIAGEN_POLL_INTERVAL": "0.15",
        "MEDIAGEN_POLL_INTERVAL_MAX": "0.15",
        "MEDIAGEN_MAX_CONCURRENT_JOBS": "3",
        "MEDIAGEN_ALLOW_PRIVATE_URLS": "1",
        "MEDIAGEN_METRICS_LISTEN": "",
        "MEDIAGEN_LOG_FORMAT": "json",
        "RUNWAY_BASE_URL": runway.server.url,
        "RUNWAYML_API_SECRET": RUNWAY_KEY,
    }
    server = ServerProcess(env, port, tmp_path / "server.log")
    server.start()
    try:
        await _ready(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = video_pb2_grpc.VideoServiceStub(channel)
            jobs = []
            for i in range(JOBS):
                request = video_pb2.GenerateVideoRequest(
                    prompt=f"job-{i}", duration_seconds=5, aspect_ratio="16:9", provider="runway", model="gen4.5"
                )
                jobs.append((await stub.GenerateVideo(request)).job)
            # Watch until one job is storing while others still poll or wait.
            seen: dict[str, int] = {}
            phases: dict[str, int] = {}
            deadline = time.monotonic() + 30
            while not (common_pb2.JOB_PHASE_STORING in phases.values() and common_pb2.JOB_PHASE_QUEUED in phases.values()):
                assert time.monotonic() < deadline, f"never saw storing and queued together: {phases}"
                for job in jobs:
                    got = (await stub.GetVideoJob(video_pb2.GetVideoJobRequest(job_id=job.id))).job
                    phases[job.id] = got.progress.phase
                    seen[job.id] = got.last_sequence
                await asyncio.sleep(0.05)
        server.kill9()
        assert common_pb2.JOB_PHASE_VENDOR_QUEUED in phases.values() or common_pb2.JOB_PHASE_GENERATING in phases.values()

        server.start()
        await _ready(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = video_pb2_grpc.VideoServiceStub(channel)

            async def finish(job):
                events = []
                call = stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job.id, after_sequence=seen[job.id]))
                async for response in call:
                    events.append(response.event)
                return events

            results = await asyncio.wait_for(asyncio.gather(*(finish(job) for job in jobs)), 90)
            for job, events in zip(jobs, results, strict=True):
                # Resumed after the last number seen before the crash: nothing missed, nothing repeated.
                if events:
                    assert [e.sequence for e in events] == list(range(seen[job.id] + 1, events[-1].sequence + 1))
                final = (await stub.GetVideoJob(video_pb2.GetVideoJobRequest(job_id=job.id))).job
                if final.state == common_pb2.JOB_STATE_FAILED:
                    # Killed between "submitting" and the vendor's answer: never resent.
                    assert json_format.MessageToDict(final.error)["details"][0]["reason"] == "SUBMIT_OUTCOME_UNKNOWN"
                    continue
                assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
                data = b"".join(
                    [m.data async for m in stub.DownloadVideo(video_pb2.DownloadVideoRequest(job_id=job.id))]
                )
                width, height = runway.scaled("1280:720")
                served = runway.video_bytes(5, width, height)
                assert hashlib.sha256(data).hexdigest() == final.artifacts[0].sha256 == hashlib.sha256(served).hexdigest()
            succeeded = sum(
                1 for events in results if events and events[-1].job.state == common_pb2.JOB_STATE_SUCCEEDED
            )
            assert succeeded >= JOBS - 1
        # Nothing was submitted twice: one create per prompt at most.
        prompts = [r.json()["promptText"] for r in runway.creates()]
        assert len(prompts) == len(set(prompts)) <= JOBS
        assert not list((tmp_path / "data" / "artifacts" / ".tmp").glob("*.part"))
    finally:
        server.stop()
