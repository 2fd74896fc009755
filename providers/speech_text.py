"""What the text-to-speech adapters share: long text split into pieces, the pieces' audio joined.

Every TTS vendor caps the text of one request (OpenAI 4,096 characters, Google
5,000 *bytes*, ElevenLabs a number of characters per model). mediagen accepts
up to 100,000 characters, so an adapter:

1. ``split_text`` the text into pieces under the vendor's limit, cutting at
   sentence ends first (and paragraph/line breaks), then at clause marks
   (``, ; :`` and dashes), then between words, and only as a last resort
   between characters (a run with no spaces, e.g. Chinese without punctuation).
2. synthesises the pieces one after the other, and
3. ``join_audio`` turns the pieces' audio into ONE file, streamed:

   ====================  ==============================================================
   output format         how the pieces are joined
   ====================  ==============================================================
   pcm (raw s16le)       samples appended; nothing to fix.
   wav                   samples appended into a spool file on disk, then one RIFF
                         header with the real length, then the samples.
   mp3                   MPEG frames appended into a spool file as they arrive; each
                         piece's ID3/APE tags and its Xing/Info/VBRI header frame are
                         dropped (they describe one piece: a piece's frame count would
                         make players stop after it). One new Xing ("Info" for constant
                         bitrate) frame with the total frame and byte counts goes in
                         front, so decoders know the exact length, CBR or VBR. No
                         re-encoding: each piece keeps its encoder delay and padding
                         (a few tens of ms of silence at each join) rather than going
                         through a lossy second generation.
   aac (ADTS)            ADTS frames appended (every frame carries its own header).
   ogg_opus, flac        these carry stream-level headers and sample positions, so
                         several pieces are decoded and re-encoded into one stream with
                         PyAV (lossless for FLAC; one Opus generation for Opus), through
                         temporary files. A single piece is passed through untouched.
   ====================  ==============================================================

Where the file starts with a header that needs the totals (wav, mp3) or the
pieces must be re-encoded, the pieces are spooled to a temporary file as they
arrive and the joined file is streamed to storage once every piece is
synthesised: never whole in memory. A single piece is always streamed through
as the vendor sent it (wav apart, which gets our header). Adapters request raw PCM for wav so that the samples
of every piece can be appended (``input_wav=True`` when the vendor wraps PCM in
its own RIFF header, as Google's LINEAR16 does).

Vendors bill every synthesis: a job whose output is fetched again (a retry
after a broken stream, or a restart while storing) pays again, since there is
no vendor job to come back to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import httpx
from google.protobuf import json_format
from google.protobuf.message import Message

from providers.errors import InvalidArgument, ProviderBadResponse
from providers.http import vendor_message

#: Voice presets every speech adapter understands (each maps them onto its own voices).
VOICE_PRESETS: dict[str, str] = {
    "professional_male": "a clear, neutral male voice",
    "professional_female": "a clear, neutral female voice",
    "casual_male": "a relaxed, conversational male voice",
    "casual_female": "a relaxed, conversational female voice",
    "narrator": "a storytelling voice for long reads",
    "female_calm": "a calm, soft female voice",
}

#: Output formats ``join_audio`` can produce (the names of ``format_name``).
JOINABLE_FORMATS = ("mp3", "wav", "pcm", "aac", "ogg_opus", "flac")

_READ_CHUNK = 256 * 1024

# --------------------------------------------------------------------------- text


def text_size(text: str, unit: str = "characters") -> int:
    """Length of ``text`` as a vendor counts it: "characters" (code points) or "bytes" (UTF-8)."""
    if unit == "bytes":
        return len(text.encode("utf-8"))
    if unit == "characters":
        return len(text)
    raise ValueError(f"unit must be 'characters' or 'bytes', not {unit!r}")


# A sentence ends after . ! ? … (with closing quotes/brackets) before white space,
# after CJK full stops with or without space, and at any line break.
_SENTENCE_END = re.compile(
    r"(?:(?<=[.!?…])[\"'”’»)\]]*(?=\s))"
    r"|(?:(?<=[。！？])[」』”’）)]*)"
    r"|(?=\n)"
)
_CLAUSE_END = re.compile(r"(?:(?<=[,;:])(?=\s))|(?<=[、，；：])|(?=\s[—–-]\s)")
_WORD_END = re.compile(r"(?=\s)")
# Words after which a full stop does not end a sentence (English titles and Latin abbreviations).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf no fig approx dept est inc ltd co corp mt".split()
)
_LAST_WORD = re.compile(r"([\w.]+)\.$")


def _boundaries(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[int]:
    cuts = []
    for match in pattern.finditer(text, start, end):
        cut = match.end()
        if start < cut < end and (not cuts or cuts[-1] != cut):
            if pattern is _SENTENCE_END and _is_abbreviation(text, start, cut):
                continue
            cuts.append(cut)
    return cuts


def _is_abbreviation(text: str, start: int, cut: int) -> bool:
    """A cut right after "Dr." or an initial ("J.") is not a sentence end."""
    head = text[max(start, cut - 12) : cut].rstrip("\"'”’»)]")
    match = _LAST_WORD.search(head)
    if not match:
        return False
    word = match.group(1).lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


_LEVELS = (_SENTENCE_END, _CLAUSE_END, _WORD_END)


def _split(
    text: str, start: int, end: int, limit: int, size: Callable[[str], int], level: int
) -> list[tuple[int, int]]:
    """Spans of text[start:end], each fitting ``limit`` once stripped, cut at the strongest boundaries.

    The span is cut at this level's boundaries; parts that fit are packed
    together while they fit, a part too long is cut at the next level and its
    pieces stand alone (so a cut never moves to a weaker boundary than needed).
    """
    if size(text[start:end].strip()) <= limit:
        return [(start, end)]
    if level >= len(_LEVELS):
        return _hard_cut(text, start, end, limit, size)
    cuts = _boundaries(text, start, end, _LEVELS[level])
    if not cuts:
        return _split(text, start, end, limit, size, level + 1)
    spans: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for left, right in itertools.pairwise([start, *cuts, end]):
        parts = _split(text, left, right, limit, size, level + 1)
        if len(parts) == 1:
            part = parts[0]
            if current is not None and size(text[current[0] : part[1]].strip()) <= limit:
                current = (current[0], part[1])
                continue
            if current is not None:
                spans.append(current)
            current = part
            continue
        if current is not None:
            spans.append(current)
            current = None
        spans.extend(parts)
    if current is not None:
        spans.append(current)
    return spans


def _hard_cut(text: str, start: int, end: int, limit: int, size: Callable[[str], int]) -> list[tuple[int, int]]:
    spans = []
    left = start
    used = 0
    for index in range(start, end):
        step = size(text[index])
        if used + step > limit and index > left:
            spans.append((left, index))
            left, used = index, 0
        used += step
    spans.append((left, end))
    return spans


def split_text(text: str, limit: int, *, unit: str = "characters") -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` characters (or UTF-8 bytes).

    Pieces are as long as the limit allows, cut at the strongest boundary
    available (sentence, then clause, then word, then character); white space at
    the cuts is dropped, everything else is kept in order. An empty text gives
    no pieces.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")

    def size(value: str) -> int:
        return text_size(value, unit)

    text = text.strip()
    if not text:
        return []
    pieces = (text[left:right].strip() for left, right in _split(text, 0, len(text), limit, size, 0))
    return [piece for piece in pieces if piece]


# --------------------------------------------------------------------------- auth + response facts


@dataclass
class AnswerInfo:
    """Status and headers of one vendor answer, kept for the adapter (costs, request ids)."""

    status: int
    headers: httpx.Headers


class VendorAuth(httpx.Auth):
    """Puts the vendor's credentials on API requests; keeps the answers of tagged requests.

    A streamed answer's headers (ElevenLabs ``character-cost``, the content
    type) are not reachable through ``VendorHTTP.open_stream``; the auth flow
    sees every API answer, so a request carrying ``CAPTURE_HEADER: <id>`` has
    its answer recorded under that id (``take(id)``). The tag is removed before
    the request leaves, so the vendor never sees it.
    """

    CAPTURE_HEADER = "x-mediagen-capture"

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)
        self._answers: dict[str, AnswerInfo] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def tag(self) -> str:
        """A fresh capture id for one request."""
        return f"c{next(self._ids)}"

    def take(self, capture_id: str) -> AnswerInfo | None:
        with self._lock:
            return self._answers.pop(capture_id, None)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        capture_id = request.headers.pop(self.CAPTURE_HEADER, None)
        request.headers.update(self._headers)
        response = yield request
        if capture_id is not None:
            with self._lock:
                self._answers[capture_id] = AnswerInfo(response.status_code, response.headers)


async def checked_audio(
    chunks: AsyncIterator[bytes], info: AnswerInfo | None, *, provider: str, model: str
) -> AsyncIterator[bytes]:
    """The audio chunks of a 2xx answer, refusing a JSON or HTML body where audio was expected."""
    content_type = info.headers.get("content-type", "").split(";")[0].strip().lower() if info else ""
    if content_type not in ("application/json", "text/html", "text/plain"):
        async for chunk in chunks:
            yield chunk
        return
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > 64 * 1024:
            break
    try:
        message = vendor_message(json.loads(body)) if content_type == "application/json" else ""
    except ValueError:
        message = ""
    raise ProviderBadResponse(
        f"{provider} answered {content_type} instead of audio"
        + (f": {message[:300]}" if message else ""),
        provider=provider,
        model=model,
        http_status=info.status if info else None,
        retryable=False,
    )


# --------------------------------------------------------------------------- WAV


@dataclass(frozen=True)
class PcmFormat:
    sample_rate_hz: int
    channels: int = 1
    bits: int = 16

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8


def wav_header(fmt: PcmFormat, data_bytes: int) -> bytes:
    """The canonical 44-byte RIFF/WAVE header of ``data_bytes`` of PCM."""
    if data_bytes > 0xFFFFFFFF - 36:
        raise ValueError("WAV cannot hold more than 4 GiB of samples")
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        fmt.channels,
        fmt.sample_rate_hz,
        fmt.sample_rate_hz * fmt.frame_bytes,
        fmt.frame_bytes,
        fmt.bits,
        b"data",
        data_bytes,
    )


class WavReader:
    """Incremental RIFF/WAVE parser: feed bytes, get the samples of the data chunk back."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.format: PcmFormat | None = None
        self._in_data = False
        self._data_left: int | None = None  # None: until the end (streamed WAV)

    def feed(self, data: bytes) -> bytes:
        if self._in_data:
            return self._take(data)
        self._buffer += data
        while not self._in_data:
            if len(self._buffer) < 12 + 8:
                return b""
            if self._buffer[:4] != b"RIFF" or self._buffer[8:12] != b"WAVE":
                raise ValueError("not a RIFF/WAVE file")
            chunk_id = bytes(self._buffer[12:16])
            (size,) = struct.unpack_from("<I", self._buffer, 16)
            if chunk_id == b"data":
                if self.format is None:
                    raise ValueError("WAV data chunk before its fmt chunk")
                rest = bytes(self._buffer[20:])
                self._buffer.clear()
                self._in_data = True
                self._data_left = None if size in (0, 0xFFFFFFFF) else size
                return self._take(rest)
            total = 8 + size + (size & 1)
            if len(self._buffer) < 12 + total:
                return b""
            if chunk_id == b"fmt ":
                tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", self._buffer, 20)
                if tag not in (1, 0xFFFE) or bits != 16:
                    raise ValueError(f"WAV is not 16-bit PCM (format {tag}, {bits} bits)")
                self.format = PcmFormat(rate, channels, bits)
            del self._buffer[12 : 12 + total]
        return b""

    def _take(self, data: bytes) -> bytes:
        if self._data_left is None:
            return data
        data = data[: self._data_left]
        self._data_left -= len(data)
        return data


