"""What Stability AI's image and (retired) video adapters share: key, base URL, client, credits.

Both speak Stability's v2beta REST API at ``https://api.stability.ai`` (or
``STABILITY_BASE_URL``) with ``Authorization: Bearer sk-...`` and multipart
bodies. Errors come as ``{"id", "name", "errors": [...]}`` with 403
``content_moderation`` for refusals; the shared classification in
``providers.http`` already reads that envelope (and a ``finish-reason:
CONTENT_FILTERED`` answer). Stability bills in credits of $0.01.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.base import usd
from providers.http import UrlPolicy, VendorHTTP, __version__, base_url_from_env
from providers.secrets import env_secret

DEFAULT_BASE_URL = "https://api.stability.ai"
#: STABILITY_API_KEY is what Stability's docs and the project's spec use;
#: STABILITY_KEY is what the older stability-sdk read.
KEY_ENV = ("STABILITY_API_KEY", "STABILITY_KEY")
NOT_CONFIGURED = "set STABILITY_API_KEY"
#: One Stability credit is $0.01 (image-and-storage.md: $10 buys 1,000 credits).
CREDIT_MICROS = usd(0.01)
CREDIT_NOTE = "Stability credits at $0.01 each"
SEED_MAX = 4294967294  # 0 (or no seed) means random


def stability_http(provider: str, settings) -> tuple[VendorHTTP, bool]:
    """(the shared-layer client for Stability's API, whether a key is set)."""
    key, _ = env_secret(*KEY_ENV)
    headers = {"stability-client-id": "mediagen", "stability-client-version": __version__}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    allow = settings.allow_private_urls
    http = VendorHTTP(
        provider,
        base_url=base_url_from_env("STABILITY", DEFAULT_BASE_URL),
        headers=headers,
        url_policy=UrlPolicy(allow_http=allow, allow_private=allow),
    )
    return http, bool(key)


def multipart(fields: Mapping[str, Any]) -> dict[str, tuple[None, str]]:
    """Plain form fields in the shape httpx sends as multipart/form-data.

    Stability refuses url-encoded forms, even for text-only calls; a field
    without a file name is sent as a plain multipart field.
    """
    return {name: (None, str(value)) for name, value in fields.items()}


