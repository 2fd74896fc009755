"""Midjourney through a self-hosted midjourney-proxy (the "MJ-Proxy" task API).

Midjourney has no public API of its own. midjourney-proxy (novicezk, open
source; copied by many relays) drives a Midjourney account over Discord and
offers a small task API, which this adapter speaks:

- ``POST {base}/mj/submit/imagine`` ``{prompt, base64?}`` answers HTTP 200 with
  ``{code, description, result: <task id>, properties}``. ``code`` 1 is
  accepted, 21 "already exists" and 22 "queued" also carry a task id; any other
  code is an error although the status is 200 (23 queue full, 24 banned
  prompt, 4 validation, 3 not found, 9 failure; relays use 25 for balance).
- ``GET {base}/mj/task/{id}/fetch`` returns the task: ``status`` NOT_START,
  SUBMITTED, IN_PROGRESS, SUCCESS or FAILURE (relays add MODAL and CANCEL),
  ``progress`` as a string like "45%", ``imageUrl``, ``failReason``, ``buttons``.
- Follow-ups on a finished grid: ``POST /mj/submit/change {taskId, action:
  UPSCALE|VARIATION|REROLL, index: 1..4}`` (open-source proxy) or ``POST
  /mj/submit/action {taskId, customId}`` (plus version and relays, with a
  ``customId`` from the parent's ``buttons``).

Auth is the ``mj-api-secret`` header; a wrong one gets a bare HTTP 403.
``MIDJOURNEY_BASE_URL`` is the proxy's address (``http://host:8080`` or with the
``/mj`` context path already on it) and ``MIDJOURNEY_API_SECRET`` the secret
(``MJ_API_SECRET`` is accepted too); both are required. The proxy has no cancel
call. Midjourney bills GPU time on the account's subscription, so there is no
per-image price: costs are reported as 0 with a note.

Midjourney's own parameters ride in the prompt: aspect_ratio becomes ``--ar``,
negative_prompt ``--no``, seed ``--seed``, quality ``--q`` and style ``--style``.
``count`` > 1 submits that many imagine tasks in one job (one 2x2 grid each).

An input image is an image prompt: Midjourney takes image prompts as URLs at
the front of the prompt, and the proxy also takes one as a ``base64`` data
URI. The caller's https URL goes in the prompt; an uploaded asset goes there
as a presigned URL of the stored file when the storage signs URLs (S3), else
as a data URI (at most 10 MiB, or re-encoded to fit with ``provider_options
{"fit_input": true}``); inline bytes go as a data URI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers import inputs
from providers.base import (
    JobContext,
    Output,
    PollResult,
    ProgressInfo,
    Provider,
    VendorHandle,
    VendorState,
    check_limits,
    make_cost,
    provider_options,
)
from providers.errors import (
    ContentRejected,
    FieldViolation,
    InvalidArgument,
    MediagenError,
    ProviderBadResponse,
    ProviderError,
    ProviderInvalidRequest,
    ProviderJobFailed,
    ProviderOutOfCredit,
    ProviderRateLimited,
    ProviderUnavailable,
)
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env
from providers.inputs import FIT_OPTION, InputMedia, fit_option_problems, wants_fit
from providers.retry import RetryPolicy
from providers.secrets import env_secret

DOCUMENTATION_URI = "https://github.com/novicezk/midjourney-proxy/blob/main/docs/api.md"
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
MODEL = "midjourney"
#: Retries of a submit the proxy refused with "queue full" (code 23), and of polls.
RETRY = RetryPolicy(max_attempts=4)
#: How long to wait after "queue full": the proxy gives no Retry-After.
QUEUE_FULL_RETRY_AFTER = 10.0

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21", "5:4", "4:5")
QUALITIES = (".25", ".5", "1", "2", "4")
MAX_COUNT = 4
MAX_PROMPT = 4000
MAX_INPUT_BYTES = 10 * 1024 * 1024
MAX_DATA_URI_CHARS = len("data:image/jpeg;base64,") + 4 * ((MAX_INPUT_BYTES + 2) // 3)
ACTIONS = ("UPSCALE", "VARIATION", "REROLL")
OPTIONS = ("action", "index", "task_id", "custom_id", "bot_type", FIT_OPTION)
BOT_TYPES = ("MID_JOURNEY", "NIJI_JOURNEY")

#: Submit codes that carry a task id to follow.
_ACCEPTED = {1, 21, 22}
_QUEUED_STATES = {"NOT_START", "SUBMITTED"}
_MODERATION = re.compile(
    r"banned|moderat|community (?:standards|guidelines)|against our|sensitive word", re.IGNORECASE
)
_STYLE = re.compile(r"^[A-Za-z0-9]+(?:[_.-][A-Za-z0-9]+)*$")
_IMAGE_TYPES = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _classify_hook(response: httpx.Response, body: Any) -> MediagenError | None:
    """A submit answer's ``code`` other than accepted is an error, though HTTP says 200."""
    if response.status_code != 200 or not isinstance(body, dict) or "code" not in body:
        return None
    code = body.get("code")
    if not isinstance(code, int) or code in _ACCEPTED:
        return None
    description = str(body.get("description") or "").strip()[:300]
    properties = dict(body["properties"]) if isinstance(body.get("properties"), dict) else {}
    text = f"midjourney-proxy refused the task (code {code}{': ' + description if description else ''})"
    metadata = {"vendorCode": str(code)}
    if code == 24:
        banned = properties.get("bannedWord")
        if banned:
            metadata["bannedWord"] = str(banned)[:100]
        return ContentRejected(text + " — the prompt holds a banned word", metadata=metadata)
    if code == 23:
        return ProviderRateLimited(text + " — its queue is full", retry_after=QUEUE_FULL_RETRY_AFTER, metadata=metadata)
    if code == 25:
        return ProviderOutOfCredit(text, metadata=metadata)
    if code in (3, 4):
        return ProviderInvalidRequest(text, metadata=metadata)
    if code == 9:
        return ProviderUnavailable(text, metadata=metadata, retryable=False)
    return ProviderError(text, metadata=metadata, retryable=False)


