"""OpenAI image generation: ``POST /v1/images/generations``.

Models: the GPT image models (``gpt-image-1`` is the default; ``gpt-image-1-mini``,
``gpt-image-1.5``, ``gpt-image-2``, ``chatgpt-image-latest``) and ``dall-e-3``,
which OpenAI shut down on 2026-05-12 and which stays only as a retired option
for self-hosted stand-ins of the old contract.

The call is synchronous: the images arrive in the answer to the POST, base64
inside JSON (GPT image models always; dall-e-3 when asked for ``b64_json``),
or as URLs valid for 60 minutes (dall-e-3 ``response_format=url``). So
``submit`` does the paid call and ``poll`` answers SUCCEEDED at once.

Where the bytes wait between ``submit`` and ``open_output`` (the spool)
    A base64 image can be several MB and arrives inside JSON. It must not go
    into the ``VendorHandle`` (stored in the job database), and it cannot be
    asked for again without paying again. So ``submit`` reads the answer as
    a stream and decodes each ``b64_json`` value into its own spool file as it
    arrives (memory stays at one chunk plus the small rest of the JSON); the
    handle keeps only the files' paths. Trade-offs:

    - The spool lives under ``<data_dir>/spool/openai-images`` rather than in
      /tmp, so a server restarted between submit and storing finds the images
      again (a job's handle survives restarts; /tmp may not).
    - Files are deleted once the job's last image is stored (not after each
      one: a restart in the middle of storing re-stores every output), when
      storing fails for good, and when the job is cancelled or times out
      (``cancel``). Files that outlive all of that (a crash, a job that failed
      while storing an earlier output) are swept when they are older than the
      longest job can live (``max_job_timeout`` plus an hour), at start-up and
      at each submit.
    - A spool file that is gone (another machine, a wiped data dir) cannot be
      re-fetched: the job fails with PROVIDER_OUTPUT_UNAVAILABLE.

Retries: the POST is not idempotent (OpenAI takes no idempotency key for
images), so it is repeated only when OpenAI refused it before doing any work:
a connection that never opened, or a 429 ``rate_limit_exceeded`` (after its
Retry-After). A 429 ``insufficient_quota`` is PROVIDER_OUT_OF_CREDIT and is
never retried.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers.base import (
    JobContext,
    Output,
    PollResult,
    Provider,
    StoredArtifact,
    VendorHandle,
    VendorState,
    VendorUsage,
    check_limits,
    format_name,
    make_cost,
    provider_options,
    usd,
)
from providers.errors import (
    FieldViolation,
    InvalidArgument,
    MediagenError,
    OutputTooLarge,
    ProviderBadResponse,
    ProviderOutputUnavailable,
    ProviderRateLimited,
    ProviderRetired,
)
from providers.http import (
    UrlPolicy,
    VendorHTTP,
    base_url_from_env,
    vendor_error_codes,
    vendor_message,
)
from providers.retry import RetryPolicy
from providers.secrets import env_secret
from providers.storage import CHUNK_SIZE

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DOCUMENTATION_URI = "https://platform.openai.com/docs/api-reference/images/create"
DEFAULT_MODEL = "gpt-image-1"
DALL_E_3 = "dall-e-3"
DALL_E_RETIRED_NOTE = (
    "OpenAI shut dall-e-3 down on 2026-05-12 (third-party reports of the deprecations page); "
    "kept for stand-ins of the old contract, never picked by default"
)

#: A GPT image generation can take a minute or two: a generous read timeout.
TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=10.0)
#: Retries of the POST after a 429 rate_limit_exceeded (Retry-After honoured).
RETRY = RetryPolicy(max_attempts=4)

GPT_IMAGE_MODELS = (
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "chatgpt-image-latest",
)
#: Models that also take any WxH (sides divisible by 16, 1:3..3:1, at most 3840x2160).
FREE_SIZE_MODELS = frozenset({"gpt-image-2", "gpt-image-2-2026-04-21"})
GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536")
DALL_E_3_SIZES = ("1024x1024", "1792x1024", "1024x1792")
GPT_RATIOS = {"1:1": "1024x1024", "3:2": "1536x1024", "2:3": "1024x1536"}
DALL_E_3_RATIOS = {"1:1": "1024x1024", "7:4": "1792x1024", "4:7": "1024x1792"}
GPT_QUALITIES = ("low", "medium", "high", "auto")
DALL_E_3_QUALITIES = ("standard", "hd")
DALL_E_3_STYLES = ("vivid", "natural")
MAX_FREE_SIDE = 3840
MAX_FREE_PIXELS = 3840 * 2160
GPT_MAX_PROMPT = 32_000
DALL_E_3_MAX_PROMPT = 4_000
MAX_COUNT = 10

#: provider_options each model family accepts, passed through under the same names.
GPT_OPTIONS = ("background", "moderation", "output_compression", "user")
DALL_E_OPTIONS = ("response_format", "user")

# --- prices (USD per image) ---------------------------------------------------
# gpt-image-1 and dall-e-3: shared/vendors/image-and-storage.md (third-party
# figures several sources agree on). gpt-image-1-mini: llmreference.com's
# OpenAI page (third-party). Keys: (quality, "square" | "wide").
_GPT_IMAGE_1_PRICES = {
    ("low", "square"): 0.011,
    ("low", "wide"): 0.016,
    ("medium", "square"): 0.042,
    ("medium", "wide"): 0.063,
    ("high", "square"): 0.167,
    ("high", "wide"): 0.25,
}
_GPT_IMAGE_1_MINI_PRICES = {
    ("low", "square"): 0.005,
    ("low", "wide"): 0.006,
    ("medium", "square"): 0.011,
    ("medium", "wide"): 0.015,
    ("high", "square"): 0.036,
    ("high", "wide"): 0.052,
}
_DALL_E_3_PRICES = {
    ("standard", "square"): 0.040,
    ("standard", "wide"): 0.080,
    ("hd", "square"): 0.080,
    ("hd", "wide"): 0.120,
}
#: Token rates of gpt-image-1 in USD per million: text in, image in, image out.
_TOKEN_RATES = {"gpt-image-1": (5.0, 10.0, 40.0)}
_PRICE_NOTES = {
    "gpt-image-1": "per image by quality and size; billed by tokens ($5/M text in, $10/M image in, "
    "$40/M image out), final cost from the reported usage (shared/vendors/image-and-storage.md)",
    "gpt-image-1-mini": "per image by quality and size (third-party figures: llmreference.com)",
    "dall-e-3": "per image by quality and size (legacy prices, shared/vendors/image-and-storage.md)",
}
_STAND_IN_NOTE = (
    "no published per-image price in our research: gpt-image-1's table is used as a stand-in"
)

#: Spool files older than the longest job plus this are left-overs.
SPOOL_GRACE_SECONDS = 3600.0
SPOOL_MARK = "mediagen-spool:"
#: The JSON around the images (revised prompts, usage) is small; more is not an images answer.
MAX_SKELETON_BYTES = 1024 * 1024
_B64_DECODE_BATCH = 256 * 1024  # base64 characters decoded at a time (a multiple of 4)

_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def _is_dall_e(model: str) -> bool:
    return model.startswith("dall-e")


def _shape(size: str) -> str:
    """'square' or 'wide' (any non-square size) for the price tables."""
    if "x" not in size:
        return "wide"  # auto: the dearer case, so the estimate is an upper bound
    width, height = size.split("x", 1)
    return "square" if width == height else "wide"


def _price_table(model: str) -> tuple[dict[tuple[str, str], float], str]:
    if model == DALL_E_3:
        return _DALL_E_3_PRICES, _PRICE_NOTES["dall-e-3"]
    if model == "gpt-image-1-mini":
        return _GPT_IMAGE_1_MINI_PRICES, _PRICE_NOTES["gpt-image-1-mini"]
    if model == "gpt-image-1":
        return _GPT_IMAGE_1_PRICES, _PRICE_NOTES["gpt-image-1"]
    return _GPT_IMAGE_1_PRICES, _STAND_IN_NOTE


class OpenAIImages(Provider):
    """OpenAI's Images API (generations), GPT image models and the retired dall-e-3."""

    name = "openai"
    display_name = "OpenAI Images"
    media_type = common_pb2.MEDIA_TYPE_IMAGE
    credential_env = ("OPENAI_API_KEY",)
    preference = 20

    def __init__(self, settings) -> None:
        self.settings = settings
        self.api_key, _ = env_secret(*self.credential_env)
        self.max_output_bytes = int(settings.max_output_bytes)
        self.spool_dir = (Path(settings.data_dir) / "spool" / "openai-images").absolute()
        self.spool_max_age = float(settings.max_job_timeout) + SPOOL_GRACE_SECONDS
        headers: dict[str, str] = {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        organization, _ = env_secret("OPENAI_ORG_ID")
        project, _ = env_secret("OPENAI_PROJECT_ID")
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        allow_private = bool(settings.allow_private_urls)
        self.http = VendorHTTP(
            self.name,
            base_url=base_url_from_env("OPENAI", DEFAULT_BASE_URL),
            headers=headers,
            timeout=TIMEOUT,
            retry=RETRY,
            classify_hook=_classify_hook,
            url_policy=UrlPolicy(allow_http=allow_private, allow_private=allow_private),
        )
        self.retry = RETRY
        self._sweep_spool()

    # --- catalog --------------------------------------------------------------

    def describe(self) -> catalog_pb2.Provider:
        capabilities = ["text_to_image"]
        limits = catalog_pb2.ProviderLimits(
            sizes=sorted(set(GPT_SIZES) | set(DALL_E_3_SIZES)),
            aspect_ratios=sorted(set(GPT_RATIOS) | set(DALL_E_3_RATIOS)),
            max_count=MAX_COUNT,
            formats=list(_CONTENT_TYPES),
            max_prompt_characters=GPT_MAX_PROMPT,
        )
        models = [
            catalog_pb2.Model(name=m, default=m == DEFAULT_MODEL, capabilities=capabilities)
            for m in GPT_IMAGE_MODELS
        ]
        models.append(
            catalog_pb2.Model(
                name=DALL_E_3, retired=True, retired_note=DALL_E_RETIRED_NOTE, capabilities=capabilities
            )
        )
        prices = []
        for model in (*GPT_IMAGE_MODELS, DALL_E_3):
            table, note = _price_table(model)
            for (quality, shape), dollars in table.items():
                sizes = "1024x1024" if shape == "square" else "other sizes"
                prices.append(
                    catalog_pb2.Price(
                        model=model,
                        unit=common_pb2.PRICE_UNIT_IMAGE,
                        unit_price_micros=usd(dollars),
                        note=f"quality={quality}, {sizes}: {note}",
                    )
                )
        configured = bool(self.api_key)
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=limits,
            prices=prices,
            models=models,
            configured=configured,
            not_configured_reason="" if configured else "set OPENAI_API_KEY",
            documentation_uri=DOCUMENTATION_URI,
            notes=[
                "GPT image models: sizes 1024x1024, 1536x1024, 1024x1536 (aspect 1:1, 3:2, 2:3) "
                "or auto; quality low|medium|high|auto; format png|jpeg|webp; count 1-10",
                "gpt-image-2: also any WxH with sides divisible by 16, ratio 1:3 to 3:1, "
                "at most 3840x2160",
                "dall-e-3 (retired): sizes 1024x1024, 1792x1024, 1024x1792 (aspect 1:1, 7:4, 4:7); "
                "quality standard|hd; style vivid|natural; count 1; png; prompt at most 4000 characters",
                "provider_options: background, moderation, output_compression, user (GPT image "
                "models); response_format url|b64_json (default url), user (dall-e-3)",
                "negative_prompt, seed and input_image are not offered by this endpoint",
            ],
        )

    # --- validation -------------------------------------------------------------

    def _model(self, request: Message) -> str:
        return request.model or DEFAULT_MODEL

    def validate(self, request: Message) -> None:
        model = self._model(request)
        dall_e = _is_dall_e(model)
        free_size = model in FREE_SIZE_MODELS
        limits = self.describe().limits
        limits.ClearField("sizes")
        limits.ClearField("aspect_ratios")
        if dall_e:
            limits.max_count = 1
            limits.max_prompt_characters = DALL_E_3_MAX_PROMPT
            limits.sizes.extend(DALL_E_3_SIZES)
            limits.aspect_ratios.extend(DALL_E_3_RATIOS)
            limits.ClearField("formats")
            limits.formats.append("png")
        else:
            limits.aspect_ratios.extend(GPT_RATIOS)
            if not free_size:
                limits.sizes.extend(GPT_SIZES)
        out = check_limits(limits, request)
        if free_size and request.width and request.height:
            out += _free_size_problems(request.width, request.height)
        if request.negative_prompt:
            out.append(FieldViolation("negative_prompt", "OpenAI image generation takes no negative prompt", "UNSUPPORTED"))
        if request.HasField("seed"):
            out.append(FieldViolation("seed", "OpenAI image generation takes no seed", "UNSUPPORTED"))
        if request.HasField("input_image"):
            out.append(
                FieldViolation("input_image", "image inputs (edits) are not offered by this provider", "UNSUPPORTED")
            )
        qualities = DALL_E_3_QUALITIES if dall_e else GPT_QUALITIES
        if request.quality and request.quality not in qualities:
            out.append(FieldViolation("quality", f"must be one of {', '.join(qualities)} for {model}", "UNSUPPORTED_VALUE"))
        if request.style and (not dall_e or request.style not in DALL_E_3_STYLES):
            text = "must be vivid or natural" if dall_e else f"{model} takes no style"
            out.append(FieldViolation("style", text, "UNSUPPORTED_VALUE"))
        out += self._option_problems(model, provider_options(request), request)
        if out:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in out),
                metadata={"provider": self.name, "field": out[0].field},
                field_violations=out,
            )

    def _option_problems(self, model: str, options: dict[str, Any], request: Message) -> list[FieldViolation]:
        allowed = DALL_E_OPTIONS if _is_dall_e(model) else GPT_OPTIONS
        out: list[FieldViolation] = []

        def bad(name: str, text: str, reason: str = "UNSUPPORTED_VALUE") -> None:
            out.append(FieldViolation(f"provider_options.{name}", text, reason))

        for name in options:
            if name not in allowed:
                bad(name, f"unknown for {model}; accepted: {', '.join(allowed)}", "UNKNOWN_OPTION")
        fmt = format_name(request) or "png"
        background = options.get("background")
        if "background" in options:
            if background not in ("transparent", "opaque", "auto"):
                bad("background", "must be transparent, opaque or auto")
            elif background == "transparent" and fmt == "jpeg":
                bad("background", "transparent needs format png or webp")
        if "moderation" in options and options["moderation"] not in ("auto", "low"):
            bad("moderation", "must be auto or low")
        if "output_compression" in options:
            value = options["output_compression"]
            if not isinstance(value, (int, float)) or value != int(value) or not 0 <= value <= 100:
                bad("output_compression", "must be a whole number from 0 to 100", "OUT_OF_RANGE")
            elif fmt == "png":
                bad("output_compression", "needs format jpeg or webp")
        if "response_format" in options and options["response_format"] not in ("url", "b64_json"):
            bad("response_format", "must be url or b64_json")
        if "user" in options and (not isinstance(options["user"], str) or len(options["user"]) > 256):
            bad("user", "must be a string of at most 256 characters")
        return out

    # --- cost ---------------------------------------------------------------

    def _size_and_quality(self, request: Message, model: str) -> tuple[str, str]:
        dall_e = _is_dall_e(model)
        if request.width and request.height:
            size = f"{request.width}x{request.height}"
        elif request.aspect_ratio:
            size = (DALL_E_3_RATIOS if dall_e else GPT_RATIOS)[request.aspect_ratio]
        else:
            size = "1024x1024" if dall_e else "auto"
        quality = request.quality or ("standard" if dall_e else "auto")
        return size, quality

    def _unit_price(self, model: str, size: str, quality: str) -> int:
        table, _ = _price_table(model)
        if quality == "auto":
            quality = "high"  # the dearest tier: the estimate is an upper bound
        return usd(table[(quality, _shape(size))])

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        size, quality = self._size_and_quality(request, model)
        count = request.count or 1
        return make_cost(
            count, common_pb2.PRICE_UNIT_IMAGE, self._unit_price(model, size, quality), common_pb2.COST_BASIS_ESTIMATED
        )

    def final_cost(
        self, request: Message, model: str, result: PollResult, artifacts: list[StoredArtifact]
    ) -> common_pb2.Cost:
        if result.usage is not None:
            return super().final_cost(request, model, result, artifacts)
        size, quality = self._size_and_quality(request, model)
        # What OpenAI says it made (GPT image models echo size and quality) beats the request.
        made = result.outputs[0].metadata if result.outputs else {}
        size = made.get("size", size)
        quality = made.get("quality", quality)
        return make_cost(
            len(artifacts) or len(result.outputs),
            common_pb2.PRICE_UNIT_IMAGE,
            self._unit_price(model, size, quality),
            common_pb2.COST_BASIS_MEASURED,
        )

    # --- the job ------------------------------------------------------------

    def _body(self, request: Message, model: str) -> dict[str, Any]:
        options = provider_options(request)
        size, quality = self._size_and_quality(request, model)
        body: dict[str, Any] = {"model": model, "prompt": request.prompt, "n": request.count or 1}
        if size != "auto":
            body["size"] = size
        if request.quality:
            body["quality"] = request.quality
        if _is_dall_e(model):
            if request.style:
                body["style"] = request.style
            body["response_format"] = options.get("response_format", "url")
        else:
            body["output_format"] = format_name(request) or "png"
            if "output_compression" in options:
                body["output_compression"] = int(options["output_compression"])
            for name in ("background", "moderation"):
                if name in options:
                    body[name] = options[name]
        if "user" in options:
            body["user"] = options["user"]
        return body

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        await asyncio.to_thread(self._sweep_spool)
        body = self._body(request, model)
        prefix = f"{re.sub(r'[^A-Za-z0-9_-]', '_', ctx.job_id)}-{secrets.token_hex(4)}"

        async def attempt() -> tuple[Any, list[Path]]:
            return await self._generate(body, model, prefix, ctx)

        answer, paths = await self.retry.run(
            attempt, deadline=ctx.deadline, retry_if=_refused_before_work
        )
        try:
            outputs = _outputs_from(answer, paths, body, self.name, model)
        except BaseException:
            await asyncio.to_thread(_unlink_all, paths)
            raise
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
        return VendorHandle(
            # The Images API has no job id; the creation time and our spool prefix name the call.
            vendor_job_id=f"openai-images-{answer.get('created', int(time.time()))}-{prefix[-8:]}",
            data={"model": model, "outputs": outputs, "usage": usage},
        )

    async def _generate(
        self, body: dict[str, Any], model: str, prefix: str, ctx: JobContext
    ) -> tuple[Any, list[Path]]:
        """One POST, its answer streamed: base64 images go to spool files as they arrive."""
        count = int(body["n"])
        max_answer = count * (self.max_output_bytes * 4 // 3 + 16) + MAX_SKELETON_BYTES
        reader = _ImagesAnswer(self.spool_dir, prefix, self.max_output_bytes, self.name, model)
        try:
            async with self.http.open_stream(
                "images/generations",
                method="POST",
                json=body,
                idempotent=False,
                ctx=ctx,
                max_bytes=max_answer,
                model=model,
                absolute_url_ok=False,
            ) as chunks:
                async for chunk in chunks:
                    await asyncio.to_thread(reader.feed, chunk)
            answer = await asyncio.to_thread(reader.finish)
        except BaseException:
            await asyncio.to_thread(reader.abort)
            raise
        return answer, reader.paths

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        outputs = [
            Output(
                url=item.get("url", ""),
                content_type=item["content_type"],
                metadata=dict(item.get("metadata") or {}),
                data={"index": index, "spool": item.get("spool", "")},
            )
            for index, item in enumerate(handle.data.get("outputs") or [])
        ]
        usage = None
        model = handle.data.get("model", "")
        tokens = handle.data.get("usage")
        if tokens and model in _TOKEN_RATES and outputs:
            total = _token_cost_micros(tokens, _TOKEN_RATES[model])
            # Per image, from what OpenAI reported it charged in tokens.
            usage = _usage_per_image(total, len(outputs))
        return PollResult(VendorState.SUCCEEDED, outputs=outputs, usage=usage)

    async def cancel(self, handle: VendorHandle, ctx: JobContext) -> bool:
        # The images were made (and paid for) during submit; there is nothing to stop
        # at OpenAI. Drop the spooled bytes, which nothing will read now.
        await asyncio.to_thread(_unlink_all, _spool_paths(handle))
        return False

    @contextlib.asynccontextmanager
    async def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        spool = output.data.get("spool")
        model = handle.data.get("model", "")
        if not spool:
            async with self.http.open_stream(
                output.url, ctx=ctx, max_bytes=self.max_output_bytes, model=model
            ) as chunks:
                yield chunks
            return
        path = Path(spool)
        try:
            handle_file = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise ProviderOutputUnavailable(
                f"{self.name}: image {output.data.get('index', 0)} of this job is no longer in the "
                "spool (the server's data directory changed or was cleaned); OpenAI cannot serve it again",
                provider=self.name,
                model=model,
                retryable=False,
            ) from None
        try:
            yield _read_file(handle_file)
        except asyncio.CancelledError:
            raise  # shutdown keeps the spool for the next start; cancel() drops it
        except MediagenError as error:
            if not error.retryable:
                await asyncio.to_thread(_unlink_all, _spool_paths(handle))
            raise
        except BaseException:
            await asyncio.to_thread(_unlink_all, _spool_paths(handle))
            raise
        finally:
            handle_file.close()
        outputs = handle.data.get("outputs") or []
        if output.data.get("index", 0) >= len(outputs) - 1:
            # The last image is stored: the runner stores outputs in order, so all are.
            await asyncio.to_thread(_unlink_all, _spool_paths(handle))

    async def aclose(self) -> None:
        await self.http.aclose()

    def _sweep_spool(self) -> None:
        """Remove spool files older than any job can live (left-overs of crashes)."""
        cutoff = time.time() - self.spool_max_age
        try:
            entries = list(os.scandir(self.spool_dir))
        except OSError:
            return
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


# --- helpers -------------------------------------------------------------------------


def _refused_before_work(error: MediagenError) -> bool:
    """Which failures of the (non-idempotent) POST may be repeated: OpenAI did no work."""
    return isinstance(error, ProviderRateLimited)


def _classify_hook(response: httpx.Response, body: Any) -> MediagenError | None:
    """A retired model's 404 ``model_not_found`` says so (PROVIDER_RETIRED)."""
    if response.status_code < 400 or "model_not_found" not in vendor_error_codes(body):
        return None
    message = vendor_message(body)
    if re.search(r"deprecated|shut down|retired", message, re.IGNORECASE):
        return ProviderRetired(f"openai answered HTTP {response.status_code}: {message[:500]}")
    return None


def _free_size_problems(width: int, height: int) -> list[FieldViolation]:
    problems = []
    if width % 16 or height % 16:
        problems.append("both sides must be divisible by 16")
    if max(width, height) > 3 * min(width, height):
        problems.append("the aspect ratio must be between 1:3 and 3:1")
    if max(width, height) > MAX_FREE_SIDE or width * height > MAX_FREE_PIXELS:
        problems.append("at most 3840x2160")
    return [FieldViolation("width", f"{width}x{height}: {'; '.join(problems)}", "UNSUPPORTED_VALUE")] if problems else []


def _token_cost_micros(usage: dict[str, Any], rates: tuple[float, float, float]) -> int:
    text_rate, image_in_rate, image_out_rate = rates
    details = usage.get("input_tokens_details") or {}
    input_tokens = int(usage.get("input_tokens") or 0)
    image_in = int(details.get("image_tokens") or 0)
    text_in = int(details.get("text_tokens") or max(input_tokens - image_in, 0))
    output_tokens = int(usage.get("output_tokens") or 0)
    dollars = (text_in * text_rate + image_in * image_in_rate + output_tokens * image_out_rate) / 1e6
    return usd(dollars)


def _usage_per_image(total_micros: int, images: int) -> VendorUsage:
    return VendorUsage(units=images, unit=common_pb2.PRICE_UNIT_IMAGE, unit_price_micros=round(total_micros / images))


def _outputs_from(answer: Any, paths: list[Path], body: dict[str, Any], provider: str, model: str) -> list[dict[str, Any]]:
    """The JSON-able description of each image, for the handle."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or not data:
        raise ProviderBadResponse(f"{provider} answered without any image", provider=provider, model=model)
    fmt = answer.get("output_format") or body.get("output_format") or "png"
    content_type = _CONTENT_TYPES.get(str(fmt), "image/png")
    outputs = []
    for item in data:
        if not isinstance(item, dict):
            raise ProviderBadResponse(f"{provider} answered an image entry that is not an object", provider=provider, model=model)
        metadata = {"model": model}
        for name in ("size", "quality", "background", "output_format"):
            if isinstance(answer.get(name), str):
                metadata[name] = answer[name]
        if isinstance(item.get("revised_prompt"), str):
            metadata["revised_prompt"] = item["revised_prompt"]
        entry: dict[str, Any] = {"content_type": content_type, "metadata": metadata}
        b64 = item.get("b64_json")
        if isinstance(b64, str) and b64.startswith(SPOOL_MARK):
            entry["spool"] = str(paths[int(b64[len(SPOOL_MARK):])])
        elif isinstance(item.get("url"), str) and item["url"]:
            entry["url"] = item["url"]
        else:
            raise ProviderBadResponse(
                f"{provider} answered an image with neither b64_json nor url", provider=provider, model=model
            )
        outputs.append(entry)
    return outputs


def _spool_paths(handle: VendorHandle) -> list[Path]:
    return [Path(o["spool"]) for o in handle.data.get("outputs") or [] if o.get("spool")]


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


async def _read_file(handle: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
        yield chunk


# --- the streamed answer ----------------------------------------------------------------

_OUT, _STR, _B64 = "out", "str", "b64"
_SPECIAL = re.compile(rb'["\\]')
_WHITESPACE = frozenset(b" \t\r\n")
_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_MAX_KEY = 32


class _ImagesAnswer:
    """Reads an images answer chunk by chunk; each ``b64_json`` value is decoded into a file.

    Everything else (the skeleton: created, revised prompts, usage) is kept as
    JSON text with each base64 string replaced by ``"mediagen-spool:<n>"`` and
    parsed by ``finish``. Memory holds one chunk, at most 256 KiB of pending
    base64 and the skeleton (at most 1 MiB). Blocking (file writes): run it in
    a thread. A tiny JSON tokenizer: it tracks strings and escapes only, which
    is all it takes to find the values of ``b64_json`` keys.
    """

    def __init__(self, directory: Path, prefix: str, max_image_bytes: int, provider: str, model: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.max_image_bytes = max_image_bytes
        self.provider = provider
        self.model = model
        self.paths: list[Path] = []
        self._skeleton = bytearray()
        self._mode = _OUT
        self._escaped = False  # _STR: the previous byte was a backslash
        self._key = bytearray()
        self._key_overflow = False
        self._last_string: bytes | None = None  # a string just ended (a key, maybe)
        self._value_of: bytes | None = None  # the key whose value comes next
        self._escape = bytearray()  # _B64: an escape sequence being read
        self._b64 = bytearray()
        self._file: BinaryIO | None = None
        self._written = 0

    def bad(self, text: str) -> ProviderBadResponse:
        return ProviderBadResponse(f"{self.provider} answered unreadable JSON: {text}", provider=self.provider, model=self.model)

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._mode is _B64:
                i = self._feed_b64(data, i, n)
            elif self._mode is _STR:
                i = self._feed_str(data, i, n)
            else:
                i = self._feed_out(data, i, n)

    def finish(self) -> Any:
        if self._mode is not _OUT:
            raise self.bad("the answer ended inside a string")
        try:
            return json.loads(self._skeleton)
        except ValueError as exc:
            raise self.bad(str(exc)[:200]) from None

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        _unlink_all(self.paths)

    # --- the three modes ---

    def _append(self, piece: bytes) -> None:
        self._skeleton += piece
        if len(self._skeleton) > MAX_SKELETON_BYTES:
            raise self.bad(f"more than {MAX_SKELETON_BYTES} bytes of JSON besides the images")

    def _feed_out(self, data: bytes, i: int, n: int) -> int:
        start = i
        while i < n:
            byte = data[i]
            if byte == 0x22:  # '"'
                self._append(data[start:i])
                if self._value_of == b"b64_json":
                    self._append(f'"{SPOOL_MARK}{len(self.paths)}"'.encode())
                    self._open_image()
                    self._mode = _B64
                else:
                    self._append(b'"')
                    self._mode = _STR
                    self._key.clear()
                    self._key_overflow = False
                    self._escaped = False
                self._value_of = None
                self._last_string = None
                return i + 1
            if byte == 0x3A:  # ':'
                self._value_of, self._last_string = self._last_string, None
            elif byte not in _WHITESPACE:
                self._value_of = self._last_string = None
            i += 1
        self._append(data[start:n])
        return n

    def _feed_str(self, data: bytes, i: int, n: int) -> int:
        if self._escaped:
            self._escaped = False
            self._take_str(data[i : i + 1])
            return i + 1
        match = _SPECIAL.search(data, i)
        if match is None:
            self._take_str(data[i:n])
            return n
        j = match.start()
        self._take_str(data[i:j])
        if data[j] == 0x5C:  # backslash: the next byte is escaped
            self._take_str(b"\\")
            self._escaped = True
            return j + 1
        self._append(b'"')
        self._mode = _OUT
        self._last_string = None if self._key_overflow else bytes(self._key)
        return j + 1

    def _take_str(self, piece: bytes) -> None:
        self._append(piece)
        if not self._key_overflow:
            self._key += piece
            if len(self._key) > _MAX_KEY:
                self._key_overflow = True
                self._key.clear()

    def _feed_b64(self, data: bytes, i: int, n: int) -> int:
        if self._escape:
            self._escape.append(data[i])
            i += 1
            if self._escape[1:2] == b"u" and len(self._escape) < 6:
                return i
            try:
                char = json.loads(b'"' + bytes(self._escape) + b'"')
            except ValueError:
                raise self.bad("a broken escape inside b64_json") from None
            self._escape.clear()
            if char in "\r\n\t ":
                return i
            self._take_b64(char.encode("utf-8"))
            return i
        match = _SPECIAL.search(data, i)
        j = n if match is None else match.start()
        if j > i:
            self._take_b64(data[i:j])
        if j == n:
            return n
        if data[j] == 0x5C:
            self._escape = bytearray(b"\\")
            return j + 1
        self._close_image()
        self._mode = _OUT
        return j + 1

    # --- images ---

    def _open_image(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.prefix}-{len(self.paths)}-{uuid.uuid4().hex[:8]}.img"
        self._file = open(path, "xb")  # noqa: SIM115 - closed in _close_image/abort
        self.paths.append(path)
        self._written = 0
        self._b64.clear()

    def _take_b64(self, piece: bytes) -> None:
        if not _B64_ALPHABET.issuperset(piece):
            raise self.bad("b64_json holds characters outside base64")
        self._b64 += piece
        if len(self._b64) >= _B64_DECODE_BATCH:
            cut = len(self._b64) - len(self._b64) % 4
            self._write(self._decode(self._b64[:cut]))
            del self._b64[:cut]

    def _decode(self, text: bytes | bytearray) -> bytes:
        try:
            return binascii.a2b_base64(bytes(text), strict_mode=True)
        except binascii.Error as exc:
            raise self.bad(f"b64_json is not valid base64 ({exc})") from None

    def _write(self, decoded: bytes) -> None:
        self._written += len(decoded)
        if self._written > self.max_image_bytes:
            raise OutputTooLarge(
                f"{self.provider} image is larger than the {self.max_image_bytes}-byte limit",
                provider=self.provider,
                model=self.model,
            )
        assert self._file is not None
        self._file.write(decoded)

    def _close_image(self) -> None:
        if self._b64:
            tail = bytes(self._b64) + b"=" * (-len(self._b64) % 4)
            self._write(self._decode(tail))
            self._b64.clear()
        if self._written == 0:
            raise self.bad("an empty b64_json")
        assert self._file is not None
        self._file.close()
        self._file = None
