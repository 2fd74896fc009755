"""Stability AI Stable Video (image-to-video, v2beta): RETIRED by the vendor on 2025-07-24.

Stability discontinued its hosted Stable Video API on 2025-07-24 (its "API
Price Update" notice of 2025-07-09) and offers no hosted replacement. This
adapter keeps the last documented contract so that a caller who names
``stability`` reaches a compatible server set in ``STABILITY_BASE_URL`` (a
self-hosted stand-in or a proxy). The catalog marks it retired and the
registry never picks it by default.

The contract:

- ``POST /v2beta/image-to-video``, multipart: ``image`` (JPEG or PNG of exactly
  1024x576, 576x1024 or 768x768), ``seed`` (0-4294967294, 0 = random),
  ``cfg_scale`` (0-10, default 1.8), ``motion_bucket_id`` (1-255, default
  127). No prompt: the request's required ``prompt`` is not sent. Answers
  ``{"id": ...}``.
- ``GET /v2beta/image-to-video/result/{id}``: 202 ``{"id", "status":
  "in-progress"}`` while running; 200 with the MP4 itself when done
  (``Accept: video/*``; ``finish-reason`` and ``seed`` in headers); 404 for an
  unknown or expired id (results were kept about 24 h).
- No cancel call: ``cancel`` returns False and the job just stops locally.

The image is always sent as a file part, whatever the caller gave: inline
bytes, an uploaded asset (read from storage), or an https URL (fetched without
any credentials, at most 10 MiB). One of another size is refused at Generate
unless ``provider_options {"fit_input": true}``: then it is cropped around
its centre to the allowed size of the nearest aspect ratio and sent as PNG.

``Accept: video/*`` rather than JSON: the JSON form carries the same clip as
base64. ``poll`` reads the finished answer once (bounded, to see the
``finish-reason``: a CONTENT_FILTERED clip is a ContentRejected failure), and
``open_output`` streams the same result again into storage.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import httpx
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from PIL import Image, UnidentifiedImageError

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
    make_cost,
    provider_options,
)
from providers.errors import (
    InvalidArgument,
    ProviderBadResponse,
    ProviderError,
)
from providers.http import MAX_RESPONSE_BYTES
from providers.inputs import FIT_OPTION, InlineInput, InputMedia, fit_option_problems, wants_fit
from providers.stability_common import (
    CREDIT_MICROS,
    CREDIT_NOTE,
    KEY_ENV,
    NOT_CONFIGURED,
    SEED_MAX,
    multipart,
    stability_http,
)

MODEL = "stable-video-diffusion"
SIZES = {"1024x576": "16:9", "576x1024": "9:16", "768x768": "1:1"}
EXACT_SIZES = [(1024, 576), (576, 1024), (768, 768)]
IMAGE_TYPES = {"PNG": ("image/png", "png"), "JPEG": ("image/jpeg", "jpg")}
#: The v2beta API refused requests over 10 MiB (413).
MAX_INPUT_BYTES = 10 * 1024 * 1024
CREDITS = 20
RETIRED_ON = datetime(2025, 7, 24, tzinfo=UTC)
RETIRED_NOTE = (
    "Stability AI discontinued the Stable Video API on 2025-07-24 (notice 'API Price Update', "
    "2025-07-09) with no hosted replacement; this adapter speaks the last documented contract "
    "and works only against a compatible server set in STABILITY_BASE_URL."
)
SUBMIT_PATH = "/v2beta/image-to-video"
RESULT_PATH = "/v2beta/image-to-video/result/{id}"
#: provider_options the API took, with their ranges (the defaults are the vendor's).
OPTIONS: dict[str, tuple[type, float, float]] = {
    "cfg_scale": (float, 0, 10),
    "motion_bucket_id": (int, 1, 255),
}
DOCS = "https://platform.stability.ai/docs/api-reference#tag/Image-to-Video"


def _fitted_size(width: int, height: int) -> tuple[int, int]:
    """The allowed size an image of this shape is fitted to (the nearest aspect ratio)."""
    if not width or not height:
        return EXACT_SIZES[0]
    return min(EXACT_SIZES, key=lambda s: abs(s[0] / s[1] - width / height))


def _inspect(data: bytes, field: str) -> tuple[str, str, str]:
    """(MIME type, file extension, 'WxH') of an input image the API accepts, else InvalidArgument."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, size = image.format or "", f"{image.width}x{image.height}"
    except (UnidentifiedImageError, OSError):
        kind, size = "", ""
    if kind not in IMAGE_TYPES:
        raise InvalidArgument.field(field, "must be a JPEG or PNG image", "UNSUPPORTED_VALUE")
    if size not in SIZES:
        raise InvalidArgument.field(
            field,
            f"must be exactly {', '.join(SIZES)} pixels (got {size})",
            "UNSUPPORTED_VALUE",
        )
    mime, extension = IMAGE_TYPES[kind]
    return mime, extension, size


