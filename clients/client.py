"""The asyncio client: every RPC of the five media services and the catalog,
plus the helpers a caller wants on top (wait, download to a file).

All logic lives here; ``clients.sync.MediagenClient`` runs this client on a
private event loop rather than repeating it.

Reliability rules, in one place:

- Every unary call has a deadline (``timeout``, an overall budget that
  retries share) and is retried only on UNAVAILABLE (see ``clients.retry``).
  Generate is safe to retry because the client always sends a request_id.
- Streams have no overall deadline (a job may run for an hour) but must not go
  quiet: the server sends heartbeats, so ``timeout`` seconds without any
  message means the connection is dead. A broken Watch reconnects after the
  last sequence number seen; a broken Download resumes at the last byte
  written. Both give up after ``retry.attempts`` breaks in a row.
- Uploads (``upload``) stream the file from disk in 1 MiB chunks; the
  returned asset's size and sha256 are checked against what was read. An
  upload broken by UNAVAILABLE is sent again from the start (a broken upload
  leaves nothing on the server). Its deadline grows with the file's size.

Input images given as a local path (``generate(..., input_image="frame.png")``)
are sent inline when the file is at most ``INLINE_INPUT_LIMIT`` (4 MiB, under
gRPC's default message limit), and uploaded first (then referenced by asset
id) when it is larger.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import inspect
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from clients.errors import (
    DataLossError,
    DownloadVerificationError,
    JobFailedError,
    MediagenError,
    NotFoundError,
    OutOfRangeError,
    UnavailableError,
    WaitTimeoutError,
    from_rpc_error,
)
from clients.media import (
    MEDIA_NAMES,
    MediaLike,
    MediaSpec,
    build_generate_request,
    enum_value,
    media_spec,
)
from clients.retry import DEFAULT_RETRY, RetryPolicy
from mediagen.v1 import asset_pb2, asset_pb2_grpc, catalog_pb2, catalog_pb2_grpc, common_pb2

__all__ = [
    "DEFAULT_TARGET",
    "ENDED_STATES",
    "DEFAULT_TIMEOUT",
    "TOKEN_ENV",
    "AsyncMediagenClient",
    "DownloadProgressCallback",
    "INLINE_INPUT_LIMIT",
    "JobProgressCallback",
    "UPLOAD_CHUNK_SIZE",
]

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT = 30.0
TOKEN_ENV = "MEDIAGEN_TOKEN"
USER_AGENT = "mediagen-python/0.1"

#: Bytes per UploadAsset message (the server takes at most 1 MiB).
UPLOAD_CHUNK_SIZE = 1024 * 1024
#: Local input files up to this size are sent inline; larger ones are uploaded as assets.
INLINE_INPUT_LIMIT = 4 * 1024 * 1024
#: An upload's deadline is the client timeout plus one second per this many bytes.
UPLOAD_MIN_RATE = 256 * 1024

ENDED_STATES = frozenset({common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED})

#: Called with the job after every change; may be a coroutine function.
JobProgressCallback = Callable[[common_pb2.Job], Awaitable[object] | object]
#: Called with (bytes written so far, total size) after every chunk; may be a coroutine function.
DownloadProgressCallback = Callable[[int, int], Awaitable[object] | object]


class _StreamBroken(Exception):
    """A stream stopped before its end for a reason worth reconnecting over."""

    def __init__(self, error: MediagenError) -> None:
        super().__init__(str(error))
        self.error = error


async def _notify(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class AsyncMediagenClient:
    """Client of a mediagen server, for asyncio code.

    Args:
        target: "host:port" of the server.
        token: Bearer token sent as ``authorization`` metadata on every call;
            defaults to the ``MEDIAGEN_TOKEN`` environment variable.
        timeout: Seconds each unary call may take, retries included; also the
            longest silence tolerated on a stream.
        tls: Use TLS with the system's root certificates. Implied by any of
            the certificate arguments.
        root_certificates, private_key, certificate_chain: PEM bytes for TLS
            (the last two for mutual TLS).
        credentials: Ready-made channel credentials; overrides the above.
        channel: A channel to use instead of opening one (it is not closed
            by ``close``; target and TLS arguments are then ignored).
        retry: Backoff for retries and stream reconnections.

    Use as ``async with AsyncMediagenClient() as client: ...`` or call ``close``.
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
        channel: grpc.aio.Channel | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self.timeout = timeout
        self.retry = retry
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._owns_channel = channel is None
        if channel is None:
            options = [("grpc.primary_user_agent", USER_AGENT)]
            if credentials is None and (tls or root_certificates or private_key or certificate_chain):
                credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            if credentials is not None:
                channel = grpc.aio.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(target, options=options)
        self._channel = channel
        self._stubs: dict[str, Any] = {}
        self._catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        self._assets = asset_pb2_grpc.AssetServiceStub(channel)

    def __repr__(self) -> str:  # never shows the token
        return f"{type(self).__name__}(target={self.target!r}, timeout={self.timeout!r})"

    async def __aenter__(self) -> AsyncMediagenClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel, if this client opened it."""
        if self._owns_channel:
            await self._channel.close()

    # --- jobs -------------------------------------------------------------

    async def generate(self, media: MediaLike, **fields: Any) -> common_pb2.Job:
        """Start a job and return it at once (QUEUED).

        ``fields`` are those of ``Generate<Media>Request`` (prompt=,
        duration_seconds=, provider=, model=...); see
        ``clients.media.build_generate_request`` for the conversions offered
        (provider_options as a dict, timeout in seconds, input_image as a path,
        URL or bytes, enums by short name). A fresh request_id (AIP-155) is
        sent when none is given, which makes retrying on UNAVAILABLE safe: a
        repeat returns the same job.

        ``input_image`` as a local path: a file of at most ``INLINE_INPUT_LIMIT``
        (4 MiB) goes inline; a larger one is uploaded first (``upload``) and the
        request names the asset.
        """
        spec = media_spec(media)
        image = fields.get("input_image")
        if isinstance(image, str | os.PathLike) and "://" not in str(image):
            size = await asyncio.to_thread(lambda: Path(image).stat().st_size)
            if size > INLINE_INPUT_LIMIT:
                asset = await self.upload(image)
                fields["input_image"] = common_pb2.MediaInput(asset_id=asset.id)
        fields.setdefault("request_id", str(uuid.uuid4()))
        request = build_generate_request(spec, fields)
        response = await self._unary(spec.method(self._stub(spec), "Generate{N}"), request)
        return response.job

    async def get_job(self, media: MediaLike, job_id: str) -> common_pb2.Job:
        """The job as it is now."""
        spec = media_spec(media)
        request = spec.message("Get{N}JobRequest")(job_id=job_id)
        response = await self._unary(spec.method(self._stub(spec), "Get{N}Job"), request)
        return response.job

    async def find_job(self, job_id: str) -> common_pb2.Job:
        """The job with this id, whichever media service holds it (its ``media_type`` says which)."""
        for name in MEDIA_NAMES:
            try:
                return await self.get_job(name, job_id)
            except NotFoundError:
                continue
        raise NotFoundError(
            f"job {job_id} not found in any media service", reason="JOB_NOT_FOUND", metadata={"jobId": job_id}
        )

    async def list_jobs(
        self,
        media: MediaLike,
        state: common_pb2.JobState.ValueType | str | None = None,
        page_size: int = 50,
    ) -> AsyncGenerator[common_pb2.Job, None]:
        """Every job of this media type, newest first, fetching pages as needed.

        ``state`` filters by state: a ``JobState`` value or a name such as "succeeded".
        """
        spec = media_spec(media)
        method = spec.method(self._stub(spec), "List{N}Jobs")
        state_value = enum_value(common_pb2.JobState.DESCRIPTOR, state, "state") if state is not None else 0
        token = ""
        while True:
            request = spec.message("List{N}JobsRequest")(page_size=page_size, page_token=token, state=state_value)
            response = await self._unary(method, request)
            for job in response.jobs:
                yield job
            token = response.next_page_token
            if not token:
                return

    async def cancel(self, media: MediaLike, job_id: str) -> common_pb2.Job:
        """Cancel a job that has not ended; returns the job (an ended job is returned unchanged)."""
        spec = media_spec(media)
        request = spec.message("Cancel{N}JobRequest")(job_id=job_id)
        response = await self._unary(spec.method(self._stub(spec), "Cancel{N}Job"), request)
        return response.job

    async def watch(
        self,
        media: MediaLike,
        job_id: str,
        after_sequence: int = 0,
        *,
        include_heartbeats: bool = False,
    ) -> AsyncGenerator[common_pb2.JobEvent, None]:
        """The job's events after ``after_sequence``, live, until the ENDED event.

        A dropped stream (UNAVAILABLE, a reset connection, silence longer
        than ``timeout``) is reopened after the last sequence number seen, so
        no event is missed or repeated. Heartbeats are skipped unless asked for.
        """
        spec = media_spec(media)
        method = spec.method(self._stub(spec), "Watch{N}Job")
        request_class = spec.message("Watch{N}JobRequest")
        last = after_sequence
        breaks = 0
        while True:
            call = method(request_class(job_id=job_id, after_sequence=last), metadata=self._metadata)
            try:
                async for response in self._responses(call, "watch"):
                    event: common_pb2.JobEvent = response.event
                    if event.type == common_pb2.JOB_EVENT_TYPE_HEARTBEAT:
                        if include_heartbeats:
                            yield event
                        continue
                    breaks = 0
                    last = event.sequence
                    yield event
                    if event.type == common_pb2.JOB_EVENT_TYPE_ENDED:
                        return
            except _StreamBroken as broken:
                error = broken.error
            else:
                # The server closed the stream without the ENDED event: it is
                # shutting down, or the end was before after_sequence.
                job = await self.get_job(spec.media_type, job_id)
                if job.state in ENDED_STATES and job.last_sequence <= last:
                    return
                error = UnavailableError("the watch stream ended before the job did", reason="STREAM_ENDED")
            finally:
                call.cancel()
            breaks += 1
            await self._pause_before_reconnect(breaks, error)

    async def wait(
        self,
        media: MediaLike,
        job_id: str,
        *,
        # The same keyword as the blocking client's, and it also governs the
        # cancel-on-timeout step, which asyncio.timeout around the call could not.
        timeout: float | None = None,  # noqa: ASYNC109
        on_progress: JobProgressCallback | None = None,
        raise_on_failure: bool = True,
        cancel_on_timeout: bool = False,
    ) -> common_pb2.Job:
        """Follow the job until it ends and return it.

        Args:
            timeout: Seconds to wait at most (None: until the server's own job
                timeout ends it). On expiry ``WaitTimeoutError`` is raised and
                the job goes on, unless ``cancel_on_timeout`` (best effort).
            on_progress: Called with the job now, then after every change.
            raise_on_failure: Raise ``JobFailedError`` (carrying the job and its
                decoded error) when the job ends FAILED or CANCELLED, instead
                of returning it.
        """
        spec = media_spec(media)
        seen: list[common_pb2.Job] = []
        try:
            async with asyncio.timeout(timeout) as scope:
                job = await self._follow(spec, job_id, on_progress, seen)
        except TimeoutError:
            if not scope.expired():
                raise
            if cancel_on_timeout:
                with contextlib.suppress(MediagenError):  # best effort: the timeout is the news
                    await self.cancel(spec.media_type, job_id)
            raise WaitTimeoutError(job_id, timeout or 0.0, seen[-1] if seen else None) from None
        if raise_on_failure and job.state != common_pb2.JOB_STATE_SUCCEEDED:
            raise JobFailedError(job)
        return job

    async def _follow(
        self,
        spec: MediaSpec,
        job_id: str,
        on_progress: JobProgressCallback | None,
        seen: list[common_pb2.Job],
    ) -> common_pb2.Job:
        # Read the job first so the watch starts at its newest event rather
        # than replaying the whole history.
        job = await self.get_job(spec.media_type, job_id)
        seen.append(job)
        await _notify(on_progress, job)
        if job.state in ENDED_STATES:
            return job
        events = self.watch(spec.media_type, job_id, after_sequence=job.last_sequence)
        try:
            async for event in events:
                job = event.job
                seen.append(job)
                await _notify(on_progress, job)
        finally:
            await events.aclose()
        return job

    async def generate_and_wait(
        self,
        media: MediaLike,
        *,
        wait_timeout: float | None = None,
        on_progress: JobProgressCallback | None = None,
        raise_on_failure: bool = True,
        **fields: Any,
    ) -> common_pb2.Job:
        """``generate`` then ``wait``; ``fields`` as for ``generate``."""
        job = await self.generate(media, **fields)
        return await self.wait(
            media, job.id, timeout=wait_timeout, on_progress=on_progress, raise_on_failure=raise_on_failure
        )

    async def download_to(
        self,
        media: MediaLike,
        job_id: str,
        path: str | os.PathLike[str],
        *,
        artifact_index: int = 0,
        on_progress: DownloadProgressCallback | None = None,
    ) -> Path:
        """Download an artifact of a succeeded job to ``path``, verified.

        Bytes go to ``<path>.part`` first. A stream that breaks is resumed at
        the last byte written. When the transfer ends, the size and sha256
        announced by the server are checked; only then is the file renamed to
        ``path``. A ``.part`` left by an earlier, interrupted call is resumed
        too; if the result then fails the check, the old bytes may be the
        culprit, so the artifact is fetched once more from the start. A
        mismatch on a full fetch deletes the ``.part`` and raises
        ``DownloadVerificationError``.
        """
        spec = media_spec(media)
        target = Path(path)
        part = target.with_name(target.name + ".part")
        stale_prefix = await asyncio.to_thread(_has_leftover_part, target, part)
        while True:
            try:
                artifact, size, digest = await self._download_part(spec, job_id, artifact_index, part, on_progress)
            except OutOfRangeError:
                if not stale_prefix:
                    raise
                # The leftover .part is longer than the artifact: not ours.
                await asyncio.to_thread(part.unlink)
                stale_prefix = False
                continue
            problem = _verification_problem(artifact, size, digest)
            if problem is None:
                break
            await asyncio.to_thread(part.unlink)
            if stale_prefix:
                stale_prefix = False
                continue
            message, reason = problem
            raise DownloadVerificationError(message, reason=reason, path=str(target))
        await asyncio.to_thread(os.replace, part, target)
        return target

    async def _download_part(
        self,
        spec: MediaSpec,
        job_id: str,
        artifact_index: int,
        part: Path,
        on_progress: DownloadProgressCallback | None,
    ) -> tuple[common_pb2.Artifact, int, str]:
        """Append the artifact to ``part`` from its current size: (artifact, size, sha256 hex)."""
        method = spec.method(self._stub(spec), "Download{N}")
        request_class = spec.message("Download{N}Request")
        hasher = hashlib.sha256()
        file = await asyncio.to_thread(open, part, "a+b")
        try:
            # Hash what an earlier call left, so the check covers the whole file.
            await asyncio.to_thread(_hash_file, file, hasher)
            written = await asyncio.to_thread(file.tell)
            artifact: common_pb2.Artifact | None = None
            breaks = 0
            while True:
                call = method(
                    request_class(job_id=job_id, artifact_index=artifact_index, offset=written),
                    metadata=self._metadata,
                )
                try:
                    async for response in self._responses(call, "download"):
                        if response.HasField("artifact"):
                            artifact = response.artifact
                        if response.offset != written or artifact is None:
                            raise DownloadVerificationError(
                                f"the server sent bytes at offset {response.offset}, expected {written}",
                                reason="DOWNLOAD_OUT_OF_ORDER",
                                path=str(part),
                            )
                        await asyncio.to_thread(file.write, response.data)
                        hasher.update(response.data)
                        written += len(response.data)
                        breaks = 0
                        await _notify(on_progress, written, artifact.size_bytes)
                except _StreamBroken as broken:
                    breaks += 1
                    await self._pause_before_reconnect(breaks, broken.error)
                    continue
                finally:
                    call.cancel()
                if artifact is None:
                    raise DownloadVerificationError(
                        "the download ended before the artifact was described", reason="DOWNLOAD_INCOMPLETE", path=str(part)
                    )
                # Short of the announced size: the stream ended early; resume.
                if written < artifact.size_bytes:
                    breaks += 1
                    await self._pause_before_reconnect(
                        breaks, UnavailableError("the download stream ended early", reason="STREAM_ENDED")
                    )
                    continue
                await asyncio.to_thread(_flush_to_disk, file)
                return artifact, written, hasher.hexdigest()
        finally:
            await asyncio.to_thread(file.close)

    # --- assets ---------------------------------------------------------------

    async def upload(
        self,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        on_progress: DownloadProgressCallback | None = None,
    ) -> asset_pb2.Asset:
        """Upload a local file as an asset (AssetService.UploadAsset) and return it.

        The file is streamed from disk in 1 MiB chunks, never read whole; its
        size is declared up front (so the server refuses a file over its limit
        before any byte is sent). ``content_type`` is optional: the server
        detects it, and refuses a declared type that does not match. The
        asset's size and sha256 as the server stored them are checked against
        what was read; a mismatch deletes the asset and raises DataLossError.
        ``on_progress(sent, total)`` is called after every chunk.

        Use the asset in a request as ``input_image={"asset_id": asset.id}``
        (or ``common_pb2.MediaInput(asset_id=asset.id)``).
        """
        source = Path(path)
        size = await asyncio.to_thread(lambda: source.stat().st_size)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout + size / UPLOAD_MIN_RATE
        retries = 0
        while True:
            hasher = hashlib.sha256()
            sent = [0]
            requests = self._upload_requests(source, size, content_type, hasher, sent, on_progress)
            try:
                response = await self._send_upload(requests, max(deadline - loop.time(), 0.0))
                break
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            finally:
                await requests.aclose()
            if not isinstance(error, UnavailableError):
                raise error
            retries += 1
            delay = self.retry.delay(retries, error.retry_delay)
            if delay is None or loop.time() + delay >= deadline:
                raise error
            await asyncio.sleep(delay)
        asset: asset_pb2.Asset = response.asset
        digest = hasher.hexdigest()
        if asset.size_bytes != sent[0] or asset.sha256 != digest:
            with contextlib.suppress(MediagenError):
                await self.delete_asset(asset.id)
            raise DataLossError(
                f"the server stored {asset.size_bytes} bytes with sha256 {asset.sha256}; "
                f"{sent[0]} bytes with sha256 {digest} were sent",
                reason="UPLOAD_VERIFICATION_FAILED",
                metadata={"path": str(source), "assetId": asset.id},
            )
        return asset

    async def _send_upload(
        self, requests: AsyncIterator[asset_pb2.UploadAssetRequest], rpc_timeout: float
    ) -> asset_pb2.UploadAssetResponse:
        """One UploadAsset call, written message by message.

        A server that refuses the upload says so at once in the response header
        ``mediagen-upload-refused`` and sends its status only after the client
        stops: writing on would make the next write fail, and gRPC would then
        report that failure instead of the server's reason. So the writing stops
        as soon as headers (or the end) arrive, and the call's status is awaited.
        """
        call = self._assets.UploadAsset(timeout=rpc_timeout, metadata=self._metadata)
        headers = asyncio.ensure_future(call.initial_metadata())
        try:
            async for request in requests:
                if headers.done() or call.done():
                    break  # refused: the status follows once we stop
                try:
                    await call.write(request)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    break  # the call ended: its status says why
            if not call.done():
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await call.done_writing()
            response: asset_pb2.UploadAssetResponse = await call
            return response
        finally:
            headers.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await headers

    async def _upload_requests(
        self,
        source: Path,
        size: int,
        content_type: str | None,
        hasher: Any,
        sent: list[int],
        on_progress: DownloadProgressCallback | None,
    ) -> AsyncGenerator[asset_pb2.UploadAssetRequest, None]:
        metadata = asset_pb2.UploadAssetMetadata(filename=source.name, size_bytes=size, content_type=content_type or "")
        yield asset_pb2.UploadAssetRequest(metadata=metadata)
        file = await asyncio.to_thread(open, source, "rb")
        try:
            while chunk := await asyncio.to_thread(file.read, UPLOAD_CHUNK_SIZE):
                hasher.update(chunk)
                sent[0] += len(chunk)
                yield asset_pb2.UploadAssetRequest(chunk=chunk)
                await _notify(on_progress, sent[0], size)
        finally:
            await asyncio.to_thread(file.close)

    async def get_asset(self, asset_id: str) -> asset_pb2.Asset:
        """An uploaded asset (NotFoundError when unknown, expired or another tenant's)."""
        response = await self._unary(self._assets.GetAsset, asset_pb2.GetAssetRequest(asset_id=asset_id))
        return response.asset

    async def delete_asset(self, asset_id: str) -> None:
        """Delete an uploaded asset and its bytes."""
        await self._unary(self._assets.DeleteAsset, asset_pb2.DeleteAssetRequest(asset_id=asset_id))

    # --- catalog ------------------------------------------------------------

    async def providers(self, media: MediaLike | None = None) -> list[catalog_pb2.Provider]:
        """Providers the server knows, of one media type or all."""
        media_type = media_spec(media).media_type if media is not None else common_pb2.MEDIA_TYPE_UNSPECIFIED
        response = await self._unary(
            self._catalog.ListProviders, catalog_pb2.ListProvidersRequest(media_type=media_type)
        )
        return list(response.providers)

    # --- plumbing -----------------------------------------------------------

    def _stub(self, spec: MediaSpec) -> Any:
        stub = self._stubs.get(spec.name)
        if stub is None:
            stub = self._stubs[spec.name] = spec.stub(self._channel)
        return stub

    async def _unary(self, method: Any, request: Any) -> Any:
        """One unary call under an overall deadline, retried on UNAVAILABLE only."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        retries = 0
        while True:
            try:
                return await method(request, timeout=max(deadline - loop.time(), 0.0), metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
            if not isinstance(error, UnavailableError):
                raise error
            retries += 1
            delay = self.retry.delay(retries, error.retry_delay)
            if delay is None or loop.time() + delay >= deadline:
                raise error
            await asyncio.sleep(delay)

    async def _responses(self, call: Any, what: str) -> AsyncIterator[Any]:
        """The stream's messages; raises ``_StreamBroken`` for breaks worth reconnecting over."""
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    response = await call.read()
            except TimeoutError:
                raise _StreamBroken(
                    UnavailableError(f"the {what} stream was silent for {self.timeout:g} s", reason="STREAM_IDLE")
                ) from None
            except grpc.aio.AioRpcError as exc:
                error = from_rpc_error(exc)
                if isinstance(error, UnavailableError):
                    raise _StreamBroken(error) from None
                raise error from None
            if response is grpc.aio.EOF:
                return
            yield response

    async def _pause_before_reconnect(self, breaks: int, error: MediagenError) -> None:
        delay = self.retry.delay(breaks, error.retry_delay)
        if delay is None:
            raise error
        await asyncio.sleep(delay)


def _has_leftover_part(target: Path, part: Path) -> bool:
    """Whether an earlier download left bytes in ``part``; refuses a folder as ``target``."""
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "the download path is a folder", str(target))
    return part.exists() and part.stat().st_size > 0


def _hash_file(file: Any, hasher: Any) -> None:
    file.seek(0)
    while chunk := file.read(1024 * 1024):
        hasher.update(chunk)


def _flush_to_disk(file: Any) -> None:
    file.flush()
    os.fsync(file.fileno())


def _verification_problem(artifact: common_pb2.Artifact, size: int, digest: str) -> tuple[str, str] | None:
    """(message, reason) when the bytes are not the announced artifact, else None."""
    if size != artifact.size_bytes:
        return f"downloaded {size} bytes, the server announced {artifact.size_bytes}", "DOWNLOAD_SIZE_MISMATCH"
    if artifact.sha256 and digest != artifact.sha256.lower():
        return f"sha256 {digest} does not match the announced {artifact.sha256}", "DOWNLOAD_CHECKSUM_MISMATCH"
    return None

