"""Shared-mode figures: jobs in flight and end-to-end jobs per second, with one and with
three replicas on PostgreSQL (and S3), next to the embedded SQLite server.

    python -m bench.replicas                      # 300 jobs per setup
    python -m bench.replicas --jobs 100 --setups sqlite,postgres-1,postgres-3 --json out.json

Interface for the main bench::

    from bench.replicas import replica_figures, SETUPS
    results = replica_figures(jobs=300)           # list[ReplicaResult], one per setup in SETUPS
    for r in results: print(r.setup, r.jobs_per_second, r.peak_in_flight)

``replica_figures(*, jobs=300, setups=SETUPS, mock_latency=2.0, mock_steps=4,
concurrency=64, database_url=None, timeout=300.0) -> list[ReplicaResult]``; a setup
that cannot run (no PostgreSQL reachable) comes back with ``skipped`` set and no
figures. Each setup runs in fresh processes: the servers (``python -m
server.main``), for shared mode a fresh PostgreSQL schema and a moto S3 server
process; the client runs in this process.

Setups: ``sqlite`` is the embedded default (SQLite, local disk); ``sqlite-s3``
the same with S3 storage, so that the PostgreSQL setups (which need S3) are
compared with one that differs only in the database; ``postgres-<n>`` is n
replicas sharing one PostgreSQL schema and bucket.

The workload: ``jobs`` image jobs on the offline mock provider (each takes
``mock_latency`` seconds in ``mock_steps`` progress steps, then stores a small
PNG), created round-robin over the replicas with at most ``concurrency``
Generate calls outstanding, each job watched (Watch) on the *next* replica
until it ends, so in shared mode every event crosses replicas through
LISTEN/NOTIFY. Figures:

- ``jobs_per_second``: jobs / seconds from the first Generate to the last
  job's end seen by its watcher.
- ``peak_in_flight``: the most jobs driven at once, the sum over replicas of
  the ``mediagen_jobs_in_flight`` gauge, sampled every 100 ms.
- ``generate_p50_ms`` / ``generate_p99_ms``: Generate latency (admission:
  validation, the store transaction).

On one 2-core machine the three replicas, PostgreSQL, moto and the client
share the same two cores, so three replicas measure coordination overhead
more than scale-out; on separate machines each replica brings its own CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("sqlite", "sqlite-s3", "postgres-1", "postgres-3")
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class ReplicaResult:
    setup: str  # "sqlite" (local disk), "sqlite-s3", "postgres-<replicas>" (S3)
    replicas: int
    store: str  # "sqlite" or "postgres"
    storage: str  # "local" or "s3"
    jobs: int
    seconds: float | None = None
    jobs_per_second: float | None = None
    peak_in_flight: int | None = None
    generate_p50_ms: float | None = None
    generate_p99_ms: float | None = None
    failed: int = 0
    skipped: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def _schema(url: str) -> Iterator[str]:
    import psycopg

    schema = f"mediagen_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _postgres_unreachable(url: str) -> str:
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any reason is a reason to skip
        return f"no PostgreSQL at {url}: {str(exc).strip()}"
    return ""


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port}")
        time.sleep(0.1)


async def _ready(ports: list[int], within: float = 60.0) -> None:
    import grpc

    for port in ports:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), within)


async def _sample_in_flight(metrics_ports: list[int], stop: asyncio.Event) -> int:
    import httpx

    peak = 0
    async with httpx.AsyncClient(timeout=2.0) as http:
        while not stop.is_set():
            total = 0
            for port in metrics_ports:
                with contextlib.suppress(httpx.HTTPError):
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                    for line in text.splitlines():
                        if line.startswith("mediagen_jobs_in_flight "):
                            total += int(float(line.split()[1]))
            peak = max(peak, total)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    return peak


async def _drive(ports: list[int], metrics_ports: list[int], jobs: int, concurrency: int, within: float) -> dict:
    import grpc

    from mediagen.v1 import common_pb2, image_pb2, image_pb2_grpc

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
    stubs = [image_pb2_grpc.ImageServiceStub(c) for c in channels]
    slots = asyncio.Semaphore(concurrency)
    generate_ms: list[float] = []
    ends: list[float] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with slots:
            sent = time.perf_counter()
            job = (
                await stubs[i % len(stubs)].GenerateImage(
                    image_pb2.GenerateImageRequest(prompt=f"bench {i}", width=64, height=64)
                )
            ).job
            generate_ms.append((time.perf_counter() - sent) * 1000)
        watcher = stubs[(i + 1) % len(stubs)]
        async for response in watcher.WatchImageJob(image_pb2.WatchImageJobRequest(job_id=job.id)):
            if response.event.type == common_pb2.JOB_EVENT_TYPE_ENDED:
                if response.event.job.state != common_pb2.JOB_STATE_SUCCEEDED:
                    failed += 1
                break
        ends.append(time.perf_counter())

    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_in_flight(metrics_ports, stop))
    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(jobs))), within)
    finally:
        stop.set()
        peak = await sampler
        for channel in channels:
            await channel.close()
    seconds = max(ends) - started
    return {
        "seconds": round(seconds, 3),
        "jobs_per_second": round(jobs / seconds, 2),
        "peak_in_flight": peak,
        "generate_p50_ms": round(_percentile(generate_ms, 0.5), 2),
        "generate_p99_ms": round(_percentile(generate_ms, 0.99), 2),
        "failed": failed,
    }


def _run_setup(
    setup: str, *, jobs: int, mock_latency: float, mock_steps: int, concurrency: int, database_url: str, timeout: float
) -> ReplicaResult:
    shared = setup.startswith("postgres")
    s3 = shared or setup == "sqlite-s3"
    replicas = int(setup.split("-")[1]) if shared else 1
    result = ReplicaResult(setup, replicas, "postgres" if shared else "sqlite", "s3" if s3 else "local", jobs)
    if shared:
        why = _postgres_unreachable(database_url)
        if why:
            result.skipped = why
            return result
    with tempfile.TemporaryDirectory(prefix=f"bench-{setup}-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        base = {
            **os.environ,
            "MEDIAGEN_MOCK_LATENCY": str(mock_latency),
            "MEDIAGEN_MOCK_STEPS": str(mock_steps),
            "MEDIAGEN_LOG_LEVEL": "warning",
            "MEDIAGEN_LOG_FORMAT": "json",
            "MEDIAGEN_SHUTDOWN_GRACE": "1",
            "MEDIAGEN_DATA_DIR": str(work / "data"),
        }
        if s3:
            s3_port = _free_port()
            base.update(S3_CREDENTIALS)
            stack.enter_context(
                _process(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                    base,
                    work / "s3.log",
                )
            )
            _wait_port(s3_port)
            import boto3

            endpoint = f"http://127.0.0.1:{s3_port}"
            boto3.client(
                "s3", endpoint_url=endpoint, region_name="us-east-1",
                aws_access_key_id="bench", aws_secret_access_key="bench",
            ).create_bucket(Bucket="bench")
            base.update(
                {
                    "MEDIAGEN_STORAGE": "s3",
                    "MEDIAGEN_S3_BUCKET": "bench",
                    "MEDIAGEN_S3_ENDPOINT_URL": endpoint,
                    "MEDIAGEN_S3_PATH_STYLE": "1",
                }
            )
        if shared:
            base["MEDIAGEN_DATABASE_URL"] = stack.enter_context(_schema(database_url))
        ports = [_free_port() for _ in range(replicas)]
        metrics_ports = [_free_port() for _ in range(replicas)]
        for i, (port, metrics_port) in enumerate(zip(ports, metrics_ports, strict=True)):
            env = {
                **base,
                "MEDIAGEN_LISTEN": f"127.0.0.1:{port}",
                "MEDIAGEN_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
                "MEDIAGEN_REPLICA_ID": f"bench-{i}",
            }
            stack.enter_context(_process([sys.executable, "-m", "server.main"], env, work / f"server-{i}.log"))
        asyncio.run(_ready(ports))
        figures = asyncio.run(_drive(ports, metrics_ports, jobs, concurrency, timeout))
    return dataclasses.replace(result, **figures)


def replica_figures(
    *,
    jobs: int = 300,
    setups: tuple[str, ...] | list[str] = SETUPS,
    mock_latency: float = 2.0,
    mock_steps: int = 4,
    concurrency: int = 64,
    database_url: str | None = None,
    timeout: float = 300.0,
) -> list[ReplicaResult]:
    """Run each setup ("sqlite", "sqlite-s3", "postgres-<replicas>") and return its figures."""
    url = database_url or os.environ.get("MEDIAGEN_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    return [
        _run_setup(
            setup, jobs=jobs, mock_latency=mock_latency, mock_steps=mock_steps, concurrency=concurrency,
            database_url=url, timeout=timeout,
        )
        for setup in setups
    ]


def table(results: list[ReplicaResult]) -> str:
    head = ["setup", "store", "storage", "jobs", "jobs/s", "peak in flight", "Generate p50", "p99", "failed"]
    rows = []
    for r in results:
        if r.skipped:
            rows.append([r.setup, r.store, r.storage, str(r.jobs), f"skipped: {r.skipped}", "", "", "", ""])
            continue
        rows.append([
            r.setup, r.store, r.storage, str(r.jobs), f"{r.jobs_per_second:.1f}", str(r.peak_in_flight),
            f"{r.generate_p50_ms:.1f} ms", f"{r.generate_p99_ms:.1f} ms", str(r.failed),
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument(
        "--setups", default=",".join(SETUPS), help="comma-separated: sqlite, sqlite-s3, postgres-1, postgres-3, ..."
    )
    parser.add_argument("--mock-latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = replica_figures(
        jobs=args.jobs,
        setups=[s.strip() for s in args.setups.split(",") if s.strip()],
        mock_latency=args.mock_latency,
        concurrency=args.concurrency,
        database_url=args.database_url,
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
