"""ElevenLabs text to speech: ``POST /v1/text-to-speech/{voice_id}/stream``.

The vendor answers at once with the audio bytes, streamed while it speaks.
Adapted to the job shape: ``submit`` resolves the voice and cuts the text into
pieces under the model's per-request limit (nothing is billed yet); the first
``poll`` reports SUCCEEDED with one output; ``open_output`` synthesises the
pieces one after the other and streams them into storage as one file (see
``providers.speech_text``). Every synthesis is billed: when the runner fetches
the output again (a stream broken mid-way, a restart while storing), the text
is spoken, and paid for, again. There is no vendor job to cancel.

- Auth: ``xi-api-key`` (``ELEVENLABS_API_KEY``, or ``ELEVEN_API_KEY`` as older
  SDKs named it); base URL ``ELEVENLABS_BASE_URL`` (e.g. a data-residency host).
- ``output_format`` is a query parameter. mp3 → ``mp3_44100_128``; wav and
  pcm → ``pcm_24000`` (wav gets our RIFF header, so that pieces join sample
  for sample); ogg_opus → ``opus_48000_64``. ``provider_options.output_format``
  picks another value of the same family (e.g. ``mp3_44100_192``, plan gated).
- Voices: an ElevenLabs voice id, a preset (``VOICE_PRESETS``, mapped to
  ElevenLabs' premade voices as the provider spec does), or a voice name
  looked up in ``GET /v1/voices`` (cached for ``voices_ttl`` seconds).
- Speed maps to ``voice_settings.speed`` (0.7-1.2); stability,
  similarity_boost, style, use_speaker_boost, seed, apply_text_normalization
  and enable_logging come from ``provider_options``. Pieces of a split text
  carry their neighbours as ``previous_text``/``next_text`` (request
  stitching) for an even prosody across the joins, except on eleven_v3,
  which does not take them.
- Quota: ElevenLabs answers an exhausted quota with HTTP 401 and
  ``detail.status = "quota_exceeded"`` → PROVIDER_OUT_OF_CREDIT, told apart
  from a bad key (``invalid_api_key`` → PROVIDER_AUTH_FAILED).
- Cost: the ``character-cost`` answer header when present (vendor reported),
  else the characters sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

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
from providers.errors import (
    InvalidArgument,
    MediagenError,
    ProviderBadResponse,
    ProviderInvalidRequest,
    ProviderNotConfigured,
)
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env, vendor_message
from providers.mock.media import content_type_for
from providers.retry import DEFAULT_RETRY, RetryPolicy
from providers.secrets import env_secret
from providers.speech_text import (
    VOICE_PRESETS,
    AnswerInfo,
    JoinReport,
    PcmFormat,
    VendorAuth,
    as_stream,
    bool_option,
    checked_audio,
    choice_option,
    int_option,
    join_audio,
    number_option,
    provider_options,
    split_text,
)

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
CREDENTIAL_ENV = ("ELEVENLABS_API_KEY", "ELEVEN_API_KEY")
DOCS = "https://elevenlabs.io/docs/api-reference/text-to-speech/convert"
#: The answers can take a while: a 10,000-character piece is minutes of speech.
TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=60.0, pool=10.0)

_PRICE_NOTE = (
    "pay-as-you-go API price per 1K characters quoted by third parties in mid-2026 "
    "(shared/vendors/audio.md, low confidence): ~$0.10 for Multilingual/v3 (1 credit per "
    "character), ~$0.05 for Flash/Turbo (0.5 credit per character)"
)


@dataclass(frozen=True)
class _Model:
    name: str
    #: Characters per request (ElevenLabs models page, Aug 2025).
    max_characters: int
    price_per_1k: float
    #: Takes ``language_code`` (the others reject or ignore it).
    language_code: bool = False
    #: Takes ``previous_text``/``next_text``.
    stitching: bool = True
    retired_note: str = ""


MODELS: tuple[_Model, ...] = (
    _Model("eleven_multilingual_v2", 10_000, 0.10),
    _Model("eleven_v3", 3_000, 0.10, stitching=False),
    _Model("eleven_flash_v2_5", 40_000, 0.05, language_code=True),
    _Model("eleven_turbo_v2_5", 40_000, 0.05, language_code=True),
    _Model("eleven_flash_v2", 30_000, 0.05),
    _Model("eleven_turbo_v2", 30_000, 0.05),
    _Model(
        "eleven_monolingual_v1",
        10_000,
        0.10,
        retired_note="legacy model (ElevenLabs models page, Aug 2025); use eleven_multilingual_v2",
    ),
    _Model(
        "eleven_multilingual_v1",
        10_000,
        0.10,
        retired_note="legacy model (ElevenLabs models page, Aug 2025); use eleven_multilingual_v2",
    ),
)
DEFAULT_MODEL = "eleven_multilingual_v2"
_MODELS = {m.name: m for m in MODELS}

#: The provider spec's named voices (ElevenLabs premade voices), plus "female_calm".
PRESET_VOICES: dict[str, tuple[str, str]] = {
    "professional_male": ("pNInz6obpgDQGcFmaJgB", "Adam"),
    "professional_female": ("21m00Tcm4TlvDq8ikWAM", "Rachel"),
    "casual_male": ("TxGEqnHWrfWFTfGW9XjX", "Josh"),
    "casual_female": ("EXAVITQu4vr4xnSDxMaL", "Sarah"),
    "narrator": ("VR6AewLTigWG4xSOukaG", "Arnold"),
    "female_calm": ("21m00Tcm4TlvDq8ikWAM", "Rachel"),  # labelled "calm", female
}
assert set(PRESET_VOICES) == set(VOICE_PRESETS)
DEFAULT_PRESET = "professional_male"
_VOICE_ID = re.compile(r"^[A-Za-z0-9]{20}$")

#: Our format -> (default output_format, output_format family prefix).
FORMATS: dict[str, tuple[str, str]] = {
    "mp3": ("mp3_44100_128", "mp3_"),
    "wav": ("pcm_24000", "pcm_"),
    "pcm": ("pcm_24000", "pcm_"),
    "ogg_opus": ("opus_48000_64", "opus_"),
}
#: output_format values of the 2026 SDK enum that fit our formats.
OUTPUT_FORMATS = (
    "mp3_22050_32 mp3_24000_48 mp3_44100_32 mp3_44100_64 mp3_44100_96 mp3_44100_128 mp3_44100_192 "
    "opus_48000_32 opus_48000_64 opus_48000_96 opus_48000_128 opus_48000_192 "
    "pcm_8000 pcm_16000 pcm_22050 pcm_24000 pcm_32000 pcm_44100 pcm_48000"
).split()
#: Raw PCM is stored headerless; the server measures it as 24 kHz mono.
PCM_RATE = 24000

SPEED_RANGE = (0.7, 1.2)
OPTIONS = {
    "output_format": "an ElevenLabs output_format of the requested format's family",
    "stability": "0-1",
    "similarity_boost": "0-1",
    "style": "0-1",
    "use_speaker_boost": "true/false",
    "seed": "0-4294967295",
    "apply_text_normalization": "auto, on or off",
    "enable_logging": "false: zero-retention mode (enterprise)",
}
_CONTEXT_CHARS = 1000  # previous_text/next_text: the neighbour's nearest characters


def elevenlabs_classify(response: httpx.Response, body: Any) -> MediagenError | None:
    """ElevenLabs answers that the generic rules would misread.

    A 403 about the account's plan (``only_for_creator+`` and similar: a
    professional voice or a plan-gated output format) is not a key problem:
    the caller can pick another voice or format.
    """
    if response.status_code != 403 or not isinstance(body, Mapping):
        return None
    detail = body.get("detail")
    status = str(detail.get("status", "")) if isinstance(detail, Mapping) else ""
    if status.startswith("only_for") or "tier" in status or "subscription" in status:
        return ProviderInvalidRequest(
            f"elevenlabs: the account's plan does not allow this ({status}): {vendor_message(body)[:300]}"
        )
    return None


def elevenlabs_http(
    settings, name: str, auth: VendorAuth | None, timeout: httpx.Timeout, retry: RetryPolicy
) -> VendorHTTP:
    return VendorHTTP(
        name,
        base_url=base_url_from_env("ELEVENLABS", DEFAULT_BASE_URL),
        auth=auth,
        timeout=timeout,
        retry=retry,
        classify_hook=elevenlabs_classify,
        url_policy=UrlPolicy(
            allow_http=settings.allow_private_urls, allow_private=settings.allow_private_urls
        ),
    )


def require_key(auth: VendorAuth | None, provider: str) -> VendorAuth:
    """The key's auth, or PROVIDER_NOT_CONFIGURED (a job resumed after the key was removed)."""
    if auth is None:
        raise ProviderNotConfigured(
            f"provider {provider} is not configured: set {CREDENTIAL_ENV[0]}", provider=provider
        )
    return auth


