"""A fake ElevenLabs API (text to speech, voices, sound effects) on the fake-vendor harness.

It behaves as ElevenLabs documents (shared/vendors/audio.md): ``xi-api-key``
auth, ``output_format`` as a query parameter, audio bytes in the answer
(chunked on ``/stream``) with ``character-cost`` and ``request-id`` headers,
per-model character limits, errors as ``{"detail": {"status", "message"}}``
(422 as FastAPI's ``{"detail": [{loc, msg, type}]}``), and an exhausted quota
as HTTP **401** ``quota_exceeded``. The audio is real (rendered by
``providers.mock.media``): speech lasts ``seconds_per_character`` per
character of text, so a longer text gives a longer file.

Faults are injected with the harness (``server.fail_next`` / ``script``).
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

from providers.mock import media
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply

API_KEY = "el-test-key-0123456789"
MODEL_LIMITS = {
    "eleven_multilingual_v2": 10_000,
    "eleven_v3": 3_000,
    "eleven_flash_v2_5": 40_000,
    "eleven_turbo_v2_5": 40_000,
    "eleven_flash_v2": 30_000,
    "eleven_turbo_v2": 30_000,
    "eleven_monolingual_v1": 10_000,
    "eleven_multilingual_v1": 10_000,
}
VOICES = [
    {"voice_id": "pNInz6obpgDQGcFmaJgB", "name": "Adam", "category": "premade", "labels": {"gender": "male"}},
    {"voice_id": "21m00Tcm4TlvDq8ikWAM", "name": "Rachel", "category": "premade", "labels": {"description": "calm"}},
    {"voice_id": "TxGEqnHWrfWFTfGW9XjX", "name": "Josh", "category": "premade", "is_legacy": True},
    {"voice_id": "EXAVITQu4vr4xnSDxMaL", "name": "Sarah", "category": "premade"},
    {"voice_id": "VR6AewLTigWG4xSOukaG", "name": "Arnold", "category": "premade", "is_legacy": True},
    {"voice_id": "Zx9CustomVoice000001", "name": "Studio Narrator", "category": "cloned"},
]
_MIME = {"mp3": "audio/mpeg", "pcm": "audio/pcm", "ogg_opus": "audio/ogg"}


def detail_error(status_code: int, status: str, message: str) -> Reply:
    """An ElevenLabs application error body."""
    return Reply(status=status_code, body={"detail": {"status": status, "message": message}})


def validation_error(field: str, message: str) -> Reply:
    """A FastAPI-style 422, as ElevenLabs answers malformed bodies."""
    return Reply(
        status=422,
        body={"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]},
    )


def render_audio_bytes(
    fmt: str, seconds: float, *, rate: int, text: str, seed: int = 1, kind: str = "speech"
) -> bytes:
    """Real audio of ``seconds`` in ``fmt`` (wav, pcm, mp3, ogg_opus, flac, aac).

    Only the start of ``text`` shapes the sound (rendering every character of a
    long text would be slow); the duration is the caller's.
    """
    fd, path = tempfile.mkstemp(prefix="fake-audio-")
    os.close(fd)
    try:
        media.render_audio(
            path,
            kind=kind,
            text_or_prompt=text[:80] or "audio",
            seed=seed,
            duration_seconds=seconds,
            format=fmt,
            sample_rate_hz=rate,
        )
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


def parse_output_format(value: str) -> tuple[str, int] | None:
    """ElevenLabs output_format -> (render format, sample rate), None when unknown."""
    parts = value.split("_")
    try:
        codec, rate = parts[0], int(parts[1])
    except (IndexError, ValueError):
        return None
    if codec == "mp3" and len(parts) == 3 and rate in (22050, 24000, 44100):
        return "mp3", rate
    if codec == "pcm" and len(parts) == 2 and rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000):
        return "pcm", rate
    if codec == "opus" and len(parts) == 3 and rate == 48000:
        return "ogg_opus", rate
    return None


class FakeElevenLabs:
    """Routes for ``/v1/voices``, ``/v1/text-to-speech/{voice_id}[/stream]`` and ``/v1/sound-generation``."""

    def __init__(
        self,
        server: FakeVendorServer,
        *,
        api_key: str = API_KEY,
        seconds_per_character: float = 0.004,
        quota_characters: int | None = None,
        send_character_cost: bool = True,
    ) -> None:
        self.server = server
        self._options = dict(
            api_key=api_key,
            seconds_per_character=seconds_per_character,
            quota_characters=quota_characters,
            send_character_cost=send_character_cost,
        )
        self.api_key = api_key
        self.seconds_per_character = seconds_per_character
        #: Characters left on the account; None: unlimited.
        self.quota_characters = quota_characters
        self.send_character_cost = send_character_cost
        self.voices = [dict(v) for v in VOICES]
        #: Audio durations (seconds) served, in order, by TTS and sound generation.
        self.durations: list[float] = []
        #: The audio files served, in order.
        self.served_audio: list[bytes] = []
        self._lock = threading.Lock()
        self._served = 0
        server.route("GET", "/v1/voices", self._list_voices)
        server.route("POST", "/v1/text-to-speech/{voice_id}", self._tts)
        server.route("POST", "/v1/text-to-speech/{voice_id}/stream", self._tts)
        server.route("POST", "/v1/sound-generation", self._sound)

    @property
    def url(self) -> str:
        return self.server.url

    def reset(self) -> None:
        """Forget requests, faults and changed settings: the fake as first built."""
        self.server.reset()
        self.__init__(self.server, **self._options)

    def tts_calls(self) -> list[FakeRequest]:
        return [r for r in self.server.calls("POST") if r.path.startswith("/v1/text-to-speech/")]

    def sound_calls(self) -> list[FakeRequest]:
        return self.server.calls("POST", "/v1/sound-generation")

    # --- handlers ---

    def _auth(self, request: FakeRequest) -> Reply | None:
        key = request.headers.get("xi-api-key")
        if not key:
            return detail_error(401, "needs_authorization", "Neither authorization header nor xi-api-key received.")
        if key != self.api_key:
            return detail_error(401, "invalid_api_key", "Invalid API key")
        return None

    def _list_voices(self, request: FakeRequest) -> Any:
        denied = self._auth(request)
        if denied:
            return denied
        legacy = request.arg("show_legacy") == "true"
        return {"voices": [v for v in self.voices if legacy or not v.get("is_legacy")]}

    def _charge(self, characters: int) -> Reply | None:
        with self._lock:
            if self.quota_characters is None:
                return None
            if characters > self.quota_characters:
                return detail_error(
                    401,
                    "quota_exceeded",
                    f"This request exceeds your quota of 10000. You have {self.quota_characters} credits "
                    f"remaining, while {characters} credits are required for this request.",
                )
            self.quota_characters -= characters
            return None

    def _audio_reply(self, fmt: str, rate: int, seconds: float, text: str, cost: int, stream: bool, kind: str) -> Reply:
        with self._lock:
            self._served += 1
            serial = self._served
            self.durations.append(seconds)
        audio = render_audio_bytes(fmt, seconds, rate=rate, text=text, seed=serial, kind=kind)
        with self._lock:
            self.served_audio.append(audio)
        headers = {"Content-Type": _MIME[fmt], "request-id": f"req{serial:04d}"}
        if self.send_character_cost:
            headers["character-cost"] = str(cost)
        if stream:
            size = 16 * 1024
            return Reply(headers=headers, chunks=[audio[i : i + size] for i in range(0, len(audio), size)])
        return Reply(headers=headers, body=audio)

    def _tts(self, request: FakeRequest) -> Any:
        denied = self._auth(request)
        if denied:
            return denied
        try:
            body = request.json()
        except ValueError:
            return validation_error("body", "Expecting value: line 1 column 1 (char 0)")
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            return validation_error("text", "field required")
        model = body.get("model_id") or "eleven_multilingual_v2"
        if model not in MODEL_LIMITS:
            return detail_error(400, "model_not_found", f"A model with model ID {model} does not exist.")
        if len(text) > MODEL_LIMITS[model]:
            return detail_error(
                400,
                "max_character_limit_exceeded",
                f"You are sending {len(text)} characters with model {model}, "
                f"but the maximum is {MODEL_LIMITS[model]} characters per request.",
            )
        voice_id = request.params["voice_id"]
        if not any(v["voice_id"] == voice_id for v in self.voices):
            return detail_error(400, "voice_not_found", f"A voice with the voice_id {voice_id} was not found.")
        if "language_code" in body and not model.endswith("v2_5"):
            return detail_error(
                400, "unsupported_language_code", f"Model {model} does not support language_code."
            )
        settings = body.get("voice_settings") or {}
        speed = settings.get("speed", 1.0)
        if not 0.7 <= speed <= 1.2:
            return validation_error("voice_settings.speed", "speed must be between 0.7 and 1.2")
        parsed = parse_output_format(request.arg("output_format", "mp3_44100_128"))
        if parsed is None:
            return validation_error("output_format", "unsupported output format")
        refused = self._charge(len(text))
        if refused:
            return refused
        seconds = max(0.3, len(text) * self.seconds_per_character / speed)
        fmt, rate = parsed
        return self._audio_reply(
            fmt, rate, seconds, text, len(text), request.path.endswith("/stream"), "speech"
        )

    def _sound(self, request: FakeRequest) -> Any:
        denied = self._auth(request)
        if denied:
            return denied
        body = request.json()
        text = body.get("text")
        if not isinstance(text, str) or not text:
            return validation_error("text", "field required")
        duration = body.get("duration_seconds")
        if duration is not None and not 0.5 <= duration <= 30:
            return validation_error("duration_seconds", "ensure this value is between 0.5 and 30")
        influence = body.get("prompt_influence", 0.3)
        if not 0 <= influence <= 1:
            return validation_error("prompt_influence", "ensure this value is between 0 and 1")
        if body.get("loop") and body.get("model_id", "eleven_text_to_sound_v2") != "eleven_text_to_sound_v2":
            return detail_error(400, "invalid_parameters", "loop is only supported by eleven_text_to_sound_v2")
        parsed = parse_output_format(request.arg("output_format", "mp3_44100_128"))
        if parsed is None:
            return validation_error("output_format", "unsupported output format")
        seconds = duration if duration is not None else 2.0
        credits = round(seconds * 40) if duration is not None else 100
        refused = self._charge(credits)
        if refused:
            return refused
        fmt, rate = parsed
        return self._audio_reply(fmt, rate, seconds, text, credits, False, "sound_effect")
