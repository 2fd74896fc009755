"""Luma AI Dream Machine API (``api.lumalabs.ai/dream-machine/v1``): Ray 2 video.

The calls, as Luma's ``lumaai`` SDK makes them (JSON, snake_case,
``Authorization: Bearer <key>``, no version header)::

    POST   /generations/video   {generation_type: "video", model, prompt, aspect_ratio,
                                 duration: "5s"|"9s", resolution, loop?, keyframes?}  -> Generation
    GET    /generations/{id}    -> Generation {id, state, failure_reason, assets: {video}}
    DELETE /generations/{id}    -> removes the generation (Luma's only cancel-like call)

``state`` is ``queued`` -> ``dreaming`` -> ``completed`` (the MP4 is
``assets.video``) or ``failed`` (``failure_reason``, e.g. "Frame moderation
failed"). There is no progress figure. ``model`` is required in practice
(ray-2, ray-flash-2, ray-1-6); ``duration`` and ``resolution`` are strings and
apply to the Ray 2 models only. Input images go by URL only
(``keyframes.frame0 = {"type": "image", "url"}``); Dream Machine has no upload
and takes no data URI. So the caller's https URL is passed as is, and an
uploaded asset as a presigned URL of the stored file, which needs S3 storage:
with local storage an asset is refused at Generate (FAILED_PRECONDITION,
``INPUT_URL_UNAVAILABLE``, naming the ``storage`` setting), and so are inline
bytes (INVALID_ARGUMENT: there is nothing Luma could fetch).

Why the newer Luma Agents API (``agents.lumalabs.ai/v1``, model ray-3.2) is not
a model option here: it is a second API with its own key
(``LUMA_AGENTS_API_KEY``), host, request shape and SDK, so one provider would
be "configured" for half its models; it has no cancel or delete call; no Ray 3.2
price could be confirmed, so no estimate could rest on a published figure; and
its schema was still moving between SDK snapshots (360p tier, keyframe lists).
It belongs in its own adapter once its price is known. Dream Machine is not
retired: Luma still serves it and documents it.

Price: Luma bills video by generated pixels. The per-second prices here come
from $0.0064 per million pixels for ray-2 and $0.0022 for ray-flash-2 at
24 fps with a 16:9 frame of the chosen resolution, which gives the ~$0.08/s
third parties cite for ray-2 at 540p. ray-1-6 has no figure of its own and is
priced as ray-2 at 720p.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

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
from providers.secrets import env_secret

DEFAULT_BASE_URL = "https://api.lumalabs.ai/dream-machine/v1"
DOCS = "https://docs.lumalabs.ai/docs/api"
#: The SDK's name first, then the provider specification's.
KEY_ENV = ("LUMAAI_API_KEY", "LUMA_API_KEY")
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21")
RESOLUTIONS = ("540p", "720p", "1080p", "4k")
DEFAULT_RESOLUTION = "720p"
MIN_PROMPT_CHARS = 3
MAX_PROMPT_CHARS = 5000
FRAME_RATE = 24
FRAME_SIZES = {"540p": (960, 540), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
MODERATION_FAILURE = re.compile(r"moderation|blacklist", re.IGNORECASE)
INPUT_FAILURE = re.compile(
    r"user input frame|image too large|unsupported format|corrupt", re.IGNORECASE
)


@dataclass(frozen=True)
class LumaModel:
    name: str
    usd_per_megapixel: float
    #: Seconds it makes; the first is the default.
    durations: tuple[int, ...]
    #: Whether it takes ``duration`` and ``resolution`` (the Ray 2 models do).
    ray2_options: bool

    def price_per_second(self, resolution: str) -> int:
        width, height = FRAME_SIZES[resolution if self.ray2_options else DEFAULT_RESOLUTION]
        return usd(self.usd_per_megapixel * width * height * FRAME_RATE / 1e6)


MODELS: dict[str, LumaModel] = {
    m.name: m
    for m in (
        LumaModel("ray-2", 0.0064, (5, 9), True),
        LumaModel("ray-flash-2", 0.0022, (5, 9), True),
        LumaModel("ray-1-6", 0.0064, (5,), False),
    )
}
DEFAULT_MODEL = "ray-2"


class LumaVideo(Provider):
    """Luma Dream Machine (Ray 2) through Luma's Dream Machine API."""

    name = "luma"
    display_name = "Luma AI Dream Machine"
    media_type = common_pb2.MEDIA_TYPE_VIDEO
    credential_env = KEY_ENV
    preference = 30

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        self.base_url = base_url_from_env("LUMA", base_url_from_env("LUMAAI", DEFAULT_BASE_URL))
        self._key, _ = env_secret(*KEY_ENV)
        self.http: VendorHTTP | None = None
        if self._key:
            allow = bool(settings.allow_private_urls)
            self.http = VendorHTTP(
                self.name,
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {self._key}"},
                url_policy=UrlPolicy(allow_http=allow, allow_private=allow),
            )

    # --- catalog ---------------------------------------------------------------

    def describe(self) -> catalog_pb2.Provider:
        prices = []
        for model in MODELS.values():
            for resolution in RESOLUTIONS if model.ray2_options else (DEFAULT_RESOLUTION,):
                note = (
                    f"{resolution}: ${model.usd_per_megapixel}/megapixel at 24 fps (Luma bills generated "
                    "pixels; ~$0.08/s for ray-2 at 540p per third-party price lists; not confirmed first-hand)"
                    if model.ray2_options
                    else "no price of its own found; priced as ray-2 at 720p"
                )
                prices.append(
                    catalog_pb2.Price(
                        model=model.name,
                        unit=common_pb2.PRICE_UNIT_SECOND,
                        unit_price_micros=model.price_per_second(resolution),
                        note=note,
                    )
                )
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=["text_to_video", "image_to_video"],
            limits=catalog_pb2.ProviderLimits(
                allowed_durations_seconds=[5, 9],
                aspect_ratios=list(ASPECT_RATIOS),
                max_prompt_characters=MAX_PROMPT_CHARS,
                input_forms=["url"],
            ),
            prices=prices,
            models=[
                catalog_pb2.Model(
                    name=m.name,
                    default=m.name == DEFAULT_MODEL,
                    capabilities=["text_to_video", "image_to_video"],
                )
                for m in MODELS.values()
            ],
            configured=self._key is not None,
            not_configured_reason="" if self._key else f"set {KEY_ENV[0]} (or {KEY_ENV[1]})",
            documentation_uri=DOCS,
            notes=[
                "duration_seconds: 5 or 9 (ray-1-6: 5 only); prompt: 3 to 5000 characters",
                "input_image: by URL only (the first frame): an https URL, or an asset when the server "
                "stores on S3 (sent as a presigned URL); Dream Machine takes no inline images",
                "provider_options: resolution (540p|720p|1080p|4k, default 720p; Ray 2 models), loop (bool)",
                "the Luma Agents API (ray-3.2) is not offered here: separate key and API, no cancel, "
                "no confirmed price",
            ],
        )

    # --- request checks -----------------------------------------------------------

    def _check(
        self, request: Message, model_name: str = ""
    ) -> tuple[LumaModel, str, int, dict[str, Any], list[FieldViolation]]:
        name = model_name or request.model or DEFAULT_MODEL
        model = MODELS.get(name)
        if model is None:
            raise InvalidArgument.field(
                "model", f"unknown model for luma; known: {', '.join(MODELS)}", "UNKNOWN_MODEL"
            )
        out: list[FieldViolation] = []
        if len(request.prompt.strip()) < MIN_PROMPT_CHARS:
            out.append(
                FieldViolation(
                    "prompt", f"at least {MIN_PROMPT_CHARS} characters for Luma", "TOO_SHORT"
                )
            )
        if len(request.prompt) > MAX_PROMPT_CHARS:
            out.append(
                FieldViolation(
                    "prompt", f"at most {MAX_PROMPT_CHARS} characters for Luma", "TOO_LONG"
                )
            )
        aspect = request.aspect_ratio or "16:9"
        if aspect not in ASPECT_RATIOS:
            out.append(
                FieldViolation(
                    "aspect_ratio",
                    "must be one of " + ", ".join(ASPECT_RATIOS),
                    "UNSUPPORTED_VALUE",
                )
            )
        seconds = model.durations[0]
        if request.duration_seconds:
            rounded = round(request.duration_seconds)
            if abs(request.duration_seconds - rounded) > 1e-6 or rounded not in model.durations:
                allowed = " or ".join(map(str, model.durations))
                out.append(
                    FieldViolation(
                        "duration_seconds", f"{name} makes {allowed} seconds", "UNSUPPORTED_VALUE"
                    )
                )
            else:
                seconds = rounded
        if request.width or request.height:
            out.append(
                FieldViolation(
                    "width",
                    "Luma takes no frame size; use aspect_ratio and resolution",
                    "UNSUPPORTED",
                )
            )
        for field_name, present in (
            ("fps", bool(request.fps)),
            ("seed", request.HasField("seed")),
            ("negative_prompt", bool(request.negative_prompt)),
        ):
            if present:
                out.append(
                    FieldViolation(
                        field_name, "Luma's Dream Machine API does not take it", "UNSUPPORTED"
                    )
                )

        body: dict[str, Any] = {
            "generation_type": "video",
            "model": name,
            "prompt": request.prompt,
            "aspect_ratio": aspect,
        }
        resolution = DEFAULT_RESOLUTION
        if model.ray2_options:
            body["duration"] = f"{seconds}s"
        options = provider_options(request)
        for key, value in options.items():
            where = f"provider_options.{key}"
            if key == "resolution":
                if not model.ray2_options:
                    out.append(FieldViolation(where, f"{name} takes no resolution", "UNSUPPORTED"))
                elif value not in RESOLUTIONS:
                    out.append(
                        FieldViolation(
                            where, "must be one of " + ", ".join(RESOLUTIONS), "UNSUPPORTED_VALUE"
                        )
                    )
                else:
                    resolution = value
            elif key == inputs.FIT_OPTION:
                out += inputs.fit_option_problems(options)  # Luma fetches the image itself: nothing to fit
            elif key == "loop":
                if not isinstance(value, bool):
                    out.append(FieldViolation(where, "must be true or false", "INVALID_FIELD"))
                else:
                    body["loop"] = value
            else:
                out.append(
                    FieldViolation(
                        where, "unknown option; luma takes resolution, loop, fit_input", "UNSUPPORTED"
                    )
                )
        if model.ray2_options:
            body["resolution"] = resolution
        if request.HasField("input_image"):
            image = request.input_image
            source = image.WhichOneof("source")
            if source == "uri" and image.uri.startswith("https://"):
                body["keyframes"] = {"frame0": {"type": "image", "url": image.uri}}
            elif source == "asset_id":
                pass  # a presigned URL of the stored asset, at submit (validate_input checks one can be had)
            elif source == "uri":
                out.append(
                    FieldViolation(
                        "input_image.uri", "must be an https URL Luma can fetch", "INVALID_FORMAT"
                    )
                )
            else:
                out.append(
                    FieldViolation(
                        "input_image",
                        "Luma's Dream Machine API takes images by URL only: set input_image.uri, or upload "
                        "the image as an asset (with S3 storage)",
                        "UNSUPPORTED",
                    )
                )
        return model, resolution, seconds, body, out

    def validate(self, request: Message) -> None:
        handled = ("duration_seconds", "aspect_ratio", "prompt")
        violations = [
            v for v in check_limits(self.describe().limits, request) if v.field not in handled
        ]
        violations += self._check(request)[4]
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                metadata={"provider": self.name},
                field_violations=violations,
            )

    # --- cost -----------------------------------------------------------------------

    def _price(self, request: Message, model_name: str) -> tuple[int, int]:
        try:
            model, resolution, seconds, _, _ = self._check(request, model_name)
        except InvalidArgument:
            model, resolution, seconds = MODELS[DEFAULT_MODEL], DEFAULT_RESOLUTION, 5
        return seconds, model.price_per_second(resolution)

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        seconds, price = self._price(request, model)
        return make_cost(
            seconds, common_pb2.PRICE_UNIT_SECOND, price, common_pb2.COST_BASIS_ESTIMATED
        )

    def final_cost(
        self, request: Message, model: str, result: PollResult, artifacts: list[StoredArtifact]
    ) -> common_pb2.Cost:
        """Luma reports no usage and bills the pixels it made: the measured clip length."""
        seconds, price = self._price(request, model)
        measured = (
            artifacts[0].duration_seconds
            if artifacts and artifacts[0].duration_seconds > 0
            else 0.0
        )
        return make_cost(
            round(measured, 3) or seconds,
            common_pb2.PRICE_UNIT_SECOND,
            price,
            common_pb2.COST_BASIS_MEASURED,
        )

    # --- the job ---------------------------------------------------------------------

    def _client(self) -> VendorHTTP:
        if self.http is None:
            raise ProviderNotConfigured(
                f"provider luma is not configured: set {KEY_ENV[0]}", provider=self.name
            )
        return self.http

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        http = self._client()
        spec, _, _, body, problems = self._check(request, model)
        if problems:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in problems),
                field_violations=problems,
            )
        media = inputs.from_request(request, ctx)
        if media is not None and "keyframes" not in body:
            url = await media.public_url(inputs.url_ttl(ctx))
            if url is None:
                raise inputs.no_public_url(media, self.name)
            body["keyframes"] = {"frame0": {"type": "image", "url": url}}
        generation, response = await http.request_json(
            "POST", "/generations/video", json=body, idempotent=False, ctx=ctx, model=spec.name
        )
        generation_id = generation.get("id") if isinstance(generation, dict) else None
        if not isinstance(generation_id, str) or not generation_id:
            raise ProviderBadResponse(
                "luma accepted the generation but its answer has no id",
                provider=self.name,
                model=spec.name,
                http_status=response.status_code,
                retryable=False,
            )
        return VendorHandle(vendor_job_id=generation_id, data={"model": spec.name})

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        model = handle.data.get("model", "")
        generation, _ = await self._client().request_json(
            "GET", f"/generations/{handle.vendor_job_id}", idempotent=True, ctx=ctx, model=model
        )
        if not isinstance(generation, dict):
            raise ProviderBadResponse(
                "luma answered a poll without a generation", provider=self.name, model=model
            )
        state = generation.get("state")
        if state == "queued":
            return PollResult(VendorState.QUEUED, ProgressInfo(vendor_status=state))
        if state in ("dreaming", "processing"):
            return PollResult(VendorState.RUNNING, ProgressInfo(vendor_status=state))
        if state == "completed":
            video = (generation.get("assets") or {}).get("video")
            if not isinstance(video, str) or not video:
                raise ProviderBadResponse(
                    "luma reported completed without assets.video",
                    provider=self.name,
                    model=model,
                    retryable=False,
                )
            output = Output(
                url=video,
                content_type="video/mp4",
                metadata={"lumaGenerationId": handle.vendor_job_id},
            )
            return PollResult(
                VendorState.SUCCEEDED,
                ProgressInfo(fraction=1.0, vendor_status=state),
                outputs=[output],
            )
        if state == "failed":
            reason = str(generation.get("failure_reason") or "the generation failed")[:500]
            return PollResult(
                VendorState.FAILED,
                ProgressInfo(vendor_status=state, message=reason),
                error=self._failure(reason, model),
            )
        raise ProviderBadResponse(
            f"luma answered an unknown generation state {str(state)[:40]!r}",
            provider=self.name,
            model=model,
        )

    def _failure(self, reason: str, model: str) -> MediagenError:
        message = f"luma generation failed: {reason}"
        common: dict[str, Any] = {
            "provider": self.name,
            "model": model,
            "metadata": {"vendorStatus": "failed"},
        }
        if MODERATION_FAILURE.search(reason):
            return ContentRejected(message, **common)
        if INPUT_FAILURE.search(reason):
            return ProviderInvalidRequest(message, **common)
        return ProviderJobFailed(message, **common)

    async def cancel(self, handle: VendorHandle, ctx: JobContext) -> bool:
        """Delete the generation: Dream Machine's only way to drop one (it has no cancel)."""
        try:
            await self._client().request(
                "DELETE",
                f"/generations/{handle.vendor_job_id}",
                idempotent=True,
                ctx=ctx,
                model=handle.data.get("model", ""),
            )
        except ProviderJobFailed as err:
            if err.http_status != 404:
                raise
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
