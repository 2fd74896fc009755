"""The speech helpers on their own: text splitting, MP3/WAV parsing, joining real audio pieces."""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.errors import ProviderBadResponse
from providers.mock.media import MediaInfo, probe
from providers.speech_text import (
    JoinReport,
    Mp3Joiner,
    PcmFormat,
    VendorAuth,
    WavReader,
    join_audio,
    parse_mp3_header,
    split_text,
    text_size,
    wav_header,
)
from tests.fakes.elevenlabs import render_audio_bytes


def probe_bytes(data: bytes) -> MediaInfo:
    fd, path = tempfile.mkstemp(prefix="speech-text-test-")
    os.close(fd)
    try:
        Path(path).write_bytes(data)
        return probe(path)
    finally:
        os.unlink(path)


# --- splitting ---------------------------------------------------------------------------


def test_short_text_is_one_piece_and_empty_text_none():
    assert split_text("  Hello there.  ", 100) == ["Hello there."]
    assert split_text(" \n ", 100) == []


def test_pieces_are_packed_up_to_the_limit_at_sentence_ends():
    text = "One two three. Four five six! Seven eight nine? Ten eleven twelve."
    assert split_text(text, 30) == ["One two three. Four five six!", "Seven eight nine?", "Ten eleven twelve."]


def test_abbreviations_and_initials_do_not_end_sentences():
    text = "Dr. Smith met J. R. Tolkien at 3.30 today. Then they left."
    assert split_text(text, 45) == ["Dr. Smith met J. R. Tolkien at 3.30 today.", "Then they left."]


def test_line_breaks_and_closing_quotes_are_boundaries():
    text = 'He said "stop." She left.\nA heading without a stop\nAnd more'
    assert split_text(text, 26) == ['He said "stop." She left.', "A heading without a stop", "And more"]


def test_a_monster_sentence_is_cut_at_clauses_then_words_then_characters():
    text = "first clause, second clause; third clause and more words here"
    assert split_text(text, 20) == ["first clause,", "second clause;", "third clause and", "more words here"]
    assert split_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_byte_limits_count_utf8():
    text = "日本語の文です。" * 4  # 8 characters, 24 bytes per sentence
    pieces = split_text(text, 50, unit="bytes")
    assert pieces == ["日本語の文です。日本語の文です。"] * 2
    assert all(text_size(p, "bytes") <= 50 for p in pieces)
    assert split_text("ééééé", 4, unit="bytes") == ["éé", "éé", "é"]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab .,;!?\n日é—-")), max_size=300), st.integers(1, 40), st.sampled_from(["characters", "bytes"]))
def test_splitting_keeps_every_character_in_order_under_the_limit(text, limit, unit):
    if unit == "bytes":
        limit = max(limit, 3)  # room for one character
    pieces = split_text(text, limit, unit=unit)
    assert all(0 < text_size(p, unit) <= limit for p in pieces)
    assert all(p == p.strip() for p in pieces)
    # Each piece is the text's own, in order; only white space at the cuts is dropped.
    position = 0
    for piece in pieces:
        found = text.find(piece, position)
        assert found >= 0 and not text[position:found].strip()
        position = found + len(piece)
    assert not text[position:].strip()


# --- MP3 ---------------------------------------------------------------------------------


def mp3(seconds: float, rate: int = 24000, seed: int = 1) -> bytes:
    return render_audio_bytes("mp3", seconds, rate=rate, text="mp3 piece", seed=seed)


def id3v2(payload: bytes = b"TIT2\x00\x00\x00\x05\x00\x00\x03title") -> bytes:
    size = len(payload)
    synchsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x04\x00\x00" + synchsafe + payload


def test_mp3_header_parsing():
    frame = parse_mp3_header(bytes([0xFF, 0xFB, 0x90, 0x64]))  # MPEG-1 layer III 128 kbps 44.1 kHz
    assert frame is not None and frame.length == 417 and frame.samples == 1152 and not frame.mono
    assert parse_mp3_header(b"ID3\x04") is None
    assert parse_mp3_header(bytes([0xFF, 0xFB, 0xF0, 0x64])) is None  # bad bitrate index


