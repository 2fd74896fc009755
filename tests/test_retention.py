"""Finished jobs and their artifacts expire; a running download is never cut."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mediagen.v1 import music_pb2, music_pb2_grpc
from server.app import MediagenServer
from tests.conftest import make_settings


@pytest.fixture
async def short_retention(tmp_path):
    server = MediagenServer(make_settings(tmp_path, retention=0.2, retention_sweep_interval=3600))
    await server.start()
    yield server
    await server.stop(grace=0.1)


async def _finished_job(stub):
    # 10 s of 44.1 kHz WAV: larger than one download chunk.
    job = (await stub.GenerateMusic(music_pb2.GenerateMusicRequest(prompt="x", duration_seconds=10))).job
    async for _ in stub.WatchMusicJob(music_pb2.WatchMusicJobRequest(job_id=job.id)):
        pass
    return job


async def test_expired_jobs_and_artifacts_are_removed(short_retention):
    server = short_retention
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = music_pb2_grpc.MusicServiceStub(channel)
        job = await _finished_job(stub)
        key = (await server.store.get(job.id)).extra["keys"][0]
        path = server.storage.path_for(key)
        assert path.exists()
        assert await server.jobs.sweep_expired() == 0  # not old enough yet
        await asyncio.sleep(0.3)
        assert await server.jobs.sweep_expired() == 1
        assert not path.exists()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetMusicJob(music_pb2.GetMusicJobRequest(job_id=job.id))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_download_in_progress_keeps_its_file(short_retention):
    server = short_retention
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.http2.lookahead_bytes", 1)]
    ) as channel:
        stub = music_pb2_grpc.MusicServiceStub(channel)
        job = await _finished_job(stub)
        await asyncio.sleep(0.3)
        download = stub.DownloadMusic(music_pb2.DownloadMusicRequest(job_id=job.id))
        first = await download.read()
        assert first.artifact.size_bytes > len(first.data)  # more chunks to come
        assert await server.jobs.sweep_expired() == 0  # being read: kept
        data = first.data
        while (message := await download.read()) is not grpc.aio.EOF:
            data += message.data
        assert len(data) == first.artifact.size_bytes
        assert await server.jobs.sweep_expired() == 1
