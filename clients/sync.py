"""The blocking client: ``AsyncMediagenClient`` driven from plain code.

It is not a second implementation. Each client owns a private event loop
running in a daemon thread; every method submits the async client's
coroutine to that loop and blocks on the result, and iterators are bridged
one item at a time. Several threads may share one client.

Callbacks (``on_progress``) run on the client's loop thread, so they should be
quick and must not call back into the same client.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from clients.client import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    AsyncMediagenClient,
    DownloadProgressCallback,
    JobProgressCallback,
)
from clients.media import MediaLike
from clients.retry import DEFAULT_RETRY, RetryPolicy
from mediagen.v1 import asset_pb2, catalog_pb2, common_pb2

__all__ = ["MediagenClient"]

T = TypeVar("T")
_END = object()


async def _next_or_end(iterator: AsyncIterator[T]) -> T | object:
    # StopAsyncIteration does not cross a Future cleanly; a sentinel does.
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return _END


class MediagenClient:
    """Blocking client of a mediagen server; same arguments and methods as
    ``AsyncMediagenClient`` (except ``channel``: an aio channel belongs to one
    event loop, so this client always opens its own).

    Use as ``with MediagenClient() as client: ...`` or call ``close``.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mediagen-client", daemon=True)
        self._thread.start()

        async def open_client() -> AsyncMediagenClient:
            # The aio channel binds to the loop it is created on: create it there.
            return AsyncMediagenClient(
                target,
                token=token,
                timeout=timeout,
                tls=tls,
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
                credentials=credentials,
                retry=retry,
            )

        try:
            self._client = self._run(open_client())
        except BaseException:
            self._stop_loop()
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self._client.target!r}, timeout={self._client.timeout!r})"

    def __enter__(self) -> MediagenClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the loop thread. Idempotent."""
        if self._closed:
            return
        try:
            self._run(self._client.close())
            self._run(self._loop.shutdown_asyncgens())
        finally:
            self._closed = True
            self._stop_loop()

    @property
    def target(self) -> str:
        return self._client.target

    @property
    def timeout(self) -> float:
        return self._client.timeout

    # --- jobs (see AsyncMediagenClient for the full descriptions) -------------

    def generate(self, media: MediaLike, **fields: Any) -> common_pb2.Job:
        """Start a job and return it at once; always idempotent (request_id)."""
        return self._run(self._client.generate(media, **fields))

    def get_job(self, media: MediaLike, job_id: str) -> common_pb2.Job:
        return self._run(self._client.get_job(media, job_id))

    def find_job(self, job_id: str) -> common_pb2.Job:
        """The job with this id, whichever media service holds it."""
        return self._run(self._client.find_job(job_id))

    def list_jobs(
        self,
        media: MediaLike,
        state: common_pb2.JobState.ValueType | str | None = None,
        page_size: int = 50,
    ) -> Iterator[common_pb2.Job]:
        """Every job of this media type, newest first; pages fetched as the iteration goes."""
        return self._iterate(self._client.list_jobs(media, state, page_size))

    def cancel(self, media: MediaLike, job_id: str) -> common_pb2.Job:
        return self._run(self._client.cancel(media, job_id))

    def watch(
        self,
        media: MediaLike,
        job_id: str,
        after_sequence: int = 0,
        *,
        include_heartbeats: bool = False,
    ) -> Iterator[common_pb2.JobEvent]:
        """The job's events until it ends, reconnecting after drops."""
        return self._iterate(
            self._client.watch(media, job_id, after_sequence, include_heartbeats=include_heartbeats)
        )

    def wait(
        self,
        media: MediaLike,
        job_id: str,
        *,
        timeout: float | None = None,
        on_progress: JobProgressCallback | None = None,
        raise_on_failure: bool = True,
        cancel_on_timeout: bool = False,
    ) -> common_pb2.Job:
        """Follow the job until it ends and return it (``JobFailedError`` if it did not succeed)."""
        return self._run(
            self._client.wait(
                media,
                job_id,
                timeout=timeout,
                on_progress=on_progress,
                raise_on_failure=raise_on_failure,
                cancel_on_timeout=cancel_on_timeout,
            )
        )

    def generate_and_wait(
        self,
        media: MediaLike,
        *,
        wait_timeout: float | None = None,
        on_progress: JobProgressCallback | None = None,
        raise_on_failure: bool = True,
        **fields: Any,
    ) -> common_pb2.Job:
        return self._run(
            self._client.generate_and_wait(
                media, wait_timeout=wait_timeout, on_progress=on_progress, raise_on_failure=raise_on_failure, **fields
            )
        )

    def download_to(
        self,
        media: MediaLike,
        job_id: str,
        path: str | os.PathLike[str],
        *,
        artifact_index: int = 0,
        on_progress: DownloadProgressCallback | None = None,
    ) -> Path:
        """Download an artifact to ``path`` through ``<path>.part``, resumed and verified."""
        return self._run(
            self._client.download_to(media, job_id, path, artifact_index=artifact_index, on_progress=on_progress)
        )

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        on_progress: DownloadProgressCallback | None = None,
    ) -> asset_pb2.Asset:
        """Upload a local file as an asset, streamed in 1 MiB chunks and verified (see the async client)."""
        return self._run(self._client.upload(path, content_type=content_type, on_progress=on_progress))

    def get_asset(self, asset_id: str) -> asset_pb2.Asset:
        return self._run(self._client.get_asset(asset_id))

    def delete_asset(self, asset_id: str) -> None:
        self._run(self._client.delete_asset(asset_id))

    def providers(self, media: MediaLike | None = None) -> list[catalog_pb2.Provider]:
        return self._run(self._client.providers(media))

    # --- the bridge -------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed or threading.current_thread() is self._thread:
            coro.close()
            # From the loop thread (a callback), waiting on the loop would deadlock.
            raise RuntimeError("the client is closed" if self._closed else "a callback cannot call its own client")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C (or any error in this thread) must not leave the call running.
            future.cancel()
            raise

    def _iterate(self, iterator: AsyncGenerator[T, None]) -> Iterator[T]:
        try:
            while True:
                item = self._run(_next_or_end(iterator))
                if item is _END:
                    return
                yield cast(T, item)
        finally:
            # Stopping early must close the stream on the server too.
            if not self._closed:
                self._run(iterator.aclose())

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
