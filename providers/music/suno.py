"""Suno through an API gateway (sunoapi.org, kie.ai and others with the same shape).

Suno publishes **no first-party API** (vendors/audio.md §7): the web app's
internal endpoints need session cookies. This adapter therefore speaks the
widely copied gateway contract documented by sunoapi.org (kie.ai serves the
identical API), and it is only configured when the operator names a gateway:

- ``SUNO_BASE_URL`` (required, e.g. ``https://api.sunoapi.org``) and
  ``SUNO_API_KEY`` (sent as ``Authorization: Bearer``).
- ``SUNO_CALLBACK_URL`` (optional): sent as ``callBackUrl``. mediagen polls
  and never needs the callback; set it for gateways that insist on one.
- ``SUNO_CREDIT_PRICE_USD`` (optional): what one gateway credit costs you.

The calls:

- ``POST /api/v1/generate`` → ``{"code": 200, "msg": "success", "data": {"taskId"}}``.
  Body: ``customMode``, ``instrumental``, ``model``, ``prompt``, and in custom
  mode ``style`` and ``title``; optional ``negativeTags``, ``vocalGender``,
  ``styleWeight``, ``weirdnessConstraint``, ``audioWeight``, ``personaId``.
- ``GET /api/v1/generate/record-info?taskId=…`` → ``data.status`` walks
  ``PENDING → TEXT_SUCCESS → FIRST_SUCCESS → SUCCESS``; failures are
  ``CREATE_TASK_FAILED``, ``GENERATE_AUDIO_FAILED``, ``CALLBACK_EXCEPTION`` and
  ``SENSITIVE_WORD_ERROR`` (moderation). ``data.response.sunoData[]`` lists the
  clips (two per task) with ``id``, ``audioUrl``, ``title``, ``tags``, ``duration``...
- Errors come as ``{code, msg}``, in the HTTP status or only in the body's
  ``code`` (both are checked). The gateway's own codes: 400/405/413 bad
  request or text too long, 401 auth, **429 insufficient credits** (a rate
  limit only when the answer also carries Retry-After), 430 too frequent,
  455 maintenance, 5xx. The gateways have no cancel call.

How the common request maps (decisions):

- **Lyrics** switch on custom mode: they are sent as ``prompt`` (sung as
  written) and need ``instrumental`` false. ``style`` is then built from
  ``provider_options.style``, ``prompt``, ``genre``, ``mood``, ``theme`` and
  ``tempo_bpm`` (as "N bpm"); ``title`` is ``provider_options.title``, else the
  first lyric line. ``provider_options.style``/``title`` also select custom
  mode for instrumentals.
- **Without lyrics** (non-custom mode) the description ``prompt, genre, mood,
  theme, N bpm`` goes in ``prompt`` (at most 500 characters) and Suno writes
  the lyrics itself unless ``instrumental`` is set.
- There is no length parameter (Suno decides, up to minutes): a
  ``duration_seconds`` is refused. Output is MP3.
- Each task yields two clips. The first clip with an ``audioUrl`` becomes the
  artifact; the other clips' ids, titles and URLs are kept in the artifact
  metadata (``other_clips``, JSON).
- ``CALLBACK_EXCEPTION`` with finished clips counts as success (the music
  exists; only the gateway's callback failed).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers.base import (
    JobContext,
    Output,
    PollResult,
    ProgressInfo,
    Provider,
    VendorHandle,
    VendorState,
    format_name,
    make_cost,
    provider_options,
    usd,
)
from providers.errors import (
    ContentRejected,
    FieldViolation,
    InvalidArgument,
    MediagenError,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderInvalidRequest,
    ProviderJobFailed,
    ProviderOutOfCredit,
    ProviderRateLimited,
    ProviderUnavailable,
)
from providers.http import UrlPolicy, VendorHTTP, vendor_message
from providers.retry import retry_after_from_headers
from providers.secrets import env_secret

log = structlog.get_logger("mediagen.provider.suno")

GENERATE_PATH = "api/v1/generate"
RECORD_INFO_PATH = "api/v1/generate/record-info"
DOCUMENTATION_URI = "https://docs.sunoapi.org/suno-api/generate-music"
#: Used only so that an unconfigured provider can still be described.
_UNSET_BASE_URL = "https://suno-gateway.invalid"

NON_CUSTOM_PROMPT_CHARACTERS = 500
CREDITS_PER_GENERATION = 12.0
DEFAULT_MODEL = "V4_5ALL"


@dataclass(frozen=True)
class ModelLimits:
    lyrics: int
    style: int
    title: int
    retired: str = ""


MODELS: dict[str, ModelLimits] = {
    "V4": ModelLimits(lyrics=3000, style=200, title=80),
    "V4_5": ModelLimits(lyrics=5000, style=1000, title=100),
    "V4_5PLUS": ModelLimits(lyrics=5000, style=1000, title=100),
    "V4_5ALL": ModelLimits(lyrics=5000, style=1000, title=100),
    "V5": ModelLimits(lyrics=5000, style=1000, title=100),
    "V5_5": ModelLimits(lyrics=5000, style=1000, title=100),
    "V3_5": ModelLimits(
        lyrics=3000,
        style=200,
        title=80,
        retired="older gateway docs only; no longer in sunoapi.org's model list",
    ),
}

_PROGRESS = {"PENDING": 0.0, "TEXT_SUCCESS": 0.33, "FIRST_SUCCESS": 0.66}
_FAILED = ("CREATE_TASK_FAILED", "GENERATE_AUDIO_FAILED")
_MODERATED = "SENSITIVE_WORD_ERROR"
_CALLBACK_FAILED = "CALLBACK_EXCEPTION"

#: provider_options the gateway takes as they are (name → check).
_NUMBER_OPTIONS = ("styleWeight", "weirdnessConstraint", "audioWeight")
_TEXT_OPTIONS = ("style", "title", "negativeTags", "personaId")
_CUSTOM_ONLY_OPTIONS = ("vocalGender", "personaId")
OPTIONS = ("customMode", *_TEXT_OPTIONS, "vocalGender", *_NUMBER_OPTIONS)
_SECTION_TAG = re.compile(r"^\s*\[[^\]]*\]\s*")


def _price_from_env(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        log.warning("ignoring an unreadable price", variable=name)
        return 0.0
    return value


def _gateway_error(
    status: int, message: str, method: str, retry_after: float | None
) -> MediagenError | None:
    text = f"suno gateway answered code {status}" + (f": {message}" if message else "")
    if "sensitive" in message.lower():
        return ContentRejected(text)
    if status in (400, 405, 413, 422):
        return ProviderInvalidRequest(text)
    if status == 404:
        return ProviderJobFailed(text) if method == "GET" else ProviderInvalidRequest(text)
    if status in (401, 403):
        return ProviderAuthFailed(text)
    if status == 402:
        return ProviderOutOfCredit(text)
    if status == 429:
        # sunoapi.org: "insufficient credits". A Retry-After says a proxy is rate limiting.
        if retry_after is not None:
            return ProviderRateLimited(text, retry_after=retry_after)
        return ProviderOutOfCredit(text)
    if status == 430:
        return ProviderRateLimited(text, retry_after=retry_after)
    if status == 455 or status >= 500:
        return ProviderUnavailable(text, retry_after=retry_after)
    return None


def _classify(response: httpx.Response, body: Any) -> MediagenError | None:
    """The gateway's ``{code, msg}`` envelope, whether the HTTP status agrees or not.

    Only for the gateway's own API: output files served from the same host keep
    the shared download rules (404 = output gone).
    """
    if "/api/v1/" not in response.request.url.path:
        return None
    http_status = response.status_code
    code = body.get("code") if isinstance(body, Mapping) else None
    if isinstance(code, bool) or not isinstance(code, int):
        code = None
    status = code if code is not None and code != 200 else http_status
    if 200 <= status < 300:
        return None
    retry_after = (
        retry_after_from_headers(response.headers) if max(status, http_status) >= 429 else None
    )
    message = vendor_message(body) if body is not None else ""
    method = response.request.method
    return _gateway_error(status, " ".join(message.split())[:500], method, retry_after)


def _title_from_lyrics(lyrics: str, limit: int) -> str:
    for line in lyrics.splitlines():
        line = _SECTION_TAG.sub("", line).strip()
        if line:
            return line[:limit].strip()
    return ""


class SunoProvider(Provider):
    name = "suno"
    display_name = "Suno (through an API gateway)"
    media_type = common_pb2.MEDIA_TYPE_MUSIC
    credential_env = ("SUNO_API_KEY",)
    preference = 30

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        self.base_url = os.environ.get("SUNO_BASE_URL", "").strip()
        self.api_key, _ = env_secret("SUNO_API_KEY")
        self.callback_url = os.environ.get("SUNO_CALLBACK_URL", "").strip()
        self.credit_price = _price_from_env("SUNO_CREDIT_PRICE_USD")
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.http = VendorHTTP(
            self.name,
            base_url=self.base_url or _UNSET_BASE_URL,
            headers=headers,
            classify_hook=_classify,
            url_policy=UrlPolicy(
                allow_http=settings.allow_private_urls, allow_private=settings.allow_private_urls
            ),
        )

    # --- catalog ----------------------------------------------------------------

    def _not_configured_reason(self) -> str:
        if not self.base_url:
            need = "SUNO_BASE_URL and SUNO_API_KEY" if not self.api_key else "SUNO_BASE_URL"
            return (
                f"set {need}: Suno has no first-party public API, so mediagen needs a Suno API "
                "gateway (sunoapi.org-compatible, e.g. https://api.sunoapi.org)"
            )
        if not self.api_key:
            return "set SUNO_API_KEY (the key of the Suno API gateway at SUNO_BASE_URL)"
        return ""

    def describe(self) -> catalog_pb2.Provider:
        reason = self._not_configured_reason()
        capabilities = ["text_to_music", "lyrics", "instrumental", "vocals"]
        models = [
            catalog_pb2.Model(
                name=name,
                default=name == DEFAULT_MODEL,
                retired=bool(limits.retired),
                retired_note=limits.retired,
                capabilities=capabilities,
            )
            for name, limits in MODELS.items()
        ]
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(formats=["mp3"]),
            prices=[
                catalog_pb2.Price(
                    unit=common_pb2.PRICE_UNIT_CREDIT,
                    unit_price_micros=usd(self.credit_price),
                    note=(
                        "set by the gateway: ~12 credits per generate call, two clips "
                        "(vendors/audio.md, low confidence); USD per credit from SUNO_CREDIT_PRICE_USD"
                        + ("" if self.credit_price else " (not set: shown as 0)")
                    ),
                )
            ],
            models=models,
            configured=not reason,
            not_configured_reason=reason,
            documentation_uri=DOCUMENTATION_URI,
            notes=[
                "Suno has no first-party public API: requests go to the gateway at SUNO_BASE_URL",
                "lyrics select custom mode: sung as written, with a style from provider_options.style, "
                "prompt, genre, mood, theme and tempo_bpm, and provider_options.title (else the "
                "first lyric line)",
                f"without lyrics: prompt, genre, mood, theme and tempo_bpm make one description of "
                f"at most {NON_CUSTOM_PROMPT_CHARACTERS} characters; Suno writes lyrics unless instrumental",
                "no duration: Suno decides the length (minutes); duration_seconds is refused",
                "two clips per task: the first is the artifact, the others are in its metadata "
                "(other_clips)",
                "provider_options: " + ", ".join(OPTIONS),
            ],
        )

    # --- request --------------------------------------------------------------------

    def validate(self, request: Message) -> None:
        super().validate(request)
        self._body(request, request.model or DEFAULT_MODEL)

    def _body(self, request: Message, model: str) -> dict[str, Any]:
        out: list[FieldViolation] = []
        options = provider_options(request)
        for key in options:
            if key not in OPTIONS:
                out.append(
                    FieldViolation(
                        f"provider_options.{key}",
                        "not a Suno gateway option; known: " + ", ".join(OPTIONS),
                        "UNSUPPORTED_VALUE",
                    )
                )
        limits = MODELS.get(model)
        if limits is None:
            out.append(
                FieldViolation("model", "must be one of " + ", ".join(MODELS), "UNSUPPORTED_VALUE")
            )
            limits = MODELS[DEFAULT_MODEL]
        if request.duration_seconds:
            out.append(
                FieldViolation(
                    "duration_seconds",
                    "Suno takes no length: the model decides it; leave duration_seconds at 0",
                    "UNSUPPORTED_FIELD",
                )
            )
        for name in _TEXT_OPTIONS:
            if name in options and not isinstance(options[name], str):
                out.append(
                    FieldViolation(f"provider_options.{name}", "must be a string", "INVALID_FORMAT")
                )
        for name in _NUMBER_OPTIONS:
            value = options.get(name)
            if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
                out.append(
                    FieldViolation(
                        f"provider_options.{name}", "must be a number from 0 to 1", "OUT_OF_RANGE"
                    )
                )
        if "vocalGender" in options and options["vocalGender"] not in ("m", "f"):
            out.append(
                FieldViolation(
                    "provider_options.vocalGender", 'must be "m" or "f"', "UNSUPPORTED_VALUE"
                )
            )
        if "customMode" in options and not isinstance(options["customMode"], bool):
            out.append(
                FieldViolation(
                    "provider_options.customMode", "must be true or false", "INVALID_FORMAT"
                )
            )

        lyrics = request.lyrics.strip()
        instrumental = request.instrumental
        tempo = f"{request.tempo_bpm:g} bpm" if request.HasField("tempo_bpm") else ""
        style_option = str(options["style"]) if isinstance(options.get("style"), str) else ""
        title_option = str(options["title"]) if isinstance(options.get("title"), str) else ""
        custom = (
            bool(lyrics)
            or bool(style_option)
            or bool(title_option)
            or options.get("customMode") is True
        )
        if options.get("customMode") is False and (lyrics or style_option or title_option):
            out.append(
                FieldViolation(
                    "provider_options.customMode",
                    "lyrics, provider_options.style and provider_options.title need custom mode",
                    "CONFLICT",
                )
            )

        body: dict[str, Any] = {"customMode": custom, "instrumental": instrumental, "model": model}
        if custom:
            if lyrics and instrumental:
                out.append(
                    FieldViolation(
                        "lyrics",
                        "an instrumental track has no lyrics; unset instrumental or lyrics",
                        "CONFLICT",
                    )
                )
            elif not instrumental and not lyrics:
                out.append(
                    FieldViolation(
                        "lyrics",
                        "required in custom mode unless instrumental (Suno sings them as written)",
                        "REQUIRED",
                    )
                )
            elif lyrics and len(lyrics) > limits.lyrics:
                out.append(
                    FieldViolation(
                        "lyrics", f"at most {limits.lyrics} characters for {model}", "TOO_LONG"
                    )
                )
            style = ", ".join(
                part.strip()
                for part in (
                    style_option,
                    request.prompt,
                    request.genre,
                    request.mood,
                    request.theme,
                    tempo,
                )
                if part.strip()
            )
            if not style:
                out.append(
                    FieldViolation(
                        "genre",
                        "Suno's custom mode needs a style: give genre, mood, prompt or provider_options.style",
                        "REQUIRED",
                    )
                )
            elif len(style) > limits.style:
                out.append(
                    FieldViolation(
                        "prompt",
                        f"the style made of provider_options.style, prompt, genre, mood, theme and tempo "
                        f"is {len(style)} characters; {model} takes at most {limits.style}",
                        "TOO_LONG",
                    )
                )
            title = (
                title_option.strip()
                or _title_from_lyrics(lyrics, limits.title)
                or (request.prompt.strip() or request.genre.strip() or "Untitled")[
                    : limits.title
                ].strip()
            )
            if len(title) > limits.title:
                out.append(
                    FieldViolation(
                        "provider_options.title",
                        f"at most {limits.title} characters for {model}",
                        "TOO_LONG",
                    )
                )
            if lyrics and not instrumental:
                body["prompt"] = lyrics
            body["style"] = style
            body["title"] = title
        else:
            for name in _CUSTOM_ONLY_OPTIONS:
                if name in options:
                    out.append(
                        FieldViolation(
                            f"provider_options.{name}",
                            "taken only in custom mode (give lyrics, provider_options.style or title)",
                            "UNSUPPORTED_FIELD",
                        )
                    )
            prompt = ", ".join(
                part.strip()
                for part in (request.prompt, request.genre, request.mood, request.theme, tempo)
                if part.strip()
            )
            if len(prompt) > NON_CUSTOM_PROMPT_CHARACTERS:
                out.append(
                    FieldViolation(
                        "prompt",
                        f"prompt, genre, mood, theme and tempo together make {len(prompt)} characters; "
                        f"Suno takes at most {NON_CUSTOM_PROMPT_CHARACTERS} without lyrics",
                        "TOO_LONG",
                    )
                )
            body["prompt"] = prompt
        for name in ("negativeTags", "vocalGender", "personaId", *_NUMBER_OPTIONS):
            if name in options:
                body[name] = options[name]
        fmt = format_name(request)
        if fmt and fmt != "mp3":
            out.append(
                FieldViolation("format", "Suno gateways deliver mp3 only", "UNSUPPORTED_VALUE")
            )
        if self.callback_url:
            body["callBackUrl"] = self.callback_url
        if out:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in out),
                metadata={"provider": self.name},
                field_violations=out,
            )
        return body

    # --- cost ------------------------------------------------------------------------------

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        return make_cost(
            CREDITS_PER_GENERATION,
            common_pb2.PRICE_UNIT_CREDIT,
            usd(self.credit_price),
            common_pb2.COST_BASIS_ESTIMATED,
        )

    # --- the job ------------------------------------------------------------------------------

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        model = model or DEFAULT_MODEL
        body = self._body(request, model)
        answer, response = await self.http.request_json(
            "POST", GENERATE_PATH, json=body, idempotent=False, ctx=ctx, model=model
        )
        data = answer.get("data") if isinstance(answer, Mapping) else None
        task_id = data.get("taskId") if isinstance(data, Mapping) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderBadResponse(
                "suno gateway answered without a taskId",
                provider=self.name,
                model=model,
                http_status=response.status_code,
            )
        return VendorHandle(vendor_job_id=task_id, data={"model": model})

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        model = handle.data.get("model", "")
        answer, response = await self.http.request_json(
            "GET",
            RECORD_INFO_PATH,
            params={"taskId": handle.vendor_job_id},
            idempotent=True,
            ctx=ctx,
            model=model,
        )
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(data, Mapping):
            raise ProviderBadResponse(
                "suno gateway answered record-info without data",
                provider=self.name,
                model=model,
                http_status=response.status_code,
            )
        status = str(data.get("status") or "").upper()
        clips = self._clips(data)
        failure_text = " ".join(
            str(data.get(k)) for k in ("errorCode", "errorMessage") if data.get(k) not in (None, "")
        )
        common = {"provider": self.name, "model": model, "metadata": {"vendorStatus": status}}
        if status == _MODERATED:
            return PollResult(
                VendorState.FAILED,
                error=ContentRejected(
                    f"suno refused the request for sensitive words ({failure_text or status})",
                    **common,
                ),
            )
        if status in _FAILED or (status == _CALLBACK_FAILED and not clips):
            return PollResult(
                VendorState.FAILED,
                error=ProviderJobFailed(
                    f"suno task {status}: {failure_text or 'no details'}", **common
                ),
            )
        if status in ("SUCCESS", _CALLBACK_FAILED) and clips:
            return PollResult(
                VendorState.SUCCEEDED,
                ProgressInfo(fraction=1.0, vendor_status=status),
                outputs=[self._output(handle, clips, model)],
            )
        if status == "SUCCESS":
            return PollResult(
                VendorState.RUNNING,
                ProgressInfo(
                    fraction=0.9, vendor_status=status, message="waiting for the download URL"
                ),
            )
        state = VendorState.QUEUED if status == "PENDING" else VendorState.RUNNING
        return PollResult(state, ProgressInfo(fraction=_PROGRESS.get(status), vendor_status=status))

    @staticmethod
    def _clips(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        response = data.get("response")
        clips = response.get("sunoData") if isinstance(response, Mapping) else None
        if not isinstance(clips, list):
            return []
        return [
            c
            for c in clips
            if isinstance(c, Mapping) and isinstance(c.get("audioUrl"), str) and c["audioUrl"]
        ]

    def _output(self, handle: VendorHandle, clips: list[Mapping[str, Any]], model: str) -> Output:
        chosen, others = clips[0], clips[1:]
        metadata = {"suno_task_id": handle.vendor_job_id, "clip_count": str(len(clips))}
        for key, name in (
            ("id", "clip_id"),
            ("title", "title"),
            ("tags", "tags"),
            ("modelName", "model_name"),
            ("duration", "duration"),
            ("imageUrl", "image_url"),
            ("streamAudioUrl", "stream_audio_url"),
            ("createTime", "create_time"),
        ):
            value = chosen.get(key)
            if value not in (None, ""):
                metadata[name] = str(value)
        prompt = chosen.get("prompt")
        if isinstance(prompt, str) and prompt:
            metadata["lyrics"] = prompt[:5000]
        if others:
            metadata["other_clips"] = json.dumps(
                [
                    {
                        "id": c.get("id"),
                        "title": c.get("title"),
                        "audio_url": c.get("audioUrl"),
                        "stream_audio_url": c.get("streamAudioUrl"),
                        "image_url": c.get("imageUrl"),
                        "duration": c.get("duration"),
                    }
                    for c in others
                ],
                separators=(",", ":"),
            )
        return Output(url=chosen["audioUrl"], content_type="audio/mpeg", metadata=metadata)

    @contextlib.asynccontextmanager
    async def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.http.open_stream(
            output.url, ctx=ctx, max_bytes=self.max_output_bytes, model=handle.data.get("model", "")
        ) as chunks:
            yield chunks

    async def aclose(self) -> None:
        await self.http.aclose()
