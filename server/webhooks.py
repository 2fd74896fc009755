"""Signed webhooks for job events (the Standard Webhooks scheme).

- What to send is decided when a job changes (``WebhookPolicy.items_for``) and
  written to the outbox in the same store transaction as the change, so a
  crash can neither lose an event nor send one that did not happen.
- Each logical event has one id (``evt_<job>_<sequence>``), kept on every
  retry: receivers deduplicate on the ``webhook-id`` header.
- ``WebhookSender`` sends due events in the background, each in its own task
  with a short timeout, so a slow receiver holds up nobody else. 2xx is
  delivered; 429 (honouring Retry-After), 5xx, timeouts and connection errors
  are retried with backoff for ``webhook_retry_for`` seconds; any other 4xx stops.
- Signature: ``webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``
  with the tenant's ``whsec_…`` secret (base64 key after the prefix).
- Targets pass the same SSRF rules as vendor output URLs; redirects are not
  followed; at most ``_MAX_RESPONSE_BYTES`` of an answer is read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import httpx
import structlog
from google.protobuf import json_format

from mediagen.v1 import common_pb2
from providers.errors import FailedPrecondition, InvalidArgument, MediagenError
from providers.http import USER_AGENT, check_url
from providers.retry import RetryPolicy, retry_after_from_headers
from providers.secrets import register
from server.config import Settings
from server.store import JobRecord, JobStore, WebhookItem

log = structlog.get_logger("mediagen.webhooks")

_MAX_RESPONSE_BYTES = 1024
_SEND_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_MAX_IN_FLIGHT = 64
_DEFAULT_PROGRESS_INTERVAL = 10.0
_TERMINAL_EVENTS = (
    common_pb2.WEBHOOK_EVENT_TYPE_SUCCEEDED,
    common_pb2.WEBHOOK_EVENT_TYPE_FAILED,
    common_pb2.WEBHOOK_EVENT_TYPE_CANCELLED,
)
_END_EVENT = {
    common_pb2.JOB_STATE_SUCCEEDED: common_pb2.WEBHOOK_EVENT_TYPE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED: common_pb2.WEBHOOK_EVENT_TYPE_FAILED,
    common_pb2.JOB_STATE_CANCELLED: common_pb2.WEBHOOK_EVENT_TYPE_CANCELLED,
}
# Backoff between delivery attempts: 1 s, 2 s, 4 s ... capped at 10 minutes.
_DELIVERY_BACKOFF = RetryPolicy(initial=1.0, maximum=600.0, max_retry_after=3600.0)


def event_type_name(event_type: int) -> str:
    return "job." + common_pb2.WebhookEventType.Name(event_type).removeprefix("WEBHOOK_EVENT_TYPE_").lower()


def _parse_pairs(spec: str, setting: str, sep: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        tenant, found, value = item.partition(sep)
        if not found or not tenant or not value:
            raise ValueError(f"{setting}: each entry must be tenant{sep}value (tenant * for everyone)")
        pairs[tenant.strip()] = value.strip()
    return pairs


def parse_secrets(spec: str) -> dict[str, bytes]:
    """``"acme:whsec_<base64>,*:whsec_<base64>"`` → tenant → key bytes."""
    keys = {}
    for tenant, secret in _parse_pairs(spec, "webhook_secrets", ":").items():
        register(secret)
        try:
            keys[tenant] = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ValueError("webhook_secrets: a secret is whsec_ followed by base64") from None
        if len(keys[tenant]) < 16:
            raise ValueError("webhook_secrets: use at least 16 random bytes per secret")
    return keys


def sign(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookPolicy:
    """Which webhook events a job change produces, from the job's webhook settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secrets = parse_secrets(settings.webhook_secrets)
        self.defaults = _parse_pairs(settings.webhook_defaults, "webhook_defaults", "=")

    def secret_for(self, tenant: str) -> bytes | None:
        return self.secrets.get(tenant) or self.secrets.get("*")

    async def config_for(self, request, tenant: str) -> dict | None:
        """The webhook settings to keep with a new job, checked; None when it has none."""
        if request.HasField("webhook"):
            hook = request.webhook
            url, events = hook.url, list(hook.events)
            interval = hook.progress_interval.ToNanoseconds() / 1e9 if hook.HasField("progress_interval") else 0.0
        else:
            url = self.defaults.get(tenant) or self.defaults.get("*")
            if not url:
                return None
            events, interval = [], 0.0
        if not url:
            raise InvalidArgument.field("webhook.url", "is required", "REQUIRED")
        for value in events:
            if value not in common_pb2.WebhookEventType.values() or value == 0:
                raise InvalidArgument.field("webhook.events", "unknown event type", "UNSUPPORTED_VALUE")
        if interval < 0:
            raise InvalidArgument.field("webhook.progress_interval", "must not be negative", "OUT_OF_RANGE")
        try:
            await check_url(url, allow_private=self.settings.allow_private_urls)
        except MediagenError as err:
            raise InvalidArgument.field("webhook.url", err.message, "WEBHOOK_URL_REJECTED") from None
        if self.secret_for(tenant) is None:
            raise FailedPrecondition(
                "no webhook secret is configured for this tenant (webhook_secrets)",
                reason="WEBHOOK_SECRET_NOT_CONFIGURED",
            )
        return {
            "url": url,
            "events": sorted(set(events)) or list(_TERMINAL_EVENTS),
            "progress_interval": interval or _DEFAULT_PROGRESS_INTERVAL,
        }

    def items_for(self, record: JobRecord, event: common_pb2.JobEvent) -> list[WebhookItem]:
        config = record.extra.get("webhook")
        if not config:
            return []
        job = record.job
        wanted = None
        if event.type == common_pb2.JOB_EVENT_TYPE_ENDED:
            wanted = _END_EVENT.get(job.state)
        elif event.type == common_pb2.JOB_EVENT_TYPE_STATE_CHANGED and job.state == common_pb2.JOB_STATE_RUNNING:
            if not record.extra.get("webhook_started"):
                record.extra["webhook_started"] = True
                wanted = common_pb2.WEBHOOK_EVENT_TYPE_STARTED
        elif event.type == common_pb2.JOB_EVENT_TYPE_PROGRESS:
            now = time.time()
            if now - record.extra.get("webhook_progress_at", 0.0) >= config["progress_interval"]:
                if common_pb2.WEBHOOK_EVENT_TYPE_PROGRESS in config["events"]:
                    record.extra["webhook_progress_at"] = now
                wanted = common_pb2.WEBHOOK_EVENT_TYPE_PROGRESS
        if wanted is None or wanted not in config["events"]:
            return []
        now_ns = time.time_ns()
        body = json.dumps(
            {
                "type": event_type_name(wanted),
                "timestamp": event.event_time.ToJsonString(),
                "data": json_format.MessageToDict(job),
            },
            separators=(",", ":"),
        ).encode()
        return [
            WebhookItem(
                event_id=f"evt_{job.id.removeprefix('job_')}_{event.sequence}",
                job_id=job.id,
                tenant=job.tenant,
                url=config["url"],
                type=wanted,
                body=body,
                create_ns=now_ns,
                next_ns=now_ns,
            )
        ]


