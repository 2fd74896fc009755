"""The six figures. Each returns table rows (``bench.common.Row``) and raw details."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import MIB, Row, cpu_seconds, median, peak_rss, reset_peak, rss
from bench.harness import Harness

# Download chunk sizes tried by the sweep: multiples of 3 (see providers/storage/base.py).
CHUNK_SWEEP = [3 * 32 * 1024, 3 * 128 * 1024, 3 * 256 * 1024, 3 * 512 * 1024]


@dataclass
class Profile:
    name: str
    runs: int  # repetitions of each comparative measurement (medians are reported)
    getjob_seconds: float
    getjob_warmup: float
    concurrencies: tuple[int, ...]
    download_bytes: int
    download_runs: int
    chunk_sweep: bool
    inflight_jobs: int
    inflight_interval: float
    inflight_min: float
    inflight_max: float
    watchers: int
    watch_jobs: int
    watch_latency: float
    #: Jobs created per second in "jobs × 1 watcher" (0: all at once)
    watch_rate: float
    e2e_seconds: float
    e2e_concurrency: int
    recovery_jobs: int


PROFILES = {
    "default": Profile("default", 3, 3.0, 1.0, (1, 16, 128), 1024 * MIB, 3, False,
                       10_000, 10.0, 100.0, 150.0, 1000, 1000, 6.0, 150.0, 6.0, 48, 10_000),
    "quick": Profile("quick", 2, 2.0, 0.5, (1, 16, 128), 256 * MIB, 2, False,
                     1_000, 10.0, 15.0, 30.0, 200, 200, 4.0, 150.0, 4.0, 48, 1_000),
    "smoke": Profile("smoke", 1, 0.3, 0.2, (16,), 4 * MIB, 1, False,
                     20, 0.5, 0.5, 1.5, 5, 5, 1.5, 0.0, 0.5, 4, 20),
}


def _target(ready: dict[str, Any]) -> str:
    return f"127.0.0.1:{ready['port']}"


def _base_settings(data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"data_dir": str(data_dir), "log_level": "info", **extra}


# --- 1. GetJob -------------------------------------------------------------------------


def fig_getjob(h: Harness, p: Profile) -> tuple[list[Row], dict[str, Any]]:
    data = h.path("getjob-data")
    details: dict[str, Any] = {}
    rows: list[Row] = []
    with h.server("mediagen", {"settings": _base_settings(data, mock_latency=0.0)}) as (m_srv, m_ready):
        job = h.client("prepare", {"target": _target(m_ready)})["job"]
        with h.server("bare", {"job": job}) as (b_srv, b_ready):
            for c in p.concurrencies:
                results: dict[str, list[dict[str, Any]]] = {"mediagen": [], "bare": []}
                for _ in range(p.runs):
                    # Alternate, so drift on the machine hits both servers alike.
                    for kind, srv, ready in (("bare", b_srv, b_ready), ("mediagen", m_srv, m_ready)):
                        spec = {"target": _target(ready), "job_id": job["id"], "concurrency": c,
                                "duration": p.getjob_seconds, "warmup": p.getjob_warmup}
                        cpu_before = cpu_seconds(srv.pid)
                        result = h.client("getjob", spec)
                        # Server CPU per call: robust when other work shares the machine.
                        result["server_cpu_us_per_call"] = (
                            (cpu_seconds(srv.pid) - cpu_before) / max(result["total_calls"], 1) * 1e6)
                        results[kind].append(result)
                details[f"c{c}"] = results
                m, b = results["mediagen"], results["bare"]
                errors = sum(r["errors"] for r in m + b)
                rps = Row(f"GetJob c={c} throughput", median([r["rps"] for r in m]), "calls/s",
                          median([r["rps"] for r in b]), "≥ 0.85× bare",
                          runs=[r["rps"] for r in m], baseline_runs=[r["rps"] for r in b],
                          note=f"{errors} errors" if errors else "")
                rps.met = rps.ratio is not None and rps.ratio >= 0.85
                p99 = Row(f"GetJob c={c} p99", median([r["p99_ms"] for r in m]), "ms",
                          median([r["p99_ms"] for r in b]), "≤ 1.5× bare",
                          runs=[r["p99_ms"] for r in m], baseline_runs=[r["p99_ms"] for r in b])
                p99.met = p99.ratio is not None and p99.ratio <= 1.5
                p50 = Row(f"GetJob c={c} p50", median([r["p50_ms"] for r in m]), "ms",
                          median([r["p50_ms"] for r in b]),
                          runs=[r["p50_ms"] for r in m], baseline_runs=[r["p50_ms"] for r in b])
                cpu = Row(f"GetJob c={c} server CPU per call", median([r["server_cpu_us_per_call"] for r in m]), "µs",
                          median([r["server_cpu_us_per_call"] for r in b]),
                          runs=[r["server_cpu_us_per_call"] for r in m],
                          baseline_runs=[r["server_cpu_us_per_call"] for r in b])
                rows += [rps, p50, p99, cpu]
                h.log(f"GetJob c={c}: {rps.value:.0f} vs {rps.baseline:.0f} calls/s, p99 {p99.value:.1f} vs {p99.baseline:.1f} ms")
    return rows, details


# --- 2. Download -------------------------------------------------------------------------


def _now_ts():
    from server.jobs import now_timestamp

    return now_timestamp()


def make_download_job(data_dir: Path, size: int) -> dict[str, Any]:
    """A succeeded video job whose artifact is a ``size``-byte file, written straight into the store.

    Rendering a 1 GiB video would take minutes and measure the renderer; the
    record looks exactly like one the runner writes (state, stage 'done',
    artifact with size and sha256, the storage key in extra.keys).
    """
    from mediagen.v1 import common_pb2
    from server.jobs import new_job_id
    from server.store import JobRecord, SQLiteJobStore

    job_id = new_job_id()
    key = f"default/{job_id}/0.mp4"
    path = data_dir / "artifacts" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    block = os.urandom(4 * MIB)
    with open(path, "wb") as handle:
        written = 0
        while written < size:
            piece = block[: min(len(block), size - written)]
            handle.write(piece)
            digest.update(piece)
            written += len(piece)
    now = _now_ts()
    job = common_pb2.Job(
        id=job_id, media_type=common_pb2.MEDIA_TYPE_VIDEO, state=common_pb2.JOB_STATE_SUCCEEDED,
        provider="mock", model="mock-1", create_time=now, update_time=now, start_time=now, end_time=now,
        progress=common_pb2.Progress(phase=common_pb2.JOB_PHASE_DONE, fraction=1.0), last_sequence=1,
    )
    job.artifacts.add(index=0, uri=f"file:{key}", content_type="video/mp4", size_bytes=size,
                      sha256=digest.hexdigest(), duration_seconds=60.0, width=640, height=360)
    event = common_pb2.JobEvent(sequence=1, type=common_pb2.JOB_EVENT_TYPE_ENDED, event_time=now, job=job)

    async def store() -> None:
        db = SQLiteJobStore(data_dir / "mediagen.db")
        await db.create(JobRecord(job=job, request=b"", stage="done", extra={"keys": [key]}), event)
        await db.close()

    asyncio.run(store())
    from google.protobuf import json_format

    return {"job": json_format.MessageToDict(job), "file": str(path), "key": key}


def _download(h: Harness, server_pid: int, ready: dict[str, Any], job_id: str) -> dict[str, Any]:
    before = rss(server_pid)
    reset_peak(server_pid)
    result = h.client("download", {"target": _target(ready), "job_id": job_id}, timeout=600)
    result["server_rss_before"] = before
    result["server_rss_peak"] = peak_rss(server_pid)
    if result["bytes"] != result["expected"]:
        raise RuntimeError(f"short download: {result['bytes']} of {result['expected']} bytes")
    return result


def _growth(results: list[dict[str, Any]], side: str) -> float:
    if side == "server":
        return max(r["server_rss_peak"] - r["server_rss_before"] for r in results) / MIB
    return max(r["rss_peak"] - r["rss_before"] for r in results) / MIB


def _download_rows(label: str, m: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[Row]:
    speed = Row(f"{label} throughput", median([r["mib_s"] for r in m]), "MiB/s",
                median([r["mib_s"] for r in b]), "≥ 0.8× bare",
                runs=[r["mib_s"] for r in m], baseline_runs=[r["mib_s"] for r in b])
    speed.met = speed.ratio is not None and speed.ratio >= 0.8
    server = Row(f"{label} server RSS growth", _growth(m, "server"), "MiB", _growth(b, "server"), "≤ 64 MiB")
    server.met = server.value is not None and server.value <= 64
    client = Row(f"{label} client RSS growth", _growth(m, "client"), "MiB", _growth(b, "client"), "≤ 64 MiB")
    client.met = client.value is not None and client.value <= 64
    return [speed, server, client]


def fig_download(h: Harness, p: Profile) -> tuple[list[Row], dict[str, Any]]:
    from providers.storage.base import CHUNK_SIZE

    data = h.path("download-data")
    made = make_download_job(data, p.download_bytes)
    job_id = made["job"]["id"]
    size_label = f"{p.download_bytes // MIB} MiB" if p.download_bytes < 1024 * MIB else f"{p.download_bytes // (1024 * MIB)} GiB"
    details: dict[str, Any] = {"bytes": p.download_bytes, "chunk_size": CHUNK_SIZE}
    rows: list[Row] = []

    # The physical limit: reading the same file in the same chunk size (page cache warm,
    # as it is for the servers after the first run; and cold, for reference).
    cold = h.client("read_file", {"file": made["file"], "chunk_size": CHUNK_SIZE, "cold": True})
    warm = [h.client("read_file", {"file": made["file"], "chunk_size": CHUNK_SIZE}) for _ in range(p.download_runs)]
    details["disk"] = {"cold": cold, "warm": warm}

    def compare(chunk: int, runs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        m: list[dict[str, Any]] = []
        b: list[dict[str, Any]] = []
        m_spec: dict[str, Any] = {"settings": _base_settings(data)}
        if chunk != CHUNK_SIZE:
            m_spec["chunk_size"] = chunk
        with h.server("mediagen", m_spec) as (m_srv, m_ready), \
                h.server("bare", {"job": made["job"], "file": made["file"], "chunk_size": chunk}) as (b_srv, b_ready):
            for _ in range(runs):
                b.append(_download(h, b_srv.pid, b_ready, job_id))
                m.append(_download(h, m_srv.pid, m_ready, job_id))
        return m, b

    m, b = compare(CHUNK_SIZE, p.download_runs)
    details["local"] = {"mediagen": m, "bare": b}
    rows += _download_rows(f"Download {size_label} local", m, b)
    disk = Row(f"Download {size_label} local vs disk read", rows[0].value, "MiB/s",
               median([r["mib_s"] for r in warm]),
               note=f"disk read warm {median([r['mib_s'] for r in warm]):.0f} MiB/s, cold {cold['mib_s']:.0f} MiB/s")
    rows.append(disk)
    h.log(f"download local: {rows[0].value:.0f} vs {rows[0].baseline:.0f} MiB/s (disk {disk.baseline:.0f})")

    if p.chunk_sweep:
        sweep = {}
        for chunk in CHUNK_SWEEP:
            sm, sb = compare(chunk, 1)
            sweep[chunk] = {"mediagen_mib_s": sm[0]["mib_s"], "bare_mib_s": sb[0]["mib_s"],
                            "server_rss_growth_mib": _growth(sm, "server"),
                            "client_rss_growth_mib": _growth(sm, "client")}
            h.log(f"chunk {chunk // 1024} KiB: mediagen {sm[0]['mib_s']:.0f}, bare {sb[0]['mib_s']:.0f} MiB/s")
        details["chunk_sweep"] = sweep
        best = max(sweep, key=lambda c: sweep[c]["mediagen_mib_s"])
        rows.append(Row("Download chunk sweep: best size", best / 1024, "KiB", CHUNK_SIZE / 1024,
                        note="baseline column: the configured CHUNK_SIZE; details in the JSON"))

    s3_rows, s3_details = _download_s3(h, p, made, size_label)
    rows += s3_rows
    details["s3"] = s3_details
    return rows, details


def _download_s3(h: Harness, p: Profile, made: dict[str, Any], size_label: str) -> tuple[list[Row], dict[str, Any]]:
    label = f"Download {size_label} S3 (moto)"
    try:
        import providers.storage.s3  # noqa: F401
    except ImportError as exc:
        reason = f"providers/storage/s3.py is not there yet ({exc})"
        return [Row(f"{label}", None, "MiB/s", note=f"skipped: {reason}")], {"skipped": reason}
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    from providers.storage.base import CHUNK_SIZE

    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    data = h.path("download-s3-data")
    bucket = "mediagen-bench"
    with h.server("s3", {}, cpus=h.client_cpus) as (_, s3_ready):
        endpoint = s3_ready["url"]
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                              aws_secret_access_key="bench", config=Config(s3={"addressing_style": "path"}))
        client.create_bucket(Bucket=bucket)
        object_key = f"mediagen/{made['key']}"
        client.upload_file(made["file"], bucket, object_key,
                           Config=TransferConfig(multipart_chunksize=64 * MIB, max_concurrency=2))
        # The same job record, in a store of its own that points at S3.
        s3_made = dict(made)
        job_db = data / "mediagen.db"
        job_db.parent.mkdir(parents=True, exist_ok=True)
        _copy_job(Path(h.path("download-data")) / "mediagen.db", job_db, made["job"]["id"])
        settings = _base_settings(data, storage="s3", s3_bucket=bucket, s3_prefix="mediagen/",
                                  s3_endpoint_url=endpoint, s3_region="us-east-1", s3_path_style=True)
        m: list[dict[str, Any]] = []
        b: list[dict[str, Any]] = []
        bare_spec = {"job": s3_made["job"], "chunk_size": CHUNK_SIZE,
                     "s3": {"endpoint": endpoint, "bucket": bucket, "key": object_key}}
        with h.server("mediagen", {"settings": settings}, env=creds) as (m_srv, m_ready), \
                h.server("bare", bare_spec, env=creds) as (b_srv, b_ready):
            for _ in range(max(1, p.download_runs - 1)):
                b.append(_download(h, b_srv.pid, b_ready, made["job"]["id"]))
                m.append(_download(h, m_srv.pid, m_ready, made["job"]["id"]))
    rows = _download_rows(label, m, b)
    for row in rows:
        row.note = (row.note + " " if row.note else "") + "moto shares the client's core"
    h.log(f"download S3: {rows[0].value:.0f} vs {rows[0].baseline:.0f} MiB/s")
    return rows, {"mediagen": m, "bare": b}


def _copy_job(src: Path, dst: Path, job_id: str) -> None:
    from server.store import SQLiteJobStore

    async def copy() -> None:
        a = SQLiteJobStore(src)
        record = await a.get(job_id)
        events = await a.events(job_id)
        await a.close()
        assert record is not None
        b = SQLiteJobStore(dst)
        await b.create(record, events[0])
        await b.close()

    asyncio.run(copy())


# --- 3. Jobs in flight ----------------------------------------------------------------------


def fig_inflight(h: Harness, p: Profile) -> tuple[list[Row], dict[str, Any]]:
    from bench.vendor import runway_available

    data = h.path("inflight-data")
    vendor_spec = {"interval": p.inflight_interval, "min_duration": p.inflight_min, "max_duration": p.inflight_max}
    settings = _base_settings(
        data, poll_interval=p.inflight_interval, poll_interval_max=p.inflight_interval,
        max_concurrent_jobs=max(p.inflight_jobs, 1000), allow_private_urls=True, job_timeout=3600.0,
    )
    details: dict[str, Any] = {"jobs": p.inflight_jobs, "interval_s": p.inflight_interval,
                               "durations_s": [p.inflight_min, p.inflight_max]}
    use_runway = runway_available()
    if use_runway:
        try:
            return _inflight(h, p, data, vendor_spec, settings, details, use_runway=True)
        except RuntimeError as exc:  # the adapter is someone's work in progress: say so, use ours
            if "without answering" not in str(exc):
                raise
            details["runway_failed"] = str(exc)[-500:]
            data = h.path("inflight-data-benchvendor")
            settings = {**settings, "data_dir": str(data)}
    return _inflight(h, p, data, vendor_spec, settings, details, use_runway=False)


def _inflight(h: Harness, p: Profile, data: Path, vendor_spec: dict[str, Any], settings: dict[str, Any],
              details: dict[str, Any], *, use_runway: bool) -> tuple[list[Row], dict[str, Any]]:
    from bench.vendor import fetch_stats

    details["adapter"] = "runway" if use_runway else "benchvendor"
    # The fake vendor and the job-creating client share the load generator's core.
    with h.server("vendor", vendor_spec, cpus=h.client_cpus) as (_, v_ready):
        url = v_ready["url"]
        spec: dict[str, Any] = {"settings": settings}
        env = {"MEDIAGEN_ALLOW_PRIVATE_URLS": "1"}
        if use_runway:
            env.update({"RUNWAY_BASE_URL": url, "RUNWAYML_API_SECRET": "key_bench"})
        else:
            spec["vendor_url"] = url
        provider = "runway" if use_runway else "benchvendor"
        with h.server("mediagen", spec, env=env) as (srv, ready):
            started = time.time()
            cpu_before = cpu_seconds(srv.pid)
            # Creation gets a time budget: a server that cannot keep up must not hold the run for ever.
            created = h.client("generate_many", {"target": _target(ready), "jobs": p.inflight_jobs,
                                                 "provider": provider, "concurrency": 32,
                                                 "max_seconds": max(20.0, p.inflight_jobs / 80)}, timeout=1800)
            h.log(f"in flight: {created['jobs']} of {p.inflight_jobs} jobs created in {created['seconds']:.1f} s")
            # Every job should end within its duration plus a poll or two after creation.
            deadline = started + created["seconds"] + p.inflight_max + 2 * p.inflight_interval + 20
            peak = 0
            stats = fetch_stats(url)
            last_polls, last_change = stats["polls"], time.time()
            stalled = False
            while time.time() < deadline:
                stats = fetch_stats(url)
                peak = max(peak, peak_rss(srv.pid))
                if stats["outputs"] >= created["jobs"]:
                    break
                if stats["polls"] != last_polls:
                    last_polls, last_change = stats["polls"], time.time()
                elif time.time() - last_change > 3 * p.inflight_interval:
                    stalled = True  # no poll reached the vendor for three intervals: it will not recover
                    break
                time.sleep(min(2.0, p.inflight_interval / 2))
            # Let the last jobs commit their end, then count states through the API.
            states = {}
            for _ in range(20 if stats["outputs"] >= created["jobs"] else 1):
                try:
                    states = h.client("count_jobs", {"target": _target(ready), "media": "video",
                                                     "timeout": 30.0}, timeout=60)["states"]
                except RuntimeError:  # the server is too busy to list its jobs: leave them uncounted
                    break
                if states.get("JOB_STATE_SUCCEEDED", 0) >= created["jobs"]:
                    break
                time.sleep(0.5)
            peak = max(peak, peak_rss(srv.pid))
            elapsed = time.time() - started
            cpu = cpu_seconds(srv.pid) - cpu_before
    details.update({"created": created, "vendor": stats, "states": states, "seconds": elapsed, "stalled": stalled,
                    "server_peak_rss": peak, "server_cpu_s": cpu,
                    "server_cpu_ms_per_vendor_call": cpu / max(stats["polls"] + stats["tasks"] + stats["outputs"], 1) * 1000})
    succeeded = states.get("JOB_STATE_SUCCEEDED", 0)
    note = (f"{details['adapter']} adapter; {created['jobs']} of {p.inflight_jobs} jobs created in "
            f"{created['seconds']:.0f} s, at most {stats.get('peak_in_flight', 0)} in flight at once; "
            f"{succeeded} succeeded in {elapsed:.0f} s")
    if stalled:
        note += f"; polls stopped reaching the vendor for {3 * p.inflight_interval:.0f} s (stalled)"
    if details.get("runway_failed"):
        note += " (the runway adapter did not load: " + details["runway_failed"].strip().splitlines()[-1][:120] + ")"
    rows = [
        Row(f"In flight {p.inflight_jobs} jobs: server peak RSS", peak / MIB, "MiB", target="≤ 1024 MiB",
            met=peak <= 1024 * MIB, note=note),
        Row(f"In flight {p.inflight_jobs} jobs: poll lateness p50", stats["lateness_p50_s"] * 1000, "ms",
            note=(f"{stats['lateness_count']} polls measured; jobs created at {created['per_s']:.0f}/s; server CPU "
                  f"{details['server_cpu_ms_per_vendor_call']:.2f} ms per vendor call (creation included)")),
        Row(f"In flight {p.inflight_jobs} jobs: poll lateness p99", stats["lateness_p99_s"] * 1000, "ms",
            target="≤ 1000 ms", met=stats["lateness_p99_s"] <= 1.0,
            note=(f"max {stats['lateness_max_s'] * 1000:.0f} ms; once all jobs were created: p99 "
                  f"{stats.get('lateness_after_creation_p99_s', 0.0) * 1000:.0f} ms over "
                  f"{stats.get('lateness_after_creation_count', 0)} polls")),
        Row(f"In flight {p.inflight_jobs} jobs: all finished", float(succeeded), "jobs", target=f"= {p.inflight_jobs}",
            met=succeeded == p.inflight_jobs and sum(states.values()) == p.inflight_jobs),
    ]
    h.log(f"in flight: peak {peak / MIB:.0f} MiB, lateness p99 {stats['lateness_p99_s'] * 1000:.0f} ms, {note}")
    return rows, details


# --- 4. Watch fan-out ---------------------------------------------------------------------------


def fig_watch(h: Harness, p: Profile) -> tuple[list[Row], dict[str, Any]]:
    data = h.path("watch-data")
    # 10 progress steps over the job's latency, so every job sends a dozen events.
    settings = _base_settings(data, mock_steps=10, poll_interval=0.05, poll_interval_max=0.5)
    rows: list[Row] = []
    details: dict[str, Any] = {}
    # Pre-rendered mock images (see bench.serve.prerendered_registry): a thousand jobs ending
    # together would otherwise measure the mock's PNG renderer holding the GIL, not the fan-out.
    with h.server("mediagen", {"settings": settings, "prerendered_mock": True}) as (_, ready):
        # Many jobs are created at a steady rate below what the server completes end to end
        # (figure 5), and last until the last one is created: the figure measures delivery to
        # a thousand open streams, not a burst of a thousand Generate calls (see README).
        creation = p.watch_jobs / p.watch_rate if p.watch_rate else 0.0
        for label, jobs, watchers, rate, latency in (
            (f"Watch: {p.watchers} watchers on 1 job", 1, p.watchers, 0.0, p.watch_latency),
            (f"Watch: {p.watch_jobs} jobs × 1 watcher", p.watch_jobs, 1, p.watch_rate, p.watch_latency + creation),
        ):
            result = h.client("watch", {"target": _target(ready), "jobs": jobs, "watchers": watchers,
                                        "latency": latency, "rate": rate, "channels": 4}, timeout=600)
            details[label] = result
            complete = result["watchers_incomplete"] == 0 and result["watchers_ended"] == jobs * watchers
            note = (f"{result['events_delivered']} events, {result['live_events']} live; "
                    + (f"jobs created at {rate:.0f}/s, each lasting {latency:.1f} s; " if rate else "")
                    + f"{'every watcher got every event' if complete else str(result['watchers_incomplete']) + ' watchers missed events'}")
            rows.append(Row(f"{label}: delivery p50, all live events", result["p50_ms"], "ms"))
            rows.append(Row(f"{label}: delivery p99, all live events", result["p99_ms"], "ms",
                            target="≤ 100 ms, all delivered", met=result["p99_ms"] <= 100 and complete, note=note))
            rows.append(Row(f"{label}: delivery p99, once all watchers connected", result["steady_p99_ms"], "ms",
                            target="≤ 100 ms", met=result["steady_p99_ms"] <= 100 and complete,
                            note=(f"p50 {result['steady_p50_ms']:.0f} ms over {result['steady_events']} events; "
                                  f"all {jobs * watchers} watchers connected after {result['all_connected_after_s']:.1f} s")))
            h.log(f"{label}: p99 {result['p99_ms']:.1f} ms; {note}")
    return rows, details


# --- 5. End to end ---------------------------------------------------------------------------------


def fig_e2e(h: Harness, p: Profile) -> tuple[list[Row], dict[str, Any]]:
    """Two rows: mock images rendered per job (as shipped) and pre-rendered (the server alone)."""
    rows: list[Row] = []
    details: dict[str, Any] = {}
    for label, prerendered in (("mock renders each image", False), ("pre-rendered mock image", True)):
        data = h.path(f"e2e-data-{int(prerendered)}")
        settings = _base_settings(data, mock_latency=0.0, mock_steps=1, poll_interval=0.01, poll_interval_max=0.05,
                                  max_concurrent_jobs=1000)
        runs = []
        with h.server("mediagen", {"settings": settings, "prerendered_mock": prerendered}) as (srv, ready):
            for _ in range(p.runs):
                cpu_before = cpu_seconds(srv.pid)
                result = h.client("e2e", {"target": _target(ready), "concurrency": p.e2e_concurrency,
                                          "duration": p.e2e_seconds, "warmup": min(1.0, p.e2e_seconds),
                                          "size": 16}, timeout=600)
                result["server_cpu_ms_per_job"] = (cpu_seconds(srv.pid) - cpu_before) / max(result["total_jobs"], 1) * 1000
                runs.append(result)
                h.log(f"e2e ({label}): {result['jobs_per_s']:.0f} jobs/s, failures {result['failures']}")
        failures: dict[str, int] = {}
        for r in runs:
            for k, v in r["failures"].items():
                failures[k] = failures.get(k, 0) + v
        value = median([r["jobs_per_s"] for r in runs])
        rows.append(Row(
            f"End to end ({label}): generate → succeeded → downloaded", value, "jobs/s", target="≥ 200 jobs/s",
            met=value >= 200 and not failures, runs=[r["jobs_per_s"] for r in runs],
            note=(f"16×16 PNG, {p.e2e_concurrency} concurrent users, durable SQLite store; p50 "
                  f"{median([r['p50_ms'] for r in runs]):.0f} ms, p99 {median([r['p99_ms'] for r in runs]):.0f} ms; "
                  f"server CPU {median([r['server_cpu_ms_per_job'] for r in runs]):.1f} ms/job"
                  + (f"; failures {failures}" if failures else ""))))
        details[label] = runs
    return rows, details


# --- 6. Startup and recovery ---------------------------------------------------------------------


RECOVERED_LATENCY = 600.0  # recovered mock jobs keep running: poll once, then wait 120 s


def make_unfinished_jobs(data_dir: Path, count: int) -> None:
    """``count`` mock image jobs stored as a server killed mid-poll leaves them (stage 'polling').

    Each is a 600 s mock job: once resumed it polls (a progress event, sequence 4)
    and then waits, so "every job resumed" is "every job has sequence 4".
    """
    from mediagen.v1 import common_pb2, image_pb2
    from providers.base import VendorHandle
    from providers.mock.provider import MockImage
    from server.config import load_settings
    from server.jobs import new_job_id, timestamp_after
    from server.store import JobRecord, SQLiteJobStore

    mock = MockImage(load_settings(environ={}))

    async def fill() -> None:
        db = SQLiteJobStore(data_dir / "mediagen.db")
        for i in range(count):
            request = image_pb2.GenerateImageRequest(prompt=f"recover {i}", width=16, height=16, provider="mock")
            job_id = new_job_id()
            now = _now_ts()
            job = common_pb2.Job(
                id=job_id, media_type=common_pb2.MEDIA_TYPE_IMAGE, state=common_pb2.JOB_STATE_RUNNING,
                provider="mock", model="mock-1", vendor_job_id=f"mock-{job_id}",
                progress=common_pb2.Progress(phase=common_pb2.JOB_PHASE_VENDOR_QUEUED),
                estimated_cost=mock.estimate_cost(request, "mock-1"), create_time=now, update_time=now,
                start_time=now, expire_time=timestamp_after(3600), last_sequence=3,
            )
            job.attempts.add(provider="mock", model="mock-1", state=common_pb2.JOB_STATE_RUNNING,
                             start_time=now, vendor_job_id=f"mock-{job_id}")
            handle = VendorHandle(f"mock-{job_id}", {"start": time.time(), "latency": RECOVERED_LATENCY, "behavior": "",
                                                     "render": mock.render_args(request, job_id)})
            event = common_pb2.JobEvent(sequence=3, type=common_pb2.JOB_EVENT_TYPE_PROGRESS, event_time=now, job=job)
            await db.create(JobRecord(job=job, request=request.SerializeToString(), stage="polling",
                                      handle=handle.to_json()), event)
        await db.close()

    asyncio.run(fill())


def fig_startup(h: Harness, p: Profile) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    details: dict[str, Any] = {"mediagen": [], "bare": []}
    for i in range(p.runs):
        with h.server("bare", {}) as (_, ready):
            details["bare"].append(ready)
        with h.server("mediagen", {"settings": _base_settings(h.path(f"startup-data-{i}"))}) as (_, ready):
            details["mediagen"].append(ready)
    m = [r["serving_at"] - r["spawned_at"] for r in details["mediagen"]]
    b = [r["serving_at"] - r["spawned_at"] for r in details["bare"]]
    imports = median([r["imported_at"] - r["t0"] for r in details["mediagen"]])
    start = median([r["serving_at"] - r["start_called_at"] for r in details["mediagen"]])
    rows.append(Row("Startup: spawn → serving (empty store)", median(m) * 1000, "ms", median(b) * 1000,
                    runs=[x * 1000 for x in m], baseline_runs=[x * 1000 for x in b],
                    note=f"imports {imports * 1000:.0f} ms, MediagenServer.start() {start * 1000:.0f} ms"))

    data = h.path("recovery-data")
    began = time.time()
    make_unfinished_jobs(data, p.recovery_jobs)
    details["recovery_fill_s"] = time.time() - began
    # Slots for all of them, so "resumed" means every one is back to polling.
    settings = _base_settings(data, max_concurrent_jobs=max(p.recovery_jobs, 1000))
    with h.server("mediagen", {"settings": settings}) as (srv, ready):
        serving = ready["serving_at"] - ready["spawned_at"]
        recover = ready["serving_at"] - ready["start_called_at"]
        counted: dict[str, Any] = {}
        resumed_at = None
        deadline = time.time() + 300
        while time.time() < deadline:
            counted = h.client("count_jobs", {"target": _target(ready), "media": "image", "after_sequence": 3})
            if counted["advanced"] >= p.recovery_jobs:
                resumed_at = time.time()
                break
            time.sleep(0.2)
        peak = peak_rss(srv.pid)
    details["recovery"] = {"ready": ready, "counted": counted, "peak_rss": peak}
    rows.append(Row(f"Recovery: spawn → serving with {p.recovery_jobs} unfinished jobs", serving * 1000, "ms",
                    note=f"{ready['recovered']} resumed; start() incl. loading them {recover * 1000:.0f} ms"))
    total = (resumed_at - ready["serving_at"]) if resumed_at else None
    rows.append(Row(f"Recovery: all {p.recovery_jobs} jobs polling again, after serving", total, "s",
                    target=f"all {p.recovery_jobs}", met=counted.get("advanced", 0) >= p.recovery_jobs,
                    note=(f"{counted.get('advanced', 0)} had polled and saved progress (measured by listing jobs, "
                          f"~0.5 s resolution); peak RSS {peak / MIB:.0f} MiB")))
    h.log(f"startup {median(m) * 1000:.0f} ms (bare {median(b) * 1000:.0f}); recovery serving {serving * 1000:.0f} ms, resumed {total}")
    return rows, details


FIGURES = {
    "getjob": fig_getjob,
    "download": fig_download,
    "inflight": fig_inflight,
    "watch": fig_watch,
    "e2e": fig_e2e,
    "startup": fig_startup,
}

#: Printed under the table for a figure that misses a target: what the profiles found and the
#: plan, in short (bench/README.md, "What was found", has the measurements).
WHY_NOT_MET = {
    "getjob": (
        "grpc.aio alone spends ~180 us of server CPU per GetJob here; mediagen ~225-235 us. A/B runs: "
        "~25 us is the server being larger (the same prebuilt answer costs ~200 us), ~5 us the "
        "auth/metrics wrapper, ~15-20 us validating the id and finding the cached answer (README "
        "section 1). Plan: pre-serialized cached answers; a native profile of the ~25 us (perf)."
    ),
    "inflight": (
        "Polling alone, 10,000 jobs at a 10 s interval is ~1,000 vendor calls a second; one event-loop "
        "core then has nothing to spare (py-spy: httpx/httpcore/h11 ~36% of the loop, asyncio ~15%, our "
        "HTTP layer ~15%, logging ~5%, saving progress ~4%; ~1.1 ms of CPU per poll). Thousands of jobs "
        "meet the target (README section 3); uvloop alone was tried and is not enough. Plan: a leaner "
        "HTTP/1.1 client for polls (<= 0.7 ms per poll all told), then uvloop, or replicas in shared mode."
    ),
    "watch": "See bench/README.md section 4.",
    "e2e": (
        "The event loop is saturated at ~4.5 ms of CPU per job (generate, five saved events, watch, "
        "storage with fsync, probe, download); README section 5."
    ),
    "download": "See bench/README.md section 2.",
    "startup": "See bench/README.md section 6.",
}
