"""A fake Soundraw B2B API v2 on 127.0.0.1, on top of ``FakeVendorServer``.

As vendors/audio.md §6 describes the real one (from public clients; the
official document is private):

- ``POST /api/v2/musics/compose`` needs ``Authorization: Bearer <token>``;
  otherwise 401 with a JSON ``{"message": ...}``;
- the body carries ``moods``/``genres``/``themes`` (string or list of Soundraw
  values), ``length``, ``tempo``, ``energy_levels``, ``mute_stems``,
  ``file_format``; unknown values get a 422 ``{"message", "errors": {...}}``;
- it answers **synchronously** with ``{<format>_url, share_link, bpm, length,
  timestamps, ...}``; the URL serves a real MP3/WAV of ``length`` seconds.

Error bodies are not documented publicly; the fake uses ``{"message": ...}``.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from providers.music.soundraw import ENERGIES, GENRES, MOODS, TEMPOS, THEMES
from tests.fakes.mubert import audio_bytes
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply, error_reply

API_TOKEN = "soundraw-token-3c9e1a"
_CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}


class FakeSoundraw(FakeVendorServer):
    COMPOSE = "/api/v2/musics/compose"
    FILE = "/files/{name}"

    def __init__(self) -> None:
        super().__init__()
        self.token = API_TOKEN
        #: Set to drop the ``<format>_url`` key from the next answers (a broken vendor).
        self.omit_url = False
        self.songs: dict[str, dict[str, Any]] = {}
        self._state_lock = threading.Lock()

    def start(self) -> FakeSoundraw:
        super().start()
        self.route("POST", self.COMPOSE, self._compose)
        self.route("GET", self.FILE, self._file)
        return self

    @staticmethod
    def invalid(field: str, message: str) -> Reply:
        return error_reply(422, {"message": message, "errors": {field: [message]}})

    def _compose(self, request: FakeRequest) -> Reply | dict:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return error_reply(401, {"message": "Unauthenticated."})
        body = request.json()
        for key, allowed in (
            ("moods", MOODS),
            ("genres", GENRES),
            ("themes", THEMES),
            ("tempo", TEMPOS),
        ):
            values = body.get(key, [])
            for value in [values] if isinstance(values, str) else values:
                if value not in allowed:
                    return self.invalid(key, f"The selected {key} is invalid.")
        length = body.get("length")
        if not isinstance(length, int) or not 10 <= length <= 300:
            return self.invalid("length", "The length must be between 10 and 300.")
        fmt = body.get("file_format", "m4a")
        if fmt not in _CONTENT_TYPES:
            return self.invalid(
                "file_format", "The selected file format is not served by this fake."
            )
        timestamps = body.get("energy_levels") or [{"start": 0, "end": length, "energy": "Medium"}]
        for level in timestamps:
            if level.get("energy") not in ENERGIES:
                return self.invalid("energy_levels", "The selected energy is invalid.")
        song_id = uuid.uuid4().hex[:12]
        with self._state_lock:
            self.songs[song_id] = {"length": length, "format": fmt}
        answer: dict[str, Any] = {
            "request_id": song_id,
            "share_link": f"https://soundraw.io/edit_music?m={song_id}",
            "bpm": {"low": 80, "high": 140}.get(body.get("tempo"), 110),
            "length": length,
            "timestamps": timestamps,
            "moods": body.get("moods"),
            "genres": body.get("genres"),
            "themes": body.get("themes"),
        }
        if not self.omit_url:
            answer[f"{fmt}_url"] = f"{self.url}/files/{song_id}.{fmt}"
        return answer

    def _file(self, request: FakeRequest) -> Reply:
        song_id, _, fmt = request.params["name"].rpartition(".")
        song = self.songs.get(song_id)
        if song is None or song["format"] != fmt:
            return error_reply(404, "Not Found")
        return Reply(
            body=audio_bytes(fmt, float(song["length"])),
            headers={"Content-Type": _CONTENT_TYPES[fmt]},
        )
