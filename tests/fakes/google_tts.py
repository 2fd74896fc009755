"""A fake Google Cloud Text-to-Speech REST API (``/v1/text:synthesize``, ``/v1/voices``).

As Google documents it (shared/vendors/audio.md): an API key in ``?key=`` or
``x-goog-api-key``, or an OAuth ``Authorization: Bearer`` token; camelCase
JSON; ``voice.languageCode`` required; at most 5,000 **bytes** of input text;
the audio as base64 ``audioContent`` in a JSON answer (LINEAR16 carries a
RIFF header); errors as ``{"error": {code, message, status, details}}`` (an
invalid API key is a 400 with reason API_KEY_INVALID). The audio is real and
lasts ``seconds_per_character`` per character, divided by speakingRate.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

from tests.fakes.elevenlabs import render_audio_bytes
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply

API_KEY = "AIzaFakeGoogleKey0123456789"
TOKEN = "ya29.fake-oauth-token-0123456789"
VOICES = [
    {"languageCodes": ["en-US"], "name": "en-US-Neural2-A", "ssmlGender": "MALE", "naturalSampleRateHertz": 24000},
    {"languageCodes": ["en-US"], "name": "en-US-Neural2-C", "ssmlGender": "FEMALE", "naturalSampleRateHertz": 24000},
    {"languageCodes": ["en-US"], "name": "en-US-Neural2-D", "ssmlGender": "MALE", "naturalSampleRateHertz": 24000},
    {"languageCodes": ["en-US"], "name": "en-US-Neural2-F", "ssmlGender": "FEMALE", "naturalSampleRateHertz": 24000},
    {"languageCodes": ["en-US"], "name": "en-US-Wavenet-D", "ssmlGender": "MALE", "naturalSampleRateHertz": 24000},
    {"languageCodes": ["en-US"], "name": "en-US-Standard-B", "ssmlGender": "MALE", "naturalSampleRateHertz": 24000},
    {"languageCodes": ["en-US"], "name": "en-US-Chirp3-HD-Kore", "ssmlGender": "FEMALE", "naturalSampleRateHertz": 24000},
    {"languageCodes": ["ja-JP"], "name": "ja-JP-Neural2-B", "ssmlGender": "FEMALE", "naturalSampleRateHertz": 24000},
    {"languageCodes": ["ja-JP"], "name": "ja-JP-Neural2-C", "ssmlGender": "MALE", "naturalSampleRateHertz": 24000},
]
_ENCODINGS = {"LINEAR16": "wav", "MP3": "mp3", "OGG_OPUS": "ogg_opus"}


def google_error(code: int, status: str, message: str, reason: str = "") -> Reply:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}
        ]
    return Reply(status=code, body={"error": error})


def invalid_argument(message: str) -> Reply:
    return google_error(400, "INVALID_ARGUMENT", message)


class FakeGoogleTTS:
    def __init__(
        self,
        server: FakeVendorServer,
        *,
        api_key: str = API_KEY,
        token: str = TOKEN,
        seconds_per_character: float = 0.004,
    ) -> None:
        self.server = server
        self._options = dict(api_key=api_key, token=token, seconds_per_character=seconds_per_character)
        self.api_key = api_key
        self.token = token
        self.seconds_per_character = seconds_per_character
        self.durations: list[float] = []
        self._lock = threading.Lock()
        self._served = 0
        server.route("POST", "/v1/text:synthesize", self._synthesize)
        server.route("GET", "/v1/voices", self._voices)

    def reset(self) -> None:
        self.server.reset()
        self.__init__(self.server, **self._options)

    def calls(self) -> list[FakeRequest]:
        return self.server.calls("POST", "/v1/text:synthesize")

    def _auth(self, request: FakeRequest) -> Reply | None:
        key = request.headers.get("x-goog-api-key") or request.arg("key")
        bearer = request.headers.get("authorization", "")
        if bearer:
            if bearer != f"Bearer {self.token}":
                return google_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                    "login cookie or other valid authentication credential.",
                    "ACCESS_TOKEN_TYPE_UNSUPPORTED",
                )
            return None
        if not key:
            return google_error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if key != self.api_key:
            return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", "API_KEY_INVALID")
        return None

    def _voices(self, request: FakeRequest) -> Any:
        denied = self._auth(request)
        if denied:
            return denied
        language = (request.arg("languageCode") or "").lower()
        return {"voices": [v for v in VOICES if not language or language in (c.lower() for c in v["languageCodes"])]}

    def _synthesize(self, request: FakeRequest) -> Any:
        denied = self._auth(request)
        if denied:
            return denied
        try:
            body = request.json()
        except ValueError:
            return invalid_argument("Invalid JSON payload received.")
        text = (body.get("input") or {}).get("text")
        if not text:
            return invalid_argument("Either `input.text` or `input.ssml` needs to be set.")
        if len(text.encode("utf-8")) > 5000:
            return invalid_argument(
                "Either `input.text` or `input.ssml` is longer than the limit of 5000 bytes. "
                "This limit is different from quotas. To fix, reduce the byte length of the characters in this request."
            )
        voice = body.get("voice") or {}
        language = voice.get("languageCode")
        if not language:
            return invalid_argument("Invalid value at 'voice.language_code'; language code is required.")
        name = voice.get("name")
        known = next((v for v in VOICES if v["name"] == name), None) if name else None
        if name and (known is None or language not in known["languageCodes"]):
            return invalid_argument(f"Voice '{name}' does not exist. Is it misspelled?")
        config = body.get("audioConfig") or {}
        encoding = config.get("audioEncoding")
        if encoding not in _ENCODINGS:
            return invalid_argument(f"Invalid value at 'audio_config.audio_encoding' ({encoding}).")
        rate = config.get("speakingRate") or 1.0
        if not 0.25 <= rate <= 4.0:
            return invalid_argument("speaking_rate must be within [0.25, 4.0].")
        sample_rate = config.get("sampleRateHertz") or 24000
        if encoding == "OGG_OPUS":
            sample_rate = 48000
        seconds = max(0.3, len(text) * self.seconds_per_character / rate)
        with self._lock:
            self._served += 1
            serial = self._served
            self.durations.append(seconds)
        audio = render_audio_bytes(_ENCODINGS[encoding], seconds, rate=sample_rate, text=text, seed=serial)
        return {"audioContent": base64.b64encode(audio).decode("ascii")}
