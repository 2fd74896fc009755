"""Google Cloud Text-to-Speech over REST: ``POST /v1/text:synthesize``.

The answer is JSON carrying the audio as base64 ``audioContent`` (never a raw
body), so each piece's audio is decoded in memory; a piece is at most 5,000
bytes of text (Google's limit counts UTF-8 *bytes*, not characters), i.e. a
few minutes of speech. The pieces are streamed into storage one after the
other as one file (``providers.speech_text``). Adapted to the job shape as the
other speech adapters are; every synthesis is billed, also when the output is
fetched again after a failure or a restart. There is no vendor job to cancel.

- Auth, either (the OAuth token wins when both are set):
  - an OAuth 2 access token, ``Authorization: Bearer`` (``GOOGLE_OAUTH_ACCESS_TOKEN``,
    or ``CLOUDSDK_AUTH_ACCESS_TOKEN`` as gcloud names it), e.g. from
    ``gcloud auth print-access-token``; tokens expire after about an hour.
    ``GOOGLE_CLOUD_QUOTA_PROJECT`` is sent as ``x-goog-user-project``.
  - an API key (``GOOGLE_API_KEY``), sent in the ``x-goog-api-key`` header
    rather than ``?key=``, so it is never part of a URL.
- Base URL ``GOOGLE_TTS_BASE_URL`` (default ``https://texttospeech.googleapis.com``).
- Models are Google's voice families, which set the price: standard, wavenet,
  neural2 (default), chirp3-hd, studio. ``voice`` is a full voice name
  (``en-US-Neural2-C``: its family wins over ``model``), a short name within
  the family (``C`` -> ``en-US-Neural2-C``, ``Kore`` -> ``en-US-Chirp3-HD-Kore``),
  a preset (a voice of that gender in the language and family, from
  ``GET /v1/voices``), or empty (the family's first voice for the language).
  ``voice.languageCode`` is always sent (``language``, else the voice name's,
  else en-US).
- audioConfig: mp3 -> MP3, ogg_opus -> OGG_OPUS, wav -> LINEAR16 (its RIFF
  header is replaced by one for the joined samples), pcm -> LINEAR16 at
  24 kHz with the header removed. speed -> speakingRate (0.25-4.0);
  provider_options sample_rate_hertz, pitch, volume_gain_db, effects_profile_id.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import re
import time
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
from providers.errors import (
    InvalidArgument,
    MediagenError,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderNotConfigured,
    ProviderOutOfCredit,
)
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env, vendor_message
from providers.mock.media import content_type_for
from providers.retry import DEFAULT_RETRY, RetryPolicy
from providers.secrets import env_secret
from providers.speech_text import (
    VOICE_PRESETS,
    PcmFormat,
    as_stream,
    int_option,
    join_audio,
    number_option,
    provider_options,
    split_text,
)

DEFAULT_BASE_URL = "https://texttospeech.googleapis.com"
DOCS = "https://cloud.google.com/text-to-speech/docs/reference/rest/v1/text/synthesize"
MAX_INPUT_BYTES = 5000
SPEED_RANGE = (0.25, 4.0)
PCM_RATE = 24000
TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=60.0, pool=10.0)
KEY_ENV = "GOOGLE_API_KEY"
TOKEN_ENV = ("GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN")


@dataclass(frozen=True)
class _Family:
    model: str
    #: As spelled in voice names (en-US-<family>-X).
    spelled: str
    price_per_million: float
    note: str


_LOW = "third-party summaries of Google's price page (shared/vendors/audio.md, low confidence)"
FAMILIES: tuple[_Family, ...] = (
    _Family("standard", "Standard", 4.0, f"$4 per 1M characters (4M free a month); {_LOW}"),
    _Family("wavenet", "Wavenet", 16.0, f"$16 per 1M characters (1M free a month); {_LOW}"),
    _Family(
        "neural2",
        "Neural2",
        16.0,
        "$16 per 1M characters as the provider spec has it; one third party says $24 (unconfirmed)",
    ),
    _Family(
        "chirp3-hd",
        "Chirp3-HD",
        30.0,
        "$30 per 1M characters: Google's price page as we remember it; not in our vendor notes (unconfirmed)",
    ),
    _Family(
        "studio",
        "Studio",
        160.0,
        "$160 per 1M characters: Google's price page as we remember it; not in our vendor notes (unconfirmed)",
    ),
)
DEFAULT_MODEL = "neural2"
_BY_MODEL = {f.model: f for f in FAMILIES}
_BY_SPELLING = {f.spelled.lower(): f for f in FAMILIES}
_VOICE_NAME = re.compile(
    r"^(?P<language>[a-z]{2,3}-[A-Za-z0-9]{2,4})-(?P<family>[A-Za-z0-9]+(?:-HD)?)-(?P<speaker>[A-Za-z0-9]+)$"
)
_SHORT_NAME = re.compile(r"^[A-Za-z0-9]{1,32}$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}-[A-Za-z0-9]{2,4}$")

#: Shared presets: (ssmlGender, which voice of that gender, counted by name order).
PRESET_VOICES: dict[str, tuple[str, int]] = {
    "professional_male": ("MALE", 0),
    "professional_female": ("FEMALE", 0),
    "casual_male": ("MALE", 1),
    "casual_female": ("FEMALE", 1),
    "narrator": ("MALE", 2),
    "female_calm": ("FEMALE", 2),
}
assert set(PRESET_VOICES) == set(VOICE_PRESETS)

#: Our format -> audioEncoding.
FORMATS = {"mp3": "MP3", "wav": "LINEAR16", "pcm": "LINEAR16", "ogg_opus": "OGG_OPUS"}
OPTIONS = {
    "sample_rate_hertz": "8000-48000 (wav, mp3, ogg_opus)",
    "pitch": "-20 to 20 semitones",
    "volume_gain_db": "-96 to 16",
    "effects_profile_id": "list of audio profiles, e.g. [\"handset-class-device\"]",
}


def google_classify(response: httpx.Response, body: Any) -> MediagenError | None:
    """Google answers whose HTTP status alone misleads.

    An invalid API key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID
    (not the caller's mistake: an operator's); billing switched off is a 403;
    a 429 RESOURCE_EXHAUSTED on a per-day quota will not pass with a retry.
    """
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return None
    status = response.status_code
    message = vendor_message(body)
    reasons = {
        str(d.get("reason", ""))
        for d in error.get("details") or []
        if isinstance(d, Mapping)
    }
    text = f"google answered HTTP {status}: {message[:400]}"
    if status == 400 and ("API_KEY_INVALID" in reasons or "api key not valid" in message.lower()):
        return ProviderAuthFailed(text)
    if status == 403 and ("BILLING_DISABLED" in reasons or "billing" in message.lower()):
        return ProviderOutOfCredit(text)
    if status == 429 and re.search(r"per day|daily", message, re.IGNORECASE):
        return ProviderOutOfCredit(text)
    return None


def family_of(voice_name: str) -> _Family | None:
    match = _VOICE_NAME.match(voice_name)
    return _BY_SPELLING.get(match.group("family").lower()) if match else None


class GoogleSpeech(Provider):
    name = "google"
    display_name = "Google Cloud Text-to-Speech"
    media_type = common_pb2.MEDIA_TYPE_SPEECH
    credential_env = (KEY_ENV, *TOKEN_ENV)
    preference = 30
    submit_is_idempotent = True  # submit plans (and may list voices); nothing is billed
    voices_ttl = 600.0
    timeout: httpx.Timeout = TIMEOUT
    retry: RetryPolicy = DEFAULT_RETRY

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        token, _ = env_secret(*TOKEN_ENV)
        key, _ = env_secret(KEY_ENV)
        headers: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
            project = os.environ.get("GOOGLE_CLOUD_QUOTA_PROJECT", "").strip()  # a name, not a secret
            if project:
                headers["x-goog-user-project"] = project
        elif key:
            headers["x-goog-api-key"] = key
        self.configured = bool(headers)
        self.auth_kind = "oauth" if token else "api_key" if key else ""
        self.http = VendorHTTP(
            self.name,
            base_url=base_url_from_env("GOOGLE_TTS", DEFAULT_BASE_URL),
            headers=headers,
            timeout=self.timeout,
            retry=self.retry,
            classify_hook=google_classify,
            url_policy=UrlPolicy(
                allow_http=settings.allow_private_urls, allow_private=settings.allow_private_urls
            ),
        )
        self._voices: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._voices_lock = asyncio.Lock()

    # --- catalog ----------------------------------------------------------------

    def describe(self) -> catalog_pb2.Provider:
        capabilities = ["text_to_speech", "voices", "long_text", "languages"]
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(max_text_characters=MAX_INPUT_BYTES, formats=list(FORMATS)),
            prices=[
                catalog_pb2.Price(
                    model=f.model,
                    unit=common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS,
                    unit_price_micros=usd(f.price_per_million / 1000),
                    note=f.note,
                )
                for f in FAMILIES
            ],
            models=[
                catalog_pb2.Model(name=f.model, default=f.model == DEFAULT_MODEL, capabilities=capabilities)
                for f in FAMILIES
            ],
            configured=self.configured,
            not_configured_reason="" if self.configured else f"set {KEY_ENV} or {TOKEN_ENV[0]}",
            documentation_uri=DOCS,
            notes=[
                "the per-request limit is 5,000 BYTES of UTF-8 text; longer text is split at sentence "
                "ends and joined into one file",
                "models are voice families (they set the price); a full voice name such as "
                "en-US-Neural2-C decides the family itself",
                "voice: a full name, a short name within the model's family (C, Kore), or a preset "
                "choosing a voice of that gender: "
                + ", ".join(f"{p} ({g.lower()})" for p, (g, _) in PRESET_VOICES.items()),
                "language (BCP-47) picks voice.languageCode; default en-US",
                "speed 0.25 to 4.0; provider_options: " + ", ".join(f"{k} ({v})" for k, v in OPTIONS.items()),
                "every synthesis is billed, also when the output is fetched again",
            ],
        )

    # --- before any vendor call -----------------------------------------------------

    def validate(self, request: Message) -> None:
        super().validate(request)
        options = provider_options(request, OPTIONS)
        fmt = format_name(request) or "mp3"
        rate = int_option(options, "sample_rate_hertz", 8000, 48000)
        if fmt == "pcm" and rate not in (None, PCM_RATE):
            raise InvalidArgument.field(
                "provider_options.sample_rate_hertz",
                f"raw PCM is stored at {PCM_RATE} Hz; ask for format WAV to choose another rate",
                "UNSUPPORTED_VALUE",
            )
        number_option(options, "pitch", -20.0, 20.0)
        number_option(options, "volume_gain_db", -96.0, 16.0)
        profiles = options.get("effects_profile_id")
        if profiles is not None and (
            not isinstance(profiles, list) or not all(isinstance(p, str) and p for p in profiles)
        ):
            raise InvalidArgument.field(
                "provider_options.effects_profile_id", "must be a list of profile names", "INVALID_FORMAT"
            )
        if request.instructions.strip():
            raise InvalidArgument.field(
                "instructions", "Google's voices take no style instructions (OpenAI's gpt-4o-mini-tts does)", "UNSUPPORTED"
            )
        if request.speed and not SPEED_RANGE[0] <= request.speed <= SPEED_RANGE[1]:
            raise InvalidArgument.field("speed", "must be from 0.25 to 4.0 for Google", "OUT_OF_RANGE")
        if request.language and not _LANGUAGE.match(request.language):
            raise InvalidArgument.field("language", "must be a BCP-47 code such as en-US", "INVALID_FORMAT")
        voice = request.voice.strip()
        if voice and voice.lower() not in PRESET_VOICES:
            match = _VOICE_NAME.match(voice)
            if match:
                family = family_of(voice)
                if family is None:
                    raise InvalidArgument.field(
                        "voice",
                        f"voice family {match.group('family')!r} is not offered; use one of "
                        + ", ".join(f.spelled for f in FAMILIES),
                        "UNSUPPORTED_VALUE",
                    )
                if request.model and request.model != family.model:
                    raise InvalidArgument.field(
                        "model", f"voice {voice} is a {family.model} voice, not {request.model}", "CONFLICT"
                    )
                if request.language and request.language.lower() != match.group("language").lower():
                    raise InvalidArgument.field(
                        "language", f"voice {voice} speaks {match.group('language')}, not {request.language}", "CONFLICT"
                    )
            elif not _SHORT_NAME.match(voice):
                raise InvalidArgument.field(
                    "voice", "must be a Google voice name (en-US-Neural2-C), a short name (C) or a preset", "INVALID_FORMAT"
                )

    def _family(self, request: Message, model: str) -> _Family:
        return family_of(request.voice.strip()) or _BY_MODEL.get(model) or _BY_MODEL[DEFAULT_MODEL]

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        family = self._family(request, model)
        characters = sum(len(p) for p in split_text(request.text, MAX_INPUT_BYTES, unit="bytes"))
        return make_cost(
            characters / 1000,
            common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS,
            usd(family.price_per_million / 1000),
            common_pb2.COST_BASIS_ESTIMATED,
        )

    def final_cost(
        self, request: Message, model: str, result: PollResult, artifacts: list[StoredArtifact]
    ) -> common_pb2.Cost:
        billed = sum(o.data.get("billed_characters", 0) for o in result.outputs)
        if not billed:
            return super().final_cost(request, model, result, artifacts)
        family = self._family(request, model)
        return make_cost(
            billed / 1000,
            common_pb2.PRICE_UNIT_THOUSAND_CHARACTERS,
            usd(family.price_per_million / 1000),
            common_pb2.COST_BASIS_MEASURED,
        )

    # --- the job ------------------------------------------------------------------

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        self._require_key()
        options = provider_options(request, OPTIONS)
        fmt = format_name(request) or "mp3"
        family = self._family(request, model)
        voice = request.voice.strip()
        match = _VOICE_NAME.match(voice)
        language = request.language or (match.group("language") if match else "en-US")
        name = await self._voice_name(voice, language, family, ctx, model)
        audio_config: dict[str, Any] = {"audioEncoding": FORMATS[fmt]}
        if request.speed:
            audio_config["speakingRate"] = request.speed
        if fmt == "pcm":
            audio_config["sampleRateHertz"] = PCM_RATE
        elif "sample_rate_hertz" in options:
            audio_config["sampleRateHertz"] = int(options["sample_rate_hertz"])
        for option, field in (("pitch", "pitch"), ("volume_gain_db", "volumeGainDb"), ("effects_profile_id", "effectsProfileId")):
            if option in options:
                audio_config[field] = options[option]
        data = {
            "model": family.model,
            "format": fmt,
            "voice": {"languageCode": language, "name": name},
            "audioConfig": audio_config,
            "pieces": split_text(request.text, MAX_INPUT_BYTES, unit="bytes"),
        }
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
                        "voice": data["voice"]["name"],
                        "language": data["voice"]["languageCode"],
                        "voice_family": data["model"],
                        "audio_encoding": data["audioConfig"]["audioEncoding"],
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
        fmt = data["format"]
        output.data.setdefault("billed_characters", 0)

        def open_piece(index: int):
            return self._synthesize(data, index, ctx, output)

        joined = join_audio(
            fmt,
            len(data["pieces"]),
            open_piece,
            provider=self.name,
            model=data["model"],
            pcm=PcmFormat(PCM_RATE),
            input_wav=fmt in ("wav", "pcm"),
        )
        async with as_stream(joined) as chunks:
            yield chunks

    @contextlib.asynccontextmanager
    async def _synthesize(
        self, data: Mapping[str, Any], index: int, ctx: JobContext, output: Output
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        text = data["pieces"][index]
        body = {"input": {"text": text}, "voice": data["voice"], "audioConfig": data["audioConfig"]}
        answer, response = await self.http.request_json(
            "POST", "/v1/text:synthesize", json=body, idempotent=False, ctx=ctx, model=data["model"]
        )
        # Google bills the characters it synthesised, whatever happens to the audio now.
        output.data["billed_characters"] = output.data.get("billed_characters", 0) + len(text)
        content = answer.get("audioContent") if isinstance(answer, Mapping) else None
        try:
            if not isinstance(content, str) or not content:
                raise ValueError("no audioContent")
            audio = base64.b64decode(content, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise ProviderBadResponse(
                f"google answered without usable audioContent ({exc})",
                provider=self.name,
                model=data["model"],
                http_status=response.status_code,
                retryable=False,
            ) from None
        del answer, content

        async def chunks() -> AsyncIterator[bytes]:
            view = memoryview(audio)
            for start in range(0, len(view), 256 * 1024):
                yield bytes(view[start : start + 256 * 1024])

        yield chunks()

    # --- voices -------------------------------------------------------------------

    async def _voice_name(self, voice: str, language: str, family: _Family, ctx: JobContext, model: str) -> str:
        if _VOICE_NAME.match(voice) and family_of(voice) is not None:
            return voice
        voices = [
            v
            for v in await self.voices(language, ctx, model)
            if family_of(str(v.get("name", ""))) == family
            and language.lower() in (str(code).lower() for code in v.get("languageCodes") or [])
        ]
        voices.sort(key=lambda v: str(v.get("name")))
        preset = PRESET_VOICES.get(voice.lower())
        if voice and preset is None:
            wanted = f"{language}-{family.spelled}-{voice}".lower()
            for entry in voices:
                if str(entry.get("name", "")).lower() == wanted:
                    return str(entry["name"])
            raise InvalidArgument.field(
                "voice",
                f"Google has no {family.model} voice {voice!r} for {language}; known: "
                + (", ".join(str(v.get("name")) for v in voices[:20]) or "none"),
                "UNKNOWN_VOICE",
            )
        if preset is not None:
            gender, position = preset
            matching = [v for v in voices if v.get("ssmlGender") == gender] or voices
        else:
            matching, position = voices, 0
        if not matching:
            raise InvalidArgument.field(
                "language", f"Google lists no {family.model} voice for {language}", "UNSUPPORTED_VALUE"
            )
        return str(matching[position % len(matching)]["name"])

    async def voices(self, language: str, ctx: JobContext | None = None, model: str = "") -> list[dict[str, Any]]:
        """``GET /v1/voices?languageCode=`` for one language, cached for ``voices_ttl``."""
        async with self._voices_lock:
            cached = self._voices.get(language.lower())
            if cached is not None and time.monotonic() - cached[0] < self.voices_ttl:
                return cached[1]
            body, response = await self.http.request_json(
                "GET", "/v1/voices", params={"languageCode": language}, idempotent=True, ctx=ctx, model=model
            )
            voices = body.get("voices", []) if isinstance(body, Mapping) else None
            if not isinstance(voices, list) or not all(
                isinstance(v, Mapping) and isinstance(v.get("name"), str) for v in voices
            ):
                raise ProviderBadResponse(
                    "google listed voices in an unexpected shape (no voices[].name)",
                    provider=self.name,
                    model=model,
                    http_status=response.status_code,
                )
            listed = [dict(v) for v in voices]
            self._voices[language.lower()] = (time.monotonic(), listed)
            return listed

    def _require_key(self) -> None:
        """PROVIDER_NOT_CONFIGURED for a job resumed after the credentials were removed."""
        if not self.configured:
            entry = self.describe()
            raise ProviderNotConfigured(
                f"provider {self.name} is not configured: {entry.not_configured_reason}", provider=self.name
            )

    async def aclose(self) -> None:
        await self.http.aclose()
