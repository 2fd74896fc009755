"""A fake fal.ai queue serving the Pika endpoints, on top of ``tests.fakes.server``.

It behaves as fal documents its queue (shared/vendors/video.md, section 2):

- every call needs ``Authorization: Key <FAL_KEY>``; a missing or wrong key gets
  401 ``{"detail": ...}``;
- ``POST /fal-ai/pika/{v2.2|v2/turbo}/{text|image}-to-video`` checks the model
  input the way the endpoint's schema does (422 with a FastAPI ``detail`` list
  of ``{loc, msg, type, url}``) and answers ``{request_id, response_url,
  status_url, cancel_url, queue_position}``, the URLs on the app prefix only
  (``/fal-ai/pika/requests/{id}...``);
- ``GET .../requests/{id}/status`` walks ``plan`` one entry per poll (202 for
  IN_QUEUE / IN_PROGRESS, 200 for COMPLETED; ``logs`` with ``?logs=1``);
- ``GET .../requests/{id}`` gives the result: ``{"video": {url, content_type,
  file_name, file_size}}`` with the URL on ``cdn`` (another fake standing in for
  fal's media CDN), or per ``outcome`` the failed request's answer:
  ``"moderated"`` (422 ``content_policy_violation``), ``"invalid"`` (422 model
  validation error), ``"crashed"`` (500 ``runner_server_error`` with
  ``X-Fal-Error-Type``, and ``error`` on the status);
- ``PUT .../requests/{id}/cancel`` answers 202 ``CANCELLATION_REQUESTED``, or 400
  ``ALREADY_COMPLETED`` once the request is done;
- ``GET /files/{name}`` on ``cdn`` serves a real MP4 of the requested duration at
  8 fps, the requested shape scaled down 10 times (720p 16:9 -> 128x72).

Out of credit is ``fake.server.fail_next(..., exhausted_balance())``: 403 with
fal's "Exhausted balance" detail. Other faults go through the harness.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from providers.mock.media import render_video
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply, fetch_input

FAL_KEY = "fal-" + "7d" * 18 + ":" + "e1" * 16
APP = "fal-ai/pika"
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:5", "5:4", "3:2", "2:3")
RESOLUTIONS = {"720p": 72, "1080p": 108}  # short side, scaled down 10 times
FPS = 8
# endpoint (after the app) -> allowed durations
ENDPOINTS: dict[str, tuple[int, ...]] = {
    "v2.2/text-to-video": (5, 10),
    "v2.2/image-to-video": (5, 10),
    "v2/turbo/text-to-video": (5,),
    "v2/turbo/image-to-video": (5,),
}
TEXT_FIELDS = {"prompt", "negative_prompt", "seed", "aspect_ratio", "resolution", "duration"}
IMAGE_FIELDS = {"prompt", "negative_prompt", "seed", "image_url", "resolution", "duration"}

DEFAULT_PLAN: list[dict[str, Any]] = [
    {"status": "IN_QUEUE", "queue_position": 2},
    {"status": "IN_QUEUE", "queue_position": 0},
    {"status": "IN_PROGRESS", "log": "Generating video frames"},
    {"status": "COMPLETED"},
]
STALLED_PLAN: list[dict[str, Any]] = [{"status": "IN_QUEUE", "queue_position": 5}]

_video_cache: dict[tuple[int, int, int], bytes] = {}
_cache_lock = threading.Lock()


def exhausted_balance() -> Reply:
    """fal's out-of-credit answer: 403, not 402."""
    return Reply(
        status=403,
        body={
            "detail": "User is locked. Reason: Exhausted balance. Top up your balance at "
            "fal.ai/dashboard/billing"
        },
    )


def model_error(field_name: str, msg: str, kind: str, **extra: Any) -> dict[str, Any]:
    """One entry of fal's ``detail`` list."""
    return {
        "loc": ["body", field_name],
        "msg": msg,
        "type": kind,
        "url": f"https://docs.fal.ai/errors#{kind}",
        **extra,
    }


def clip(duration: int, width: int, height: int) -> bytes:
    """A real MP4 (rendered once per shape and kept)."""
    key = (duration, width, height)
    with _cache_lock:
        if key not in _video_cache:
            fd, path = tempfile.mkstemp(suffix=".mp4")
            os.close(fd)
            try:
                render_video(
                    path,
                    prompt="pika",
                    seed=7,
                    duration_seconds=duration,
                    width=width,
                    height=height,
                    fps=FPS,
                )
                with open(path, "rb") as handle:
                    _video_cache[key] = handle.read()
            finally:
                os.unlink(path)
        return _video_cache[key]


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


