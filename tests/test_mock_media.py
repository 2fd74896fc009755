"""Offline media synthesis and probing behind the mock providers.

Everything renders small (160x120, about a second) to keep the file fast.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from providers.mock import media

AUDIO_CASES = [
    # format, content type
    ("wav", "audio/wav"),
    ("mp3", "audio/mpeg"),
    ("ogg_opus", "audio/ogg"),
    ("flac", "audio/flac"),
    ("aac", "audio/aac"),
    ("pcm", "audio/pcm"),
]


def _top_level_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes.append(kind.decode("ascii"))
        offset += size
    return boxes


def _wav_samples(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        return data / 32768.0, wav.getframerate()


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2)))


# --------------------------------------------------------------------------- video


def test_video_probes_as_h264_mp4_of_the_requested_size_and_duration(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    media.render_video(
        path, prompt="a fox in snow", seed=1, duration_seconds=1.5, width=160, height=120
    )

    info = media.probe(path)

    assert info.content_type == "video/mp4"
    assert info.codec == "h264"
    assert (info.width, info.height) == (160, 120)
    assert abs(info.duration_seconds - 1.5) <= 1 / 24


def test_video_frame_count_follows_fps(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    media.render_video(path, prompt="p", seed=1, duration_seconds=1.0, width=64, height=48, fps=10)

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))

    assert len(frames) == 10
    assert media.probe(path).duration_seconds == pytest.approx(1.0, abs=1 / 10)


def test_video_odd_sizes_are_rounded_up_to_even(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    media.render_video(path, prompt="p", seed=1, duration_seconds=0.5, width=161, height=121)

    info = media.probe(path)

    assert (info.width, info.height) == (162, 122)


def test_video_has_moov_before_mdat_for_progressive_playback(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    media.render_video(path, prompt="p", seed=1, duration_seconds=0.5, width=64, height=48)

    boxes = _top_level_boxes(path)

    assert boxes[0] == "ftyp"
    assert boxes.index("moov") < boxes.index("mdat")


def test_video_moves_over_time(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    media.render_video(path, prompt="p", seed=1, duration_seconds=1.0, width=160, height=120)

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]

    assert not np.array_equal(frames[0], frames[-1])


def test_video_is_byte_identical_for_the_same_arguments(tmp_path: Path) -> None:
    args = dict(prompt="a fox", seed=42, duration_seconds=0.5, width=160, height=120)
    media.render_video(tmp_path / "a.mp4", **args)
    media.render_video(tmp_path / "b.mp4", **args)
    media.render_video(tmp_path / "c.mp4", **{**args, "seed": 43})

    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert (tmp_path / "a.mp4").read_bytes() != (tmp_path / "c.mp4").read_bytes()


# --------------------------------------------------------------------------- audio


@pytest.mark.parametrize("kind", media.AUDIO_KINDS)
@pytest.mark.parametrize(("fmt", "content_type"), AUDIO_CASES)
def test_audio_probes_with_the_requested_format_rate_channels_and_duration(
    tmp_path: Path, kind: str, fmt: str, content_type: str
) -> None:
    path = tmp_path / "out.bin"
    channels = 2 if kind == "music" else 1
    render = dict(
        kind=kind,
        text_or_prompt="Hello there, how are you?",
        seed=5,
        duration_seconds=1.3,
        format=fmt,
        channels=channels,
    )
    if fmt not in media.available_audio_formats():
        with pytest.raises(ValueError, match="unsupported audio format"):
            media.render_audio(path, **render)
        return
    media.render_audio(path, **render)
    rate = 24000 if kind == "speech" else 44100

    info = media.probe(path, content_type, sample_rate_hz=rate, channels=channels)

    # Opus always decodes at 48 kHz.
    assert info.sample_rate_hz == (48000 if fmt == "ogg_opus" else rate)
    assert info.content_type == content_type
    assert info.channels == channels
    assert (info.width, info.height) == (0, 0)
    tolerance = {
        "wav": 1 / rate,
        "pcm": 1 / rate,
        "flac": 1 / rate,
        "ogg_opus": 0.05,
        "mp3": 1152 / rate,  # one MPEG audio frame
        # ADTS cannot carry the encoder's 1024-sample priming, so it counts on
        # top of the padding of the last frame.
        "aac": 2 * 1024 / rate,
    }[fmt]
    assert abs(info.duration_seconds - 1.3) <= tolerance


@pytest.mark.parametrize(("fmt", "_content_type"), AUDIO_CASES)
def test_audio_is_byte_identical_for_the_same_arguments(
    tmp_path: Path, fmt: str, _content_type: str
) -> None:
    if fmt not in media.available_audio_formats():
        pytest.skip(f"{fmt} cannot be encoded by this PyAV build")
    args = dict(kind="music", text_or_prompt="calm piano", seed=9, duration_seconds=0.6, format=fmt)
    media.render_audio(tmp_path / "a", **args)
    media.render_audio(tmp_path / "b", **args)
    media.render_audio(tmp_path / "c", **{**args, "seed": 10})

    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert (tmp_path / "a").read_bytes() != (tmp_path / "c").read_bytes()


@pytest.mark.parametrize("kind", media.AUDIO_KINDS)
def test_audio_is_audible_and_not_clipped(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "out.wav"
    media.render_audio(
        path, kind=kind, text_or_prompt="rain on a tin roof", seed=3, duration_seconds=2.0
    )

    samples, _ = _wav_samples(path)

    assert _rms(samples) > 0.02
    assert np.abs(samples).max() < 0.99


def test_speech_is_silent_between_words(tmp_path: Path) -> None:
    # Seven timing units: "m", "a", then three silent ones (" . "), then "m", "a".
    path = tmp_path / "out.wav"
    media.render_audio(path, kind="speech", text_or_prompt="ma . ma", seed=1, duration_seconds=0.7)

    samples, _ = _wav_samples(path)
    unit = len(samples) // 7

    assert _rms(samples[: 2 * unit]) > 0.05
    assert _rms(samples[2 * unit : 5 * unit]) < 1e-3
    assert _rms(samples[5 * unit :]) > 0.05


def test_speech_duration_for_text_is_about_fourteen_characters_a_second() -> None:
    assert media.speech_duration_for_text("x" * 140) == pytest.approx(10.0)
    assert media.speech_duration_for_text("x" * 140, speed=2.0) == pytest.approx(5.0)
    assert media.speech_duration_for_text("hi") == 0.5
    assert media.speech_duration_for_text("") == 0.5
    # Runs of whitespace are one pause.
    spaced, single = "word   " * 20, "word " * 20
    assert media.speech_duration_for_text(spaced) == media.speech_duration_for_text(single)


def test_speech_rendered_for_its_text_duration_measures_that_duration(tmp_path: Path) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    duration = media.speech_duration_for_text(text)
    path = tmp_path / "out.wav"
    media.render_audio(path, kind="speech", text_or_prompt=text, seed=1, duration_seconds=duration)

    assert media.probe(path).duration_seconds == pytest.approx(duration, abs=1 / 24000)


def test_opus_at_a_rate_opus_lacks_is_rendered_at_48k(tmp_path: Path) -> None:
    path = tmp_path / "out.ogg"
    media.render_audio(
        path,
        kind="sound_effect",
        text_or_prompt="door",
        seed=1,
        duration_seconds=0.5,
        format="ogg_opus",
        sample_rate_hz=22050,
    )

    assert media.probe(path).sample_rate_hz == 48000


def test_pcm_probe_uses_the_given_rate_and_channels(tmp_path: Path) -> None:
    path = tmp_path / "out.pcm"
    media.render_audio(
        path,
        kind="music",
        text_or_prompt="p",
        seed=1,
        duration_seconds=1.0,
        format="pcm",
        sample_rate_hz=16000,
        channels=2,
    )

    assert path.stat().st_size == 16000 * 2 * 2
    info = media.probe(path, "audio/pcm", sample_rate_hz=16000, channels=2)
    assert (info.duration_seconds, info.sample_rate_hz, info.channels) == (1.0, 16000, 2)
    # Without rate and channels, raw PCM is taken as 24 kHz mono.
    assert media.probe(path, "audio/pcm").duration_seconds == pytest.approx(64000 / 24000 / 2)


def test_pcm_probe_rejects_a_partial_sample(tmp_path: Path) -> None:
    path = tmp_path / "out.pcm"
    path.write_bytes(b"\x00\x01\x02")

    with pytest.raises(ValueError, match="not a decodable media file"):
        media.probe(path, "audio/pcm")


def test_wav_probe_counts_only_the_samples_present(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    media.render_audio(path, kind="music", text_or_prompt="p", seed=1, duration_seconds=1.0)
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 44100])  # header + half a second of 16-bit mono

    assert media.probe(path).duration_seconds == pytest.approx(0.5)


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")]
)
def test_image_probes_with_its_format_and_size(tmp_path: Path, fmt: str, content_type: str) -> None:
    path = tmp_path / "out"
    media.render_image(path, prompt="a lighthouse", seed=2, width=160, height=120, format=fmt)

    info = media.probe(path)

    assert info == media.MediaInfo(content_type, 0.0, width=160, height=120, codec=fmt)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_image_is_byte_identical_for_the_same_arguments(tmp_path: Path, fmt: str) -> None:
    args = dict(prompt="a lighthouse", seed=2, width=160, height=120, format=fmt)
    media.render_image(tmp_path / "a", **args)
    media.render_image(tmp_path / "b", **args)
    media.render_image(tmp_path / "c", **{**args, "prompt": "a windmill"})

    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert (tmp_path / "a").read_bytes() != (tmp_path / "c").read_bytes()


# --------------------------------------------------------------------------- probing


def test_probe_reads_the_type_from_the_content_not_the_name(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    media.render_audio(path, kind="music", text_or_prompt="p", seed=1, duration_seconds=0.3)

    assert media.probe(path).content_type == "audio/wav"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world\n" * 50,
        np.random.default_rng(0).bytes(4096),
        b"\x89PNG\r\n\x1a\n" + bytes(500),
        b"\xff\xd8\xff\xe0" + bytes(500),
        b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(500),
        b"\x00\x00\x00\x18ftypisom" + bytes(500),
        b"OggS" + bytes(500),
        b"fLaC" + bytes(500),
        b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(500),
        b"\xff\xfb\x90\x00" + bytes(500),
    ],
    ids=["empty", "text", "random", "png", "jpeg", "wav", "mp4", "ogg", "flac", "id3", "mpeg"],
)
def test_probe_rejects_what_is_not_decodable_media(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "garbage"
    path.write_bytes(data)

    with pytest.raises(ValueError, match="not a decodable media file"):
        media.probe(path)


# --------------------------------------------------------------------------- helpers


def test_content_types_and_extensions() -> None:
    assert media.content_type_for("mp4", "video") == "video/mp4"
    assert media.content_type_for("mp3", "audio") == "audio/mpeg"
    assert media.content_type_for("ogg_opus", "audio") == "audio/ogg"
    assert media.content_type_for("jpeg", "image") == "image/jpeg"
    assert media.extension_for("video/mp4") == ".mp4"
    assert media.extension_for("audio/mpeg") == ".mp3"
    assert media.extension_for("audio/ogg; codecs=opus") == ".ogg"
    assert media.extension_for("IMAGE/JPEG") == ".jpg"
    for media_kind, formats in (
        ("video", ["mp4"]),
        ("audio", [fmt for fmt, _ in AUDIO_CASES]),
        ("image", ["png", "jpeg", "webp"]),
    ):
        for fmt in formats:
            assert media.extension_for(media.content_type_for(fmt, media_kind)).startswith(".")


@pytest.mark.parametrize(
    ("fmt", "kind"), [("gif", "image"), ("mp3", "video"), ("ogg", "audio"), ("png", "pictures")]
)
def test_content_type_for_rejects_unknown_formats(fmt: str, kind: str) -> None:
    with pytest.raises(ValueError):
        media.content_type_for(fmt, kind)


def test_extension_for_rejects_unknown_types() -> None:
    with pytest.raises(ValueError):
        media.extension_for("application/octet-stream")


def test_wav_and_pcm_are_always_available() -> None:
    assert {"wav", "pcm"} <= media.available_audio_formats()


# --------------------------------------------------------------------------- arguments

VIDEO = dict(prompt="p", seed=1, duration_seconds=1.0, width=160, height=120)
AUDIO = dict(kind="music", text_or_prompt="p", seed=1, duration_seconds=1.0)
IMAGE = dict(prompt="p", seed=1, width=160, height=120)


@pytest.mark.parametrize(
    ("render", "args", "argument"),
    [
        (media.render_video, {**VIDEO, "duration_seconds": 0}, "duration_seconds"),
        (media.render_video, {**VIDEO, "duration_seconds": -1.0}, "duration_seconds"),
        (media.render_video, {**VIDEO, "duration_seconds": 600.5}, "duration_seconds"),
        (media.render_video, {**VIDEO, "duration_seconds": math.nan}, "duration_seconds"),
        (media.render_video, {**VIDEO, "duration_seconds": "1"}, "duration_seconds"),
        (media.render_video, {**VIDEO, "width": 15}, "width"),
        (media.render_video, {**VIDEO, "width": 4097}, "width"),
        (media.render_video, {**VIDEO, "width": 160.0}, "width"),
        (media.render_video, {**VIDEO, "height": 8}, "height"),
        (media.render_video, {**VIDEO, "fps": 0}, "fps"),
        (media.render_video, {**VIDEO, "fps": 121}, "fps"),
        (media.render_video, {**VIDEO, "seed": "1"}, "seed"),
        (media.render_video, {**VIDEO, "prompt": None}, "prompt"),
        (media.render_audio, {**AUDIO, "kind": "noise"}, "kind"),
        (media.render_audio, {**AUDIO, "format": "m4a"}, "format"),
        (media.render_audio, {**AUDIO, "channels": 3}, "channels"),
        (media.render_audio, {**AUDIO, "sample_rate_hz": 7999}, "sample_rate_hz"),
        (media.render_audio, {**AUDIO, "sample_rate_hz": 96001}, "sample_rate_hz"),
        (media.render_audio, {**AUDIO, "format": "mp3", "sample_rate_hz": 96000}, "sample_rate_hz"),
        (media.render_audio, {**AUDIO, "duration_seconds": 0.0}, "duration_seconds"),
        (media.render_audio, {**AUDIO, "duration_seconds": 601}, "duration_seconds"),
        (media.render_audio, {**AUDIO, "kind": "speech", "text_or_prompt": "  "}, "text_or_prompt"),
        (media.render_audio, {**AUDIO, "seed": True}, "seed"),
        (media.render_image, {**IMAGE, "width": 0}, "width"),
        (media.render_image, {**IMAGE, "height": 5000}, "height"),
        (media.render_image, {**IMAGE, "format": "gif"}, "format"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(
    tmp_path: Path, render, args: dict, argument: str
) -> None:
    path = tmp_path / "out"

    with pytest.raises(ValueError, match=argument):
        render(path, **args)
    assert not path.exists()


def test_bad_speed_raises_value_error() -> None:
    with pytest.raises(ValueError, match="speed"):
        media.speech_duration_for_text("hello", speed=0)
