"""A fake Kling AI API, on top of ``tests.fakes.server``.

It behaves as Kling documents (shared/vendors/video.md, section 5):

- every call needs ``Authorization: Bearer <JWT>``: HS256 over ``{iss, exp, nbf}``
  signed with the secret key, ``iss`` the access key, valid now. A missing,
  malformed or mis-signed token gets 401 code 1001/1002; one not yet valid
  1003; an expired one 1004;
- every answer is the envelope ``{code, message, request_id, data}``;
- ``POST /v1/videos/text2video`` and ``/image2video`` check the body as Kling
  does (model_name per endpoint, duration as a string, mode, aspect_ratio, an
  image as a URL or *bare* base64: a ``data:`` prefix is refused with 1201),
  keep ``external_task_id`` unique (1201 for a repeat), refuse work past the
  resource pack (429 code 1102) or the concurrency limit (429 code 1303);
- ``GET /v1/videos/{kind}/{id}`` accepts the task id or the external id (400 code
  1201 "Task not found" otherwise) and walks ``plan``: submitted, processing,
  then succeed with ``task_result.videos`` and ``final_unit_deduction``, or failed
  with ``task_status_msg``;
- ``GET /kling/{task}.mp4`` on ``cdn`` serves a real MP4 of the asked duration
  (16:9 -> 160x90, 9:16 -> 90x160, 1:1 -> 96x96).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from providers.mock.media import render_video
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply

ACCESS_KEY = "AkFakeKling0123456789"
SECRET_KEY = "SkFakeKlingSecret9876543210abcdef"

TEXT_MODELS = {
    "kling-v1",
    "kling-v1-6",
    "kling-v2-master",
    "kling-v2-1-master",
    "kling-v2-5-turbo",
    "kling-v2-6",
    "kling-v3",
}
IMAGE_MODELS = TEXT_MODELS | {"kling-v1-5", "kling-v2-1"}
SIZES = {"16:9": (160, 90), "9:16": (90, 160), "1:1": (96, 96)}

DEFAULT_PLAN: list[dict[str, Any]] = [
    {"task_status": "submitted"},
    {"task_status": "processing"},
    {"task_status": "succeed"},
]


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class FakeTask:
    task_id: str
    kind: str
    body: dict[str, Any]
    plan: list[dict[str, Any]]
    created_at: int
    polls: int = 0
    status: str = "submitted"

    @property
    def image(self) -> bytes | None:
        """The input image as Kling got it (bare base64 decoded); None for a URL or none."""
        value = self.body.get("image")
        if not isinstance(value, str) or value.startswith("https://"):
            return None
        return base64.b64decode(value)


class FakeKling:
    def __init__(
        self,
        server: FakeVendorServer,
        *,
        cdn: FakeVendorServer | None = None,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
    ) -> None:
        self.server = server
        self.cdn = cdn or server
        self.access_key = access_key
        self.secret_key = secret_key
        self.tasks: dict[str, FakeTask] = {}
        self.plan: list[dict[str, Any]] = list(DEFAULT_PLAN)
        #: Units left in the resource pack; None: plenty.
        self.units_left: float | None = None
        #: Tasks that may run at once (submitted/processing) before 1303.
        self.concurrency = 5
        #: Units each successful task deducts (final_unit_deduction).
        self.deduction = "1.5"
        #: Create the next task, then hang up without answering (a lost answer).
        self.drop_after_create = False
        #: Seconds added to the fake's clock when it checks tokens (simulates skew).
        self.clock_offset = 0.0
        self.tokens: list[str] = []
        self._lock = threading.Lock()
        self._videos: dict[tuple[int, int, int], bytes] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-kling-")
        for kind in ("text2video", "image2video"):
            server.route("POST", f"/v1/videos/{kind}", lambda r, k=kind: self._create(r, k))
            server.route("GET", f"/v1/videos/{kind}/{{id}}", lambda r, k=kind: self._get(r, k))
        self.cdn.route("GET", "/kling/{name}", self._output)

    # --- scripting and inspection -------------------------------------------------

    def plan_failure(self, message: str) -> None:
        self.plan = [
            {"task_status": "processing"},
            {"task_status": "failed", "task_status_msg": message},
        ]

    def plan_stall(self) -> None:
        self.plan = [{"task_status": "submitted"}, {"task_status": "processing"}]

    def creates(self) -> list[FakeRequest]:
        return self.server.calls("POST", "/v1/videos/{kind}")

    def video_bytes(self, seconds: int, width: int, height: int) -> bytes:
        key = (seconds, width, height)
        with self._lock:
            if key not in self._videos:
                path = Path(self._tmp.name) / f"{seconds}-{width}x{height}.mp4"
                render_video(
                    path,
                    prompt="kling",
                    seed=3,
                    duration_seconds=seconds,
                    width=width,
                    height=height,
                )
                self._videos[key] = path.read_bytes()
            return self._videos[key]

    @staticmethod
    def claims(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        header, payload, _ = token.split(".")
        return json.loads(_unb64(header)), json.loads(_unb64(payload))

    # --- envelope -----------------------------------------------------------------

    @staticmethod
    def envelope(code: int, message: str, data: Any = None) -> dict[str, Any]:
        body: dict[str, Any] = {"code": code, "message": message, "request_id": str(uuid.uuid4())}
        if data is not None:
            body["data"] = data
        return body

    def _error(self, status: int, code: int, message: str) -> Reply:
        return Reply(status, self.envelope(code, message))

    def _auth_error(self, request: FakeRequest) -> Reply | None:
        header = request.headers.get("authorization", "")
        if not header:
            return self._error(401, 1001, "Authorization is empty")
        if not header.startswith("Bearer "):
            return self._error(401, 1002, "Authorization is invalid")
        token = header[len("Bearer ") :]
        try:
            head, payload = self.claims(token)
            signing_input, signature = token.rsplit(".", 1)
            expected = hmac.new(
                self.secret_key.encode(), signing_input.encode(), hashlib.sha256
            ).digest()
            valid = hmac.compare_digest(expected, _unb64(signature))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return self._error(401, 1002, "Authorization is invalid")
        if head.get("alg") != "HS256" or not valid or payload.get("iss") != self.access_key:
            return self._error(401, 1002, "Authorization is invalid")
        now = time.time() + self.clock_offset
        if now < payload.get("nbf", 0):
            return self._error(401, 1003, "Authorization is not yet valid")
        if now >= payload.get("exp", 0):
            return self._error(401, 1004, "Authorization has expired")
        with self._lock:
            self.tokens.append(token)
        return None

    # --- routes -------------------------------------------------------------------

    def _create(self, request: FakeRequest, kind: str) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        try:
            body = request.json()
        except ValueError:
            return self._error(400, 1200, "Invalid request parameters")
        if (problem := self._check(body, kind)) is not None:
            return self._error(400, 1201, problem)
        with self._lock:
            external = body.get("external_task_id")
            if external and any(
                t.body.get("external_task_id") == external for t in self.tasks.values()
            ):
                return self._error(400, 1201, "external_task_id already exists")
            if self.units_left is not None and self.units_left <= 0:
                return self._error(429, 1102, "Resource pack depleted or expired")
            running = sum(t.status in ("submitted", "processing") for t in self.tasks.values())
            if running >= self.concurrency:
                return self._error(429, 1303, "parallel task over resource pack limit")
            now = int(time.time() * 1000)
            task = FakeTask(str(uuid.uuid4().int)[:18], kind, body, list(self.plan), now)
            self.tasks[task.task_id] = task
            drop, self.drop_after_create = self.drop_after_create, False
        if drop:
            return Reply(drop=True)
        return Reply(200, self.envelope(0, "SUCCEED", self._task_data(task)))

    def _check(self, body: dict[str, Any], kind: str) -> str | None:
        model = body.get("model_name", "kling-v1")
        if model not in (TEXT_MODELS if kind == "text2video" else IMAGE_MODELS):
            return f"model_name: {model} is not supported by {kind}"
        if not isinstance(body.get("prompt", ""), str) or len(body.get("prompt", "")) > 2500:
            return "prompt: must not exceed 2500 characters"
        duration = body.get("duration", "5")
        allowed = {str(s) for s in range(3, 16)} if model == "kling-v3" else {"5", "10"}
        if not isinstance(duration, str) or duration not in allowed:
            return "duration: illegal value"
        if body.get("mode", "std") not in ("std", "pro"):
            return "mode: illegal value"
        if kind == "text2video":
            if body.get("aspect_ratio", "16:9") not in SIZES:
                return "aspect_ratio: illegal value"
        else:
            image = body.get("image")
            if not isinstance(image, str) or not image:
                return "image: must not be empty"
            if image.startswith("data:"):
                return "image: base64 must not carry a data: prefix"
            if not image.startswith("https://"):
                try:
                    data = base64.b64decode(image, validate=True)
                except binascii.Error:
                    return "image: invalid base64"
                return self._check_image(data)
        return None

    @staticmethod
    def _check_image(data: bytes) -> str | None:
        """Kling's image rules: JPG/JPEG/PNG, at most 10 MB, 300 px a side, 1:2.5 to 2.5:1."""
        if len(data) > 10 * 1024 * 1024:
            return "image: must not exceed 10MB"
        try:
            with Image.open(io.BytesIO(data)) as decoded:
                kind, (width, height) = decoded.format, decoded.size
        except (OSError, ValueError):
            return "image: cannot be decoded"
        if kind not in ("JPEG", "PNG"):
            return "image: only JPG/JPEG/PNG are supported"
        if min(width, height) < 300:
            return "image: width and height must be at least 300px"
        if max(width / height, height / width) > 2.5:
            return "image: aspect ratio must be between 1:2.5 and 2.5:1"
        return None

    def _task_data(self, task: FakeTask) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": task.status,
            "task_info": {"external_task_id": task.body.get("external_task_id", "")},
            "created_at": task.created_at,
            "updated_at": int(time.time() * 1000),
        }
        return data

    def _get(self, request: FakeRequest, kind: str) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        wanted = request.params["id"]
        with self._lock:
            task = next(
                (
                    t
                    for t in self.tasks.values()
                    if t.kind == kind and wanted in (t.task_id, t.body.get("external_task_id"))
                ),
                None,
            )
            if task is None:
                return self._error(400, 1201, "Task not found")
            step = task.plan[min(task.polls, len(task.plan) - 1)]
            task.polls += 1
            task.status = step["task_status"]
            data = self._task_data(task)
            data.update(step)
            if task.status == "succeed":
                seconds = task.body.get("duration", "5")
                data["task_result"] = {
                    "videos": [
                        {
                            "id": f"v-{task.task_id}",
                            "url": f"{self.cdn.url}/kling/{task.task_id}.mp4",
                            "watermark_url": f"{self.cdn.url}/kling/{task.task_id}-wm.mp4",
                            "duration": seconds,
                        }
                    ]
                }
                data["final_unit_deduction"] = self.deduction
                data["watermark_info"] = {"enabled": False}
        return Reply(200, self.envelope(0, "SUCCEED", data))

    def _output(self, request: FakeRequest) -> Reply:
        task = self.tasks.get(request.params["name"].removesuffix(".mp4"))
        if task is None or task.status != "succeed":
            return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
        width, height = SIZES.get(task.body.get("aspect_ratio", "16:9"), (160, 90))
        data = self.video_bytes(int(task.body.get("duration", "5")), width, height)
        return Reply(200, data, {"Content-Type": "video/mp4"})
