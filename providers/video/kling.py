"""Kling AI official API (``api-singapore.klingai.com``): text2video and image2video tasks.

Auth is a JWT the caller signs: header ``{"alg": "HS256", "typ": "JWT"}``, claims
``iss`` = AccessKey, ``exp`` = now + 1800 s, ``nbf`` = now - 5 s, HMAC-SHA256 with
the SecretKey, sent as ``Authorization: Bearer <jwt>``. ``KlingAuth`` signs it
with the standard library, caches it and signs a new one 5 minutes before it
expires (or at once when Kling answers 1003/1004, "not yet valid"/"expired").

Calls (JSON, snake_case)::

    POST /v1/videos/text2video    {model_name, prompt, negative_prompt?, cfg_scale?, mode?,
                                   aspect_ratio, duration: "5", sound?, external_task_id}
    POST /v1/videos/image2video   {... same without aspect_ratio, plus image}
    GET  /v1/videos/{text2video|image2video}/{task_id or external_task_id}

Every answer is the envelope ``{code, message, request_id, data}``: ``code`` 0 is
success, anything else is an error whatever the HTTP status (Kling also puts
codes inside HTTP 200). ``classify`` maps the codes: 1000-1004 auth, 1101/1102
out of credit (HTTP 429, not 402), 1302/1303 rate and concurrency limits,
1200-1203 bad parameters, 1300/1301 platform and content policy, 5000-5002
server trouble. Task status is ``submitted`` -> ``processing`` -> ``succeed`` |
``failed`` (with ``task_status_msg``); the video is
``data.task_result.videos[0].url`` (kept 30 days) and ``final_unit_deduction``
is what Kling charged. Kling has no cancel call and reports no progress.

Input images (``image``): Kling takes a URL or bare base64 (no ``data:``
prefix) of a JPEG or PNG of at most 10 MB, at least 300 px a side, aspect
ratio between 1:2.5 and 2.5:1. The caller's https URL is passed as is; inline
bytes and uploaded assets go as base64 (read from storage at submit), which
works with local and S3 storage alike and needs no URL that Kling's servers
can reach. An image outside those limits is refused at Generate, unless the
caller set ``provider_options {"fit_input": true}``: then it is re-encoded
(JPEG; cropped to 2.5:1, scaled up to 300 px, compressed under 10 MB).

Submits are safe to repeat: each carries ``external_task_id`` = the mediagen
job id, which Kling keeps unique per account. A create whose answer was lost
is retried; when Kling then refuses the duplicate id, the task is found by that
id instead of being paid for twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers import inputs
from providers.base import (
    JobContext,
    Output,
    PollResult,
    ProgressInfo,
    Provider,
    VendorHandle,
    VendorState,
    VendorUsage,
    check_limits,
    make_cost,
    provider_options,
    usd,
)
from providers.errors import (
    ContentRejected,
    FieldViolation,
    InvalidArgument,
    MediagenError,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderInvalidRequest,
    ProviderJobFailed,
    ProviderNotConfigured,
    ProviderOutOfCredit,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from providers.http import UrlPolicy, VendorHTTP, base_url_from_env
from providers.inputs import (
    FIT_OPTION,
    InlineInput,
    InputMedia,
    fit_input,
    fit_option_problems,
    wants_fit,
)
from providers.retry import retry_after_from_headers
from providers.secrets import env_secret, register

DEFAULT_BASE_URL = "https://api-singapore.klingai.com"
DOCS = "https://app.klingai.com/global/dev/document-api/apiReference/commonInfo"
ACCESS_KEY_ENV = "KLING_ACCESS_KEY"
SECRET_KEY_ENV = "KLING_SECRET_KEY"
#: The provider specification's single variable: "<access key>:<secret key>".
COMBINED_KEY_ENV = "KLING_API_KEY"
TOKEN_LIFETIME = 1800
TOKEN_NOT_BEFORE_SKEW = 5
TOKEN_REFRESH_MARGIN = 300
MAX_PROMPT_CHARS = 2500
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MIN_IMAGE_SIDE = 300
MAX_IMAGE_ASPECT = 2.5
IMAGE_TYPES = ("image/jpeg", "image/png")
ASPECT_RATIOS = ("16:9", "9:16", "1:1")
#: Resource-pack unit price. Kling publishes no per-unit price we could
#: confirm first-hand; third parties report packs at about $0.14/unit (and
#: $0.126/unit for the 60,000-unit pack). The final cost uses Kling's own
#: ``final_unit_deduction`` for the units.
UNIT_PRICE_USD = 0.14
CONTENT_FAILURE = re.compile(r"risk|content secur|sensitive|safety|moderat|polic", re.IGNORECASE)


@dataclass(frozen=True)
class KlingModel:
    name: str
    text: bool
    image: bool
    #: Modes it takes; empty for the "master" models, which have one quality and no mode field.
    modes: tuple[str, ...]
    durations: tuple[int, ...]
    #: Units per 5 s of video by mode ("" for the masters), without sound.
    units_per_5s: dict[str, float]
    cfg_scale: bool = False
    #: Modes in which sound can be on (v2.6: pro only; v3: both).
    sound_modes: tuple[str, ...] = ()
    sound_units_per_5s: dict[str, float] = field(default_factory=dict)

    @property
    def capabilities(self) -> list[str]:
        return (["text_to_video"] if self.text else []) + (["image_to_video"] if self.image else [])

    def units(self, mode: str, seconds: int, sound: bool) -> float:
        table = self.sound_units_per_5s if sound and self.sound_units_per_5s else self.units_per_5s
        per_5s = table.get(mode if self.modes else "", max(table.values()))
        return round(per_5s * seconds / 5, 4)


_STD_PRO = ("std", "pro")
_FIVE_TEN = (5, 10)
MODELS: dict[str, KlingModel] = {
    m.name: m
    for m in (
        KlingModel(
            "kling-v1", True, True, _STD_PRO, _FIVE_TEN, {"std": 1, "pro": 3.5}, cfg_scale=True
        ),
        KlingModel(
            "kling-v1-5", False, True, _STD_PRO, _FIVE_TEN, {"std": 2, "pro": 3.5}, cfg_scale=True
        ),
        KlingModel(
            "kling-v1-6", True, True, _STD_PRO, _FIVE_TEN, {"std": 2, "pro": 3.5}, cfg_scale=True
        ),
        KlingModel("kling-v2-master", True, True, (), _FIVE_TEN, {"": 10}),
        KlingModel("kling-v2-1", False, True, _STD_PRO, _FIVE_TEN, {"std": 2, "pro": 3.5}),
        KlingModel("kling-v2-1-master", True, True, (), _FIVE_TEN, {"": 10}),
        KlingModel("kling-v2-5-turbo", True, True, _STD_PRO, _FIVE_TEN, {"std": 1.5, "pro": 2.5}),
        KlingModel(
            "kling-v2-6",
            True,
            True,
            _STD_PRO,
            _FIVE_TEN,
            {"std": 1.5, "pro": 2.5},
            sound_modes=("pro",),
            sound_units_per_5s={"pro": 5},
        ),
        KlingModel(
            "kling-v3",
            True,
            True,
            _STD_PRO,
            tuple(range(3, 16)),
            {"std": 3, "pro": 4},
            sound_modes=_STD_PRO,
            sound_units_per_5s={"std": 4.5, "pro": 6},
        ),
    )
}
DEFAULT_MODEL = "kling-v2-5-turbo"
DEFAULT_MODE = "std"
DEFAULT_DURATION = 5


# --- JWT (HS256, standard library only) ---------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_jwt(access_key: str, secret_key: str, now: float) -> tuple[str, int]:
    """A Kling API token signed at ``now``: (token, its exp claim)."""
    issued = int(now)
    header = {"alg": "HS256", "typ": "JWT"}
    expires = issued + TOKEN_LIFETIME
    claims = {
        "iss": access_key,
        "exp": expires,
        "nbf": issued - TOKEN_NOT_BEFORE_SKEW,
    }
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode("utf-8"))
        for part in (header, claims)
    )
    signature = hmac.new(
        secret_key.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256
    ).digest()
    return f"{signing_input}.{_b64url(signature)}", expires


class KlingAuth(httpx.Auth):
    """Signs every API request with a cached Kling JWT, renewed before it expires."""

    def __init__(
        self, access_key: str, secret_key: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._clock = clock
        self._token = ""
        self._expires = 0

    def token(self) -> str:
        now = self._clock()
        if not self._token or now >= self._expires - TOKEN_REFRESH_MARGIN:
            self._token, self._expires = encode_jwt(self._access_key, self._secret_key, now)
            register(self._token)  # a bearer credential: never printed anywhere
        return self._token

    def invalidate(self) -> None:
        """Drop the cached token (Kling said it is expired or not yet valid)."""
        self._token = ""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        yield request


def _credentials() -> tuple[str | None, str | None, str]:
    """(access key, secret key, why not configured)."""
    access, _ = env_secret(ACCESS_KEY_ENV)
    secret, _ = env_secret(SECRET_KEY_ENV)
    if access and secret:
        return access, secret, ""
    combined, _ = env_secret(COMBINED_KEY_ENV)
    if combined:
        for separator in (":", "|"):
            if separator in combined:
                ak, sk = (part.strip() for part in combined.split(separator, 1))
                if ak and sk:
                    register(ak)
                    register(sk)
                    return ak, sk, ""
        return None, None, f"{COMBINED_KEY_ENV} must be '<access key>:<secret key>'"
    missing = [
        name for name, value in ((ACCESS_KEY_ENV, access), (SECRET_KEY_ENV, secret)) if not value
    ]
    return (
        None,
        None,
        f"set {' and '.join(missing)} (or {COMBINED_KEY_ENV} as '<access key>:<secret key>')",
    )


# --- the envelope -------------------------------------------------------------------


def classify(
    response: httpx.Response, body: Any, auth: KlingAuth | None = None
) -> MediagenError | None:
    """The error a Kling answer stands for, from its service ``code`` (None: success or not an envelope)."""
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    if code == 0:
        return None
    status = response.status_code
    message = str(body.get("message") or "")[:500]
    text = f"kling answered HTTP {status}, code {code}" + (f": {message}" if message else "")
    common: dict[str, Any] = {
        "http_status": status,
        "vendor_request_id": str(body.get("request_id") or "")[:128],
        "metadata": {"vendorCode": str(code)},
    }
    retry_after = (
        retry_after_from_headers(response.headers) if status == 429 or status >= 500 else None
    )
    method = response.request.method
    if 1000 <= code <= 1004:
        if code in (1003, 1004) and auth is not None:
            auth.invalidate()  # a fresh token may well be accepted
            return ProviderAuthFailed(text, retryable=True, **common)
        return ProviderAuthFailed(text, **common)
    if code in (1101, 1102):
        return ProviderOutOfCredit(text, **common)
    if code in (1100, 1103, 1304):  # account exception, no access to the API/model, IP whitelist
        return ProviderAuthFailed(text, **common)
    if code in (1302, 1303):
        return ProviderRateLimited(text, retry_after=retry_after, **common)
    if code in (1201, 1203) and method == "GET":
        return ProviderJobFailed(f"kling has no such task ({text})", **common)
    if 1200 <= code <= 1299:
        return ProviderInvalidRequest(text, **common)
    if code in (1300, 1301):
        return ContentRejected(text, **common)
    if code == 5002:
        return ProviderTimeout(text, retry_after=retry_after, **common)
    if 5000 <= code <= 5999:
        return ProviderUnavailable(text, retry_after=retry_after, **common)
    if status >= 400:
        return None  # an unknown code on an error status: the generic rules judge the status
    return ProviderBadResponse(f"{text} (unknown code)", retryable=False, **common)


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return ""


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _image_problems(media: InputMedia, *, fit: bool = False) -> list[FieldViolation]:
    """What Kling would refuse about an image known by its measurements (none that
    re-encoding can fix, when ``fit``)."""
    out: list[FieldViolation] = []
    field = media.field
    if media.content_type not in IMAGE_TYPES and not (fit and media.content_type == "image/webp"):
        out.append(
            FieldViolation(
                field,
                f"Kling takes JPEG or PNG images, not {media.content_type or 'an unknown type'}"
                + ("" if fit else ' (provider_options {"fit_input": true} converts it)'),
                "UNSUPPORTED_VALUE",
            )
        )
        return out
    if fit:
        return out  # size, sides and aspect ratio can all be fitted
    if media.size is not None and media.size > MAX_IMAGE_BYTES:
        out.append(FieldViolation(field, f"at most 10 MB for Kling ({media.size} bytes given)", "TOO_LARGE"))
    if media.width and min(media.width, media.height) < MIN_IMAGE_SIDE:
        out.append(FieldViolation(field, f"Kling needs at least {MIN_IMAGE_SIDE} px a side", "TOO_SMALL"))
    if media.width and max(media.width / media.height, media.height / media.width) > MAX_IMAGE_ASPECT:
        out.append(FieldViolation(field, "aspect ratio must be between 1:2.5 and 2.5:1", "OUT_OF_RANGE"))
    return out


@dataclass
class _Plan:
    model: KlingModel
    kind: str  # "text2video" | "image2video"
    mode: str
    seconds: int
    sound: bool
    body: dict[str, Any]


class KlingVideo(Provider):
    """Kling AI video through Kling's own developer API."""

    name = "kling"
    display_name = "Kling AI"
    media_type = common_pb2.MEDIA_TYPE_VIDEO
    credential_env = (ACCESS_KEY_ENV, SECRET_KEY_ENV, COMBINED_KEY_ENV)
    preference = 40
    submit_is_idempotent = True  # external_task_id = job id; see the module doc

    def __init__(self, settings, *, clock: Callable[[], float] = time.time) -> None:
        self.max_output_bytes = settings.max_output_bytes
        self.base_url = base_url_from_env("KLING", DEFAULT_BASE_URL)
        access, secret, self._why_not = _credentials()
        self.auth: KlingAuth | None = None
        self.http: VendorHTTP | None = None
        if access and secret:
            self.auth = KlingAuth(access, secret, clock)
            allow = bool(settings.allow_private_urls)
            self.http = VendorHTTP(
                self.name,
                base_url=self.base_url,
                auth=self.auth,
                classify_hook=lambda response, body: classify(response, body, self.auth),
                url_policy=UrlPolicy(allow_http=allow, allow_private=allow),
            )

    # --- catalog ---------------------------------------------------------------

    def describe(self) -> catalog_pb2.Provider:
        prices = []
        for model in MODELS.values():
            for mode, units in model.units_per_5s.items():
                label = f"{mode} " if mode else ""
                sound = model.sound_units_per_5s.get(mode)
                prices.append(
                    catalog_pb2.Price(
                        model=model.name,
                        unit=common_pb2.PRICE_UNIT_CREDIT,
                        unit_price_micros=usd(UNIT_PRICE_USD),
                        note=f"{label}~{units:g} units per 5 s"
                        + (f" ({sound:g} with sound)" if sound else "")
                        + f"; units at ~${UNIT_PRICE_USD}/unit (third-party reports of Kling's resource "
                        "packs; Kling's per-model unit table is not confirmed). Final cost: Kling's "
                        "final_unit_deduction",
                    )
                )
        return catalog_pb2.Provider(
            name=self.name,
            display_name=self.display_name,
            media_type=self.media_type,
            capabilities=["text_to_video", "image_to_video"],
            limits=catalog_pb2.ProviderLimits(
                min_duration_seconds=3,
                max_duration_seconds=15,
                aspect_ratios=list(ASPECT_RATIOS),
                max_prompt_characters=MAX_PROMPT_CHARS,
                max_input_bytes=MAX_IMAGE_BYTES,
                input_forms=["url", "base64"],
            ),
            prices=prices,
            models=[
                catalog_pb2.Model(
                    name=m.name, default=m.name == DEFAULT_MODEL, capabilities=m.capabilities
                )
                for m in MODELS.values()
            ],
            configured=self.http is not None,
            not_configured_reason=self._why_not,
            documentation_uri=DOCS,
            notes=[
                "duration_seconds: 5 or 10 (kling-v3: 3 to 15); kling-v1-5 and kling-v2-1 are image-to-video only",
                "aspect_ratio (16:9, 9:16, 1:1) is for text-to-video; image-to-video follows the image",
                "input_image: an https URL (passed as is), or inline data / an asset sent as bare base64: "
                "JPEG/PNG up to 10 MB, at least 300 px a side, aspect ratio between 1:2.5 and 2.5:1; "
                'provider_options {"fit_input": true} re-encodes an image outside those limits',
                "provider_options: mode (std 720p | pro 1080p; not for the master models), cfg_scale "
                "(0-1, kling-v1.x only), sound (on|off; kling-v2-6 pro and kling-v3)",
                "no cancel call and no progress figure; videos are kept by Kling for 30 days",
            ],
        )

    # --- request checks -----------------------------------------------------------

    def _plan(
        self, request: Message, external_task_id: str = ""
    ) -> tuple[_Plan | None, list[FieldViolation]]:
        out: list[FieldViolation] = []
        name = request.model or DEFAULT_MODEL
        model = MODELS.get(name)
        if model is None:
            raise InvalidArgument.field(
                "model", f"unknown model for kling; known: {', '.join(MODELS)}", "UNKNOWN_MODEL"
            )
        has_image = request.HasField("input_image")
        kind = "image2video" if has_image else "text2video"
        if not has_image and not model.text:
            out.append(
                FieldViolation(
                    "input_image", f"{name} is image-to-video only: give input_image", "REQUIRED"
                )
            )
        if has_image and not model.image:
            out.append(FieldViolation("input_image", f"{name} takes no image", "UNSUPPORTED"))

        seconds = DEFAULT_DURATION
        if request.duration_seconds:
            rounded = round(request.duration_seconds)
            if abs(request.duration_seconds - rounded) > 1e-6 or rounded not in model.durations:
                allowed = (
                    f"{model.durations[0]} to {model.durations[-1]}"
                    if len(model.durations) > 2
                    else " or ".join(map(str, model.durations))
                )
                out.append(
                    FieldViolation(
                        "duration_seconds", f"{name} makes {allowed} seconds", "UNSUPPORTED_VALUE"
                    )
                )
            else:
                seconds = rounded
        if request.aspect_ratio:
            if has_image:
                out.append(
                    FieldViolation(
                        "aspect_ratio",
                        "Kling image-to-video follows the image's aspect ratio",
                        "UNSUPPORTED",
                    )
                )
            elif request.aspect_ratio not in ASPECT_RATIOS:
                out.append(
                    FieldViolation(
                        "aspect_ratio",
                        "must be one of " + ", ".join(ASPECT_RATIOS),
                        "UNSUPPORTED_VALUE",
                    )
                )
        if request.width or request.height:
            out.append(
                FieldViolation(
                    "width", "Kling takes no frame size; use aspect_ratio", "UNSUPPORTED"
                )
            )
        if request.fps:
            out.append(FieldViolation("fps", "Kling takes no frame rate", "UNSUPPORTED"))
        if request.HasField("seed"):
            out.append(FieldViolation("seed", "Kling takes no seed", "UNSUPPORTED"))
        if len(request.prompt) > MAX_PROMPT_CHARS:
            out.append(
                FieldViolation(
                    "prompt", f"at most {MAX_PROMPT_CHARS} characters for Kling", "TOO_LONG"
                )
            )
        if len(request.negative_prompt) > MAX_PROMPT_CHARS:
            out.append(
                FieldViolation(
                    "negative_prompt",
                    f"at most {MAX_PROMPT_CHARS} characters for Kling",
                    "TOO_LONG",
                )
            )

        body: dict[str, Any] = {"model_name": name, "prompt": request.prompt}
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        options = provider_options(request)
        mode = DEFAULT_MODE if model.modes else ""
        sound = False
        for key, value in options.items():
            where = f"provider_options.{key}"
            if key == "mode":
                if not model.modes:
                    out.append(
                        FieldViolation(
                            where, f"{name} has a single quality and takes no mode", "UNSUPPORTED"
                        )
                    )
                elif value not in model.modes:
                    out.append(
                        FieldViolation(
                            where, "must be std (720p) or pro (1080p)", "UNSUPPORTED_VALUE"
                        )
                    )
                else:
                    mode = value
            elif key == "cfg_scale":
                if not model.cfg_scale:
                    out.append(
                        FieldViolation(
                            where, "only the kling-v1.x models take cfg_scale", "UNSUPPORTED"
                        )
                    )
                elif (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not 0 <= value <= 1
                ):
                    out.append(
                        FieldViolation(where, "must be a number from 0 to 1", "OUT_OF_RANGE")
                    )
                else:
                    body["cfg_scale"] = float(value)
            elif key == FIT_OPTION:
                out += fit_option_problems(options)
            elif key == "sound":
                if value not in ("on", "off"):
                    out.append(FieldViolation(where, "must be on or off", "UNSUPPORTED_VALUE"))
                elif not model.sound_modes:
                    if value == "on":
                        out.append(
                            FieldViolation(
                                where,
                                f"{name} makes no sound (kling-v2-6 and later do)",
                                "UNSUPPORTED",
                            )
                        )
                    # "off" is what such a model does anyway; Kling takes the field from v2.6 on only.
                else:
                    sound = value == "on"
                    body["sound"] = value
            else:
                out.append(
                    FieldViolation(
                        where, "unknown option; kling takes mode, cfg_scale, sound, fit_input", "UNSUPPORTED"
                    )
                )
        if sound and mode not in model.sound_modes:
            out.append(
                FieldViolation(
                    "provider_options.sound",
                    f"{name} makes sound only in {' or '.join(model.sound_modes)} mode",
                    "UNSUPPORTED",
                )
            )
        if model.modes:
            body["mode"] = mode
        if not has_image:
            body["aspect_ratio"] = request.aspect_ratio or "16:9"
        else:
            image = self._image(request, out, wants_fit(options))
            if image:
                body["image"] = image  # else: inline bytes to fit, or an asset; sent at submit
        body["duration"] = str(seconds)
        if external_task_id:
            body["external_task_id"] = external_task_id
        if out:
            return None, out
        return _Plan(model, kind, mode, seconds, sound, body), out

    @staticmethod
    def _image(request: Message, out: list[FieldViolation], fit: bool = False) -> str | None:
        image = request.input_image
        source = image.WhichOneof("source")
        if source == "uri":
            if not image.uri.startswith("https://"):
                out.append(
                    FieldViolation(
                        "input_image.uri", "must be an https URL Kling can fetch", "INVALID_FORMAT"
                    )
                )
                return None
            return image.uri
        if source == "asset_id":
            return None  # checked by validate_input from the asset's measurements
        if source != "data":
            out.append(FieldViolation("input_image", "set one of data, uri or asset_id", "REQUIRED"))
            return None
        data = image.data
        if fit:
            media = InlineInput(data, field="input_image.data")
            if media.known and not _image_problems(media, fit=True):
                return None  # fitted at submit
        content_type = _sniff(data)
        if content_type not in IMAGE_TYPES:
            out.append(
                FieldViolation(
                    "input_image.content_type",
                    f"Kling takes JPEG or PNG images, not {content_type or 'an unknown type'}",
                    "UNSUPPORTED_VALUE",
                )
            )
            return None
        if len(data) > MAX_IMAGE_BYTES:
            out.append(FieldViolation("input_image.data", "at most 10 MB for Kling", "TOO_LARGE"))
            return None
        size = _image_size(data)
        if size is None:
            out.append(FieldViolation("input_image.data", "not a readable image", "INVALID_FORMAT"))
            return None
        width, height = size
        if min(width, height) < MIN_IMAGE_SIDE:
            out.append(
                FieldViolation(
                    "input_image.data",
                    f"Kling needs at least {MIN_IMAGE_SIDE} px a side",
                    "TOO_SMALL",
                )
            )
            return None
        if max(width / height, height / width) > MAX_IMAGE_ASPECT:
            out.append(
                FieldViolation(
                    "input_image.data",
                    "aspect ratio must be between 1:2.5 and 2.5:1",
                    "OUT_OF_RANGE",
                )
            )
            return None
        # Kling wants bare base64: a "data:" prefix is refused.
        return base64.b64encode(data).decode("ascii")

    def validate_input(self, request: Message, media: InputMedia) -> None:
        if media.source == "uri":
            return  # Kling fetches it
        problems = _image_problems(media, fit=wants_fit(provider_options(request)))
        if problems:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in problems),
                metadata={"provider": self.name},
                field_violations=problems,
            )

    async def _send_image(self, media: InputMedia, fit: bool) -> str:
        """``image`` for inline bytes or an asset: bare base64, fitted first when asked and needed."""
        if fit and _image_problems(media):
            media = await fit_input(
                media,
                types=IMAGE_TYPES,
                max_bytes=MAX_IMAGE_BYTES,
                min_side=MIN_IMAGE_SIDE,
                max_aspect=MAX_IMAGE_ASPECT,
            )
        problems = _image_problems(media)
        if problems:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in problems),
                metadata={"provider": self.name},
                field_violations=problems,
            )
        data = await media.read_bytes(MAX_IMAGE_BYTES)
        # Kling wants bare base64: a "data:" prefix is refused.
        return base64.b64encode(data).decode("ascii")

    def validate(self, request: Message) -> None:
        handled = ("duration_seconds", "aspect_ratio", "prompt", "input_image.data")
        violations = [
            v for v in check_limits(self.describe().limits, request) if v.field not in handled
        ]
        _, problems = self._plan(request)
        violations += problems
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                metadata={"provider": self.name},
                field_violations=violations,
            )

    # --- cost ---------------------------------------------------------------------

    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        plan, _ = self._plan(request)
        if plan is None:  # only for a request validate() would refuse
            spec = MODELS.get(model) or MODELS[DEFAULT_MODEL]
            units = spec.units(DEFAULT_MODE, DEFAULT_DURATION, False)
        else:
            units = plan.model.units(plan.mode, plan.seconds, plan.sound)
        return make_cost(
            units,
            common_pb2.PRICE_UNIT_CREDIT,
            usd(UNIT_PRICE_USD),
            common_pb2.COST_BASIS_ESTIMATED,
        )

    # --- the job --------------------------------------------------------------------

    def _client(self) -> VendorHTTP:
        if self.http is None:
            raise ProviderNotConfigured(
                f"provider kling is not configured: {self._why_not}", provider=self.name
            )
        return self.http

    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        http = self._client()
        external_id = ctx.idempotency_key or ctx.job_id
        plan, problems = self._plan(request, external_id)
        if plan is None:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in problems),
                field_violations=problems,
            )
        media = inputs.from_request(request, ctx)
        if media is not None and plan.kind == "image2video" and "image" not in plan.body:
            plan.body["image"] = await self._send_image(media, wants_fit(provider_options(request)))
        try:
            answer, _ = await http.request_json(
                "POST",
                f"/v1/videos/{plan.kind}",
                json=plan.body,
                idempotent=True,
                ctx=ctx,
                model=plan.model.name,
            )
        except ProviderInvalidRequest:
            # Kling refuses a second task with the same external_task_id: an earlier
            # attempt (lost answer, restart) got through. Carry on with that task.
            task = await self._find(plan.kind, external_id, ctx, plan.model.name)
            if task is None:
                raise
        else:
            task = self._data(answer, plan.model.name)
        task_id = task.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            raise ProviderBadResponse(
                "kling accepted the task but its answer has no task_id",
                provider=self.name,
                model=plan.model.name,
            )
        return VendorHandle(
            vendor_job_id=task_id,
            data={"kind": plan.kind, "model": plan.model.name, "external_task_id": external_id},
        )

    async def _find(
        self, kind: str, external_id: str, ctx: JobContext, model: str
    ) -> dict[str, Any] | None:
        try:
            answer, _ = await self._client().request_json(
                "GET", f"/v1/videos/{kind}/{external_id}", idempotent=True, ctx=ctx, model=model
            )
        except (ProviderJobFailed, ProviderInvalidRequest):
            return None
        task = self._data(answer, model)
        external = (task.get("task_info") or {}).get("external_task_id")
        return task if external in (None, external_id) else None

    def _data(self, answer: Any, model: str) -> dict[str, Any]:
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise ProviderBadResponse(
                "kling answered without a data object", provider=self.name, model=model
            )
        return data

    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        kind = handle.data.get("kind", "text2video")
        model = handle.data.get("model", "")
        answer, _ = await self._client().request_json(
            "GET",
            f"/v1/videos/{kind}/{handle.vendor_job_id}",
            idempotent=True,
            ctx=ctx,
            model=model,
        )
        task = self._data(answer, model)
        status = task.get("task_status")
        if status == "submitted":
            return PollResult(VendorState.QUEUED, ProgressInfo(vendor_status=status))
        if status == "processing":
            return PollResult(VendorState.RUNNING, ProgressInfo(vendor_status=status))
        if status == "succeed":
            videos = [
                v
                for v in (task.get("task_result") or {}).get("videos") or []
                if isinstance(v, dict)
            ]
            outputs = [
                Output(
                    url=v["url"],
                    content_type="video/mp4",
                    metadata={
                        name: str(v[key])
                        for name, key in (("klingVideoId", "id"), ("klingDuration", "duration"))
                        if v.get(key)
                    },
                )
                for v in videos
                if isinstance(v.get("url"), str) and v["url"]
            ]
            if not outputs:
                raise ProviderBadResponse(
                    "kling reported succeed without a video URL",
                    provider=self.name,
                    model=model,
                    retryable=False,
                )
            return PollResult(
                VendorState.SUCCEEDED,
                ProgressInfo(fraction=1.0, vendor_status=status),
                outputs=outputs,
                usage=self._usage(task),
            )
        if status == "failed":
            reason = str(task.get("task_status_msg") or "the task failed")[:500]
            common: dict[str, Any] = {
                "provider": self.name,
                "model": model,
                "metadata": {"vendorStatus": "failed"},
            }
            message = f"kling task failed: {reason}"
            error: MediagenError = (
                ContentRejected(message, **common)
                if CONTENT_FAILURE.search(reason)
                else ProviderJobFailed(message, **common)
            )
            return PollResult(
                VendorState.FAILED, ProgressInfo(vendor_status=status, message=reason), error=error
            )
        raise ProviderBadResponse(
            f"kling answered an unknown task_status {str(status)[:40]!r}",
            provider=self.name,
            model=model,
        )

    @staticmethod
    def _usage(task: dict[str, Any]) -> VendorUsage | None:
        try:
            units = float(task["final_unit_deduction"])
        except (KeyError, TypeError, ValueError):
            return None
        if units < 0:
            return None
        return VendorUsage(
            units=units, unit=common_pb2.PRICE_UNIT_CREDIT, unit_price_micros=usd(UNIT_PRICE_USD)
        )

    def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._client().open_stream(
            output.url, ctx=ctx, max_bytes=self.max_output_bytes, model=handle.data.get("model", "")
        )

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()
