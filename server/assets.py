"""Assets: inputs uploaded once (AssetService), then referenced by id in Generate.

An upload is a client stream: ``UploadAssetMetadata`` first, then chunks of at
most 1 MiB. The limits are enforced while the bytes arrive, never after:

- ``max_asset_bytes`` (default 64 MiB): a declared size above it is refused
  before any byte is read; otherwise the upload is refused on the chunk that
  passes it.
- type: the magic number of the first bytes must be PNG, JPEG or WebP (audio
  can join through ``providers.inputs.ASSET_TYPES``); anything else is refused
  on the first chunk.
- pixels: the image header (PNG IHDR, JPEG frame header, WebP VP8*) gives the
  size; more than 40 megapixels is refused as soon as the header is in.

Every refusal is INVALID_ARGUMENT with a BadRequest naming the field and an
ErrorInfo reason that names the limit (ASSET_TOO_LARGE, ASSET_TOO_MANY_PIXELS,
ASSET_TYPE_UNSUPPORTED) with the limit in its metadata. INVALID_ARGUMENT
rather than RESOURCE_EXHAUSTED for the size: the limit is a fixed property of
the request, not a quota that frees up, and clients retry RESOURCE_EXHAUSTED.

A refusal reaches the client at once as a response header,
``mediagen-upload-refused: <reason>``, and the status follows once the client
has stopped sending (half-closed), or after at most ``SETTLE_SECONDS`` /
``SETTLE_BYTES`` of discarded data. Finishing the call while the client is
still writing would make its next write fail, and gRPC's Python client then
reports that failure (INTERNAL, "Internal error from Core") instead of the
server's status; a client that stops on the header always gets the real one.
The Python and Node clients do.

The bytes stream into the configured storage (``<tenant or default>/assets/
<id><ext>``) through ``Storage.write``, which keeps nothing of a write that
fails, so a refused or broken upload leaves nothing behind. The asset's
metadata is stored in the job store once the bytes are. An asset belongs to
the tenant that uploaded it: another tenant gets NOT_FOUND, in GetAsset and
in Generate alike. It expires ``retention`` after its upload, like artifacts
after their job; the sweep deletes it ``max_job_timeout`` later still, so a
job admitted just before the expiry can still read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import structlog
from google.protobuf.message import Message

from mediagen.v1 import asset_pb2, asset_pb2_grpc
from providers.errors import FieldViolation, InvalidArgument, NotFound
from providers.http import UrlPolicy, VendorHTTP
from providers.inputs import (
    ASSET_TYPES,
    HEAD_LIMIT,
    IMAGE_TYPES,
    MAX_INPUT_PIXELS,
    AssetInput,
    InlineInput,
    InputMedia,
    MediaHead,
    UnreadableMedia,
    UnsupportedMedia,
    UrlInput,
    detect_head,
    normalise_type,
)
from providers.storage import Storage
from server.auth import current_tenant
from server.jobs import now_timestamp
from server.rpc_errors import rpc

if TYPE_CHECKING:
    from providers.base import JobContext
    from server.config import Settings
    from server.store import AssetRecord, JobStore

log = structlog.get_logger("mediagen.assets")

ASSET_ID = re.compile(r"^asset_[0-9a-f]{32}$")
MAX_CHUNK_BYTES = 1024 * 1024
MAX_FILENAME_CHARS = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Expired assets removed per sweep.
SWEEP_BATCH = 500
#: Response header that announces a refusal while the client may still be sending.
REFUSED_HEADER = "mediagen-upload-refused"
#: After a refusal, how long and how much the server keeps reading (and discarding)
#: so that the client can stop before the status is sent.
SETTLE_SECONDS = 2.0
SETTLE_BYTES = 16 * 1024 * 1024


def new_asset_id() -> str:
    return f"asset_{uuid.uuid4().hex}"


def asset_key(tenant: str, asset_id: str, content_type: str) -> str:
    return f"{tenant or 'default'}/assets/{asset_id}{IMAGE_TYPES.get(content_type, '.bin')}"


def _names(types: tuple[str, ...]) -> str:
    return ", ".join(t.split("/")[1].upper() for t in types)


class _Upload:
    """One upload being checked: the limits, applied message by message."""

    def __init__(self, requests: AsyncIterator[Message], *, max_bytes: int, max_pixels: int) -> None:
        self.requests = aiter(requests)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.received = 0
        self.digest = hashlib.sha256()
        self.metadata = asset_pb2.UploadAssetMetadata()
        self.head: MediaHead | None = None

    # --- refusals --------------------------------------------------------------

    def too_large(self, size: int, field: str) -> InvalidArgument:
        return InvalidArgument(
            f"{field}: the asset is larger than the server's limit of {self.max_bytes} bytes "
            f"(max_asset_bytes){f'; {size} declared' if field.startswith('metadata') else ''}",
            reason="ASSET_TOO_LARGE",
            metadata={"limit": "max_asset_bytes", "maxBytes": str(self.max_bytes), "field": field},
            field_violations=[FieldViolation(field, f"at most {self.max_bytes} bytes (max_asset_bytes)", "TOO_LARGE")],
        )

    def too_many_pixels(self, head: MediaHead) -> InvalidArgument:
        return InvalidArgument(
            f"chunk: the image is {head.width}x{head.height} ({head.pixels} pixels); "
            f"at most {self.max_pixels} pixels are accepted",
            reason="ASSET_TOO_MANY_PIXELS",
            metadata={"limit": "max_input_pixels", "maxPixels": str(self.max_pixels), "field": "chunk"},
            field_violations=[FieldViolation("chunk", f"at most {self.max_pixels} pixels", "TOO_LARGE")],
        )

    @staticmethod
    def unsupported(found: str, field: str = "chunk") -> InvalidArgument:
        accepted = _names(ASSET_TYPES)
        return InvalidArgument(
            f"{field}: {found or 'the file'} is not accepted; assets must be {accepted}",
            reason="ASSET_TYPE_UNSUPPORTED",
            metadata={"limit": "content_type", "accepted": ",".join(ASSET_TYPES), "found": found, "field": field},
            field_violations=[FieldViolation(field, f"must be {accepted}", "UNSUPPORTED_VALUE")],
        )

    # --- the stream -------------------------------------------------------------

    async def start(self) -> list[bytes]:
        """Read the metadata and the first bytes until type and size are known.

        Returns the chunks read so far (they still have to be stored).
        """
        first = await anext(self.requests, None)
        if first is None or first.WhichOneof("content") != "metadata":
            raise InvalidArgument.field("metadata", "the first message must carry the metadata", "REQUIRED")
        self.metadata.CopyFrom(first.metadata)
        self._check_metadata()
        chunks: list[bytes] = []
        head = b""
        while self.head is None:
            chunk = await self._next_chunk()
            if chunk is None:
                if not head:
                    raise InvalidArgument.field("chunk", "no bytes were sent", "REQUIRED")
                self.head = self._detect(head, final=True)
                break
            chunks.append(chunk)
            head += chunk[: HEAD_LIMIT - len(head)] if len(head) < HEAD_LIMIT else b""
            self.head = self._detect(head, final=len(head) >= HEAD_LIMIT)
        found = self.head.content_type if self.head is not None else ""
        declared = normalise_type(self.metadata.content_type)
        if declared and declared != found:
            raise InvalidArgument.field(
                "metadata.content_type", f"declared {declared} but the bytes are {found}", "CONFLICT"
            )
        return chunks

    def _check_metadata(self) -> None:
        metadata = self.metadata
        if metadata.size_bytes < 0:
            raise InvalidArgument.field("metadata.size_bytes", "must not be negative", "OUT_OF_RANGE")
        if metadata.size_bytes > self.max_bytes:
            raise self.too_large(metadata.size_bytes, "metadata.size_bytes")
        declared = normalise_type(metadata.content_type)
        if declared and declared not in ASSET_TYPES:
            raise self.unsupported(declared, "metadata.content_type")
        if len(metadata.filename) > MAX_FILENAME_CHARS or _CONTROL.search(metadata.filename):
            raise InvalidArgument.field(
                "metadata.filename", f"at most {MAX_FILENAME_CHARS} characters, no control characters", "INVALID_FORMAT"
            )
        if metadata.sha256 and not _SHA256.match(metadata.sha256):
            raise InvalidArgument.field("metadata.sha256", "must be 64 lower-case hex digits", "INVALID_FORMAT")

    def _detect(self, head: bytes, *, final: bool) -> MediaHead | None:
        try:
            found = detect_head(head, final=final)
        except UnsupportedMedia as exc:
            raise self.unsupported(exc.found) from None
        except UnreadableMedia as exc:
            raise InvalidArgument.field("chunk", f"not a readable image: {exc}", "INVALID_FORMAT") from None
        if found is not None and found.pixels > self.max_pixels:
            raise self.too_many_pixels(found)
        return found

    async def _next_chunk(self) -> bytes | None:
        request = await anext(self.requests, None)
        if request is None:
            return None
        if request.WhichOneof("content") != "chunk":
            raise InvalidArgument.field("metadata", "only the first message may carry metadata", "INVALID_FIELD")
        chunk: bytes = request.chunk
        if len(chunk) > MAX_CHUNK_BYTES:
            raise InvalidArgument.field("chunk", f"at most {MAX_CHUNK_BYTES} bytes per message", "TOO_LARGE")
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise self.too_large(self.received, "chunk")
        if self.metadata.size_bytes and self.received > self.metadata.size_bytes:
            raise InvalidArgument.field(
                "metadata.size_bytes", f"more than the {self.metadata.size_bytes} bytes declared were sent", "CONFLICT"
            )
        self.digest.update(chunk)
        return chunk

    async def rest(self, first: list[bytes]) -> AsyncIterator[bytes]:
        """The chunks read by ``start``, then the others; the final checks at the end
        (raising here makes the storage write discard everything)."""
        for chunk in first:
            yield chunk
        while (more := await self._next_chunk()) is not None:
            if more:
                yield more
        if self.metadata.size_bytes and self.received != self.metadata.size_bytes:
            raise InvalidArgument.field(
                "metadata.size_bytes",
                f"{self.metadata.size_bytes} bytes were declared, {self.received} were sent",
                "CONFLICT",
            )
        if self.metadata.sha256 and self.digest.hexdigest() != self.metadata.sha256:
            raise InvalidArgument(
                "metadata.sha256: the bytes received do not have the declared sha256",
                reason="ASSET_CHECKSUM_MISMATCH",
                field_violations=[FieldViolation("metadata.sha256", "does not match the bytes received", "CONFLICT")],
            )


class Assets:
    """Uploading, finding and expiring assets; resolving Generate inputs."""

    def __init__(self, *, store: JobStore, storage: Storage, settings: Settings) -> None:
        self.store = store
        self.storage = storage
        self.settings = settings
        self.max_bytes = int(settings.max_asset_bytes)
        self.max_pixels = MAX_INPUT_PIXELS
        allow = bool(settings.allow_private_urls)
        # Fetches the bytes of input URLs for vendors that need them (never with credentials).
        self._fetcher = VendorHTTP(
            "input", base_url="https://input.invalid", url_policy=UrlPolicy(allow_http=allow, allow_private=allow)
        )

    async def aclose(self) -> None:
        await self._fetcher.aclose()

    # --- upload -----------------------------------------------------------------

    async def upload(self, requests: AsyncIterator[Message], tenant: str) -> asset_pb2.Asset:
        check = _Upload(requests, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        first = await check.start()
        head = check.head
        assert head is not None
        asset_id = new_asset_id()
        key = asset_key(tenant, asset_id, head.content_type)
        stored = await self.storage.write(
            key, check.rest(first), content_type=head.content_type, max_bytes=self.max_bytes
        )
        now = now_timestamp()
        asset = asset_pb2.Asset(
            id=asset_id,
            content_type=head.content_type,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            width=head.width,
            height=head.height,
            filename=check.metadata.filename,
            create_time=now,
            tenant=tenant,
        )
        if self.settings.retention:
            asset.expire_time.FromNanoseconds(now.ToNanoseconds() + int(self.settings.retention * 1e9))
        from server.store import AssetRecord

        try:
            await self.store.create_asset(AssetRecord(asset=asset, key=key))
        except BaseException:
            await self.storage.delete(key)
            raise
        log.info(
            "asset stored",
            asset_id=asset_id,
            content_type=asset.content_type,
            size_bytes=asset.size_bytes,
            width=asset.width,
            height=asset.height,
        )
        return asset

    # --- lookup -----------------------------------------------------------------

    async def get(self, asset_id: str, tenant: str, field: str = "asset_id") -> AssetRecord:
        """The tenant's asset; NOT_FOUND for an unknown, expired or another tenant's id."""
        if not asset_id:
            raise InvalidArgument.field(field, "is required", "REQUIRED")
        if not ASSET_ID.match(asset_id):
            raise InvalidArgument.field(field, "is not an asset id (asset_ followed by 32 hex digits)", "INVALID_FORMAT")
        record = await self.store.get_asset(asset_id)
        expired = record is not None and record.asset.HasField("expire_time") and (
            record.asset.expire_time.ToNanoseconds() <= time.time_ns()
        )
        if record is None or record.asset.tenant != tenant or expired:
            raise NotFound(
                f"asset {asset_id} not found", reason="ASSET_NOT_FOUND", metadata={"assetId": asset_id, "field": field}
            )
        return record

    async def delete(self, asset_id: str, tenant: str) -> None:
        record = await self.get(asset_id, tenant)
        await self.storage.delete(record.key)
        await self.store.delete_asset(asset_id)
        log.info("asset deleted", asset_id=asset_id)

    async def sweep(self) -> int:
        """Delete assets that expired more than ``max_job_timeout`` ago (bytes first)."""
        cutoff = time.time_ns() - int(self.settings.max_job_timeout * 1e9)
        removed = 0
        for record in await self.store.expired_assets(cutoff, SWEEP_BATCH):
            await self.storage.delete(record.key)
            await self.store.delete_asset(record.asset.id)
            removed += 1
        if removed:
            log.info("expired assets removed", count=removed)
        return removed

    # --- inputs of Generate requests ----------------------------------------------

    async def input_for(self, request: Message, tenant: str, ctx: JobContext | None = None) -> InputMedia | None:
        """The request's ``input_image`` resolved, or None when it has none.

        An asset must belong to ``tenant`` (NOT_FOUND otherwise); URLs are
        fetched only when an adapter asks for the bytes.
        """
        if "input_image" not in request.DESCRIPTOR.fields_by_name or not request.HasField("input_image"):
            return None
        image = request.input_image
        source = image.WhichOneof("source")
        if source == "data":
            return InlineInput(image.data, field="input_image.data", content_type=image.content_type)
        if source == "uri":
            return UrlInput(image.uri, field="input_image.uri", fetch=self._fetch, ctx=ctx)
        if source == "asset_id":
            record = await self.get(image.asset_id, tenant, field="input_image.asset_id")
            asset = record.asset
            return AssetInput(
                asset_id=asset.id,
                storage=self.storage,
                key=record.key,
                content_type=asset.content_type,
                size=asset.size_bytes,
                width=asset.width,
                height=asset.height,
                sha256=asset.sha256,
            )
        return None

    def _fetch(self, url: str, max_bytes: int, ctx: JobContext | None):
        return self._fetcher.open_stream(url, ctx=ctx, max_bytes=max_bytes)


class AssetServicer(asset_pb2_grpc.AssetServiceServicer):
    def __init__(self, assets: Assets) -> None:
        self.assets = assets

    @rpc
    async def UploadAsset(self, request_iterator, context: grpc.aio.ServicerContext):
        requests = aiter(request_iterator)
        try:
            asset = await self.assets.upload(requests, current_tenant.get())
        except InvalidArgument as refusal:
            await _settle(requests, context, refusal)
            raise
        return asset_pb2.UploadAssetResponse(asset=asset)

    @rpc
    async def GetAsset(self, request, context):
        record = await self.assets.get(request.asset_id, current_tenant.get())
        return asset_pb2.GetAssetResponse(asset=record.asset)

    @rpc
    async def DeleteAsset(self, request, context):
        await self.assets.delete(request.asset_id, current_tenant.get())
        return asset_pb2.DeleteAssetResponse()


async def _settle(requests: AsyncIterator[Message], context: grpc.aio.ServicerContext, refusal: InvalidArgument) -> None:
    """Announce a refusal in a header at once, then let the client stop sending (see the module doc)."""
    try:
        await context.send_initial_metadata(((REFUSED_HEADER, refusal.reason),))
    except Exception:  # noqa: BLE001 - the call is gone or headers went out already: nothing to settle
        return
    discarded = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(SETTLE_SECONDS):
            async for request in requests:
                discarded += len(request.chunk)
                if discarded > SETTLE_BYTES:
                    break
