"""The load generator: one process per measurement, pinned to its own core.

    python -m bench.client <command> --spec spec.json [--cpus 1]

Each command prints one JSON line, its result. The same code drives mediagen
and the bare baseline, so both see exactly the same client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # One connection per channel, never shared between the channels we open.
    ("grpc.use_local_subchannel_pool", 1),
]


def _channels(target: str, count: int):
    import grpc

    return [
        grpc.aio.insecure_channel(target, options=[*CHANNEL_OPTIONS, ("bench.channel", i)]) for i in range(count)
    ]


# --- GetJob ------------------------------------------------------------------------


async def getjob(spec: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` callers, each calling GetVideoJob back to back for ``duration`` s."""
    from bench.common import percentile
    from mediagen.v1 import video_pb2, video_pb2_grpc

    concurrency = int(spec["concurrency"])
    channels = _channels(spec["target"], int(spec.get("channels", 1)))
    stubs = [video_pb2_grpc.VideoServiceStub(ch) for ch in channels]
    request = video_pb2.GetVideoJobRequest(job_id=spec["job_id"])
    latencies: list[float] = []
    errors = 0
    counts = [0]  # every call, warm-up included (the server's CPU time covers them all)
    measuring = False
    stop_at = 0.0

    async def caller(i: int) -> None:
        nonlocal errors
        call = stubs[i % len(stubs)].GetVideoJob
        clock = time.perf_counter
        while True:
            started = clock()
            if started >= stop_at and measuring:
                return
            try:
                await call(request)
            except Exception:
                errors += 1
                continue
            counts[0] += 1
            if measuring:
                latencies.append(clock() - started)

    for ch in channels:
        await ch.channel_ready()
    # Warm up (connections, caches, the server's first-call paths), then measure.
    stop_at = time.perf_counter() + float(spec.get("warmup", 1.0))
    warm = [asyncio.create_task(caller(i)) for i in range(concurrency)]
    await asyncio.sleep(float(spec.get("warmup", 1.0)))
    measuring = True
    begun = time.perf_counter()
    stop_at = begun + float(spec["duration"])
    await asyncio.gather(*warm)
    elapsed = time.perf_counter() - begun
    for ch in channels:
        await ch.close()
    return {
        "calls": len(latencies),
        "total_calls": counts[0],
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


# --- Download ------------------------------------------------------------------------


async def download(spec: dict[str, Any]) -> dict[str, Any]:
    """Download one artifact to nowhere (counting bytes), with this process's RSS growth."""
    from bench.common import peak_rss, reset_peak, rss
    from mediagen.v1 import video_pb2, video_pb2_grpc

    (channel,) = _channels(spec["target"], 1)
    stub = video_pb2_grpc.VideoServiceStub(channel)
    await channel.channel_ready()
    before = rss()
    reset_peak()
    received = 0
    messages = 0
    expected = 0
    begun = time.perf_counter()
    async for response in stub.DownloadVideo(video_pb2.DownloadVideoRequest(job_id=spec["job_id"])):
        if response.HasField("artifact"):
            expected = response.artifact.size_bytes
        received += len(response.data)
        messages += 1
    elapsed = time.perf_counter() - begun
    await channel.close()
    return {
        "bytes": received,
        "expected": expected,
        "messages": messages,
        "seconds": elapsed,
        "mib_s": received / elapsed / 2**20 if elapsed else 0.0,
        "rss_before": before,
        "rss_peak": peak_rss(),
    }


def read_file(spec: dict[str, Any]) -> dict[str, Any]:
    """The physical limit: read the file in the same chunk size, nothing else."""
    import os

    path = spec["file"]
    chunk = int(spec["chunk_size"])
    if spec.get("cold"):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    total = 0
    begun = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while data := handle.read(chunk):
            total += len(data)
    elapsed = time.perf_counter() - begun
    return {"bytes": total, "seconds": elapsed, "mib_s": total / elapsed / 2**20}


# --- Watch ------------------------------------------------------------------------------


async def watch(spec: dict[str, Any]) -> dict[str, Any]:
    """Fan-out: ``jobs`` mock jobs with ``watchers`` watchers each, created at ``rate`` a second.

    Delivery latency is receive time minus the event's event_time, counted for
    events that happened after the watcher asked (earlier ones are history).
    Every watcher must see every sequence number from 1 to the ENDED event.
    """
    from google.protobuf import struct_pb2

    from bench.common import percentile
    from mediagen.v1 import common_pb2, image_pb2, image_pb2_grpc

    jobs = int(spec["jobs"])
    per_job = int(spec["watchers"])
    channels = _channels(spec["target"], int(spec.get("channels", 4)))
    stubs = [image_pb2_grpc.ImageServiceStub(ch) for ch in channels]
    for ch in channels:
        await ch.channel_ready()
    options = struct_pb2.Struct()
    options.update({"mock_latency_seconds": float(spec["latency"])})
    latencies: list[tuple[float, float]] = []  # (event time, delivery latency)
    incomplete = 0
    delivered = 0
    ended = 0
    connected = 0
    all_connected_at = float("inf")
    total_watchers = jobs * per_job
    begun_wall = time.time()

    async def one_watcher(stub, job_id: str) -> None:
        nonlocal incomplete, delivered, ended, connected, all_connected_at
        asked = time.time()
        seen: list[int] = []
        done = False
        async for response in stub.WatchImageJob(image_pb2.WatchImageJobRequest(job_id=job_id)):
            now = time.time()
            if not seen:
                connected += 1
                if connected == total_watchers:
                    all_connected_at = now
            event = response.event
            if event.type == common_pb2.JOB_EVENT_TYPE_HEARTBEAT:
                continue
            seen.append(event.sequence)
            delivered += 1
            sent = event.event_time.seconds + event.event_time.nanos / 1e9
            if sent >= asked:
                latencies.append((sent, now - sent))
            if event.type == common_pb2.JOB_EVENT_TYPE_ENDED:
                done = True
                ended += 1
        if not done or seen != list(range(1, seen[-1] + 1)):
            incomplete += 1

    rate = float(spec.get("rate") or 0.0)  # jobs created per second; 0: all at once

    async def one_job(index: int) -> None:
        if rate:
            await asyncio.sleep(max(0.0, begun + index / rate - time.perf_counter()))
        stub = stubs[index % len(stubs)]
        request = image_pb2.GenerateImageRequest(
            prompt=f"watch {index}", width=16, height=16, provider="mock", provider_options=options
        )
        job = (await stub.GenerateImage(request)).job
        await asyncio.gather(*(one_watcher(stubs[(index + w) % len(stubs)], job.id) for w in range(per_job)))

    begun = time.perf_counter()
    await asyncio.gather(*(one_job(i) for i in range(jobs)))
    elapsed = time.perf_counter() - begun
    for ch in channels:
        await ch.close()
    live = [lat for _, lat in latencies]
    # Steady state: events that happened once every watcher was connected (the fan-out alone,
    # without the storm of a thousand Watch calls being set up).
    steady = [lat for sent, lat in latencies if sent >= all_connected_at]
    return {
        "watchers": total_watchers,
        "watchers_incomplete": incomplete,
        "watchers_ended": ended,
        "events_delivered": delivered,
        "live_events": len(live),
        "steady_events": len(steady),
        "all_connected_after_s": all_connected_at - begun_wall,
        "seconds": elapsed,
        "p50_ms": percentile(live, 50) * 1000,
        "p99_ms": percentile(live, 99) * 1000,
        "max_ms": max(live, default=0.0) * 1000,
        "steady_p50_ms": percentile(steady, 50) * 1000,
        "steady_p99_ms": percentile(steady, 99) * 1000,
    }


# --- End to end ------------------------------------------------------------------------------


async def e2e(spec: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` users, each: GenerateImageStream until ENDED, then DownloadImage, again."""
    from bench.common import percentile
    from mediagen.v1 import common_pb2, image_pb2, image_pb2_grpc

    concurrency = int(spec["concurrency"])
    channels = _channels(spec["target"], int(spec.get("channels", 2)))
    stubs = [image_pb2_grpc.ImageServiceStub(ch) for ch in channels]
    for ch in channels:
        await ch.channel_ready()
    size = int(spec.get("size", 16))
    latencies: list[float] = []
    failures: dict[str, int] = {}
    measuring = False
    stop_at = float("inf")
    done = 0
    total = [0]  # warm-up included (the server's CPU time covers them all)
    downloaded_bytes = 0

    async def user(i: int) -> None:
        nonlocal done, downloaded_bytes
        stub = stubs[i % len(stubs)]
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            started = time.perf_counter()
            request = image_pb2.GenerateImageStreamRequest(
                request=image_pb2.GenerateImageRequest(
                    prompt=f"e2e {i} {n}", width=size, height=size, provider="mock"
                )
            )
            last = None
            async for response in stub.GenerateImageStream(request):
                last = response.event
            state = last.job.state if last is not None else 0
            if state != common_pb2.JOB_STATE_SUCCEEDED:
                name = common_pb2.JobState.Name(state)
                failures[name] = failures.get(name, 0) + 1
                continue
            got = 0
            async for chunk in stub.DownloadImage(image_pb2.DownloadImageRequest(job_id=last.job.id)):
                got += len(chunk.data)
            if got != last.job.artifacts[0].size_bytes:
                failures["SHORT_DOWNLOAD"] = failures.get("SHORT_DOWNLOAD", 0) + 1
                continue
            total[0] += 1
            if measuring:
                done += 1
                downloaded_bytes += got
                latencies.append(time.perf_counter() - started)

    warmup = float(spec.get("warmup", 1.0))
    stop_at = time.perf_counter() + warmup + float(spec["duration"])
    tasks = [asyncio.create_task(user(i)) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    begun = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - begun
    for ch in channels:
        await ch.close()
    return {
        "jobs": done,
        "total_jobs": total[0],
        "seconds": elapsed,
        "jobs_per_s": done / elapsed if elapsed else 0.0,
        "failures": failures,
        "bytes": downloaded_bytes,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


# --- jobs in flight ---------------------------------------------------------------------


async def generate_many(spec: dict[str, Any]) -> dict[str, Any]:
    """Create ``jobs`` video jobs on ``provider`` as fast as ``concurrency`` callers can."""
    from mediagen.v1 import video_pb2, video_pb2_grpc

    channels = _channels(spec["target"], 2)
    stubs = [video_pb2_grpc.VideoServiceStub(ch) for ch in channels]
    total = int(spec["jobs"])
    next_index = 0
    errors: dict[str, int] = {}

    give_up_at = time.perf_counter() + float(spec.get("max_seconds", 1e9))

    async def caller(i: int) -> None:
        nonlocal next_index
        stub = stubs[i % len(stubs)]
        while next_index < total and time.perf_counter() < give_up_at:
            index = next_index
            next_index += 1
            request = video_pb2.GenerateVideoRequest(
                prompt=f"in flight {index}", provider=spec["provider"], duration_seconds=5
            )
            try:
                await stub.GenerateVideo(request, timeout=max(1.0, give_up_at - time.perf_counter()))
            except Exception as exc:  # counted and reported, the figure says how many
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1

    begun = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(int(spec.get("concurrency", 32)))))
    elapsed = time.perf_counter() - begun
    for ch in channels:
        await ch.close()
    created = next_index - sum(errors.values())
    return {"jobs": created, "asked": total, "errors": errors, "seconds": elapsed, "per_s": created / elapsed}


async def count_jobs(spec: dict[str, Any]) -> dict[str, Any]:
    """How many jobs of one media type are in each state (List<Media>Jobs, every page)."""
    from mediagen.v1 import common_pb2, image_pb2, image_pb2_grpc, video_pb2, video_pb2_grpc

    (channel,) = _channels(spec["target"], 1)
    if spec.get("media", "image") == "video":
        stub, call, request = video_pb2_grpc.VideoServiceStub(channel), "ListVideoJobs", video_pb2.ListVideoJobsRequest
    else:
        stub, call, request = image_pb2_grpc.ImageServiceStub(channel), "ListImageJobs", image_pb2.ListImageJobsRequest
    counts: dict[str, int] = {}
    advanced = 0  # jobs whose last event is past ``after_sequence``
    token = ""
    while True:
        page = await getattr(stub, call)(request(page_size=1000, page_token=token),
                                         timeout=float(spec.get("timeout", 60.0)))
        for job in page.jobs:
            name = common_pb2.JobState.Name(job.state)
            counts[name] = counts.get(name, 0) + 1
            advanced += job.last_sequence > int(spec.get("after_sequence", 0))
        token = page.next_page_token
        if not token:
            break
    await channel.close()
    return {"states": counts, "advanced": advanced}


# --- set-up helpers ----------------------------------------------------------------------


async def prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one mock video job to the end and return it (the GetJob figure's job)."""
    from google.protobuf import json_format

    from mediagen.v1 import common_pb2, video_pb2, video_pb2_grpc

    (channel,) = _channels(spec["target"], 1)
    stub = video_pb2_grpc.VideoServiceStub(channel)
    request = video_pb2.GenerateVideoStreamRequest(
        request=video_pb2.GenerateVideoRequest(prompt="a red fox in snow", duration_seconds=1.0, provider="mock")
    )
    last = None
    async for response in stub.GenerateVideoStream(request):
        last = response.event
    await channel.close()
    if last is None or last.job.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"the mock job did not succeed: {last}")
    return {"job": json_format.MessageToDict(last.job)}


async def health(spec: dict[str, Any]) -> dict[str, Any]:
    """Time until the server answers SERVING, polling every 5 ms."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    begun = time.time()
    async with grpc.aio.insecure_channel(spec["target"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return {"serving_at": time.time(), "waited": time.time() - begun}
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.005)


COMMANDS = {
    "getjob": getjob,
    "download": download,
    "read_file": read_file,
    "watch": watch,
    "e2e": e2e,
    "generate_many": generate_many,
    "count_jobs": count_jobs,
    "prepare": prepare,
    "health": health,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--spec", required=True, help="JSON object (inline)")
    parser.add_argument("--cpus")
    args = parser.parse_args()
    from bench.common import emit, pin

    pin(args.cpus)
    spec = json.loads(args.spec)
    command = COMMANDS[args.command]
    result = asyncio.run(command(spec)) if asyncio.iscoroutinefunction(command) else command(spec)
    emit(result)


if __name__ == "__main__":
    main()
