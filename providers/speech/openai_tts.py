"""OpenAI text to speech: ``POST /v1/audio/speech``.

The vendor answers at once with the audio bytes (chunked, so they are streamed
into storage as they come). Adapted to the job shape as the other speech
adapters are: ``submit`` only plans the pieces (nothing is billed), the first
``poll`` reports SUCCEEDED, ``open_output`` synthesises. Every synthesis is
billed: fetching the output again (a broken stream, a restart while storing)
speaks the text again. There is no vendor job to cancel.

- Auth ``Authorization: Bearer $OPENAI_API_KEY``; ``OpenAI-Organization`` and
  ``OpenAI-Project`` from ``OPENAI_ORG_ID`` / ``OPENAI_PROJECT_ID`` as the SDK
  does. ``OPENAI_BASE_URL`` follows the SDK's convention and includes ``/v1``
  (``https://api.openai.com/v1``); a bare host such as ``http://proxy:4000`` is
  taken as the API root and gets ``/v1`` added.
- Models: ``tts-1``, ``tts-1-hd``, ``gpt-4o-mini-tts`` (and its dated
  snapshot); only the gpt-4o-mini-tts models take ``instructions``.
- ``input`` is at most 4,096 characters: longer text is split at sentence ends
  and the pieces joined into one file (``providers.speech_text``).
- ``response_format``: mp3, opus (Ogg), aac (ADTS), flac, pcm (24 kHz s16le);
  wav is asked as pcm and given our RIFF header, so pieces join sample for sample.
- Errors are ``{"error": {message, type, param, code}}``; 429 comes as a
  retryable rate limit or as a final ``insufficient_quota``
  (PROVIDER_OUT_OF_CREDIT), told apart by the shared classification.
- Cost: tts-1 and tts-1-hd per character sent; gpt-4o-mini-tts is billed in
  tokens, priced here with OpenAI's own per-minute estimate of the audio.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers.base import (
    JobContext,
    Output,
    PollResult,
    ProgressInfo,
    Provider,
    StoredArtifact,
    VendorHandle,
    VendorState,
    format_name,
    make_cost,
    usd,
)
from providers.errors import InvalidArgument, ProviderNotConfigured
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env
from providers.mock.media import content_type_for
from providers.retry import DEFAULT_RETRY, RetryPolicy
from providers.secrets import env_secret
from providers.speech_text import (
    VOICE_PRESETS,
    AnswerInfo,
    PcmFormat,
    VendorAuth,
    as_stream,
    checked_audio,
    join_audio,
    provider_options,
    split_text,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DOCS = "https://platform.openai.com/docs/api-reference/audio/createSpeech"
MAX_INPUT_CHARACTERS = 4096
SPEED_RANGE = (0.25, 4.0)
#: response_format pcm is fixed at 24 kHz, 16-bit, mono.
PCM = PcmFormat(24000)
TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=60.0, pool=10.0)
#: Speech runs at about 15 characters a second (~150 words a minute).
CHARACTERS_PER_SECOND = 15.0


@dataclass(frozen=True)
class _Model:
    name: str
    unit: int
    price: float  # dollars per unit
    note: str
    instructions: bool = False


_CHAR_NOTE = "OpenAI price page via third-party mirrors (shared/vendors/audio.md, medium confidence)"
MODELS: tuple[_Model, ...] = (
    _Model("tts-1", common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS, 0.015, f"$15 per 1M characters; {_CHAR_NOTE}"),
    _Model("tts-1-hd", common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS, 0.030, f"$30 per 1M characters; {_CHAR_NOTE}"),
    _Model(
        "gpt-4o-mini-tts",
        common_pb2.PRICE_UNIT_MINUTE,
        0.015,
        "billed as $0.60/1M text tokens + $12/1M audio tokens; priced with OpenAI's estimate "
        f"of ~$0.015 per minute of audio; {_CHAR_NOTE}",
        instructions=True,
    ),
    _Model(
        "gpt-4o-mini-tts-2025-12-15",
        common_pb2.PRICE_UNIT_MINUTE,
        0.015,
        "dated snapshot of gpt-4o-mini-tts, same pricing",
        instructions=True,
    ),
)
DEFAULT_MODEL = "tts-1"
_MODELS = {m.name: m for m in MODELS}

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar")
#: Shared presets mapped onto the six original voices (every model has them).
PRESET_VOICES = {
    "professional_male": "onyx",
    "professional_female": "nova",
    "casual_male": "echo",
    "casual_female": "alloy",
    "narrator": "fable",
    "female_calm": "shimmer",
}
assert set(PRESET_VOICES) == set(VOICE_PRESETS)
DEFAULT_VOICE = "alloy"
_CUSTOM_VOICE = re.compile(r"^voice_[A-Za-z0-9_-]+$")

#: Our format -> response_format.
FORMATS = {"mp3": "mp3", "wav": "pcm", "pcm": "pcm", "ogg_opus": "opus", "aac": "aac", "flac": "flac"}
OPTIONS: dict[str, str] = {}


def openai_base_url() -> str:
    """``OPENAI_BASE_URL`` (the SDK convention includes ``/v1``); a bare host gets ``/v1``."""
    value = base_url_from_env("OPENAI", DEFAULT_BASE_URL).rstrip("/")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return value
    if url.path in ("", "/"):
        return value + "/v1"
    return value


class OpenAISpeech(Provider):
    name = "openai"
    display_name = "OpenAI text to speech"
    media_type = common_pb2.MEDIA_TYPE_SPEECH
    credential_env = ("OPENAI_API_KEY",)
    preference = 20
    submit_is_idempotent = True  # submit plans; nothing reaches OpenAI before open_output
    timeout: httpx.Timeout = TIMEOUT
    retry: RetryPolicy = DEFAULT_RETRY

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        key, _ = env_secret(*self.credential_env)
        self.configured = bool(key)
        headers: dict[str, str] = {}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # Not secrets (they name the account), so not registered for redaction.
        organization = os.environ.get("OPENAI_ORG_ID", "").strip()
        project = os.environ.get("OPENAI_PROJECT_ID", "").strip()
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        self.auth = VendorAuth(headers)
        self.http = VendorHTTP(
            self.name,
            base_url=openai_base_url(),
            auth=self.auth,
            timeout=self.timeout,
            retry=self.retry,
            url_policy=UrlPolicy(
                allow_http=settings.allow_private_urls, allow_private=settings.allow_private_urls
            ),
        )

    # --- catalog ----------------------------------------------------------------

    def describe(self) -> catalog_pb2.Provider:
        capabilities = ["text_to_speech", "voices", "long_text"]
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(max_text_characters=MAX_INPUT_CHARACTERS, formats=list(FORMATS)),
            prices=[
                catalog_pb2.Price(model=m.name, unit=m.unit, unit_price_micros=usd(m.price), note=m.note)
                for m in MODELS
            ],
            models=[
                catalog_pb2.Model(
                    name=m.name,
                    default=m.name == DEFAULT_MODEL,
                    capabilities=[*capabilities, "instructions"] if m.instructions else capabilities,
                )
                for m in MODELS
            ],
            configured=self.configured,
            not_configured_reason="" if self.configured else "set OPENAI_API_KEY",
            documentation_uri=DOCS,
            notes=[
                "voice: " + ", ".join(VOICES) + ", a custom voice id (voice_...), or a preset: "
                + ", ".join(f"{p} ({v})" for p, v in PRESET_VOICES.items()),
                "instructions (tone, style) only with gpt-4o-mini-tts; speed 0.25 to 4.0",
                f"text over {MAX_INPUT_CHARACTERS} characters is split at sentence ends and joined into one file",
                "wav is made from 24 kHz pcm; every synthesis is billed, also when the output is fetched again",
                "language is detected from the text (OpenAI takes no language parameter)",
            ],
        )

    # --- before any vendor call -----------------------------------------------------

    def validate(self, request: Message) -> None:
        super().validate(request)
        provider_options(request, OPTIONS)
        model = _MODELS.get(request.model or DEFAULT_MODEL)
        if request.instructions.strip() and model is not None and not model.instructions:
            raise InvalidArgument.field(
                "instructions", f"{model.name} takes no instructions; use gpt-4o-mini-tts", "UNSUPPORTED"
            )
        if request.speed and not SPEED_RANGE[0] <= request.speed <= SPEED_RANGE[1]:
            raise InvalidArgument.field("speed", "must be from 0.25 to 4.0 for OpenAI", "OUT_OF_RANGE")
        voice = request.voice.strip()
        if voice and voice.lower() not in VOICES and voice.lower() not in PRESET_VOICES and not _CUSTOM_VOICE.match(voice):
            raise InvalidArgument.field(
                "voice",
                "must be one of " + ", ".join(VOICES) + ", a custom voice id (voice_...) or a preset ("
                + ", ".join(PRESET_VOICES) + ")",
                "UNKNOWN_VOICE",
            )

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        spec = _MODELS.get(model) or _MODELS[DEFAULT_MODEL]
        characters = sum(len(p) for p in split_text(request.text, MAX_INPUT_CHARACTERS))
        if spec.unit == common_pb2.PRICE_UNIT_MINUTE:
            minutes = characters / CHARACTERS_PER_SECOND / (request.speed or 1.0) / 60
            return make_cost(minutes, spec.unit, usd(spec.price), common_pb2.COST_BASIS_ESTIMATED)
        return make_cost(characters / 1000, spec.unit, usd(spec.price), common_pb2.COST_BASIS_ESTIMATED)

    def final_cost(
        self, request: Message, model: str, result: PollResult, artifacts: list[StoredArtifact]
    ) -> common_pb2.Cost:
        spec = _MODELS.get(model) or _MODELS[DEFAULT_MODEL]
        if spec.unit == common_pb2.PRICE_UNIT_MINUTE:
            seconds = sum(a.duration_seconds for a in artifacts)
            if not seconds:
                return super().final_cost(request, model, result, artifacts)
            return make_cost(seconds / 60, spec.unit, usd(spec.price), common_pb2.COST_BASIS_MEASURED)
        billed = sum(o.data.get("billed_characters", 0) for o in result.outputs)
        if not billed:
            return super().final_cost(request, model, result, artifacts)
        return make_cost(billed / 1000, spec.unit, usd(spec.price), common_pb2.COST_BASIS_MEASURED)

    # --- the job ------------------------------------------------------------------

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        self._require_key()
        fmt = format_name(request) or "mp3"
        voice = request.voice.strip()
        if not voice:
            voice = DEFAULT_VOICE
        elif voice.lower() in PRESET_VOICES:
            voice = PRESET_VOICES[voice.lower()]
        elif voice.lower() in VOICES:
            voice = voice.lower()
        data: dict[str, Any] = {
            "model": model,
            "voice": voice,
            "format": fmt,
            "response_format": FORMATS[fmt],
            "pieces": split_text(request.text, MAX_INPUT_CHARACTERS),
        }
        if request.speed:
            data["speed"] = request.speed
        if request.instructions.strip():
            data["instructions"] = request.instructions.strip()
        return VendorHandle(vendor_job_id="", data=data)

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        data = handle.data
        return PollResult(
            VendorState.SUCCEEDED,
            ProgressInfo(fraction=1.0, vendor_status="ready", message="synthesised while storing"),
            outputs=[
                Output(
                    content_type=content_type_for(data["format"], "audio"),
                    metadata={
                        "voice": data["voice"],
                        "model": data["model"],
                        "response_format": data["response_format"],
                        "pieces": str(len(data["pieces"])),
                        "characters": str(sum(len(p) for p in data["pieces"])),
                    },
                )
            ],
        )

    @contextlib.asynccontextmanager
    async def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self._require_key()
        data = handle.data
        output.data.setdefault("billed_characters", 0)
        request_ids: list[str] = []

        def open_piece(index: int):
            return self._synthesize(data, index, ctx, output, request_ids)

        joined = join_audio(
            data["format"],
            len(data["pieces"]),
            open_piece,
            provider=self.name,
            model=data["model"],
            pcm=PCM,
        )
        async with as_stream(joined) as chunks:
            yield chunks

    @contextlib.asynccontextmanager
    async def _synthesize(
        self,
        data: Mapping[str, Any],
        index: int,
        ctx: JobContext,
        output: Output,
        request_ids: list[str],
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        text = data["pieces"][index]
        voice = data["voice"]
        body: dict[str, Any] = {
            "model": data["model"],
            "input": text,
            "voice": {"id": voice} if _CUSTOM_VOICE.match(voice) else voice,
            "response_format": data["response_format"],
        }
        for key in ("speed", "instructions"):
            if key in data:
                body[key] = data[key]
        capture = self.auth.tag()
        try:
            async with self.http.open_stream(
                "audio/speech",
                method="POST",
                json=body,
                headers={VendorAuth.CAPTURE_HEADER: capture, "Accept": "application/octet-stream"},
                idempotent=False,
                ctx=ctx,
                max_bytes=self.max_output_bytes,
                model=data["model"],
            ) as chunks:
                info = self.auth.take(capture)
                self._record(output, info, len(text), request_ids)
                yield checked_audio(chunks, info, provider=self.name, model=data["model"])
        finally:
            self.auth.take(capture)

    @staticmethod
    def _record(output: Output, info: AnswerInfo | None, characters: int, request_ids: list[str]) -> None:
        # OpenAI bills what it accepted; summed over every attempt of this job.
        output.data["billed_characters"] = output.data.get("billed_characters", 0) + characters
        request_id = info.headers.get("x-request-id") if info is not None else None
        if request_id:
            request_ids.append(request_id[:64])
            output.metadata["vendor_request_ids"] = ",".join(request_ids)[:500]

    def _require_key(self) -> None:
        """PROVIDER_NOT_CONFIGURED for a job resumed after the credentials were removed."""
        if not self.configured:
            entry = self.describe()
            raise ProviderNotConfigured(
                f"provider {self.name} is not configured: {entry.not_configured_reason}", provider=self.name
            )

    async def aclose(self) -> None:
        await self.http.aclose()
