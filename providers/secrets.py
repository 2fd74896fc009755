"""Known secret values, so that nothing we print or return can carry one.

Every credential read from the environment or configuration is registered here;
``redact`` replaces each occurrence with ``[REDACTED]``. Logs, error messages,
job fields and the catalog all pass through it.
"""

from __future__ import annotations

import os
import threading

_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words
_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()


def register(value: str | None) -> str | None:
    """Remember ``value`` as secret and return it unchanged."""
    global _secrets
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets = _secrets | {value}
    return value


def env_secret(*names: str) -> tuple[str | None, str]:
    """First set environment variable among ``names``: (value, name it came from)."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return register(value.strip()), name
    return None, names[0] if names else ""


def redact(text: str) -> str:
    if not text:
        return text
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return text
