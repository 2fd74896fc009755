"""Input media (the first frame of an image-to-video job, an image prompt), one
shape for every adapter whatever the caller sent.

A Generate request names its input in one of three ways (``MediaInput``):
inline bytes, an https URL, or an asset uploaded earlier (AssetService). The
server resolves it into an ``InputMedia`` before the adapter submits, and puts
it on ``JobContext.input_image``; the adapter then passes it to its vendor the
way that vendor takes it:

- ``public_url(ttl)``: a URL the vendor can fetch itself: the caller's own
  https URL, or a presigned URL of the stored asset when the storage can sign
  URLs (S3); None otherwise (inline bytes, assets on local storage).
- ``as_data_uri(max_length)`` / ``read_bytes(max_bytes)``: the bytes, for
  vendors that take them inline (data URIs, bare base64, multipart files).
- ``open()``: the bytes as a stream (``async with media.open() as chunks``),
  for vendor upload endpoints; never the whole file in memory.

``content_type``, ``size``, ``width`` and ``height`` are known up front for
inline bytes and assets (assets were measured at upload); for a URL they are
known only once its bytes have been read.

Re-encoding and resizing (``fit_image``) happen only when the caller asked
for it with ``provider_options {"fit_input": true}``; otherwise an input the
vendor cannot take is refused with INVALID_ARGUMENT naming the limit.

Type and size detection (``detect_head``) reads only the first bytes of a
file: the PNG IHDR chunk, the JPEG frame header (SOF, which can come after
tens of KiB of EXIF and ICC data) or the WebP VP8/VP8L/VP8X header. It is
written out here rather than left to Pillow because Pillow decodes WebP only
from the whole file, and the upload path must decide while bytes arrive.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import hashlib
import io
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from providers.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    OutputTooLarge,
    ProviderError,
)

if TYPE_CHECKING:
    from providers.base import JobContext
    from providers.storage.base import Storage

#: Image types accepted as inputs, with the file extension they are stored under.
IMAGE_TYPES: dict[str, str] = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
#: What an uploaded asset may be today. Audio (voice references) would add its
#: types here and a branch in ``detect_head`` that measures duration instead of pixels.
ASSET_TYPES: tuple[str, ...] = tuple(IMAGE_TYPES)
#: 40 megapixels: above any vendor's input limit, far below a decompression bomb.
MAX_INPUT_PIXELS = 40_000_000
#: Bytes looked at to find a file's type and size. A JPEG's frame header
#: follows its EXIF and ICC segments, which are up to 64 KiB each.
HEAD_LIMIT = 512 * 1024
#: Most bytes read from an input (a URL fetched, an image to re-encode).
MAX_READ_BYTES = 256 * 1024 * 1024
#: provider_options key by which a caller allows re-encoding the input to fit a vendor.
FIT_OPTION = "fit_input"
#: Names of things that are not accepted, for clear errors.
_OTHER_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"ftypheic", 4, "image/heic"),
    (b"ftypheix", 4, "image/heic"),
    (b"ftypavif", 4, "image/avif"),
    (b"ftypmif1", 4, "image/heif"),
    (b"%PDF", 0, "application/pdf"),
    (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"\x1aE\xdf\xa3", 0, "video/webm"),
    (b"ftyp", 4, "video/mp4"),
)


# --- detection ---------------------------------------------------------------------


class UnsupportedMedia(ValueError):
    """The bytes are a kind of file that is not accepted; ``found`` names it when known."""

    def __init__(self, found: str) -> None:
        super().__init__(f"{found or 'an unknown type'} is not accepted")
        self.found = found


class UnreadableMedia(ValueError):
    """The bytes claim an accepted type but its header is broken."""


@dataclass(frozen=True)
class MediaHead:
    content_type: str
    width: int = 0
    height: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


def normalise_type(content_type: str) -> str:
    """'image/JPG; q=1' -> 'image/jpeg'; '' for empty or application/octet-stream."""
    value = content_type.split(";", 1)[0].strip().lower()
    if value in ("image/jpg", "image/pjpeg"):
        return "image/jpeg"
    if value in ("", "application/octet-stream", "binary/octet-stream"):
        return ""
    return value


def sniff_type(head: bytes) -> str:
    """The MIME type from the magic number: one of IMAGE_TYPES, another known type, or ''."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    for signature, offset, name in _OTHER_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "audio/mpeg"  # an MPEG audio frame header without ID3
    return ""


