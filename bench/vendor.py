"""A fake polling vendor for the jobs-in-flight figure, and a bench-only adapter for it.

The fake speaks Runway's task API (the shape every polling vendor has):

    POST /v1/text_to_video | /v1/image_to_video   -> {"id": "<task>"}
    GET  /v1/tasks/{id}     -> {"id", "status": PENDING|RUNNING|SUCCEEDED, "progress", "output": [url]}
    DELETE /v1/tasks/{id}   -> 204
    GET  /outputs/{id}.mp4  -> a tiny real MP4 (the runner probes what it stores)
    GET  /bench/stats       -> what the fake saw (JSON)

Task k lasts ``min_duration + (max_duration - min_duration) * frac(k * golden)``
seconds, so jobs finish spread over the whole window. It is a bare asyncio
HTTP/1.1 server (keep-alive, Content-Length bodies) rather than the tests'
threaded fake: at 1,000 polls a second the fake itself must stay cheap, since
it shares the load generator's core.

**Poll lateness** is measured here, where a poll lands: for every poll of a
task after its first, ``arrival - (previous answer sent + poll interval)``.
That is what a vendor would see, and it includes everything mediagen does
between two polls: reading the answer, saving progress, the event loop's own
delay and the HTTP client's pool.

``python -m bench.vendor --spec spec.json [--cpus 1]``; spec: interval,
min_duration, max_duration.

When ``providers/video/runway.py`` is present mediagen polls this fake through
the real Runway adapter (RUNWAY_BASE_URL); otherwise through ``BenchPollingVideo``
below, a bench-only adapter on the shared ``VendorHTTP`` layer that makes the
same calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

GOLDEN = 0.6180339887498949


class FakeVendor:
    def __init__(self, interval: float, min_duration: float, max_duration: float) -> None:
        self.interval = interval
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.tasks: dict[str, dict[str, Any]] = {}
        self.lateness: list[float] = []
        self.lateness_at: list[float] = []  # arrival of each lateness sample
        self.last_submit = 0.0
        self.peak_in_flight = 0  # tasks submitted whose output was not fetched yet, at most
        self.polls = 0
        self.outputs = 0
        self.submits = 0
        self.first_submit = 0.0
        self.last_output = 0.0
        self.port = 0
        self.video = self._tiny_video()

    @staticmethod
    def _tiny_video() -> bytes:
        from providers.mock import media

        fd, path = tempfile.mkstemp(suffix=".mp4")
        os.close(fd)
        try:
            media.render_video(path, prompt="bench", seed=1, duration_seconds=1.0, width=16, height=16, fps=4)
            with open(path, "rb") as handle:
                return handle.read()
        finally:
            os.unlink(path)

    # --- HTTP ---

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                arrival = time.time()
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    if line[:15].lower() == "content-length:":
                        length = int(line[15:].strip())
                body = await reader.readexactly(length) if length else b""
                status, payload, content_type = self.answer(method, target, body, arrival)
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status < 300 else 'Error'}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                if target.startswith("/v1/tasks/") and method == "GET":
                    task = self.tasks.get(target.rsplit("/", 1)[1])
                    if task is not None:
                        task["sent"] = time.time()
        finally:
            writer.close()

    def answer(self, method: str, target: str, body: bytes, arrival: float) -> tuple[int, bytes, str]:
        js = "application/json"
        if method == "POST" and target in ("/v1/text_to_video", "/v1/image_to_video"):
            k = self.submits
            self.submits += 1
            if not self.first_submit:
                self.first_submit = arrival
            self.last_submit = arrival
            self.peak_in_flight = max(self.peak_in_flight, self.submits - self.outputs)
            task_id = f"task-{k:07d}"
            span = self.max_duration - self.min_duration
            self.tasks[task_id] = {
                "created": arrival,
                "duration": self.min_duration + span * ((k * GOLDEN) % 1.0),
                "sent": 0.0,
                "polls": 0,
            }
            return 200, json.dumps({"id": task_id}).encode(), js
        if target.startswith("/v1/tasks/"):
            task_id = target.rsplit("/", 1)[1]
            task = self.tasks.get(task_id)
            if task is None:
                return 404, b'{"error": "Task not found"}', js
            if method == "DELETE":
                task["duration"] = -1.0
                return 204, b"", js
            self.polls += 1
            if task["polls"] and task["sent"]:
                self.lateness.append(arrival - (task["sent"] + self.interval))
                self.lateness_at.append(arrival)
            task["polls"] += 1
            elapsed = arrival - task["created"]
            if task["duration"] < 0:
                answer: dict[str, Any] = {"id": task_id, "status": "CANCELLED"}
            elif elapsed >= task["duration"]:
                answer = {
                    "id": task_id,
                    "status": "SUCCEEDED",
                    "output": [f"http://127.0.0.1:{self.port}/outputs/{task_id}.mp4"],
                }
            elif elapsed < 0.1 * task["duration"]:
                answer = {"id": task_id, "status": "PENDING"}
            else:
                answer = {"id": task_id, "status": "RUNNING", "progress": round(elapsed / task["duration"], 2)}
            return 200, json.dumps(answer).encode(), js
        if method == "GET" and target.startswith("/outputs/"):
            self.outputs += 1
            self.last_output = arrival
            return 200, self.video, "video/mp4"
        if method == "GET" and target == "/bench/stats":
            return 200, json.dumps(self.stats()).encode(), js
        return 404, b'{"error": "no such route"}', js

    def stats(self) -> dict[str, Any]:
        from bench.common import percentile

        late = self.lateness
        # Polls once every task was submitted: polling alone, without job creation.
        after = [lat for lat, at in zip(late, self.lateness_at, strict=True) if at > self.last_submit]
        return {
            "tasks": self.submits,
            "polls": self.polls,
            "outputs": self.outputs,
            "first_submit": self.first_submit,
            "last_output": self.last_output,
            "lateness_count": len(late),
            "lateness_p50_s": percentile(late, 50),
            "lateness_p99_s": percentile(late, 99),
            "lateness_max_s": max(late, default=0.0),
            "peak_in_flight": self.peak_in_flight,
            "lateness_after_creation_count": len(after),
            "lateness_after_creation_p99_s": percentile(after, 99),
        }


async def serve(spec: dict[str, Any]) -> None:
    from bench.common import emit

    vendor = FakeVendor(float(spec["interval"]), float(spec["min_duration"]), float(spec["max_duration"]))
    server = await asyncio.start_server(vendor.handle, "127.0.0.1", 0, backlog=1024)
    vendor.port = server.sockets[0].getsockname()[1]
    emit({"ready": True, "port": vendor.port, "url": f"http://127.0.0.1:{vendor.port}"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def fetch_stats(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/bench/stats", timeout=30) as answer:
        return json.loads(answer.read())


# --- the bench-only adapter (used when providers/video/runway.py is absent) ---------------


def _bench_provider_class():
    from mediagen.v1 import catalog_pb2, common_pb2
    from providers.base import (
        JobContext,
        Output,
        PollResult,
        ProgressInfo,
        Provider,
        VendorHandle,
        VendorState,
        make_cost,
    )
    from providers.http import UrlPolicy, VendorHTTP

    class BenchPollingVideo(Provider):
        """Polls the fake above through the shared HTTP layer, as a real adapter would."""

        name = "benchvendor"
        display_name = "Bench polling vendor (loopback fake)"
        media_type = common_pb2.MEDIA_TYPE_VIDEO

        def __init__(self, base_url: str) -> None:
            self.http = VendorHTTP(self.name, base_url=base_url, url_policy=UrlPolicy(True, True))

        def describe(self) -> catalog_pb2.Provider:
            return catalog_pb2.Provider(
                name=self.name,
                display_name=self.display_name,
                media_type=self.media_type,
                capabilities=["text_to_video"],
                models=[catalog_pb2.Model(name="bench-1", default=True)],
                configured=True,
            )

        def estimate_cost(self, request, model: str) -> common_pb2.Cost:
            return make_cost(1.0, common_pb2.PRICE_UNIT_SECOND, 0, common_pb2.COST_BASIS_ESTIMATED)

        async def submit(self, request, model: str, ctx: JobContext) -> VendorHandle:
            body, _ = await self.http.request_json(
                "POST", "/v1/text_to_video", json={"promptText": request.prompt}, idempotent=False, ctx=ctx
            )
            return VendorHandle(vendor_job_id=body["id"])

        async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
            task, _ = await self.http.request_json(
                "GET", f"/v1/tasks/{handle.vendor_job_id}", idempotent=True, ctx=ctx
            )
            status = task.get("status")
            if status == "SUCCEEDED":
                return PollResult(
                    VendorState.SUCCEEDED, outputs=[Output(url=u, content_type="video/mp4") for u in task["output"]]
                )
            if status == "CANCELLED":
                return PollResult(VendorState.CANCELLED)
            if status == "RUNNING":
                return PollResult(VendorState.RUNNING, ProgressInfo(fraction=task.get("progress"), vendor_status=status))
            return PollResult(VendorState.QUEUED, ProgressInfo(vendor_status=status or ""))

        @contextlib.asynccontextmanager
        async def open_output(self, handle, output, ctx) -> AsyncIterator[AsyncIterator[bytes]]:
            async with self.http.open_stream(output.url, ctx=ctx, max_bytes=64 * 1024 * 1024) as chunks:
                yield chunks

        async def aclose(self) -> None:
            await self.http.aclose()

    return BenchPollingVideo


def runway_available() -> bool:
    try:
        from providers.video.runway import RunwayVideo  # noqa: F401
    except Exception:
        return False
    return True


def bench_registry(settings, vendor_url: str):
    """Mock providers plus the bench-only polling adapter (the fallback without runway.py)."""
    from providers.mock.provider import mock_providers
    from providers.registry import ProviderRegistry

    return ProviderRegistry([*mock_providers(settings), _bench_provider_class()(vendor_url)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True)
    parser.add_argument("--cpus")
    args = parser.parse_args()
    from bench.common import pin

    pin(args.cpus)
    with open(args.spec) as handle:
        spec = json.load(handle)
    asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
