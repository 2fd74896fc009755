"""Checks every Generate request must pass before any provider sees it.

Provider-specific limits (durations, ratios, sizes) are checked afterwards by
the provider's own ``validate``. All problems found are reported together, as
BadRequest field violations.
"""

from __future__ import annotations

import io
import math
import re
import uuid

from google.protobuf.message import Message
from PIL import Image

from mediagen.v1 import common_pb2
from providers.errors import FieldViolation, InvalidArgument

MAX_PROMPT_CHARS = 4000
MAX_SPEECH_TEXT_CHARS = 100_000
MAX_LYRICS_CHARS = 10_000
MAX_DURATION_SECONDS = 600.0
MAX_DIMENSION = 8192
MAX_COUNT = 10
MAX_NAME_CHARS = 128
MAX_INLINE_INPUT_BYTES = 16 * 1024 * 1024
# 40 megapixels: above any vendor's input limit, far below a decompression bomb.
MAX_INPUT_PIXELS = 40_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-/]*$")
_ASPECT = re.compile(r"^[1-9][0-9]{0,3}:[1-9][0-9]{0,3}$")
# Control characters other than tab, newline and carriage return.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")

# Which field carries the required text, per media type.
_REQUIRED_TEXT = {
    common_pb2.MEDIA_TYPE_VIDEO: "prompt",
    common_pb2.MEDIA_TYPE_SPEECH: "text",
    common_pb2.MEDIA_TYPE_SOUND_EFFECT: "prompt",
    common_pb2.MEDIA_TYPE_IMAGE: "prompt",
}


def _fields(request: Message) -> set[str]:
    return set(request.DESCRIPTOR.fields_by_name)


def _text_problem(value: str, limit: int) -> tuple[str, str] | None:
    if len(value) > limit:
        return f"at most {limit} characters", "TOO_LONG"
    if _CONTROL.search(value):
        return "must not contain control characters", "INVALID_CHARACTERS"
    return None


