"""Offline mock providers, one per media type: the default with no vendor keys.

They make real files (MP4, WAV/MP3..., PNG) deterministically from the prompt
and seed, with simulated latency and progress. Callers can exercise failure
paths through ``provider_options``:

- ``mock_behavior``: ``"fail"`` (the vendor job fails: PROVIDER_JOB_FAILED),
  ``"stall"`` (never finishes: use Cancel or a timeout), ``"rate_limit"``
  (submit answers 429: PROVIDER_RATE_LIMITED with RetryInfo),
  ``"content_rejected"`` (CONTENT_REJECTED), ``"unavailable"`` (PROVIDER_UNAVAILABLE).
- ``mock_latency_seconds``: total simulated latency of this job (overrides
  the server's ``mock_latency``).

An input image (inline or an uploaded asset) is read through, as a vendor
would, and its SHA-256 is put in the artifact's metadata (``inputSha256``);
a URL is not fetched (mocks stay offline). The image does not change the
rendered media.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import AsyncIterator
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
    VendorHandle,
    VendorState,
    format_name,
    make_cost,
    provider_options,
)
from providers.errors import (
    ContentRejected,
    InvalidArgument,
    ProviderJobFailed,
    ProviderRateLimited,
    ProviderUnavailable,
)
from providers.mock import media
from providers.storage import CHUNK_SIZE

# The mock renders at most 600 s of audio; at ~14 characters a second that is
# about 8,400 characters.
MOCK_SPEECH_MAX_CHARACTERS = 8000
BEHAVIORS = ("fail", "stall", "rate_limit", "content_rejected", "unavailable")
_ASPECT_SIZES = {"16:9": (640, 360), "9:16": (360, 640), "1:1": (480, 480), "4:3": (640, 480), "3:4": (480, 640)}
_IMAGE_ASPECT_SIZES = {"1:1": (1024, 1024), "16:9": (1344, 768), "9:16": (768, 1344), "4:3": (1152, 864), "3:4": (864, 1152)}


def _seed(request: Message, ctx_job_id: str) -> int:
    if "seed" in request.DESCRIPTOR.fields_by_name and request.HasField("seed"):
        return int(request.seed) & 0xFFFFFFFF
    return int.from_bytes(hashlib.sha256(ctx_job_id.encode()).digest()[:4], "big")


class MockProvider(Provider):
    """Shared behaviour; subclasses say what they render and their limits."""

    name = "mock"
    mock_kind: str

    def __init__(self, settings) -> None:
        self.latency = settings.mock_latency
        self.steps = settings.mock_steps

    def _entry(self, capabilities, limits: catalog_pb2.ProviderLimits, unit: int) -> catalog_pb2.Provider:
        return catalog_pb2.Provider(
            name=self.name,
            display_name=f"Mock {self.mock_kind.replace('_', ' ')} (offline)",
            media_type=self.media_type,
            capabilities=capabilities,
            limits=limits,
            prices=[catalog_pb2.Price(unit=unit, unit_price_micros=0, note="free: synthetic media made offline")],
            models=[catalog_pb2.Model(name="mock-1", default=True, capabilities=capabilities)],
            configured=True,
            mock=True,
            notes=["provider_options.mock_behavior: " + ", ".join(BEHAVIORS)],
        )

    def validate(self, request: Message) -> None:
        super().validate(request)
        options = provider_options(request)
        behavior = options.get("mock_behavior")
        if behavior is not None and behavior not in BEHAVIORS:
            raise InvalidArgument.field(
                "provider_options.mock_behavior", "must be one of " + ", ".join(BEHAVIORS), "UNSUPPORTED_VALUE"
            )
        latency = options.get("mock_latency_seconds")
        if latency is not None and (not isinstance(latency, (int, float)) or not 0 <= latency <= 600):
            raise InvalidArgument.field(
                "provider_options.mock_latency_seconds", "must be a number from 0 to 600", "OUT_OF_RANGE"
            )

    @abc.abstractmethod
    def units(self, request: Message) -> tuple[float, int]:
        """(how many price units the request is, which unit)."""

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        units, unit = self.units(request)
        return make_cost(units, unit, 0, common_pb2.COST_BASIS_FREE)

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        options = provider_options(request)
        behavior = options.get("mock_behavior", "")
        if behavior == "rate_limit":
            raise ProviderRateLimited("mock: too many requests", provider=self.name, retry_after=30.0)
        if behavior == "content_rejected":
            raise ContentRejected("mock: the prompt was refused by moderation", provider=self.name)
        if behavior == "unavailable":
            raise ProviderUnavailable("mock: service unavailable", provider=self.name)
        render = self.render_args(request, ctx.job_id)
        image = inputs.from_request(request, ctx)
        if image is not None and image.source != "uri":
            digest = hashlib.sha256()
            async with image.open() as chunks:
                async for chunk in chunks:
                    digest.update(chunk)
            render["input_sha256"] = digest.hexdigest()
        return VendorHandle(
            vendor_job_id=f"mock-{ctx.job_id}",
            data={
                "start": time.time(),
                "latency": float(options.get("mock_latency_seconds", self.latency)),
                "behavior": behavior,
                "render": render,
            },
        )

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        latency = handle.data["latency"]
        elapsed = time.time() - handle.data["start"]
        step = latency / self.steps if latency else 0.0
        behavior = handle.data.get("behavior")
        if behavior == "stall":
            return PollResult(VendorState.RUNNING, ProgressInfo(fraction=0.5, vendor_status="stalled"), poll_after=max(step, 0.05))
        if elapsed >= latency:
            if behavior == "fail":
                return PollResult(
                    VendorState.FAILED,
                    error=ProviderJobFailed("mock: the generation failed", provider=self.name, metadata={"vendorStatus": "failed"}),
                )
            render = handle.data["render"]
            metadata = {"seed": str(render["seed"])}
            if render.get("input_sha256"):
                metadata["inputSha256"] = render["input_sha256"]
            return PollResult(VendorState.SUCCEEDED, outputs=[
                Output(content_type=render["content_type"], metadata=dict(metadata), data={"index": i})
                for i in range(render.get("count", 1))
            ])
        fraction = elapsed / latency
        state = VendorState.QUEUED if fraction < 1 / self.steps else VendorState.RUNNING
        return PollResult(
            state,
            ProgressInfo(
                fraction=round(fraction, 3),
                vendor_status=state.value,
                queue_position=0 if state is VendorState.QUEUED else None,
                eta_seconds=latency - elapsed,
            ),
            poll_after=min(step, latency - elapsed),
        )

    async def cancel(self, handle: VendorHandle, ctx: JobContext) -> bool:
        return True  # nothing runs remotely; the runner just stops polling

    @contextlib.asynccontextmanager
    async def open_output(self, handle: VendorHandle, output: Output, ctx: JobContext) -> AsyncIterator[AsyncIterator[bytes]]:
        render = dict(handle.data["render"])
        render["seed"] = (render["seed"] + output.data.get("index", 0)) & 0xFFFFFFFF
        fd, path = tempfile.mkstemp(prefix="mediagen-mock-", suffix=media.extension_for(render["content_type"]))
        os.close(fd)
        try:
            await asyncio.to_thread(self.render, path, render)
            yield _read_file(path)
        finally:
            os.unlink(path)

    @abc.abstractmethod
    def render_args(self, request: Message, job_id: str) -> dict[str, Any]:
        """JSON-able arguments of render(), fixed at submit so a restart renders the same."""

    @abc.abstractmethod
    def render(self, path: str, args: dict[str, Any]) -> None:
        """Write the media file (blocking; runs in a thread)."""


async def _read_file(path: str) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_SIZE):
            yield chunk
    finally:
        handle.close()


class MockVideo(MockProvider):
    media_type = common_pb2.MEDIA_TYPE_VIDEO
    mock_kind = "video"

    def describe(self) -> catalog_pb2.Provider:
        limits = catalog_pb2.ProviderLimits(
            min_duration_seconds=0.5,
            max_duration_seconds=30,
            aspect_ratios=list(_ASPECT_SIZES),
            max_prompt_characters=4000,
        )
        return self._entry(["text_to_video", "image_to_video"], limits, common_pb2.PRICE_UNIT_SECOND)

    def validate(self, request: Message) -> None:
        super().validate(request)
        for name in ("width", "height"):
            value = getattr(request, name)
            if value and not 16 <= value <= 1920:
                raise InvalidArgument.field(name, "must be from 16 to 1920 for the mock", "OUT_OF_RANGE")
        if request.fps and not 1 <= request.fps <= 60:
            raise InvalidArgument.field("fps", "must be from 1 to 60", "OUT_OF_RANGE")

    def units(self, request: Message) -> tuple[float, int]:
        return request.duration_seconds or 4.0, common_pb2.PRICE_UNIT_SECOND

    def render_args(self, request: Message, job_id: str) -> dict[str, Any]:
        width, height = _ASPECT_SIZES.get(request.aspect_ratio or "16:9", (640, 360))
        if request.width and request.height:
            width, height = request.width, request.height
        return {
            "content_type": "video/mp4",
            "prompt": request.prompt,
            "seed": _seed(request, job_id),
            "duration_seconds": request.duration_seconds or 4.0,
            "width": width,
            "height": height,
            "fps": request.fps or 24,
        }

    def render(self, path: str, args: dict[str, Any]) -> None:
        media.render_video(
            path,
            prompt=args["prompt"],
            seed=args["seed"],
            duration_seconds=args["duration_seconds"],
            width=args["width"],
            height=args["height"],
            fps=args["fps"],
        )


class _MockAudio(MockProvider):
    default_duration = 5.0
    max_duration = 300.0
    formats = ("wav", "mp3", "ogg_opus", "flac", "pcm")
    capabilities: tuple[str, ...] = ()

    def describe(self) -> catalog_pb2.Provider:
        limits = catalog_pb2.ProviderLimits(
            min_duration_seconds=0.5,
            max_duration_seconds=self.max_duration,
            formats=list(self.formats),
            max_prompt_characters=4000,
        )
        return self._entry(self.capabilities, limits, common_pb2.PRICE_UNIT_SECOND)

    def text(self, request: Message) -> str:
        return request.prompt

    def duration(self, request: Message) -> float:
        return request.duration_seconds or self.default_duration

    def units(self, request: Message) -> tuple[float, int]:
        return self.duration(request), common_pb2.PRICE_UNIT_SECOND

    def render_args(self, request: Message, job_id: str) -> dict[str, Any]:
        fmt = format_name(request) or "wav"
        return {
            "content_type": media.content_type_for(fmt, "audio"),
            "format": fmt,
            "text": self.text(request),
            "seed": _seed(request, job_id),
            "duration_seconds": self.duration(request),
        }

    def render(self, path: str, args: dict[str, Any]) -> None:
        media.render_audio(
            path,
            kind=self.mock_kind,
            text_or_prompt=args["text"],
            seed=args["seed"],
            duration_seconds=args["duration_seconds"],
            format=args["format"],
        )


class MockSpeech(_MockAudio):
    media_type = common_pb2.MEDIA_TYPE_SPEECH
    mock_kind = "speech"
    capabilities = ("text_to_speech", "voices")

    def describe(self) -> catalog_pb2.Provider:
        entry = super().describe()
        entry.limits.ClearField("min_duration_seconds")
        entry.limits.ClearField("max_duration_seconds")
        entry.limits.max_text_characters = MOCK_SPEECH_MAX_CHARACTERS
        entry.prices[0].unit = common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS
        return entry

    def validate(self, request: Message) -> None:
        super().validate(request)
        if len(request.text) > MOCK_SPEECH_MAX_CHARACTERS:
            raise InvalidArgument.field(
                "text", f"at most {MOCK_SPEECH_MAX_CHARACTERS} characters for the mock", "TOO_LONG"
            )
        if request.speed and not 0.25 <= request.speed <= 4.0:
            raise InvalidArgument.field("speed", "must be from 0.25 to 4 for the mock", "OUT_OF_RANGE")

    def text(self, request: Message) -> str:
        return request.text

    def duration(self, request: Message) -> float:
        return media.speech_duration_for_text(request.text, request.speed or 1.0)

    def units(self, request: Message) -> tuple[float, int]:
        return len(request.text) / 1000, common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS


class MockMusic(_MockAudio):
    media_type = common_pb2.MEDIA_TYPE_MUSIC
    mock_kind = "music"
    capabilities = ("text_to_music", "instrumental")
    default_duration = 10.0

    def text(self, request: Message) -> str:
        return " ".join(filter(None, (request.prompt, request.mood, request.genre, request.theme)))

    def units(self, request: Message) -> tuple[float, int]:
        return 1.0, common_pb2.PRICE_UNIT_TRACK


class MockSoundEffect(_MockAudio):
    media_type = common_pb2.MEDIA_TYPE_SOUND_EFFECT
    mock_kind = "sound_effect"
    capabilities = ("text_to_sound_effect",)
    default_duration = 3.0
    max_duration = 30.0


class MockImage(MockProvider):
    media_type = common_pb2.MEDIA_TYPE_IMAGE
    mock_kind = "image"

    def describe(self) -> catalog_pb2.Provider:
        limits = catalog_pb2.ProviderLimits(
            aspect_ratios=list(_IMAGE_ASPECT_SIZES),
            max_count=4,
            formats=["png", "jpeg", "webp"],
            max_prompt_characters=4000,
        )
        return self._entry(["text_to_image"], limits, common_pb2.PRICE_UNIT_IMAGE)

    def validate(self, request: Message) -> None:
        super().validate(request)
        for name in ("width", "height"):
            value = getattr(request, name)
            if value and not 16 <= value <= 2048:
                raise InvalidArgument.field(name, "must be from 16 to 2048 for the mock", "OUT_OF_RANGE")

    def units(self, request: Message) -> tuple[float, int]:
        return float(request.count or 1), common_pb2.PRICE_UNIT_IMAGE

    def render_args(self, request: Message, job_id: str) -> dict[str, Any]:
        width, height = _IMAGE_ASPECT_SIZES.get(request.aspect_ratio or "1:1", (1024, 1024))
        if request.width and request.height:
            width, height = request.width, request.height
        fmt = format_name(request) or "png"
        return {
            "content_type": media.content_type_for(fmt, "image"),
            "format": fmt,
            "prompt": request.prompt,
            "seed": _seed(request, job_id),
            "width": width,
            "height": height,
            "count": request.count or 1,
        }

    def render(self, path: str, args: dict[str, Any]) -> None:
        media.render_image(
            path, prompt=args["prompt"], seed=args["seed"], width=args["width"], height=args["height"], format=args["format"]
        )


def mock_providers(settings) -> list[MockProvider]:
    return [cls(settings) for cls in (MockVideo, MockSpeech, MockMusic, MockSoundEffect, MockImage)]
