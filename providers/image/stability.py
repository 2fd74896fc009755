"""Stability AI text-to-image through the v2beta Stable Image API (Ultra, Core, SD 3.5).

``POST /v2beta/stable-image/generate/{ultra|core|sd3}`` takes a multipart form
(``prompt``, ``negative_prompt``, ``aspect_ratio``, ``seed``, ``output_format``,
``style_preset``; for sd3 also ``model``, ``mode`` and ``cfg_scale``) and
answers synchronously with the image.

Choices where the vendor leaves one to us:

- ``Accept: image/*``: the answer is the raw PNG/JPEG/WebP, with ``seed`` and
  ``finish-reason`` in headers. The JSON form would carry the same image as
  base64 (a third larger, decoded in memory) for no extra information.
- ``finish-reason: CONTENT_FILTERED`` comes with HTTP 200 and a blurred image;
  the shared HTTP layer turns it into ContentRejected, so a blurred image is
  never stored as a success. 403 ``content_moderation`` is ContentRejected too.
- The API has no jobs: ``submit`` only records the form (nothing is sent),
  ``poll`` reports success at once with one Output per requested image, and
  ``open_output`` makes the paid call for that image and streams its bytes.
  ``count`` > 1 is therefore ``count`` calls, one per artifact; with a seed,
  image ``i`` uses ``seed + i`` so the images differ and stay reproducible.
  A failed generation is not charged by Stability, so the runner may retry an
  output; a connection lost after Stability answered can bill an image twice.
- width/height, quality and input images are refused: the API takes an aspect
  ratio (about one megapixel per image) and this adapter is text-to-image.
- The sd3 family's pre-3.5 names (sd3-large, sd3-large-turbo, sd3-medium) have
  been served by their 3.5 equivalents since 2025-04-17; they stay listed as
  retired and the 3.5 name is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers.base import (
    JobContext,
    Output,
    PollResult,
    Provider,
    VendorHandle,
    VendorState,
    format_name,
    make_cost,
    provider_options,
)
from providers.errors import InvalidArgument, ProviderBadResponse
from providers.http import CHUNK_SIZE, MAX_RESPONSE_BYTES
from providers.stability_common import (
    CREDIT_MICROS,
    CREDIT_NOTE,
    KEY_ENV,
    NOT_CONFIGURED,
    SEED_MAX,
    multipart,
    stability_http,
)

ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
FORMATS = ("png", "jpeg", "webp")
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
STYLE_PRESETS = (
    "3d-model",
    "analog-film",
    "anime",
    "cinematic",
    "comic-book",
    "digital-art",
    "enhance",
    "fantasy-art",
    "isometric",
    "line-art",
    "low-poly",
    "modeling-compound",
    "neon-punk",
    "origami",
    "photographic",
    "pixel-art",
    "tile-texture",
)
MAX_PROMPT_CHARS = 10_000
#: Each image is its own call; ten bounds the spend of one job.
MAX_COUNT = 10
DOCS = "https://platform.stability.ai/docs/api-reference#tag/Generate"


@dataclass(frozen=True)
class ImageModel:
    name: str
    endpoint: str
    credits: float
    #: The sd3 endpoint's ``model`` field ('' for ultra and core).
    vendor_model: str = ""
    retired_note: str = ""

    @property
    def path(self) -> str:
        return f"/v2beta/stable-image/generate/{self.endpoint}"


_REROUTED = "since 2025-04-17 Stability serves {0} for this name; {0} is sent"
MODELS: dict[str, ImageModel] = {
    m.name: m
    for m in (
        ImageModel("core", "core", 3),
        ImageModel("ultra", "ultra", 8),
        ImageModel("sd3.5-large", "sd3", 6.5, "sd3.5-large"),
        ImageModel("sd3.5-large-turbo", "sd3", 4, "sd3.5-large-turbo"),
        ImageModel("sd3.5-medium", "sd3", 3.5, "sd3.5-medium"),
        ImageModel("sd3.5-flash", "sd3", 2.5, "sd3.5-flash"),
        ImageModel("sd3-large", "sd3", 6.5, "sd3.5-large", _REROUTED.format("sd3.5-large")),
        ImageModel(
            "sd3-large-turbo", "sd3", 4, "sd3.5-large-turbo", _REROUTED.format("sd3.5-large-turbo")
        ),
        ImageModel("sd3-medium", "sd3", 3.5, "sd3.5-medium", _REROUTED.format("sd3.5-medium")),
    )
}
DEFAULT_MODEL = "core"


def _seed_for(seed: int, index: int) -> int:
    """Image ``index``'s seed: 0 stays 0 (random); others step through 1..SEED_MAX."""
    return seed if not seed else (seed - 1 + index) % SEED_MAX + 1


