"""A fake Stability AI v2beta API (Stable Image, and the retired Stable Video), on ``tests.fakes.server``.

It behaves as Stability documents (shared/vendors/image-and-storage.md section 3,
video.md section 3):

- every call needs ``Authorization: Bearer <key>``; otherwise 401 with the
  envelope ``{"id", "name": "unauthorized", "errors": [...]}``;
- bodies must be ``multipart/form-data`` (400 ``bad_request`` otherwise), and
  every field is checked (unknown fields too: 400 ``bad_request``);
- ``POST /v2beta/stable-image/generate/{ultra|core|sd3}`` answers synchronously:
  ``Accept: image/*`` gives the image bytes with ``finish-reason``, ``seed`` and
  ``x-request-id`` headers, ``application/json`` gives ``{image, finish_reason,
  seed}``. A prompt containing a word of ``moderated_words`` gets 403
  ``content_moderation``; one containing a word of ``filtered_words`` gets a 200
  with ``finish-reason: CONTENT_FILTERED`` (the blurred-image case). Images are
  real PNG/JPEG/WebP files, the model's ~1 MP size scaled down 4 times;
- ``POST /v2beta/image-to-video`` takes ``image`` (JPEG/PNG of exactly 1024x576,
  576x1024 or 768x768), ``seed``, ``cfg_scale``, ``motion_bucket_id`` and answers
  ``{"id": <64 hex>}``; ``GET /v2beta/image-to-video/result/{id}`` answers 202
  ``{"id", "status": "in-progress"}`` for ``video_polls`` polls, then 200 with a
  real MP4 of the image's size (24 frames at 12 fps) or the JSON form per
  ``Accept``; 404 ``not_found`` for an unknown id. ``video_outcome =
  "filtered"`` finishes with ``CONTENT_FILTERED``.

Other faults (402 ``payment_required``, 429, 5xx, slow or cut answers) go
through the harness: ``fake.server.fail_next(...)`` with ``stability_error``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass, field

from PIL import Image

from providers.mock.media import render_image, render_video
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply

STABILITY_KEY = "sk-" + "9a" * 24
ASPECT_SIZES = {  # the ~1 MP sizes, scaled down 4 times
    "1:1": (256, 256),
    "16:9": (336, 192),
    "21:9": (384, 160),
    "2:3": (208, 304),
    "3:2": (304, 208),
    "4:5": (224, 272),
    "5:4": (272, 224),
    "9:16": (192, 336),
    "9:21": (160, 384),
}
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
STYLE_PRESETS = {
    "3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance",
    "fantasy-art", "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk",
    "origami", "photographic", "pixel-art", "tile-texture",
}  # fmt: skip
SD3_MODELS = {
    "sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3.5-flash",
    "sd3-large", "sd3-large-turbo", "sd3-medium",
}  # fmt: skip
COMMON_FIELDS = {
    "prompt",
    "negative_prompt",
    "aspect_ratio",
    "seed",
    "output_format",
    "style_preset",
}
EXTRA_FIELDS = {"ultra": set(), "core": set(), "sd3": {"model", "mode", "cfg_scale"}}
VIDEO_SIZES = {(1024, 576), (576, 1024), (768, 768)}
SEED_MAX = 4294967294

_video_cache: dict[tuple[int, int], bytes] = {}
_cache_lock = threading.Lock()


def stability_error(status: int, name: str, *errors: str) -> Reply:
    """Stability's error envelope ``{id, name, errors}``."""
    return Reply(
        status=status, body={"id": secrets.token_hex(16), "name": name, "errors": list(errors)}
    )


def moderation_refusal() -> Reply:
    return stability_error(
        403,
        "content_moderation",
        "Your request was flagged by our content moderation system, as a result your request "
        "was denied and you were not charged.",
    )


@dataclass
class Part:
    value: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        return self.value.decode("utf-8")


