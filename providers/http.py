"""The shared vendor HTTP layer: written once, used by every adapter.

An adapter owns one ``VendorHTTP`` (one pooled ``httpx.AsyncClient`` for the
vendor's API) and makes every call through it::

    self.http = VendorHTTP(
        "runway",
        base_url=base_url_from_env("RUNWAY", "https://api.dev.runwayml.com"),
        headers={"Authorization": f"Bearer {key}", "X-Runway-Version": "2024-11-06"},
    )
    body, _ = await self.http.request_json(
        "GET", f"/v1/tasks/{task_id}", idempotent=True, ctx=ctx, model=model
    )
    async with self.http.open_stream(output.url, ctx=ctx, max_bytes=LIMIT) as chunks:
        async for chunk in chunks: ...

What it does for every call:

- **Errors** are classified in one place, ``classify``: 401/403 → ProviderAuthFailed,
  402 and quota-exhausted answers (OpenAI 429 ``insufficient_quota``, ElevenLabs
  401 ``quota_exceeded``, fal 403 "Exhausted balance"...) → ProviderOutOfCredit,
  429 → ProviderRateLimited (with Retry-After), 400/404-on-create/409/413/422 →
  ProviderInvalidRequest with the vendor's own message, moderation refusals →
  ContentRejected, 5xx → ProviderUnavailable, timeouts → ProviderTimeout,
  connection failures → ProviderUnavailable, unreadable 2xx → ProviderBadResponse.
  An adapter's ``classify_hook`` sees every answer first, for envelopes such as
  Kling's ``{code, message}`` inside HTTP 200.
- **Retries** use the project's one ``RetryPolicy``, and only for calls the
  adapter marks ``idempotent`` (polls, downloads, POSTs carrying an idempotency
  key). A non-idempotent call is retried only when the connection could not be
  opened at all, i.e. the vendor never saw the request.
- **Deadlines**: ``ctx.deadline`` bounds both the retries and each attempt's
  timeouts.
- **Downloads** stream in bounded chunks, enforce a size limit, detect bodies
  cut short, and refuse unsafe URLs (SSRF, see ``check_url``). Outputs on
  another origin than the API never receive the API's auth headers.
- **Logs**: one ``mediagen.vendor`` event per attempt with provider, method,
  path (never the query string), status, elapsed ms and attempt. Headers and
  bodies are never logged, and vendor text in errors is cut to 500 characters.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import ipaddress
import itertools
import json as jsonlib
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
import structlog

from providers import metrics
from providers.base import JobContext
from providers.errors import (
    ContentRejected,
    JobDeadlineExceeded,
    MediagenError,
    OutputTooLarge,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderError,
    ProviderInvalidRequest,
    ProviderJobFailed,
    ProviderOutOfCredit,
    ProviderOutputUnavailable,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
    UnsafeOutputURL,
)
from providers.netio import AsyncioBackend
from providers.retry import DEFAULT_RETRY, RetryPolicy, retry_after_from_headers
from providers.secrets import redact

log = structlog.get_logger("mediagen.vendor")

try:
    __version__ = importlib.metadata.version("mediagen")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "dev"

USER_AGENT = f"mediagen/{__version__}"

#: Explicit per phase: a vendor that accepts the connection and then says
#: nothing must not hold a job forever.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
#: Keep-alive for every connection the pool may open: at hundreds of polls a
#: second, a smaller keep-alive set means a new TCP (and TLS) handshake per call.
DEFAULT_LIMITS = httpx.Limits(
    max_connections=50, max_keepalive_connections=50, keepalive_expiry=30.0
)

CHUNK_SIZE = 256 * 1024
#: Largest body ``request``/``request_json`` read into memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: Error bodies are read only this far: enough for any vendor's message.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_ERROR_TEXT = 500
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

#: Where vendors put their request id, most specific first.
REQUEST_ID_HEADERS = (
    "x-request-id",  # OpenAI, Stability, Luma, Runway
    "request-id",  # ElevenLabs
    "x-amzn-requestid",
    "x-amz-request-id",
    "x-fal-request-id",
    "x-trace-id",  # ElevenLabs error answers
    "x-cloud-trace-context",  # Google
    "cf-ray",  # anything behind Cloudflare
)

#: Error codes meaning "the account cannot pay", whatever the HTTP status.
_OUT_OF_CREDIT_CODES = frozenset(
    {
        "insufficient_quota",  # OpenAI 429
        "quota_exceeded",  # ElevenLabs 401
        "payment_required",  # Stability 402
        "insufficient_credits",
        "insufficient_balance",
        "budget_exhausted",  # Luma failure_code
    }
)
_OUT_OF_CREDIT_TEXT = re.compile(
    r"exhausted balance"  # fal 403
    r"|not (?:have )?enough credits"  # Runway
    r"|insufficient (?:credits?|balance|funds)"  # Luma
    r"|credits? (?:are |is )?insufficient"  # sunoapi.org 429
    r"|exceeded your current quota",  # OpenAI
    re.IGNORECASE,
)
_CONTENT_REJECTED_CODES = frozenset(
    {
        "content_policy_violation",  # OpenAI dall-e
        "moderation_blocked",  # OpenAI gpt-image
        "content_moderation",  # Stability 403
        "content_moderated",  # Luma
        "content_filtered",  # Stability finish_reason
        "sensitive_word_error",  # sunoapi.org
    }
)
_CONTENT_REJECTED_TEXT = re.compile(
    r"safety system|content moderation|content policy|moderation failed", re.IGNORECASE
)

#: An adapter's look at every answer before the generic rules: return an error
#: to raise (provider, model, request id and status are filled in), or None.
ClassifyHook = Callable[[httpx.Response, Any], MediagenError | None]
#: Resolves a host name to IP address strings (injectable for tests).
Resolver = Callable[[str, int], Awaitable[list[str]]]

_UNSET: Any = object()


# --- configuration -----------------------------------------------------------


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: building one loads the CA bundle (~50 ms)."""
    return httpx.create_ssl_context()