class StabilityImageProvider(Provider):
    """Stable Image Ultra, Core and SD 3.5 (v2beta), one synchronous call per image."""

    name = "stability"
    display_name = "Stability AI Stable Image"
    media_type = common_pb2.MEDIA_TYPE_IMAGE
    credential_env = KEY_ENV
    preference = 30

    def __init__(self, settings) -> None:
        self.http, self.configured = stability_http(self.name, settings)
        self.max_image_bytes = min(settings.max_output_bytes, MAX_RESPONSE_BYTES)
        self._entry = self._build_entry()

    # --- catalog -----------------------------------------------------------

    def _build_entry(self) -> catalog_pb2.Provider:
        capabilities = ["text_to_image"]
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(
                aspect_ratios=list(ASPECT_RATIOS),
                max_count=MAX_COUNT,
                formats=list(FORMATS),
                max_prompt_characters=MAX_PROMPT_CHARS,
            ),
            prices=[
                catalog_pb2.Price(
                    model=m.name,
                    unit=common_pb2.PRICE_UNIT_CREDIT,
                    unit_price_micros=CREDIT_MICROS,
                    note=f"{m.credits:g} credits per image; {CREDIT_NOTE}",
                )
                for m in MODELS.values()
            ],
            models=[
                catalog_pb2.Model(
                    name=m.name,
                    default=m.name == DEFAULT_MODEL,
                    retired=bool(m.retired_note),
                    retired_note=m.retired_note,
                    capabilities=capabilities,
                )
                for m in MODELS.values()
            ],
            configured=self.configured,
            not_configured_reason="" if self.configured else NOT_CONFIGURED,
            documentation_uri=DOCS,
            notes=[
                "style maps to style_preset: " + ", ".join(STYLE_PRESETS),
                "provider_options.cfg_scale (1-10) for the sd3 models",
                "count > 1 makes one vendor call per image",
                "takes aspect_ratio (about 1 megapixel), not width/height",
            ],
        )

    def describe(self) -> catalog_pb2.Provider:
        entry = catalog_pb2.Provider()
        entry.CopyFrom(self._entry)
        return entry

    # --- before any vendor call ----------------------------------------------

    def validate(self, request: Message) -> None:
        super().validate(request)
        model = MODELS.get(request.model or DEFAULT_MODEL)
        if model is None:
            raise InvalidArgument.field(
                "model", f"unknown model for stability; known: {', '.join(MODELS)}", "UNKNOWN_MODEL"
            )
        if request.width or request.height:
            raise InvalidArgument.field(
                "width",
                "stability takes aspect_ratio (about 1 megapixel per image), not an exact size",
                "UNSUPPORTED_FIELD",
            )
        if request.quality:
            raise InvalidArgument.field(
                "quality",
                "stability has no quality tiers: choose a model instead",
                "UNSUPPORTED_FIELD",
            )
        if request.HasField("input_image"):
            raise InvalidArgument.field(
                "input_image", "the stability adapter is text-to-image only", "UNSUPPORTED_FIELD"
            )
        if request.style and request.style not in STYLE_PRESETS:
            raise InvalidArgument.field(
                "style", "must be one of " + ", ".join(STYLE_PRESETS), "UNSUPPORTED_VALUE"
            )
        if request.HasField("seed") and not 0 <= request.seed <= SEED_MAX:
            raise InvalidArgument.field("seed", f"must be from 0 to {SEED_MAX}", "OUT_OF_RANGE")
        for key, value in provider_options(request).items():
            if key != "cfg_scale":
                raise InvalidArgument.field(
                    f"provider_options.{key}",
                    "not taken by stability; known: cfg_scale",
                    "UNSUPPORTED_FIELD",
                )
            if model.endpoint != "sd3":
                raise InvalidArgument.field(
                    "provider_options.cfg_scale",
                    "taken by the sd3 models only",
                    "UNSUPPORTED_FIELD",
                )
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 1 <= value <= 10
            ):
                raise InvalidArgument.field(
                    "provider_options.cfg_scale", "must be a number from 1 to 10", "OUT_OF_RANGE"
                )

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        spec = MODELS.get(model or DEFAULT_MODEL, MODELS[DEFAULT_MODEL])
        images = request.count or 1
        return make_cost(
            spec.credits * images,
            common_pb2.PRICE_UNIT_CREDIT,
            CREDIT_MICROS,
            common_pb2.COST_BASIS_ESTIMATED,
        )

    # --- the job ------------------------------------------------------------

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        """Nothing is sent yet: each image is made by its own call in ``open_output``."""
        spec = MODELS[model or DEFAULT_MODEL]
        fmt = format_name(request) or FORMATS[0]
        fields: dict[str, Any] = {"prompt": request.prompt, "output_format": fmt}
        if request.negative_prompt:
            fields["negative_prompt"] = request.negative_prompt
        if request.aspect_ratio:
            fields["aspect_ratio"] = request.aspect_ratio
        if request.style:
            fields["style_preset"] = request.style
        if spec.vendor_model:
            fields["model"] = spec.vendor_model
            fields["mode"] = "text-to-image"
            cfg_scale = provider_options(request).get("cfg_scale")
            if cfg_scale is not None:
                fields["cfg_scale"] = f"{cfg_scale:g}"
        return VendorHandle(
            vendor_job_id="",
            data={
                "model": spec.name,
                "fields": fields,
                "seed": int(request.seed) if request.HasField("seed") else 0,
                "count": request.count or 1,
            },
        )

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        fmt = handle.data["fields"]["output_format"]
        return PollResult(
            VendorState.SUCCEEDED,
            outputs=[
                Output(content_type=CONTENT_TYPES[fmt], data={"index": index})
                for index in range(handle.data["count"])
            ],
        )

    @asynccontextmanager
    async def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        model = handle.data["model"]
        fields = dict(handle.data["fields"])
        seed = _seed_for(handle.data["seed"], output.data.get("index", 0))
        if seed:
            fields["seed"] = seed
        response = await self.http.request(
            "POST",
            MODELS[model].path,
            files=multipart(fields),
            headers={"Accept": "image/*"},
            idempotent=False,
            ctx=ctx,
            model=model,
            max_bytes=self.max_image_bytes,
        )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/") or not response.content:
            raise ProviderBadResponse(
                f"stability answered HTTP {response.status_code} with {content_type or 'no content type'} "
                "instead of an image",
                provider=self.name,
                model=model,
                http_status=response.status_code,
                retryable=False,  # asking again would pay again for the same answer
            )
        # Kept on the artifact: the seed reproduces this image.
        for header, key in (
            ("seed", "seed"),
            ("finish-reason", "finishReason"),
            ("x-request-id", "vendorRequestId"),
        ):
            if response.headers.get(header):
                output.metadata[key] = response.headers[header][:128]
        yield _chunks(response.content)

    async def aclose(self) -> None:
        await self.http.aclose()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    """The image Stability answered with, as storage-sized chunks."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])
