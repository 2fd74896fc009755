"""Soundraw: AI music from Soundraw's own taxonomy through its B2B API v2.

What the adapter speaks (vendors/audio.md §6; Soundraw's API document is given
only to customers, so this follows the consistent public clients; low-medium
confidence, expect to revise against the customer docs):

- ``POST /api/v2/musics/compose`` with ``Authorization: Bearer <token>``
  (``SOUNDRAW_API_KEY``; ``SOUNDRAW_API_TOKEN`` also read).
- Body: ``moods``, ``genres``, ``themes`` (lists of values from Soundraw's fixed
  taxonomy), ``length`` (seconds), ``tempo`` (``low|normal|high``),
  ``energy_levels`` (``[{start, end, energy}]``), ``mute_stems``, ``file_format``.
- The answer is **synchronous** JSON with the file URL keyed by format
  (``mp3_url``, ``wav_url``; ``m4a_url`` by default), plus ``share_link``,
  ``bpm`` and ``timestamps``. The file is then fetched with a plain GET.

So ``submit`` is the paid compose call and the first ``poll`` already reports
the result. Soundraw has nothing to cancel once it has answered.

How the common request maps (decisions):

- ``mood``, ``genre`` and ``theme`` must be Soundraw values; several may be
  given separated by commas. They are matched without regard to case or spacing
  and sent in Soundraw's spelling; anything else is refused with the allowed
  values listed. The lists below come from public clients; the operator can
  replace them with the customer docs' lists through ``SOUNDRAW_MOODS``,
  ``SOUNDRAW_GENRES`` and ``SOUNDRAW_THEMES`` (comma-separated).
- Tempo: ``provider_options.tempo`` (low|normal|high) as Soundraw spells it, or
  ``tempo_bpm`` bucketed: below 90 → low, 90 to 125 → normal, above 125 → high.
  The BPM Soundraw chose is kept in the artifact metadata.
- ``duration_seconds`` → ``length`` in whole seconds, 10 to 300 (default 60).
- Soundraw takes no free text and makes instrumentals only: ``prompt`` and
  ``lyrics`` are refused. Formats: mp3 (default) and wav.
- Price: the API Starter plan, ~$29.99 a month for 100 songs, is ~$0.30 per
  track (third-party figure, low confidence); ``SOUNDRAW_TRACK_PRICE_USD``
  overrides it with your plan's figure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import structlog
from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers.base import (
    JobContext,
    Output,
    PollResult,
    ProgressInfo,
    Provider,
    VendorHandle,
    VendorState,
    format_name,
    make_cost,
    provider_options,
    usd,
)
from providers.errors import FieldViolation, InvalidArgument, ProviderBadResponse
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env
from providers.secrets import env_secret

log = structlog.get_logger("mediagen.provider.soundraw")

DEFAULT_BASE_URL = "https://soundraw.io"
COMPOSE_PATH = "api/v2/musics/compose"
DOCUMENTATION_URI = "https://discover.soundraw.io/api"

MOODS = (
    "Angry",
    "Busy & Frantic",
    "Dark",
    "Dreamy",
    "Elegant",
    "Epic",
    "Euphoric",
    "Fear",
    "Funny & Weird",
    "Glamorous",
    "Happy",
    "Heavy & Ponderous",
    "Hopeful",
    "Laid Back",
    "Mysterious",
    "Peaceful",
    "Restless",
    "Romantic",
    "Running",
    "Sad",
    "Scary",
    "Sentimental",
    "Sexy",
    "Smooth",
    "Suspense",
)
GENRES = (
    "Acoustic",
    "Afrobeats",
    "Ambient",
    "Beats",
    "Christmas",
    "Drill",
    "Drum n Bass",
    "Electro & Dance",
    "Electronica",
    "Funk",
    "Hip Hop",
    "House",
    "Jazz",
    "Jersey Club",
    "Latin",
    "Lofi Hip Hop",
    "Orchestra",
    "Pop",
    "R&B",
    "Rock",
    "Techno & Trance",
    "Tokyo night pop",
    "Trap",
    "Tropical House",
    "World",
)
THEMES = (
    "Ads & Trailers",
    "Broadcasting",
    "Cinematic",
    "Comedy",
    "Cooking",
    "Corporate",
    "Documentary",
    "Drama",
    "Fashion & Beauty",
    "Gaming",
    "Holiday Season",
    "Horror & Thriller",
    "Motivational & Inspiring",
    "Nature",
    "Photography",
    "Sports & Action",
    "Technology",
    "Travel",
    "Tutorials",
    "Vlogs",
    "Wedding & Romance",
    "Workout & Wellness",
)
TEMPOS = ("low", "normal", "high")
#: Public clients disagree ("Very Low" vs "Muted"); both are accepted.
ENERGIES = ("Muted", "Very Low", "Low", "Medium", "High", "Very High")
FORMATS = ("mp3", "wav")
MIN_LENGTH, MAX_LENGTH, DEFAULT_LENGTH = 10, 300, 60
SLOW_BELOW_BPM, FAST_ABOVE_BPM = 90.0, 125.0
OPTIONS = ("tempo", "energy_levels", "mute_stems")
_STEM = re.compile(r"^[a-z]{2}$")
_CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}
#: Composing is synchronous, so the answer waits for the whole track: a longer
#: read timeout than the shared default (also used for downloads).
COMPOSE_TIMEOUT = httpx.Timeout(connect=10.0, read=180.0, write=60.0, pool=10.0)


def _norm(value: str) -> str:
    return " ".join(value.lower().split())


def _taxonomy(env_name: str, default: Sequence[str]) -> tuple[str, ...]:
    raw = os.environ.get(env_name, "")
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    return values or tuple(default)


def _price_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        log.warning("ignoring an unreadable price", variable=name)
        return default
    return value


def tempo_for_bpm(bpm: float) -> str:
    """Soundraw's tempo bucket for a BPM (see the module doc)."""
    if bpm < SLOW_BELOW_BPM:
        return "low"
    if bpm > FAST_ABOVE_BPM:
        return "high"
    return "normal"


