"""Mubert: AI music through the Music API v3 (``music-api.mubert.com/api/v3``).

What the adapter speaks (vendors/audio.md §5, the official v3 docs and skills repo):

- **Auth**: customer-level headers ``customer-id`` and ``access-token`` on every
  ``/public/*`` call. Configure ``MUBERT_CUSTOMER_ID`` and ``MUBERT_ACCESS_TOKEN``
  (``MUBERT_API_KEY``, the name in the design sketch, is accepted for the token).
  Company credentials (``/service/*``, creating customers) are not used here.
- **Submit**: ``POST /public/tracks`` with exactly one source, a ``prompt`` (at
  most 200 characters) or a ``playlist_index``, plus ``duration`` (whole
  seconds, at least 5), ``format`` (mp3|wav) and, when asked, ``intensity``,
  ``mode``, ``bitrate``; ``bpm`` and ``key`` only with a playlist.
- **Poll**: ``GET /public/tracks/{id}`` until the generation in our format is
  ``done`` (URL set) or ``failed``; then the file is streamed from its ``url``.
- **Errors**: 401 ``Unauthenticated``; 403 ``{code, message, description}`` where
  the ``code`` says why (licence limits are quota, not auth: see ``_LICENCE_CODES``);
  422 Laravel-style validation bodies. Mubert documents no 429 and no cancel call.

How the common request maps (decisions, the docs leave these open):

- Mubert has no mood, genre or theme fields. In prompt mode they are folded
  into the text prompt (``"calm piano, happy, jazz, corporate"``); the joined
  text must fit Mubert's 200 characters.
- ``provider_options.playlist_index`` (e.g. ``"1.0.0"``, from ``GET
  /public/playlists``) selects playlist mode instead. Mubert then takes no
  prompt, so ``prompt`` must be empty; mood, genre and theme may be given as
  labels of the chosen playlist (mediagen needs one descriptive field) and are
  kept in the artifact metadata, not sent.
- ``tempo_bpm`` becomes ``bpm`` in playlist mode and is refused with a prompt
  (Mubert rejects ``bpm`` there). ``lyrics`` are refused: Mubert makes no sung tracks.
- ``duration_seconds`` is rounded to whole seconds (default 30 s).
- Mubert's ``intensity`` (low|medium|high), ``mode`` (track|loop|jingle|mix),
  ``bitrate`` and ``key`` come from ``provider_options``; anything else there is refused.
- Price: Mubert sells subscription licences and publishes no per-track price.
  The catalog shows 0 per track unless ``MUBERT_TRACK_PRICE_USD`` gives your
  plan's effective price.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import AsyncIterator, Mapping
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
from providers.errors import (
    FieldViolation,
    InvalidArgument,
    MediagenError,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderInvalidRequest,
    ProviderJobFailed,
    ProviderOutOfCredit,
    ProviderRateLimited,
)
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env, vendor_message
from providers.secrets import env_secret

log = structlog.get_logger("mediagen.provider.mubert")

DEFAULT_BASE_URL = "https://music-api.mubert.com/api/v3"
DOCUMENTATION_URI = "https://mubert.com/api/docs"

MAX_PROMPT_CHARACTERS = 200  # OpenAPI says 255, the official skills doc 200: the safe one
MIN_DURATION_SECONDS = 5
DEFAULT_DURATION_SECONDS = 30
FORMATS = ("mp3", "wav")
BITRATES = (32, 96, 128, 192, 256, 320)
INTENSITIES = ("low", "medium", "high")
MODES = ("track", "loop", "jingle", "mix")
PLAYLIST_ONLY_MODES = ("jingle", "mix")
MIN_BPM, MAX_BPM = 1, 500
_KEY = re.compile(r"^[A-G][#b]?m?$")
_PLAYLIST_INDEX = re.compile(r"^[0-9]+(\.[0-9]+){0,4}$")
OPTIONS = ("playlist_index", "intensity", "mode", "bitrate", "key")

#: Generation states (``generations[].status``). "completed" appears in one
#: official example instead of "done"; both mean finished.
_DONE = ("done", "completed")
_FAILED = ("failed", "error")

#: 403 codes that mean "the licence's quota is used up" rather than "bad credentials".
_LICENCE_LIMIT_CODES = frozenset(
    {
        "licenselimittrackscount",
        "licenselimittracksduration",
        "licenselimituserscount",
    }
)
#: 403 codes that mean "your licence does not allow this value": the request, not the account.
_LICENCE_FORBIDS_CODES = frozenset(
    {
        "licenseforbiddenbitrate",
        "licenseforbiddenduration",
        "licenseforbiddenfeature",
        "licenseforbiddenformat",
        "licenseforbiddenintensity",
        "licenseforbiddenmode",
    }
)
_CONCURRENCY_CODE = "licenselimitconcurrenttrackgenerationscount"

_CONTENT_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}


def _price_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("ignoring an unreadable price", variable=name)
        return default
    if not math.isfinite(value) or value < 0:
        log.warning("ignoring an unreadable price", variable=name)
        return default
    return value


def _classify(response: httpx.Response, body: Any) -> MediagenError | None:
    """Mubert's 403 codes: licence quota, licence limits on values, or bad access."""
    if response.status_code != 403 or not isinstance(body, Mapping):
        return None
    code = str(body.get("code") or "").strip()
    lowered = code.lower()
    text = f"mubert answered HTTP 403 {code}: {vendor_message(body)}".strip()
    if lowered in _LICENCE_LIMIT_CODES:
        details = {
            k: str(body[k]) for k in ("type", "tracks_count", "tracks_count_limit") if k in body
        }
        return ProviderOutOfCredit(text, metadata={"vendorCode": code, **details})
    if lowered == _CONCURRENCY_CODE:
        return ProviderRateLimited(text, metadata={"vendorCode": code})
    if lowered in _LICENCE_FORBIDS_CODES:
        return ProviderInvalidRequest(text, metadata={"vendorCode": code})
    return ProviderAuthFailed(text, metadata={"vendorCode": code} if code else None)