@dataclass
class FalRequest:
    id: str
    endpoint: str
    input: dict[str, Any]
    plan: list[dict[str, Any]]
    outcome: str
    polls: int = 0
    cancelled: bool = False
    logs: list[dict[str, str]] = field(default_factory=list)
    #: The input image as fal got it: a data URI decoded, or a URL fetched (``fetch_inputs``).
    image: bytes | None = None

    @property
    def step(self) -> dict[str, Any]:
        return (
            self.plan[min(self.polls, len(self.plan)) - 1] if self.polls else {"status": "IN_QUEUE"}
        )

    @property
    def completed(self) -> bool:
        return self.step["status"] == "COMPLETED"


class FakeFal:
    def __init__(
        self,
        server: FakeVendorServer,
        *,
        cdn: FakeVendorServer | None = None,
        key: str = FAL_KEY,
    ) -> None:
        self.server = server
        self.cdn = cdn or server
        self.key = key
        #: Status sequence and outcome given to the next submitted requests.
        self.plan: list[dict[str, Any]] = list(DEFAULT_PLAN)
        self.outcome = "ok"
        #: Fetch image_url URLs at submit, as fal does (off: tests with made-up URLs);
        #: ``allow_http_inputs`` takes a local S3 emulator's plain-http presigned URLs.
        self.fetch_inputs = False
        self.allow_http_inputs = False
        self.requests: dict[str, FalRequest] = {}
        self._lock = threading.Lock()
        base = f"/{APP}/requests/{{id}}"
        server.route("POST", f"/{APP}/{{endpoint:path}}", self._submit)
        server.route("GET", f"{base}/status", self._status)
        server.route("GET", base, self._result)
        server.route("PUT", f"{base}/cancel", self._cancel)
        self.cdn.route("GET", "/files/{name}", self._file)

    # --- helpers for tests ---

    def only(self) -> FalRequest:
        (request,) = self.requests.values()
        return request

    def submits(self) -> list[FakeRequest]:
        return self.server.calls("POST", f"/{APP}/{{endpoint:path}}")

    # --- routes ---

    def _auth(self, request: FakeRequest) -> Reply | None:
        if request.headers.get("authorization") != f"Key {self.key}":
            return Reply(
                status=401,
                body={
                    "detail": "Cannot access application 'fal-ai/pika'. Authentication is "
                    "required to access this application."
                },
            )
        return None

    def _submit(self, request: FakeRequest) -> Reply:
        if (denied := self._auth(request)) is not None:
            return denied
        endpoint = request.params["endpoint"]
        if endpoint not in ENDPOINTS:
            return Reply(status=404, body={"detail": f"Application '{APP}/{endpoint}' not found"})
        try:
            body = request.json()
        except ValueError:
            return Reply(
                status=422, body={"detail": [model_error("body", "Invalid JSON", "json_invalid")]}
            )
        errors = self._check_input(endpoint, body)
        image: bytes | None = None
        url = body.get("image_url") if isinstance(body, dict) else None
        if not errors and isinstance(url, str):
            if url.startswith("data:"):
                image = base64.b64decode(url.split(",", 1)[1])
            elif self.fetch_inputs:
                try:
                    image = fetch_input(url, allow_http=self.allow_http_inputs)
                except ValueError:
                    errors.append(model_error("image_url", "Could not download the image", "file_download_error"))
        if errors:
            return Reply(status=422, body={"detail": errors})
        request_id = str(uuid.uuid4())
        with self._lock:
            self.requests[request_id] = FalRequest(
                request_id, endpoint, body, list(self.plan), self.outcome, image=image
            )
        base = f"{self.server.url}/{APP}/requests/{request_id}"
        return Reply(
            body={
                "request_id": request_id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": 0,
            }
        )

    @staticmethod
    def _check_input(endpoint: str, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            return [model_error("body", "Input should be an object", "model_type")]
        image = endpoint.endswith("image-to-video")
        allowed = IMAGE_FIELDS if image else TEXT_FIELDS
        errors = [
            model_error(name, "Extra inputs are not permitted", "extra_forbidden")
            for name in body
            if name not in allowed
        ]
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            errors.append(model_error("prompt", "Field required", "missing"))
        if image:
            url = body.get("image_url")
            if not isinstance(url, str) or not url.startswith(
                ("https://", "http://", "data:image/")
            ):
                errors.append(model_error("image_url", "Field required", "missing"))
            elif url.startswith("data:") and _data_uri_image(url) is None:
                errors.append(
                    model_error("image_url", "Could not decode the image", "image_load_error")
                )
        elif body.get("aspect_ratio", "16:9") not in ASPECT_RATIOS:
            errors.append(
                model_error(
                    "aspect_ratio", "Input should be one of " + ", ".join(ASPECT_RATIOS), "enum"
                )
            )
        if body.get("resolution", "720p") not in RESOLUTIONS:
            errors.append(model_error("resolution", "Input should be '720p' or '1080p'", "enum"))
        duration = body.get("duration", 5)
        if not isinstance(duration, int) or duration not in ENDPOINTS[endpoint]:
            errors.append(model_error("duration", "Input should be 5 or 10", "enum"))
        if "seed" in body and not isinstance(body["seed"], int):
            errors.append(model_error("seed", "Input should be a valid integer", "int_type"))
        return errors

    def _get(self, request: FakeRequest) -> FalRequest | Reply:
        if (denied := self._auth(request)) is not None:
            return denied
        with self._lock:
            found = self.requests.get(request.params["id"])
        if found is None:
            return Reply(status=404, body={"detail": "Request not found"})
        return found

    def _status(self, request: FakeRequest) -> Reply:
        found = self._get(request)
        if isinstance(found, Reply):
            return found
        with self._lock:
            found.polls += 1
            step = dict(found.step)
        log_line = step.pop("log", None)
        if log_line:
            found.logs.append(
                {
                    "message": log_line,
                    "level": "INFO",
                    "source": "user",
                    "timestamp": "2026-01-01T00:00:00Z",
                }
            )
        base = f"{self.server.url}/{APP}/requests/{found.id}"
        body: dict[str, Any] = {**step, "request_id": found.id, "response_url": base}
        if request.arg("logs") == "1":
            body["logs"] = list(found.logs)
        if step["status"] == "COMPLETED":
            body["metrics"] = {"inference_time": 12.5}
            if found.outcome == "crashed":
                body["error"] = "Runner encountered an internal server error"
                body["error_type"] = "runner_server_error"
            return Reply(status=200, body=body)
        return Reply(status=202, body=body)

    def _result(self, request: FakeRequest) -> Reply:
        found = self._get(request)
        if isinstance(found, Reply):
            return found
        if not found.completed:
            return Reply(status=400, body={"detail": "Request is still in progress"})
        if found.outcome == "moderated":
            error = model_error(
                "prompt",
                "The content was flagged by a content checker.",
                "content_policy_violation",
                input=found.input.get("prompt"),
            )
            return Reply(status=422, body={"detail": [error]}, headers={"X-Fal-Retryable": "false"})
        if found.outcome == "invalid":
            error = model_error(
                "image_url", "Image too small: at least 300 px per side", "image_too_small"
            )
            return Reply(status=422, body={"detail": [error]}, headers={"X-Fal-Retryable": "false"})
        if found.outcome == "crashed":
            return Reply(
                status=500,
                body={
                    "detail": "Runner encountered an internal server error",
                    "error_type": "runner_server_error",
                },
                headers={"X-Fal-Error-Type": "runner_server_error"},
            )
        name = f"{found.id}.mp4"
        data = self.video_for(found)
        return Reply(
            body={
                "video": {
                    "url": f"{self.cdn.url}/files/{name}",
                    "content_type": "video/mp4",
                    "file_name": name,
                    "file_size": len(data),
                }
            }
        )

    def _cancel(self, request: FakeRequest) -> Reply:
        found = self._get(request)
        if isinstance(found, Reply):
            return found
        if found.completed:
            return Reply(status=400, body={"status": "ALREADY_COMPLETED"})
        found.cancelled = True
        return Reply(status=202, body={"status": "CANCELLATION_REQUESTED"})

    def _file(self, request: FakeRequest) -> Reply:
        with self._lock:
            found = self.requests.get(request.params["name"].removesuffix(".mp4"))
        if found is None:
            return Reply(status=404, body=b"Not Found", headers={"Content-Type": "text/plain"})
        return Reply(body=self.video_for(found), headers={"Content-Type": "video/mp4"})

    # --- media ---

    def video_for(self, found: FalRequest) -> bytes:
        width, height = self.frame_size(found)
        return clip(int(found.input.get("duration", 5)), width, height)

    @staticmethod
    def frame_size(found: FalRequest) -> tuple[int, int]:
        short = RESOLUTIONS[found.input.get("resolution", "720p")]
        if "image_url" in found.input:
            size = _image_size(found.image) if found.image else None
            size = size or _data_uri_image(found.input["image_url"]) or (16, 9)
            ratio = size[0] / size[1]
        else:
            a, b = found.input.get("aspect_ratio", "16:9").split(":")
            ratio = int(a) / int(b)
        if ratio >= 1:
            return _even(short * ratio), short
        return short, _even(short / ratio)


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height
    except (OSError, ValueError):
        return None


def _data_uri_image(url: str) -> tuple[int, int] | None:
    """(width, height) of an image sent as a data URI, None when it is not one."""
    if not url.startswith("data:image/") or ";base64," not in url:
        return None
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            return image.width, image.height
    except (binascii.Error, OSError, ValueError):
        return None
