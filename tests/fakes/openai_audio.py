"""A fake OpenAI speech API (``POST /v1/audio/speech``) on the fake-vendor harness.

As OpenAI documents it (shared/vendors/audio.md): Bearer auth, ``input`` at
most 4,096 characters, ``speed`` 0.25-4.0, ``instructions`` refused by
tts-1/tts-1-hd, ``response_format`` mp3/opus/aac/flac/wav/pcm (pcm is raw
24 kHz s16le), validation errors as **400** ``{"error": {message, type, param,
code}}``, and two kinds of 429: a retryable ``rate_limit_exceeded`` and a final
``insufficient_quota``. The audio is real and lasts ``seconds_per_character``
per character of input, divided by the speed.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from tests.fakes.elevenlabs import render_audio_bytes
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply

API_KEY = "sk-test-openai-0123456789abcdef"
MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse", "marin", "cedar")
# response_format -> (render format, sample rate, content type)
FORMATS = {
    "mp3": ("mp3", 24000, "audio/mpeg"),
    "opus": ("ogg_opus", 48000, "audio/ogg"),
    "aac": ("aac", 24000, "audio/aac"),
    "flac": ("flac", 24000, "audio/flac"),
    "wav": ("wav", 24000, "audio/wav"),
    "pcm": ("pcm", 24000, "audio/pcm"),
}


def openai_error(status: int, message: str, type_: str, code: str | None = None, param: str | None = None) -> Reply:
    return Reply(status=status, body={"error": {"message": message, "type": type_, "param": param, "code": code}})


def insufficient_quota() -> Reply:
    return openai_error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    )


class FakeOpenAIAudio:
    """Routes ``POST {prefix}/audio/speech`` (prefix ``/v1`` by default)."""

    def __init__(
        self, server: FakeVendorServer, *, api_key: str = API_KEY, seconds_per_character: float = 0.004, prefix: str = "/v1"
    ) -> None:
        self.server = server
        self._options = dict(api_key=api_key, seconds_per_character=seconds_per_character, prefix=prefix)
        self.api_key = api_key
        self.seconds_per_character = seconds_per_character
        self.path = f"{prefix}/audio/speech"
        self.durations: list[float] = []
        #: The audio files served, in order.
        self.served_audio: list[bytes] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        server.route("POST", self.path, self._speech)

    def reset(self) -> None:
        self.server.reset()
        self.__init__(self.server, **self._options)

    def calls(self) -> list[FakeRequest]:
        return self.server.calls("POST", self.path)

    def _speech(self, request: FakeRequest) -> Any:
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            shown = auth.removeprefix("Bearer ")
            masked = f"{shown[:3]}*****{shown[-4:]}" if len(shown) > 8 else "***"
            return openai_error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        try:
            body = request.json()
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request.", "invalid_request_error")
        model = body.get("model")
        text = body.get("input")
        voice = body.get("voice")
        if model not in MODELS:
            return openai_error(400, f"Invalid model: {model}", "invalid_request_error", param="model")
        if not isinstance(text, str) or not text:
            return openai_error(400, "Missing required parameter: 'input'.", "invalid_request_error", param="input")
        if len(text) > 4096:
            return openai_error(
                400,
                f"[{{'type': 'string_too_long', 'loc': ('body', 'input'), 'msg': 'String should have at most 4096 "
                f"characters', 'input': '{text[:20]}...'}}]",
                "invalid_request_error",
                param="input",
            )
        if not (voice in VOICES or (isinstance(voice, dict) and str(voice.get("id", "")).startswith("voice_"))):
            return openai_error(400, f"Invalid voice: {voice}", "invalid_request_error", param="voice")
        if "instructions" in body and not model.startswith("gpt-4o-mini-tts"):
            return openai_error(
                400, "instructions are not supported with this model", "invalid_request_error", param="instructions"
            )
        speed = body.get("speed", 1.0)
        if not 0.25 <= speed <= 4.0:
            return openai_error(400, "speed must be between 0.25 and 4.0", "invalid_request_error", param="speed")
        response_format = body.get("response_format", "mp3")
        if response_format not in FORMATS:
            return openai_error(400, f"Invalid response_format: {response_format}", "invalid_request_error")
        fmt, rate, content_type = FORMATS[response_format]
        seconds = max(0.3, len(text) * self.seconds_per_character / speed)
        serial = next(self._ids)
        with self._lock:
            self.durations.append(seconds)
        audio = render_audio_bytes(fmt, seconds, rate=rate, text=text, seed=serial)
        with self._lock:
            self.served_audio.append(audio)
        size = 16 * 1024
        return Reply(
            headers={"Content-Type": content_type, "x-request-id": f"req_{serial:04d}"},
            chunks=[audio[i : i + size] for i in range(0, len(audio), size)],
        )
