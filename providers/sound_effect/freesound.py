"""Freesound (APIv2): finds a Creative Commons sound effect instead of generating one.

What the adapter speaks (vendors/audio.md §8, MTG/freesound docs and source):

- **Search**: ``GET /apiv2/search/`` (the endpoint that replaced
  ``/apiv2/search/text/`` in Nov 2025) with ``query``, a Solr ``filter``,
  ``sort``, ``page_size`` and ``fields`` (so one request returns previews,
  licence, author and URL of every result).
- **Auth**: the API key (``FREESOUND_API_KEY``) as ``Authorization: Token <key>``
  for search and previews. Originals (``GET /apiv2/sounds/{id}/download/``)
  need an OAuth2 user token, ``FREESOUND_OAUTH_TOKEN`` (``FREESOUND_ACCESS_TOKEN``
  also read), sent as ``Authorization: Bearer``. mediagen does not run the
  OAuth2 authorisation-code flow itself; the operator obtains the token.
- **Errors**: ``{"detail": "..."}``. 429 is throttling (60/minute, 2000/day by
  default) without Retry-After; a daily limit or a suspended credential cannot
  be waited out and is reported as such.

Decisions:

- **Filters**: a wanted ``duration_seconds`` d becomes ``duration:[d-t TO d+t]``
  with t = max(1 s, d/2); without one, sounds up to 30 s are searched
  (``duration:[0 TO 30]``), which is what a sound effect usually is.
  ``commercial_use_only`` adds ``license:("Attribution" OR "Creative Commons 0")``
  (so no NonCommercial and no Sampling+ sounds), and results are checked
  again on their licence URL. ``provider_options.filter`` adds the caller's
  own Solr filter (e.g. ``tag:rain``); ``provider_options.sort`` replaces the
  default relevance ``score`` order.
- **Which sound**: Freesound's order decides; among the first five usable
  results (a preview or downloadable original, an allowed licence) the one
  closest to the wanted length wins, ties going to the more relevant one.
  Without a wanted length the most relevant usable result wins.
- **Which file**: with an OAuth2 token, the original file when its type is one
  mediagen stores (wav, flac, mp3, ogg, m4a; others fall back to the preview);
  without one, ``preview-hq-mp3`` (~128 kbps MP3). ``format`` wav or flac needs
  originals (and then filters on ``type``); ``format`` mp3 takes an mp3
  original or the MP3 preview. ``provider_options.preview: true`` always takes
  the preview. Preview URLs get the API key only when they are on a
  freesound.org host.
- **No result** fails the job with NOT_FOUND and the reason
  ``NO_MATCHING_SOUND`` (metadata: query and filter), not INVALID_ARGUMENT:
  the request was valid, the library has nothing that matches.
- **Licence and attribution** of the chosen sound are in the artifact
  metadata: ``freesound_sound_id``, ``name``, ``author``, ``sound_url``,
  ``license``, ``license_url``, ``commercial_use``, ``attribution_required``
  and a ready ``attribution`` line.
- **Cost**: the API is free (``COST_BASIS_FREE``). Freesound's terms allow free
  API use for non-commercial purposes; commercial use needs an agreement with
  MTG/UPF, and every sound keeps its own CC licence.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
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
    VendorHandle,
    VendorState,
    format_name,
    make_cost,
    provider_options,
)
from providers.errors import (
    FieldViolation,
    InvalidArgument,
    MediagenError,
    NotFound,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderOutOfCredit,
)
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env, vendor_message
from providers.secrets import env_secret

DEFAULT_BASE_URL = "https://freesound.org/apiv2"
SEARCH_PATH = "search/"
DOCUMENTATION_URI = "https://freesound.org/docs/api/"

PAGE_SIZE = 15
CANDIDATES = 5
DEFAULT_MAX_SECONDS = 30.0
PREVIEW = "preview-hq-mp3"
FIELDS = "id,name,url,username,license,duration,type,previews,tags,filesize"
SORTS = (
    "score",
    "duration_desc",
    "duration_asc",
    "created_desc",
    "created_asc",
    "downloads_desc",
    "downloads_asc",
    "rating_desc",
    "rating_asc",
)
COMMERCIAL_FILTER = 'license:("Attribution" OR "Creative Commons 0")'
OPTIONS = ("preview", "filter", "sort")
MAX_FILTER_CHARACTERS = 500

#: Original types mediagen can store and probe, and their MIME types.
ORIGINAL_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
}
#: Request formats that need original files (previews are MP3 or OGG Vorbis only).
ORIGINAL_ONLY_FORMATS = ("wav", "flac")

_LICENSE_URL = re.compile(
    r"creativecommons\.org/(?:licenses/(?P<kind>[a-z+-]+)|publicdomain/(?P<pd>zero))/(?P<version>[0-9.]+)",
    re.IGNORECASE,
)


class NoMatchingSound(NotFound):
    """The search found no sound that fits the request (NOT_FOUND, not a bad request)."""

    reason = "NO_MATCHING_SOUND"


def describe_license(value: str) -> tuple[str, bool, bool]:
    """(short name, commercial use allowed, attribution required) of a Freesound licence.

    Freesound returns the Creative Commons deed URL (``http://creativecommons.org/
    licenses/by/4.0/``); its docs name licences ("Attribution", "Attribution
    NonCommercial", "Creative Commons 0"). Both are understood. Unknown licences
    are taken as not allowing commercial use.
    """
    text = value.strip()
    match = _LICENSE_URL.search(text)
    if match:
        version = match.group("version")
        if match.group("pd"):
            return f"CC0 {version}", True, False
        kind = match.group("kind").lower()
        if kind == "by":
            return f"CC BY {version}", True, True
        if kind == "sampling+":
            return f"Sampling+ {version}", False, True
        return f"CC {kind.upper()} {version}", "nc" not in kind.split("-"), True
    lowered = " ".join(text.lower().split())
    if lowered in ("creative commons 0", "cc0"):
        return "CC0", True, False
    if lowered == "attribution":
        return "CC BY", True, True
    if lowered.startswith("attribution noncommercial"):
        return "CC BY-NC", False, True
    return text or "unknown", False, True


def _classify(response: httpx.Response, body: Any) -> MediagenError | None:
    """Throttling that waiting will not cure: the daily quota, a suspended credential."""
    if response.status_code != 429:
        return None
    detail = vendor_message(body) if body is not None else ""
    text = f"freesound answered HTTP 429: {detail}".strip()
    if "suspended" in detail.lower():
        return ProviderAuthFailed(text)
    if re.search(r"/\s*day\b", detail):
        return ProviderOutOfCredit(text)
    return None


class FreesoundProvider(Provider):
    name = "freesound"
    display_name = "Freesound (Creative Commons sound library)"
    media_type = common_pb2.MEDIA_TYPE_SOUND_EFFECT
    credential_env = ("FREESOUND_API_KEY",)
    preference = 50
    # Searching is free and read-only: a submit whose outcome is unknown is simply repeated.
    submit_is_idempotent = True

    def __init__(self, settings) -> None:
        self.max_output_bytes = settings.max_output_bytes
        self.api_key, _ = env_secret("FREESOUND_API_KEY")
        self.oauth_token, _ = env_secret("FREESOUND_OAUTH_TOKEN", "FREESOUND_ACCESS_TOKEN")
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Token {self.api_key}"
        self.http = VendorHTTP(
            self.name,
            base_url=base_url_from_env("FREESOUND", DEFAULT_BASE_URL),
            headers=headers,
            classify_hook=_classify,
            url_policy=UrlPolicy(
                allow_http=settings.allow_private_urls, allow_private=settings.allow_private_urls
            ),
        )

    # --- catalog -------------------------------------------------------------------

    def _formats(self) -> list[str]:
        return ["mp3", *ORIGINAL_ONLY_FORMATS] if self.oauth_token else ["mp3"]

    def describe(self) -> catalog_pb2.Provider:
        configured = bool(self.api_key)
        capabilities = ["library_search", "creative_commons"]
        if self.oauth_token:
            capabilities.append("original_files")
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=capabilities,
            limits=catalog_pb2.ProviderLimits(formats=self._formats()),
            prices=[
                catalog_pb2.Price(
                    unit=common_pb2.PRICE_UNIT_REQUEST,
                    unit_price_micros=0,
                    note=(
                        "free API (vendors/audio.md); Freesound's terms: free for non-commercial "
                        "use, commercial use needs an agreement with MTG/UPF; each sound keeps "
                        "its own Creative Commons licence"
                    ),
                )
            ],
            configured=configured,
            not_configured_reason="" if configured else "set FREESOUND_API_KEY",
            documentation_uri=DOCUMENTATION_URI,
            notes=[
                "finds an existing recording; it does not generate one",
                "some results are licensed for non-commercial use only (CC BY-NC) unless "
                "commercial_use_only is set; CC BY sounds require attribution (artifact "
                "metadata carries author, sound URL, licence and an attribution line)",
                "the file is the MP3 preview (~128 kbps) unless FREESOUND_OAUTH_TOKEN is set, "
                "which downloads originals (needed for wav and flac)",
                "duration_seconds searches within ±50% (at least ±1 s) of it; without it, "
                "sounds up to 30 s",
                "no result fails the job with NOT_FOUND / NO_MATCHING_SOUND",
                "provider_options: preview (true: always the MP3 preview), filter (a Freesound "
                "search filter such as tag:rain), sort (" + ", ".join(SORTS) + ")",
            ],
        )

    # --- request ------------------------------------------------------------------------

    def validate(self, request: Message) -> None:
        self._check(request)
        super().validate(request)

    def _check(self, request: Message) -> dict[str, Any]:
        out: list[FieldViolation] = []
        options = provider_options(request)
        for key in options:
            if key not in OPTIONS:
                out.append(
                    FieldViolation(
                        f"provider_options.{key}",
                        "not a Freesound option; known: " + ", ".join(OPTIONS),
                        "UNSUPPORTED_VALUE",
                    )
                )
        if request.model:
            out.append(
                FieldViolation(
                    "model",
                    "Freesound is a library, it has no models; leave it empty",
                    "UNSUPPORTED_VALUE",
                )
            )
        if request.HasField("prompt_influence"):
            out.append(
                FieldViolation(
                    "prompt_influence",
                    "Freesound searches a library of recordings; prompt_influence is for generation",
                    "UNSUPPORTED_FIELD",
                )
            )
        if "preview" in options and not isinstance(options["preview"], bool):
            out.append(
                FieldViolation(
                    "provider_options.preview", "must be true or false", "INVALID_FORMAT"
                )
            )
        extra = options.get("filter")
        if extra is not None and (not isinstance(extra, str) or len(extra) > MAX_FILTER_CHARACTERS):
            out.append(
                FieldViolation(
                    "provider_options.filter",
                    f"must be a Freesound filter string of at most {MAX_FILTER_CHARACTERS} characters",
                    "INVALID_FORMAT",
                )
            )
        if "sort" in options and options["sort"] not in SORTS:
            out.append(
                FieldViolation(
                    "provider_options.sort",
                    "must be one of " + ", ".join(SORTS),
                    "UNSUPPORTED_VALUE",
                )
            )
        fmt = format_name(request)
        if fmt in ORIGINAL_ONLY_FORMATS and (
            not self.oauth_token or options.get("preview") is True
        ):
            why = (
                "previews are MP3"
                if options.get("preview") is True
                else "only original files come as wav or flac, and downloading originals needs "
                "FREESOUND_OAUTH_TOKEN (an OAuth2 user token); without it, ask for mp3"
            )
            out.append(FieldViolation("format", f"{fmt}: {why}", "UNSUPPORTED_VALUE"))
        elif fmt and fmt not in self._formats():
            out.append(
                FieldViolation(
                    "format", "must be one of " + ", ".join(self._formats()), "UNSUPPORTED_VALUE"
                )
            )
        if out:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in out),
                metadata={"provider": self.name},
                field_violations=out,
            )
        return options

    def search_params(self, request: Message) -> dict[str, str]:
        """The query of ``GET /apiv2/search/`` for a request (see the module doc)."""
        options = self._check(request)
        filters: list[str] = []
        wanted = request.duration_seconds
        if wanted:
            tolerance = max(1.0, wanted / 2)
            filters.append(
                f"duration:[{_num(max(wanted - tolerance, 0.0))} TO {_num(wanted + tolerance)}]"
            )
        else:
            filters.append(f"duration:[0 TO {_num(DEFAULT_MAX_SECONDS)}]")
        if request.commercial_use_only:
            filters.append(COMMERCIAL_FILTER)
        fmt = format_name(request)
        if fmt in ORIGINAL_ONLY_FORMATS:
            filters.append(f"type:{fmt}")
        if options.get("filter"):
            filters.append(options["filter"].strip())
        return {
            "query": request.prompt.strip(),
            "filter": " ".join(filters),
            "sort": options.get("sort", "score"),
            "fields": FIELDS,
            "page_size": str(PAGE_SIZE),
        }

    # --- cost ---------------------------------------------------------------------------

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        return make_cost(1.0, common_pb2.PRICE_UNIT_REQUEST, 0, common_pb2.COST_BASIS_FREE)

    # --- the job ------------------------------------------------------------------------

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        params = self.search_params(request)
        answer, response = await self.http.request_json(
            "GET", SEARCH_PATH, params=params, idempotent=True, ctx=ctx
        )
        results = answer.get("results") if isinstance(answer, Mapping) else None
        if not isinstance(results, list):
            raise ProviderBadResponse(
                "freesound answered a search without results",
                provider=self.name,
                http_status=response.status_code,
            )
        options = provider_options(request)
        fmt = format_name(request)
        candidates = []
        for sound in results:
            choice = self._usable(
                sound, request.commercial_use_only, fmt, options.get("preview") is True
            )
            if choice is not None:
                candidates.append(choice)
            if len(candidates) == CANDIDATES:
                break
        if not candidates:
            raise NoMatchingSound(
                f"no Freesound sound matches {params['query']!r} with filter {params['filter']!r} "
                f"({answer.get('count', 0)} results before mediagen's checks)",
                metadata={
                    "provider": self.name,
                    "query": params["query"],
                    "filter": params["filter"],
                },
            )
        wanted = request.duration_seconds
        best = candidates[0]
        if wanted:
            best = min(
                candidates, key=lambda c: abs(c["duration"] - wanted)
            )  # min() keeps the first tie
        return VendorHandle(vendor_job_id=str(best["id"]), data=best)

    def _usable(
        self, sound: Any, commercial_only: bool, fmt: str, force_preview: bool
    ) -> dict[str, Any] | None:
        """What we would fetch for one search result, or None when it does not qualify."""
        if not isinstance(sound, Mapping) or not isinstance(sound.get("id"), int):
            return None
        license_text = str(sound.get("license") or "")
        license_name, commercial, attribution = describe_license(license_text)
        if commercial_only and not commercial:
            return None
        try:
            duration = float(sound.get("duration") or 0.0)
        except (TypeError, ValueError):
            duration = 0.0
        original_type = str(sound.get("type") or "").lower()
        previews = dict(sound["previews"]) if isinstance(sound.get("previews"), Mapping) else {}
        preview_url = previews.get(PREVIEW) if isinstance(previews.get(PREVIEW), str) else ""
        use_original = (
            bool(self.oauth_token)
            and not force_preview
            and original_type in ORIGINAL_TYPES
            and (not fmt or fmt == original_type)
        )
        if fmt in ORIGINAL_ONLY_FORMATS and not use_original:
            return None
        if not use_original and not preview_url:
            return None
        name = str(sound.get("name") or f"sound {sound['id']}")
        author = str(sound.get("username") or "")
        sound_url = str(sound.get("url") or f"https://freesound.org/s/{sound['id']}/")
        metadata = {
            "freesound_sound_id": str(sound["id"]),
            "name": name,
            "author": author,
            "sound_url": sound_url,
            "license": license_name,
            "license_url": license_text,
            "commercial_use": "true" if commercial else "false",
            "attribution_required": "true" if attribution else "false",
            "attribution": f'"{name}" by {author} ({sound_url}), licensed under {license_name}',
            "source": "original" if use_original else PREVIEW,
            "original_type": original_type,
            "duration": f"{duration:g}",
        }
        tags = sound.get("tags")
        if isinstance(tags, list) and tags:
            metadata["tags"] = ", ".join(str(t) for t in tags)[:500]
        return {
            "id": sound["id"],
            "duration": duration,
            "original": use_original,
            "url": "" if use_original else preview_url,
            "content_type": ORIGINAL_TYPES[original_type] if use_original else "audio/mpeg",
            "metadata": metadata,
        }

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        data = handle.data
        return PollResult(
            VendorState.SUCCEEDED,
            ProgressInfo(fraction=1.0, vendor_status="found"),
            outputs=[
                Output(
                    url=data["url"],
                    content_type=data["content_type"],
                    metadata=dict(data["metadata"]),
                    data={"original": data["original"], "id": data["id"]},
                )
            ],
        )

    @contextlib.asynccontextmanager
    async def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        if output.data.get("original"):
            target = f"sounds/{int(output.data['id'])}/download/"
            headers = {"Authorization": f"Bearer {self.oauth_token}"}
        else:
            target = output.url
            headers = {}
            host = httpx.URL(target).host
            if self.api_key and (host == "freesound.org" or host.endswith(".freesound.org")):
                headers = {"Authorization": f"Token {self.api_key}"}
        async with self.http.open_stream(
            target, ctx=ctx, max_bytes=self.max_output_bytes, headers=headers
        ) as chunks:
            yield chunks

    async def aclose(self) -> None:
        await self.http.aclose()


def _num(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")