def base_url_from_env(vendor_env_prefix: str, default: str) -> str:
    """``<PREFIX>_BASE_URL`` when set (proxies, test servers), else ``default``.

    ``base_url_from_env("RUNWAY", "https://api.dev.runwayml.com")`` reads ``RUNWAY_BASE_URL``.
    """
    value = os.environ.get(f"{vendor_env_prefix.upper()}_BASE_URL", "").strip()
    return value or default


def allow_private_urls_from_env() -> bool:
    """``MEDIAGEN_ALLOW_PRIVATE_URLS=1``: fetch http and private addresses (local tests only)."""
    return os.environ.get("MEDIAGEN_ALLOW_PRIVATE_URLS", "").strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


@dataclass(frozen=True)
class UrlPolicy:
    """Which output URLs may be fetched. The default refuses http and private targets."""

    allow_http: bool = False
    allow_private: bool = False

    @classmethod
    def from_env(cls) -> UrlPolicy:
        allowed = allow_private_urls_from_env()
        return cls(allow_http=allowed, allow_private=allowed)


# --- outbound URL safety (SSRF) --------------------------------------------------


def is_public_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True for a globally routable unicast address.

    IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) lie in a reserved range and
    are always refused; 6to4 and Teredo addresses are also judged by the IPv4
    address they carry, since that is where the packets end up.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    ):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if ip.is_site_local:
            return False
        return all(is_public_address(inner) for inner in embedded if inner is not None)
    return True


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        # IPv6 sockaddr may carry a zone ("fe80::1%eth0"); the zone is not part of the address.
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