def content_type_of(fmt: str) -> str:
    return content_type_for(fmt, "audio")


def pcm_rate(output_format: str) -> int:
    return int(output_format.split("_")[1])


def resolve_output_format(request: Message, fmt: str, options: Mapping[str, Any]) -> str:
    """The ElevenLabs output_format for our format, honouring provider_options.output_format."""
    default, family = FORMATS[fmt]
    chosen = options.get("output_format")
    if chosen is None:
        return default
    if chosen not in OUTPUT_FORMATS or not chosen.startswith(family):
        fitting = [value for value in OUTPUT_FORMATS if value.startswith(family)]
        raise InvalidArgument.field(
            "provider_options.output_format",
            f"for format {fmt} use one of: " + ", ".join(fitting),
            "UNSUPPORTED_VALUE",
        )
    if fmt == "pcm" and chosen != f"pcm_{PCM_RATE}":
        raise InvalidArgument.field(
            "provider_options.output_format",
            f"raw PCM is stored at {PCM_RATE} Hz (pcm_{PCM_RATE}); ask for format WAV to choose another rate",
            "UNSUPPORTED_VALUE",
        )
    return chosen


class CharacterUsage:
    """Characters billed per synthesis, from ``character-cost`` or counted; summed over attempts."""

    HEADERS = ("character-cost", "x-character-count")

    def __init__(self, output: Output, metadata_key: str = "characters_billed") -> None:
        self.output = output
        self.metadata_key = metadata_key
        output.data.setdefault("billed_characters", 0)
        output.data.setdefault("reported", True)
        self.request_ids: list[str] = []
        self.this_attempt = 0

    def record(self, info: AnswerInfo | None, sent: int) -> None:
        billed = None
        if info is not None:
            for name in self.HEADERS:
                value = info.headers.get(name, "").strip()
                if value.isdigit():
                    billed = int(value)
                    break
            request_id = info.headers.get("request-id") or info.headers.get("x-request-id")
            if request_id:
                self.request_ids.append(request_id[:64])
        if billed is None:
            self.output.data["reported"] = False
            billed = sent
        self.output.data["billed_characters"] += billed
        self.this_attempt += billed
        if self.this_attempt:
            self.output.metadata[self.metadata_key] = str(self.this_attempt)
        if self.request_ids:
            self.output.metadata["vendor_request_ids"] = ",".join(self.request_ids)[:500]