class MubertProvider(Provider):
    name = "mubert"
    display_name = "Mubert"
    media_type = common_pb2.MEDIA_TYPE_MUSIC
    credential_env = ("MUBERT_CUSTOMER_ID", "MUBERT_ACCESS_TOKEN", "MUBERT_API_KEY")
    preference = 10

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        self.customer_id = os.environ.get("MUBERT_CUSTOMER_ID", "").strip()
        self.access_token, _ = env_secret("MUBERT_ACCESS_TOKEN", "MUBERT_API_KEY")
        self.track_price = _price_from_env("MUBERT_TRACK_PRICE_USD", 0.0)
        headers = {"Accept": "application/json"}
        if self.customer_id and self.access_token:
            headers.update({"customer-id": self.customer_id, "access-token": self.access_token})
        self.http = VendorHTTP(
            self.name,
            base_url=base_url_from_env("MUBERT", DEFAULT_BASE_URL),
            headers=headers,
            classify_hook=_classify,
            url_policy=UrlPolicy(
                allow_http=settings.allow_private_urls, allow_private=settings.allow_private_urls
            ),
        )

    # --- catalog -------------------------------------------------------------

    def _missing(self) -> list[str]:
        missing = []
        if not self.customer_id:
            missing.append("MUBERT_CUSTOMER_ID")
        if not self.access_token:
            missing.append("MUBERT_ACCESS_TOKEN")
        return missing

    def describe(self) -> catalog_pb2.Provider:
        missing = self._missing()
        capabilities = ["text_to_music", "playlist_to_music", "instrumental", "loop"]
        price_note = (
            "from MUBERT_TRACK_PRICE_USD (your licence's effective price)"
            if self.track_price
            else "Mubert sells subscription licences with track quotas and publishes no "
            "per-track price (vendors/audio.md); set MUBERT_TRACK_PRICE_USD to budget with one"
        )
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(
                min_duration_seconds=MIN_DURATION_SECONDS,
                formats=list(FORMATS),
                max_prompt_characters=MAX_PROMPT_CHARACTERS,
            ),
            prices=[
                catalog_pb2.Price(
                    unit=common_pb2.PRICE_UNIT_TRACK,
                    unit_price_micros=usd(self.track_price),
                    note=price_note,
                )
            ],
            configured=not missing,
            not_configured_reason="set " + " and ".join(missing) if missing else "",
            documentation_uri=DOCUMENTATION_URI,
            notes=[
                "mood, genre and theme are folded into Mubert's text prompt "
                f"(at most {MAX_PROMPT_CHARACTERS} characters together with prompt)",
                "provider_options.playlist_index (from GET /public/playlists) generates from a "
                "Mubert playlist instead; only then are tempo_bpm and provider_options.key taken",
                "provider_options: intensity (low|medium|high), mode (track|loop; jingle|mix with "
                "a playlist), bitrate (32|96|128|192|256|320)",
                "duration is whole seconds, at least 5; the maximum is set by your licence",
                "instrumental only: lyrics are refused",
            ],
        )

    # --- request ------------------------------------------------------------------

    def validate(self, request: Message) -> None:
        super().validate(request)
        self._body(request)

    def _body(self, request: Message) -> dict[str, Any]:
        """The POST /public/tracks body; raises InvalidArgument naming every bad field."""
        out: list[FieldViolation] = []
        options = provider_options(request)
        for key in options:
            if key not in OPTIONS:
                out.append(
                    FieldViolation(
                        f"provider_options.{key}",
                        "not a Mubert option; known: " + ", ".join(OPTIONS),
                        "UNSUPPORTED_VALUE",
                    )
                )
        if request.model:
            out.append(
                FieldViolation(
                    "model", "Mubert has no model choice; leave it empty", "UNSUPPORTED_VALUE"
                )
            )
        if request.lyrics.strip():
            out.append(
                FieldViolation(
                    "lyrics",
                    "Mubert makes instrumental music only; it takes no lyrics",
                    "UNSUPPORTED_FIELD",
                )
            )

        duration = request.duration_seconds or DEFAULT_DURATION_SECONDS
        seconds = max(int(math.floor(duration + 0.5)), 1)
        if seconds < MIN_DURATION_SECONDS:
            out.append(
                FieldViolation(
                    "duration_seconds",
                    f"at least {MIN_DURATION_SECONDS} for Mubert",
                    "OUT_OF_RANGE",
                )
            )
        fmt = format_name(request) or "mp3"
        body: dict[str, Any] = {"duration": seconds, "format": fmt}

        playlist = options.get("playlist_index")
        if playlist is not None:
            if (
                not isinstance(playlist, str)
                or len(playlist) > 10
                or not _PLAYLIST_INDEX.match(playlist)
            ):
                out.append(
                    FieldViolation(
                        "provider_options.playlist_index",
                        'must be a Mubert playlist index such as "1.0.0" (at most 10 characters)',
                        "INVALID_FORMAT",
                    )
                )
            if request.prompt.strip():
                out.append(
                    FieldViolation(
                        "prompt",
                        "Mubert generates from either a prompt or provider_options.playlist_index, not both",
                        "CONFLICT",
                    )
                )
            body["playlist_index"] = playlist
        else:
            prompt = ", ".join(
                part.strip()
                for part in (request.prompt, request.mood, request.genre, request.theme)
                if part.strip()
            )
            if len(prompt) > MAX_PROMPT_CHARACTERS:
                out.append(
                    FieldViolation(
                        "prompt",
                        f"prompt, mood, genre and theme together make {len(prompt)} characters; "
                        f"Mubert takes at most {MAX_PROMPT_CHARACTERS}",
                        "TOO_LONG",
                    )
                )
            body["prompt"] = prompt

        if request.HasField("tempo_bpm"):
            bpm = int(math.floor(request.tempo_bpm + 0.5))
            if playlist is None:
                out.append(
                    FieldViolation(
                        "tempo_bpm",
                        "Mubert takes a bpm only with provider_options.playlist_index; "
                        "with a prompt, describe the tempo in the prompt",
                        "UNSUPPORTED_FIELD",
                    )
                )
            elif not MIN_BPM <= bpm <= MAX_BPM:
                out.append(
                    FieldViolation(
                        "tempo_bpm", f"must be from {MIN_BPM} to {MAX_BPM}", "OUT_OF_RANGE"
                    )
                )
            else:
                body["bpm"] = bpm

        intensity = options.get("intensity")
        if intensity is not None:
            if intensity not in INTENSITIES:
                out.append(
                    FieldViolation(
                        "provider_options.intensity",
                        "must be one of " + ", ".join(INTENSITIES),
                        "UNSUPPORTED_VALUE",
                    )
                )
            body["intensity"] = intensity
        mode = options.get("mode")
        if mode is not None:
            if mode not in MODES:
                out.append(
                    FieldViolation(
                        "provider_options.mode",
                        "must be one of " + ", ".join(MODES),
                        "UNSUPPORTED_VALUE",
                    )
                )
            elif mode in PLAYLIST_ONLY_MODES and playlist is None:
                out.append(
                    FieldViolation(
                        "provider_options.mode",
                        f"{mode} needs provider_options.playlist_index (Mubert allows it only with a playlist)",
                        "UNSUPPORTED_VALUE",
                    )
                )
            body["mode"] = mode
        bitrate = options.get("bitrate")
        if bitrate is not None:
            if not isinstance(bitrate, (int, float)) or bitrate not in BITRATES:
                out.append(
                    FieldViolation(
                        "provider_options.bitrate",
                        "must be one of " + ", ".join(str(b) for b in BITRATES),
                        "UNSUPPORTED_VALUE",
                    )
                )
            else:
                body["bitrate"] = int(bitrate)
        music_key = options.get("key")
        if music_key is not None:
            if playlist is None:
                out.append(
                    FieldViolation(
                        "provider_options.key",
                        "Mubert takes a key only with provider_options.playlist_index",
                        "UNSUPPORTED_FIELD",
                    )
                )
            elif not isinstance(music_key, str) or not _KEY.match(music_key):
                out.append(
                    FieldViolation(
                        "provider_options.key",
                        "must be a key such as C, F#, Bb or Am",
                        "INVALID_FORMAT",
                    )
                )
            else:
                body["key"] = music_key
        if out:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in out),
                metadata={"provider": self.name},
                field_violations=out,
            )
        return body

    # --- cost -------------------------------------------------------------------

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        return make_cost(
            1.0, common_pb2.PRICE_UNIT_TRACK, usd(self.track_price), common_pb2.COST_BASIS_ESTIMATED
        )

    # --- the job ----------------------------------------------------------------

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        body = self._body(request)
        answer, response = await self.http.request_json(
            "POST", "public/tracks", json=body, idempotent=False, ctx=ctx
        )
        track = self._track(answer, response)
        labels = {}
        if "playlist_index" in body:
            labels = {
                name: getattr(request, name).strip()
                for name in ("mood", "genre", "theme")
                if getattr(request, name).strip()
            }
        return VendorHandle(
            vendor_job_id=str(track["id"]),
            data={"format": body["format"], "labels": labels},
        )

    def _track(self, answer: Any, response: httpx.Response) -> Mapping[str, Any]:
        track = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(track, Mapping) or not track.get("id"):
            raise ProviderBadResponse(
                "mubert answered without a track id",
                provider=self.name,
                http_status=response.status_code,
            )
        return track

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        answer, response = await self.http.request_json(
            "GET", f"public/tracks/{handle.vendor_job_id}", idempotent=True, ctx=ctx
        )
        track = self._track(answer, response)
        generations = [g for g in track.get("generations") or [] if isinstance(g, Mapping)]
        fmt = handle.data.get("format", "mp3")
        generation = next((g for g in generations if g.get("format") == fmt), None)
        if generation is None and generations:
            generation = generations[0]
        if generation is None:
            return PollResult(VendorState.QUEUED, ProgressInfo(vendor_status="no generation yet"))
        status = str(generation.get("status") or "").lower()
        if status in _FAILED:
            return PollResult(
                VendorState.FAILED,
                error=ProviderJobFailed(
                    f"mubert reported the generation of track {handle.vendor_job_id} {status}",
                    provider=self.name,
                    metadata={"vendorStatus": status},
                ),
            )
        url = generation.get("url")
        if status in _DONE and isinstance(url, str) and url:
            fmt = str(generation.get("format") or fmt)
            return PollResult(
                VendorState.SUCCEEDED,
                ProgressInfo(fraction=1.0, vendor_status=status),
                outputs=[
                    Output(
                        url=url,
                        content_type=_CONTENT_TYPES.get(fmt, "audio/mpeg"),
                        metadata=self._metadata(track, generation, handle),
                    )
                ],
            )
        return PollResult(VendorState.RUNNING, ProgressInfo(vendor_status=status or "processing"))

    def _metadata(
        self, track: Mapping[str, Any], generation: Mapping[str, Any], handle: VendorHandle
    ) -> dict[str, str]:
        metadata = {"mubert_track_id": str(track.get("id"))}
        for key in (
            "session_id",
            "playlist_index",
            "prompt",
            "bpm",
            "key",
            "intensity",
            "mode",
            "duration",
        ):
            value = track.get(key)
            if value not in (None, ""):
                metadata[key] = str(value)
        for key in ("bitrate", "expired_at"):
            value = generation.get(key)
            if value not in (None, ""):
                metadata[key] = str(value)
        for name, label in (handle.data.get("labels") or {}).items():
            metadata[f"playlist_{name}_label"] = str(label)
        return metadata

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
