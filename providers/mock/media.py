"""Offline, deterministic media synthesis and probing for the mock providers.

The mock providers (the default when no vendor key is set) must hand back real,
playable files so that storage, probing, download and the clients are exercised
exactly as with a vendor. Everything here is a pure function of its arguments:
the same call writes the same bytes, so a restarted job reproduces its output.
That holds for one machine and one set of library builds; another NumPy,
FFmpeg or CPU (vectorised float maths) may change a few bits.

All functions are synchronous and CPU-bound; async callers run them through
``asyncio.to_thread``. Long outputs are streamed: video one frame at a time,
audio one second at a time.
"""

from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import hashlib
import math
import os
import unicodedata
import wave
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from functools import partial
from typing import BinaryIO, TypeVar, cast

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from PIL import Image, ImageDraw

MAX_DURATION_SECONDS = 600.0
MIN_SIDE = 16
MAX_SIDE = 4096
MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 96000
AUDIO_KINDS = ("speech", "music", "sound_effect")
SPEECH_CHARACTERS_PER_SECOND = 14.0

_NOT_MEDIA = "not a decodable media file"
_PCM_DEFAULT_SAMPLE_RATE_HZ = 24000

_CONTENT_TYPES: dict[str, dict[str, str]] = {
    "video": {"mp4": "video/mp4"},
    "audio": {
        "wav": "audio/wav",
        "mp3": "audio/mpeg",
        "ogg_opus": "audio/ogg",
        "flac": "audio/flac",
        "aac": "audio/aac",
        "pcm": "audio/pcm",
    },
    "image": {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"},
}
_EXTENSIONS = {
    "video/mp4": ".mp4",
    "audio/wav": ".wav",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "audio/aac": ".aac",
    "audio/pcm": ".pcm",
    # Not produced here, but vendors return AAC in MP4 and probe() reports it.
    "audio/mp4": ".m4a",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
}

# Audio format -> (FFmpeg muxer, encoder, encoder options). AAC goes in ADTS,
# the stream that "audio/aac" names; wav and pcm are written without FFmpeg.
# Mock output favours encoding speed over quality: LAME -q7 and the fast AAC
# coder take about half the time of the defaults.
_AUDIO_ENCODERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", {"compression_level": "7"}),
    "ogg_opus": ("ogg", "libopus", {}),
    "flac": ("flac", "flac", {}),
    "aac": ("adts", "aac", {"aac_coder": "fast"}),
}
_AUDIO_FORMATS = ("wav", "pcm", *_AUDIO_ENCODERS)
# Image format -> (Pillow format, save options).
_IMAGE_ENCODERS: dict[str, tuple[str, dict[str, int]]] = {
    "png": ("PNG", {}),
    "jpeg": ("JPEG", {"quality": 90}),
    "webp": ("WEBP", {"quality": 85, "method": 4}),
}
# Without bitexact, the muxers write the FFmpeg version (and Ogg a random serial
# number) into the file, which would break byte-for-byte determinism.
_MUXER_OPTIONS = {"fflags": "+bitexact"}


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    content_type: str
    duration_seconds: float  # measured from the container/stream; 0.0 for images
    width: int = 0
    height: int = 0
    sample_rate_hz: int = 0
    channels: int = 0
    codec: str = ""


# --------------------------------------------------------------------------- helpers


def content_type_for(format: str, media: str) -> str:
    """MIME type of ``format`` ("mp3", "png", ...) for ``media`` ("video", "audio" or "image")."""
    try:
        return _CONTENT_TYPES[media][format]
    except KeyError:
        raise ValueError(f"unknown {media!r} format {format!r}") from None


def extension_for(content_type: str) -> str:
    """File extension, dot included, for a MIME type; parameters ("; codecs=opus") are ignored."""
    base = _base_content_type(content_type)
    try:
        return _EXTENSIONS[base]
    except KeyError:
        raise ValueError(f"unknown content type {content_type!r}") from None


def available_audio_formats() -> frozenset[str]:
    """The render_audio formats this PyAV build can encode."""
    encodable = {
        fmt
        for fmt, (muxer, encoder, _) in _AUDIO_ENCODERS.items()
        if muxer in av.formats_available and _has_encoder(encoder)
    }
    return frozenset({"wav", "pcm", *encodable})


def _has_encoder(name: str) -> bool:
    # av.codecs_available also lists decoders, and "aac" names both.
    try:
        av.Codec(name, "w")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


def speech_duration_for_text(text: str, speed: float = 1.0) -> float:
    """Seconds the mock voice takes to say ``text``: ~14 characters a second at speed 1, min 0.5."""
    _check_number("speed", speed, 0.25, 4.0)
    return max(0.5, len(_speech_units(text)) / SPEECH_CHARACTERS_PER_SECOND / speed)