class StabilityVideoProvider(Provider):
    """Stable Video Diffusion image-to-video (retired 2025-07-24; compatible servers only)."""

    name = "stability"
    display_name = "Stability AI Stable Video (retired)"
    media_type = common_pb2.MEDIA_TYPE_VIDEO
    credential_env = KEY_ENV
    #: Last of all: retired, so never a default (the registry skips retired ones anyway).
    preference = 1000

    def __init__(self, settings) -> None:
        self.http, self.configured = stability_http(self.name, settings)
        self.max_output_bytes = settings.max_output_bytes
        self.max_result_bytes = min(settings.max_output_bytes, MAX_RESPONSE_BYTES)
        self._entry = self._build_entry()

    # --- catalog -----------------------------------------------------------

    def _build_entry(self) -> catalog_pb2.Provider:
        capabilities = ["image_to_video"]
        retire_time = timestamp_pb2.Timestamp()
        retire_time.FromDatetime(RETIRED_ON)
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(
                aspect_ratios=list(dict.fromkeys(SIZES.values())),
                sizes=list(SIZES),
                max_input_bytes=MAX_INPUT_BYTES,
                max_input_pixels=max(w * h for w, h in EXACT_SIZES),
                input_image_required=True,
                input_forms=["multipart"],
            ),
            prices=[
                catalog_pb2.Price(
                    model=MODEL,
                    unit=common_pb2.PRICE_UNIT_CREDIT,
                    unit_price_micros=CREDIT_MICROS,
                    note=f"{CREDITS} credits per generation (last published price); {CREDIT_NOTE}",
                )
            ],
            models=[
                catalog_pb2.Model(
                    name=MODEL, retired=True, retired_note=RETIRED_NOTE, capabilities=capabilities
                )
            ],
            configured=self.configured,
            not_configured_reason="" if self.configured else NOT_CONFIGURED,
            retired=True,
            retired_note=RETIRED_NOTE,
            retire_time=retire_time,
            documentation_uri=DOCS,
            notes=[
                "image-to-video only: input_image is a JPEG or PNG of exactly 1024x576, 576x1024 "
                "or 768x768; the clip has the image's size; sent as a multipart file (inline data, an "
                'asset, or an https URL fetched by mediagen); provider_options {"fit_input": true} '
                "crops and scales another image to the nearest allowed size",
                "the API takes no prompt: the request's prompt is not sent",
                "fixed clip length: duration_seconds must be left at 0",
                "provider_options: cfg_scale (0-10, default 1.8), motion_bucket_id (1-255, "
                "default 127)",
                "no vendor cancel call",
            ],
        )

    def describe(self) -> catalog_pb2.Provider:
        entry = catalog_pb2.Provider()
        entry.CopyFrom(self._entry)
        return entry

    # --- before any vendor call ----------------------------------------------

    def validate(self, request: Message) -> None:
        super().validate(request)
        if request.model and request.model != MODEL:
            raise InvalidArgument.field(
                "model", f"unknown model for stability; known: {MODEL}", "UNKNOWN_MODEL"
            )
        for name, why in (
            ("duration_seconds", "the clip length is fixed: leave duration_seconds at 0"),
            ("negative_prompt", "the image-to-video API takes no negative prompt"),
            ("fps", "the image-to-video API takes no frame rate"),
        ):
            if getattr(request, name):
                raise InvalidArgument.field(name, why, "UNSUPPORTED_FIELD")
        image = request.input_image
        source = image.WhichOneof("source")
        options = provider_options(request)
        if source == "data":
            self.validate_input(request, InlineInput(image.data, field="input_image.data"))
        if request.HasField("seed") and not 0 <= request.seed <= SEED_MAX:
            raise InvalidArgument.field("seed", f"must be from 0 to {SEED_MAX}", "OUT_OF_RANGE")
        for problem in fit_option_problems(options):
            raise InvalidArgument.field(problem.field, problem.description, problem.reason)
        for key, value in options.items():
            if key == FIT_OPTION:
                continue
            if key not in OPTIONS:
                raise InvalidArgument.field(
                    f"provider_options.{key}",
                    "not taken by stability; known: " + ", ".join([*OPTIONS, FIT_OPTION]),
                    "UNSUPPORTED_FIELD",
                )
            kind, low, high = OPTIONS[key]
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or (kind is int and value != int(value)) or not low <= value <= high:
                what = "an integer" if kind is int else "a number"
                raise InvalidArgument.field(
                    f"provider_options.{key}",
                    f"must be {what} from {low:g} to {high:g}",
                    "OUT_OF_RANGE",
                )

    def validate_input(self, request: Message, media: InputMedia) -> None:
        if media.source == "uri" and not media.known:
            return  # fetched and checked at submit
        fit = wants_fit(provider_options(request))
        if media.content_type not in ("image/png", "image/jpeg") and not (fit and media.content_type == "image/webp"):
            raise InvalidArgument.field(media.field, "must be a JPEG or PNG image", "UNSUPPORTED_VALUE")
        if fit:
            size = f"{_fitted_size(media.width, media.height)[0]}x{_fitted_size(media.width, media.height)[1]}"
        else:
            size = f"{media.width}x{media.height}"
            if size not in SIZES:
                raise InvalidArgument.field(
                    media.field,
                    f"must be exactly {', '.join(SIZES)} pixels (got {size}); "
                    'provider_options {"fit_input": true} crops and scales it',
                    "UNSUPPORTED_VALUE",
                )
            if media.size is not None and media.size > MAX_INPUT_BYTES:
                raise media.too_large(MAX_INPUT_BYTES, " for stability")
        if request.width and f"{request.width}x{request.height}" != size:
            raise InvalidArgument.field("width", f"the clip has the input image's size ({size})", "UNSUPPORTED_VALUE")
        if request.aspect_ratio and request.aspect_ratio != SIZES[size]:
            raise InvalidArgument.field(
                "aspect_ratio", f"the clip has the input image's aspect ratio ({SIZES[size]})", "UNSUPPORTED_VALUE"
            )

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        return make_cost(
            CREDITS, common_pb2.PRICE_UNIT_CREDIT, CREDIT_MICROS, common_pb2.COST_BASIS_ESTIMATED
        )

    # --- the job ------------------------------------------------------------

    async def _input_image(self, request: Message, ctx: JobContext) -> tuple[str, bytes, str]:
        """(file name, bytes, MIME type) of the input image: inline, an asset read from
        storage, or a URL fetched; fitted to an allowed size when the caller asked."""
        media = inputs.from_request(request, ctx, fetch=self._fetch)
        if media is None:
            raise InvalidArgument.field("input_image", "required by this provider", "REQUIRED")
        fit = wants_fit(provider_options(request))
        data = await media.read_bytes(inputs.MAX_READ_BYTES if fit else MAX_INPUT_BYTES)
        field = media.field
        if fit:
            head = inputs.detect_bytes(data, field)
            if f"{head.width}x{head.height}" not in SIZES or head.content_type not in ("image/png", "image/jpeg"):
                media = await inputs.fit_input(
                    media, types=["image/png"], max_bytes=MAX_INPUT_BYTES, exact_sizes=EXACT_SIZES
                )
                data = await media.read_bytes(MAX_INPUT_BYTES)
        if len(data) > MAX_INPUT_BYTES:
            raise InvalidArgument.field(field, f"the image is over {MAX_INPUT_BYTES} bytes", "TOO_LARGE")
        mime, extension, _ = _inspect(data, field)
        return f"image.{extension}", data, mime

    def _fetch(self, url: str, max_bytes: int, ctx: JobContext | None) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """An input URL's bytes, for an adapter used without the server's resolver."""
        try:
            uri = httpx.URL(url)
        except httpx.InvalidURL:
            raise InvalidArgument.field("input_image.uri", "is not a usable URL", "INVALID_FORMAT") from None
        api = self.http.base_url
        if (uri.scheme, uri.host, uri.port) == (api.scheme, api.host, api.port):
            # It would be fetched with the API key; an input image never lives there.
            raise InvalidArgument.field("input_image.uri", "must not point at the Stability API", "INVALID_FORMAT")
        return self.http.open_stream(url, ctx=ctx, max_bytes=max_bytes, model=MODEL)

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        file_name, data, mime = await self._input_image(request, ctx)
        fields: dict[str, Any] = {"seed": int(request.seed) if request.HasField("seed") else 0}
        fields.update((k, v) for k, v in provider_options(request).items() if k != FIT_OPTION)
        if "motion_bucket_id" in fields:
            fields["motion_bucket_id"] = int(fields["motion_bucket_id"])
        answer, response = await self.http.request_json(
            "POST",
            SUBMIT_PATH,
            files={"image": (file_name, data, mime), **multipart(fields)},
            idempotent=False,
            ctx=ctx,
            model=MODEL,
        )
        generation_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(generation_id, str) or not generation_id:
            raise ProviderBadResponse(
                "stability accepted the video request without a generation id",
                provider=self.name,
                model=MODEL,
                http_status=response.status_code,
                retryable=False,
            )
        return VendorHandle(vendor_job_id=generation_id)

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        try:
            response = await self.http.request(
                "GET",
                RESULT_PATH.format(id=handle.vendor_job_id),
                headers={"Accept": "video/*"},
                idempotent=True,
                ctx=ctx,
                model=MODEL,
                max_bytes=self.max_result_bytes,
            )
        except ProviderError as error:
            if error.retryable:
                raise
            # 404: unknown or expired id; CONTENT_FILTERED: a blurred clip; 403 moderation.
            return PollResult(VendorState.FAILED, error=error)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code == 202:
            status = "in-progress"
            if content_type == "application/json":
                try:
                    status = str(response.json().get("status") or status)[:40]
                except (ValueError, AttributeError):
                    pass
            return PollResult(VendorState.RUNNING, ProgressInfo(vendor_status=status))
        if response.status_code != 200 or not content_type.startswith("video/"):
            raise ProviderBadResponse(
                f"stability answered a video result with HTTP {response.status_code} "
                f"and {content_type or 'no content type'} (video/* was asked for)",
                provider=self.name,
                model=MODEL,
                http_status=response.status_code,
                retryable=False,
            )
        metadata = {}
        for header, key in (("seed", "seed"), ("finish-reason", "finishReason")):
            if response.headers.get(header):
                metadata[key] = response.headers[header][:64]
        return PollResult(
            VendorState.SUCCEEDED,
            ProgressInfo(vendor_status="complete"),
            outputs=[Output(content_type=content_type, metadata=metadata)],
        )

    def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.http.open_stream(
            RESULT_PATH.format(id=handle.vendor_job_id),
            headers={"Accept": "video/*"},
            absolute_url_ok=False,
            ctx=ctx,
            max_bytes=self.max_output_bytes,
            model=MODEL,
        )

    async def aclose(self) -> None:
        await self.http.aclose()