# --------------------------------------------------------------------------- MP3

_MP3_BITRATES = {
    # (version is MPEG-1, layer) -> kbit/s by index
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True)
class Mp3Frame:
    version: int  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    layer: int
    sample_rate_hz: int
    mono: bool
    length: int
    protected: bool
    bitrate: int = 0

    @property
    def kind(self) -> tuple[int, int, int, bool]:
        return self.version, self.layer, self.sample_rate_hz, self.mono

    @property
    def samples(self) -> int:
        if self.layer == 1:
            return 384
        return 1152 if self.layer == 2 or self.version == 3 else 576


def parse_mp3_header(head: bytes | bytearray | memoryview) -> Mp3Frame | None:
    """The MPEG audio frame starting at ``head`` (4 bytes needed), or None."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version = (head[1] >> 3) & 3
    layer_bits = (head[1] >> 1) & 3
    bitrate_index = head[2] >> 4
    rate_index = (head[2] >> 2) & 3
    if version == 1 or layer_bits == 0 or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values, or free format (no frame length to follow)
    if head[3] & 3 == 2:
        return None  # reserved emphasis
    layer = 4 - layer_bits
    bitrate = _MP3_BITRATES[(version == 3, layer)][bitrate_index] * 1000
    rate = _MP3_RATES[version][rate_index]
    padding = (head[2] >> 1) & 1
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    elif layer == 3 and version != 3:
        length = 72 * bitrate // rate + padding
    else:
        length = 144 * bitrate // rate + padding
    return Mp3Frame(version, layer, rate, (head[3] >> 6) == 3, length, not head[1] & 1, bitrate)


def _side_info_size(frame: Mp3Frame) -> int:
    return (17 if frame.mono else 32) if frame.version == 3 else (9 if frame.mono else 17)


def _is_info_frame(frame: Mp3Frame, data: bytes | bytearray | memoryview) -> bool:
    """A Xing/Info/VBRI header frame (a frame of silence describing the file, not audio)."""
    if frame.layer != 3:
        return False
    side = _side_info_size(frame)
    for offset in (4 + side, 6 + side):
        if bytes(data[offset : offset + 4]) in (b"Xing", b"Info"):
            return True
    return bytes(data[36:40]) == b"VBRI"


def _id3v2_size(head: bytes | bytearray) -> int | None:
    """Total size of the ID3v2 tag starting at ``head`` (10 bytes needed), or None."""
    if len(head) < 10 or head[:3] != b"ID3" or head[3] == 0xFF or head[4] == 0xFF:
        return None
    size_bytes = head[6:10]
    if any(b & 0x80 for b in size_bytes):
        return None
    size = (size_bytes[0] << 21) | (size_bytes[1] << 14) | (size_bytes[2] << 7) | size_bytes[3]
    return 10 + size + (10 if head[5] & 0x10 else 0)


class Mp3Joiner:
    """Streams the audio frames of several MP3 files as one MPEG stream.

    Per piece: ``begin()``, ``feed(bytes)`` as they arrive (returns the frames
    to pass on), ``end()``. ID3v2/ID3v1/APE tags, Xing/Info/VBRI frames and
    anything between frames are dropped; every piece must have the format of
    the first (same MPEG version, layer, sample rate and channel count).
    """

    def __init__(self) -> None:
        self.kind: tuple[int, int, int, bool] | None = None
        self.frames = 0
        self.samples = 0
        self.sample_rate_hz = 0
        #: Bytes of audio frames passed on so far.
        self.bytes_out = 0
        self.bitrates: set[int] = set()
        self._first_header: bytes | None = None
        self._buffer = bytearray()
        self._skip = 0
        self._first_in_piece = True
        self._start_of_piece = True

    def begin(self) -> None:
        self._buffer.clear()
        self._skip = 0
        self._first_in_piece = True
        self._start_of_piece = True

    def feed(self, data: bytes) -> bytes:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buffer += data
        return self._drain(final=False)

    def end(self) -> bytes:
        out = self._drain(final=True)
        self._buffer.clear()
        self._skip = 0
        return out

    def _drain(self, *, final: bool) -> bytes:
        buf = self._buffer
        out = bytearray()
        pos = 0
        while True:
            if self._skip:
                dropped = min(self._skip, len(buf) - pos)
                pos += dropped
                self._skip -= dropped
                if self._skip:
                    break
            left = len(buf) - pos
            if left < 4 or (self._start_of_piece and left < 10 and not final):
                break
            if buf[pos : pos + 3] == b"ID3":
                if left < 10:
                    break
                size = _id3v2_size(buf[pos : pos + 10])
                if size is not None:
                    self._skip = size
                    continue
            self._start_of_piece = False
            if buf[pos : pos + 3] == b"TAG":  # ID3v1: 128 bytes at the end
                self._skip = 128
                continue
            if buf[pos : pos + 8] == b"APETAGEX":  # APEv2: a header (then items and footer) or a footer
                if left < 32:
                    break
                (size,) = struct.unpack_from("<I", buf, pos + 12)
                (flags,) = struct.unpack_from("<I", buf, pos + 20)
                self._skip = 32 + size if flags & (1 << 29) else 32
                continue
            frame = parse_mp3_header(buf[pos : pos + 4])
            if frame is None or (self.kind is not None and frame.kind != self.kind):
                pos = self._resync(buf, pos)
                continue
            if left < frame.length:
                if final:
                    pos = len(buf)  # a frame cut short at the end: drop it
                break
            if self.kind is None and not final and left < frame.length + 4:
                break  # lock onto a format only when the next frame confirms it
            if self.kind is None and left >= frame.length + 4:
                following = parse_mp3_header(buf[pos + frame.length : pos + frame.length + 4])
                if following is None or following.kind != frame.kind:
                    if buf[pos + frame.length : pos + frame.length + 3] not in (b"TAG", b"API", b"ID3"):
                        pos = self._resync(buf, pos)
                        continue
            view = buf[pos : pos + frame.length]
            if self._first_in_piece and _is_info_frame(frame, view):
                self._first_in_piece = False
                pos += frame.length
                continue
            self._first_in_piece = False
            if self.kind is None:
                self.kind = frame.kind
                self.sample_rate_hz = frame.sample_rate_hz
                self._first_header = bytes(view[:4])
            out += view
            self.frames += 1
            self.samples += frame.samples
            self.bytes_out += frame.length
            self.bitrates.add(frame.bitrate)
            pos += frame.length
        del buf[:pos]
        return bytes(out)

    @staticmethod
    def _resync(buf: bytearray, pos: int) -> int:
        """Not a frame start: skip to the next byte that may start a frame or a tag."""
        candidates = [buf.find(marker, pos + 1) for marker in (b"\xff", b"TAG", b"ID3", b"APETAGEX")]
        found = [c for c in candidates if c >= 0]
        return min(found) if found else max(pos + 1, len(buf) - 7)

    def info_frame(self) -> bytes:
        """A Xing ("Info" when every frame has one bitrate) header frame for the frames passed on.

        It carries the frame and byte counts, so that decoders know the exact
        length of the joined stream, constant bitrate or not. Layer III only.
        """
        if self._first_header is None or self.kind is None or self.kind[1] != 3:
            raise ValueError("no Layer III frames to describe")
        head = bytearray(self._first_header)
        head[1] |= 0x01  # no CRC
        head[2] &= ~0x02 & 0xFF  # no padding
        frame = parse_mp3_header(head)
        assert frame is not None
        needed = 4 + _side_info_size(frame) + 16
        while frame.length < needed:  # too small to hold the tag: a higher bitrate index
            head[2] = (head[2] & 0x0F) | (((head[2] >> 4) + 1) << 4)
            frame = parse_mp3_header(head)
            if frame is None:
                raise ValueError("no bitrate leaves room for a Xing header")
        tag = b"Info" if len(self.bitrates) == 1 else b"Xing"
        body = tag + struct.pack(">III", 0x3, self.frames, self.bytes_out + frame.length)
        data = bytearray(frame.length)
        data[:4] = head
        offset = 4 + _side_info_size(frame)
        data[offset : offset + len(body)] = body
        return bytes(data)


# --------------------------------------------------------------------------- joining

PieceOpener = Callable[[int], AbstractAsyncContextManager[AsyncIterator[bytes]]]


@dataclass
class JoinReport:
    """What joining found out, for the adapter's metadata and cost (filled in as it goes)."""

    pieces_done: int = 0
    bytes_out: int = 0
    pcm: PcmFormat | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _bad_audio(provider: str, model: str, message: str) -> ProviderBadResponse:
    return ProviderBadResponse(f"{provider}: {message}", provider=provider, model=model, retryable=False)


