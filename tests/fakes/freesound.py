"""A fake Freesound APIv2 on 127.0.0.1, on top of ``FakeVendorServer``.

As vendors/audio.md §8 and MTG/freesound's docs describe the real one:

- ``GET /apiv2/search/`` needs the API key (``Authorization: Token <key>`` or
  ``?token=``), else 401 ``{"detail": ...}``; it understands ``query`` (every
  term must match the name or a tag), ``filter`` with ``duration:[a TO b]``,
  ``license:("…" OR "…")``, ``type:x`` and ``tag:x`` (anything else is a 400),
  ``sort``, ``page_size`` and ``fields``; licences are returned as Creative
  Commons deed URLs, as the real serializer does;
- ``GET /apiv2/sounds/{id}/download/`` needs an OAuth2 ``Bearer`` token (a
  ``Token`` gets 401) and serves the original file;
- previews are plain files on the server (the real ones sit on a CDN).

Every served file is real audio of the sound's duration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.mubert import audio_bytes
from tests.fakes.server import FakeRequest, FakeVendorServer, Reply, error_reply

API_KEY = "freesound-key-4e7d21"
OAUTH_TOKEN = "freesound-oauth-9a0c55"

LICENSES = {
    "Attribution": "http://creativecommons.org/licenses/by/4.0/",
    "Attribution NonCommercial": "http://creativecommons.org/licenses/by-nc/4.0/",
    "Creative Commons 0": "http://creativecommons.org/publicdomain/zero/1.0/",
    "Sampling+": "http://creativecommons.org/licenses/sampling+/1.0/",
}
_CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}


@dataclass
class Sound:
    id: int
    name: str
    license: str  # a key of LICENSES
    duration: float
    type: str
    tags: list[str] = field(default_factory=list)
    username: str = "fieldrec"


DEFAULT_SOUNDS = [
    Sound(
        1001, "Door slam hard", "Attribution NonCommercial", 2.0, "wav", ["door", "slam"], "alice"
    ),
    Sound(1002, "Door slam wooden", "Attribution", 2.6, "wav", ["door", "slam", "wood"], "bob"),
    Sound(
        1003,
        "Door slam metal",
        "Creative Commons 0",
        1.5,
        "aiff",
        ["door", "slam", "metal"],
        "carol",
    ),
    Sound(1004, "Door slam far", "Creative Commons 0", 4.0, "flac", ["door", "slam"], "dave"),
    Sound(1005, "Door knock", "Sampling+", 1.0, "mp3", ["door", "knock"], "erin"),
    Sound(1006, "Rain on roof", "Creative Commons 0", 12.0, "flac", ["rain", "roof"], "frank"),
]

_FILTER_TOKEN = re.compile(
    r'(?P<field>\w+):(?:\[(?P<lo>\S+) TO (?P<hi>\S+)\]|\((?P<group>[^)]*)\)|"(?P<quoted>[^"]*)"|(?P<word>[^\s]+))'
)


class FakeFreesound(FakeVendorServer):
    SEARCH = "/apiv2/search/"
    DOWNLOAD = "/apiv2/sounds/{id}/download/"
    PREVIEW = "/previews/{name}"

    def __init__(self) -> None:
        super().__init__()
        self.key = API_KEY
        self.oauth_token = OAUTH_TOKEN
        self.sounds: list[Sound] = list(DEFAULT_SOUNDS)
        #: Ignore the ``license`` filter (a search engine that lets a result slip through).
        self.ignore_license_filter = False

    @property
    def base_url(self) -> str:
        return self.url + "/apiv2"

    def start(self) -> FakeFreesound:
        super().start()
        self.route("GET", self.SEARCH, self._search)
        self.route("GET", self.DOWNLOAD, self._download)
        self.route("GET", self.PREVIEW, self._preview)
        return self

    @staticmethod
    def detail(status: int, text: str) -> Reply:
        return error_reply(status, {"detail": text})

    def _token_ok(self, request: FakeRequest) -> bool:
        return (
            request.headers.get("authorization") == f"Token {self.key}"
            or request.arg("token") == self.key
        )

    def _search(self, request: FakeRequest) -> Reply | dict:
        if not self._token_ok(request):
            return self.detail(401, "Invalid token.")
        terms = (request.arg("query") or "").lower().split()
        matches = [s for s in self.sounds if all(t in s.name.lower() or t in s.tags for t in terms)]
        text = request.arg("filter") or ""
        consumed = 0
        for token in _FILTER_TOKEN.finditer(text):
            if text[consumed : token.start()].strip():
                break
            consumed = token.end()
            try:
                matches = [s for s in matches if self._passes(s, token)]
            except ValueError:
                return self.detail(400, f"Invalid filter: {token.group(0)}")
        if text[consumed:].strip():
            return self.detail(400, "Invalid filter syntax")
        sort = request.arg("sort", "score")
        if sort == "duration_asc":
            matches.sort(key=lambda s: s.duration)
        elif sort == "duration_desc":
            matches.sort(key=lambda s: -s.duration)
        fields = (request.arg("fields") or "id,name,tags,username,license").split(",")
        page_size = int(request.arg("page_size", "15"))
        results = [self._fields(s, fields) for s in matches[:page_size]]
        return {"count": len(matches), "next": None, "previous": None, "results": results}

    def _passes(self, sound: Sound, token: re.Match) -> bool:
        name = token.group("field")
        if name == "duration":
            lo, hi = token.group("lo"), token.group("hi")
            return (lo == "*" or sound.duration >= float(lo)) and (
                hi == "*" or sound.duration <= float(hi)
            )
        values = (
            re.findall(r'"([^"]*)"|(\S+)', token.group("group") or "")
            if token.group("group") is not None
            else [(token.group("quoted") or token.group("word") or "", "")]
        )
        wanted = {a or b for a, b in values if (a or b) != "OR"}
        if name == "license":
            return sound.license in wanted or self.ignore_license_filter
        if name == "type":
            return sound.type in wanted
        if name == "tag":
            return bool(wanted & set(sound.tags))
        raise ValueError(f"unknown filter field {name}")

    def _fields(self, sound: Sound, fields: list[str]) -> dict[str, Any]:
        full = {
            "id": sound.id,
            "name": sound.name,
            "url": f"https://freesound.org/people/{sound.username}/sounds/{sound.id}/",
            "username": sound.username,
            "license": LICENSES[sound.license],
            "duration": sound.duration,
            "type": sound.type,
            "tags": sound.tags,
            "filesize": 1000,
            "download": f"{self.base_url}/sounds/{sound.id}/download/",
            "previews": {
                "preview-hq-mp3": f"{self.url}/previews/{sound.id}-hq.mp3",
                "preview-lq-mp3": f"{self.url}/previews/{sound.id}-lq.mp3",
                "preview-hq-ogg": f"{self.url}/previews/{sound.id}-hq.ogg",
                "preview-lq-ogg": f"{self.url}/previews/{sound.id}-lq.ogg",
            },
        }
        return {k: full[k] for k in fields if k in full}

    def _sound(self, sound_id: str) -> Sound | None:
        return next((s for s in self.sounds if str(s.id) == sound_id), None)

    def _download(self, request: FakeRequest) -> Reply:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return self.detail(401, "Authentication credentials were not provided.")
        if auth != f"Bearer {self.oauth_token}":
            return self.detail(401, "Invalid token header.")
        sound = self._sound(request.params["id"])
        if sound is None:
            return self.detail(404, "Sound not found.")
        if sound.type not in _CONTENT_TYPES:
            return Reply(body=b"FORM\x00\x00\x00\x00AIFF", headers={"Content-Type": "audio/aiff"})
        return Reply(
            body=audio_bytes(sound.type, sound.duration, "sound_effect"),
            headers={"Content-Type": _CONTENT_TYPES[sound.type]},
        )

    def _preview(self, request: FakeRequest) -> Reply:
        name = request.params["name"]
        sound = self._sound(name.split("-", 1)[0])
        if sound is None or not name.endswith(".mp3"):
            return error_reply(404, "Not Found")
        return Reply(
            body=audio_bytes("mp3", sound.duration, "sound_effect"),
            headers={"Content-Type": "audio/mpeg"},
        )