def detect_head(head: bytes, *, final: bool = False, accepted: Sequence[str] = ASSET_TYPES) -> MediaHead | None:
    """Type and pixel size from the first bytes of a file.

    Returns None when more bytes are needed (never when ``final``: the whole
    file is ``head``). Raises UnsupportedMedia for a type outside ``accepted``
    (as soon as the magic number says so) and UnreadableMedia for a broken
    header.
    """
    if len(head) < 12 and not final:
        # Every signature we tell apart fits in 12 bytes; a PNG or JPEG is
        # recognisable earlier, but waiting costs nothing.
        if not any(head.startswith(s[: len(head)]) for s in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")):
            found = sniff_type(head)
            if found or len(head) >= 4:
                raise UnsupportedMedia(found)
        return None
    content_type = sniff_type(head)
    if content_type not in accepted:
        raise UnsupportedMedia(content_type)
    parse = _PARSERS[content_type]
    size = parse(head)
    if size is None:
        if final or len(head) >= HEAD_LIMIT:
            raise UnreadableMedia(f"no {content_type} image header in the first {min(len(head), HEAD_LIMIT)} bytes")
        return None
    width, height = size
    if width <= 0 or height <= 0:
        raise UnreadableMedia(f"the {content_type} header gives a size of {width}x{height}")
    return MediaHead(content_type, width, height)


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24:
        return None
    if data[12:16] != b"IHDR":
        raise UnreadableMedia("a PNG must start with its IHDR chunk")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# Start-of-frame markers: every SOFn except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments up to the first frame header."""
    position = 2
    while True:
        if position + 4 > len(data):
            return None
        if data[position] != 0xFF:
            raise UnreadableMedia("the JPEG segments are broken")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        if marker in (0xD9, 0xDA):
            raise UnreadableMedia("the JPEG has no frame header before its image data")
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if length < 2:
            raise UnreadableMedia("the JPEG segments are broken")
        if marker in _SOF_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + length


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise UnreadableMedia("the WebP VP8 frame header is broken")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise UnreadableMedia("the WebP VP8L header is broken")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise UnreadableMedia("the WebP has no VP8, VP8L or VP8X chunk")


_PARSERS: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
    "image/png": _png_size,
    "image/jpeg": _jpeg_size,
    "image/webp": _webp_size,
}


def detect_bytes(data: bytes, field: str, accepted: Sequence[str] = ASSET_TYPES) -> MediaHead:
    """``detect_head`` on a whole file, as InvalidArgument naming ``field``."""
    try:
        head = detect_head(data, final=True, accepted=accepted)
    except UnsupportedMedia as exc:
        names = ", ".join(t.split("/")[1].upper() for t in accepted)
        raise InvalidArgument.field(field, f"must be {names}, not {exc.found or 'an unknown type'}", "UNSUPPORTED_VALUE") from None
    except UnreadableMedia as exc:
        raise InvalidArgument.field(field, f"not a readable image: {exc}", "INVALID_FORMAT") from None
    assert head is not None
    return head


# --- the resolved input --------------------------------------------------------------

#: Opens an https URL as a byte stream, checked and size-capped (e.g. VendorHTTP.open_stream).
Fetcher = Callable[[str, int, "JobContext | None"], AbstractAsyncContextManager[AsyncIterator[bytes]]]