def _base_content_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _check_number(
    name: str, value: object, low: float, high: float, *, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    # Written so that NaN fails too.
    above_low = value > low if low_open else value >= low
    if not (above_low and value <= high):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_common(prompt: object, seed: object, prompt_name: str = "prompt") -> None:
    if not isinstance(prompt, str):
        raise ValueError(f"{prompt_name} must be a string, got {type(prompt).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")


_T = TypeVar("_T")


class _Dice:
    """Reproducible random numbers keyed by the arguments that must determine them.

    Only ``Generator.random()`` is used: its stream is fixed by the PCG64 bit
    generator, whereas NumPy may change its other distributions between releases.
    """

    def __init__(self, *key: object) -> None:
        digest = hashlib.sha256(repr(key).encode("utf-8", "surrogatepass")).digest()
        self._rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(self._rng.random())

    def log_uniform(self, low: float, high: float) -> float:
        return math.exp(self.uniform(math.log(low), math.log(high)))

    def index(self, count: int) -> int:
        return min(count - 1, int(self._rng.random() * count))

    def choice(self, options: Sequence[_T]) -> _T:
        return options[self.index(len(options))]

    def noise(self, count: int) -> np.ndarray:
        return self._rng.random(count) * 2.0 - 1.0


def _palette(prompt: str, seed: int) -> list[tuple[float, float, float]]:
    """Four RGB colours (0..1) shared by the image and video of one prompt and seed."""
    dice = _Dice("palette", prompt, seed)
    hue = dice.uniform(0.0, 1.0)
    return [
        colorsys.hsv_to_rgb(hue, dice.uniform(0.45, 0.8), dice.uniform(0.25, 0.45)),
        colorsys.hsv_to_rgb((hue + dice.uniform(0.06, 0.18)) % 1.0, dice.uniform(0.5, 0.9), 0.9),
        colorsys.hsv_to_rgb((hue + 0.5) % 1.0, dice.uniform(0.6, 1.0), 1.0),
        colorsys.hsv_to_rgb((hue + dice.uniform(0.25, 0.4)) % 1.0, dice.uniform(0.3, 0.7), 0.95),
    ]


def _diagonal_ramp(width: int, height: int, angle: float) -> np.ndarray:
    """A float32 (height, width) ramp from 0 to 1 along direction ``angle``."""
    dx, dy = math.cos(angle), math.sin(angle)
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32) * dx
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32) * dy
    ramp = xs[None, :] + ys[:, None]
    ramp -= ramp.min()
    return ramp / max(float(ramp.max()), 1e-6)


# --------------------------------------------------------------------------- video


def _rgb_to_yuv(rgb: tuple[float, float, float]) -> tuple[float, float, float]:
    """BT.709 limited-range Y, Cb, Cr (0..255) of an RGB colour (0..1); the stream is tagged so."""
    r, g, b = rgb
    luma = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return (
        16.0 + 219.0 * luma,
        128.0 + 224.0 * (b - luma) / 1.8556,
        128.0 + 224.0 * (r - luma) / 1.5748,
    )


def _disk(diameter: int) -> np.ndarray:
    centre = diameter / 2.0
    yy, xx = np.ogrid[:diameter, :diameter]
    return (xx + 0.5 - centre) ** 2 + (yy + 0.5 - centre) ** 2 <= centre**2


def _even(value: float) -> int:
    return 2 * int(round(value / 2.0))