def parse_form(request: FakeRequest) -> dict[str, Part] | None:
    """A multipart/form-data body as {name: Part}; None when it is not multipart."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return None
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.body,
        policy=email.policy.HTTP,
    )
    parts: dict[str, Part] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        parts[str(name)] = Part(
            part.get_payload(decode=True) or b"",
            filename,
            part.get_content_type() if filename else None,
        )
    return parts


def _int_field(
    form: dict[str, Part], name: str, low: float, high: float, *, integer: bool = True
) -> str | None:
    """An error message when a numeric form field is unreadable or out of range."""
    if name not in form:
        return None
    try:
        value = int(form[name].text) if integer else float(form[name].text)
    except ValueError:
        return f"{name}: must be {'an integer' if integer else 'a number'}"
    if not low <= value <= high:
        return f"{name}: must be between {low:g} and {high:g}"
    return None


@dataclass
class Generation:
    """One image the fake made (or refused), as the adapter asked for it."""

    kind: str
    form: dict[str, str]
    accept: str
    seed: int
    finish_reason: str


@dataclass
class VideoJob:
    id: str
    form: dict[str, str]
    image: bytes
    size: tuple[int, int]
    outcome: str
    seed: int
    polls: int = 0
    fetches: list[str] = field(default_factory=list)


class FakeStability:
    def __init__(self, server: FakeVendorServer, *, key: str = STABILITY_KEY) -> None:
        self.server = server
        self.key = key
        self.moderated_words = {"forbidden"}
        self.filtered_words = {"blurme"}
        self.generations: list[Generation] = []
        #: Polls answered 202 before a video is done, and how new videos end.
        self.video_polls = 2
        self.video_outcome = "ok"
        self.videos: dict[str, VideoJob] = {}
        self._lock = threading.Lock()
        server.route("POST", "/v2beta/stable-image/generate/{kind}", self._generate)
        server.route("POST", "/v2beta/image-to-video", self._video)
        server.route("GET", "/v2beta/image-to-video/result/{id}", self._video_result)

    def image_calls(self) -> list[FakeRequest]:
        return self.server.calls("POST", "/v2beta/stable-image/generate/{kind}")

    # --- checks ---

    def _auth(self, request: FakeRequest) -> Reply | None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return stability_error(401, "unauthorized", "authorization: missing or invalid API key")
        return None

    def _form(self, request: FakeRequest) -> dict[str, Part] | Reply:
        form = parse_form(request)
        if form is None:
            return stability_error(400, "bad_request", "content-type: must be multipart/form-data")
        return form

    # --- images ---

    def _generate(self, request: FakeRequest) -> Reply:
        if (denied := self._auth(request)) is not None:
            return denied
        kind = request.params["kind"]
        if kind not in EXTRA_FIELDS:
            return stability_error(404, "not_found", f"unknown endpoint {kind}")
        form = self._form(request)
        if isinstance(form, Reply):
            return form
        errors = [
            f"{name}: unknown field"
            for name in form
            if name not in COMMON_FIELDS | EXTRA_FIELDS[kind]
        ]
        prompt = form["prompt"].text if "prompt" in form else ""
        if not 1 <= len(prompt) <= 10_000:
            errors.append("prompt: is required")
        if "negative_prompt" in form and len(form["negative_prompt"].text) > 10_000:
            errors.append("negative_prompt: at most 10000 characters")
        aspect = form["aspect_ratio"].text if "aspect_ratio" in form else "1:1"
        if aspect not in ASPECT_SIZES:
            errors.append("aspect_ratio: must be one of " + ", ".join(ASPECT_SIZES))
        fmt = form["output_format"].text if "output_format" in form else "png"
        if fmt not in FORMATS:
            errors.append("output_format: must be one of png, jpeg, webp")
        if "style_preset" in form and form["style_preset"].text not in STYLE_PRESETS:
            errors.append("style_preset: unknown preset")
        if "model" in form and form["model"].text not in SD3_MODELS:
            errors.append("model: unknown model")
        if "mode" in form and form["mode"].text not in ("text-to-image", "image-to-image"):
            errors.append("mode: must be text-to-image or image-to-image")
        for problem in (
            _int_field(form, "seed", 0, SEED_MAX),
            _int_field(form, "cfg_scale", 1, 10, integer=False),
        ):
            if problem:
                errors.append(problem)
        accept = request.headers.get("accept", "image/*")
        if accept not in ("image/*", "application/json"):
            errors.append("accept: must be image/* or application/json")
        if errors:
            return stability_error(400, "bad_request", *errors)
        if any(word in prompt for word in self.moderated_words):
            return moderation_refusal()
        seed = (
            int(form["seed"].text)
            if "seed" in form and int(form["seed"].text)
            else secrets.randbelow(SEED_MAX) + 1
        )
        finish = "CONTENT_FILTERED" if any(w in prompt for w in self.filtered_words) else "SUCCESS"
        with self._lock:
            self.generations.append(
                Generation(kind, {k: p.text for k, p in form.items()}, accept, seed, finish)
            )
        width, height = ASPECT_SIZES[aspect]
        data = _image(prompt, seed, width, height, fmt)
        if accept == "application/json":
            return Reply(
                body={
                    "image": base64.b64encode(data).decode(),
                    "finish_reason": finish,
                    "seed": seed,
                },
                headers={"Content-Type": f"application/json; type={FORMATS[fmt]}"},
            )
        return Reply(
            body=data,
            headers={
                "Content-Type": FORMATS[fmt],
                "finish-reason": finish,
                "seed": str(seed),
                "x-request-id": secrets.token_hex(8),
            },
        )

    # --- video (retired API) ---

    def _video(self, request: FakeRequest) -> Reply:
        if (denied := self._auth(request)) is not None:
            return denied
        form = self._form(request)
        if isinstance(form, Reply):
            return form
        errors = [
            f"{n}: unknown field"
            for n in form
            if n not in {"image", "seed", "cfg_scale", "motion_bucket_id"}
        ]
        image = form.get("image")
        size = None
        if image is None or not image.filename:
            errors.append("image: is required")
        elif image.content_type not in ("image/png", "image/jpeg"):
            errors.append("image: must be a JPEG or PNG")
        else:
            try:
                with Image.open(io.BytesIO(image.value)) as decoded:
                    size = decoded.size
            except OSError:
                errors.append("image: cannot be decoded")
            if size is not None and size not in VIDEO_SIZES:
                errors.append("image: dimensions must be 1024x576, 576x1024 or 768x768")
        for problem in (
            _int_field(form, "seed", 0, SEED_MAX),
            _int_field(form, "cfg_scale", 0, 10, integer=False),
            _int_field(form, "motion_bucket_id", 1, 255),
        ):
            if problem:
                errors.append(problem)
        if errors:
            return stability_error(400, "bad_request", *errors)
        generation_id = secrets.token_hex(32)
        seed = int(form["seed"].text) if "seed" in form and int(form["seed"].text) else 12345
        with self._lock:
            self.videos[generation_id] = VideoJob(
                generation_id,
                {k: p.text for k, p in form.items() if k != "image"},
                image.value,
                size,
                self.video_outcome,
                seed,
            )
        return Reply(body={"id": generation_id})

    def _video_result(self, request: FakeRequest) -> Reply:
        if (denied := self._auth(request)) is not None:
            return denied
        with self._lock:
            job = self.videos.get(request.params["id"])
            if job is not None:
                job.polls += 1
        if job is None:
            return stability_error(404, "not_found", "generation not found (unknown or expired id)")
        if job.polls <= self.video_polls:
            return Reply(status=202, body={"id": job.id, "status": "in-progress"})
        accept = request.headers.get("accept", "video/*")
        job.fetches.append(accept)
        finish = "CONTENT_FILTERED" if job.outcome == "filtered" else "SUCCESS"
        data = _video(*job.size)
        if accept == "application/json":
            return Reply(
                body={
                    "video": base64.b64encode(data).decode(),
                    "finish_reason": finish,
                    "seed": job.seed,
                }
            )
        if accept != "video/*":
            return stability_error(
                400, "bad_request", "accept: must be video/* or application/json"
            )
        return Reply(
            body=data,
            headers={"Content-Type": "video/mp4", "finish-reason": finish, "seed": str(job.seed)},
        )


def _image(prompt: str, seed: int, width: int, height: int, fmt: str) -> bytes:
    fd, path = tempfile.mkstemp(suffix="." + fmt)
    os.close(fd)
    try:
        render_image(path, prompt=prompt, seed=seed, width=width, height=height, format=fmt)
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


def _video(width: int, height: int) -> bytes:
    """Stable Video's clip for an image of this size (rendered once and kept)."""
    with _cache_lock:
        if (width, height) not in _video_cache:
            fd, path = tempfile.mkstemp(suffix=".mp4")
            os.close(fd)
            try:
                render_video(
                    path,
                    prompt="svd",
                    seed=3,
                    duration_seconds=2.0,
                    width=width,
                    height=height,
                    fps=12,
                )
                with open(path, "rb") as handle:
                    _video_cache[(width, height)] = handle.read()
            finally:
                os.unlink(path)
        return _video_cache[(width, height)]