class SoundrawProvider(Provider):
    name = "soundraw"
    display_name = "Soundraw"
    media_type = common_pb2.MEDIA_TYPE_MUSIC
    credential_env = ("SOUNDRAW_API_KEY", "SOUNDRAW_API_TOKEN")
    preference = 20

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        self.api_key, _ = env_secret(*self.credential_env)
        self.moods = _taxonomy("SOUNDRAW_MOODS", MOODS)
        self.genres = _taxonomy("SOUNDRAW_GENRES", GENRES)
        self.themes = _taxonomy("SOUNDRAW_THEMES", THEMES)
        self.track_price = _price_from_env("SOUNDRAW_TRACK_PRICE_USD", 29.99 / 100)
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.http = VendorHTTP(
            self.name,
            base_url=base_url_from_env("SOUNDRAW", DEFAULT_BASE_URL),
            headers=headers,
            timeout=COMPOSE_TIMEOUT,
            url_policy=UrlPolicy(
                allow_http=settings.allow_private_urls, allow_private=settings.allow_private_urls
            ),
        )

    # --- catalog ---------------------------------------------------------------

    def describe(self) -> catalog_pb2.Provider:
        configured = bool(self.api_key)
        default_price = abs(self.track_price - 29.99 / 100) < 1e-9
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=["mood_genre_theme_to_music", "instrumental", "energy_levels"],
            limits=catalog_pb2.ProviderLimits(
                min_duration_seconds=MIN_LENGTH,
                max_duration_seconds=MAX_LENGTH,
                formats=list(FORMATS),
            ),
            prices=[
                catalog_pb2.Price(
                    unit=common_pb2.PRICE_UNIT_TRACK,
                    unit_price_micros=usd(self.track_price),
                    note=(
                        "API Starter plan ~$29.99/month for 100 songs (third-party figure, "
                        "vendors/audio.md; low confidence); SOUNDRAW_TRACK_PRICE_USD overrides"
                        if default_price
                        else "from SOUNDRAW_TRACK_PRICE_USD"
                    ),
                )
            ],
            configured=configured,
            not_configured_reason="" if configured else "set SOUNDRAW_API_KEY",
            documentation_uri=DOCUMENTATION_URI,
            notes=[
                "mood: " + ", ".join(self.moods),
                "genre: " + ", ".join(self.genres),
                "theme: " + ", ".join(self.themes),
                "several moods, genres or themes may be given separated by commas",
                "tempo: provider_options.tempo (low|normal|high) or tempo_bpm "
                f"(below {SLOW_BELOW_BPM:g} low, above {FAST_ABOVE_BPM:g} high, else normal)",
                "provider_options.energy_levels: [{start, end, energy}] with energy one of "
                + ", ".join(ENERGIES)
                + "; provider_options.mute_stems: stem codes such as bs (bass)",
                "no free-text prompt and no lyrics: Soundraw composes instrumentals from its taxonomy",
            ],
        )

    # --- request ---------------------------------------------------------------------

    def validate(self, request: Message) -> None:
        super().validate(request)
        self._body(request)

    def _pick(
        self, field: str, raw: str, allowed: Sequence[str], out: list[FieldViolation]
    ) -> list[str]:
        known = {_norm(v): v for v in allowed}
        picked: list[str] = []
        for part in (p for p in raw.split(",") if p.strip()):
            value = known.get(_norm(part))
            if value is None:
                out.append(
                    FieldViolation(
                        field,
                        f"{part.strip()!r} is not a Soundraw {field}; allowed: "
                        + ", ".join(allowed),
                        "UNSUPPORTED_VALUE",
                    )
                )
            elif value not in picked:
                picked.append(value)
        return picked

    def _body(self, request: Message) -> dict[str, Any]:
        out: list[FieldViolation] = []
        options = provider_options(request)
        for key in options:
            if key not in OPTIONS:
                out.append(
                    FieldViolation(
                        f"provider_options.{key}",
                        "not a Soundraw option; known: " + ", ".join(OPTIONS),
                        "UNSUPPORTED_VALUE",
                    )
                )
        if request.model:
            out.append(
                FieldViolation(
                    "model", "Soundraw has no model choice; leave it empty", "UNSUPPORTED_VALUE"
                )
            )
        if request.prompt.strip():
            out.append(
                FieldViolation(
                    "prompt",
                    "Soundraw takes no free-text prompt; describe the track with mood, genre "
                    "and theme from its taxonomy (see the catalog notes)",
                    "UNSUPPORTED_FIELD",
                )
            )
        if request.lyrics.strip():
            out.append(
                FieldViolation(
                    "lyrics",
                    "Soundraw makes instrumental music only; it takes no lyrics",
                    "UNSUPPORTED_FIELD",
                )
            )

        body: dict[str, Any] = {}
        for field, key, allowed in (
            ("mood", "moods", self.moods),
            ("genre", "genres", self.genres),
            ("theme", "themes", self.themes),
        ):
            picked = self._pick(field, getattr(request, field), allowed, out)
            if picked:
                body[key] = picked

        length = int(math.floor((request.duration_seconds or DEFAULT_LENGTH) + 0.5))
        if not MIN_LENGTH <= length <= MAX_LENGTH:
            out.append(
                FieldViolation(
                    "duration_seconds",
                    f"must be from {MIN_LENGTH} to {MAX_LENGTH} for Soundraw",
                    "OUT_OF_RANGE",
                )
            )
        body["length"] = length

        tempo = options.get("tempo")
        if tempo is not None:
            if request.HasField("tempo_bpm"):
                out.append(
                    FieldViolation(
                        "tempo_bpm",
                        "give either tempo_bpm or provider_options.tempo, not both",
                        "CONFLICT",
                    )
                )
            if tempo not in TEMPOS:
                out.append(
                    FieldViolation(
                        "provider_options.tempo",
                        "must be one of " + ", ".join(TEMPOS),
                        "UNSUPPORTED_VALUE",
                    )
                )
            body["tempo"] = tempo
        elif request.HasField("tempo_bpm"):
            body["tempo"] = tempo_for_bpm(request.tempo_bpm)

        energy_levels = options.get("energy_levels")
        if energy_levels is not None:
            body["energy_levels"] = self._energy_levels(energy_levels, length, out)
        stems = options.get("mute_stems")
        if stems is not None:
            if not isinstance(stems, list) or not all(
                isinstance(s, str) and _STEM.match(s) for s in stems
            ):
                out.append(
                    FieldViolation(
                        "provider_options.mute_stems",
                        'must be a list of Soundraw stem codes such as "bs"',
                        "INVALID_FORMAT",
                    )
                )
            else:
                body["mute_stems"] = stems

        body["file_format"] = format_name(request) or "mp3"
        if out:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in out),
                metadata={"provider": self.name},
                field_violations=out,
            )
        return body

    @staticmethod
    def _energy_levels(value: Any, length: int, out: list[FieldViolation]) -> list[dict[str, Any]]:
        field = "provider_options.energy_levels"
        if not isinstance(value, list) or not value:
            out.append(
                FieldViolation(
                    field, "must be a non-empty list of {start, end, energy}", "INVALID_FORMAT"
                )
            )
            return []
        levels: list[dict[str, Any]] = []
        known = {_norm(e): e for e in ENERGIES}
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            if not isinstance(item, Mapping) or set(item) != {"start", "end", "energy"}:
                out.append(FieldViolation(where, "must be {start, end, energy}", "INVALID_FORMAT"))
                continue
            start, end, energy = item["start"], item["end"], item["energy"]
            if (
                not all(isinstance(v, (int, float)) for v in (start, end))
                or not 0 <= start < end <= length
            ):
                out.append(
                    FieldViolation(
                        where,
                        f"start and end must be seconds with 0 <= start < end <= {length}",
                        "OUT_OF_RANGE",
                    )
                )
                continue
            name = known.get(_norm(energy)) if isinstance(energy, str) else None
            if name is None:
                out.append(
                    FieldViolation(
                        where + ".energy",
                        "must be one of " + ", ".join(ENERGIES),
                        "UNSUPPORTED_VALUE",
                    )
                )
                continue
            levels.append({"start": _number(start), "end": _number(end), "energy": name})
        return levels

    # --- cost ----------------------------------------------------------------------

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        return make_cost(
            1.0, common_pb2.PRICE_UNIT_TRACK, usd(self.track_price), common_pb2.COST_BASIS_ESTIMATED
        )

    # --- the job ----------------------------------------------------------------------

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        body = self._body(request)
        answer, response = await self.http.request_json(
            "POST", COMPOSE_PATH, json=body, idempotent=False, ctx=ctx
        )
        fmt = body["file_format"]
        url = answer.get(f"{fmt}_url") if isinstance(answer, Mapping) else None
        if not isinstance(url, str) or not url:
            raise ProviderBadResponse(
                f"soundraw answered without a {fmt}_url",
                provider=self.name,
                http_status=response.status_code,
            )
        vendor_id = str(
            answer.get("request_id") or answer.get("id") or answer.get("share_link") or ctx.job_id
        )
        metadata = {
            "length": str(answer.get("length") or body["length"]),
            "file_format": fmt,
        }
        for key in ("share_link", "bpm"):
            if answer.get(key) not in (None, ""):
                metadata[key] = str(answer[key])
        for key in ("moods", "genres", "themes", "tempo"):
            if key in body:
                metadata[key] = body[key] if isinstance(body[key], str) else ", ".join(body[key])
        timestamps = answer.get("timestamps")
        if timestamps:
            text = json.dumps(timestamps, separators=(",", ":"))
            if len(text) <= 4000:
                metadata["timestamps"] = text
        return VendorHandle(
            vendor_job_id=vendor_id, data={"url": url, "format": fmt, "metadata": metadata}
        )

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        fmt = handle.data.get("format", "mp3")
        return PollResult(
            VendorState.SUCCEEDED,
            ProgressInfo(fraction=1.0, vendor_status="composed"),
            outputs=[
                Output(
                    url=handle.data["url"],
                    content_type=_CONTENT_TYPES.get(fmt, "audio/mpeg"),
                    metadata=dict(handle.data.get("metadata") or {}),
                )
            ],
        )

    @contextlib.asynccontextmanager
    async def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.http.open_stream(
            output.url, ctx=ctx, max_bytes=self.max_output_bytes
        ) as chunks:
            yield chunks

    async def aclose(self) -> None:
        await self.http.aclose()


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value
