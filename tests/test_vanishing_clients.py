"""Hundreds of clients that vanish mid-Watch or mid-Download leave nothing behind."""

from __future__ import annotations

import asyncio

import grpc

from mediagen.v1 import common_pb2, music_pb2, music_pb2_grpc


async def _settle(predicate, within=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not predicate():
        assert loop.time() < end, "did not settle"
        await asyncio.sleep(0.02)


async def test_watchers_and_downloaders_that_vanish(server):
    address = f"127.0.0.1:{server.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = music_pb2_grpc.MusicServiceStub(channel)
        done = (await stub.GenerateMusic(music_pb2.GenerateMusicRequest(prompt="x", duration_seconds=10))).job
        async for _ in stub.WatchMusicJob(music_pb2.WatchMusicJobRequest(job_id=done.id)):
            pass
        stalled = (
            await stub.GenerateMusic(
                music_pb2.GenerateMusicRequest(prompt="y", provider_options={"mock_behavior": "stall"})
            )
        ).job
        baseline_tasks = len(asyncio.all_tasks())

    async def watch_then_vanish():
        async with grpc.aio.insecure_channel(address) as ch:
            call = music_pb2_grpc.MusicServiceStub(ch).WatchMusicJob(music_pb2.WatchMusicJobRequest(job_id=stalled.id))
            await call.read()
            call.cancel()

    async def download_then_vanish():
        async with grpc.aio.insecure_channel(address, options=[("grpc.http2.lookahead_bytes", 1)]) as ch:
            call = music_pb2_grpc.MusicServiceStub(ch).DownloadMusic(music_pb2.DownloadMusicRequest(job_id=done.id))
            await call.read()
        # leaving the channel closes the connection under the stream

    await asyncio.gather(*(watch_then_vanish() for _ in range(200)), *(download_then_vanish() for _ in range(200)))
    await _settle(lambda: server.bus.watcher_count() == 0)
    await _settle(lambda: not server.jobs.reading)
    await _settle(lambda: len(asyncio.all_tasks()) <= baseline_tasks)
    # The job the watchers followed is unaffected and still running.
    record = await server.store.get(stalled.id)
    assert record.job.state == common_pb2.JOB_STATE_RUNNING
    assert server.runner.in_flight() == 1
