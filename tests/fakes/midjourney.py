"""A fake midjourney-proxy (the "MJ-Proxy" task API) on top of ``tests.fakes.server``.

It behaves as shared/vendors/image-and-storage.md (section 2a) describes the
open-source proxy (novicezk/midjourney-proxy), served under the ``/mj``
context path:

- every call needs ``mj-api-secret: <secret>``; a wrong or missing one gets a
  bare HTTP 403 with an empty body (ApiAuthorizeInterceptor);
- ``POST /mj/submit/imagine {prompt, base64?}`` answers HTTP 200
  ``{code, description, result, properties}``: code 1 with a 16-digit task id,
  4 for a blank prompt or a bad data URL, 24 (banned prompt) when the prompt
  holds a word of ``banned_words``, 23 (queue full) while ``queue_full`` > 0;
- ``POST /mj/submit/change {taskId, action, index}``: 3 when the parent task
  is unknown, 4 when it has not succeeded or the action/index is bad, else 1;
- ``POST /mj/submit/action {taskId, customId}`` (the plus/relay variant): the
  customId must be one of the parent's ``buttons``;
- ``GET /mj/task/{id}/fetch`` walks the task one step per fetch through
  ``plan`` (NOT_START, SUBMITTED, IN_PROGRESS "0%" .. "100%", then SUCCESS with
  ``imageUrl`` and ``buttons``); a prompt containing ``[fail]`` ends in FAILURE
  with a ``failReason``, ``[moderated]`` in FAILURE with Midjourney's moderator
  message; an unknown id answers 200 with an empty body, as the proxy does;
- image prompts: a ``base64`` data URI, or URLs at the front of the prompt
  (fetched at submit when ``fetch_inputs``; plain http with
  ``allow_http_inputs``, for a local S3 emulator); what was received is kept
  in ``FakeTask.images``; a URL that cannot be fetched gets code 4;
- ``GET /attachments/{task}.png`` serves a real PNG: the 2x2 grid at 1/8 size
  (256x256 for IMAGINE and VARIATION, 128x128 for an upscaled image).

Other faults (5xx, 429, slow, dropped, malformed) go through the harness.
"""

from __future__ import annotations

import base64
import io
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from tests.fakes.server import FakeRequest, FakeVendorServer, Reply, fetch_input

MJ_SECRET = "mj-secret-" + "7f" * 12

DEFAULT_PLAN: list[dict[str, Any]] = [
    {"status": "NOT_START", "progress": "0%"},
    {"status": "SUBMITTED", "progress": "0%"},
    {"status": "IN_PROGRESS", "progress": "0%"},
    {"status": "IN_PROGRESS", "progress": "45%"},
    {"status": "IN_PROGRESS", "progress": "100%"},
    {"status": "SUCCESS", "progress": "100%"},
]
MODERATOR_MESSAGE = (
    "Sorry! Our AI moderator thinks this prompt is probably against our community standards."
)


@dataclass
class FakeTask:
    id: str
    action: str
    prompt: str
    plan: list[dict[str, Any]]
    body: dict[str, Any]
    fetches: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    #: Image prompts as received: the base64 data URI decoded, URLs fetched.
    images: list[bytes] = field(default_factory=list)