def _content_type(url: str) -> str:
    path = httpx.URL(url).path.lower() if url else ""
    for ext, content_type in _IMAGE_TYPES.items():
        if path.endswith(ext):
            return content_type
    return "image/png"


def _progress(value: Any) -> float | None:
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$", str(value or ""))
    if not match:
        return None
    return min(max(float(match.group(1)) / 100.0, 0.0), 1.0)


class Midjourney(Provider):
    """Midjourney via a self-hosted midjourney-proxy."""

    name = "midjourney"
    display_name = "Midjourney (via midjourney-proxy)"
    media_type = common_pb2.MEDIA_TYPE_IMAGE
    credential_env = ("MIDJOURNEY_API_SECRET", "MJ_API_SECRET")
    preference = 40

    def __init__(self, settings) -> None:
        self.secret, _ = env_secret(*self.credential_env)
        self.base_url = os.environ.get("MIDJOURNEY_BASE_URL", "").strip()
        self.max_output_bytes = int(settings.max_output_bytes)
        base = base_url_from_env("MIDJOURNEY", DEFAULT_BASE_URL)
        # The proxy serves under the /mj context path; accept a base URL with or without it.
        self._prefix = "" if httpx.URL(base).path.rstrip("/").endswith("/mj") else "mj/"
        allow_private = bool(settings.allow_private_urls)
        self.http = VendorHTTP(
            self.name,
            base_url=base,
            headers={"mj-api-secret": self.secret} if self.secret else {},
            retry=RETRY,
            classify_hook=_classify_hook,
            url_policy=UrlPolicy(allow_http=allow_private, allow_private=allow_private),
        )
        self.retry = RETRY

    # --- catalog --------------------------------------------------------------

    def _missing(self) -> list[str]:
        missing = []
        if not self.base_url:
            missing.append("MIDJOURNEY_BASE_URL")
        if not self.secret:
            missing.append("MIDJOURNEY_API_SECRET")
        return missing

    def describe(self) -> catalog_pb2.Provider:
        capabilities = ["text_to_image", "image_prompt", "upscale", "variation"]
        missing = self._missing()
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(
                aspect_ratios=list(ASPECT_RATIOS),
                max_count=MAX_COUNT,
                max_prompt_characters=MAX_PROMPT,
                max_input_bytes=MAX_INPUT_BYTES,
                input_forms=["url", "data_uri"],
            ),
            prices=[
                catalog_pb2.Price(
                    unit=common_pb2.PRICE_UNIT_IMAGE,
                    unit_price_micros=0,
                    note="no per-image price: the proxy spends GPU time of your own Midjourney "
                    "subscription (costs are reported as 0)",
                )
            ],
            models=[
                catalog_pb2.Model(
                    name=MODEL,
                    default=True,
                    capabilities=capabilities,
                )
            ],
            configured=not missing,
            not_configured_reason="" if not missing else "set " + " and ".join(missing),
            documentation_uri=DOCUMENTATION_URI,
            notes=[
                "one imagine task makes one 2x2 grid image; count N submits N tasks in one job",
                "aspect_ratio, negative_prompt, seed, quality (.25|.5|1|2|4) and style become "
                "--ar, --no, --seed, --q and --style in the prompt; --v and other flags may be "
                "written in the prompt",
                "input_image: an https uri, or an asset on S3 storage (presigned URL), is put in front "
                "of the prompt; inline data, or an asset on local storage, is sent as the base64 image "
                "prompt (at most 10 MiB)",
                'provider_options: {"action": "UPSCALE"|"VARIATION"|"REROLL", "index": 1-4, '
                '"task_id": <grid task>} (POST /mj/submit/change) or {"custom_id": <button '
                'customId>, "task_id": ...} (POST /mj/submit/action, plus/relays); '
                '"bot_type": MID_JOURNEY|NIJI_JOURNEY (relays)',
                "artifact metadata carries task_id and the grid's buttons for follow-ups",
                "the proxy has no cancel call: cancelling stops polling only",
            ],
        )

    # --- validation -------------------------------------------------------------

    def validate(self, request: Message) -> None:
        out = check_limits(self.describe().limits, request)
        prompt = request.prompt
        if request.width or request.height:
            out.append(FieldViolation("width", "Midjourney takes an aspect_ratio, not a size", "UNSUPPORTED"))
        if request.format:
            out.append(FieldViolation("format", "Midjourney chooses the format (png or webp)", "UNSUPPORTED"))
        for field_name, flag, given in (
            ("aspect_ratio", "--ar", bool(request.aspect_ratio)),
            ("negative_prompt", "--no", bool(request.negative_prompt)),
            ("seed", "--seed", request.HasField("seed")),
            ("quality", "--q", bool(request.quality)),
            ("style", "--style", bool(request.style)),
        ):
            if given and re.search(rf"(?:^|\s){re.escape(flag)}(?:\s|$)", prompt):
                out.append(FieldViolation(field_name, f"the prompt already sets {flag}", "CONFLICT"))
        if request.HasField("seed") and not 0 <= request.seed <= 4294967295:
            out.append(FieldViolation("seed", "must be from 0 to 4294967295", "OUT_OF_RANGE"))
        if request.quality and request.quality not in QUALITIES:
            out.append(FieldViolation("quality", "must be one of " + ", ".join(QUALITIES), "UNSUPPORTED_VALUE"))
        if request.style and not _STYLE.match(request.style):
            out.append(FieldViolation("style", "must be a plain word such as raw", "INVALID_FORMAT"))
        if "--" in request.negative_prompt:
            out.append(FieldViolation("negative_prompt", "must not contain --", "INVALID_FORMAT"))
        out += self._option_problems(provider_options(request), request)
        if out:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in out),
                metadata={"provider": self.name, "field": out[0].field},
                field_violations=out,
            )

    def _option_problems(self, options: dict[str, Any], request: Message) -> list[FieldViolation]:
        out: list[FieldViolation] = []

        def bad(name: str, text: str, reason: str = "UNSUPPORTED_VALUE") -> None:
            out.append(FieldViolation(f"provider_options.{name}", text, reason))

        for name in options:
            if name not in OPTIONS:
                bad(name, "unknown; accepted: " + ", ".join(OPTIONS), "UNKNOWN_OPTION")
        action = options.get("action")
        custom_id = options.get("custom_id")
        task_id = options.get("task_id")
        if action is not None and custom_id is not None:
            bad("custom_id", "give either action or custom_id", "CONFLICT")
        if action is not None and action not in ACTIONS:
            bad("action", "must be one of " + ", ".join(ACTIONS))
        if custom_id is not None and (not isinstance(custom_id, str) or not custom_id):
            bad("custom_id", "must be a button's customId")
        follow_up = action is not None or custom_id is not None
        if follow_up and (not isinstance(task_id, str) or not task_id):
            bad("task_id", "the task id of the finished grid is required with action or custom_id", "REQUIRED")
        if task_id is not None and not follow_up:
            bad("task_id", "only used with action or custom_id")
        index = options.get("index")
        if action in ("UPSCALE", "VARIATION"):
            if not isinstance(index, (int, float)) or index != int(index) or not 1 <= index <= 4:
                bad("index", "must be 1, 2, 3 or 4 (the image of the grid)", "OUT_OF_RANGE")
        elif index is not None:
            bad("index", "only used with action UPSCALE or VARIATION")
        if "bot_type" in options and options["bot_type"] not in BOT_TYPES:
            bad("bot_type", "must be MID_JOURNEY or NIJI_JOURNEY")
        if follow_up and (request.count or 1) != 1:
            out.append(FieldViolation("count", "must be 1 for an upscale or variation", "OUT_OF_RANGE"))
        if follow_up and request.HasField("input_image"):
            out.append(FieldViolation("input_image", "not used by an upscale or variation", "UNSUPPORTED"))
        out += fit_option_problems(options)
        return out

    # --- cost ---------------------------------------------------------------

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        return make_cost(request.count or 1, common_pb2.PRICE_UNIT_IMAGE, 0, common_pb2.COST_BASIS_ESTIMATED)

    # --- the job ------------------------------------------------------------

    def _path(self, rest: str) -> str:
        return self._prefix + rest

    def _final_prompt(self, request: Message, image_url: str = "") -> str:
        parts = []
        source = request.input_image.WhichOneof("source") if request.HasField("input_image") else None
        if source == "uri":
            parts.append(request.input_image.uri)
        elif image_url:
            parts.append(image_url)
        parts.append(request.prompt.strip())
        if request.aspect_ratio:
            parts.append(f"--ar {request.aspect_ratio}")
        if request.negative_prompt:
            parts.append(f"--no {request.negative_prompt.strip()}")
        if request.HasField("seed"):
            parts.append(f"--seed {request.seed}")
        if request.quality:
            parts.append(f"--q {request.quality}")
        if request.style:
            parts.append(f"--style {request.style}")
        return " ".join(parts)

    def _submission(self, request: Message, image_url: str = "", data_uri: str = "") -> tuple[str, dict[str, Any]]:
        options = provider_options(request)
        extra = {"botType": options["bot_type"]} if "bot_type" in options else {}
        if "custom_id" in options:
            return self._path("submit/action"), {"taskId": options["task_id"], "customId": options["custom_id"], **extra}
        if "action" in options:
            body: dict[str, Any] = {"taskId": options["task_id"], "action": options["action"], **extra}
            if options["action"] != "REROLL":
                body["index"] = int(options["index"])
            return self._path("submit/change"), body
        body = {"prompt": self._final_prompt(request, image_url), **extra}
        if data_uri:
            body["base64"] = data_uri
        return self._path("submit/imagine"), body

    def validate_input(self, request: Message, media: InputMedia) -> None:
        if media.source == "uri" or media.may_have_public_url:
            return  # the image goes by URL
        if media.content_type not in _IMAGE_TYPES.values():
            raise InvalidArgument.field(media.field, "must be a PNG, JPEG or WebP image", "UNSUPPORTED_VALUE")
        if media.size is not None and media.size > MAX_INPUT_BYTES and not wants_fit(provider_options(request)):
            raise InvalidArgument.field(
                media.field,
                f"at most {MAX_INPUT_BYTES} bytes as a base64 image prompt ({media.size} given); with S3 "
                'storage assets go by URL, or set provider_options {"fit_input": true} to re-encode it',
                "TOO_LARGE",
            )

    async def _image_prompt(self, request: Message, ctx: JobContext) -> tuple[str, str]:
        """(URL for the prompt, base64 data URI): one of them for inline bytes or an asset."""
        media = inputs.from_request(request, ctx)
        if media is None or media.source == "uri":
            return "", ""
        url = await media.public_url(inputs.url_ttl(ctx))
        if url:
            return url, ""
        if media.size is not None and media.size > MAX_INPUT_BYTES and wants_fit(provider_options(request)):
            media = await inputs.fit_input(media, types=["image/jpeg", "image/png"], max_bytes=MAX_INPUT_BYTES)
        return "", await media.as_data_uri(MAX_DATA_URI_CHARS)

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        follow_up = bool({"action", "custom_id"} & set(provider_options(request)))
        image_url, data_uri = ("", "") if follow_up else await self._image_prompt(request, ctx)
        path, body = self._submission(request, image_url, data_uri)
        tasks: list[str] = []
        for _ in range(request.count or 1):

            async def attempt() -> Any:
                answer, _ = await self.http.request_json(
                    "POST", path, json=body, idempotent=False, ctx=ctx, model=model
                )
                return answer

            try:
                # "Queue full" (code 23) is a refusal before any work: safe to send again.
                answer = await self.retry.run(
                    attempt, deadline=ctx.deadline, retry_if=lambda e: isinstance(e, ProviderRateLimited)
                )
            except MediagenError as error:
                if tasks:  # the earlier grids of this job were accepted and will be made
                    error.metadata["acceptedTaskIds"] = ",".join(tasks)
                raise
            task_id = answer.get("result") if isinstance(answer, dict) else None
            if not isinstance(task_id, (str, int)) or not str(task_id):
                raise ProviderBadResponse(
                    "midjourney-proxy accepted the task without a task id" + _earlier(tasks),
                    provider=self.name,
                    model=model,
                )
            tasks.append(str(task_id))
        action = body.get("action") or ("ACTION" if "customId" in body else "IMAGINE")
        return VendorHandle(vendor_job_id=",".join(tasks), data={"tasks": tasks, "action": action})

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        tasks = handle.data.get("tasks") or [handle.vendor_job_id]
        fetched = [await self._fetch(task_id, ctx) for task_id in tasks]
        statuses = [str(task.get("status") or "") for task in fetched]
        for task_id, task, status in zip(tasks, fetched, statuses, strict=True):
            if status == "FAILURE":
                return PollResult(VendorState.FAILED, ProgressInfo(vendor_status=status), error=self._failure(task_id, task))
            if status == "MODAL":
                return PollResult(
                    VendorState.FAILED,
                    ProgressInfo(vendor_status=status),
                    error=ProviderJobFailed(
                        f"midjourney task {task_id} waits for a modal input (POST /mj/submit/modal), "
                        "which mediagen does not send",
                        provider=self.name,
                        model=MODEL,
                        metadata={"vendorStatus": status, "vendorJobId": task_id},
                    ),
                )
            if status == "CANCEL":
                return PollResult(VendorState.CANCELLED, ProgressInfo(vendor_status=status))
        vendor_status = ",".join(statuses)
        if all(status == "SUCCESS" for status in statuses):
            outputs = [self._output(task_id, task) for task_id, task in zip(tasks, fetched, strict=True)]
            return PollResult(VendorState.SUCCEEDED, ProgressInfo(fraction=1.0, vendor_status=vendor_status), outputs=outputs)
        fractions = [1.0 if s == "SUCCESS" else (_progress(t.get("progress")) or 0.0) for s, t in zip(statuses, fetched, strict=True)]
        queued = all(status in _QUEUED_STATES for status in statuses)
        return PollResult(
            VendorState.QUEUED if queued else VendorState.RUNNING,
            ProgressInfo(fraction=sum(fractions) / len(fractions), vendor_status=vendor_status),
        )

    async def _fetch(self, task_id: str, ctx: JobContext) -> dict[str, Any]:
        task, _ = await self.http.request_json(
            "GET", self._path(f"task/{task_id}/fetch"), idempotent=True, ctx=ctx, model=MODEL
        )
        if task is None:
            # The open-source proxy answers an unknown id with an empty 200.
            raise ProviderJobFailed(
                f"midjourney-proxy does not know task {task_id} (restarted without a task store?)",
                provider=self.name,
                model=MODEL,
                metadata={"vendorJobId": task_id},
            )
        if not isinstance(task, dict):
            raise ProviderBadResponse(
                f"midjourney-proxy answered task {task_id} with something that is not an object",
                provider=self.name,
                model=MODEL,
            )
        return task

    def _failure(self, task_id: str, task: dict[str, Any]) -> ProviderError:
        reason = str(task.get("failReason") or "no reason given").strip()[:500]
        metadata = {"vendorStatus": "FAILURE", "vendorJobId": task_id}
        text = f"midjourney task {task_id} failed: {reason}"
        if _MODERATION.search(reason):
            return ContentRejected(text, provider=self.name, model=MODEL, metadata=metadata)
        return ProviderJobFailed(text, provider=self.name, model=MODEL, metadata=metadata)

    def _output(self, task_id: str, task: dict[str, Any]) -> Output:
        url = task.get("imageUrl")
        if not isinstance(url, str) or not url:
            raise ProviderBadResponse(
                f"midjourney task {task_id} succeeded without an imageUrl", provider=self.name, model=MODEL
            )
        metadata = {"task_id": task_id}
        if task.get("action"):
            metadata["action"] = str(task["action"])
        properties = dict(task["properties"]) if isinstance(task.get("properties"), dict) else {}
        final_prompt = properties.get("finalPrompt") or task.get("promptEn")
        if final_prompt:
            metadata["final_prompt"] = str(final_prompt)[:4000]
        buttons = [
            {"customId": b.get("customId"), "label": b.get("label") or b.get("emoji") or ""}
            for b in task.get("buttons") or []
            if isinstance(b, dict) and b.get("customId")
        ]
        if buttons:
            metadata["buttons"] = json.dumps(buttons, ensure_ascii=False)[:4000]
        return Output(url=url, content_type=_content_type(url), metadata=metadata)

    @contextlib.asynccontextmanager
    async def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.http.open_stream(output.url, ctx=ctx, max_bytes=self.max_output_bytes, model=MODEL) as chunks:
            yield chunks

    async def aclose(self) -> None:
        await self.http.aclose()


def _earlier(tasks: list[str]) -> str:
    return f" (tasks already accepted in this job: {', '.join(tasks)})" if tasks else ""
