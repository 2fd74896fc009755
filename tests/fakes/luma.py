"""A fake Luma Dream Machine API, on top of ``tests.fakes.server``.

It behaves as Luma documents its legacy API (shared/vendors/video.md, section 4A),
mounted under ``/dream-machine/v1`` as the real one is:

- every call needs ``Authorization: Bearer <key>`` (401 ``{"detail"}`` otherwise);
- ``POST /generations/video`` (and the older ``POST /generations``) checks the
  body as Luma does: model required, prompt 3-5000 characters, aspect_ratio,
  ``duration`` "5s"/"9s" and ``resolution`` strings, keyframes as
  ``{"type": "image", "url"}``, loop not with an end frame (400 ``{"detail"}``
  with Luma's own messages); with no credit left it answers 402; otherwise
  201 with the Generation, ``state: "queued"``;
- ``GET /generations/{id}`` walks ``plan``: queued, dreaming, then completed with
  ``assets.video`` (a URL on ``cdn``) or failed with ``failure_reason``;
- ``DELETE /generations/{id}`` answers 204, and the generation is gone (404);
- with ``fetch_inputs``, keyframe image URLs are fetched at create, as Luma does; what was fetched
  is kept in ``FakeGeneration.frames``, and a URL that cannot be fetched
  makes the generation fail with "Failed to read user input frames". Plain
  http URLs (a local S3 emulator's presigned URLs) need ``allow_http_inputs``;
- ``GET /luma/{id}.mp4`` on ``cdn`` serves a real MP4 of the asked duration,
  16:9 as 160x90 (other ratios at about the same area).
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers.mock.media import render_video
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply, fetch_input

LUMA_KEY = "luma-" + "7c" * 24
PREFIX = "/dream-machine/v1"
MODELS = {"ray-2", "ray-flash-2", "ray-1-6"}
SIZES = {
    "16:9": (160, 90),
    "9:16": (90, 160),
    "1:1": (120, 120),
    "4:3": (136, 102),
    "3:4": (102, 136),
    "21:9": (168, 72),
    "9:21": (72, 168),
}
DEFAULT_PLAN: list[dict[str, Any]] = [
    {"state": "queued"},
    {"state": "dreaming"},
    {"state": "completed"},
]


@dataclass
class FakeGeneration:
    id: str
    body: dict[str, Any]
    plan: list[dict[str, Any]]
    polls: int = 0
    state: str = "queued"
    deleted: bool = False
    #: Keyframe images as fetched from their URLs, by frame name.
    frames: dict[str, bytes] = field(default_factory=dict)


class FakeLuma:
    def __init__(
        self, server: FakeVendorServer, *, cdn: FakeVendorServer | None = None, key: str = LUMA_KEY
    ) -> None:
        self.server = server
        self.cdn = cdn or server
        self.key = key
        self.generations: dict[str, FakeGeneration] = {}
        self.plan: list[dict[str, Any]] = list(DEFAULT_PLAN)
        #: USD cents left (GET /credits); at 0 a create answers 402.
        self.credit_cents = 100_000
        #: Fetch keyframe URLs at create, as Luma does (off: tests with made-up URLs).
        self.fetch_inputs = False
        #: Accept plain http keyframe URLs (a local S3 emulator's presigned URLs).
        self.allow_http_inputs = False
        self._lock = threading.Lock()
        self._videos: dict[tuple[int, int, int], bytes] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-luma-")
        server.route("POST", f"{PREFIX}/generations/video", self._create)
        server.route("POST", f"{PREFIX}/generations", self._create)
        server.route("GET", f"{PREFIX}/generations/{{id}}", self._get)
        server.route("DELETE", f"{PREFIX}/generations/{{id}}", self._delete)
        server.route("GET", f"{PREFIX}/credits", self._credits)
        self.cdn.route("GET", "/luma/{name}", self._output)

    @property
    def base_url(self) -> str:
        return self.server.url + PREFIX

    # --- scripting and inspection ---------------------------------------------------

    def plan_failure(self, reason: str) -> None:
        self.plan = [{"state": "dreaming"}, {"state": "failed", "failure_reason": reason}]

    def plan_stall(self) -> None:
        self.plan = [{"state": "queued"}, {"state": "dreaming"}]

    def creates(self) -> list[FakeRequest]:
        return self.server.calls("POST", f"{PREFIX}/generations/video")

    def deletes(self) -> list[FakeRequest]:
        return self.server.calls("DELETE", f"{PREFIX}/generations/{{id}}")

    def video_bytes(self, seconds: int, width: int, height: int) -> bytes:
        key = (seconds, width, height)
        with self._lock:
            if key not in self._videos:
                path = Path(self._tmp.name) / f"{seconds}-{width}x{height}.mp4"
                render_video(
                    path,
                    prompt="luma",
                    seed=5,
                    duration_seconds=seconds,
                    width=width,
                    height=height,
                )
                self._videos[key] = path.read_bytes()
            return self._videos[key]

    # --- routes -------------------------------------------------------------------------

    def _auth_error(self, request: FakeRequest) -> Reply | None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return Reply(401, {"detail": "Invalid API key"})
        return None

    def _generation(self, generation: FakeGeneration) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": generation.id,
            "generation_type": "video",
            "state": generation.state,
            "failure_reason": None,
            "created_at": "2026-08-01T12:00:00.000Z",
            "assets": None,
            "model": generation.body.get("model"),
            "request": generation.body,
        }
        if generation.state == "completed":
            body["assets"] = {
                "video": f"{self.cdn.url}/luma/{generation.id}.mp4",
                "image": f"{self.cdn.url}/luma/{generation.id}.jpg",
                "progress_video": None,
            }
        return body

    def _create(self, request: FakeRequest) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        try:
            body = request.json()
        except ValueError:
            return Reply(400, {"detail": "Invalid JSON body"})
        if (problem := self._check(body, self.allow_http_inputs)) is not None:
            return Reply(400, {"detail": problem})
        frames: dict[str, bytes] = {}
        plan = list(self.plan)
        for name, frame in (body.get("keyframes") or {}).items():
            if frame.get("type") == "image" and self.fetch_inputs:
                try:
                    frames[name] = fetch_input(frame["url"], allow_http=self.allow_http_inputs)
                except ValueError:
                    plan = [{"state": "failed", "failure_reason": "Failed to read user input frames"}]
        with self._lock:
            if self.credit_cents <= 0:
                return Reply(402, {"detail": "Insufficient credits: top up your balance"})
            generation = FakeGeneration(str(uuid.uuid4()), body, plan, frames=frames)
            self.generations[generation.id] = generation
            return Reply(201, self._generation(generation))

    @staticmethod
    def _check(body: dict[str, Any], allow_http: bool = False) -> str | None:
        if body.get("model") not in MODELS:
            return "model: Input should be 'ray-1-6', 'ray-2' or 'ray-flash-2'"
        prompt = body.get("prompt") or ""
        if len(prompt) > 5000:
            return "Prompt is too long, maximum length is 5000 characters"
        if len(prompt) < 3 and not body.get("keyframes"):
            return "Prompt is too short, minimum length is 3 characters"
        if body.get("aspect_ratio", "16:9") not in SIZES:
            return "aspect_ratio: Input should be one of 1:1, 16:9, 9:16, 4:3, 3:4, 21:9, 9:21"
        if body.get("duration", "5s") not in ("5s", "9s"):
            return "duration: Input should be '5s' or '9s'"
        if body.get("resolution", "720p") not in ("540p", "720p", "1080p", "4k"):
            return "resolution: Input should be '540p', '720p', '1080p' or '4k'"
        keyframes = body.get("keyframes") or {}
        for name, frame in keyframes.items():
            if name not in ("frame0", "frame1"):
                return f"keyframes: unknown key {name}"
            if frame.get("type") == "image" and not str(frame.get("url", "")).startswith(
                ("https://", "http://") if allow_http else "https://"
            ):
                return f"keyframes.{name}.url: must be an https URL"
        if body.get("loop") and "frame1" in keyframes:
            return "Loop is not supported for keyframes"
        return None

    def _get(self, request: FakeRequest) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        with self._lock:
            generation = self.generations.get(request.params["id"])
            if generation is None or generation.deleted:
                return Reply(404, {"detail": "Generation not found"})
            step = generation.plan[min(generation.polls, len(generation.plan) - 1)]
            generation.polls += 1
            generation.state = step["state"]
            answer = self._generation(generation)
            answer.update({k: v for k, v in step.items() if k != "state"})
            return Reply(200, answer)

    def _delete(self, request: FakeRequest) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        with self._lock:
            generation = self.generations.get(request.params["id"])
            if generation is None or generation.deleted:
                return Reply(404, {"detail": "Generation not found"})
            generation.deleted = True
        return Reply(204)

    def _credits(self, request: FakeRequest) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        return Reply(200, {"credit_balance": self.credit_cents})

    def _output(self, request: FakeRequest) -> Reply:
        generation = self.generations.get(request.params["name"].removesuffix(".mp4"))
        if generation is None or generation.state != "completed":
            return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
        seconds = int(str(generation.body.get("duration", "5s")).removesuffix("s"))
        width, height = SIZES[generation.body.get("aspect_ratio", "16:9")]
        return Reply(200, self.video_bytes(seconds, width, height), {"Content-Type": "video/mp4"})
