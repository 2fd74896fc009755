"""ElevenLabs sound effects: ``POST /v1/sound-generation``.

Synchronous like the TTS endpoint: the answer is the audio. ``submit`` checks
and plans (nothing is billed), the first ``poll`` reports SUCCEEDED, and
``open_output`` makes the generation call and streams the answer into storage.
Generating again (a broken stream, a restart while storing) is billed again;
there is no vendor job to resume or cancel.

- Body: ``text`` (the prompt), ``model_id`` (``eleven_text_to_sound_v2``),
  ``duration_seconds`` (0.5-30 s; left out when 0 so the model picks),
  ``prompt_influence`` (0-1, vendor default 0.3), ``loop`` (provider_options,
  v2 only). ``output_format`` is a query parameter, as for TTS: mp3 ->
  ``mp3_44100_128``, wav/pcm -> ``pcm_24000`` (wav gets our RIFF header),
  ogg_opus -> ``opus_48000_64``; ``provider_options.output_format`` picks
  another value of the same family (e.g. ``pcm_44100`` for wav on a Pro plan).
- The duration range moved over time (docs Aug 2025: 0.1-22 s; SDK 2026:
  0.5-30 s); ``min_duration``/``max_duration`` are class attributes.
- Cost in credits: the ``character-cost`` answer header (credits charged)
  when present; otherwise 40 credits per second of the stored audio (docs,
  Aug 2025), and 100 credits for an automatic length in the estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
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
)
from providers.retry import DEFAULT_RETRY, RetryPolicy
from providers.secrets import env_secret
from providers.speech.elevenlabs import (
    CREDENTIAL_ENV,
    FORMATS,
    CharacterUsage,
    content_type_of,
    elevenlabs_http,
    pcm_rate,
    require_key,
    resolve_output_format,
)
from providers.speech_text import (
    PcmFormat,
    VendorAuth,
    as_stream,
    bool_option,
    checked_audio,
    join_audio,
    provider_options,
)

DOCS = "https://elevenlabs.io/docs/api-reference/text-to-sound-effects/convert"
MODELS = ("eleven_text_to_sound_v2",)
DEFAULT_MODEL = "eleven_text_to_sound_v2"
#: $0.10 per 1K credits: ElevenLabs' pay-as-you-go character price (1 credit per character).
CREDIT_PRICE_MICROS = 100
CREDITS_PER_SECOND = 40
CREDITS_AUTOMATIC = 100
TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=60.0, pool=10.0)
OPTIONS = {
    "output_format": "an ElevenLabs output_format of the requested format's family",
    "loop": "true: a sound that loops seamlessly (eleven_text_to_sound_v2)",
}
_PRICE_NOTE = (
    "credits: 40 per second with a set duration (ElevenLabs docs, Aug 2025; a help-centre summary "
    "says 20/s, or 100 per generation with an automatic length), at ~$0.10 per 1K credits "
    "(third-party price, low confidence; shared/vendors/audio.md)"
)


class ElevenLabsSoundEffect(Provider):
    name = "elevenlabs"
    display_name = "ElevenLabs sound effects"
    media_type = common_pb2.MEDIA_TYPE_SOUND_EFFECT
    credential_env = CREDENTIAL_ENV
    preference = 10
    submit_is_idempotent = True  # nothing reaches the vendor before open_output
    min_duration = 0.5
    max_duration = 30.0
    timeout: httpx.Timeout = TIMEOUT
    retry: RetryPolicy = DEFAULT_RETRY

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        key, _ = env_secret(*self.credential_env)
        self.configured = bool(key)
        self.auth = VendorAuth({"xi-api-key": key}) if key else None
        self.http = elevenlabs_http(settings, self.name, self.auth, self.timeout, self.retry)

    def describe(self) -> catalog_pb2.Provider:
        capabilities = ["text_to_sound_effect", "loop"]
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(
                min_duration_seconds=self.min_duration,
                max_duration_seconds=self.max_duration,
                formats=list(FORMATS),
            ),
            prices=[
                catalog_pb2.Price(
                    model=model,
                    unit=common_pb2.PRICE_UNIT_CREDIT,
                    unit_price_micros=CREDIT_PRICE_MICROS,
                    note=_PRICE_NOTE,
                )
                for model in MODELS
            ],
            models=[
                catalog_pb2.Model(name=model, default=model == DEFAULT_MODEL, capabilities=capabilities)
                for model in MODELS
            ],
            configured=self.configured,
            not_configured_reason="" if self.configured else f"set {CREDENTIAL_ENV[0]}",
            documentation_uri=DOCS,
            notes=[
                f"duration_seconds {self.min_duration:g} to {self.max_duration:g}; 0 lets the model choose",
                "prompt_influence 0 to 1 (vendor default 0.3)",
                "provider_options: " + ", ".join(f"{k} ({v})" for k, v in OPTIONS.items()),
                "every generation is billed, also when the output is fetched again",
                "commercial use of the output follows the ElevenLabs plan (paid plans); "
                "commercial_use_only filters nothing here",
            ],
        )

    def validate(self, request: Message) -> None:
        super().validate(request)
        options = provider_options(request, OPTIONS)
        resolve_output_format(request, format_name(request) or "mp3", options)
        bool_option(options, "loop")

    def _credits(self, request: Message) -> float:
        if request.duration_seconds:
            return request.duration_seconds * CREDITS_PER_SECOND
        return float(CREDITS_AUTOMATIC)

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        return make_cost(
            self._credits(request), common_pb2.PRICE_UNIT_CREDIT, CREDIT_PRICE_MICROS, common_pb2.COST_BASIS_ESTIMATED
        )

    def final_cost(
        self, request: Message, model: str, result: PollResult, artifacts: list[StoredArtifact]
    ) -> common_pb2.Cost:
        outputs = result.outputs
        billed = sum(o.data.get("billed_characters", 0) for o in outputs)
        if billed and all(o.data.get("reported", False) for o in outputs):
            return make_cost(
                billed, common_pb2.PRICE_UNIT_CREDIT, CREDIT_PRICE_MICROS, common_pb2.COST_BASIS_VENDOR_REPORTED
            )
        seconds = sum(a.duration_seconds for a in artifacts)
        if not seconds:
            return super().final_cost(request, model, result, artifacts)
        return make_cost(
            seconds * CREDITS_PER_SECOND,
            common_pb2.PRICE_UNIT_CREDIT,
            CREDIT_PRICE_MICROS,
            common_pb2.COST_BASIS_MEASURED,
        )

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        require_key(self.auth, self.name)
        options = provider_options(request, OPTIONS)
        fmt = format_name(request) or "mp3"
        body: dict[str, Any] = {"text": request.prompt, "model_id": model}
        if request.duration_seconds:
            body["duration_seconds"] = request.duration_seconds
        if request.HasField("prompt_influence"):
            body["prompt_influence"] = request.prompt_influence
        if "loop" in options:
            body["loop"] = options["loop"]
        return VendorHandle(
            vendor_job_id="",
            data={
                "model": model,
                "format": fmt,
                "output_format": resolve_output_format(request, fmt, options),
                "body": body,
            },
        )

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        data = handle.data
        return PollResult(
            VendorState.SUCCEEDED,
            ProgressInfo(fraction=1.0, vendor_status="ready", message="generated while storing"),
            outputs=[
                Output(
                    content_type=content_type_of(data["format"]),
                    metadata={"model": data["model"], "output_format": data["output_format"]},
                )
            ],
        )

    @contextlib.asynccontextmanager
    async def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        require_key(self.auth, self.name)
        data = handle.data
        usage = CharacterUsage(output, metadata_key="credits_billed")
        fmt = data["format"]
        pcm = PcmFormat(pcm_rate(data["output_format"])) if fmt in ("wav", "pcm") else None

        @contextlib.asynccontextmanager
        async def generate(index: int) -> AsyncIterator[AsyncIterator[bytes]]:
            auth = require_key(self.auth, self.name)
            capture = auth.tag()
            try:
                async with self.http.open_stream(
                    "/v1/sound-generation",
                    method="POST",
                    json=data["body"],
                    params={"output_format": data["output_format"]},
                    headers={VendorAuth.CAPTURE_HEADER: capture},
                    idempotent=False,
                    ctx=ctx,
                    max_bytes=self.max_output_bytes,
                    model=data["model"],
                ) as chunks:
                    info = auth.take(capture)
                    # No characters here: without the header the measured duration prices it.
                    usage.record(info, 0)
                    yield checked_audio(chunks, info, provider=self.name, model=data["model"])
            finally:
                auth.take(capture)

        joined = join_audio(fmt, 1, generate, provider=self.name, model=data["model"], pcm=pcm)
        async with as_stream(joined) as chunks:
            yield chunks

    async def aclose(self) -> None:
        await self.http.aclose()