async def check_url(
    url: str | httpx.URL,
    allow_private: bool = False,
    *,
    allow_http: bool | None = None,
    resolver: Resolver | None = None,
) -> list[str]:
    """Refuse URLs that could reach into our own network; return the checked addresses.

    Rules: ``https`` only (``http`` too when ``allow_http``, which defaults to
    ``allow_private``), no credentials in the URL, and every address the host
    resolves to must be public (see ``is_public_address``), unless
    ``allow_private``. Reused for webhook targets.

    Returns the resolved addresses (empty when ``allow_private`` skips
    resolution), so a caller can connect to exactly what was checked.

    Raises:
        UnsafeOutputURL: the URL breaks a rule (not retryable).
        ProviderOutputUnavailable: the host name does not resolve (retryable).
    """
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        raise UnsafeOutputURL("refused to fetch a URL that cannot be parsed") from None
    allow_http = allow_private if allow_http is None else allow_http
    host = parsed.host
    where = f"{parsed.scheme}://{host}" if host else "a URL without a host"
    if parsed.scheme != "https" and not (allow_http and parsed.scheme == "http"):
        raise UnsafeOutputURL(f"refused to fetch {where}: only https URLs are fetched")
    if not host:
        raise UnsafeOutputURL(f"refused to fetch {where}")
    if parsed.userinfo:
        raise UnsafeOutputURL(f"refused to fetch {where}: credentials in the URL")
    if allow_private:
        return []
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            addresses = await (resolver or _system_resolver)(parsed.raw_host.decode("ascii"), port)
        except (OSError, UnicodeError) as exc:
            raise ProviderOutputUnavailable(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise ProviderOutputUnavailable(f"cannot resolve {host}: no addresses")
    for address in addresses:
        try:
            public = is_public_address(address)
        except ValueError:
            public = False
        if not public:
            raise UnsafeOutputURL(
                f"refused to fetch {where}: it resolves to the non-public address {address}"
            )
    return addresses


# --- reading vendor error bodies ---------------------------------------------------


def _truncate(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    return jsonlib.dumps(value, ensure_ascii=False, default=str)


def _location(loc: Any) -> str:
    if isinstance(loc, (list, tuple)):
        return ".".join(str(part) for part in loc)
    return _as_text(loc)


def _item_message(item: Any) -> str:
    """One entry of an errors/issues/detail list: '{field}: {message}' when it names a field."""
    if not isinstance(item, Mapping):
        return _as_text(item)
    text = _as_text(
        item.get("msg") or item.get("message") or item.get("detail") or item.get("description")
    )
    where = _location(item.get("loc") or item.get("path") or item.get("field") or item.get("param"))
    if where and text:
        return f"{where}: {text}"
    return text or _as_text(item)


def _join(main: str, details: list[str]) -> str:
    details = [d for d in details if d]
    if not details:
        return main
    joined = "; ".join(details)
    return f"{main}: {joined}" if main else joined


def vendor_message(body: Any) -> str:
    """The vendor's own explanation from the usual error shapes ('' when none).

    Understands ``{"error": {"message"}}`` (OpenAI, Google), ``{"error": "...",
    "issues": [...]}`` (Runway), ``{"detail": "..."}`` (fal, Freesound),
    ``{"detail": {"status", "message"}}`` (ElevenLabs), ``{"detail": [{loc, msg}]}``
    (FastAPI 422), ``{"name", "errors": [...]}`` (Stability), ``{"message",
    "errors": {field: [...]}}`` (Laravel), ``{"message"}``/``{"msg"}`` (Kling,
    Mubert, sunoapi.org). The result is not yet truncated.
    """
    if isinstance(body, str):
        return body
    if isinstance(body, list):
        return "; ".join(filter(None, (_item_message(item) for item in body)))
    if not isinstance(body, Mapping):
        return ""
    error = body.get("error")
    if isinstance(error, Mapping):
        main = _as_text(error.get("message") or error.get("raw_message") or error.get("detail"))
        param = error.get("param")
        if param and main and str(param) not in main:
            main = f"{param}: {main}"
        return main or _as_text(error)
    details: list[str] = []
    for key in ("issues", "errors"):
        items = body.get(key)
        if isinstance(items, list):
            details.extend(_item_message(item) for item in items)
        elif isinstance(items, Mapping):  # Laravel: {field: [messages]}
            for field_name, messages in items.items():
                texts = messages if isinstance(messages, list) else [messages]
                details.extend(f"{field_name}: {_as_text(text)}" for text in texts)
    if isinstance(error, str) and error:
        return _join(error, details)
    detail = body.get("detail")
    if isinstance(detail, str) and detail:
        return _join(detail, details)
    if isinstance(detail, list):
        details.extend(_item_message(item) for item in detail)
    elif isinstance(detail, Mapping):
        return _join(_as_text(detail.get("message") or detail.get("msg") or detail), details)
    main = _as_text(body.get("message") or body.get("msg") or body.get("failure_reason"))
    description = _as_text(body.get("description"))
    if description and description != main:
        main = f"{main} ({description})" if main else description
    return _join(main, details)


def vendor_error_codes(body: Any) -> set[str]:
    """Machine-readable error codes in a vendor body, lower-cased (for matching)."""
    if not isinstance(body, Mapping):
        return set()
    found: list[Any] = [
        body.get("code"),
        body.get("name"),
        body.get("type"),
        body.get("status"),
        body.get("error_type"),
        body.get("failure_code"),
        body.get("finish_reason"),
    ]
    error = body.get("error")
    if isinstance(error, Mapping):
        found += [error.get("code"), error.get("type"), error.get("status")]
    detail = body.get("detail")
    if isinstance(detail, Mapping):
        found += [detail.get("status"), detail.get("code"), detail.get("type")]
    elif isinstance(detail, list):
        found += [item.get("type") for item in detail if isinstance(item, Mapping)]
    return {
        str(code).strip().lower()
        for code in found
        if isinstance(code, (str, int)) and str(code).strip()
    }


def vendor_request_id(response: httpx.Response, body: Any = None) -> str:
    """The vendor's id for this request (for support tickets), '' when none."""
    for name in REQUEST_ID_HEADERS:
        value = response.headers.get(name)
        if value:
            return _truncate(value, 128)
    if isinstance(body, Mapping):
        value = body.get("request_id") or body.get("requestId")
        if value is None and "errors" in body and "name" in body:
            value = body.get("id")  # Stability: the error id support asks for
        if isinstance(value, (str, int)) and str(value):
            return _truncate(str(value), 128)
    return ""


def _parse_json(response: httpx.Response) -> tuple[bool, Any]:
    """(parsed, value): value is None for an empty body."""
    content = response.content
    if not content.strip():
        return True, None
    try:
        return True, jsonlib.loads(content)
    except (ValueError, UnicodeDecodeError):
        return False, None


def _body_text(response: httpx.Response) -> str:
    try:
        return response.content.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:
        return response.content.decode("utf-8", errors="replace")


def _is_out_of_credit(status: int, codes: set[str], message: str) -> bool:
    if status not in (400, 401, 402, 403, 429):
        return False
    return bool(codes & _OUT_OF_CREDIT_CODES) or bool(_OUT_OF_CREDIT_TEXT.search(message))


def _is_content_rejection(status: int, codes: set[str], message: str) -> bool:
    if not 400 <= status < 500 or status in (401, 429):
        return False
    return bool(codes & _CONTENT_REJECTED_CODES) or bool(_CONTENT_REJECTED_TEXT.search(message))


def classify(
    response: httpx.Response, provider: str, model: str = "", *, body: Any = _UNSET
) -> MediagenError:
    """The error an unsuccessful vendor answer means. The one mapping for every adapter.

    ``response`` must have been read (its body is parsed here unless ``body``
    is given). A server's ``x-should-retry: true|false`` overrides whether the
    result is retryable, as the OpenAI and Runway SDKs do.
    """
    if body is _UNSET:
        _, body = _parse_json(response)
    status = response.status_code
    message = vendor_message(body) if body is not None else _body_text(response)
    codes = vendor_error_codes(body)
    text = f"{provider} answered HTTP {status}"
    if message.strip():
        text += f": {_truncate(message)}"
    common: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "vendor_request_id": vendor_request_id(response, body),
        "http_status": status,
    }
    retry_after = (
        retry_after_from_headers(response.headers) if status == 429 or status >= 500 else None
    )
    method = response.request.method if _has_request(response) else "GET"
    creating = method in ("POST", "PUT", "PATCH")

    error: MediagenError
    if _is_out_of_credit(status, codes, message):
        error = ProviderOutOfCredit(text, **common)
    elif _is_content_rejection(status, codes, message):
        error = ContentRejected(text, **common)
    elif status in (401, 403):
        error = ProviderAuthFailed(text, **common)
    elif status == 402:
        error = ProviderOutOfCredit(text, **common)
    elif status == 408:
        error = ProviderTimeout(text, **common)
    elif status == 429:
        error = ProviderRateLimited(text, retry_after=retry_after, **common)
    elif status in (400, 409, 413, 422) or (status == 404 and creating):
        error = ProviderInvalidRequest(text, **common)
    elif status in (404, 410):
        # Polling or fetching something the vendor no longer has (deleted, expired).
        error = ProviderJobFailed(text, **common)
    elif status == 504:
        error = ProviderTimeout(text, retry_after=retry_after, **common)
    elif status >= 500:
        error = ProviderUnavailable(text, retry_after=retry_after, **common)
    else:
        error = ProviderError(text, retryable=False, **common)

    should_retry = response.headers.get("x-should-retry", "").strip().lower()
    if should_retry in ("true", "false"):
        error.retryable = should_retry == "true"
    return error


def content_filter_error(
    response: httpx.Response, provider: str, model: str = "", *, body: Any = None
) -> ContentRejected | None:
    """A 2xx that is really a moderation refusal (Stability ``finish-reason: CONTENT_FILTERED``)."""
    reason = response.headers.get("finish-reason", "")
    if not reason and isinstance(body, Mapping):
        reason = _as_text(body.get("finish_reason"))
    if reason.strip().upper() != "CONTENT_FILTERED":
        return None
    return ContentRejected(
        f"{provider} filtered the output for its content policy (finish reason CONTENT_FILTERED)",
        provider=provider,
        model=model,
        vendor_request_id=vendor_request_id(response, body),
        http_status=response.status_code,
    )


def _has_request(response: httpx.Response) -> bool:
    try:
        response.request  # noqa: B018 - raises RuntimeError when unset
    except RuntimeError:
        return False
    return True


def transport_error(exc: httpx.HTTPError, provider: str, model: str = "") -> ProviderError:
    """A failure below HTTP (no usable answer) as a ProviderError; chain it with ``from exc``."""
    kind = type(exc).__name__
    detail = _truncate(str(exc), 200)
    common: dict[str, Any] = {"provider": provider, "model": model}
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connecting",
            httpx.ReadTimeout: "waiting for the answer",
            httpx.WriteTimeout: "sending the request",
            httpx.PoolTimeout: "waiting for a free connection",
        }.get(type(exc), "talking to it")
        return ProviderTimeout(f"{provider} timed out while {phase} ({kind})", **common)
    if isinstance(exc, httpx.DecodingError):
        return ProviderBadResponse(
            f"{provider} sent a body that cannot be decoded ({kind}: {detail})", **common
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ProviderError(
            f"{provider}: unsupported URL scheme ({detail})", retryable=False, **common
        )
    # ConnectError, RemoteProtocolError (dropped connection), ReadError, ProxyError...
    return ProviderUnavailable(f"{provider} connection failed ({kind}: {detail})", **common)


def _never_sent(error: MediagenError) -> bool:
    """Retry test for non-idempotent calls: only when the vendor cannot have seen the request."""
    return error.retryable and isinstance(
        error.__cause__, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
    )


def _stamp(
    error: MediagenError, provider: str, model: str, response: httpx.Response | None, body: Any
) -> MediagenError:
    """Fill in what a classify hook's error left out: provider, model, request id, status."""
    request_id = vendor_request_id(response, body) if response is not None else ""
    status = str(response.status_code) if response is not None else ""
    for key, value in (
        ("provider", provider),
        ("model", model),
        ("vendorRequestId", request_id),
        ("httpStatus", status),
    ):
        if value and not error.metadata.get(key):
            error.metadata[key] = value
    if isinstance(error, ProviderError):
        error.provider = error.provider or provider
        error.model = error.model or model
        error.vendor_request_id = error.vendor_request_id or request_id
        if error.http_status is None and response is not None:
            error.http_status = response.status_code
    return error


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    default_port = {"https": 443, "http": 80}.get(url.scheme)
    return url.scheme, url.raw_host.lower(), url.port or default_port


def _loggable(url: httpx.URL) -> str:
    """Path only: query strings may carry keys (Google ``?key=``) or signatures (S3)."""
    return redact(url.path)


# --- the connection pool --------------------------------------------------------


class _ConnectionPool:
    """Vendor connections: at most ``size`` requests at once, idle connections reused newest first.

    It replaces httpcore's AsyncConnectionPool under httpx, which
    (1) loses a slot for good when a request is cancelled or times out just
    after being handed a new connection (encode/httpcore#1093): under heavy
    queueing every slot leaked and all calls failed with PoolTimeout against a
    healthy vendor; and (2) scans every connection on every request and every
    close (a socket poll per idle connection, an O(n²) idle count), so a call's
    CPU doubled with 50 connections open (bench/README.md).

    Here a request waits its turn on a FIFO semaphore, bounded by the pool
    timeout, and holds its slot until its response is closed; it takes the most
    recently used idle connection to its origin (only that one is checked for
    expiry) or opens a new one. The oldest idle connection is checked on every
    return, so expired ones do not linger.
    """

    def __init__(
        self, ssl_context: ssl.SSLContext, size: int, keepalive: int, keepalive_expiry: float | None
    ) -> None:
        self._ssl_context = ssl_context
        self._slots = asyncio.Semaphore(size)
        self._keepalive = keepalive
        self._keepalive_expiry = keepalive_expiry
        self._backend = AsyncioBackend()
        self._idle: dict[tuple[bytes, bytes, int], list[httpcore.AsyncHTTPConnection]] = {}

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        wait = request.extensions.get("timeout", {}).get("pool")
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise httpcore.PoolTimeout("no connection became free within the pool timeout") from None
        origin = request.url.origin
        key = (origin.scheme, origin.host, origin.port)
        try:
            connection = await self._take(key, origin)
            try:
                response = await connection.handle_async_request(request)
            except BaseException:
                # httpcore has closed it already unless it failed while idle; never reuse it.
                await asyncio.shield(connection.aclose())
                raise
        except BaseException:
            self._slots.release()
            raise
        assert isinstance(response.stream, AsyncIterable)
        response.stream = _ReturnOnClose(response.stream, lambda: self._give_back(key, connection))
        return response

    async def _take(self, key: tuple[bytes, bytes, int], origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        idle = self._idle.get(key, [])
        while idle:
            connection = idle.pop()
            if connection.is_available() and not connection.has_expired():
                return connection
            await connection.aclose()
        return httpcore.AsyncHTTPConnection(
            origin, ssl_context=self._ssl_context, keepalive_expiry=self._keepalive_expiry, network_backend=self._backend
        )

    async def _give_back(self, key: tuple[bytes, bytes, int], connection: httpcore.AsyncHTTPConnection) -> None:
        self._slots.release()
        idle = self._idle.setdefault(key, [])
        if connection.is_idle():
            idle.append(connection)
        if idle and (len(idle) > self._keepalive or idle[0].has_expired()):
            await idle.pop(0).aclose()

    async def __aenter__(self) -> _ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.aclose()


class _ReturnOnClose:
    """A response body that gives its connection back to the pool when it is closed."""

    def __init__(self, inner: AsyncIterable[bytes], give_back: Callable[[], Awaitable[None]]) -> None:
        self._inner = inner
        self._give_back: Callable[[], Awaitable[None]] | None = give_back

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            close = getattr(self._inner, "aclose", None)
            if close is not None:
                await close()
        finally:
            give_back, self._give_back = self._give_back, None
            if give_back is not None:
                await give_back()


class _PooledTransport(httpx.AsyncHTTPTransport):
    """httpx's transport (request conversion, error mapping) over ``_ConnectionPool``.

    Relies on httpx 0.28 keeping its pool in ``_pool`` (pinned in pyproject.toml).
    """

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext | None = None) -> None:
        context = ssl_context or _ssl_context()
        super().__init__(verify=context, limits=limits)
        size = limits.max_connections or 100  # "no limit" still gets one: the slots are the queue
        keepalive = limits.max_keepalive_connections
        self._pool = _ConnectionPool(  # type: ignore[assignment]
            context,
            size=size,
            keepalive=size if keepalive is None else keepalive,
            keepalive_expiry=limits.keepalive_expiry,
        )


def _pooled_transport(
    transport: httpx.AsyncBaseTransport | None, limits: httpx.Limits
) -> httpx.AsyncBaseTransport:
    """The given transport (tests), or ours over ``_ConnectionPool``."""
    return transport if transport is not None else _PooledTransport(limits)


# --- the client -------------------------------------------------------------------


class VendorHTTP:
    """One vendor's HTTP client: pooled connections, classified errors, retries, streams.

    Args:
        provider: the adapter's ``name``; it labels errors and logs.
        base_url: the vendor API root (use ``base_url_from_env``).
        headers: default headers for API calls, typically the auth header.
            They are never sent to another origin (output CDNs, redirects).
        auth: an ``httpx.Auth`` for credentials computed per request (Kling's JWT).
        timeout: per attempt; shortened to what is left of ``ctx.deadline``.
        retry: the retry policy (its clock must share the deadline's time base).
        classify_hook: sees every API answer before the generic rules.
        url_policy: which output URLs may be fetched (default: ``UrlPolicy.from_env()``).
        transport: an httpx transport, for tests (``httpx.MockTransport``).
        resolver: host name resolution for URL checks, for tests.
    """

    def __init__(
        self,
        provider: str,
        *,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        classify_hook: ClassifyHook | None = None,
        url_policy: UrlPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
        resolver: Resolver | None = None,
    ) -> None:
        self.provider = provider
        self.timeout = timeout
        self.retry = retry
        self.classify_hook = classify_hook
        self.url_policy = url_policy if url_policy is not None else UrlPolicy.from_env()
        self._resolver = resolver
        self._transport = transport
        self._limits = limits
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers={"User-Agent": USER_AGENT, **(headers or {})},
            auth=auth,
            timeout=timeout,
            transport=_pooled_transport(transport, limits),
            follow_redirects=False,
        )
        self._api_origin = _origin(self._client.base_url)
        # Outputs on other hosts go through a client without the API's credentials.
        self._downloads: httpx.AsyncClient | None = None

    @property
    def base_url(self) -> httpx.URL:
        return self._client.base_url

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._downloads is not None:
            await self._downloads.aclose()

    async def __aenter__(self) -> VendorHTTP:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- plain calls ------------------------------------------------------------

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        ctx: JobContext | None,
        model: str = "",
    ) -> tuple[Any, httpx.Response]:
        """Call the API and return (parsed JSON, response). An empty body parses as None.

        ``idempotent``: may this call be repeated safely? True for GETs and for
        POSTs that carry the vendor's idempotency key. Pass ``files`` as bytes
        (not open files) when the call may be retried.

        Raises:
            MediagenError: classified (see ``classify``); ProviderBadResponse
            when a 2xx body is not JSON.
        """
        response, body = await self._call(
            method,
            path,
            json=json,
            data=data,
            files=files,
            params=params,
            headers=headers,
            idempotent=idempotent,
            ctx=ctx,
            model=model,
            max_bytes=MAX_RESPONSE_BYTES,
            want_json=True,
        )
        return body, response

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        ctx: JobContext | None,
        model: str = "",
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> httpx.Response:
        """Like ``request_json`` but returns the read response, whatever its body.

        For answers that are JSON or bytes depending on the status (Stability:
        image bytes with 200, JSON with 202). Errors are classified the same
        way; bodies over ``max_bytes`` raise OutputTooLarge. For large media
        use ``open_stream`` instead.
        """
        response, _ = await self._call(
            method,
            path,
            json=json,
            data=data,
            files=files,
            params=params,
            headers=headers,
            idempotent=idempotent,
            ctx=ctx,
            model=model,
            max_bytes=max_bytes,
            want_json=False,
        )
        return response

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        data: Mapping[str, Any] | None,
        files: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        idempotent: bool,
        ctx: JobContext | None,
        model: str,
        max_bytes: int,
        want_json: bool,
    ) -> tuple[httpx.Response, Any]:
        target = self._absolute(path, model)
        if _origin(target) != self._api_origin:
            # A vendor-supplied absolute URL must not receive the API's credentials.
            raise UnsafeOutputURL(
                f"{self.provider}: refused to call {target.scheme}://{target.host}, "
                "which is not the configured API",
                provider=self.provider,
                model=model,
            )
        deadline = ctx.deadline if ctx is not None else None
        attempts = itertools.count(1)

        async def attempt() -> tuple[httpx.Response, Any]:
            number = next(attempts)
            request = self._client.build_request(
                method,
                target,
                json=json,
                data=data,
                files=files,
                params=params,
                headers=headers,
                timeout=self._attempt_timeout(deadline),
            )
            response = await self._send_and_read(self._client, request, number, model, max_bytes)
            parsed, body = _parse_json(response)
            error = self._answer_error(response, body, model)
            if error is None and want_json and not parsed:
                error = ProviderBadResponse(
                    f"{self.provider} answered HTTP {response.status_code} with a body that is "
                    f"not JSON: {_truncate(_body_text(response), 200)}",
                    provider=self.provider,
                    model=model,
                    vendor_request_id=vendor_request_id(response),
                    http_status=response.status_code,
                )
            if error is not None:
                raise error
            return response, body

        return await self.retry.run(
            attempt,
            deadline=deadline,
            on_retry=self._log_retry(method, target),
            retry_if=None if idempotent else _never_sent,
        )

    def _answer_error(
        self, response: httpx.Response, body: Any, model: str
    ) -> MediagenError | None:
        """The error an API answer stands for, or None when it is a success."""
        if self.classify_hook is not None:
            hooked = self.classify_hook(response, body)
            if hooked is not None:
                return _stamp(hooked, self.provider, model, response, body)
        status = response.status_code
        if status >= 400:
            return classify(response, self.provider, model, body=body)
        if 300 <= status < 400:
            return ProviderBadResponse(
                f"{self.provider} answered an API call with an unexpected redirect (HTTP {status})",
                provider=self.provider,
                model=model,
                vendor_request_id=vendor_request_id(response, body),
                http_status=status,
                retryable=False,
            )
        return content_filter_error(response, self.provider, model, body=body)

    async def _send_and_read(
        self,
        client: httpx.AsyncClient,
        request: httpx.Request,
        attempt: int,
        model: str,
        max_bytes: int,
    ) -> httpx.Response:
        """Send, read the body up to ``max_bytes``, log; transport failures become ProviderErrors."""
        started = time.perf_counter()
        response = await self._send(client, request, attempt, model, started)
        if response.is_stream_consumed:  # a transport that answered from memory (MockTransport)
            self._log_call(request, attempt, started, response.status_code)
            return response
        try:
            declared = _decoded_length(response)
            if declared is not None and declared > max_bytes:
                raise self._too_large(declared, max_bytes, model, response)
            raw = bytearray()
            async for piece in response.aiter_raw():
                raw += piece
                if len(raw) > max_bytes:
                    raise self._too_large(len(raw), max_bytes, model, response)
        except httpx.HTTPError as exc:
            error = transport_error(exc, self.provider, model)
            self._log_call(request, attempt, started, response.status_code, error=error.reason)
            raise error from exc
        except MediagenError as error:
            self._log_call(request, attempt, started, response.status_code, error=error.reason)
            raise
        finally:
            await response.aclose()
        self._log_call(request, attempt, started, response.status_code)
        # A fresh Response decodes any Content-Encoding of the raw bytes exactly once.
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=bytes(raw),
            request=request,
            extensions=response.extensions,
        )

    async def _send(
        self,
        client: httpx.AsyncClient,
        request: httpx.Request,
        attempt: int,
        model: str,
        started: float,
    ) -> httpx.Response:
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            error = transport_error(exc, self.provider, model)
            self._log_call(request, attempt, started, None, error=error.reason)
            raise error from exc

    def _too_large(
        self, size: int, limit: int, model: str, response: httpx.Response
    ) -> OutputTooLarge:
        return OutputTooLarge(
            f"{self.provider} answer is larger than the {limit}-byte limit ({size} bytes or more)",
            provider=self.provider,
            model=model,
            vendor_request_id=vendor_request_id(response),
            http_status=response.status_code,
        )

    # --- streams --------------------------------------------------------------

    @asynccontextmanager
    async def open_stream(
        self,
        url_or_path: str,
        *,
        ctx: JobContext | None,
        max_bytes: int,
        method: str = "GET",
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        absolute_url_ok: bool = True,
        model: str = "",
        chunk_size: int = CHUNK_SIZE,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open a response body as an async iterator of byte chunks (at most ``chunk_size``).

        ``url_or_path`` is a vendor output URL (any host, checked by
        ``check_url`` and fetched without the API's headers) or a path on the
        API (fetched with them). Redirects are followed by hand, at most 5,
        each hop checked again. ``method="POST"`` with ``json``/``data``
        streams an API answer such as text-to-speech audio; it is retried only
        when ``idempotent`` (default: True for GET).

        Opening is retried per the policy; the body is not: when it breaks
        off, iteration raises ProviderOutputUnavailable (retryable) so the
        caller discards what it got and opens the stream again.

        Raises:
            OutputTooLarge: Content-Length or the bytes received exceed ``max_bytes``.
            ProviderOutputUnavailable: 404/410 (expired; not retryable), 403 on
                an output host, 5xx, or a body cut short (retryable).
            UnsafeOutputURL: the URL or a redirect target is refused.
            MediagenError: other API errors, classified as for ``request_json``.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        target = self._absolute(url_or_path, model)
        if (
            not absolute_url_ok
            and _is_absolute(url_or_path)
            and _origin(target) != self._api_origin
        ):
            raise UnsafeOutputURL(
                f"{self.provider}: expected a path on the API, got a URL on {target.host}",
                provider=self.provider,
                model=model,
            )
        deadline = ctx.deadline if ctx is not None else None
        attempts = itertools.count(1)

        async def attempt() -> tuple[httpx.Response, float]:
            return await self._open(
                target,
                method,
                json,
                data,
                params,
                headers,
                next(attempts),
                model,
                deadline,
                max_bytes,
            )

        response, started = await self.retry.run(
            attempt,
            deadline=deadline,
            on_retry=self._log_retry(method, target),
            retry_if=None if idempotent else _never_sent,
        )
        try:
            yield self._iter_body(response, max_bytes, chunk_size, model, started)
        finally:
            await response.aclose()

    async def post_file(
        self,
        url: str,
        *,
        fields: Mapping[str, str],
        file_field: str,
        filename: str,
        content_type: str,
        size: int,
        open_file: Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]],
        ctx: JobContext | None,
        model: str = "",
    ) -> httpx.Response:
        """POST a multipart form whose file part is streamed, e.g. to a presigned upload URL.

        The form is ``fields`` (in order) then the file, sent with a
        Content-Length (presigned S3 POSTs refuse chunked bodies) and read
        from ``open_file()`` chunk by chunk, never whole in memory. A URL off
        the API origin is checked like an output URL and gets none of the
        API's headers. Retried per the policy (the file is opened again); an
        error status is ProviderUnavailable (5xx, retryable) or
        ProviderInvalidRequest (4xx).
        """
        target = self._absolute(url, model)
        on_api = _origin(target) == self._api_origin
        boundary = f"mediagen-{os.urandom(12).hex()}"
        preamble = "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_form_quote(k)}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        )
        preamble += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_form_quote(file_field)}"; '
            f'filename="{_form_quote(filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        head, tail = preamble.encode("utf-8"), f"\r\n--{boundary}--\r\n".encode("ascii")
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
        deadline = ctx.deadline if ctx is not None else None
        attempts = itertools.count(1)
        provider = self.provider

        async def body() -> AsyncIterator[bytes]:
            yield head
            sent = 0
            async with open_file() as chunks:
                async for chunk in chunks:
                    sent += len(chunk)
                    if sent > size:
                        break
                    yield chunk
            if sent != size:
                raise ProviderBadResponse(
                    f"{provider}: the file to upload has {sent} bytes, {size} were announced",
                    provider=provider,
                    model=model,
                    retryable=False,
                )
            yield tail

        async def attempt() -> httpx.Response:
            number = next(attempts)
            request = await self._build_stream_request(
                target, "POST", None, None, None, headers, on_api, model, deadline, number, content=body()
            )
            client = self._client if on_api else self._download_client()
            started = time.perf_counter()
            response = await self._send(client, request, number, model, started)
            try:
                read = await _read_error_body(response)
            finally:
                await response.aclose()
            self._log_call(request, number, started, response.status_code)
            status = response.status_code
            if status < 300:
                return read
            common: dict[str, Any] = {
                "provider": provider,
                "model": model,
                "vendor_request_id": vendor_request_id(read),
                "http_status": status,
            }
            text = _truncate(_body_text(read))
            if status >= 500 or status == 429:
                raise ProviderUnavailable(
                    f"{provider} upload failed (HTTP {status}): {text}",
                    retry_after=retry_after_from_headers(read.headers),
                    **common,
                )
            raise ProviderInvalidRequest(f"{provider} upload refused (HTTP {status}): {text}", **common)

        return await self.retry.run(attempt, deadline=deadline, on_retry=self._log_retry("POST", target))

    def _absolute(self, url_or_path: str, model: str) -> httpx.URL:
        """A path on the API, or an absolute URL, as an absolute URL."""
        try:
            url = httpx.URL(url_or_path)
        except httpx.InvalidURL as exc:
            raise ProviderBadResponse(
                f"{self.provider} gave an unusable URL ({exc})",
                provider=self.provider,
                model=model,
                retryable=False,
            ) from None
        if url.is_absolute_url or url.host:
            return url if url.scheme else url.copy_with(scheme=self._client.base_url.scheme)
        # Same merge as httpx does for relative request URLs: the base path is a prefix.
        base = self._client.base_url
        return base.copy_with(raw_path=base.raw_path + url.raw_path.lstrip(b"/"))

    async def _open(
        self,
        url: httpx.URL,
        method: str,
        json: Any,
        data: Mapping[str, Any] | None,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        attempt: int,
        model: str,
        deadline: float | None,
        max_bytes: int,
    ) -> tuple[httpx.Response, float]:
        """One attempt at opening a stream: check, send, follow redirects, judge the status."""
        started = time.perf_counter()
        hop_headers = dict(headers or {})
        for _hop in range(MAX_REDIRECTS + 1):
            on_api = _origin(url) == self._api_origin
            request = await self._build_stream_request(
                url, method, json, data, params, hop_headers, on_api, model, deadline, attempt
            )
            client = self._client if on_api else self._download_client()
            response = await self._send(client, request, attempt, model, started)
            location = response.headers.get("location")
            if response.status_code in _REDIRECT_STATUSES and location:
                await response.aclose()
                self._log_call(request, attempt, started, response.status_code)
                if method != "GET":
                    raise ProviderBadResponse(
                        f"{self.provider} redirected a {method} (HTTP {response.status_code})",
                        provider=self.provider,
                        model=model,
                        http_status=response.status_code,
                        retryable=False,
                    )
                try:
                    next_url = url.join(location)
                except httpx.InvalidURL:
                    raise ProviderBadResponse(
                        f"{self.provider} redirected to an unusable URL",
                        provider=self.provider,
                        model=model,
                        http_status=response.status_code,
                        retryable=False,
                    ) from None
                if _origin(next_url) != _origin(url):
                    hop_headers = {}  # headers meant for one origin stay there
                url, params = next_url, None
                continue
            error = await self._stream_error(response, on_api, method, model)
            if error is None:
                declared = _decoded_length(response)
                if declared is not None and declared > max_bytes:
                    error = self._too_large(declared, max_bytes, model, response)
            if error is not None:
                await response.aclose()
                self._log_call(request, attempt, started, response.status_code, error=error.reason)
                raise error
            self._log_call(request, attempt, started, response.status_code, stream=True)
            return response, started
        raise ProviderOutputUnavailable(
            f"{self.provider}: more than {MAX_REDIRECTS} redirects for an output",
            provider=self.provider,
            model=model,
            retryable=False,
        )

    async def _build_stream_request(
        self,
        url: httpx.URL,
        method: str,
        json: Any,
        data: Mapping[str, Any] | None,
        params: Mapping[str, Any] | None,
        headers: dict[str, str],
        on_api: bool,
        model: str,
        deadline: float | None,
        attempt: int,
        content: Any = None,
    ) -> httpx.Request:
        timeout = self._attempt_timeout(deadline)
        body: dict[str, Any] = {"json": json, "data": data} if method not in ("GET", "HEAD") else {}
        if content is not None:
            body = {"content": content}
        if on_api:
            # The configured API origin is trusted (operator's choice, or a test server).
            return self._client.build_request(
                method, url, params=params, headers=headers, timeout=timeout, **body
            )
        try:
            addresses = await check_url(
                url,
                self.url_policy.allow_private,
                allow_http=self.url_policy.allow_http,
                resolver=self._resolver,
            )
        except ProviderError as error:
            raise _stamp(error, self.provider, model, None, None) from None
        if not addresses or _is_ip_literal(url.host):
            return self._download_client().build_request(
                method, url, params=params, headers=headers, timeout=timeout, **body
            )
        # Connect to the address we checked, not to a second DNS answer (rebinding):
        # the URL names the IP, Host and TLS SNI keep the name so certificates still verify.
        # Each retry takes the next address, so one dead address does not fail the fetch.
        hostname = url.raw_host.decode("ascii")
        pinned = url.copy_with(host=addresses[(attempt - 1) % len(addresses)])
        return self._download_client().build_request(
            method,
            pinned,
            params=params,
            headers={**headers, "Host": url.netloc.decode("ascii")},
            timeout=timeout,
            extensions={"sni_hostname": hostname},
            **body,
        )

    async def _stream_error(
        self, response: httpx.Response, on_api: bool, method: str, model: str
    ) -> MediagenError | None:
        status = response.status_code
        if 200 <= status < 300:
            return None
        read = await _read_error_body(response)
        _, body = _parse_json(read)
        if on_api and self.classify_hook is not None:
            hooked = self.classify_hook(read, body)
            if hooked is not None:
                return _stamp(hooked, self.provider, model, read, body)
        common: dict[str, Any] = {
            "provider": self.provider,
            "model": model,
            "vendor_request_id": vendor_request_id(read, body),
            "http_status": status,
        }
        if status < 400:
            return ProviderBadResponse(
                f"{self.provider} answered HTTP {status} without a usable redirect",
                retryable=False,
                **common,
            )
        fetching = method == "GET"
        if fetching and status in (404, 410):
            return ProviderOutputUnavailable(
                f"{self.provider} output is not available (HTTP {status}: expired or deleted)",
                retryable=False,
                **common,
            )
        if on_api or status == 429:
            return classify(read, self.provider, model, body=body)
        # An output host (CDN, bucket): its errors say nothing about our request.
        if status == 403:
            # Often an expired signature: a fresh URL from the vendor may work.
            return ProviderOutputUnavailable(
                f"{self.provider} output host refused access (HTTP 403)", retryable=True, **common
            )
        if status >= 500:
            return ProviderOutputUnavailable(
                f"{self.provider} output host answered HTTP {status}",
                retry_after=retry_after_from_headers(read.headers),
                **common,
            )
        return ProviderOutputUnavailable(
            f"{self.provider} output host answered HTTP {status}", retryable=False, **common
        )

    async def _iter_body(
        self,
        response: httpx.Response,
        max_bytes: int,
        chunk_size: int,
        model: str,
        started: float,
    ) -> AsyncIterator[bytes]:
        declared = _decoded_length(response)
        # A body already in memory (MockTransport) has no wire bytes to count.
        raw_declared = None if response.is_stream_consumed else _raw_length(response)
        received = 0
        where = _loggable(response.request.url)

        def cut_short(cause: str) -> ProviderOutputUnavailable:
            return ProviderOutputUnavailable(
                f"{self.provider} output was cut short after {response.num_bytes_downloaded} bytes"
                + (f" of {declared}" if declared is not None else "")
                + f" ({cause})",
                provider=self.provider,
                model=model,
                vendor_request_id=vendor_request_id(response),
                http_status=response.status_code,
            )

        try:
            async for chunk in response.aiter_bytes(chunk_size):
                received += len(chunk)
                if received > max_bytes:
                    raise self._too_large(received, max_bytes, model, response)
                yield chunk
        except httpx.TimeoutException as exc:
            raise cut_short("stalled: read timeout") from exc
        except httpx.HTTPError as exc:
            raise cut_short(type(exc).__name__) from exc
        # h11 already refuses a short body; this also covers transports that do not.
        if raw_declared is not None and response.num_bytes_downloaded < raw_declared:
            raise cut_short("connection closed early")
        log.info(
            "vendor_stream_done",
            provider=self.provider,
            path=where,
            bytes=received,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    # --- helpers ----------------------------------------------------------------

    def _download_client(self) -> httpx.AsyncClient:
        if self._downloads is None:
            self._downloads = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT},
                timeout=self.timeout,
                transport=_pooled_transport(self._transport, self._limits),
                follow_redirects=False,
            )
        return self._downloads

    def _attempt_timeout(self, deadline: float | None) -> httpx.Timeout:
        """The configured timeouts, shortened so that no attempt outlives the job deadline."""
        if deadline is None:
            return self.timeout
        left = deadline - self.retry.clock()
        if left <= 0:
            raise JobDeadlineExceeded(
                f"job deadline passed before the call to {self.provider}",
                metadata={"provider": self.provider},
            )

        def bounded(value: float | None) -> float:
            return left if value is None else min(value, left)

        return httpx.Timeout(
            connect=bounded(self.timeout.connect),
            read=bounded(self.timeout.read),
            write=bounded(self.timeout.write),
            pool=bounded(self.timeout.pool),
        )

    def _log_call(
        self,
        request: httpx.Request,
        attempt: int,
        started: float,
        status: int | None,
        **extra: Any,
    ) -> None:
        fields: dict[str, Any] = {
            "provider": self.provider,
            "method": request.method,
            "path": _loggable(request.url),
            "status": status,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
            "attempt": attempt,
        }
        if _origin(request.url) != self._api_origin:
            # Outputs live on other hosts (CDNs); name the host, not the pinned IP.
            fields["host"] = request.headers.get("host", request.url.host)
        log.info("vendor_call", **fields, **extra)
        metrics.vendor_call(self.provider, request.method, status, time.perf_counter() - started, extra.get("error", ""))

    def _log_retry(
        self, method: str, target: httpx.URL
    ) -> Callable[[int, MediagenError, float], None]:
        where = _loggable(target)

        def on_retry(attempt: int, error: MediagenError, delay: float) -> None:
            metrics.VENDOR_RETRIES.labels(self.provider, error.reason).inc()
            log.warning(
                "vendor_retry",
                provider=self.provider,
                method=method,
                path=where,
                attempt=attempt,
                reason=error.reason,
                delay_s=round(delay, 3),
            )

        return on_retry