class _VideoScene:
    """Draws yuv420p frames directly, so no per-frame colour conversion is needed.

    A two-colour gradient background, a disc that crosses the frame over the
    clip's duration while bobbing up and down, and a progress bar along the
    bottom whose length counts frames.
    """

    def __init__(self, prompt: str, seed: int, width: int, height: int) -> None:
        dice = _Dice("video", prompt, seed)
        start_colour, end_colour, disc_colour, _ = _palette(prompt, seed)
        self.width, self.height = width, height
        chroma_w, chroma_h = width // 2, height // 2
        self._luma_size = width * height
        self._chroma_size = chroma_w * chroma_h

        self._background = np.empty(self._luma_size + 2 * self._chroma_size, dtype=np.uint8)
        luma, cb, cr = self._planes(self._background)
        ramp = _diagonal_ramp(width, height, dice.uniform(0.0, 2.0 * math.pi))
        chroma_ramp = ramp[::2, ::2]
        start, end = _rgb_to_yuv(start_colour), _rgb_to_yuv(end_colour)
        for plane, values, a, b in (
            (luma, ramp, start[0], end[0]),
            (cb, chroma_ramp, start[1], end[1]),
            (cr, chroma_ramp, start[2], end[2]),
        ):
            plane[:] = np.round(a + (b - a) * values)

        # An even diameter keeps the disc aligned with the 2x2 chroma grid.
        self._diameter = max(4, _even(min(width, height) / 3.0))
        self._luma_disk = _disk(self._diameter)
        self._chroma_disk = _disk(self._diameter // 2)
        self._disc_yuv = tuple(round(c) for c in _rgb_to_yuv(disc_colour))
        self._left_to_right = dice.uniform(0.0, 1.0) < 0.5
        self._bobs = dice.uniform(0.5, 2.5)
        self._bob_phase = dice.uniform(0.0, 2.0 * math.pi)
        self._bar_height = max(2, _even(height / 40.0))

    def _planes(self, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chroma_shape = (self.height // 2, self.width // 2)
        luma_end = self._luma_size
        cb_end = luma_end + self._chroma_size
        return (
            buffer[:luma_end].reshape(self.height, self.width),
            buffer[luma_end:cb_end].reshape(chroma_shape),
            buffer[cb_end:].reshape(chroma_shape),
        )

    def frame(self, index: int, frame_count: int) -> np.ndarray:
        buffer = self._background.copy()
        luma, cb, cr = self._planes(buffer)
        progress = index / (frame_count - 1) if frame_count > 1 else 0.0
        if not self._left_to_right:
            progress = 1.0 - progress

        free_x = self.width - self._diameter
        free_y = self.height - self._diameter
        bob = math.sin(2.0 * math.pi * self._bobs * progress + self._bob_phase)
        x = _even(free_x * progress)
        y = _even(free_y * (0.5 + 0.3 * bob))
        d, half = self._diameter, self._diameter // 2
        luma[y : y + d, x : x + d][self._luma_disk] = self._disc_yuv[0]
        cb[y // 2 : y // 2 + half, x // 2 : x // 2 + half][self._chroma_disk] = self._disc_yuv[1]
        cr[y // 2 : y // 2 + half, x // 2 : x // 2 + half][self._chroma_disk] = self._disc_yuv[2]

        filled = _even(self.width * (index + 1) / frame_count)
        top = self.height - self._bar_height
        luma[top:, :filled] = 235
        cb[top // 2 :, : filled // 2] = 128
        cr[top // 2 :, : filled // 2] = 128
        return buffer.reshape(self.height * 3 // 2, self.width)


def render_video(
    path: str | os.PathLike[str],
    *,
    prompt: str,
    seed: int,
    duration_seconds: float,
    width: int,
    height: int,
    fps: int = 24,
) -> None:
    """Write an H.264/MP4 clip (moov first, so it can play while downloading).

    Odd ``width``/``height`` are rounded up to even, as yuv420p requires. The
    clip has round(duration_seconds * fps) frames (at least one).
    """
    _check_common(prompt, seed)
    _check_number("duration_seconds", duration_seconds, 0.0, MAX_DURATION_SECONDS, low_open=True)
    _check_int("width", width, MIN_SIDE, MAX_SIDE)
    _check_int("height", height, MIN_SIDE, MAX_SIDE)
    _check_int("fps", fps, 1, 120)
    width += width % 2
    height += height % 2
    frame_count = max(1, round(duration_seconds * fps))
    scene = _VideoScene(prompt, seed, width, height)

    with av.open(
        os.fspath(path), "w", format="mp4", options={"movflags": "+faststart", **_MUXER_OPTIONS}
    ) as container:
        # One x264 thread: multi-threaded encoding may vary between runs.
        stream = container.add_stream(
            "libx264", rate=fps, options={"preset": "ultrafast", "threads": "1"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        context = stream.codec_context
        context.colorspace = Colorspace.ITU709
        context.color_primaries = ColorPrimaries.BT709
        context.color_trc = ColorTrc.BT709
        context.color_range = ColorRange.MPEG
        for index in range(frame_count):
            frame = av.VideoFrame.from_ndarray(scene.frame(index, frame_count), format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# --------------------------------------------------------------------------- audio


@dataclasses.dataclass(frozen=True)
class _Event:
    """One short sound on the timeline (a few seconds at most), rendered when it first sounds."""

    start: int  # first sample
    length: int  # in samples
    render: Callable[[], np.ndarray]  # -> exactly ``length`` float samples


def _ticks(length: int) -> np.ndarray:
    """Sample indices 0..length-1 as float32.

    Synthesis runs in float32, where NumPy's vectorised sin/exp are several times
    faster than in float64. Events last seconds, so float32 phases stay within
    a few thousandths of a radian: far below what 16-bit output can show.
    """
    return np.arange(length, dtype=np.float32)


def _envelope(length: int, attack: int, release: int) -> np.ndarray:
    """Linear attack and release, flat in between; avoids clicks at note edges."""
    i = _ticks(length)
    return np.clip(np.minimum((i + 1) / max(attack, 1), (length - i) / max(release, 1)), 0.0, 1.0)


def _arch(length: int) -> np.ndarray:
    """Half a sine: silent at both ends, loudest in the middle."""
    return np.sin(np.pi * (_ticks(length) + 0.5) / length)


def _sine(frequency: float, length: int, rate: int) -> np.ndarray:
    return np.sin((2.0 * math.pi * frequency / rate) * _ticks(length))


def _band_noise(dice: _Dice, length: int, rate: int, centre: float, octaves: float) -> np.ndarray:
    """White noise shaped in the frequency domain by a log-Gaussian band; peak 1."""
    # A power-of-two FFT: arbitrary (e.g. prime) lengths are many times slower.
    size = 1 << max(0, length - 1).bit_length()
    spectrum = np.fft.rfft(dice.noise(size))
    frequencies = np.fft.rfftfreq(size, 1.0 / rate)
    frequencies[0] = 1e-3  # the log below would be -inf at DC
    spectrum *= np.exp(-0.5 * (np.log2(frequencies / centre) / octaves) ** 2)
    shaped = np.fft.irfft(spectrum, size)[:length].astype(np.float32)
    return shaped / max(float(np.abs(shaped).max()), 1e-9)


def _speech_units(text: str) -> str:
    """The text as spoken, one timing unit per character: whitespace runs count once."""
    return " ".join(text.split())


# Rough first and second formants (Hz) of the vowels.
_VOWEL_FORMANTS = {
    "a": (730.0, 1090.0),
    "e": (530.0, 1840.0),
    "i": (270.0, 2290.0),
    "o": (570.0, 840.0),
    "u": (300.0, 870.0),
    "y": (300.0, 2100.0),
}
_FRICATIVES = frozenset("cfhjsxz")
# Slow speech gets longer pauses, not syllables that last for seconds.
_MAX_SYLLABLE_SECONDS = 0.35


def _fricative(*, key: tuple[object, ...], length: int, hiss: float, rate: int) -> np.ndarray:
    # Noise ring-modulated by a high tone: a band of hiss around that tone.
    noise = _Dice(*key).noise(length)
    return 0.25 * noise * _sine(hiss, length, rate) * _envelope(length, length // 4, length // 3)


def _voiced(
    *, f0: float, formants: tuple[float, float], gain: float, length: int, rate: int
) -> np.ndarray:
    # A sharp pulse at the pitch excites two formant tones, like a glottis and vocal tract.
    pulse = (0.5 + 0.5 * np.cos((2.0 * math.pi * f0 / rate) * _ticks(length))) ** 3
    tone = 0.35 * _sine(f0, length, rate) + pulse * (
        0.45 * _sine(formants[0], length, rate) + 0.25 * _sine(formants[1], length, rate)
    )
    return gain * tone * _arch(length)


def _speech_events(text: str, seed: int, total: int, rate: int) -> list[_Event]:
    """One syllable-like burst per character, silence for spaces and punctuation.

    The text is spread evenly over the requested duration, so a duration from
    speech_duration_for_text() gives ~14 characters a second. The voice's pitch
    depends on the seed only, so one seed sounds like one speaker.
    """
    units = _speech_units(text)
    unit = total / len(units)
    longest = int(_MAX_SYLLABLE_SECONDS * rate)
    pitch = _Dice("voice", seed).uniform(95.0, 230.0)
    highest = 0.4 * rate  # keep tones well below Nyquist at low sample rates
    events: list[_Event] = []
    for position, char in enumerate(units):
        if char.isspace() or unicodedata.category(char).startswith("P"):
            continue
        start = int(position * unit)
        lower = char.lower()
        code = ord(lower)
        if lower in _FRICATIVES:
            length = max(1, min(int(0.6 * unit), longest))
            render = partial(
                _fricative,
                key=("fricative", seed, position),
                length=length,
                hiss=min(3500.0 + 150.0 * (code % 7), highest),
                rate=rate,
            )
        else:
            length = max(1, min(int(0.82 * unit), longest))
            first, second = _VOWEL_FORMANTS.get(
                lower, (250.0 + 70.0 * (code % 5), 900.0 + 110.0 * (code % 13))
            )
            # Falling pitch through the utterance, with a per-character wobble.
            f0 = pitch * (1.08 - 0.16 * position / len(units)) * (1.0 + 0.03 * ((code % 5) - 2))
            render = partial(
                _voiced,
                f0=f0,
                formants=(first, min(second, highest)),
                gain=0.5 if lower in _VOWEL_FORMANTS else 0.3,
                length=length,
                rate=rate,
            )
        events.append(_Event(start, length, render))
    return events


_SCALES = (
    (0, 2, 4, 5, 7, 9, 11),  # major
    (0, 2, 3, 5, 7, 8, 10),  # natural minor
    (0, 2, 3, 5, 7, 9, 10),  # dorian
    (0, 2, 4, 5, 7, 9, 10),  # mixolydian
)
_PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (5, 3, 0, 4), (0, 3, 0, 4))
_MELODY_STEPS = (0, 2, 4, 7, 1, 5, -1)


def _pad(*, frequencies: tuple[float, ...], gain: float, length: int, rate: int) -> np.ndarray:
    # A soft chord: each note plus its third harmonic at 1/9, as in a triangle wave.
    tone = sum(_sine(f, length, rate) - _sine(3.0 * f, length, rate) / 9.0 for f in frequencies)
    return gain * _envelope(length, rate // 100, rate // 12) * tone


def _pluck(*, frequency: float, gain: float, length: int, rate: int) -> np.ndarray:
    shape = _envelope(length, rate // 100, rate // 12) * np.exp(-_ticks(length) / (0.6 * length))
    tone = _sine(frequency, length, rate) + 0.3 * _sine(2.0 * frequency, length, rate)
    return gain * shape * tone


def _music_events(prompt: str, seed: int, total: int, rate: int) -> list[_Event]:
    """Pad chords, a bass line and a melody; key, tempo and progression drawn from prompt+seed."""
    dice = _Dice("music", prompt, seed)
    scale = dice.choice(_SCALES)
    progression = dice.choice(_PROGRESSIONS)
    root = 45 + dice.index(12)  # MIDI note, A2..G#3
    beat = rate * 60.0 / dice.uniform(84.0, 132.0)

    def pitch(degree: int, octave_shift: int) -> float:
        octave, step = divmod(degree, len(scale))
        note = root + 12 * (octave + octave_shift) + scale[step]
        return 440.0 * 2.0 ** ((note - 69) / 12.0)

    def pluck(start_beat: float, beats: float, frequency: float, gain: float) -> _Event:
        length = max(1, int(beats * beat))
        render = partial(_pluck, frequency=frequency, gain=gain, length=length, rate=rate)
        return _Event(int(start_beat * beat), length, render)

    events: list[_Event] = []
    bar = 0
    while bar * 4 * beat < total:
        first_beat = 4 * bar
        chord = progression[bar % len(progression)]
        length = max(1, int(4 * beat))
        triad = tuple(pitch(chord + step, 1) for step in (0, 2, 4))
        render = partial(_pad, frequencies=triad, gain=0.06, length=length, rate=rate)
        events.append(_Event(int(first_beat * beat), length, render))
        events.extend(pluck(first_beat + b, 1.8, pitch(chord, 0), 0.22) for b in (0, 2))
        for b in range(4):
            roll = dice.uniform(0.0, 1.0)
            if roll < 0.12:
                continue  # a rest
            notes = 2 if roll > 0.7 else 1
            for n in range(notes):
                degree = chord + dice.choice(_MELODY_STEPS)
                events.append(pluck(first_beat + b + n / notes, 1.0 / notes, pitch(degree, 2), 0.2))
        bar += 1
    return events


def _burst(
    *, key: tuple[object, ...], length: int, rate: int, centre: float, octaves: float
) -> np.ndarray:
    shaped = _band_noise(_Dice(*key), length, rate, centre, octaves)
    i = _ticks(length)
    return 0.5 * shaped * np.minimum(1.0, (i + 1) / (rate // 200)) * np.exp(-i / (length / 4.0))


def _sweep(*, low: float, high: float, length: int, rate: int) -> np.ndarray:
    # Exponential chirp: the phase integrates low * (high / low) ** (i / length).
    i = _ticks(length)
    step = 2.0 * math.pi * low / rate
    growth = math.log(high / low) / length
    phase = step * i if abs(growth) < 1e-12 else step * np.expm1(growth * i) / growth
    return 0.35 * np.sin(phase) * _arch(length)


def _rumble(*, key: tuple[object, ...], length: int, rate: int) -> np.ndarray:
    return 0.5 * _band_noise(_Dice(*key), length, rate, 70.0, 0.8) * _arch(length)


def _sound_effect_events(prompt: str, seed: int, total: int, rate: int) -> list[_Event]:
    """Overlapping band-passed noise bursts, tone sweeps and low rumbles from prompt+seed."""
    dice = _Dice("sound_effect", prompt, seed)
    highest = min(8000.0, 0.4 * rate)
    events: list[_Event] = []
    start = 0
    while start < total:
        kind = dice.choice(("burst", "sweep", "rumble"))
        if kind == "burst":
            length = max(1, int(dice.uniform(0.1, 1.2) * rate))
            render = partial(
                _burst,
                key=("burst", prompt, seed, start),
                length=length,
                rate=rate,
                centre=dice.log_uniform(200.0, highest),
                octaves=dice.uniform(0.3, 1.5),
            )
        elif kind == "sweep":
            length = max(1, int(dice.uniform(0.2, 1.5) * rate))
            low, high = dice.log_uniform(100.0, highest), dice.log_uniform(100.0, highest)
            render = partial(_sweep, low=low, high=high, length=length, rate=rate)
        else:
            length = max(1, int(dice.uniform(0.8, 2.5) * rate))
            render = partial(_rumble, key=("rumble", prompt, seed, start), length=length, rate=rate)
        events.append(_Event(start, length, render))
        # The next sound starts before this one ends, or after a short gap.
        start += max(1, int(length * dice.uniform(0.4, 1.0) + dice.uniform(0.0, 0.3) * rate))
    return events


_EVENT_BUILDERS: dict[str, Callable[[str, int, int, int], list[_Event]]] = {
    "speech": _speech_events,
    "music": _music_events,
    "sound_effect": _sound_effect_events,
}


def _mix(events: list[_Event], total: int, rate: int, fade_out: int) -> Iterator[np.ndarray]:
    """Sum the events into one-second float blocks.

    An event is rendered when it first sounds and dropped once it has ended, so
    memory holds a block and the few events sounding in it, however long the
    output. A 10 ms fade-in and a ``fade_out``-sample fade-out avoid clicks.
    """
    events = sorted(events, key=lambda event: event.start)
    fade_in = max(1, min(total // 2, rate // 100))
    fade_out = max(1, min(total // 2, fade_out))
    sounding: list[tuple[_Event, np.ndarray]] = []
    upcoming = 0
    for block_start in range(0, total, rate):
        block_end = min(total, block_start + rate)
        while upcoming < len(events) and events[upcoming].start < block_end:
            event = events[upcoming]
            sounding.append((event, event.render()))
            upcoming += 1
        out = np.zeros(block_end - block_start, dtype=np.float32)
        for event, samples in sounding:
            begin = max(block_start, event.start)
            end = min(block_end, event.start + event.length)
            if begin < end:
                out[begin - block_start : end - block_start] += samples[
                    begin - event.start : end - event.start
                ]
        sounding = [(e, s) for e, s in sounding if e.start + e.length > block_end]
        index = np.arange(block_start, block_end)
        out *= np.clip(np.minimum((index + 1) / fade_in, (total - index) / fade_out), 0.0, 1.0)
        yield out


def _to_s16(block: np.ndarray, channels: int) -> np.ndarray:
    samples = np.round(np.clip(block, -1.0, 1.0) * 32767.0).astype("<i2")
    # The same signal in every channel, interleaved.
    return np.repeat(samples, channels) if channels > 1 else samples


def _encoder_rate(format: str, encoder: str, rate: int) -> int:
    rates = av.Codec(encoder, "w").audio_rates
    if not rates or rate in rates:
        return rate
    if encoder == "libopus":
        # Opus always decodes at 48 kHz, so the input rate is not audible to
        # listeners; synthesise at 48 kHz rather than refuse e.g. 44.1 kHz.
        return 48000
    supported = ", ".join(str(r) for r in sorted(rates))
    raise ValueError(f"sample_rate_hz {rate} is not supported by {format}; use one of {supported}")


def render_audio(
    path: str | os.PathLike[str],
    *,
    kind: str,
    text_or_prompt: str,
    seed: int,
    duration_seconds: float,
    format: str = "wav",
    sample_rate_hz: int = 0,
    channels: int = 1,
) -> None:
    """Write 16-bit speech, music or a sound effect of ``duration_seconds``.

    ``sample_rate_hz`` 0 means 24000 for speech and 44100 otherwise. ``format``
    is one of wav, mp3, ogg_opus (always 48 kHz when the rate is not one Opus
    takes), flac, aac (ADTS) and pcm (raw s16le, interleaved).
    """
    _check_choice("kind", kind, AUDIO_KINDS)
    _check_common(text_or_prompt, seed, "text_or_prompt")
    if kind == "speech" and not _speech_units(text_or_prompt):
        raise ValueError("text_or_prompt must not be empty for speech")
    _check_number("duration_seconds", duration_seconds, 0.0, MAX_DURATION_SECONDS, low_open=True)
    _check_choice("format", format, _AUDIO_FORMATS)
    _check_int("channels", channels, 1, 2)
    if sample_rate_hz == 0:
        sample_rate_hz = 24000 if kind == "speech" else 44100
    _check_int("sample_rate_hz", sample_rate_hz, MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
    if format in _AUDIO_ENCODERS:
        if format not in available_audio_formats():
            raise ValueError(
                f"unsupported audio format {format!r}: this FFmpeg build cannot encode it"
            )
        sample_rate_hz = _encoder_rate(format, _AUDIO_ENCODERS[format][1], sample_rate_hz)

    rate = sample_rate_hz
    total = max(1, round(duration_seconds * rate))
    events = _EVENT_BUILDERS[kind](text_or_prompt, seed, total, rate)
    # Music ends on a long fade, like a track; the others just avoid a click.
    fade_out = int(min(1.5, duration_seconds / 4.0) * rate) if kind == "music" else rate // 50
    blocks = (_to_s16(block, channels) for block in _mix(events, total, rate, fade_out))

    if format == "wav":
        with wave.open(os.fspath(path), "wb") as out:
            out.setnchannels(channels)
            out.setsampwidth(2)
            out.setframerate(rate)
            for samples in blocks:
                out.writeframes(samples.tobytes())
    elif format == "pcm":
        with open(path, "wb") as out:
            for samples in blocks:
                out.write(samples.tobytes())
    else:
        _encode_audio(path, blocks, format=format, rate=rate, channels=channels)


def _encode_audio(
    path: str | os.PathLike[str],
    blocks: Iterator[np.ndarray],
    *,
    format: str,
    rate: int,
    channels: int,
) -> None:
    muxer, encoder, options = _AUDIO_ENCODERS[format]
    layout = "mono" if channels == 1 else "stereo"
    with av.open(os.fspath(path), "w", format=muxer, options=_MUXER_OPTIONS) as container:
        stream = cast(
            av.AudioStream,
            container.add_stream(encoder, rate=rate, layout=layout, options=options),
        )
        pts = 0
        for samples in blocks:
            # PyAV converts to the encoder's sample format and frame size itself.
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
            frame.sample_rate = rate
            frame.time_base = Fraction(1, rate)
            frame.pts = pts
            pts += frame.samples
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# --------------------------------------------------------------------------- images


def _gradient_image(
    width: int,
    height: int,
    angle: float,
    start: tuple[float, float, float],
    end: tuple[float, float, float],
) -> Image.Image:
    ramp = _diagonal_ramp(width, height, angle)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for channel in range(3):
        low, high = 255.0 * start[channel], 255.0 * end[channel]
        pixels[..., channel] = np.round(low + (high - low) * ramp)
    return Image.fromarray(pixels, "RGB")


def render_image(
    path: str | os.PathLike[str],
    *,
    prompt: str,
    seed: int,
    width: int,
    height: int,
    format: str = "png",
) -> None:
    """Write a diagonal two-colour gradient with a few flat shapes on it, drawn from prompt+seed."""
    _check_common(prompt, seed)
    _check_int("width", width, MIN_SIDE, MAX_SIDE)
    _check_int("height", height, MIN_SIDE, MAX_SIDE)
    _check_choice("format", format, tuple(_IMAGE_ENCODERS))
    dice = _Dice("image", prompt, seed)
    colours = _palette(prompt, seed)
    image = _gradient_image(width, height, dice.uniform(0.0, 2.0 * math.pi), colours[0], colours[1])
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    for _ in range(3 + dice.index(5)):
        fill = tuple(round(255 * c) for c in dice.choice(colours[2:]))
        size = dice.uniform(0.1, 0.45) * side
        x, y = dice.uniform(0, width), dice.uniform(0, height)
        box = (x - size / 2, y - size / 2, x + size / 2, y + size / 2)
        shape = dice.choice(("ellipse", "rectangle", "triangle"))
        if shape == "ellipse":
            draw.ellipse(box, fill=fill)
        elif shape == "rectangle":
            draw.rectangle(box, fill=fill)
        else:
            turn = dice.uniform(0.0, 2.0 * math.pi)
            angles = [turn + k * 2.0 * math.pi / 3.0 for k in range(3)]
            corners = [(x + size / 2 * math.cos(a), y + size / 2 * math.sin(a)) for a in angles]
            draw.polygon(corners, fill=fill)
    pil_format, options = _IMAGE_ENCODERS[format]
    image.save(os.fspath(path), pil_format, **options)


# --------------------------------------------------------------------------- probing


Source = str | os.PathLike[str] | BinaryIO


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[BinaryIO]:
    """A seekable binary file at offset 0: opened from a path, or the caller's file rewound."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            yield file
    else:
        source.seek(0)
        yield source


def probe(
    source: Source,
    content_type_hint: str = "",
    *,
    sample_rate_hz: int = 0,
    channels: int = 0,
) -> MediaInfo:
    """Measure a media file (a path or a seekable binary file); its type is read from the content.

    Raw PCM has no header, so it is only recognised through
    ``content_type_hint="audio/pcm"``; it is taken as s16le with
    ``sample_rate_hz`` (default 24000) and ``channels`` (default 1). For other
    types the hint is ignored. Raises ValueError for anything that is not a
    decodable audio, video or image file.
    """
    with _opened(source) as file:
        if _base_content_type(content_type_hint) == "audio/pcm":
            return _probe_pcm(file, sample_rate_hz or _PCM_DEFAULT_SAMPLE_RATE_HZ, channels or 1)
        sniffed = _sniff(file.read(16))
        if sniffed is None:
            raise ValueError(_NOT_MEDIA)
        content_type, demuxer = sniffed
        file.seek(0)
        if content_type.startswith("image/"):
            return _probe_image(file, content_type)
        if content_type == "audio/wav":
            info = _probe_wave(file)
            if info is not None:
                return info
            file.seek(0)
        return _probe_av(file, content_type, demuxer)


def _sniff(head: bytes) -> tuple[str, str | None] | None:
    """(content type, FFmpeg demuxer or None to let FFmpeg choose) from a file's first bytes."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", None
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav", "wav"
    if head[4:8] == b"ftyp":
        return "video/mp4", "mp4"  # audio-only MP4 is told apart once opened
    if head.startswith(b"OggS"):
        return "audio/ogg", "ogg"
    if head.startswith(b"fLaC"):
        return "audio/flac", "flac"
    if head.startswith(b"ID3"):
        return "audio/mpeg", None  # ID3 tags can also precede ADTS: the codec decides
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG audio frame sync; layer bits 00 mean an AAC ADTS header.
        if (head[1] >> 1) & 0b11 == 0:
            return "audio/aac", "aac"
        return "audio/mpeg", "mp3"
    return None


def _probe_pcm(file: BinaryIO, rate: int, channels: int) -> MediaInfo:
    _check_int("sample_rate_hz", rate, MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
    _check_int("channels", channels, 1, 8)
    size = file.seek(0, os.SEEK_END)
    frame_bytes = 2 * channels
    if size == 0 or size % frame_bytes:
        raise ValueError(_NOT_MEDIA)
    return MediaInfo(
        "audio/pcm",
        size / frame_bytes / rate,
        sample_rate_hz=rate,
        channels=channels,
        codec="pcm_s16le",
    )


def _probe_image(file: BinaryIO, content_type: str) -> MediaInfo:
    pil_format = content_type.removeprefix("image/").upper()
    try:
        with Image.open(file, formats=[pil_format]) as image:
            image.load()
            return MediaInfo(
                content_type, 0.0, width=image.width, height=image.height, codec=pil_format.lower()
            )
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(_NOT_MEDIA) from exc


def _probe_wave(file: BinaryIO) -> MediaInfo | None:
    """Exact figures from the WAV header; None for WAVs ``wave`` cannot read (float, extensible)."""
    try:
        wav = wave.open(file, "rb")  # closing it would close the caller's file
        rate, declared = wav.getframerate(), wav.getnframes()
        width, channels = wav.getsampwidth(), wav.getnchannels()
    except (wave.Error, EOFError):
        return None
    # ``wave`` stops reading at the data chunk: what follows is the samples.
    data_start = file.tell()
    data_bytes = file.seek(0, os.SEEK_END) - data_start
    if rate <= 0 or width <= 0 or channels <= 0:
        raise ValueError(_NOT_MEDIA)
    # A cut-off download keeps its header: count only the frames really there.
    frames = min(declared, data_bytes // (width * channels))
    return MediaInfo(
        "audio/wav",
        frames / rate,
        sample_rate_hz=rate,
        channels=channels,
        codec="pcm_u8" if width == 1 else f"pcm_s{8 * width}le",
    )


def _probe_av(file: BinaryIO, content_type: str, demuxer: str | None) -> MediaInfo:
    try:
        with av.open(file, "r", format=demuxer) as container:
            streams = container.streams
            video = streams.video[0] if content_type == "video/mp4" and streams.video else None
            audio = streams.audio[0] if streams.audio else None
            main = video or audio
            # Opening only parses headers; decoding one frame proves the data is usable.
            if main is None or next(container.decode(main), None) is None:
                raise ValueError(_NOT_MEDIA)
            codec = main.codec_context.codec.canonical_name
            if video is None and content_type == "video/mp4":
                content_type = "audio/mp4"
            elif codec == "aac" and content_type == "audio/mpeg":
                content_type = "audio/aac"
            info = MediaInfo(
                content_type,
                0.0,
                width=video.width if video else 0,
                height=video.height if video else 0,
                sample_rate_hz=audio.codec_context.sample_rate if audio else 0,
                channels=audio.codec_context.channels if audio else 0,
                codec=codec,
            )
            # Raw ADTS has no length field; FFmpeg's figure is a guess from the bitrate.
            declared = (
                None if container.format.name == "aac" else _declared_duration(container, main)
            )
        if declared is None:
            file.seek(0)
            declared = _packet_duration(file, demuxer)
        duration = declared
    except av.FFmpegError as exc:
        raise ValueError(_NOT_MEDIA) from exc
    return dataclasses.replace(info, duration_seconds=duration)


def _declared_duration(
    container: av.container.InputContainer, stream: av.stream.Stream
) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _packet_duration(file: BinaryIO, demuxer: str | None) -> float:
    """Sum of the packet durations of the first audio or video stream, without decoding."""
    with av.open(file, "r", format=demuxer) as container:
        stream = (container.streams.video or container.streams.audio)[0]
        ticks = sum(packet.duration or 0 for packet in container.demux(stream))
        return float(ticks * (stream.time_base or 0))