def test_mp3_joiner_drops_tags_info_frames_and_garbage():
    audio = mp3(0.5)
    assert b"Xing" in audio or b"Info" in audio
    clean = Mp3Joiner()
    clean.begin()
    expected = clean.feed(audio) + clean.end()
    assert expected and b"Xing" not in expected and b"Info" not in expected

    noisy = id3v2() + audio + b"TAG" + b"\xff" * 125
    joiner = Mp3Joiner()
    out = bytearray()
    for piece in (noisy, b"\x00\x01garbage" + audio):
        joiner.begin()
        for start in range(0, len(piece), 333):  # arbitrary chunk boundaries
            out += joiner.feed(piece[start : start + 333])
        out += joiner.end()
    assert bytes(out) == expected * 2
    assert joiner.frames == 2 * clean.frames


def test_mp3_pieces_of_another_format_are_not_mixed_in():
    joiner = Mp3Joiner()
    joiner.begin()
    first = joiner.feed(mp3(0.3, 24000)) + joiner.end()
    joiner.begin()
    second = joiner.feed(mp3(0.3, 44100)) + joiner.end()
    assert first and not second


# --- WAV ---------------------------------------------------------------------------------


def test_wav_reader_and_header_round_trip():
    samples = struct.pack("<4h", 1, -1, 2, -2)
    wav = wav_header(PcmFormat(16000), len(samples)) + samples
    reader = WavReader()
    assert b"".join(reader.feed(wav[i : i + 5]) for i in range(0, len(wav), 5)) == samples
    assert reader.format == PcmFormat(16000)
    info = probe_bytes(wav)
    assert info.sample_rate_hz == 16000 and info.duration_seconds == pytest.approx(4 / 16000)
    with pytest.raises(ValueError):
        WavReader().feed(b"RIFF\x00\x00\x00\x00AVI LIST" + b"\x00" * 20)


def test_wav_reader_skips_extra_chunks():
    samples = b"\x01\x00" * 10
    header = bytearray(wav_header(PcmFormat(8000), len(samples)))
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd size, padded
    wav = bytes(header[:36]) + extra + bytes(header[36:]) + samples
    reader = WavReader()
    assert reader.feed(wav) == samples


# --- joining -------------------------------------------------------------------------------


def opener(pieces: list[bytes], chunk: int = 1000):
    opened: list[int] = []

    @contextlib.asynccontextmanager
    async def open_piece(index: int):
        opened.append(index)

        async def chunks():
            data = pieces[index]
            for start in range(0, len(data), chunk):
                yield data[start : start + chunk]

        yield chunks()

    return open_piece, opened


async def joined(fmt: str, pieces: list[bytes], **kwargs) -> bytes:
    open_piece, opened = opener(pieces)
    out = b"".join([c async for c in join_audio(fmt, len(pieces), open_piece, provider="test", **kwargs)])
    assert opened == list(range(len(pieces)))
    return out


@pytest.mark.parametrize(
    ("fmt", "rate", "content_type"),
    [("flac", 24000, "audio/flac"), ("ogg_opus", 48000, "audio/ogg"), ("aac", 24000, "audio/aac"), ("mp3", 44100, "audio/mpeg")],
)
async def test_joined_pieces_decode_as_one_file_as_long_as_the_pieces(fmt, rate, content_type):
    pieces = [render_audio_bytes(fmt, s, rate=rate, text="join", seed=i) for i, s in enumerate((0.7, 1.1, 0.4))]
    data = await joined(fmt, pieces)
    info = probe_bytes(data)
    assert info.content_type == content_type and info.sample_rate_hz == rate
    if fmt == "mp3":
        frames = 0
        for piece in pieces:
            one = Mp3Joiner()
            one.begin()
            one.feed(piece)
            one.end()
            frames += one.samples
        assert data.count(b"Info") == 1  # one header, with the total frame count
        assert info.duration_seconds == pytest.approx(frames / rate, abs=1e-3)
        assert _decoded_samples(data) == frames  # the header frame is not decoded as audio
    else:
        assert info.duration_seconds == pytest.approx(sum(probe_bytes(p).duration_seconds for p in pieces), abs=0.02)


def _decoded_samples(data: bytes) -> int:
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


def mp3_at(bitrate: int, seconds: float, rate: int = 24000) -> bytes:
    """A sine tone as MP3 at a given bitrate (render_audio leaves the bitrate to LAME)."""
    import io
    from fractions import Fraction

    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.codec_context.bit_rate = bitrate
        samples = np.round(np.sin(np.arange(int(seconds * rate)) * 0.05) * 8000).astype("<i2")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.time_base, frame.pts = rate, Fraction(1, rate), 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


