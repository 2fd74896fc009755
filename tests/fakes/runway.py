"""A fake Runway developer API, on top of ``tests.fakes.server``.

It behaves as Runway documents (shared/vendors/video.md, section 1):

- every call needs ``Authorization: Bearer <key>`` (401 ``{"error"}`` otherwise) and
  ``X-Runway-Version: 2024-11-06`` (400 ``{"error"}`` otherwise);
- ``POST /v1/image_to_video`` and ``POST /v1/text_to_video`` check the body the way
  Runway does (model, ratio, duration, promptImage, promptText) and answer 400
  ``{"error": "Validation of body failed", "issues": [...], "docUrl"}``, or 200 ``{"id"}``;
- ``GET /v1/tasks/{id}`` walks the task through ``plan`` one step per poll
  (PENDING, THROTTLED, RUNNING with progress, then SUCCEEDED with ``output``
  URLs on this fake, or FAILED with ``failure``/``failureCode``, or CANCELLED);
- ``DELETE /v1/tasks/{id}`` answers 204; the task is gone afterwards (404);
- ``POST /v1/uploads {filename, type: "ephemeral"}`` answers ``{uploadUrl,
  fields, runwayUri}`` (Runway SDK ``uploads.create_ephemeral``); the file is
  then POSTed to ``uploadUrl`` on ``cdn`` as a presigned-POST form (the
  ``fields``, then ``file``; no API key; a Content-Length, no chunking; 204),
  after which ``promptImage`` may be the ``runway://`` URI;
- ``promptImage`` must be an https URL, a ``data:`` URI of at most 5 MB, or a
  ``runway://`` URI whose file arrived; the image the task got is kept in
  ``FakeTask.image`` (decoded data URI or uploaded bytes);
- ``GET /outputs/{task}.mp4`` on ``cdn`` (another fake server standing in for
  Runway's signed-URL storage; the API server itself when none is given)
  serves a real MP4 of the requested duration, with the requested ratio
  scaled down 8 times (1280:720 -> 160x90).

Faults are injected through the harness (``fake.server.fail_next(...)``) or the
``plan_*`` helpers.
"""

from __future__ import annotations

import base64
import re
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from providers.mock.media import render_video
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply
from tests.fakes.stability import parse_form

RUNWAY_KEY = "key_" + "5e" * 64
API_VERSION = "2024-11-06"
DOC_URL = "https://docs.dev.runwayml.com/api"
SCALE = 8

_GEN4 = {"1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672"}
_VEO = {"1280:720", "720:1280", "1080:1920", "1920:1080"}
# model -> (image ratios, text ratios, durations)
MODELS: dict[str, tuple[set[str], set[str], set[int]]] = {
    "gen4.5": (_GEN4, {"1280:720", "720:1280"}, set(range(2, 11))),
    "gen4_turbo": (_GEN4, set(), set(range(2, 11))),
    "veo3.1": (set(), _VEO, {4, 6, 8}),
    "veo3": (set(), _VEO, {8}),
}
_DATA_URI = re.compile(r"^data:image/(png|jpeg|webp);base64,[A-Za-z0-9+/=]+$")
MAX_DATA_URI = 5 * 1000 * 1000
MAX_UPLOAD = 200 * 1000 * 1000

DEFAULT_PLAN: list[dict[str, Any]] = [
    {"status": "PENDING"},
    {"status": "THROTTLED"},
    {"status": "RUNNING", "progress": 0.25},
    {"status": "RUNNING", "progress": 0.75},
    {"status": "SUCCEEDED"},
]


@dataclass
class FakeTask:
    id: str
    endpoint: str
    body: dict[str, Any]
    plan: list[dict[str, Any]]
    polls: int = 0
    deleted: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    #: The input image's bytes as Runway got them (data URI or upload); None for URLs.
    image: bytes | None = None


@dataclass
class FakeUpload:
    filename: str
    key: str
    uri: str
    data: bytes | None = None
    content_type: str = ""