class ElevenLabsSpeech(Provider):
    name = "elevenlabs"
    display_name = "ElevenLabs text to speech"
    media_type = common_pb2.MEDIA_TYPE_SPEECH
    credential_env = CREDENTIAL_ENV
    preference = 10
    # submit only plans the work (and may list voices): nothing is billed, so a
    # submit interrupted by a restart can simply be done again.
    submit_is_idempotent = True
    #: Seconds a GET /v1/voices answer is reused.
    voices_ttl = 600.0
    #: Tests shorten these (class attributes, read when the adapter is built).
    timeout: httpx.Timeout = TIMEOUT
    retry: RetryPolicy = DEFAULT_RETRY

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        key, _ = env_secret(*self.credential_env)
        self.configured = bool(key)
        self.auth = VendorAuth({"xi-api-key": key}) if key else None
        self.http = elevenlabs_http(settings, self.name, self.auth, self.timeout, self.retry)
        self._voices: list[dict[str, Any]] | None = None
        self._voices_at = 0.0
        self._voices_lock = asyncio.Lock()

    # --- catalog ----------------------------------------------------------------

    def describe(self) -> catalog_pb2.Provider:
        capabilities = ["text_to_speech", "voices", "long_text"]
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(
                max_text_characters=_MODELS[DEFAULT_MODEL].max_characters,
                formats=list(FORMATS),
            ),
            prices=[
                catalog_pb2.Price(
                    model=m.name,
                    unit=common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS,
                    unit_price_micros=usd(m.price_per_1k),
                    note=_PRICE_NOTE,
                )
                for m in MODELS
            ],
            models=[
                catalog_pb2.Model(
                    name=m.name,
                    default=m.name == DEFAULT_MODEL,
                    retired=bool(m.retired_note),
                    retired_note=m.retired_note,
                    capabilities=capabilities,
                )
                for m in MODELS
            ],
            configured=self.configured,
            not_configured_reason="" if self.configured else f"set {CREDENTIAL_ENV[0]}",
            documentation_uri=DOCS,
            notes=[
                "voice: an ElevenLabs voice id, a voice name of the account, or a preset: "
                + ", ".join(f"{p} ({PRESET_VOICES[p][1]})" for p in VOICE_PRESETS),
                "text longer than the model's per-request limit (eleven_v3 3,000, "
                "eleven_multilingual_v2 10,000, flash/turbo v2 30,000, v2.5 40,000 characters) "
                "is split at sentence ends and joined into one file",
                "speed: 0.7 to 1.2; language is sent as language_code only to the v2.5 "
                "flash/turbo models (the others detect the language from the text)",
                "every synthesis is billed: fetching the output again (after a broken stream "
                "or a restart) speaks the text again",
                "provider_options: " + ", ".join(f"{k} ({v})" for k, v in OPTIONS.items()),
            ],
        )

    # --- before any vendor call -----------------------------------------------------

    def _model(self, request: Message) -> _Model | None:
        return _MODELS.get(request.model or DEFAULT_MODEL)

    def validate(self, request: Message) -> None:
        super().validate(request)
        options = provider_options(request, OPTIONS)
        fmt = format_name(request) or "mp3"
        resolve_output_format(request, fmt, options)
        if request.instructions.strip():
            raise InvalidArgument.field(
                "instructions", "ElevenLabs takes no style instructions (OpenAI's gpt-4o-mini-tts does)", "UNSUPPORTED"
            )
        if request.speed and not SPEED_RANGE[0] <= request.speed <= SPEED_RANGE[1]:
            raise InvalidArgument.field(
                "speed", f"must be from {SPEED_RANGE[0]:g} to {SPEED_RANGE[1]:g} for ElevenLabs", "OUT_OF_RANGE"
            )
        for key in ("stability", "similarity_boost", "style"):
            number_option(options, key, 0.0, 1.0)
        bool_option(options, "use_speaker_boost")
        bool_option(options, "enable_logging")
        int_option(options, "seed", 0, 4_294_967_295)
        choice_option(options, "apply_text_normalization", ("auto", "on", "off"))
        if request.language and not re.match(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$", request.language):
            raise InvalidArgument.field("language", "must be a BCP-47 code such as en-US", "INVALID_FORMAT")

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        price = (_MODELS.get(model) or _MODELS[DEFAULT_MODEL]).price_per_1k
        characters = sum(len(p) for p in split_text(request.text, self._limit(model)))
        return make_cost(
            characters / 1000,
            common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS,
            usd(price),
            common_pb2.COST_BASIS_ESTIMATED,
        )

    def final_cost(
        self, request: Message, model: str, result: PollResult, artifacts: list[StoredArtifact]
    ) -> common_pb2.Cost:
        price = (_MODELS.get(model) or _MODELS[DEFAULT_MODEL]).price_per_1k
        billed = sum(o.data.get("billed_characters", 0) for o in result.outputs)
        reported = all(o.data.get("reported", False) for o in result.outputs)
        if not billed:
            return super().final_cost(request, model, result, artifacts)
        basis = common_pb2.COST_BASIS_VENDOR_REPORTED if reported else common_pb2.COST_BASIS_MEASURED
        return make_cost(billed / 1000, common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS, usd(price), basis)

    @staticmethod
    def _limit(model: str) -> int:
        return (_MODELS.get(model) or _MODELS[DEFAULT_MODEL]).max_characters

    # --- the job ------------------------------------------------------------------

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        require_key(self.auth, self.name)
        options = provider_options(request, OPTIONS)
        fmt = format_name(request) or "mp3"
        spec = _MODELS.get(model) or _MODELS[DEFAULT_MODEL]
        voice_id = await self._voice_id(request.voice.strip(), ctx, model)
        settings: dict[str, Any] = {
            key: options[key]
            for key in ("stability", "similarity_boost", "style", "use_speaker_boost")
            if key in options
        }
        if request.speed:
            settings["speed"] = request.speed
        pieces = split_text(request.text, spec.max_characters)
        data: dict[str, Any] = {
            "voice_id": voice_id,
            "model": model,
            "format": fmt,
            "output_format": resolve_output_format(request, fmt, options),
            "pieces": pieces,
            "voice_settings": settings,
            "stitching": spec.stitching,
        }
        if request.language and spec.language_code:
            data["language_code"] = request.language.split("-")[0].lower()
        for key in ("seed", "apply_text_normalization", "enable_logging"):
            if key in options:
                data[key] = int(options[key]) if key == "seed" else options[key]
        return VendorHandle(vendor_job_id="", data=data)

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        data = handle.data
        return PollResult(
            VendorState.SUCCEEDED,
            ProgressInfo(fraction=1.0, vendor_status="ready", message="synthesised while storing"),
            outputs=[
                Output(
                    content_type=content_type_of(data["format"]),
                    metadata={
                        "voice_id": data["voice_id"],
                        "model": data["model"],
                        "output_format": data["output_format"],
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
        require_key(self.auth, self.name)
        data = handle.data
        pieces: list[str] = data["pieces"]
        usage = CharacterUsage(output)
        fmt = data["format"]
        pcm = PcmFormat(pcm_rate(data["output_format"])) if fmt in ("wav", "pcm") else None

        def open_piece(index: int):
            return self._synthesize(data, index, ctx, usage)

        report = JoinReport()
        joined = join_audio(
            fmt, len(pieces), open_piece, provider=self.name, model=data["model"], pcm=pcm, report=report
        )
        async with as_stream(joined) as chunks:
            yield chunks

    @contextlib.asynccontextmanager
    async def _synthesize(
        self, data: Mapping[str, Any], index: int, ctx: JobContext, usage: CharacterUsage
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        pieces: list[str] = data["pieces"]
        body: dict[str, Any] = {"text": pieces[index], "model_id": data["model"]}
        if data.get("voice_settings"):
            body["voice_settings"] = data["voice_settings"]
        if data.get("language_code"):
            body["language_code"] = data["language_code"]
        for key in ("seed", "apply_text_normalization"):
            if key in data:
                body[key] = data[key]
        if data.get("stitching") and len(pieces) > 1:
            if index > 0:
                body["previous_text"] = pieces[index - 1][-_CONTEXT_CHARS:]
            if index + 1 < len(pieces):
                body["next_text"] = pieces[index + 1][:_CONTEXT_CHARS]
        params: dict[str, Any] = {"output_format": data["output_format"]}
        if "enable_logging" in data:
            params["enable_logging"] = "true" if data["enable_logging"] else "false"
        auth = require_key(self.auth, self.name)
        capture = auth.tag()
        try:
            async with self.http.open_stream(
                f"/v1/text-to-speech/{quote(data['voice_id'], safe='')}/stream",
                method="POST",
                json=body,
                params=params,
                headers={VendorAuth.CAPTURE_HEADER: capture},
                idempotent=False,
                ctx=ctx,
                max_bytes=self.max_output_bytes,
                model=data["model"],
            ) as chunks:
                info = auth.take(capture)
                usage.record(info, len(pieces[index]))
                yield checked_audio(chunks, info, provider=self.name, model=data["model"])
        finally:
            auth.take(capture)

    # --- voices -------------------------------------------------------------------

    async def _voice_id(self, voice: str, ctx: JobContext, model: str) -> str:
        if not voice:
            return PRESET_VOICES[DEFAULT_PRESET][0]
        preset = PRESET_VOICES.get(voice.lower())
        if preset is not None:
            return preset[0]
        if _VOICE_ID.match(voice):
            return voice
        voices = await self.voices(ctx, model)
        wanted = voice.casefold()
        for entry in voices:
            if str(entry.get("name", "")).casefold() == wanted:
                return str(entry["voice_id"])
        names = sorted({str(v.get("name")) for v in voices if v.get("name")})
        shown = ", ".join(names[:25]) + (", ..." if len(names) > 25 else "")
        raise InvalidArgument.field(
            "voice",
            f"no ElevenLabs voice named {voice!r}; give a voice id, a preset "
            f"({', '.join(VOICE_PRESETS)}) or one of: {shown or 'no voices listed'}",
            "UNKNOWN_VOICE",
        )

    async def voices(self, ctx: JobContext | None = None, model: str = "") -> list[dict[str, Any]]:
        """The account's voices (``GET /v1/voices``, legacy voices included), cached for ``voices_ttl``."""
        async with self._voices_lock:
            if self._voices is not None and time.monotonic() - self._voices_at < self.voices_ttl:
                return self._voices
            body, response = await self.http.request_json(
                "GET", "/v1/voices", params={"show_legacy": "true"}, idempotent=True, ctx=ctx, model=model
            )
            voices = body.get("voices") if isinstance(body, Mapping) else None
            if not isinstance(voices, list) or not all(
                isinstance(v, Mapping) and isinstance(v.get("voice_id"), str) for v in voices
            ):
                raise ProviderBadResponse(
                    "elevenlabs listed voices in an unexpected shape (no voices[].voice_id)",
                    provider=self.name,
                    model=model,
                    http_status=response.status_code,
                )
            self._voices = [dict(v) for v in voices]
            self._voices_at = time.monotonic()
            return self._voices

    async def aclose(self) -> None:
        await self.http.aclose()
