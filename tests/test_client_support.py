"""Test helpers shared by the client and CLI tests (this module holds no tests).

- ``FlakyProxy``: a TCP relay in front of the server that breaks connections
  the way a network does (reset mid-stream), to exercise stream resumption.
- ``Recorder``: a client interceptor that records every request and its
  metadata, and can inject UNAVAILABLE or tamper with download chunks.
- ``serve_in_thread``: a real server on its own event loop in a thread, for
  the blocking client and the CLI, which run from plain test functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from clients import RetryPolicy
from server.app import MediagenServer

# Quick retries so tests that break things stay fast.
FAST_RETRY = RetryPolicy(attempts=4, initial=0.01, maximum=0.05)

MAGIC = {
    "video/mp4": (4, b"ftyp"),
    "audio/wav": (0, b"RIFF"),
    "image/png": (0, b"\x89PNG\r\n\x1a\n"),
}


def assert_media_file(data: bytes, content_type: str) -> None:
    """The bytes start like a real file of that type."""
    offset, magic = MAGIC[content_type]
    assert data[offset : offset + len(magic)] == magic, f"not a {content_type} file"


class FlakyProxy:
    """Relays TCP between the client and the server; ``cut_after`` and ``drop`` break it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.connections = 0
        self.address = ""
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._cut_at: int | None = None
        self._relayed = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.address

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut_after(self, nbytes: int) -> None:
        """Reset the connection once ``nbytes`` more bytes went from the server to the client (once)."""
        self._relayed = 0
        self._cut_at = nbytes

    def drop(self) -> None:
        """Reset every open connection now, as a crashed router would."""
        for pair in list(self._open):
            self._abort(pair)

    def _abort(self, pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        self._open.discard(pair)
        for writer in pair:
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        pair = (writer, up_writer)
        self._open.add(pair)
        await asyncio.gather(
            self._pipe(reader, up_writer, pair, downstream=False),
            self._pipe(up_reader, writer, pair, downstream=True),
        )

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        downstream: bool,
    ) -> None:
        try:
            while data := await source.read(16 * 1024):
                if downstream and self._cut_at is not None:
                    self._relayed += len(data)
                    if self._relayed >= self._cut_at:
                        self._cut_at = None
                        self._abort(pair)
                        return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if pair in self._open:
                self._abort(pair)


@dataclass
class Recorder:
    """Records calls; optionally fails the first unary calls or corrupts downloaded bytes.

    gRPC files an interceptor under one call shape only, so ``interceptors()``
    gives one per shape, both feeding this recorder.
    """

    fail_unary: int = 0
    corrupt_downloads: bool = False
    calls: list[tuple[str, Any, Any]] = field(default_factory=list)

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return [_UnaryRecorder(self), _StreamRecorder(self)]

    def requests(self, method_suffix: str) -> list[Any]:
        return [request for method, request, _ in self.calls if method.endswith(method_suffix)]

    def record(self, details: grpc.aio.ClientCallDetails, request: Any) -> str:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.calls.append((method, request, details.metadata))
        return method


class _UnaryRecorder(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.recorder.record(details, request)
        if self.recorder.fail_unary > 0:
            self.recorder.fail_unary -= 1
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "injected outage"
            )
        return await continuation(details, request)


class _StreamRecorder(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        method = self.recorder.record(details, request)
        call = await continuation(details, request)
        if not (self.recorder.corrupt_downloads and "/Download" in method):
            return call

        async def corrupted() -> AsyncIterator[Any]:
            async for response in call:
                if response.data:
                    response.data = bytes([response.data[0] ^ 0xFF]) + response.data[1:]
                yield response

        return corrupted()


@contextlib.contextmanager
def serve_in_thread(settings: Any) -> Iterator[str]:
    """A real server on its own event loop in a thread; yields its address."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server", daemon=True)
    thread.start()
    server = MediagenServer(settings)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        yield f"127.0.0.1:{server.port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=0.1), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
