"""Shared fixtures: a real mediagen server on a free loopback port, and a channel to it."""

from __future__ import annotations

import os

import grpc
import pytest

from server.app import MediagenServer
from server.config import load_settings
from server.logs import configure_logging

# Tests talk to fake vendors on 127.0.0.1 over plain http.
os.environ.setdefault("MEDIAGEN_ALLOW_PRIVATE_URLS", "1")
configure_logging("warning", "console")


def make_settings(tmp_path, **overrides):
    values = dict(
        listen="127.0.0.1:0",
        data_dir=str(tmp_path / "data"),
        mock_latency=0.0,
        mock_steps=2,
        poll_interval=0.01,
        poll_interval_max=0.05,
        heartbeat_interval=0.5,
        shutdown_grace=0.5,
        allow_private_urls=True,
        metrics_listen="",
    )
    values.update(overrides)
    return load_settings(environ={}, **values)


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture
async def server(settings):
    srv = MediagenServer(settings)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop(grace=0.1)


@pytest.fixture
async def channel(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


class ThreadedServer:
    """A mediagen server on its own event loop in a thread, for synchronous tests."""

    def __init__(self, settings) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.server = MediagenServer(settings)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self.call(self.server.start())

    def call(self, coroutine):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def close(self) -> None:
        self.call(self.server.stop(grace=0.1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