def _png(side: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    image = Image.new("RGB", (side, side), (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class FakeMidjourneyProxy:
    def __init__(self, server: FakeVendorServer, *, secret: str = MJ_SECRET) -> None:
        self.server = server
        self.secret = secret
        self.tasks: dict[str, FakeTask] = {}
        self.banned_words = {"gore"}
        self.queue_full = 0
        self.fetch_inputs = False
        self.allow_http_inputs = False
        self.plan = list(DEFAULT_PLAN)
        self._lock = threading.Lock()
        self._next = 1320098173412546
        server.route("POST", "/mj/submit/imagine", self._guarded(self._imagine))
        server.route("POST", "/mj/submit/change", self._guarded(self._change))
        server.route("POST", "/mj/submit/action", self._guarded(self._action))
        server.route("GET", "/mj/task/{id}/fetch", self._guarded(self._fetch))
        server.route("GET", "/attachments/{name}", self._attachment)

    @property
    def base_url(self) -> str:
        return self.server.url

    def submits(self) -> list[FakeRequest]:
        return [r for r in self.server.requests if r.method == "POST" and r.path.startswith("/mj/submit/")]

    # --- handlers ---

    def _guarded(self, handler):
        def guarded(request: FakeRequest) -> Reply:
            if request.headers.get("mj-api-secret") != self.secret:
                return Reply(status=403, body=b"")
            return handler(request)

        return guarded

    def _new_task(self, action: str, prompt: str, body: dict[str, Any]) -> FakeTask:
        with self._lock:
            self._next += 1
            task = FakeTask(str(self._next), action, prompt, list(self.plan), body)
            self.tasks[task.id] = task
        return task

    @staticmethod
    def _answer(code: int, description: str, result: str | None = None, **properties: Any) -> Reply:
        return Reply(body={"code": code, "description": description, "result": result, "properties": properties})

    def _imagine(self, request: FakeRequest) -> Reply:
        body = request.json() or {}
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return self._answer(4, "prompt不能为空")
        base64_image = body.get("base64")
        if base64_image is not None and not str(base64_image).startswith("data:image/"):
            return self._answer(4, "basisImageBase64格式错误")
        for word in self.banned_words:
            if word in prompt.lower():
                return self._answer(24, "可能包含敏感词", promptEn=prompt, bannedWord=word)
        with self._lock:
            if self.queue_full > 0:
                self.queue_full -= 1
                return self._answer(23, "队列已满，请稍后尝试", numberOfQueues=10)
        images: list[bytes] = []
        if base64_image is not None:
            images.append(base64.b64decode(str(base64_image).split(",", 1)[1]))
        for word in prompt.split():
            if not word.startswith(("https://", "http://")):
                break  # image prompts come first
            if self.fetch_inputs:
                try:
                    images.append(fetch_input(word, allow_http=self.allow_http_inputs))
                except ValueError:
                    return self._answer(4, "图片链接无法访问")
        task = self._new_task("IMAGINE", prompt, body)
        task.images = images
        return self._answer(1, "提交成功", task.id)

    def _change(self, request: FakeRequest) -> Reply:
        body = request.json() or {}
        parent = self.tasks.get(str(body.get("taskId") or ""))
        if not body.get("taskId"):
            return self._answer(4, "taskId不能为空")
        action = body.get("action")
        if action not in ("UPSCALE", "VARIATION", "REROLL"):
            return self._answer(4, "action参数错误")
        if parent is None:
            return self._answer(3, "关联任务不存在或已失效")
        if parent.state.get("status") != "SUCCESS":
            return self._answer(4, "关联任务状态错误")
        if action != "REROLL" and body.get("index") not in (1, 2, 3, 4):
            return self._answer(4, "index参数错误")
        task = self._new_task(action, parent.prompt, body)
        return self._answer(1, "提交成功", task.id)

    def _action(self, request: FakeRequest) -> Reply:
        body = request.json() or {}
        parent = self.tasks.get(str(body.get("taskId") or ""))
        if parent is None:
            return self._answer(3, "关联任务不存在或已失效")
        buttons = [b["customId"] for b in parent.state.get("buttons", [])]
        if body.get("customId") not in buttons:
            return self._answer(4, "customId参数错误")
        action = "UPSCALE" if "upsample" in body["customId"] else "VARIATION"
        task = self._new_task(action, parent.prompt, body)
        return self._answer(1, "提交成功", task.id)

    def _fetch(self, request: FakeRequest) -> Reply:
        task = self.tasks.get(request.params["id"])
        if task is None:
            return Reply(status=200, body=b"")  # Spring's answer for a null task
        with self._lock:
            step = dict(task.plan[min(task.fetches, len(task.plan) - 1)])
            task.fetches += 1
        if step["status"] == "SUCCESS":
            if "[fail]" in task.prompt:
                step = {"status": "FAILURE", "progress": "", "failReason": "Midjourney job failed: invalid parameter --v 99"}
            elif "[moderated]" in task.prompt:
                step = {"status": "FAILURE", "progress": "", "failReason": MODERATOR_MESSAGE}
        answer: dict[str, Any] = {
            "id": task.id,
            "action": task.action,
            "prompt": task.prompt,
            "promptEn": task.prompt,
            "description": f"/imagine {task.prompt}",
            "state": None,
            "submitTime": 1732500000000,
            "startTime": 1732500001000,
            "finishTime": None,
            "imageUrl": None,
            "failReason": None,
            "properties": {"finalPrompt": f"{task.prompt} --v 6.1"},
            **step,
        }
        if step["status"] == "SUCCESS":
            answer["imageUrl"] = f"{self.server.url}/attachments/{task.id}.png"
            answer["finishTime"] = 1732500042000
            if task.action in ("IMAGINE", "VARIATION", "REROLL"):
                answer["buttons"] = [
                    {"customId": f"MJ::JOB::upsample::{i}::{task.id}", "emoji": "", "label": f"U{i}", "type": 2, "style": 2}
                    for i in range(1, 5)
                ] + [
                    {"customId": f"MJ::JOB::variation::{i}::{task.id}", "emoji": "", "label": f"V{i}", "type": 2, "style": 2}
                    for i in range(1, 5)
                ]
        task.state = answer
        return Reply(body=json.dumps(answer).encode(), headers={"Content-Type": "application/json"})

    def _attachment(self, request: FakeRequest) -> Reply:
        task_id = request.params["name"].rsplit(".", 1)[0]
        task = self.tasks.get(task_id)
        if task is None or task.state.get("status") != "SUCCESS":
            return Reply(status=404, body=b"")
        side = 128 if task.action == "UPSCALE" else 256
        return Reply(body=_png(side, int(task_id)), headers={"Content-Type": "image/png"})
