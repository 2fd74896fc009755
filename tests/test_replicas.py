"""Shared mode end to end: three replica processes on one PostgreSQL schema and one S3 bucket.

Three real server processes (``python -m server.main``) on loopback ports share
a fresh PostgreSQL schema and a bucket on the S3 emulator (moto's server mode),
and drive video jobs on the fake Runway API. Skipped without PostgreSQL, except
under CI (tests/pg.py).

Which replica made a vendor call: each replica is configured with its own
Runway base URL, ``<fake>/r<i>``, so the fake's request log says which process
sent each submit and each poll (the fake serves the same tasks under every
prefix). From that log the tests check what the vendor would see: one submit
per job, and the polls of one task always from one replica at a time — a
takeover's polls start only after the dead replica's last poll, by at least
part of the lease, and never interleave.

The kill -9 test runs last in this module: it leaves one replica dead.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from mediagen.v1 import common_pb2, usage_pb2, usage_pb2_grpc, video_pb2, video_pb2_grpc
from tests.fakes.runway import RUNWAY_KEY, FakeRunway
from tests.fakes.server import FakeRequest, FakeVendorServer
from tests.pg import fresh_schema, require_postgres
from tests.s3_emulator import DUMMY_CREDENTIALS, S3Emulator
from tests.test_crash_recovery import ServerProcess, _free_port

REPLICAS = 3
LEASE = 2.0
POLL = 0.1
MAIN = (("authorization", "Bearer tok-main"),)
BUDGET = (("authorization", "Bearer tok-budget"),)
BUDGET_JOBS = 7  # the budget tenant's daily limit fits exactly this many jobs
JOB_MICROS = 600_000  # gen4.5, 5 s: 12 credits a second at $0.01
ROOT = Path(__file__).resolve().parent.parent

# PENDING, then RUNNING for a few seconds of polls, then SUCCEEDED.
PLAN = [{"status": "PENDING"}, *({"status": "RUNNING", "progress": p / 30} for p in range(1, 30)), {"status": "SUCCEEDED"}]


class Cluster:
    def __init__(self, tmp: Path, database_url: str, s3: S3Emulator, bucket: str, api: FakeVendorServer) -> None:
        self.api = api
        self.runway = FakeRunway(api)
        self.runway.plan = list(PLAN)
        # The same fake under /r<i>/...: the path tells which replica called.
        for method, pattern, handler in [
            ("POST", "/{replica}/v1/text_to_video", lambda r: self.runway._create(r, "text_to_video")),
            ("POST", "/{replica}/v1/image_to_video", lambda r: self.runway._create(r, "image_to_video")),
            ("GET", "/{replica}/v1/tasks/{id}", self.runway._get),
            ("DELETE", "/{replica}/v1/tasks/{id}", self.runway._delete),
        ]:
            api.route(method, pattern, handler)
        self.ports = [_free_port() for _ in range(REPLICAS)]
        self.estimate_micros = 0
        self.processes: list[ServerProcess] = []
        for i, port in enumerate(self.ports):
            env = {
                **os.environ,
                **DUMMY_CREDENTIALS,
                "MEDIAGEN_LISTEN": f"127.0.0.1:{port}",
                "MEDIAGEN_DATA_DIR": str(tmp / f"r{i}"),
                "MEDIAGEN_DATABASE_URL": database_url,
                "MEDIAGEN_STORAGE": "s3",
                "MEDIAGEN_S3_BUCKET": bucket,
                "MEDIAGEN_S3_ENDPOINT_URL": s3.endpoint_url,
                "MEDIAGEN_S3_REGION": s3.region,
                "MEDIAGEN_S3_PATH_STYLE": "1",
                "MEDIAGEN_REPLICA_ID": f"r{i}",
                "MEDIAGEN_LEASE_SECONDS": str(LEASE),
                "MEDIAGEN_POLL_INTERVAL": str(POLL),
                "MEDIAGEN_POLL_INTERVAL_MAX": str(POLL),
                # Long: events must reach other replicas' watchers by notification, not by heartbeat re-reads.
                "MEDIAGEN_HEARTBEAT_INTERVAL": "30",
                "MEDIAGEN_AUTH_TOKENS": "main:tok-main,budget:tok-budget",
                "MEDIAGEN_BUDGETS": f"budget:day:{BUDGET_JOBS * JOB_MICROS / 1e6:.2f}",
                "MEDIAGEN_ALLOW_PRIVATE_URLS": "1",
                "MEDIAGEN_METRICS_LISTEN": "",
                "MEDIAGEN_LOG_FORMAT": "json",
                "MEDIAGEN_SHUTDOWN_GRACE": "1",
                "RUNWAY_BASE_URL": f"{api.url}/r{i}",
                "RUNWAYML_API_SECRET": RUNWAY_KEY,
            }
            self.processes.append(ServerProcess(env, port, tmp / f"r{i}.log"))

    def start(self) -> None:
        for process in self.processes:
            process.start()
        for port in self.ports:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                grpc.channel_ready_future(channel).result(timeout=60)

    def stop(self) -> None:
        running = [p.proc for p in self.processes if p.proc is not None and p.proc.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def logs(self) -> str:
        return "\n".join(f"--- r{i}\n{p.log.read_text()[-3000:]}" for i, p in enumerate(self.processes) if p.log.exists())

    # --- what the fake vendor saw ---

    def creates(self) -> list[FakeRequest]:
        return self.api.calls("POST", "/{replica}/v1/{endpoint}")

    def polls(self) -> dict[str, list[tuple[float, str]]]:
        """Task id -> [(arrival time, replica)] in arrival order."""
        by_task: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for call in self.api.calls("GET", "/{replica}/v1/tasks/{id}"):
            replica, _, _, task = call.path.strip("/").split("/")
            by_task[task].append((call.at, replica))
        return by_task


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_postgres()
    tmp = tmp_path_factory.mktemp("replicas")
    saved = {name: os.environ.get(name) for name in DUMMY_CREDENTIALS}
    os.environ.update(DUMMY_CREDENTIALS)
    try:
        with fresh_schema() as url, S3Emulator() as s3, FakeVendorServer() as api:
            bucket = s3.new_bucket()
            cluster = Cluster(tmp, url, s3, bucket, api)
            try:
                cluster.start()
                yield cluster
            except BaseException:
                print(cluster.logs())
                raise
            finally:
                cluster.stop()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Clients:
    def __init__(self, cluster: Cluster) -> None:
        self.channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in cluster.ports]
        self.video = [video_pb2_grpc.VideoServiceStub(c) for c in self.channels]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


@pytest.fixture
async def clients(cluster):
    c = Clients(cluster)
    try:
        yield c
    finally:
        await c.close()


def video_request(prompt: str, **kwargs) -> video_pb2.GenerateVideoRequest:
    return video_pb2.GenerateVideoRequest(
        prompt=prompt, duration_seconds=5, aspect_ratio="16:9", provider="runway", model="gen4.5", **kwargs
    )


async def watch(stub, job_id: str, after: int = 0) -> list[tuple[float, common_pb2.JobEvent]]:
    """Every event until the end, with its arrival time (wall clock, as event_time)."""
    got = []
    async for response in stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job_id, after_sequence=after), metadata=MAIN):
        if response.event.type != common_pb2.JOB_EVENT_TYPE_HEARTBEAT:
            got.append((time.time(), response.event))
    return got


async def watch_until_broken(stub, job_id: str) -> list[common_pb2.JobEvent]:
    """Events until the stream breaks (its replica died)."""
    got = []
    try:
        async for response in stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job_id), metadata=MAIN):
            if response.event.type != common_pb2.JOB_EVENT_TYPE_HEARTBEAT:
                got.append(response.event)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
    return got


def assert_one_submit_per_prompt(cluster: Cluster, prompts: list[str]) -> None:
    sent = [r.json()["promptText"] for r in cluster.creates()]
    for prompt in prompts:
        assert sent.count(prompt) <= 1, f"{prompt} submitted {sent.count(prompt)} times"


def poll_runs(polls: list[tuple[float, str]]) -> list[tuple[str, float, float]]:
    """Consecutive polls by one replica, as (replica, first, last)."""
    runs: list[tuple[str, float, float]] = []
    for at, replica in polls:
        if runs and runs[-1][0] == replica:
            runs[-1] = (replica, runs[-1][1], at)
        else:
            runs.append((replica, at, at))
    return runs


async def test_jobs_created_round_robin_and_watched_elsewhere(cluster, clients):
    prompts = [f"round-robin {i} {uuid.uuid4().hex[:6]}" for i in range(9)]
    jobs = []
    for i, prompt in enumerate(prompts):
        jobs.append((i, (await clients.video[i % REPLICAS].GenerateVideo(video_request(prompt), metadata=MAIN)).job))
    # Each job is watched from another replica than the one that created (and drives) it.
    watched = await asyncio.wait_for(
        asyncio.gather(*(watch(clients.video[(i + 1) % REPLICAS], job.id) for i, job in jobs)), 45
    )
    delays = []
    finals = {}
    for (i, job), events in zip(jobs, watched, strict=True):
        finals[job.id] = final = (await clients.video[(i + 2) % REPLICAS].GetVideoJob(video_pb2.GetVideoJobRequest(job_id=job.id), metadata=MAIN)).job
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
        # Every event, in order, none missing, none repeated.
        assert [e.sequence for _, e in events] == list(range(1, final.last_sequence + 1))
        assert events[-1][1].type == common_pb2.JOB_EVENT_TYPE_ENDED
        delays += [at - e.event_time.ToNanoseconds() / 1e9 for at, e in events[1:]]
        # The artifact is in the shared bucket: a third replica serves it.
        data = b"".join(
            [m.data async for m in clients.video[(i + 2) % REPLICAS].DownloadVideo(video_pb2.DownloadVideoRequest(job_id=job.id), metadata=MAIN)]
        )
        assert hashlib.sha256(data).hexdigest() == final.artifacts[0].sha256
        assert final.artifacts[0].uri.startswith("s3://")
    # Notifications, not heartbeat re-reads (30 s here), carried the events across.
    assert max(delays) < 5.0, sorted(delays)[-5:]
    listed = (await clients.video[1].ListVideoJobs(video_pb2.ListVideoJobsRequest(page_size=100), metadata=MAIN)).jobs
    assert {j.id for _, j in jobs} <= {j.id for j in listed}
    # The vendor saw one submit per job, and each task polled by the replica that created it only.
    assert_one_submit_per_prompt(cluster, prompts)
    polls = cluster.polls()
    for i, job in jobs:
        assert {replica for _, replica in polls[finals[job.id].vendor_job_id]} == {f"r{i % REPLICAS}"}


async def test_same_request_id_at_two_replicas_makes_one_job(cluster, clients):
    prompts, request_ids = [], []
    calls = []
    for k in range(6):
        prompt, request_id = f"idempotent {k} {uuid.uuid4().hex[:6]}", str(uuid.uuid4())
        prompts.append(prompt)
        request_ids.append(request_id)
        request = video_request(prompt, request_id=request_id)
        for replica in (k % REPLICAS, (k + 1) % REPLICAS):
            calls.append(clients.video[replica].GenerateVideo(request, metadata=MAIN))
    answers = await asyncio.gather(*calls)
    for k in range(6):
        first, second = answers[2 * k].job, answers[2 * k + 1].job
        assert first.id == second.id and first.request_id == request_ids[k]
    await asyncio.wait_for(asyncio.gather(*(watch(clients.video[2], a.job.id) for a in answers[::2])), 45)
    sent = [r.json()["promptText"] for r in cluster.creates()]
    assert all(sent.count(p) == 1 for p in prompts)


async def test_concurrent_generates_across_replicas_never_overspend(cluster, clients):
    # What one job costs, from a job of the main tenant (no budget there).
    probe = (await clients.video[0].GenerateVideo(video_request("price probe"), metadata=MAIN)).job
    assert probe.estimated_cost.amount_micros == JOB_MICROS, "the budget assumes this price"
    admitted: list[tuple[int, str]] = []

    async def generate(i: int) -> None:
        try:
            response = await clients.video[i % REPLICAS].GenerateVideo(video_request(f"budget {i}"), metadata=BUDGET)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        else:
            admitted.append((i % REPLICAS, response.job.id))

    # Admitted jobs do not end during the burst (an ended job's reservation
    # becomes its final cost, which could make room for more).
    cluster.runway.plan = [{"status": "PENDING"}, {"status": "RUNNING", "progress": 0.5}]
    try:
        await asyncio.gather(*(generate(i) for i in range(100)))
    finally:
        cluster.runway.plan = list(PLAN)
    assert len(admitted) == BUDGET_JOBS
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster.ports[1]}") as channel:
        usage = await usage_pb2_grpc.UsageServiceStub(channel).GetUsage(usage_pb2.GetUsageRequest(), metadata=BUDGET)
    (budget,) = usage.budgets
    assert budget.spent_micros + budget.reserved_micros == budget.limit_micros == BUDGET_JOBS * JOB_MICROS
    for replica, job_id in admitted:  # each from another replica than the one driving it
        request = video_pb2.CancelVideoJobRequest(job_id=job_id)
        job = (await clients.video[(replica + 1) % REPLICAS].CancelVideoJob(request, metadata=BUDGET)).job
        assert job.state == common_pb2.JOB_STATE_CANCELLED


async def test_cancel_at_a_replica_that_does_not_drive_the_job(cluster, clients):
    cluster.runway.plan = [{"status": "PENDING"}, {"status": "RUNNING", "progress": 0.5}]  # never ends by itself
    try:
        job = (await clients.video[0].GenerateVideo(video_request(f"cancel me {uuid.uuid4().hex[:6]}"), metadata=MAIN)).job
        deadline = time.monotonic() + 20
        while not job.vendor_job_id:
            assert time.monotonic() < deadline, "never submitted"
            await asyncio.sleep(0.05)
            job = (await clients.video[1].GetVideoJob(video_pb2.GetVideoJobRequest(job_id=job.id), metadata=MAIN)).job
    finally:
        cluster.runway.plan = list(PLAN)
    watcher = asyncio.create_task(watch(clients.video[2], job.id))
    cancelled = (await clients.video[1].CancelVideoJob(video_pb2.CancelVideoJobRequest(job_id=job.id), metadata=MAIN)).job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    events = await asyncio.wait_for(watcher, 10)
    assert events[-1][1].job.state == common_pb2.JOB_STATE_CANCELLED
    # The driving replica (r0) stopped the task at the vendor.
    deletes = cluster.api.calls("DELETE", "/{replica}/v1/tasks/{id}")
    assert [d.path for d in deletes if d.path.endswith(job.vendor_job_id)] == [f"/r0/v1/tasks/{job.vendor_job_id}"]


async def test_an_asset_uploaded_at_one_replica_is_used_at_another(cluster, clients, tmp_path):
    from clients import AsyncMediagenClient
    from mediagen.v1 import common_pb2 as common
    from tests.helpers import png

    path = tmp_path / "frame.png"
    path.write_bytes(png(1280, 720))
    uploader = AsyncMediagenClient(channel=clients.channels[0], token="tok-main")
    asset = await uploader.upload(path)
    assert asset.tenant == "main"
    # Another replica finds it (metadata in PostgreSQL, bytes in the shared bucket) ...
    reader = AsyncMediagenClient(channel=clients.channels[2], token="tok-main")
    assert (await reader.get_asset(asset.id)).sha256 == asset.sha256
    # ... and a job created at a third one sends it to the vendor.
    prompt = f"from an asset {uuid.uuid4().hex[:6]}"
    request = video_request(prompt, input_image=common.MediaInput(asset_id=asset.id))
    job = (await clients.video[1].GenerateVideo(request, metadata=MAIN)).job
    events = await asyncio.wait_for(watch(clients.video[2], job.id), 45)
    assert events[-1][1].job.state == common_pb2.JOB_STATE_SUCCEEDED, events[-1][1].job.error
    (task,) = [t for t in cluster.runway.tasks.values() if t.body.get("promptText") == prompt]
    assert task.image == path.read_bytes()


async def test_kill_9_of_a_replica_driving_jobs_the_others_finish_them(cluster, clients):
    """Runs last: r0 stays dead."""
    prompts = [f"takeover {i} {uuid.uuid4().hex[:6]}" for i in range(6)]
    jobs = [(await clients.video[0].GenerateVideo(video_request(p), metadata=MAIN)).job for p in prompts]
    # Wait until r0 polls every one of them at the vendor.
    deadline = time.monotonic() + 20
    while True:
        current = [
            (await clients.video[1].GetVideoJob(video_pb2.GetVideoJobRequest(job_id=j.id), metadata=MAIN)).job for j in jobs
        ]
        if all(j.progress.phase == common_pb2.JOB_PHASE_GENERATING for j in current):
            break
        assert time.monotonic() < deadline, [common_pb2.JobPhase.Name(j.progress.phase) for j in current]
        await asyncio.sleep(0.05)
    watchers = [asyncio.create_task(watch(clients.video[1 + n % 2], j.id)) for n, j in enumerate(jobs)]
    on_r0 = [asyncio.create_task(watch_until_broken(clients.video[0], j.id)) for j in jobs[:3]]
    await asyncio.sleep(0.2)
    cluster.processes[0].kill9()
    killed_at = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*watchers), 30)
    # Watchers of the dead replica resume on another one after the last sequence they saw.
    for job, task in zip(jobs, on_r0, strict=False):
        seen = await task
        assert seen, "saw nothing before the kill"
        rest = await watch(clients.video[1], job.id, after=seen[-1].sequence)
        assert [e.sequence for e in seen + [e for _, e in rest]] == list(range(1, rest[-1][1].sequence + 1))
    for events in results:
        final = events[-1][1].job
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED, json_format.MessageToDict(final.error)
        assert [e.sequence for _, e in events] == list(range(1, final.last_sequence + 1))
    assert_one_submit_per_prompt(cluster, prompts)
    assert len([r for r in cluster.creates() if r.json()["promptText"] in prompts]) == len(prompts)
    polls = cluster.polls()
    for events in results:
        runs = poll_runs(polls[events[-1][1].job.vendor_job_id])
        # r0 polled until it died; then exactly one other replica, never both at once.
        assert len(runs) == 2 and runs[0][0] == "r0" and runs[1][0] in ("r1", "r2"), runs
        # (A poll sent just before the kill may be logged by the fake's thread a little later.)
        assert runs[0][2] <= killed_at + 0.5
        # The takeover waited for the lease to expire (r0 renewed at most LEASE/3
        # before it died), and came within the lease plus one claim interval.
        assert runs[1][1] - runs[0][2] >= LEASE / 2, runs
        # (Loose: on a loaded 2-core machine the survivors' claim loops lag.)
        assert runs[1][1] - killed_at <= LEASE + 2.5, runs