class InputMedia(abc.ABC):
    """One input, resolved. See the module doc."""

    #: "data" (inline bytes), "uri" (the caller's URL) or "asset" (uploaded earlier).
    source: str

    def __init__(
        self,
        *,
        field: str,
        content_type: str = "",
        size: int | None = None,
        width: int = 0,
        height: int = 0,
        sha256: str = "",
        name: str = "",
    ) -> None:
        #: The request field it came from, for error messages ("input_image.asset_id").
        self.field = field
        self.content_type = content_type
        self.size = size
        self.width = width
        self.height = height
        self.sha256 = sha256
        #: Asset id or URL: how to name it in messages (never bytes).
        self.name = name

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def known(self) -> bool:
        """Whether type and size are known without reading (False for a URL not read yet)."""
        return bool(self.content_type) and self.size is not None

    @property
    def may_have_public_url(self) -> bool:
        """Whether ``public_url`` can give a URL (without calling it)."""
        return False

    async def public_url(self, ttl_seconds: float) -> str | None:
        """A URL a vendor can fetch for ``ttl_seconds`` at least, or None."""
        return None

    @abc.abstractmethod
    def open(self) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """The bytes as a stream of chunks."""

    async def read_bytes(self, max_bytes: int) -> bytes:
        """The whole input; InvalidArgument when it is larger than ``max_bytes``."""
        if self.size is not None and self.size > max_bytes:
            raise self.too_large(max_bytes)
        data = bytearray()
        async with self.open() as chunks:
            async for chunk in chunks:
                data += chunk
                if len(data) > max_bytes:
                    raise self.too_large(max_bytes)
        return bytes(data)

    async def as_data_uri(self, max_length: int) -> str:
        """``data:<type>;base64,...``; InvalidArgument when the URI would be longer than ``max_length``."""
        max_bytes = data_uri_capacity(self.content_type or "image/jpeg", max_length)
        data = await self.read_bytes(max_bytes)
        content_type = self.content_type or sniff_type(data)
        uri = f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"
        if len(uri) > max_length:
            raise self.too_large(max_bytes)
        return uri

    def too_large(self, max_bytes: int, why: str = "") -> InvalidArgument:
        size = f" ({self.size} bytes given)" if self.size is not None else ""
        return InvalidArgument.field(self.field, f"at most {max_bytes} bytes{why}{size}", "TOO_LARGE")

    def describe(self) -> str:
        """'image/png 1280x720, 123456 bytes' (what is known)."""
        parts = [self.content_type or "unknown type"]
        if self.width:
            parts.append(f"{self.width}x{self.height}")
        text = " ".join(parts)
        return f"{text}, {self.size} bytes" if self.size is not None else text


class InlineInput(InputMedia):
    """Bytes that came inside the request."""

    source = "data"

    def __init__(self, data: bytes, *, field: str = "input_image", content_type: str = "", name: str = "inline data") -> None:
        head = _try_detect(data)
        super().__init__(
            field=field,
            content_type=normalise_type(content_type) or (head.content_type if head else sniff_type(data)),
            size=len(data),
            width=head.width if head else 0,
            height=head.height if head else 0,
            sha256=hashlib.sha256(data).hexdigest(),
            name=name,
        )
        self.data = data

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[AsyncIterator[bytes]]:
        yield _chunks_of(self.data)

    async def read_bytes(self, max_bytes: int) -> bytes:
        if len(self.data) > max_bytes:
            raise self.too_large(max_bytes)
        return self.data


class UrlInput(InputMedia):
    """The caller's https URL: vendors that fetch URLs get it as is; the bytes are
    fetched (checked against the URL policy, size-capped) only when needed."""

    source = "uri"

    def __init__(self, uri: str, *, field: str = "input_image", fetch: Fetcher | None = None, ctx: JobContext | None = None) -> None:
        super().__init__(field=field, name=uri)
        self.uri = uri
        self._fetch = fetch
        self._ctx = ctx
        self._data: bytes | None = None

    @property
    def may_have_public_url(self) -> bool:
        return True

    async def public_url(self, ttl_seconds: float) -> str | None:
        return self.uri

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[AsyncIterator[bytes]]:
        if self._data is not None:
            yield _chunks_of(self._data)
            return
        if self._fetch is None:
            raise FailedPrecondition(
                f"{self.field}: this provider needs the image's bytes and cannot fetch {self.uri}",
                reason="INPUT_NOT_FETCHABLE",
                metadata={"field": self.field},
            )
        async with self._fetch(self.uri, MAX_READ_BYTES, self._ctx) as chunks:
            yield chunks

    async def read_bytes(self, max_bytes: int) -> bytes:
        if self._data is None:
            if self._fetch is None:
                async with self.open():
                    pass  # raises
            assert self._fetch is not None
            data = bytearray()
            try:
                async with self._fetch(self.uri, max_bytes, self._ctx) as chunks:
                    async for chunk in chunks:
                        data += chunk
                        if len(data) > max_bytes:
                            raise self.too_large(max_bytes)
            except OutputTooLarge:
                raise self.too_large(max_bytes) from None
            except ProviderError as error:
                if error.retryable:
                    raise
                raise InvalidArgument.field(self.field, f"could not be fetched: {error.message}", "UNREACHABLE") from None
            self._data = bytes(data)
            head = _try_detect(self._data)
            self.size = len(self._data)
            self.sha256 = hashlib.sha256(self._data).hexdigest()
            self.content_type = head.content_type if head else sniff_type(self._data)
            if head:
                self.width, self.height = head.width, head.height
        if len(self._data) > max_bytes:
            raise self.too_large(max_bytes)
        return self._data


