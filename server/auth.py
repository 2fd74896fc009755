"""Who is calling: bearer tokens mapped to tenants, and TLS credentials.

With no tokens configured, authentication is off and every caller is the empty
tenant. With tokens, every RPC except health checking needs
``authorization: Bearer <token>`` metadata; the token's tenant is put in a
context variable for the handler, and a tenant only ever sees its own jobs.
Tokens are compared by their SHA-256, never logged, and registered as secrets.
"""

from __future__ import annotations

import contextvars
import hashlib
from typing import Any

import grpc
from grpc_status import rpc_status

from providers.errors import Unauthenticated
from providers.secrets import register

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("mediagen_tenant", default="")

# Health checks stay open so load balancers and orchestrators can probe.
OPEN_SERVICES = ("/grpc.health.v1.Health/",)
_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def parse_tokens(spec: str) -> dict[str, str]:
    """``"tenant-a:token1,tenant-b:token2"`` → {sha256(token): tenant}."""
    tokens: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        tenant, sep, token = item.partition(":")
        if not sep or not tenant or not token:
            raise ValueError("auth_tokens: each entry must be tenant:token")
        if not set(tenant) <= _TENANT_CHARS:
            raise ValueError("auth_tokens: tenant names use letters, digits, '_', '-' and '.' only")
        register(token)
        tokens[_digest(token)] = tenant
    return tokens


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _bearer(metadata) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


class BearerTokens:
    """The configured tokens: who a call's ``authorization`` metadata says it is."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    def is_open(self, method_path: str) -> bool:
        return method_path.startswith(OPEN_SERVICES)

    def admit(self, metadata: Any) -> tuple[str, Any]:
        """(tenant, None) for a valid token, else ("", the UNAUTHENTICATED status to abort with)."""
        token = _bearer(metadata)
        tenant = self._tokens.get(_digest(token)) if token else None
        if tenant is not None:
            return tenant, None
        reason = "a valid bearer token is required" if not token else "the bearer token is not valid"
        return "", rpc_status.to_status(Unauthenticated(reason, reason="UNAUTHENTICATED").to_status())


def server_credentials(cert_file: str, key_file: str, client_ca_file: str = "") -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, clients must present a certificate it signed (mTLS)."""
    with open(key_file, "rb") as f:
        key = f.read()
    with open(cert_file, "rb") as f:
        cert = f.read()
    ca = None
    if client_ca_file:
        with open(client_ca_file, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
