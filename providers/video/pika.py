"""Pika video through fal.ai's queue API (Pika has no self-serve API of its own).

Pika's API page sends developers to fal.ai, which hosts the Pika models as
partner endpoints. The flow is fal's queue protocol:

- ``POST {FAL_BASE_URL}/fal-ai/pika/v2.2/text-to-video`` (or ``image-to-video``)
  with the model input as JSON and ``Authorization: Key <FAL_KEY>`` answers
  ``{request_id, status_url, response_url, cancel_url, queue_position?}``. The
  three URLs use the app prefix only (``fal-ai/pika/requests/{id}/...``); they
  are stored in the VendorHandle as given, so a restarted server resumes polling.
- ``GET status_url?logs=1`` answers 202 with ``IN_QUEUE`` (``queue_position``)
  or ``IN_PROGRESS`` (``logs``), then 200 with ``COMPLETED``. There is no
  percentage; the queue position and the last log line become the progress.
- ``GET response_url`` answers ``{"video": {"url", "content_type", ...}}``; a
  request that failed answers an error status instead: a ``detail`` list of
  ``{loc, msg, type}`` (model errors, e.g. ``content_policy_violation``) or
  ``{detail, error_type}`` with ``X-Fal-Error-Type`` (infrastructure errors).
- ``PUT cancel_url`` answers 202 ``CANCELLATION_REQUESTED`` (or 400
  ``ALREADY_COMPLETED``).

Configuration: the key comes from ``FAL_KEY`` (fal's SDKs), ``PIKA_API_KEY``
(the project's first specification) or the pair ``FAL_KEY_ID`` +
``FAL_KEY_SECRET`` (older fal SDKs, sent as ``id:secret``). ``FAL_BASE_URL``
replaces ``https://queue.fal.run``; only the queue API is used, so fal's
storage REST API is not needed: ``image_url`` takes a URL or a data URI. The
caller's https URL is passed as is; an uploaded asset goes as a presigned URL
of the stored file when the storage signs URLs (S3), else as a data URI;
inline bytes go as a data URI. A data URI is kept to 10 MiB (fal states no
limit; every JSON front end takes that much): a larger asset on local storage
is refused at Generate, unless ``provider_options {"fit_input": true}`` lets
it be re-encoded (JPEG) to fit. When
fal answers with URLs on another origin than ``FAL_BASE_URL`` (a proxy in
between), the same paths are called on ``FAL_BASE_URL`` instead, so the key
is never sent anywhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
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
    make_cost,
    provider_options,
    usd,
)
from providers.errors import (
    InvalidArgument,
    MediagenError,
    ProviderBadResponse,
    ProviderError,
    ProviderJobFailed,
)
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env, classify
from providers.inputs import FIT_OPTION, InputMedia, fit_input, fit_option_problems, wants_fit
from providers.secrets import env_secret, register

log = structlog.get_logger("mediagen.providers.pika")

DEFAULT_BASE_URL = "https://queue.fal.run"
#: fal's queue paths for status, result and cancel use the app, not the endpoint.
APP = "fal-ai/pika"
KEY_ENV = ("FAL_KEY", "PIKA_API_KEY")
KEY_PAIR_ENV = ("FAL_KEY_ID", "FAL_KEY_SECRET")
NOT_CONFIGURED = "set FAL_KEY (or PIKA_API_KEY, or FAL_KEY_ID and FAL_KEY_SECRET)"

ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:5", "5:4", "3:2", "2:3")
RESOLUTIONS = ("720p", "1080p")
#: Inline images go to fal as data URIs inside the JSON body; fal states no
#: limit for those, so stay at a size every JSON front end takes.
MAX_INLINE_IMAGE_BYTES = 10 * 1024 * 1024
#: The longest data URI sent (the bytes above, base64-encoded, with the prefix).
MAX_DATA_URI_CHARS = len("data:image/jpeg;base64,") + 4 * ((MAX_INLINE_IMAGE_BYTES + 2) // 3)
INPUT_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
#: provider_options keys passed to fal as they are named there.
OPTIONS = ("resolution", FIT_OPTION)
DOCS = "https://fal.ai/models/fal-ai/pika/v2.2/text-to-video/api"


@dataclass(frozen=True)
class PikaModel:
    name: str
    #: fal endpoint ids (POST paths) for text-to-video and image-to-video.
    text_endpoint: str
    image_endpoint: str
    durations: tuple[int, ...]
    #: (unit, micros per unit at 720p, at 1080p)
    price: tuple[int, int, int]
    price_note: str


MODELS: dict[str, PikaModel] = {
    model.name: model
    for model in (
        PikaModel(
            name="pika-v2.2",
            text_endpoint="fal-ai/pika/v2.2/text-to-video",
            image_endpoint="fal-ai/pika/v2.2/image-to-video",
            durations=(5, 10),
            price=(common_pb2.PRICE_UNIT_SECOND, usd(0.20 / 5), usd(0.45 / 5)),
            price_note=(
                "fal list price: $0.20 per 5 s clip at 720p, $0.45 per 5 s at 1080p ($0.09/s); "
                "fal publishes 5 s prices only, 10 s clips are priced pro rata"
            ),
        ),
        PikaModel(
            name="pika-v2-turbo",
            text_endpoint="fal-ai/pika/v2/turbo/text-to-video",
            image_endpoint="fal-ai/pika/v2/turbo/image-to-video",
            # fal documents only the default (5 s) for Turbo, no other value.
            durations=(5,),
            price=(common_pb2.PRICE_UNIT_REQUEST, usd(0.20), usd(0.20)),
            price_note="fal list price: $0.20 per video at either resolution",
        ),
    )
}
DEFAULT_MODEL = "pika-v2.2"


def _last_log(body: Mapping[str, Any]) -> str:
    logs = body.get("logs")
    if isinstance(logs, list):
        for entry in reversed(logs):
            if isinstance(entry, Mapping) and entry.get("message"):
                return str(entry["message"])[:200]
    return ""


class PikaProvider(Provider):
    """Pika text-to-video and image-to-video on fal.ai's queue."""

    name = "pika"
    display_name = "Pika (through fal.ai)"
    media_type = common_pb2.MEDIA_TYPE_VIDEO
    credential_env = KEY_ENV + KEY_PAIR_ENV
    preference = 20

    def __init__(self, settings) -> None:
        key, _ = env_secret(*KEY_ENV)
        if not key:
            key_id, _ = env_secret(KEY_PAIR_ENV[0])
            secret, _ = env_secret(KEY_PAIR_ENV[1])
            if key_id and secret:
                key = register(f"{key_id}:{secret}")
        self.configured = bool(key)
        self.max_output_bytes = settings.max_output_bytes
        allow = settings.allow_private_urls
        self.http = VendorHTTP(
            self.name,
            base_url=base_url_from_env("FAL", DEFAULT_BASE_URL),
            headers={"Authorization": f"Key {key}"} if key else {},
            classify_hook=self._classify,
            url_policy=UrlPolicy(allow_http=allow, allow_private=allow),
        )
        self._entry = self._build_entry()

    # --- catalog -----------------------------------------------------------

    def _build_entry(self) -> catalog_pb2.Provider:
        capabilities = ["text_to_video", "image_to_video"]
        prices = []
        for model in MODELS.values():
            unit, at_720p, _ = model.price
            prices.append(
                catalog_pb2.Price(
                    model=model.name, unit=unit, unit_price_micros=at_720p, note=model.price_note
                )
            )
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(
                allowed_durations_seconds=sorted({d for m in MODELS.values() for d in m.durations}),
                aspect_ratios=list(ASPECT_RATIOS),
                max_input_bytes=MAX_INLINE_IMAGE_BYTES,
                input_forms=["url", "data_uri"],
            ),
            prices=prices,
            models=[
                catalog_pb2.Model(
                    name=model.name, default=model.name == DEFAULT_MODEL, capabilities=capabilities
                )
                for model in MODELS.values()
            ],
            configured=self.configured,
            not_configured_reason="" if self.configured else NOT_CONFIGURED,
            documentation_uri=DOCS,
            notes=[
                "Pika offers its API through fal.ai: billing and keys are fal's.",
                "provider_options.resolution: '720p' (default) or '1080p'; exact width/height "
                "and fps are not taken.",
                "pika-v2-turbo makes 5 s clips only; pika-v2.2 makes 5 or 10 s.",
                "With input_image the clip follows the image's aspect ratio (aspect_ratio is "
                "refused).",
                "input_image: an https URL or an asset on S3 storage goes by URL (presigned); inline "
                "data and assets on local storage go as a data URI of at most 10 MiB "
                '(provider_options {"fit_input": true} re-encodes a larger one).',
            ],
        )

    def describe(self) -> catalog_pb2.Provider:
        entry = catalog_pb2.Provider()
        entry.CopyFrom(self._entry)
        return entry

    # --- before any vendor call ----------------------------------------------

    def validate(self, request: Message) -> None:
        super().validate(request)
        model_name = request.model or DEFAULT_MODEL
        model = MODELS.get(model_name)
        if model is None:
            raise InvalidArgument.field(
                "model", f"unknown model for pika; known: {', '.join(MODELS)}", "UNKNOWN_MODEL"
            )
        duration = request.duration_seconds
        if duration and not any(abs(duration - d) < 1e-6 for d in model.durations):
            allowed = " or ".join(str(d) for d in model.durations)
            raise InvalidArgument.field(
                "duration_seconds", f"{model.name} makes clips of {allowed} s", "UNSUPPORTED_VALUE"
            )
        if request.width or request.height:
            raise InvalidArgument.field(
                "width",
                "pika takes aspect_ratio and provider_options.resolution ('720p' or '1080p'), "
                "not an exact frame size",
                "UNSUPPORTED_FIELD",
            )
        if request.fps:
            raise InvalidArgument.field(
                "fps", "pika does not take a frame rate", "UNSUPPORTED_FIELD"
            )
        if request.HasField("input_image"):
            if request.aspect_ratio:
                raise InvalidArgument.field(
                    "aspect_ratio",
                    "pika image-to-video follows the input image's aspect ratio",
                    "UNSUPPORTED_FIELD",
                )
        options = provider_options(request)
        for key in options:
            if key not in OPTIONS:
                raise InvalidArgument.field(
                    f"provider_options.{key}",
                    "not taken by pika; known: " + ", ".join(OPTIONS),
                    "UNSUPPORTED_FIELD",
                )
        for problem in fit_option_problems(options):
            raise InvalidArgument.field(problem.field, problem.description, problem.reason)
        if "resolution" in options and options["resolution"] not in RESOLUTIONS:
            raise InvalidArgument.field(
                "provider_options.resolution",
                "must be one of " + ", ".join(RESOLUTIONS),
                "UNSUPPORTED_VALUE",
            )

    @staticmethod
    def _shape(request: Message, model: PikaModel) -> tuple[int, str]:
        """(duration in seconds, resolution) the vendor is asked for."""
        duration = (
            round(request.duration_seconds) if request.duration_seconds else model.durations[0]
        )
        return duration, str(provider_options(request).get("resolution", RESOLUTIONS[0]))

    @staticmethod
    def _cost(model: PikaModel, duration: float, resolution: str, basis: int) -> common_pb2.Cost:
        unit, at_720p, at_1080p = model.price
        price = at_1080p if resolution == "1080p" else at_720p
        units = duration if unit == common_pb2.PRICE_UNIT_SECOND else 1.0
        return make_cost(units, unit, price, basis)

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        spec = MODELS.get(model or DEFAULT_MODEL, MODELS[DEFAULT_MODEL])
        duration, resolution = self._shape(request, spec)
        return self._cost(spec, duration, resolution, common_pb2.COST_BASIS_ESTIMATED)

    def final_cost(
        self,
        request: Message,
        model: str,
        result: PollResult,
        artifacts: list[StoredArtifact],
    ) -> common_pb2.Cost:
        """fal reports no charge: price the clip length Pika billed, read off the measured clip."""
        spec = MODELS.get(model or DEFAULT_MODEL, MODELS[DEFAULT_MODEL])
        duration, resolution = self._shape(request, spec)
        measured = artifacts[0].duration_seconds if artifacts else 0.0
        if measured > 0:
            duration = min(spec.durations, key=lambda d: abs(d - measured))
        return self._cost(spec, duration, resolution, common_pb2.COST_BASIS_MEASURED)

    # --- the job ------------------------------------------------------------

    def _input(self, request: Message, model: PikaModel) -> tuple[str, dict[str, Any]]:
        """(fal endpoint id, model input) for a validated request."""
        duration, resolution = self._shape(request, model)
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "resolution": resolution,
            "duration": duration,
        }
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if request.HasField("seed"):
            body["seed"] = request.seed
        if not request.HasField("input_image"):
            body["aspect_ratio"] = request.aspect_ratio or ASPECT_RATIOS[0]
            return model.text_endpoint, body
        image = request.input_image
        if image.WhichOneof("source") == "uri":
            body["image_url"] = image.uri
        # Inline bytes and assets: a URL or a data URI, at submit (_image_url).
        return model.image_endpoint, body

    def validate_input(self, request: Message, media: InputMedia) -> None:
        if media.source == "uri" or media.may_have_public_url:
            return  # fal fetches it
        if media.content_type not in INPUT_IMAGE_TYPES.values():
            raise InvalidArgument.field(media.field, "must be a PNG, JPEG or WebP image", "UNSUPPORTED_VALUE")
        if media.size is not None and media.size > MAX_INLINE_IMAGE_BYTES and not wants_fit(provider_options(request)):
            raise InvalidArgument.field(
                media.field,
                f"at most {MAX_INLINE_IMAGE_BYTES} bytes as a data URI ({media.size} given); with S3 "
                'storage assets go by URL, or set provider_options {"fit_input": true} to re-encode it',
                "TOO_LARGE",
            )

    async def _image_url(self, request: Message, media: InputMedia, ctx: JobContext) -> str:
        """``image_url`` for inline bytes or an asset: a presigned URL, else a data URI."""
        url = await media.public_url(inputs.url_ttl(ctx))
        if url is not None:
            return url
        if media.size is not None and media.size > MAX_INLINE_IMAGE_BYTES and wants_fit(provider_options(request)):
            media = await fit_input(media, types=list(INPUT_IMAGE_TYPES.values()), max_bytes=MAX_INLINE_IMAGE_BYTES)
        return await media.as_data_uri(MAX_DATA_URI_CHARS)

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        spec = MODELS[model or DEFAULT_MODEL]
        endpoint, body = self._input(request, spec)
        media = inputs.from_request(request, ctx)
        if media is not None and "image_url" not in body:
            body["image_url"] = await self._image_url(request, media, ctx)
        answer, _ = await self.http.request_json(
            "POST", endpoint, json=body, idempotent=False, ctx=ctx, model=spec.name
        )
        request_id = answer.get("request_id") if isinstance(answer, Mapping) else None
        if not isinstance(request_id, str) or not request_id:
            raise ProviderBadResponse(
                "pika (fal) accepted the request without a request_id",
                provider=self.name,
                model=spec.name,
                retryable=False,
            )
        base = f"{APP}/requests/{request_id}"
        return VendorHandle(
            vendor_job_id=request_id,
            data={
                "model": spec.name,
                "status_url": self._on_api(answer.get("status_url"), f"{base}/status"),
                "response_url": self._on_api(answer.get("response_url"), base),
                "cancel_url": self._on_api(answer.get("cancel_url"), f"{base}/cancel"),
            },
        )

    def _on_api(self, url: Any, fallback_path: str) -> str:
        """fal's URL when it is on the configured API origin, else the same call on it."""
        if isinstance(url, str) and url:
            try:
                parsed = httpx.URL(url)
            except httpx.InvalidURL:
                return fallback_path
            base = self.http.base_url
            if (parsed.scheme, parsed.host, parsed.port) == (base.scheme, base.host, base.port):
                return url
        return fallback_path

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        model = handle.data.get("model", "")
        body, _ = await self.http.request_json(
            "GET",
            handle.data["status_url"],
            params={"logs": "1"},
            idempotent=True,
            ctx=ctx,
            model=model,
        )
        if not isinstance(body, Mapping):
            raise ProviderBadResponse(
                "pika (fal) answered a status poll without a status",
                provider=self.name,
                model=model,
            )
        status = str(body.get("status", ""))
        progress = ProgressInfo(vendor_status=status, message=_last_log(body))
        if status == "IN_QUEUE":
            position = body.get("queue_position")
            progress.queue_position = position if isinstance(position, int) else None
            return PollResult(VendorState.QUEUED, progress)
        if status == "IN_PROGRESS":
            return PollResult(VendorState.RUNNING, progress)
        if status != "COMPLETED":
            raise ProviderBadResponse(
                f"pika (fal) answered an unknown status {status[:40]!r}",
                provider=self.name,
                model=model,
            )
        return await self._result(handle, body, progress, ctx)

    async def _result(
        self,
        handle: VendorHandle,
        status: Mapping[str, Any],
        progress: ProgressInfo,
        ctx: JobContext,
    ) -> PollResult:
        model = handle.data.get("model", "")
        # Newer fal answers name the failure on the status already; the result
        # call then carries the model's own error body, which says more.
        failed = bool(status.get("error"))
        try:
            body, response = await self.http.request_json(
                "GET", handle.data["response_url"], idempotent=True, ctx=ctx, model=model
            )
        except ProviderError as error:
            if error.retryable and not failed and "falErrorType" not in error.metadata:
                raise  # a hiccup fetching the result: the runner polls again
            return PollResult(VendorState.FAILED, progress, error=self._job_failure(error))
        video = body.get("video") if isinstance(body, Mapping) else None
        url = video.get("url") if isinstance(video, Mapping) else None
        if not isinstance(url, str) or not url:
            raise ProviderBadResponse(
                "pika (fal) finished without a video url",
                provider=self.name,
                model=model,
                vendor_request_id=handle.vendor_job_id,
                http_status=response.status_code,
            )
        metadata = {}
        metrics = status.get("metrics")
        if isinstance(metrics, Mapping) and isinstance(metrics.get("inference_time"), (int, float)):
            metadata["inferenceSeconds"] = f"{metrics['inference_time']:.3f}"
        content_type = video.get("content_type")
        output = Output(
            url=url,
            content_type=content_type
            if isinstance(content_type, str) and content_type
            else "video/mp4",
            metadata=metadata,
        )
        return PollResult(VendorState.SUCCEEDED, progress, outputs=[output])

    def _job_failure(self, error: ProviderError) -> MediagenError:
        """A failed request's error: final, since fal already retried it (up to 10 times)."""
        if not error.retryable:
            return error  # content_policy_violation, 422 validation, 404...
        return ProviderJobFailed(
            error.message,
            provider=self.name,
            model=error.model,
            vendor_request_id=error.vendor_request_id,
            http_status=error.http_status,
            metadata={k: v for k, v in error.metadata.items() if k == "falErrorType"},
        )

    async def cancel(self, handle: VendorHandle, ctx: JobContext) -> bool:
        model = handle.data.get("model", "")
        try:
            await self.http.request_json(
                "PUT", handle.data["cancel_url"], idempotent=True, ctx=ctx, model=model
            )
        except ProviderError as error:
            if error.http_status not in (400, 404):
                raise
            # ALREADY_COMPLETED or NOT_FOUND: nothing is left running at fal.
            log.info(
                "pika cancel found nothing to stop",
                request_id=handle.vendor_job_id,
                status=error.http_status,
            )
        return True

    def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.http.open_stream(
            output.url, ctx=ctx, max_bytes=self.max_output_bytes, model=handle.data.get("model", "")
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- errors ---------------------------------------------------------------

    def _classify(self, response: httpx.Response, body: Any) -> MediagenError | None:
        """fal's error headers on top of the shared classification.

        ``X-Fal-Retryable`` says whether the same request may succeed later, and
        ``X-Fal-Error-Type`` (or ``error_type`` in the body) names infrastructure
        failures such as ``runner_server_error``.
        """
        if response.status_code < 400:
            return None
        error = classify(response, self.name, body=body)
        retryable = response.headers.get("x-fal-retryable", "").strip().lower()
        if retryable in ("true", "false"):
            error.retryable = retryable == "true"
        error_type = response.headers.get("x-fal-error-type") or (
            body.get("error_type") if isinstance(body, Mapping) else None
        )
        if isinstance(error_type, str) and error_type:
            error.metadata["falErrorType"] = error_type[:80]
        return error
