"""A fake vendor HTTP server: real HTTP on 127.0.0.1, scripted answers, recorded requests.

Vendor fakes (one per vendor) build on this harness. It runs a stdlib
``ThreadingHTTPServer`` in a daemon thread on a free port, so the code under
test goes through real sockets, real HTTP parsing and real timeouts::

    with FakeVendorServer() as server:
        server.route("POST", "/v1/image_to_video", lambda req: (200, {"id": "task-1"}))
        server.route("GET", "/v1/tasks/{id}", lambda req: {"id": req.params["id"], "status": "RUNNING"})
        server.fail_next("GET", "/v1/tasks/{id}", rate_limited(retry_after=2), times=2)

        ...   # point the adapter at server.url (e.g. RUNWAY_BASE_URL)

        (create,) = server.calls("POST", "/v1/image_to_video")
        assert create.headers["authorization"] == "Bearer key_test"
        assert create.json()["model"] == "gen4_turbo"

Routes
    ``route(method, pattern, answer)``: ``pattern`` is a path with ``{name}``
    parameters (``{name:path}`` also matches slashes); ``answer`` is a handler
    ``FakeRequest -> answer`` or a fixed answer. An answer is a ``Reply``, a
    dict or list (200 JSON), bytes or str (200), or a tuple ``(status, body)``
    / ``(status, body, headers)``. The route registered last wins, so a test
    can override a fake's default.

Faults
    ``fail_next(method, pattern, reply, times=1)``: the next ``times`` calls
    matching the pattern get ``reply`` instead of the route's answer.
    ``script(method, pattern, [reply, ...])``: one reply per call, in order.
    Helpers build the usual faults: ``error_reply``, ``rate_limited``,
    ``server_error``, ``slow``, ``dropped``, ``truncated``, ``malformed_json``,
    ``large_body``.

Recording
    ``server.requests`` holds every request (method, path, query, headers with
    lower-case names, body, params, arrival time); ``calls(method, pattern)``
    filters them. A handler that raises answers 500 and lands in ``server.errors``.

Fixture
    ``fake_vendor`` yields a started server and stops it after the test; make
    it available with ``pytest_plugins = ["tests.fakes.server"]`` in a conftest,
    or wrap ``FakeVendorServer()`` in a fixture of your own.

Point the code under test at ``server.url`` and set
``MEDIAGEN_ALLOW_PRIVATE_URLS=1`` (or pass ``UrlPolicy(allow_http=True,
allow_private=True)``) so output URLs on 127.0.0.1 may be fetched.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

JsonBody = dict[str, Any] | list[Any]


@dataclass
class FakeRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    #: Header names are lower-case.
    headers: dict[str, str]
    body: bytes
    #: Values of the ``{name}`` parameters of the matched route pattern.
    params: dict[str, str] = field(default_factory=dict)
    #: ``time.monotonic()`` at arrival.
    at: float = 0.0
    #: The client's port: one per connection, so tests can count connections.
    client_port: int = 0

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def arg(self, name: str, default: str | None = None) -> str | None:
        """First value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Reply:
    """What the fake answers. Every field has a plain default: a 200 with no body."""

    status: int = 200
    #: dict/list are sent as JSON (with a JSON content type unless headers say otherwise).
    body: bytes | str | JsonBody | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: A streamed body instead of ``body``; must be re-iterable if the reply is served twice.
    chunks: Iterable[bytes] | None = None
    #: Declared Content-Length. Default: the real size for ``body``; chunked encoding for ``chunks``.
    content_length: int | None = None
    #: Close the connection after this many body bytes (a body cut short).
    cut_after: int | None = None
    #: Seconds to wait before answering (a slow vendor).
    delay: float = 0.0
    #: Seconds to wait between chunks of a streamed body.
    chunk_delay: float = 0.0
    #: Close the connection without answering at all.
    drop: bool = False


Answer = Reply | JsonBody | bytes | str | tuple
Handler = Callable[[FakeRequest], Answer]


# --- fault and body helpers -----------------------------------------------------------


def json_reply(body: JsonBody, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, body=body, headers=dict(headers or {}))


