"""The vendor connection pool and its asyncio network backend, over real sockets (TLS included)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from providers.http import _PooledTransport
from tests.helpers import certificate

LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for "localhost", client context trusting its CA)."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("netio test CA", ca_key, ca=True)
    (folder / "cert.pem").write_bytes(certificate("localhost", key, ca, ca_key).public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


class Vendor:
    """An HTTP/1.1 server that answers every request with ``{"n": <request number>}``."""

    def __init__(self, *, close_after_each: bool = False, delay: float = 0.0) -> None:
        self.connections = 0
        self.requests = 0
        self.close_after_each = close_after_each
        self.delay = delay

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                await asyncio.sleep(self.delay)
                body = b'{"n": %d}' % self.requests
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                if self.close_after_each:  # an idle keep-alive connection the vendor drops
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _serve(vendor: Vendor, context: ssl.SSLContext | None) -> AsyncIterator[int]:
    server = await asyncio.start_server(vendor.handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_https_calls_reuse_one_verified_connection(tls):
    server_context, client_context = tls
    vendor = Vendor()
    async for port in _serve(vendor, server_context):
        async with httpx.AsyncClient(transport=_PooledTransport(LIMITS, client_context)) as client:
            # "localhost" is what the certificate names; it resolves to 127.0.0.1.
            answers = [(await client.get(f"https://localhost:{port}/v1/tasks/t")).json() for _ in range(3)]
        assert answers == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert vendor.connections == 1


async def test_a_certificate_that_does_not_verify_is_refused(tls):
    server_context, _ = tls
    async for port in _serve(Vendor(), server_context):
        async with httpx.AsyncClient(transport=_PooledTransport(LIMITS, ssl.create_default_context())) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://localhost:{port}/")


async def test_a_connection_the_vendor_dropped_while_idle_is_not_reused():
    vendor = Vendor(close_after_each=True)
    async for port in _serve(vendor, None):
        async with httpx.AsyncClient(transport=_PooledTransport(LIMITS)) as client:
            first = (await client.get(f"http://127.0.0.1:{port}/")).json()
            await asyncio.sleep(0.05)  # the vendor's close reaches us while the connection is idle
            second = (await client.get(f"http://127.0.0.1:{port}/")).json()
        assert (first, second) == ({"n": 1}, {"n": 2})
        assert vendor.connections == 2


async def test_timeouts_map_to_httpx_timeouts():
    async for port in _serve(Vendor(delay=1.0), None):
        async with httpx.AsyncClient(transport=_PooledTransport(LIMITS), timeout=httpx.Timeout(5.0, read=0.1)) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"http://127.0.0.1:{port}/")
    async with httpx.AsyncClient(transport=_PooledTransport(LIMITS)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/")  # nothing listens on the discard port