class AssetInput(InputMedia):
    """An asset uploaded earlier: measured at upload, stored in the server's storage."""

    source = "asset"

    def __init__(
        self,
        *,
        asset_id: str,
        storage: Storage,
        key: str,
        content_type: str,
        size: int,
        width: int,
        height: int,
        sha256: str,
        field: str = "input_image.asset_id",
    ) -> None:
        super().__init__(
            field=field, content_type=content_type, size=size, width=width, height=height, sha256=sha256, name=asset_id
        )
        self.asset_id = asset_id
        self.storage = storage
        self.key = key

    @property
    def may_have_public_url(self) -> bool:
        return bool(getattr(self.storage, "can_presign", False))

    async def public_url(self, ttl_seconds: float) -> str | None:
        return await self.storage.presign(self.key, int(max(ttl_seconds, 60)))

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[AsyncIterator[bytes]]:
        yield self.storage.read(self.key)


def _try_detect(data: bytes) -> MediaHead | None:
    try:
        return detect_head(data, final=True, accepted=tuple(IMAGE_TYPES))
    except ValueError:
        return None


async def _chunks_of(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def data_uri_capacity(content_type: str, max_length: int) -> int:
    """The most bytes whose ``data:<type>;base64,`` URI is at most ``max_length`` characters."""
    return max(0, (max_length - len(f"data:{content_type};base64,")) // 4 * 3)


def base64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


def from_request(request: Message, ctx: JobContext | None = None, *, fetch: Fetcher | None = None) -> InputMedia | None:
    """The request's input_image as InputMedia: what the server resolved (``ctx.input_image``),
    else built from inline data or a URL. An asset id cannot be resolved here."""
    if ctx is not None and getattr(ctx, "input_image", None) is not None:
        return ctx.input_image
    if "input_image" not in request.DESCRIPTOR.fields_by_name or not request.HasField("input_image"):
        return None
    image = request.input_image
    source = image.WhichOneof("source")
    if source == "data":
        return InlineInput(image.data, field="input_image.data", content_type=image.content_type)
    if source == "uri":
        return UrlInput(image.uri, field="input_image.uri", fetch=fetch, ctx=ctx)
    if source == "asset_id":
        raise FailedPrecondition(
            "input_image.asset_id: the asset was not resolved by the server", reason="ASSET_NOT_RESOLVED"
        )
    return None


def url_ttl(ctx: JobContext | None) -> float:
    """How long a presigned input URL must live: the rest of the job (vendors may fetch
    it late, e.g. after queueing), at least 15 minutes, at most S3's 7 days."""
    left = ctx.time_left() if ctx is not None else float("inf")
    if left == float("inf"):
        left = 24 * 3600.0
    return max(15 * 60.0, min(left, 7 * 24 * 3600.0))


def wants_fit(options: dict[str, Any]) -> bool:
    """Whether provider_options allow re-encoding the input (``{"fit_input": true}``)."""
    return options.get(FIT_OPTION) is True


def fit_option_problems(options: dict[str, Any]) -> list[FieldViolation]:
    value = options.get(FIT_OPTION)
    if value is not None and not isinstance(value, bool):
        return [FieldViolation(f"provider_options.{FIT_OPTION}", "must be true or false", "INVALID_FIELD")]
    return []


def no_public_url(media: InputMedia, provider: str) -> FailedPrecondition:
    """A URL-only vendor and an input that has no URL it could fetch."""
    if media.source == "asset":
        why = (
            f"{provider} fetches input images by URL only, and assets have a URL only with S3 storage "
            "(set storage = \"s3\"; local storage cannot sign URLs); or pass input_image.uri"
        )
    else:
        why = f"{provider} fetches input images by URL only: pass input_image.uri (an https URL), or upload the image as an asset with S3 storage"
    return FailedPrecondition(
        f"{media.field}: {why}",
        reason="INPUT_URL_UNAVAILABLE",
        metadata={"provider": provider, "field": media.field, "setting": "storage"},
    )


# --- fitting an image to a vendor's limits (only when asked) ---------------------------


@dataclass(frozen=True)
class Fitted:
    data: bytes
    content_type: str
    width: int
    height: int


def fit_image(
    data: bytes,
    *,
    types: Sequence[str],
    max_bytes: int,
    max_pixels: int = 0,
    max_side: int = 0,
    min_side: int = 0,
    max_aspect: float = 0.0,
    exact_sizes: Sequence[tuple[int, int]] = (),
) -> Fitted:
    """Re-encode (and resize or crop) an image so that it fits a vendor's limits.

    Blocking (decodes the image): call it in a thread. The image is cropped
    around its centre to an allowed aspect ratio (or to the closest of
    ``exact_sizes``, then scaled to it), scaled down to ``max_pixels`` /
    ``max_side`` or up to ``min_side``, and encoded as JPEG when the vendor
    takes it (quality lowered, then the size, until it fits ``max_bytes``),
    else as PNG (scaled down until it fits).
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP"]) as opened:
        if opened.width * opened.height > MAX_INPUT_PIXELS:
            raise ValueError("image too large to fit")
        image = ImageOps.exif_transpose(opened)
        image.load()
    if exact_sizes:
        target = min(exact_sizes, key=lambda s: abs(s[0] / s[1] - image.width / image.height))
        image = ImageOps.fit(image, target, Image.Resampling.LANCZOS)
    else:
        if max_aspect:
            image = _crop_aspect(image, max_aspect)
        scale = 1.0
        if max_pixels and image.width * image.height > max_pixels:
            scale = min(scale, (max_pixels / (image.width * image.height)) ** 0.5)
        if max_side and max(image.size) * scale > max_side:
            scale = min(scale, max_side / max(image.size))
        if min_side and min(image.size) * scale < min_side:
            scale = min_side / min(image.size)
        if scale != 1.0:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    jpeg = "image/jpeg" in types
    content_type = "image/jpeg" if jpeg else "image/png" if "image/png" in types else types[0]
    while True:
        for quality in (92, 85, 75, 65) if jpeg else (0,):
            encoded = _encode(image, content_type, quality)
            if len(encoded) <= max_bytes:
                return Fitted(encoded, content_type, image.width, image.height)
        if exact_sizes or (min_side and min(image.size) * 0.85 < min_side):
            raise ValueError("cannot make the image small enough for the vendor")
        image = image.resize((max(1, int(image.width * 0.85)), max(1, int(image.height * 0.85))), Image.Resampling.LANCZOS)


def _crop_aspect(image: Any, max_aspect: float) -> Any:
    width, height = image.size
    if width / height > max_aspect:
        new_width = int(height * max_aspect)
        left = (width - new_width) // 2
        return image.crop((left, 0, left + new_width, height))
    if height / width > max_aspect:
        new_height = int(width * max_aspect)
        top = (height - new_height) // 2
        return image.crop((0, top, width, top + new_height))
    return image


def _encode(image: Any, content_type: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if content_type == "image/jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True)
    elif content_type == "image/webp":
        image.save(buffer, "WEBP", quality=90)
    else:
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            image = image.convert("RGBA")
        image.save(buffer, "PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


async def fit_input(media: InputMedia, **limits: Any) -> InlineInput:
    """``media`` re-encoded by ``fit_image`` (in a thread), as inline bytes."""
    data = await media.read_bytes(MAX_READ_BYTES)
    try:
        fitted = await asyncio.to_thread(fit_image, data, **limits)
    except (ValueError, OSError) as exc:
        raise InvalidArgument.field(media.field, f"could not be fitted to the provider's limits: {exc}", "UNSUPPORTED_VALUE") from None
    return InlineInput(fitted.data, field=media.field, content_type=fitted.content_type, name=f"{media.name} (fitted)")