class FakeRunway:
    def __init__(
        self,
        server: FakeVendorServer,
        *,
        cdn: FakeVendorServer | None = None,
        key: str = RUNWAY_KEY,
    ) -> None:
        self.server = server
        self.cdn = cdn or server
        self.key = key
        self.tasks: dict[str, FakeTask] = {}
        #: Upload slots by runway:// URI, with the file once it arrived.
        self.uploads: dict[str, FakeUpload] = {}
        #: What each new task goes through, one entry per poll; the last one repeats.
        self.plan: list[dict[str, Any]] = list(DEFAULT_PLAN)
        #: A plan of its own for a task whose promptText is a key here.
        self.plans_by_prompt: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._videos: dict[tuple[float, int, int], bytes] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-runway-")
        server.route("POST", "/v1/image_to_video", lambda r: self._create(r, "image_to_video"))
        server.route("POST", "/v1/text_to_video", lambda r: self._create(r, "text_to_video"))
        server.route("GET", "/v1/tasks/{id}", self._get)
        server.route("DELETE", "/v1/tasks/{id}", self._delete)
        server.route("POST", "/v1/uploads", self._create_upload)
        self.cdn.route("POST", "/runway-uploads", self._receive_upload)
        self.cdn.route("GET", "/outputs/{name}", self._output)

    # --- scripting ------------------------------------------------------------

    def plan_failure(self, failure: str, code: str | None) -> None:
        self.plan = [
            {"status": "RUNNING", "progress": 0.1},
            {"status": "FAILED", "failure": failure, "failureCode": code},
        ]

    def plan_stall(self) -> None:
        self.plan = [{"status": "PENDING"}, {"status": "RUNNING", "progress": 0.5}]

    def plan_cancelled(self) -> None:
        self.plan = [{"status": "RUNNING", "progress": 0.2}, {"status": "CANCELLED"}]

    # --- inspection -----------------------------------------------------------

    def creates(self) -> list[FakeRequest]:
        return self.server.calls("POST", "/v1/{endpoint}")

    def deletes(self) -> list[FakeRequest]:
        return self.server.calls("DELETE", "/v1/tasks/{id}")

    def video_bytes(self, duration: float, width: int, height: int) -> bytes:
        """The MP4 the fake serves for a clip of this duration and (scaled) size."""
        key = (float(duration), width, height)
        with self._lock:
            if key not in self._videos:
                path = Path(self._tmp.name) / f"{duration}-{width}x{height}.mp4"
                render_video(
                    path,
                    prompt="runway",
                    seed=7,
                    duration_seconds=duration,
                    width=width,
                    height=height,
                )
                self._videos[key] = path.read_bytes()
            return self._videos[key]

    @staticmethod
    def scaled(ratio: str) -> tuple[int, int]:
        width, height = (int(x) for x in ratio.split(":"))
        return width // SCALE, height // SCALE

    # --- routes -----------------------------------------------------------------

    def _auth_error(self, request: FakeRequest) -> Reply | None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return Reply(401, {"error": "Invalid API key. Make sure you are using the right key."})
        if request.headers.get("x-runway-version") != API_VERSION:
            return Reply(
                400,
                {
                    "error": "The X-Runway-Version header is missing or invalid. "
                    f"Use X-Runway-Version: {API_VERSION}.",
                    "docUrl": DOC_URL,
                },
            )
        return None

    @staticmethod
    def _invalid(issues: list[dict[str, Any]]) -> Reply:
        return Reply(
            400, {"error": "Validation of body failed", "issues": issues, "docUrl": DOC_URL}
        )

    def _create(self, request: FakeRequest, endpoint: str) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        try:
            body = request.json()
        except ValueError:
            return Reply(400, {"error": "Body is not valid JSON", "docUrl": DOC_URL})
        issues: list[dict[str, Any]] = []
        model = body.get("model")
        if model not in MODELS:
            issues.append(
                {
                    "code": "invalid_union_discriminator",
                    "path": ["model"],
                    "message": "Invalid model",
                }
            )
            return self._invalid(issues)
        image_ratios, text_ratios, durations = MODELS[model]
        ratios = image_ratios if endpoint == "image_to_video" else text_ratios
        if not ratios:
            issues.append(
                {
                    "code": "invalid_enum_value",
                    "path": ["model"],
                    "message": f"{model} is not available here",
                }
            )
        elif body.get("ratio") not in ratios:
            issues.append(
                {"code": "invalid_enum_value", "path": ["ratio"], "message": "Invalid enum value"}
            )
        duration = body.get("duration")
        if not isinstance(duration, int) or isinstance(duration, bool) or duration not in durations:
            issues.append(
                {"code": "invalid_type", "path": ["duration"], "message": "Invalid duration"}
            )
        text = body.get("promptText")
        if text is not None and (not isinstance(text, str) or not text or len(text) > 1000):
            issues.append(
                {"code": "too_big", "path": ["promptText"], "message": "1 to 1000 characters"}
            )
        if endpoint == "text_to_video" and not text:
            issues.append({"code": "invalid_type", "path": ["promptText"], "message": "Required"})
        image_bytes: bytes | None = None
        if endpoint == "image_to_video":
            image = body.get("promptImage")
            problem = ""
            if not isinstance(image, str):
                problem = "Invalid asset: must be an HTTPS URL, a data URI or a runway:// URI"
            elif image.startswith("data:"):
                if len(image) > MAX_DATA_URI:
                    problem = "Invalid asset: data URIs must be at most 5MB"
                elif not _DATA_URI.match(image):
                    problem = "Invalid asset: malformed data URI"
                else:
                    image_bytes = base64.b64decode(image.split(",", 1)[1])
            elif image.startswith("runway://"):
                upload = self.uploads.get(image)
                if upload is None or upload.data is None:
                    problem = "Invalid asset: unknown or incomplete upload"
                else:
                    image_bytes = upload.data
            elif not image.startswith("https://"):
                problem = "Invalid asset: must be an HTTPS URL, a data URI or a runway:// URI"
            if problem:
                issues.append({"code": "custom", "path": ["promptImage"], "message": problem})
        if issues:
            return self._invalid(issues)
        task = FakeTask(
            id=str(uuid.uuid4()),
            endpoint=endpoint,
            body=body,
            plan=list(self.plans_by_prompt.get(str(body.get("promptText")), self.plan)),
            image=image_bytes,
        )
        with self._lock:
            self.tasks[task.id] = task
        return Reply(200, {"id": task.id})

    def _create_upload(self, request: FakeRequest) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        body = request.json()
        filename = body.get("filename") if isinstance(body, dict) else None
        if not isinstance(filename, str) or not filename or body.get("type") != "ephemeral":
            return self._invalid(
                [{"code": "invalid_type", "path": ["filename"], "message": "filename and type: ephemeral are required"}]
            )
        token = uuid.uuid4().hex
        upload = FakeUpload(filename=filename, key=f"uploads/{token}/{filename}", uri=f"runway://ephemeral/{token}")
        with self._lock:
            self.uploads[upload.uri] = upload
        return Reply(
            200,
            {
                "uploadUrl": f"{self.cdn.url}/runway-uploads",
                "fields": {"key": upload.key, "policy": "eyJmYWtlIjp0cnVlfQ==", "x-amz-signature": token},
                "runwayUri": upload.uri,
            },
        )

    def _receive_upload(self, request: FakeRequest) -> Reply:
        """A presigned POST, as S3 takes it: the policy fields first, the file last."""
        if "authorization" in request.headers:
            return Reply(400, b"<Error><Code>InvalidArgument</Code></Error>", {"Content-Type": "application/xml"})
        if "content-length" not in request.headers:
            return Reply(411, b"<Error><Code>MissingContentLength</Code></Error>", {"Content-Type": "application/xml"})
        form = parse_form(request)
        if form is None or list(form)[-1:] != ["file"] or "key" not in form:
            return Reply(400, b"<Error><Code>MalformedPOSTRequest</Code></Error>", {"Content-Type": "application/xml"})
        with self._lock:
            upload = next((u for u in self.uploads.values() if u.key == form["key"].text), None)
            if upload is None or form.get("x-amz-signature") is None:
                return Reply(403, b"<Error><Code>AccessDenied</Code></Error>", {"Content-Type": "application/xml"})
            if len(form["file"].value) > MAX_UPLOAD:
                return Reply(400, b"<Error><Code>EntityTooLarge</Code></Error>", {"Content-Type": "application/xml"})
            upload.data = form["file"].value
            upload.content_type = form["file"].content_type or ""
        return Reply(204)

    def _task_json(self, task: FakeTask) -> dict[str, Any]:
        step = task.plan[min(task.polls, len(task.plan) - 1)]
        task.polls += 1
        answer: dict[str, Any] = {"id": task.id, "createdAt": "2026-08-01T12:00:00.000Z", **step}
        if step["status"] == "SUCCEEDED":
            answer["output"] = [f"{self.cdn.url}/outputs/{task.id}.mp4?_expiry=1754049600&sig=0f3a"]
        task.state = answer
        return answer

    def _get(self, request: FakeRequest) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        with self._lock:
            task = self.tasks.get(request.params["id"])
            if task is None or task.deleted:
                return Reply(404, {"error": "Task not found"})
            return Reply(200, self._task_json(task))

    def _delete(self, request: FakeRequest) -> Reply:
        if (error := self._auth_error(request)) is not None:
            return error
        with self._lock:
            task = self.tasks.get(request.params["id"])
            if task is None or task.deleted:
                return Reply(404, {"error": "Task not found"})
            task.deleted = True
        return Reply(204)

    def _output(self, request: FakeRequest) -> Reply:
        task = self.tasks.get(request.params["name"].removesuffix(".mp4"))
        if task is None or task.state.get("status") != "SUCCEEDED":
            return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
        width, height = self.scaled(task.body["ratio"])
        data = self.video_bytes(task.body["duration"], width, height)
        return Reply(200, data, {"Content-Type": "video/mp4"})
