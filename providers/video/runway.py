"""Runway developer API (``api.dev.runwayml.com``): image-to-video and text-to-video.

The calls, as Runway documents them (JSON bodies in camelCase; every request
carries ``Authorization: Bearer key_…`` and ``X-Runway-Version: 2024-11-06``)::

    POST   /v1/image_to_video   {model, promptImage, ratio, duration, promptText?, seed?}  -> {"id"}
    POST   /v1/text_to_video    {model, promptText, ratio, duration, seed?, ...}           -> {"id"}
    GET    /v1/tasks/{id}       -> {id, status, progress?, output?, failure?, failureCode?}
    DELETE /v1/tasks/{id}       -> 204 (cancels a pending/throttled/running task)

Task statuses: ``PENDING`` and ``THROTTLED`` (stored, waiting for the
organisation's concurrency slot) are queued; ``RUNNING`` carries ``progress``
from 0 to 1; ``SUCCEEDED`` carries ``output`` (signed MP4 URLs that expire in
24-48 h, so they are downloaded at once); ``FAILED`` carries ``failure`` and a
``failureCode`` (``SAFETY.*`` moderation, ``ASSET.INVALID`` bad input,
``INTERNAL*`` retryable); ``CANCELLED`` ends the job.

Request mapping:
- ``aspect_ratio`` "16:9" and friends map onto Runway's pixel ratios
  ("1280:720"...); Runway's own ratio strings and an exact ``width``x``height``
  are accepted too. Anything the model has no ratio for is refused.
- ``duration_seconds`` must be whole seconds the model takes (gen4: 2-10,
  veo3.1: 4/6/8, veo3: 8, gen3a_turbo: 5/10); 0 picks the model's default.
- ``input_image`` (JPEG, PNG or WebP), passed the way Runway takes it: the
  caller's ``uri`` as is (https on a domain name, at most 2048 characters;
  Runway fetches it), inline bytes or an asset as a ``data:`` URI while the
  URI stays within Runway's 5 MB, and anything larger (up to Runway's 200 MB)
  through Runway's ephemeral upload: ``POST /v1/uploads {filename, type:
  "ephemeral"}`` answers ``{uploadUrl, fields, runwayUri}``; the file goes to
  ``uploadUrl`` as a multipart form (``fields``, then ``file``), streamed from
  storage, and ``promptImage`` is the ``runway://`` URI (the flow of Runway's
  SDK, ``uploads.create_ephemeral``). A presigned S3 URL is not used: Runway
  checks URLs with a HEAD request, which a URL signed for GET does not answer.
- ``provider_options``: ``contentModeration`` ({publicFigureThreshold:
  auto|low}) and ``audio`` (veo3.1), as Runway names them.

Price: Runway credits cost $0.01; each model costs a fixed number of credits
per second of output, billed on the requested duration.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers import inputs
from providers.base import (
    JobContext,
    Output,
    PollResult,
    ProgressInfo,
    Provider,
    StoredArtifact,
    VendorHandle,
    VendorState,
    check_limits,
    make_cost,
    provider_options,
    usd,
)
from providers.errors import (
    ContentRejected,
    FieldViolation,
    InvalidArgument,
    MediagenError,
    ProviderBadResponse,
    ProviderInvalidRequest,
    ProviderJobFailed,
    ProviderNotConfigured,
)
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env
from providers.inputs import (
    FIT_OPTION,
    IMAGE_TYPES,
    InputMedia,
    fit_option_problems,
    normalise_type,
)
from providers.secrets import env_secret

DEFAULT_BASE_URL = "https://api.dev.runwayml.com"
API_VERSION = "2024-11-06"
DOCS = "https://docs.dev.runwayml.com/api"
#: The SDK's name first, then the provider specification's.
KEY_ENV = ("RUNWAYML_API_SECRET", "RUNWAY_API_KEY")
CREDIT_USD = 0.01
MAX_PROMPT_UTF16 = 1000
#: Runway's cap on an inline image: the whole data URI, encoded.
MAX_DATA_URI_BYTES = 5 * 1000 * 1000
#: Runway's cap on an image sent through POST /v1/uploads.
MAX_UPLOAD_BYTES = 200 * 1000 * 1000
MAX_IMAGE_URL_CHARS = 2048
SEED_MAX = 4_294_967_295

GEN4_RATIOS = ("1280:720", "720:1280", "1104:832", "832:1104", "960:960", "1584:672")
VEO_RATIOS = ("1280:720", "720:1280", "1080:1920", "1920:1080")
GEN3A_RATIOS = ("1280:768", "768:1280")
#: Common aspect ratio -> Runway ratios that stand for it, best first.
COMMON_RATIOS: dict[str, tuple[str, ...]] = {
    "16:9": ("1280:720", "1920:1080", "1280:768"),
    "9:16": ("720:1280", "1080:1920", "768:1280"),
    "1:1": ("960:960",),
    "4:3": ("1104:832",),
    "3:4": ("832:1104",),
    "21:9": ("1584:672",),
}
DEFAULT_ASPECT = "16:9"


@dataclass(frozen=True)
class RunwayModel:
    name: str
    credits_per_second: float
    #: Ratios for POST /v1/image_to_video; empty: the model takes no image.
    image_ratios: tuple[str, ...]
    #: Ratios for POST /v1/text_to_video; empty: the model needs an image.
    text_ratios: tuple[str, ...]
    durations: tuple[int, ...]
    default_duration: int
    seed: bool = True
    negative_prompt: bool = False
    audio: bool = False
    #: Credits per second with audio on (veo3.1), when it differs.
    audio_credits_per_second: float = 0.0
    retired_note: str = ""

    @property
    def capabilities(self) -> list[str]:
        return (["text_to_video"] if self.text_ratios else []) + (
            ["image_to_video"] if self.image_ratios else []
        )

    def credits(self, audio: bool) -> float:
        return (
            self.audio_credits_per_second
            if audio and self.audio_credits_per_second
            else self.credits_per_second
        )


MODELS: dict[str, RunwayModel] = {
    m.name: m
    for m in (
        RunwayModel("gen4.5", 12, GEN4_RATIOS, ("1280:720", "720:1280"), tuple(range(2, 11)), 5),
        RunwayModel("gen4_turbo", 5, GEN4_RATIOS, (), tuple(range(2, 11)), 5),
        RunwayModel(
            "veo3.1",
            20,
            (),
            VEO_RATIOS,
            (4, 6, 8),
            8,
            seed=False,
            negative_prompt=True,
            audio=True,
            audio_credits_per_second=40,
        ),
        RunwayModel("veo3", 40, (), VEO_RATIOS, (8,), 8, seed=False),
        RunwayModel(
            "gen3a_turbo",
            5,
            GEN3A_RATIOS,
            (),
            (5, 10),
            10,
            retired_note="Runway retired Gen-3 Alpha Turbo on 2026-07-30 (its SDK dropped it on 2026-06-10); "
            "kept for its last documented contract, never picked by default",
        ),
    )
}
DEFAULT_MODEL = "gen4.5"
FAILURE_TEXT_MODERATION = re.compile(r"moderat|safety|content polic", re.IGNORECASE)


def sniff_image_type(data: bytes) -> str:
    """The MIME type of image bytes from their magic number ('' when unknown)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return ""


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _data_uri_length(content_type: str, size: int) -> int:
    return len(f"data:{content_type};base64,") + 4 * ((size + 2) // 3)


def _whole_seconds(value: float) -> int | None:
    rounded = round(value)
    return rounded if abs(value - rounded) < 1e-6 else None


class RunwayVideo(Provider):
    """Runway Gen-4 / Gen-4.5 / Veo through Runway's developer API."""

    name = "runway"
    display_name = "Runway"
    media_type = common_pb2.MEDIA_TYPE_VIDEO
    credential_env = KEY_ENV
    preference = 10

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        self.base_url = base_url_from_env("RUNWAY", base_url_from_env("RUNWAYML", DEFAULT_BASE_URL))
        self._key, _ = env_secret(*KEY_ENV)
        self.http: VendorHTTP | None = None
        if self._key:
            allow = bool(settings.allow_private_urls)
            self.http = VendorHTTP(
                self.name,
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {self._key}", "X-Runway-Version": API_VERSION},
                url_policy=UrlPolicy(allow_http=allow, allow_private=allow),
            )

    # --- catalog -------------------------------------------------------------

    def describe(self) -> catalog_pb2.Provider:
        native = sorted({r for m in MODELS.values() for r in (*m.image_ratios, *m.text_ratios)})
        limits = catalog_pb2.ProviderLimits(
            min_duration_seconds=2,
            max_duration_seconds=10,
            aspect_ratios=[*COMMON_RATIOS, *native],
            sizes=[r.replace(":", "x") for r in native],
            max_prompt_characters=MAX_PROMPT_UTF16,
            max_input_bytes=MAX_UPLOAD_BYTES,
            input_forms=["url", "data_uri", "upload"],
        )
        prices = []
        for model in MODELS.values():
            per_second = model.credits_per_second * CREDIT_USD
            prices.append(
                catalog_pb2.Price(
                    model=model.name,
                    unit=common_pb2.PRICE_UNIT_SECOND,
                    unit_price_micros=usd(per_second),
                    note=f"{model.credits_per_second:g} credits/s at ${CREDIT_USD}/credit"
                    + (" without audio" if model.audio_credits_per_second else "")
                    + " (Runway API pricing)",
                )
            )
            if model.audio_credits_per_second:
                prices.append(
                    catalog_pb2.Price(
                        model=model.name,
                        unit=common_pb2.PRICE_UNIT_SECOND,
                        unit_price_micros=usd(model.audio_credits_per_second * CREDIT_USD),
                        note=f"{model.audio_credits_per_second:g} credits/s at ${CREDIT_USD}/credit with audio "
                        "(Runway API pricing)",
                    )
                )
        models = [
            catalog_pb2.Model(
                name=m.name,
                default=m.name == DEFAULT_MODEL,
                retired=bool(m.retired_note),
                retired_note=m.retired_note,
                capabilities=m.capabilities,
            )
            for m in MODELS.values()
        ]
        entry = catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=["text_to_video", "image_to_video"],
            limits=limits,
            prices=prices,
            models=models,
            configured=self._key is not None,
            not_configured_reason="" if self._key else f"set {KEY_ENV[0]} (or {KEY_ENV[1]})",
            documentation_uri=DOCS,
            notes=[
                "gen4_turbo and gen3a_turbo are image-to-video only; veo3 and veo3.1 are text-to-video only",
                "aspect_ratio maps 16:9, 9:16, 1:1, 4:3, 3:4 and 21:9 onto Runway's pixel ratios "
                "(e.g. 16:9 -> 1280:720); Runway's own ratios and width x height are accepted as well",
                "duration_seconds: whole seconds; gen4.5/gen4_turbo 2-10, veo3.1 4/6/8, veo3 8, gen3a_turbo 5/10",
                "input_image: JPEG/PNG/WebP; an https URL (domain name, at most 2048 characters) is passed "
                "as is; inline data and assets go as a data URI up to Runway's 5 MB, larger ones (up to "
                "200 MB) through Runway's ephemeral upload (POST /v1/uploads)",
                "provider_options: contentModeration {publicFigureThreshold: auto|low} (image-to-video), "
                "audio (veo3.1; estimates assume audio unless audio is false)",
                "prompt: at most 1000 UTF-16 code units; output URLs expire within 24-48 h and are stored at once",
            ],
        )
        return entry

    # --- request checks ----------------------------------------------------------

    def _model(self, request: Message) -> RunwayModel:
        name = request.model or DEFAULT_MODEL
        model = MODELS.get(name)
        if model is None:
            raise InvalidArgument.field(
                "model", f"unknown model for runway; known: {', '.join(MODELS)}", "UNKNOWN_MODEL"
            )
        return model

    def _ratio(
        self, request: Message, allowed: tuple[str, ...]
    ) -> tuple[str | None, FieldViolation | None]:
        if request.width and request.height:
            ratio = f"{request.width}:{request.height}"
            if ratio in allowed:
                return ratio, None
            sizes = ", ".join(r.replace(":", "x") for r in allowed)
            return None, FieldViolation(
                "width", f"this model makes only these sizes: {sizes}", "UNSUPPORTED_VALUE"
            )
        wanted = request.aspect_ratio or DEFAULT_ASPECT
        if wanted in allowed:
            return wanted, None
        for candidate in COMMON_RATIOS.get(wanted, ()):
            if candidate in allowed:
                return candidate, None
        mapped = sorted(
            k for k, natives in COMMON_RATIOS.items() if any(n in allowed for n in natives)
        )
        return None, FieldViolation(
            "aspect_ratio",
            f"{wanted} has no Runway ratio for this model; use one of {', '.join(mapped + list(allowed))}",
            "UNSUPPORTED_VALUE",
        )

    def _check(self, request: Message) -> tuple[RunwayModel, dict[str, Any], list[FieldViolation]]:
        """Every problem with ``request`` for Runway, and the resolved body fields."""
        model = self._model(request)
        options = provider_options(request)
        out: list[FieldViolation] = []
        has_image = request.HasField("input_image")
        endpoint = "image_to_video" if has_image else "text_to_video"
        if has_image and not model.image_ratios:
            out.append(
                FieldViolation(
                    "input_image",
                    f"{model.name} is text-to-video only and takes no image",
                    "UNSUPPORTED",
                )
            )
        if not has_image and not model.text_ratios:
            out.append(
                FieldViolation(
                    "input_image",
                    f"{model.name} is image-to-video only: give input_image",
                    "REQUIRED",
                )
            )
        allowed = model.image_ratios if has_image else model.text_ratios
        ratio = None
        if allowed:
            ratio, problem = self._ratio(request, allowed)
            if problem:
                out.append(problem)
        duration = model.default_duration
        if request.duration_seconds:
            seconds = _whole_seconds(request.duration_seconds)
            if seconds is None:
                out.append(
                    FieldViolation(
                        "duration_seconds", "Runway takes whole seconds", "UNSUPPORTED_VALUE"
                    )
                )
            elif seconds not in model.durations:
                choices = (
                    f"{model.durations[0]}-{model.durations[-1]}"
                    if len(model.durations) > 3
                    else ", ".join(map(str, model.durations))
                )
                out.append(
                    FieldViolation(
                        "duration_seconds",
                        f"{model.name} takes {choices} seconds",
                        "UNSUPPORTED_VALUE",
                    )
                )
            else:
                duration = seconds
        if _utf16_length(request.prompt) > MAX_PROMPT_UTF16:
            out.append(
                FieldViolation(
                    "prompt", f"at most {MAX_PROMPT_UTF16} UTF-16 code units for Runway", "TOO_LONG"
                )
            )
        if request.negative_prompt and not model.negative_prompt:
            out.append(
                FieldViolation(
                    "negative_prompt", f"{model.name} takes no negative prompt", "UNSUPPORTED"
                )
            )
        if request.HasField("seed"):
            if not model.seed:
                out.append(FieldViolation("seed", f"{model.name} takes no seed", "UNSUPPORTED"))
            elif not 0 <= request.seed <= SEED_MAX:
                out.append(FieldViolation("seed", f"must be from 0 to {SEED_MAX}", "OUT_OF_RANGE"))
        if request.fps:
            out.append(FieldViolation("fps", "Runway does not take a frame rate", "UNSUPPORTED"))
        prompt_image = self._prompt_image(request, out) if has_image else None
        # Inline bytes and assets are turned into a data URI or an upload at submit.

        body: dict[str, Any] = {
            "model": model.name,
            "promptText": request.prompt,
            "duration": duration,
        }
        if ratio:
            body["ratio"] = ratio
        if prompt_image:
            body["promptImage"] = prompt_image
        if request.HasField("seed") and model.seed:
            body["seed"] = int(request.seed)
        if request.negative_prompt and model.negative_prompt:
            body["negativePrompt"] = request.negative_prompt
        for key, value in options.items():
            where = f"provider_options.{key}"
            if key == "contentModeration":
                threshold = value.get("publicFigureThreshold") if isinstance(value, dict) else None
                shape_ok = isinstance(value, dict) and not set(value) - {"publicFigureThreshold"}
                if not shape_ok or threshold not in (None, "auto", "low"):
                    out.append(
                        FieldViolation(
                            where, "must be {publicFigureThreshold: auto|low}", "INVALID_FIELD"
                        )
                    )
                elif endpoint == "text_to_video":
                    out.append(
                        FieldViolation(
                            where, "Runway takes it for image-to-video only", "UNSUPPORTED"
                        )
                    )
                else:
                    body["contentModeration"] = value
            elif key == FIT_OPTION:
                out += fit_option_problems(options)  # nothing to fit: Runway takes every input we accept
            elif key == "audio":
                if not model.audio:
                    out.append(FieldViolation(where, f"{model.name} makes no audio", "UNSUPPORTED"))
                elif not isinstance(value, bool):
                    out.append(FieldViolation(where, "must be true or false", "INVALID_FIELD"))
                else:
                    body["audio"] = value
            else:
                out.append(
                    FieldViolation(
                        where,
                        "unknown option; runway takes contentModeration, audio, fit_input",
                        "UNSUPPORTED",
                    )
                )
        body["_endpoint"] = endpoint
        return model, body, out

    def _prompt_image(self, request: Message, out: list[FieldViolation]) -> str | None:
        """The caller's URL, checked; None for inline data and assets (sent at submit)."""
        image = request.input_image
        source = image.WhichOneof("source")
        if source == "data":
            content_type = normalise_type(image.content_type) or sniff_image_type(image.data)
            if content_type not in IMAGE_TYPES:
                out.append(
                    FieldViolation(
                        "input_image.content_type",
                        f"Runway takes JPEG, PNG or WebP images, not {content_type or 'an unknown type'}",
                        "UNSUPPORTED_VALUE",
                    )
                )
            elif len(image.data) > MAX_UPLOAD_BYTES:
                out.append(FieldViolation("input_image.data", f"at most {MAX_UPLOAD_BYTES} bytes for Runway", "TOO_LARGE"))
            return None
        if source == "uri":
            uri = image.uri
            parts = urlsplit(uri)
            host = parts.hostname or ""
            problem = ""
            if parts.scheme != "https" or not host:
                problem = "must be an https URL"
            elif len(uri) > MAX_IMAGE_URL_CHARS:
                problem = f"at most {MAX_IMAGE_URL_CHARS} characters"
            else:
                try:
                    ipaddress.ip_address(host)
                    problem = "Runway fetches only URLs on a domain name, not an IP address"
                except ValueError:
                    pass
            if problem:
                out.append(FieldViolation("input_image.uri", problem, "INVALID_FORMAT"))
                return None
            return uri
        if source is None:
            out.append(FieldViolation("input_image", "set one of data, uri or asset_id", "REQUIRED"))
        return None  # an asset: checked by validate_input, sent at submit

    def validate_input(self, request: Message, media: InputMedia) -> None:
        super().validate_input(request, media)
        if media.source != "uri" and media.content_type not in IMAGE_TYPES:
            raise InvalidArgument.field(
                media.field, f"Runway takes JPEG, PNG or WebP images, not {media.content_type or 'an unknown type'}",
                "UNSUPPORTED_VALUE",
            )

    async def _send_image(self, media: InputMedia, ctx: JobContext, model: str) -> str:
        """``promptImage`` for inline bytes or an asset: a data URI within 5 MB, else an upload."""
        content_type = media.content_type
        if content_type not in IMAGE_TYPES:
            raise InvalidArgument.field(
                media.field, f"Runway takes JPEG, PNG or WebP images, not {content_type or 'an unknown type'}",
                "UNSUPPORTED_VALUE",
            )
        size = media.size if media.size is not None else len(await media.read_bytes(MAX_UPLOAD_BYTES))
        if _data_uri_length(content_type, size) <= MAX_DATA_URI_BYTES:
            return await media.as_data_uri(MAX_DATA_URI_BYTES)
        if size > MAX_UPLOAD_BYTES:
            raise media.too_large(MAX_UPLOAD_BYTES, " for Runway")
        http = self._client()
        filename = f"input{IMAGE_TYPES[content_type]}"
        answer, response = await http.request_json(
            "POST",
            "/v1/uploads",
            json={"filename": filename, "type": "ephemeral"},
            idempotent=True,  # an upload slot that is never used costs nothing
            ctx=ctx,
            model=model,
        )
        slot = answer if isinstance(answer, dict) else {}
        upload_url, fields, runway_uri = slot.get("uploadUrl"), slot.get("fields"), slot.get("runwayUri")
        if (
            not isinstance(upload_url, str)
            or not isinstance(runway_uri, str)
            or not runway_uri.startswith("runway://")
            or not isinstance(fields, dict)
        ):
            raise ProviderBadResponse(
                "runway answered an upload request without uploadUrl, fields and a runway:// runwayUri",
                provider=self.name,
                model=model,
                http_status=response.status_code,
                retryable=False,
            )
        await http.post_file(
            upload_url,
            fields={str(k): str(v) for k, v in fields.items()},
            file_field="file",
            filename=filename,
            content_type=content_type,
            size=size,
            open_file=media.open,
            ctx=ctx,
            model=model,
        )
        return runway_uri

    def validate(self, request: Message) -> None:
        violations = check_limits(self.describe().limits, request)
        # The generic size/ratio checks know the provider's union; _check knows the model.
        handled = ("aspect_ratio", "width", "duration_seconds", "prompt", "input_image.data")
        violations = [v for v in violations if v.field not in handled]
        _, _, problems = self._check(request)
        violations += problems
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                metadata={"provider": self.name},
                field_violations=violations,
            )

    # --- cost ----------------------------------------------------------------

    def _price(self, request: Message, model_name: str) -> tuple[RunwayModel, int, int]:
        model = MODELS.get(model_name) or MODELS[DEFAULT_MODEL]
        seconds = _whole_seconds(request.duration_seconds) if request.duration_seconds else None
        audio = bool(provider_options(request).get("audio", True)) if model.audio else False
        return model, seconds or model.default_duration, usd(model.credits(audio) * CREDIT_USD)

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        _, seconds, price = self._price(request, model)
        return make_cost(
            seconds, common_pb2.PRICE_UNIT_SECOND, price, common_pb2.COST_BASIS_ESTIMATED
        )

    def final_cost(
        self, request: Message, model: str, result: PollResult, artifacts: list[StoredArtifact]
    ) -> common_pb2.Cost:
        """Runway reports no usage: bill the measured clip length, in the whole seconds Runway charges."""
        _, seconds, price = self._price(request, model)
        measured = (
            round(artifacts[0].duration_seconds)
            if artifacts and artifacts[0].duration_seconds > 0
            else 0
        )
        return make_cost(
            measured or seconds, common_pb2.PRICE_UNIT_SECOND, price, common_pb2.COST_BASIS_MEASURED
        )

    # --- the job -----------------------------------------------------------------

    def _client(self) -> VendorHTTP:
        if self.http is None:
            raise ProviderNotConfigured(
                f"provider runway is not configured: set {KEY_ENV[0]}", provider=self.name
            )
        return self.http

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        http = self._client()
        spec, body, problems = self._check(request)
        # validate() ran already; this guards a stored request read back after an upgrade.
        if problems:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in problems),
                field_violations=problems,
            )
        endpoint = body.pop("_endpoint")
        media = inputs.from_request(request, ctx)
        if media is not None and "promptImage" not in body:
            body["promptImage"] = await self._send_image(media, ctx, spec.name)
        answer, response = await http.request_json(
            "POST", f"/v1/{endpoint}", json=body, idempotent=False, ctx=ctx, model=spec.name
        )
        task_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ProviderBadResponse(
                "runway accepted the task but its answer has no task id",
                provider=self.name,
                model=spec.name,
                http_status=response.status_code,
                retryable=False,
            )
        return VendorHandle(vendor_job_id=task_id, data={"model": spec.name, "endpoint": endpoint})

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        model = handle.data.get("model", "")
        task, _ = await self._client().request_json(
            "GET", f"/v1/tasks/{handle.vendor_job_id}", idempotent=True, ctx=ctx, model=model
        )
        if not isinstance(task, dict):
            raise ProviderBadResponse(
                "runway answered a task poll without a task object", provider=self.name, model=model
            )
        status = task.get("status")
        if status in ("PENDING", "THROTTLED"):
            message = (
                "waiting for a free slot in the organisation's concurrency limit"
                if status == "THROTTLED"
                else ""
            )
            return PollResult(
                VendorState.QUEUED, ProgressInfo(vendor_status=status, message=message)
            )
        if status == "RUNNING":
            progress = task.get("progress")
            fraction = (
                float(progress)
                if isinstance(progress, (int, float)) and 0 <= progress <= 1
                else None
            )
            return PollResult(
                VendorState.RUNNING, ProgressInfo(fraction=fraction, vendor_status=status)
            )
        if status == "SUCCEEDED":
            urls = [u for u in task.get("output") or [] if isinstance(u, str) and u]
            if not urls:
                raise ProviderBadResponse(
                    "runway reported SUCCEEDED without an output URL",
                    provider=self.name,
                    model=model,
                    retryable=False,
                )
            outputs = [
                Output(
                    url=url,
                    content_type="video/mp4",
                    metadata={"runwayTaskId": handle.vendor_job_id},
                )
                for url in urls
            ]
            return PollResult(
                VendorState.SUCCEEDED,
                ProgressInfo(fraction=1.0, vendor_status=status),
                outputs=outputs,
            )
        if status == "FAILED":
            return PollResult(
                VendorState.FAILED,
                ProgressInfo(vendor_status=status),
                error=self._failure(task, model),
            )
        if status == "CANCELLED":
            return PollResult(VendorState.CANCELLED, ProgressInfo(vendor_status=status))
        raise ProviderBadResponse(
            f"runway answered an unknown task status {str(status)[:40]!r}",
            provider=self.name,
            model=model,
        )

    def _failure(self, task: dict[str, Any], model: str) -> MediagenError:
        code = str(task.get("failureCode") or "")
        text = str(task.get("failure") or "the task failed")[:500]
        message = f"runway task failed: {text}" + (f" ({code})" if code else "")
        common: dict[str, Any] = {
            "provider": self.name,
            "model": model,
            "metadata": {"failureCode": code, "vendorStatus": "FAILED"},
        }
        if code.startswith("SAFETY") or (not code and FAILURE_TEXT_MODERATION.search(text)):
            # SAFETY.INPUT.*: not refundable, do not retry; SAFETY.OUTPUT.*: retry with another prompt.
            return ContentRejected(message, **common)
        if code.startswith("ASSET"):
            return ProviderInvalidRequest(message, **common)
        # INTERNAL and INTERNAL.BAD_OUTPUT: Runway says the same request may succeed again.
        return ProviderJobFailed(message, retryable=code.startswith("INTERNAL"), **common)

    async def cancel(self, handle: VendorHandle, ctx: JobContext) -> bool:
        model = handle.data.get("model", "")
        try:
            await self._client().request(
                "DELETE", f"/v1/tasks/{handle.vendor_job_id}", idempotent=True, ctx=ctx, model=model
            )
        except ProviderJobFailed as err:
            if err.http_status != 404:
                raise
            # Already cancelled or deleted: a cancelled task can never be fetched again.
        return True

    def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._client().open_stream(
            output.url, ctx=ctx, max_bytes=self.max_output_bytes, model=handle.data.get("model", "")
        )

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()