def validate_generate(media_type: int, request: Message) -> None:
    """Raise InvalidArgument naming every bad field of a Generate request."""
    names = _fields(request)
    out: list[FieldViolation] = []

    if request.request_id:
        try:
            uuid.UUID(request.request_id)
        except ValueError:
            out.append(FieldViolation("request_id", "must be a UUID, e.g. 123e4567-e89b-12d3-a456-426614174000", "INVALID_FORMAT"))
    for name in ("provider", "model"):
        value = getattr(request, name)
        if value and (len(value) > MAX_NAME_CHARS or not _NAME.match(value)):
            out.append(FieldViolation(name, "must be a plain name like 'runway' or 'gen4_turbo'", "INVALID_FORMAT"))
    if request.HasField("timeout"):
        seconds = request.timeout.ToNanoseconds() / 1e9
        if seconds <= 0:
            out.append(FieldViolation("timeout", "must be positive", "OUT_OF_RANGE"))

    required = _REQUIRED_TEXT.get(media_type)
    if required and not getattr(request, required).strip():
        out.append(FieldViolation(required, "is required", "REQUIRED"))
    if media_type == common_pb2.MEDIA_TYPE_MUSIC and not any(
        getattr(request, f).strip() for f in ("prompt", "mood", "genre", "lyrics", "theme")
    ):
        out.append(FieldViolation("prompt", "give at least one of prompt, mood, genre, theme or lyrics", "REQUIRED"))

    for name, limit in (
        ("prompt", MAX_PROMPT_CHARS),
        ("negative_prompt", MAX_PROMPT_CHARS),
        ("text", MAX_SPEECH_TEXT_CHARS),
        ("lyrics", MAX_LYRICS_CHARS),
        ("instructions", MAX_PROMPT_CHARS),
        ("voice", MAX_NAME_CHARS),
        ("language", 35),
        ("mood", MAX_NAME_CHARS),
        ("genre", MAX_NAME_CHARS),
        ("theme", MAX_NAME_CHARS),
        ("quality", MAX_NAME_CHARS),
        ("style", MAX_NAME_CHARS),
        ("aspect_ratio", 16),
    ):
        if name in names:
            problem = _text_problem(getattr(request, name), limit)
            if problem:
                out.append(FieldViolation(name, *problem))

    if "duration_seconds" in names:
        d = request.duration_seconds
        if not math.isfinite(d) or d < 0 or d > MAX_DURATION_SECONDS:
            out.append(FieldViolation("duration_seconds", f"must be from 0 to {MAX_DURATION_SECONDS:g}", "OUT_OF_RANGE"))
    if "aspect_ratio" in names and request.aspect_ratio and not _ASPECT.match(request.aspect_ratio):
        out.append(FieldViolation("aspect_ratio", "must look like '16:9'", "INVALID_FORMAT"))
    for name in ("width", "height"):
        if name in names:
            value = getattr(request, name)
            if value < 0 or value > MAX_DIMENSION:
                out.append(FieldViolation(name, f"must be from 0 to {MAX_DIMENSION}", "OUT_OF_RANGE"))
    if "width" in names and bool(request.width) != bool(request.height):
        out.append(FieldViolation("height" if request.width else "width", "width and height go together", "REQUIRED"))
    if "count" in names and not 0 <= request.count <= MAX_COUNT:
        out.append(FieldViolation("count", f"must be from 1 to {MAX_COUNT}", "OUT_OF_RANGE"))
    if "fps" in names and not 0 <= request.fps <= 120:
        out.append(FieldViolation("fps", "must be from 0 to 120", "OUT_OF_RANGE"))
    for name, low, high in (("speed", 0.0, 4.0), ("tempo_bpm", 0.0, 400.0), ("prompt_influence", 0.0, 1.0)):
        if name in names:
            value = getattr(request, name)
            if not math.isfinite(value) or not low <= value <= high:
                out.append(FieldViolation(name, f"must be from {low:g} to {high:g}", "OUT_OF_RANGE"))
    if "format" in names:
        enum = request.DESCRIPTOR.fields_by_name["format"].enum_type
        if request.format not in enum.values_by_number:
            out.append(FieldViolation("format", "unknown value", "UNSUPPORTED_VALUE"))
    if "input_image" in names and request.HasField("input_image"):
        out += _input_problems("input_image", request.input_image)

    if out:
        raise InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in out), field_violations=out, metadata={"field": out[0].field}
        )


def _input_problems(name: str, media_input: common_pb2.MediaInput) -> list[FieldViolation]:
    source = media_input.WhichOneof("source")
    if source is None:
        return [FieldViolation(name, "set one of data, uri or asset_id", "REQUIRED")]
    if source == "data":
        if not media_input.data:
            return [FieldViolation(f"{name}.data", "is empty", "REQUIRED")]
        if len(media_input.data) > MAX_INLINE_INPUT_BYTES:
            return [FieldViolation(f"{name}.data", f"at most {MAX_INLINE_INPUT_BYTES} bytes inline", "TOO_LARGE")]
        return _image_problems(f"{name}.data", media_input.data)
    if source == "uri" and not media_input.uri.startswith("https://"):
        return [FieldViolation(f"{name}.uri", "must be an https:// URL", "INVALID_FORMAT")]
    return []


def _image_problems(name: str, data: bytes) -> list[FieldViolation]:
    """Inline images must be PNG, JPEG or WebP of at most MAX_INPUT_PIXELS (header read only)."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "WEBP"]) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return [FieldViolation(name, f"at most {MAX_INPUT_PIXELS} pixels", "TOO_LARGE")]
    except (OSError, SyntaxError, ValueError):
        return [FieldViolation(name, "must be a PNG, JPEG or WebP image", "INVALID_FORMAT")]
    if width * height > MAX_INPUT_PIXELS:
        return [FieldViolation(name, f"at most {MAX_INPUT_PIXELS} pixels ({width}x{height} given)", "TOO_LARGE")]
    return []


def validate_job_id(job_id: str) -> None:
    if not job_id:
        raise InvalidArgument.field("job_id", "is required", "REQUIRED")
    if not JOB_ID.match(job_id):
        raise InvalidArgument.field("job_id", "is not a job id (job_ followed by 32 hex digits)", "INVALID_FORMAT")
