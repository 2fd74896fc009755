"""A fake Mubert Music API v3 on 127.0.0.1, on top of ``FakeVendorServer``.

It behaves as vendors/audio.md §5 documents the real one:

- every ``/api/v3/public/*`` call needs the ``customer-id`` and ``access-token``
  headers; otherwise 401 ``{"message": "Unauthenticated", "code": "Unauthenticated", ...}``;
- ``POST /api/v3/public/tracks`` takes exactly one of ``prompt``/``playlist_index``,
  ``duration`` >= 5, ``format`` mp3|wav, ``intensity``, ``mode``, ``bitrate``, and
  ``bpm``/``key`` only with a playlist; anything else is a Laravel-style 422;
  it answers ``{"data": Track}`` with one generation in ``processing``;
- ``GET /api/v3/public/tracks/{id}`` walks ``processing`` → ``done`` (with a
  ``url``) after ``polls_until_done`` polls, or → ``failed`` when asked;
- the ``url`` serves a real MP3/WAV of the track's duration.

Usage::

    with FakeMubert() as fake:
        monkeypatch.setenv("MUBERT_BASE_URL", fake.base_url)
        fake.next_outcome = "failed"
        fake.fail_next("POST", fake.TRACKS, fake.licence_error("LicenseLimitTracksCount"))
"""

from __future__ import annotations

import functools
import os
import tempfile
import threading
import uuid
from typing import Any

from providers.mock import media
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply, error_reply

CUSTOMER_ID = "cust-7f3a2c"
ACCESS_TOKEN = "mubert-token-5d1e9b7c"

_CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}


@functools.cache
def audio_bytes(fmt: str, seconds: float, kind: str = "music") -> bytes:
    """A real, decodable audio file (cached: rendering MP3 costs ~25 ms per second)."""
    fd, path = tempfile.mkstemp(suffix=f".{fmt}")
    os.close(fd)
    try:
        media.render_audio(
            path,
            kind=kind,
            text_or_prompt="fake vendor",
            seed=7,
            duration_seconds=seconds,
            format=fmt,
        )
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        os.unlink(path)


class FakeMubert(FakeVendorServer):
    TRACKS = "/api/v3/public/tracks"
    TRACK = "/api/v3/public/tracks/{id}"
    FILE = "/files/{name}"

    def __init__(self) -> None:
        super().__init__()
        self.customer_id = CUSTOMER_ID
        self.access_token = ACCESS_TOKEN
        #: Polls answered "processing" before a track is done.
        self.polls_until_done = 1
        #: What the next created track ends as: "done" or "failed".
        self.next_outcome = "done"
        self.tracks: dict[str, dict[str, Any]] = {}
        self._state_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return self.url + "/api/v3"

    def start(self) -> FakeMubert:
        super().start()
        self.route("POST", self.TRACKS, self._create)
        self.route("GET", self.TRACK, self._get)
        self.route("GET", self.FILE, self._file)
        return self

    # --- vendor error bodies ---

    @staticmethod
    def unauthenticated() -> Reply:
        return error_reply(
            401,
            {
                "message": "Unauthenticated",
                "code": "Unauthenticated",
                "description": "The customer-id or access-token is missing or invalid.",
            },
        )

    @staticmethod
    def licence_error(code: str, **extra: Any) -> Reply:
        body = {
            "code": code,
            "message": f"{code}",
            "description": f"Licence check failed: {code}",
            **extra,
        }
        return error_reply(403, body)

    @staticmethod
    def validation_error(field: str, message: str) -> Reply:
        return error_reply(422, {"message": message, "errors": {field: [message]}})

    # --- routes ---

    def _auth(self, request: FakeRequest) -> Reply | None:
        if (
            request.headers.get("customer-id") != self.customer_id
            or request.headers.get("access-token") != self.access_token
        ):
            return self.unauthenticated()
        return None

    def _create(self, request: FakeRequest) -> Reply | dict:
        denied = self._auth(request)
        if denied:
            return denied
        body = request.json()
        sources = [k for k in ("prompt", "playlist_index", "image") if body.get(k)]
        if len(sources) != 1:
            return self.validation_error(
                "prompt", "Exactly one of prompt, playlist_index or image is required."
            )
        duration = body.get("duration")
        if not isinstance(duration, int) or duration < 5:
            return self.validation_error(
                "duration", "The duration field must be an integer of at least 5."
            )
        if "prompt" in body and len(body["prompt"]) > 200:
            return self.validation_error(
                "prompt", "The prompt field must not be greater than 200 characters."
            )
        fmt = body.get("format", "mp3")
        if fmt not in _CONTENT_TYPES:
            return self.validation_error("format", "The selected format is invalid.")
        if body.get("intensity", "high") not in ("low", "medium", "high"):
            return self.validation_error("intensity", "The selected intensity is invalid.")
        if body.get("mode", "track") not in ("track", "loop", "jingle", "mix"):
            return self.validation_error("mode", "The selected mode is invalid.")
        if body.get("bitrate", 128) not in (32, 96, 128, 192, 256, 320):
            return self.validation_error("bitrate", "The selected bitrate is invalid.")
        for field in ("bpm", "key"):
            if field in body and "playlist_index" not in body:
                return self.validation_error(
                    field, f"The {field} field is prohibited unless playlist index is present."
                )
        track_id = str(uuid.uuid4())
        track = {
            "id": track_id,
            "session_id": str(uuid.uuid4()),
            "playlist_index": body.get("playlist_index"),
            "prompt": body.get("prompt"),
            "duration": duration,
            "intensity": body.get("intensity", "high"),
            "mode": body.get("mode", "track"),
            "key": body.get("key"),
            "bpm": body.get("bpm", 120),
            "created_at": "2026-01-01T00:00:00Z",
            "generations": [
                {
                    "session_id": str(uuid.uuid4()),
                    "format": fmt,
                    "bitrate": body.get("bitrate", 128),
                    "status": "processing",
                    "generated_at": None,
                    "expired_at": None,
                    "created_at": "2026-01-01T00:00:00Z",
                    "url": None,
                }
            ],
            "_outcome": self.next_outcome,
            "_polls": 0,
        }
        with self._state_lock:
            self.tracks[track_id] = track
        return {"data": self._public(track)}

    def _get(self, request: FakeRequest) -> Reply | dict:
        denied = self._auth(request)
        if denied:
            return denied
        with self._state_lock:
            track = self.tracks.get(request.params["id"])
            if track is None:
                return error_reply(404, {"message": "Track not found.", "code": "NotFound"})
            track["_polls"] += 1
            if track["_polls"] > self.polls_until_done:
                for generation in track["generations"]:
                    if track["_outcome"] == "failed":
                        generation["status"] = "failed"
                    else:
                        generation["status"] = "done"
                        generation["generated_at"] = "2026-01-01T00:00:05Z"
                        generation["expired_at"] = "2026-01-08T00:00:05Z"
                        generation["url"] = f"{self.url}/files/{track['id']}.{generation['format']}"
            return {"data": self._public(track)}

    def _file(self, request: FakeRequest) -> Reply:
        track_id, _, fmt = request.params["name"].rpartition(".")
        track = self.tracks.get(track_id)
        if track is None or fmt not in _CONTENT_TYPES:
            return error_reply(404, "Not Found")
        return Reply(
            body=audio_bytes(fmt, float(track["duration"])),
            headers={"Content-Type": _CONTENT_TYPES[fmt]},
        )

    @staticmethod
    def _public(track: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in track.items() if not k.startswith("_")}