def delivery_message(item: WebhookItem) -> common_pb2.WebhookDelivery:
    delivery = common_pb2.WebhookDelivery(
        event_id=item.event_id,
        type=item.type,
        state=item.state,
        attempts=item.attempts,
        last_status_code=item.last_status,
        last_error=item.last_error,
    )
    delivery.create_time.FromNanoseconds(item.create_ns)
    if item.state == common_pb2.WEBHOOK_DELIVERY_STATE_PENDING:
        delivery.next_attempt_time.FromNanoseconds(item.next_ns)
    if item.delivered_ns:
        delivery.delivered_time.FromNanoseconds(item.delivered_ns)
    return delivery


class WebhookSender:
    """Background delivery of due outbox events."""

    def __init__(self, store: JobStore, policy: WebhookPolicy, settings: Settings, poll_interval: float = 1.0) -> None:
        self.store = store
        self.policy = policy
        self.settings = settings
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._client = httpx.AsyncClient(follow_redirects=False, timeout=_SEND_TIMEOUT, headers={"user-agent": USER_AGENT})
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook sender")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._in_flight.values()):
            task.cancel()
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                # A shared store claims what it returns for this replica: ask only for what fits.
                limit = _MAX_IN_FLIGHT - len(self._in_flight) if self.store.shared else _MAX_IN_FLIGHT
                for item in await self.store.due_webhooks(time.time_ns(), limit=limit):
                    if item.event_id in self._in_flight or len(self._in_flight) >= _MAX_IN_FLIGHT:
                        continue
                    task = asyncio.get_running_loop().create_task(self._deliver(item))
                    self._in_flight[item.event_id] = task

                    def forget(_: asyncio.Task[None], eid: str = item.event_id) -> None:
                        self._in_flight.pop(eid, None)

                    task.add_done_callback(forget)
            except Exception:  # the outbox is read again at the next tick
                log.exception("webhook outbox read failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass

    async def _deliver(self, item: WebhookItem) -> None:
        item.attempts += 1
        status, error, retry_after = await self._send(item)
        item.last_status, item.last_error = status, error
        now_ns = time.time_ns()
        if 200 <= status < 300:
            item.state = common_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED
            item.delivered_ns = now_ns
        elif status and status != 429 and status < 500 or error.startswith("refused"):
            item.state = common_pb2.WEBHOOK_DELIVERY_STATE_FAILED
        else:
            delay = retry_after if retry_after is not None else _DELIVERY_BACKOFF.backoff(item.attempts)
            delay = min(max(delay, 0.2), _DELIVERY_BACKOFF.max_retry_after)
            if (now_ns + delay * 1e9 - item.create_ns) / 1e9 > self.settings.webhook_retry_for:
                item.state = common_pb2.WEBHOOK_DELIVERY_STATE_FAILED
            else:
                item.next_ns = now_ns + int(delay * 1e9)
        await self.store.update_webhook(item)
        log.info(
            "webhook_delivery",
            event_id=item.event_id,
            job_id=item.job_id,
            status=status,
            attempt=item.attempts,
            state=common_pb2.WebhookDeliveryState.Name(item.state),
            error=error,
        )
        if item.state == common_pb2.WEBHOOK_DELIVERY_STATE_PENDING:
            self._schedule_wake(item.next_ns)

    def _schedule_wake(self, at_ns: int) -> None:
        delay = max((at_ns - time.time_ns()) / 1e9, 0.0)
        if delay < self.poll_interval:
            asyncio.get_running_loop().call_later(delay, self._wake.set)

    async def _send(self, item: WebhookItem) -> tuple[int, str, float | None]:
        """(HTTP status or 0, error text, Retry-After seconds)."""
        key = self.policy.secret_for(item.tenant)
        if key is None:
            return 0, "refused: no webhook secret configured for the tenant", None
        try:
            await check_url(item.url, allow_private=self.settings.allow_private_urls)
        except MediagenError as err:
            return 0, f"refused: {err.message}", None
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": item.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, item.event_id, timestamp, item.body),
        }
        try:
            async with self._client.stream("POST", item.url, content=item.body, headers=headers) as response:
                read = 0
                async for piece in response.aiter_raw():
                    read += len(piece)
                    if read >= _MAX_RESPONSE_BYTES:
                        break
                retry_after = retry_after_from_headers(response.headers) if response.status_code == 429 else None
                return response.status_code, "" if response.is_success else f"HTTP {response.status_code}", retry_after
        except httpx.TimeoutException:
            return 0, "timed out", None
        except httpx.HTTPError as exc:
            return 0, f"connection failed: {exc.__class__.__name__}", None
