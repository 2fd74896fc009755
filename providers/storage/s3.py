"""S3 storage (AWS S3 or any S3-compatible store) through boto3.

Objects live at ``s3://<bucket>/<prefix>/<key>``; keys follow the same
``safe_key`` rules as local storage, so they cannot leave the prefix.

boto3 is synchronous. Every call runs on a small dedicated thread pool, so a
slow upload never stalls the event loop, and the pool bounds how many S3
calls this process makes at once.

Writes are all or nothing:

- A stream that fits in one part (8 MiB, more for huge ``max_bytes`` so that
  10,000 parts always suffice) is sent with one PutObject. Larger streams go
  through a multipart upload, one part at a time: at most one part (plus one
  chunk) is buffered in memory, and the part is sent from that buffer without
  a copy.
- The SHA-256 of the whole object is computed while streaming. A single
  PutObject carries it as ``x-amz-meta-sha256`` and as ``ChecksumSHA256``
  (S3 checks it). A multipart upload cannot carry metadata known only at the
  end: each part carries its own ``ChecksumSHA256`` (S3 checks each), and the
  whole-object hash is added as the object tag ``sha256`` after completion.
  That tag is best effort (it needs s3:PutObjectTagging); the hash is always
  in the job's Artifact.
- On any failure or cancellation (including OutputTooLarge), the multipart
  upload is aborted, or an object whose PutObject or CompleteMultipartUpload
  was in flight is deleted once that call returns, so that neither an object
  nor a dangling multipart upload remains.

Credentials come from boto3's usual chain (environment, shared files, IAM
roles). ``endpoint_url`` points at an S3-compatible store; ``path_style``
forces path-style addressing (needed by most of them).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import io
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from providers.errors import InvalidStorageKey, NotFound, OutputTooLarge, StorageError
from providers.storage.base import CHUNK_SIZE, Storage, StoredObject, safe_key

log = structlog.get_logger("mediagen.storage.s3")

T = TypeVar("T")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
#: SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: Threads for S3 calls (each in-flight upload or download holds one per call).
MAX_WORKERS = 8
#: Read-ahead of the seekable reader used for probing.
PROBE_BUFFER_SIZE = 1024 * 1024

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_NOT_RETRYABLE_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "EntityTooLarge",
        "InvalidArgument",
    }
)


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _storage_error(exc: BaseException, operation: str, bucket: str) -> StorageError:
    code = _error_code(exc) or type(exc).__name__
    retryable = code not in _NOT_RETRYABLE_CODES
    return StorageError(
        f"S3 {operation} failed ({code})",
        metadata={"bucket": bucket, "s3ErrorCode": code},
        retryable=retryable,
    )


_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def _shared_session() -> boto3.session.Session:
    """One boto3 session for every S3Storage: it caches the service models (~0.5 s per load).

    Sessions are not thread-safe, so clients are made under a lock; the clients
    themselves are.
    """
    global _session
    if _session is None:
        _session = boto3.session.Session()
    return _session


def _normalise_prefix(prefix: str) -> str:
    prefix = (prefix or "").strip("/")
    if prefix:
        safe_key(prefix)
    return prefix


class S3Storage(Storage):
    """Artifacts in an S3 bucket under a key prefix. See the module doc."""

    kind = "s3"
    can_presign = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        client: Any = None,
        part_size: int = PART_SIZE,
        max_workers: int = MAX_WORKERS,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 bucket is required")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        self.bucket = bucket
        try:
            self.prefix = _normalise_prefix(prefix)
        except InvalidStorageKey as exc:
            raise ValueError(f"s3_prefix {prefix!r} is not a usable key prefix: {exc.message}") from None
        self.part_size = part_size
        if client is None:
            config = Config(
                signature_version="s3v4",
                s3={"addressing_style": "path" if path_style else "auto"},
                retries={"max_attempts": 5, "mode": "standard"},
                max_pool_connections=max_workers * 2,
            )
            with _session_lock:
                client = _shared_session().client(
                    "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
                )
        self.client = client
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="mediagen-s3"
        )

    @classmethod
    def from_settings(cls, settings) -> S3Storage:
        return cls(
            settings.s3_bucket,
            settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region or None,
            path_style=bool(settings.s3_path_style),
        )

    # --- keys ---------------------------------------------------------------

    def object_key(self, key: str) -> str:
        """The S3 object key for a storage key (checked: it cannot leave the prefix)."""
        safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    # --- plumbing -----------------------------------------------------------

    def _submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        return self._executor.submit(functools.partial(fn, *args, **kwargs))

    async def _call(self, operation: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.wrap_future(self._submit(fn, *args, **kwargs))
        except (BotoCoreError, ClientError) as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise
            raise _storage_error(exc, operation, self.bucket) from exc

    def _part_size_for(self, max_bytes: int | None) -> int:
        if not max_bytes:
            return self.part_size
        return max(self.part_size, math.ceil(max_bytes / MAX_PARTS))

    # --- writing --------------------------------------------------------------

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int | None = None
    ) -> StoredObject:
        upload = _Upload(self, self.object_key(key), content_type or "application/octet-stream")
        part_size = self._part_size_for(max_bytes)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise OutputTooLarge(f"output is larger than the {max_bytes} byte limit")
                digest.update(chunk)
                buffer += chunk
                if len(buffer) >= part_size:
                    # Hand the buffer itself to the upload (no copy of the part);
                    # only the few bytes past the part boundary move to a new one.
                    part, buffer = buffer, buffer[part_size:]
                    del part[part_size:]
                    await upload.part(part)
            sha256 = digest.hexdigest()
            if upload.upload_id is None:
                await upload.put(bytes(buffer), digest.digest())
            else:
                if buffer:
                    await upload.part(buffer)
                await upload.complete()
                await upload.tag_sha256(sha256)
        except BaseException as exc:
            # Shielded: a second cancellation must not cut the clean-up short.
            await asyncio.shield(upload.discard())
            if isinstance(exc, (BotoCoreError, ClientError)):
                raise _storage_error(exc, "upload", self.bucket) from exc
            raise
        return StoredObject(key=key, uri=self.uri(key), size_bytes=size, sha256=sha256)

    # --- reading --------------------------------------------------------------

    async def read(self, key: str, *, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        object_key = self.object_key(key)
        extra = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        try:
            response = await self._call("download", self.client.get_object, Bucket=self.bucket, Key=object_key, **extra)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise NotFound(f"artifact {key} is not in storage", reason="ARTIFACT_NOT_FOUND") from exc
            raise
        except StorageError as exc:
            if offset > 0 and exc.metadata.get("s3ErrorCode") == "InvalidRange":
                return  # offset == size: nothing left to send
            raise
        body = response["Body"]
        try:
            while True:
                try:
                    chunk = await asyncio.wrap_future(self._submit(body.read, chunk_size))
                except (BotoCoreError, ClientError) as exc:
                    raise _storage_error(exc, "download", self.bucket) from exc
                if not chunk:
                    return
                yield chunk
        finally:
            with contextlib.suppress(RuntimeError):  # the pool is already shut down
                self._submit(body.close)

    async def size(self, key: str) -> int:
        object_key = self.object_key(key)
        try:
            head = await self._call("head", self.client.head_object, Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            raise NotFound(f"artifact {key} is not in storage", reason="ARTIFACT_NOT_FOUND") from exc
        return int(head["ContentLength"])

    async def delete(self, key: str) -> None:
        object_key = self.object_key(key)
        with contextlib.suppress(ClientError):  # absent is fine
            await self._call("delete", self.client.delete_object, Bucket=self.bucket, Key=object_key)

    @contextlib.contextmanager
    def open_file(self, key: str) -> Iterator[BinaryIO]:  # type: ignore[override]
        """A seekable, buffered reader doing ranged GETs (blocking: call it in a thread)."""
        object_key = self.object_key(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                raise NotFound(f"artifact {key} is not in storage", reason="ARTIFACT_NOT_FOUND") from exc
            raise _storage_error(exc, "head", self.bucket) from exc
        except BotoCoreError as exc:
            raise _storage_error(exc, "head", self.bucket) from exc
        raw = _RangedReader(self.client, self.bucket, object_key, int(head["ContentLength"]), head.get("ETag"))
        reader = io.BufferedReader(raw, buffer_size=PROBE_BUFFER_SIZE)
        try:
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    async def presign(self, key: str, ttl_seconds: int) -> str | None:
        object_key = self.object_key(key)
        expires = max(1, min(int(ttl_seconds), MAX_PRESIGN_SECONDS))
        # Purely local signing, but resolving credentials may touch the network (IMDS).
        return await self._call(
            "presign",
            self.client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": object_key},
            ExpiresIn=expires,
        )

    async def aclose(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)


class _Upload:
    """One object being written: a PutObject or a multipart upload, and how to undo it."""

    def __init__(self, storage: S3Storage, key: str, content_type: str) -> None:
        self.storage = storage
        self.client = storage.client
        self.bucket = storage.bucket
        self.key = key
        self.content_type = content_type
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        # Set (on the worker thread) when a call that makes the object visible was sent.
        self.may_exist = False
        self._inflight: concurrent.futures.Future[Any] | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        self._inflight = self.storage._submit(fn)
        return await asyncio.wrap_future(self._inflight)

    async def part(self, data: bytes | bytearray) -> None:
        if self.upload_id is None:
            await self._run(self._create)
        await self._run(functools.partial(self._upload_part, len(self.parts) + 1, data))

    def _create(self) -> None:
        answer = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self.key, ContentType=self.content_type, ChecksumAlgorithm="SHA256"
        )
        self.upload_id = answer["UploadId"]

    def _upload_part(self, number: int, data: bytes | bytearray) -> None:
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})

    async def complete(self) -> None:
        await self._run(self._complete)

    def _complete(self) -> None:
        self.may_exist = True
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )
        self.upload_id = None  # completed: nothing left to abort

    async def put(self, data: bytes, sha256: bytes) -> None:
        await self._run(functools.partial(self._put, data, sha256))

    def _put(self, data: bytes, sha256: bytes) -> None:
        self.may_exist = True
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key,
            Body=data,
            ContentType=self.content_type,
            Metadata={"sha256": sha256.hex()},
            ChecksumSHA256=base64.b64encode(sha256).decode("ascii"),
        )

    async def tag_sha256(self, sha256: str) -> None:
        try:
            await self._run(
                functools.partial(
                    self.client.put_object_tagging,
                    Bucket=self.bucket,
                    Key=self.key,
                    Tagging={"TagSet": [{"Key": "sha256", "Value": sha256}]},
                )
            )
        except (BotoCoreError, ClientError) as exc:
            log.warning("could not tag the object with its sha256", key=self.key, error=_error_code(exc) or str(exc))

    async def discard(self) -> None:
        """Undo whatever this upload left: wait for the call in flight, then abort or delete."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.to_thread(concurrent.futures.wait, [self._inflight])
        try:
            await asyncio.wrap_future(self.storage._submit(self._discard))
        except Exception as exc:  # the original failure matters more
            log.warning("could not clean up a failed S3 upload", key=self.key, error=str(exc))

    def _discard(self) -> None:
        if self.upload_id is not None:
            with contextlib.suppress(ClientError):  # NoSuchUpload: already gone
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            self.upload_id = None
        if self.may_exist:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


class _RangedReader(io.RawIOBase):
    """A seekable read-only file over one S3 object; each read is a ranged GET.

    Wrapped in a BufferedReader by ``open_file`` so that the many small reads
    of a media prober become few GETs. Pinned to the object's ETag, so a
    concurrent overwrite cannot mix two versions.
    """

    def __init__(self, client: Any, bucket: str, key: str, size: int, etag: str | None) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.size = size
        self.etag = etag
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self.position + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError("negative seek position")
        self.position = target
        return target

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.position >= self.size or not len(view):
            return 0
        end = min(self.position + len(view), self.size) - 1
        extra = {"IfMatch": self.etag} if self.etag else {}
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-{end}", **extra
            )
            data = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise OSError(f"S3 ranged read failed ({_error_code(exc) or type(exc).__name__})") from exc
        count = len(data)
        view[:count] = data
        self.position += count
        return count