def error_reply(
    status: int, body: JsonBody | str | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """An error status with the vendor's error body."""
    return Reply(status=status, body=body, headers=dict(headers or {}))


def rate_limited(
    retry_after: float | str | None = None,
    *,
    retry_after_ms: float | None = None,
    body: JsonBody | None = None,
    status: int = 429,
) -> Reply:
    """A 429, with ``Retry-After`` (seconds, or an HTTP-date string) and/or ``retry-after-ms`` when given."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    return Reply(
        status=status, body=body if body is not None else {"error": "rate limited"}, headers=headers
    )


def server_error(status: int = 503, body: JsonBody | str | None = None) -> Reply:
    return Reply(status=status, body=body if body is not None else {"error": "service unavailable"})


def slow(seconds: float, reply: Reply | None = None) -> Reply:
    """``reply`` (default: 200 ``{}``) after ``seconds``: longer than a client timeout makes it time out."""
    return replace(reply or Reply(body={}), delay=seconds)


def dropped() -> Reply:
    """Accept the request, then close the connection without a status line."""
    return Reply(drop=True)


def truncated(body: bytes, sent: int, headers: dict[str, str] | None = None) -> Reply:
    """Declare ``len(body)`` bytes, send the first ``sent``, then close."""
    return Reply(body=body, content_length=len(body), cut_after=sent, headers=dict(headers or {}))


def malformed_json(status: int = 200) -> Reply:
    """A JSON content type with a body that is not JSON (cut in the middle of an object)."""
    return Reply(
        status=status,
        body=b'{"id": "task-1", "status": ',
        headers={"Content-Type": "application/json"},
    )


_PATTERN_PERIOD = 251  # prime, so chunk boundaries never line up with the pattern


def pattern_bytes(offset: int, length: int) -> bytes:
    """Bytes ``offset .. offset+length`` of the deterministic test pattern (byte i is i % 251)."""
    start = offset % _PATTERN_PERIOD
    block = bytes(range(_PATTERN_PERIOD)) * (length // _PATTERN_PERIOD + 2)
    return block[start : start + length]


class PatternStream:
    """``size`` bytes of the test pattern in ``chunk_size`` pieces, generated on the fly (re-iterable)."""

    def __init__(self, size: int, chunk_size: int = 64 * 1024) -> None:
        self.size = size
        self.chunk_size = chunk_size

    def __iter__(self) -> Iterator[bytes]:
        for offset in range(0, self.size, self.chunk_size):
            yield pattern_bytes(offset, min(self.chunk_size, self.size - offset))

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self:
            digest.update(chunk)
        return digest.hexdigest()


def large_body(
    size: int,
    *,
    content_type: str = "application/octet-stream",
    declare_length: bool = True,
    cut_after: int | None = None,
    chunk_size: int = 64 * 1024,
) -> Reply:
    """A streamed ``size``-byte body (never held in memory); chunked when ``declare_length`` is False.

    ``cut_after`` closes the connection after that many bytes, mid-body.
    """
    return Reply(
        chunks=PatternStream(size, chunk_size),
        headers={"Content-Type": content_type},
        content_length=size if declare_length else None,
        cut_after=cut_after,
    )


def http_date(epoch_seconds: float) -> str:
    """An RFC 9110 HTTP-date, for ``Retry-After`` and ``Date`` headers."""
    return email.utils.formatdate(epoch_seconds, usegmt=True)


# --- the server -----------------------------------------------------------------------


def fetch_input(url: str, *, allow_http: bool = False, timeout: float = 10.0, max_bytes: int = 64 * 1024 * 1024) -> bytes:
    """Fetch an input URL the way a vendor does (for fakes that take images by URL).

    Real vendors fetch https only; tests whose storage emulator serves plain
    http on 127.0.0.1 (moto's presigned URLs) pass ``allow_http``. Raises
    ValueError when the URL is refused or cannot be fetched.
    """
    import urllib.error
    import urllib.request

    if not url.startswith("https://") and not (allow_http and url.startswith("http://")):
        raise ValueError(f"not an https URL: {url[:60]}")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "fake-vendor/1"}), timeout=timeout) as answer:
            data = answer.read(max_bytes + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise ValueError(f"cannot fetch {url[:60]}: {exc}") from None
    if len(data) > max_bytes:
        raise ValueError("input too large")
    return data


def _compile(pattern: str) -> re.Pattern[str]:
    regex = ""
    for literal, name, kind in re.findall(r"([^{]*)(?:\{(\w+)(?::(\w+))?\})?", pattern):
        regex += re.escape(literal)
        if name:
            regex += f"(?P<{name}>.+)" if kind == "path" else f"(?P<{name}>[^/]+)"
    return re.compile(regex + r"\Z")


@dataclass
class _Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    answer: Handler | Answer


@dataclass
class _Fault:
    method: str
    regex: re.Pattern[str]
    reply: Reply
    remaining: int


class FakeVendorServer:
    """A real HTTP server on 127.0.0.1 with routes, faults and a request log. See the module doc."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        # 0: a free port; a fixed one lets a test stand a server up where a URL already points.
        self._port = port
        self._lock = threading.Lock()
        self._routes: list[_Route] = []
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[FakeRequest] = []
        #: Exceptions raised by route handlers (each was answered with a 500).
        self.errors: list[BaseException] = []

    # --- lifecycle ---

    def start(self) -> FakeVendorServer:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = ThreadingHTTPServer((self._host, self._port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes slow answers so their threads end
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeVendorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake server is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43117`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    # --- configuration ---

    def route(self, method: str, pattern: str, answer: Handler | Answer) -> None:
        with self._lock:
            self._routes.append(_Route(method.upper(), pattern, _compile(pattern), answer))

    def fail_next(self, method: str, pattern: str, reply: Reply, times: int = 1) -> None:
        """The next ``times`` calls matching ``method`` and ``pattern`` get ``reply``."""
        with self._lock:
            self._faults.append(_Fault(method.upper(), _compile(pattern), reply, times))

    def script(self, method: str, pattern: str, replies: Iterable[Reply]) -> None:
        """The next calls get ``replies`` one by one, then the route answers again."""
        for reply in replies:
            self.fail_next(method, pattern, reply, 1)

    def reset(self) -> None:
        """Forget routes, faults and recorded requests."""
        with self._lock:
            self._routes.clear()
            self._faults.clear()
            self.requests.clear()
            self.errors.clear()

    def calls(self, method: str | None = None, pattern: str | None = None) -> list[FakeRequest]:
        """Recorded requests, optionally only those matching ``method`` and ``pattern``."""
        regex = _compile(pattern) if pattern is not None else None
        with self._lock:
            recorded = list(self.requests)
        return [
            r
            for r in recorded
            if (method is None or r.method == method.upper())
            and (regex is None or regex.match(r.path))
        ]

    # --- serving (called on the server's threads) ---

    def _answer_for(self, request: FakeRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            for fault in self._faults:
                if fault.method == request.method and fault.regex.match(request.path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault.reply
            route = next(
                (
                    r
                    for r in reversed(self._routes)
                    if r.method == request.method and r.regex.match(request.path)
                ),
                None,
            )
        if route is None:
            return Reply(
                status=404, body={"error": f"no fake route for {request.method} {request.path}"}
            )
        match = route.regex.match(request.path)
        request.params = match.groupdict() if match else {}
        try:
            answer = route.answer(request) if callable(route.answer) else route.answer
            return _to_reply(answer)
        except Exception as exc:  # a bug in the test's handler: make it visible, keep serving
            with self._lock:
                self.errors.append(exc)
            return Reply(
                status=500, body={"error": f"fake handler raised {type(exc).__name__}: {exc}"}
            )


def _to_reply(answer: Answer) -> Reply:
    if isinstance(answer, Reply):
        return answer
    if isinstance(answer, tuple):
        status, body, *rest = answer
        return Reply(status=status, body=body, headers=dict(rest[0]) if rest else {})
    if isinstance(answer, (dict, list, bytes, str)):
        return Reply(body=answer)
    raise TypeError(
        f"a fake route answered {type(answer).__name__}; expected Reply, dict, list, bytes, str or tuple"
    )


class _Cut(Exception):
    """The reply asked to close the connection mid-body."""


def _make_handler(server: FakeVendorServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and Content-Length, as vendors speak
        disable_nagle_algorithm = (
            True  # headers and body go out in separate writes: no 40 ms stalls
        )
        timeout = 30  # idle keep-alive connections do not hold a thread forever

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # quiet test output

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            request = FakeRequest(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self._read_body(),
                at=time.monotonic(),
                client_port=self.client_address[1],
            )
            reply = server._answer_for(request)
            try:
                self._send(reply)
            except (_Cut, BrokenPipeError, ConnectionResetError, TimeoutError):
                self._close_now()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return bytes(body)
                    body += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, reply: Reply) -> None:
            if reply.delay and server._stopping.wait(reply.delay):
                raise _Cut  # the server is stopping: just hang up
            if reply.drop:
                raise _Cut
            headers = {name.lower(): (name, value) for name, value in reply.headers.items()}
            body = reply.body
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers.setdefault("content-type", ("Content-Type", "application/json"))
            elif isinstance(body, str):
                body = body.encode()
                headers.setdefault("content-type", ("Content-Type", "text/plain; charset=utf-8"))
            body = body or b""

            self.send_response_only(reply.status)
            if "date" not in headers:
                self.send_header("Date", self.date_time_string())
            for name, value in headers.values():
                if name.lower() not in ("content-length", "transfer-encoding"):
                    self.send_header(name, value)
            chunked = reply.chunks is not None and reply.content_length is None
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                declared = reply.content_length if reply.content_length is not None else len(body)
                self.send_header("Content-Length", str(declared))
            self.end_headers()
            if self.command == "HEAD":
                return

            pieces = reply.chunks if reply.chunks is not None else [body]
            sent = 0
            for piece in pieces:
                if reply.cut_after is not None and sent + len(piece) >= reply.cut_after:
                    piece = piece[: reply.cut_after - sent]
                    self._write(piece, chunked, final=False)
                    self.wfile.flush()
                    raise _Cut
                self._write(piece, chunked, final=False)
                sent += len(piece)
                if reply.chunk_delay and server._stopping.wait(reply.chunk_delay):
                    raise _Cut
            if chunked:
                self._write(b"", chunked, final=True)
            self.wfile.flush()
            if reply.content_length is not None and reply.content_length != sent:
                raise _Cut  # declared more than there was: the client must see it cut

        def _write(self, piece: bytes, chunked: bool, *, final: bool) -> None:
            if chunked:
                if final:
                    self.wfile.write(b"0\r\n\r\n")
                elif piece:
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            elif piece:
                self.wfile.write(piece)

        def _close_now(self) -> None:
            self.close_connection = True
            try:
                self.wfile.flush()
            except OSError:
                pass
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return _Handler


@pytest.fixture
def fake_vendor() -> Iterator[FakeVendorServer]:
    """A started ``FakeVendorServer``, stopped after the test (import it into a test module or conftest)."""
    with FakeVendorServer() as server:
        yield server