async def test_pieces_at_different_bitrates_get_a_xing_header_with_the_exact_length():
    pieces = [mp3_at(32_000, 1.0), mp3_at(96_000, 0.5)]
    data = await joined("mp3", pieces)
    assert data.count(b"Xing") == 1 and b"Info" not in data
    assert data[1] & 0x01  # the header frame carries no CRC
    total = Mp3Joiner()
    for piece in pieces:
        total.begin()
        total.feed(piece)
        total.end()
    assert len(total.bitrates) == 2
    assert probe_bytes(data).duration_seconds == pytest.approx(total.samples / 24000, abs=1e-3)
    assert _decoded_samples(data) == total.samples


async def test_24_bit_flac_pieces_stay_24_bit():
    import io
    from fractions import Fraction

    import av
    import numpy as np

    def flac24(seconds: float, rate: int = 24000) -> bytes:
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="flac") as container:
            stream = container.add_stream("flac", rate=rate, layout="mono", format="s32")
            samples = (np.sin(np.arange(int(seconds * rate)) * 0.05) * 2**30).astype("<i4")
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s32", layout="mono")
            frame.sample_rate, frame.time_base, frame.pts = rate, Fraction(1, rate), 0
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return buffer.getvalue()

    data = await joined("flac", [flac24(0.5), flac24(0.7)])
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].codec_context.format.name == "s32"
    assert probe_bytes(data).duration_seconds == pytest.approx(1.2, abs=1e-3)


async def test_one_piece_passes_through_untouched():
    piece = mp3(0.4)
    assert await joined("mp3", [piece]) == piece


async def test_pcm_and_wav_joins():
    pcm = [b"\x01\x00" * 240, b"\x02\x00" * 480]
    assert await joined("pcm", pcm, pcm=PcmFormat(24000)) == pcm[0] + pcm[1]
    report = JoinReport()
    wav = await joined("wav", pcm, pcm=PcmFormat(24000), report=report)
    assert wav == wav_header(PcmFormat(24000), 1440) + pcm[0] + pcm[1]
    assert report.pieces_done == 2 and report.bytes_out == len(wav)
    wrapped = [wav_header(PcmFormat(22050), len(p)) + p for p in pcm]
    assert await joined("wav", wrapped, input_wav=True) == wav_header(PcmFormat(22050), 1440) + pcm[0] + pcm[1]
    assert await joined("pcm", wrapped, input_wav=True) == pcm[0] + pcm[1]


@pytest.mark.parametrize(
    ("fmt", "pieces", "kwargs", "message"),
    [
        ("mp3", [b"not audio at all" * 10, b"x"], {}, "not MP3"),
        ("pcm", [b"\x01\x00\x02"], {"pcm": PcmFormat(24000)}, "middle of a sample"),
        ("wav", [b"\x01\x00", b""], {"pcm": PcmFormat(24000)}, "no audio samples"),
        (
            "wav",
            [wav_header(PcmFormat(24000), 2) + b"\x00\x00", wav_header(PcmFormat(16000), 2) + b"\x00\x00"],
            {"input_wav": True},
            "another sample format",
        ),
        ("flac", [b"fLaC broken", b"fLaC broken"], {}, "cannot join"),
        ("mp3", [b""], {}, "no audio"),
    ],
)
async def test_unusable_audio_is_a_bad_response_not_retried(fmt, pieces, kwargs, message):
    with pytest.raises(ProviderBadResponse) as caught:
        await joined(fmt, pieces, **kwargs)
    assert message in str(caught.value) and not caught.value.retryable


# --- auth -------------------------------------------------------------------------------


async def test_vendor_auth_sets_headers_and_captures_tagged_answers_only():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"character-cost": "12"}, content=b"audio")

    auth = VendorAuth({"xi-api-key": "secret-key-123"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), auth=auth) as client:
        tag = auth.tag()
        await client.post("https://api.example/x", headers={VendorAuth.CAPTURE_HEADER: tag})
        await client.get("https://api.example/y")
    assert all(r.headers["xi-api-key"] == "secret-key-123" for r in seen)
    assert all(VendorAuth.CAPTURE_HEADER not in r.headers for r in seen)
    info = auth.take(tag)
    assert info is not None and info.status == 200 and info.headers["character-cost"] == "12"
    assert auth.take(tag) is None