def _form_quote(value: str) -> str:
    """A multipart header parameter value, quoted as browsers do (RFC 7578 4.2)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _is_absolute(url_or_path: str) -> bool:
    try:
        url = httpx.URL(url_or_path)
    except httpx.InvalidURL:
        return False
    return url.is_absolute_url or bool(url.host)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _raw_length(response: httpx.Response) -> int | None:
    """Content-Length: the bytes on the wire."""
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _decoded_length(response: httpx.Response) -> int | None:
    """The body's size once decoded, when known before reading (no Content-Encoding)."""
    if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
        return None
    return _raw_length(response)


async def _read_error_body(response: httpx.Response) -> httpx.Response:
    """An error answer's first bytes as a read response (never the whole of a huge body)."""
    if response.is_stream_consumed:  # already in memory (MockTransport)
        return response
    raw = bytearray()
    try:
        async for piece in response.aiter_raw():
            raw += piece
            if len(raw) >= MAX_ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass  # the status alone still classifies the answer
    finally:
        await response.aclose()
    headers = httpx.Headers(response.headers)
    headers.pop("content-length", None)
    if len(raw) >= MAX_ERROR_BODY_BYTES:
        headers.pop("content-encoding", None)  # a cut compressed body cannot be decoded
    return httpx.Response(
        response.status_code, headers=headers, content=bytes(raw), request=response.request
    )
