"""Verify mediagen's webhook calls (Standard Webhooks signatures).

    from clients.webhooks import verify_webhook

    event = verify_webhook(request_body, request_headers, "whsec_...")
    if event["type"] == "job.succeeded":
        job = event["data"]          # the Job in proto3 JSON

Deduplicate on ``headers["webhook-id"]``: retries of one event carry the same id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """The call is not a genuine, fresh mediagen webhook."""


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """Check the signature and timestamp of a webhook call and return its JSON body.

    Raises WebhookVerificationError when a header is missing, the timestamp is
    more than ``tolerance`` seconds away from now (replays), or no signature
    matches.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        event_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook-id/timestamp/signature headers") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook timestamp is too old or too far in the future")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    for signature in signatures:
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return json.loads(body)
    raise WebhookVerificationError("no webhook signature matches")
