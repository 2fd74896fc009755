"""Shared mode in one process: two in-process replicas on one PostgreSQL schema.

Cheaper than the three-process tests (tests/test_replicas.py) for the cases
that need a replica to misbehave on cue: one whose lease is taken while it
still runs, one that stops driving without handing its jobs over. Local disk
storage is fine here (both replicas are on one machine and one folder).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import psycopg
import pytest

from mediagen.v1 import common_pb2, video_pb2, video_pb2_grpc
from server.app import MediagenServer
from server.pgstore import PostgresJobStore
from tests.conftest import make_settings
from tests.pg import fresh_schema

LEASE = 1.0


@pytest.fixture
async def replicas(tmp_path):
    with fresh_schema() as url:
        servers: list[MediagenServer] = []

        async def start(name: str) -> MediagenServer:
            settings = make_settings(tmp_path, lease_seconds=LEASE, replica_id=name, poll_interval=0.05)
            store = PostgresJobStore(url, owner=name, lease_seconds=LEASE, pool_size=4)
            server = MediagenServer(settings, store=store)
            await server.start()
            servers.append(server)
            return server

        yield url, start
        for server in servers:
            await server.stop(grace=0.1)


def slow_job(seconds: float = 30.0) -> video_pb2.GenerateVideoRequest:
    request = video_pb2.GenerateVideoRequest(prompt="slow", duration_seconds=1)
    request.provider_options.update({"mock_latency_seconds": seconds})
    return request


async def running(stub, job_id: str) -> common_pb2.Job:
    deadline = time.monotonic() + 10
    while True:
        job = (await stub.GetVideoJob(video_pb2.GetVideoJobRequest(job_id=job_id))).job
        if job.state == common_pb2.JOB_STATE_RUNNING and job.last_sequence >= 3:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)


async def test_a_replica_whose_lease_is_taken_stops_driving_and_writes_nothing(replicas):
    url, start = replicas
    a = await start("a")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        job = (await stub.GenerateVideo(slow_job())).job
        await running(stub, job.id)
        assert a.runner.in_flight() == 1
        # Another replica takes the job (as after a long pause of this one).
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(
                "UPDATE jobs SET lease_owner = 'thief', lease_epoch = lease_epoch + 1,"
                " lease_until = now() + interval '1 hour' WHERE id = %s",
                (job.id,),
            )
        deadline = time.monotonic() + 3 * LEASE
        while a.runner.in_flight():
            assert time.monotonic() < deadline, "still driving a job whose lease it lost"
            await asyncio.sleep(0.02)
        stopped_at = (await stub.GetVideoJob(video_pb2.GetVideoJobRequest(job_id=job.id))).job
        await asyncio.sleep(3 * LEASE)
        after = (await stub.GetVideoJob(video_pb2.GetVideoJobRequest(job_id=job.id))).job
        assert after == stopped_at and after.state == common_pb2.JOB_STATE_RUNNING
        assert a.runner.in_flight() == 0  # and it does not claim it back: the thief's lease is live


async def test_cancel_of_a_job_nobody_drives_is_done_by_the_cancelling_replica(replicas):
    _, start = replicas
    a, b = await start("a"), await start("b")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ca, grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as cb:
        job = (await video_pb2_grpc.VideoServiceStub(ca).GenerateVideo(slow_job())).job
        await running(video_pb2_grpc.VideoServiceStub(cb), job.id)
        # a stops driving without handing the job over (as if it hung): its lease runs out.
        assert a.shared is not None
        for task in a.shared._tasks:
            task.cancel()
        a.runner.abandon(job.id)
        started = time.monotonic()
        cancelled = (await video_pb2_grpc.VideoServiceStub(cb).CancelVideoJob(video_pb2.CancelVideoJobRequest(job_id=job.id))).job
        assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
        assert time.monotonic() - started < LEASE + 2.0
        events = [
            r.event async for r in video_pb2_grpc.VideoServiceStub(ca).WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job.id))
        ]
        assert [e.sequence for e in events] == list(range(1, cancelled.last_sequence + 1))
        assert events[-1].job.state == common_pb2.JOB_STATE_CANCELLED


async def test_a_stopping_replica_hands_its_jobs_over_at_once(replicas):
    _, start = replicas
    a, b = await start("a"), await start("b")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as cb:
        stub = video_pb2_grpc.VideoServiceStub(cb)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ca:
            job = (await video_pb2_grpc.VideoServiceStub(ca).GenerateVideo(slow_job(2.0))).job
        await running(stub, job.id)
        await a.stop(grace=0.1)
        taken = time.monotonic()
        while not b.runner.in_flight():
            assert time.monotonic() - taken < LEASE / 2, "not taken over at once"
            await asyncio.sleep(0.01)
        events = [
            r.event
            async for r in stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job.id))
            if r.event.type != common_pb2.JOB_EVENT_TYPE_HEARTBEAT
        ]
        assert events[-1].job.state == common_pb2.JOB_STATE_SUCCEEDED
        assert [e.sequence for e in events] == list(range(1, events[-1].sequence + 1))


async def test_a_replica_that_cannot_reach_the_database_stops_driving_before_its_leases_expire(replicas, monkeypatch):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    url, start = replicas
    a = await start("a")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        job = (await stub.GenerateVideo(slow_job(3.0))).job
        await running(stub, job.id)

        async def unreachable(*args, **kwargs):
            raise psycopg.OperationalError("connection refused")

        monkeypatch.setattr(a.store, "renew", unreachable)
        monkeypatch.setattr(a.store, "claim", unreachable)
        broken_at = time.monotonic()
        while a.runner.in_flight():
            assert time.monotonic() - broken_at < LEASE, "still driving"
            await asyncio.sleep(0.01)
        # It stopped while its lease was still valid (by the database's clock): nobody else could drive yet.
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SELECT lease_until > clock_timestamp() FROM jobs WHERE id = %s", (job.id,))
            assert await cur.fetchone() == (True,)
        status = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        monkeypatch.undo()
        # Back: ready again, and the job (its lease expired meanwhile) is claimed and finished.
        events = [r.event async for r in stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job.id))]
        assert events[-1].job.state == common_pb2.JOB_STATE_SUCCEEDED
        status = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
        assert status == health_pb2.HealthCheckResponse.SERVING