async def _to_file(path: str, chunks: AsyncIterator[bytes], transform: Callable[[bytes], bytes] | None = None) -> int:
    written = 0
    handle = await asyncio.to_thread(open, path, "ab")
    try:
        async for chunk in chunks:
            if transform is not None:
                chunk = transform(chunk)
            if chunk:
                await asyncio.to_thread(handle.write, chunk)
                written += len(chunk)
    finally:
        await asyncio.to_thread(handle.close)
    return written


async def _append(path: str, data: bytes) -> None:
    if data:
        def write() -> None:
            with open(path, "ab") as handle:
                handle.write(data)

        await asyncio.to_thread(write)


async def _from_file(path: str, offset: int = 0) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        if offset:
            await asyncio.to_thread(handle.seek, offset)
        while chunk := await asyncio.to_thread(handle.read, _READ_CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


async def join_audio(
    fmt: str,
    count: int,
    open_piece: PieceOpener,
    *,
    provider: str,
    model: str = "",
    pcm: PcmFormat | None = None,
    input_wav: bool = False,
    report: JoinReport | None = None,
) -> AsyncIterator[bytes]:
    """Synthesise ``count`` pieces with ``open_piece(i)`` and stream them as one ``fmt`` file.

    ``pcm`` is the sample format of raw PCM pieces (for wav/pcm output);
    with ``input_wav`` the pieces are WAV files whose header gives it instead.
    Raises ProviderBadResponse (not retryable) when the audio is not what was
    asked for, and whatever ``open_piece`` raises.
    """
    if fmt not in JOINABLE_FORMATS:
        raise ValueError(f"cannot join {fmt!r} audio")
    if count < 1:
        raise ValueError("nothing to join")
    report = report if report is not None else JoinReport()
    if fmt in ("pcm", "wav") and not input_wav and pcm is None:
        raise ValueError("raw PCM pieces need their PcmFormat")

    if count == 1 and fmt in ("mp3", "aac", "ogg_opus", "flac"):
        async with open_piece(0) as chunks:
            async for chunk in chunks:
                report.bytes_out += len(chunk)
                yield chunk
        report.pieces_done = 1
        if not report.bytes_out:
            raise _bad_audio(provider, model, "the vendor sent no audio")
        return

    if fmt == "aac":
        for index in range(count):
            async with open_piece(index) as chunks:
                got = 0
                async for chunk in _strip_leading_id3(chunks):
                    got += len(chunk)
                    yield chunk
            if not got:
                raise _bad_audio(provider, model, f"piece {index + 1} of {count} is empty")
            report.bytes_out += got
            report.pieces_done += 1
        return

    if fmt == "pcm":
        for index in range(count):
            reader = WavReader() if input_wav else None
            got = 0
            async with open_piece(index) as chunks:
                async for chunk in chunks:
                    if reader is not None:
                        chunk = _read_wav(reader, chunk, provider, model)
                    if chunk:
                        got += len(chunk)
                        yield chunk
            piece_format = reader.format if reader is not None else pcm
            _check_pcm(piece_format, report, got, index, count, provider, model)
            report.bytes_out += got
            report.pieces_done += 1
        return

    spool = await asyncio.to_thread(tempfile.mkdtemp, prefix="mediagen-tts-")
    try:
        if fmt == "mp3":
            frames_path = os.path.join(spool, "frames.mp3")
            joiner = Mp3Joiner()
            for index in range(count):
                joiner.begin()
                before = joiner.frames
                async with open_piece(index) as chunks:
                    await _to_file(frames_path, chunks, joiner.feed)
                await _append(frames_path, joiner.end())
                if joiner.frames == before:
                    raise _bad_audio(provider, model, f"piece {index + 1} of {count} is not MP3 audio")
                report.pieces_done += 1
            try:
                header = joiner.info_frame()
            except ValueError as exc:
                raise _bad_audio(provider, model, f"cannot join the MP3 pieces ({exc})") from None
            report.extra["mp3_frames"] = joiner.frames
            report.bytes_out = len(header) + joiner.bytes_out
            yield header
            async for chunk in _from_file(frames_path):
                yield chunk
            return

        if fmt == "wav":
            data_path = os.path.join(spool, "samples.pcm")
            total = 0
            for index in range(count):
                reader = WavReader() if input_wav else None
                async with open_piece(index) as chunks:
                    got = await _to_file(
                        data_path,
                        chunks,
                        (lambda chunk, r=reader: _read_wav(r, chunk, provider, model)) if reader else None,
                    )
                piece_format = reader.format if reader is not None else pcm
                _check_pcm(piece_format, report, got, index, count, provider, model)
                total += got
                report.pieces_done += 1
            assert report.pcm is not None
            header = wav_header(report.pcm, total)
            report.bytes_out = len(header) + total
            yield header
            async for chunk in _from_file(data_path):
                yield chunk
            return

        # ogg_opus / flac, several pieces: decode and encode again as one stream.
        paths = []
        for index in range(count):
            path = os.path.join(spool, f"piece-{index}")
            async with open_piece(index) as chunks:
                got = await _to_file(path, chunks)
            if not got:
                raise _bad_audio(provider, model, f"piece {index + 1} of {count} is empty")
            paths.append(path)
            report.pieces_done += 1
        out_path = os.path.join(spool, "joined")
        try:
            await asyncio.to_thread(_reencode, paths, out_path, fmt)
        except ValueError as exc:
            raise _bad_audio(provider, model, f"cannot join the {fmt} pieces ({exc})") from None
        async for chunk in _from_file(out_path):
            report.bytes_out += len(chunk)
            yield chunk
    finally:
        await asyncio.to_thread(shutil.rmtree, spool, True)


def _read_wav(reader: WavReader, chunk: bytes, provider: str, model: str) -> bytes:
    try:
        return reader.feed(chunk)
    except ValueError as exc:
        raise _bad_audio(provider, model, f"the vendor's WAV audio is unusable ({exc})") from None


def _check_pcm(
    piece_format: PcmFormat | None,
    report: JoinReport,
    got: int,
    index: int,
    count: int,
    provider: str,
    model: str,
) -> None:
    where = f"piece {index + 1} of {count}"
    if piece_format is None or not got:
        raise _bad_audio(provider, model, f"{where} has no audio samples")
    if report.pcm is None:
        report.pcm = piece_format
    elif piece_format != report.pcm:
        raise _bad_audio(provider, model, f"{where} has another sample format ({piece_format}) than the first")
    if got % piece_format.frame_bytes:
        raise _bad_audio(provider, model, f"{where} ends in the middle of a sample")


async def _strip_leading_id3(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    head = bytearray()
    skip = 0
    checked = False
    async for chunk in chunks:
        if skip:
            dropped = min(skip, len(chunk))
            skip -= dropped
            chunk = chunk[dropped:]
            if not chunk:
                continue
        if not checked:
            head += chunk
            if len(head) < 10:
                continue
            checked = True
            size = _id3v2_size(head[:10])
            chunk = bytes(head)
            if size is not None:
                dropped = min(size, len(chunk))
                skip = size - dropped
                chunk = chunk[dropped:]
            if not chunk:
                continue
        yield chunk
    if not checked and head:
        yield bytes(head)


_REENCODERS = {"ogg_opus": ("ogg", "libopus"), "flac": ("flac", "flac")}


def _reencode(paths: list[str], out_path: str, fmt: str) -> None:
    """Decode every file of ``paths`` and encode their samples, in order, as one ``fmt`` stream."""
    import av

    muxer, encoder = _REENCODERS[fmt]
    try:
        with av.open(out_path, "w", format=muxer, options={"fflags": "+bitexact"}) as out:
            stream = None
            resampler = None
            pts = 0

            def encode(frame) -> None:
                nonlocal pts
                frame.pts = pts
                frame.time_base = Fraction(1, stream.codec_context.sample_rate)
                pts += frame.samples
                out.mux(stream.encode(frame))

            for path in paths:
                with av.open(path) as source:
                    if not source.streams.audio:
                        raise ValueError("a piece has no audio stream")
                    audio = source.streams.audio[0]
                    if stream is None:
                        rate = audio.codec_context.sample_rate
                        layout = "mono" if audio.codec_context.channels == 1 else "stereo"
                        # Keep 24-bit FLAC at full depth (decoded as s32); all else is 16-bit speech.
                        deep = fmt == "flac" and audio.codec_context.format.name in ("s32", "s32p")
                        sample_format = "s32" if deep else "s16"
                        stream = out.add_stream(encoder, rate=rate, layout=layout, format=sample_format)
                        if fmt == "ogg_opus":
                            stream.codec_context.bit_rate = audio.codec_context.bit_rate or source.bit_rate or 64000
                        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
                    for frame in source.decode(audio):
                        for converted in resampler.resample(frame):
                            encode(converted)
            if stream is None:
                raise ValueError("no pieces")
            for converted in resampler.resample(None):
                encode(converted)
            out.mux(stream.encode(None))
    except av.FFmpegError as exc:
        raise ValueError(str(exc)) from None


@contextlib.asynccontextmanager
async def as_stream(iterator: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Wrap an async iterator as ``open_output`` returns it, closing it afterwards."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


# --------------------------------------------------------------------------- request options


def provider_options(request: Message, allowed: Mapping[str, str]) -> dict[str, Any]:
    """``request.provider_options`` as a dict; a key not in ``allowed`` (name -> help) is refused."""
    if not request.HasField("provider_options"):
        return {}
    options = json_format.MessageToDict(request.provider_options)
    for key in options:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidArgument.field(
                f"provider_options.{key}", f"unknown option; this provider takes: {known}", "UNKNOWN_OPTION"
            )
    return options


def number_option(options: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    """A numeric option within [low, high], or None when absent."""
    if key not in options:
        return None
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument.field(f"provider_options.{key}", "must be a number", "INVALID_FORMAT")
    if not low <= value <= high:
        raise InvalidArgument.field(f"provider_options.{key}", f"must be from {low:g} to {high:g}", "OUT_OF_RANGE")
    return float(value)


def int_option(options: Mapping[str, Any], key: str, low: int, high: int) -> int | None:
    value = number_option(options, key, low, high)
    if value is None:
        return None
    if value != int(value):
        raise InvalidArgument.field(f"provider_options.{key}", "must be a whole number", "INVALID_FORMAT")
    return int(value)


def bool_option(options: Mapping[str, Any], key: str) -> bool | None:
    if key not in options:
        return None
    if not isinstance(options[key], bool):
        raise InvalidArgument.field(f"provider_options.{key}", "must be true or false", "INVALID_FORMAT")
    return options[key]


def choice_option(options: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str | None:
    if key not in options:
        return None
    if options[key] not in choices:
        raise InvalidArgument.field(
            f"provider_options.{key}", "must be one of " + ", ".join(choices), "UNSUPPORTED_VALUE"
        )
    return options[key]
