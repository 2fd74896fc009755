"""A fake sunoapi.org-style Suno gateway on 127.0.0.1, on top of ``FakeVendorServer``.

As vendors/audio.md §7 documents the gateway shape (sunoapi.org; kie.ai is identical):

- ``Authorization: Bearer <key>`` on every call; otherwise ``{"code": 401, "msg": ...}``;
- ``POST /api/v1/generate`` checks ``customMode``/``instrumental`` (required
  booleans), ``model``, the custom-mode rules (``style`` and ``title`` required,
  ``prompt`` = lyrics unless instrumental) and the text limits (413 when too
  long), and answers ``{"code": 200, "msg": "success", "data": {"taskId"}}``;
- ``GET /api/v1/generate/record-info?taskId=`` walks ``PENDING``,
  ``TEXT_SUCCESS``, ``FIRST_SUCCESS``, then ``SUCCESS`` (or the failure status
  asked for) with two clips in ``data.response.sunoData``;
- each clip's ``audioUrl`` serves a real MP3.

``envelope_only = True`` makes errors arrive as HTTP 200 with the code only in
the body, which the docs leave possible.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from tests.fakes.mubert import audio_bytes
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply

API_KEY = "suno-gateway-key-81b2f0"
MODELS = ("V3_5", "V4", "V4_5", "V4_5PLUS", "V4_5ALL", "V5", "V5_5")
STEPS = ("PENDING", "TEXT_SUCCESS", "FIRST_SUCCESS")


class FakeSuno(FakeVendorServer):
    GENERATE = "/api/v1/generate"
    RECORD_INFO = "/api/v1/generate/record-info"
    FILE = "/files/{name}"

    def __init__(self) -> None:
        super().__init__()
        self.key = API_KEY
        #: Errors as HTTP 200 with the code only in the body.
        self.envelope_only = False
        #: Final status of the next task: SUCCESS or one of the failure statuses.
        self.next_outcome = "SUCCESS"
        #: Clip lengths (seconds) of a task, in the order the gateway lists them.
        self.clip_seconds: tuple[float, ...] = (3.0, 4.0)
        #: Keep every task PENDING (for cancel tests).
        self.hold_pending = False
        self.tasks: dict[str, dict[str, Any]] = {}
        self.clips: dict[str, float] = {}
        self._state_lock = threading.Lock()

    def start(self) -> FakeSuno:
        super().start()
        self.route("POST", self.GENERATE, self._generate)
        self.route("GET", self.RECORD_INFO, self._record_info)
        self.route("GET", self.FILE, self._file)
        return self

    def error(self, code: int, msg: str) -> Reply:
        return Reply(
            status=200 if self.envelope_only else code,
            body={"code": code, "msg": msg, "data": None},
        )

    def _auth(self, request: FakeRequest) -> Reply | None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return self.error(401, "You do not have access permissions")
        return None

    def _generate(self, request: FakeRequest) -> Reply | dict:
        denied = self._auth(request)
        if denied:
            return denied
        body = request.json()
        if not isinstance(body.get("customMode"), bool) or not isinstance(
            body.get("instrumental"), bool
        ):
            return self.error(400, "customMode and instrumental are required")
        model = body.get("model", "V4_5ALL")
        if model not in MODELS:
            return self.error(400, f"model {model} is not supported")
        v4 = model in ("V3_5", "V4")
        if body["customMode"]:
            if not body.get("style") or not body.get("title"):
                return self.error(400, "style and title are required in custom mode")
            if not body["instrumental"] and not body.get("prompt"):
                return self.error(400, "prompt is required in custom mode unless instrumental")
            if len(body.get("prompt", "")) > (3000 if v4 else 5000) or len(body["style"]) > (
                200 if v4 else 1000
            ):
                return self.error(413, "Theme or prompt too long")
            if len(body["title"]) > (80 if v4 else 100):
                return self.error(413, "title too long")
        else:
            if not body.get("prompt"):
                return self.error(400, "prompt is required")
            if len(body["prompt"]) > 500:
                return self.error(413, "Theme or prompt too long")
        task_id = uuid.uuid4().hex
        with self._state_lock:
            self.tasks[task_id] = {"params": body, "polls": 0, "outcome": self.next_outcome}
        return {"code": 200, "msg": "success", "data": {"taskId": task_id}}

    def _record_info(self, request: FakeRequest) -> Reply | dict:
        denied = self._auth(request)
        if denied:
            return denied
        task_id = request.arg("taskId", "")
        with self._state_lock:
            task = self.tasks.get(task_id)
            if task is None:
                return self.error(404, "task not found")
            if not self.hold_pending:
                task["polls"] += 1
            polls = task["polls"]
            if polls <= len(STEPS):
                status = STEPS[max(polls, 1) - 1]
            else:
                status = task["outcome"]
            clips = []
            if status in ("FIRST_SUCCESS", "SUCCESS", "CALLBACK_EXCEPTION"):
                clips = self._clip_list(task_id, task)
            if status == "FIRST_SUCCESS":  # streams are ready, downloads are not yet
                for clip in clips:
                    clip["audioUrl"] = ""
        failed = status not in STEPS and status != "SUCCESS"
        data = {
            "taskId": task_id,
            "parentMusicId": "",
            "param": "{}",
            "response": {"taskId": task_id, "sunoData": clips},
            "status": status,
            "type": "GENERATE",
            "errorCode": 500 if failed else None,
            "errorMessage": f"fake failure: {status}" if failed else None,
        }
        return {"code": 200, "msg": "success", "data": data}

    def _clip_list(self, task_id: str, task: dict[str, Any]) -> list[dict[str, Any]]:
        params = task["params"]
        clips = []
        for index, seconds in enumerate(self.clip_seconds):
            clip_id = f"{task_id[:8]}-clip{index}"
            self.clips[clip_id] = seconds
            clips.append(
                {
                    "id": clip_id,
                    "audioUrl": f"{self.url}/files/{clip_id}.mp3",
                    "streamAudioUrl": f"{self.url}/stream/{clip_id}",
                    "imageUrl": f"{self.url}/images/{clip_id}.jpeg",
                    "prompt": params.get("prompt", "")
                    if params["customMode"]
                    else "[Verse] la la la",
                    "modelName": "chirp-"
                    + params.get("model", "V4_5ALL").lower().replace("_", "-"),
                    "title": params.get("title") or f"Fake song {index + 1}",
                    "tags": params.get("style", ""),
                    "createTime": "2026-01-01 00:00:00",
                    "duration": seconds,
                }
            )
        return clips

    def _file(self, request: FakeRequest) -> Reply:
        clip_id = request.params["name"].removesuffix(".mp3")
        seconds = self.clips.get(clip_id)
        if seconds is None:
            return Reply(status=404, body="Not Found")
        return Reply(body=audio_bytes("mp3", seconds), headers={"Content-Type": "audio/mpeg"})
