"""The PostgreSQL job store: shared mode, several replicas on one database.

Same ``JobStore`` interface as the embedded SQLite store, plus what replicas
need to share the work safely:

- **Leases.** A job is driven by the replica that holds its lease
  (``lease_owner``, ``lease_epoch``, ``lease_until`` in the database's own
  clock, so replicas' clocks do not matter). The replica that creates a job
  holds its lease from the insert on. ``claim`` takes unfinished jobs whose
  lease expired (``FOR UPDATE SKIP LOCKED``: two replicas never claim the same
  row) and bumps the epoch; ``renew`` extends this replica's leases and tells
  which were lost. Every ``save`` is fenced: it writes only while this replica
  still holds the lease with the epoch it claimed, else it raises ``LeaseLost``
  and changes nothing, so a replica that lost a job can never overwrite the
  new owner's progress.
- **Idempotency and budgets** hold across replicas because they are database
  constraints and transactions: the unique index on (tenant, request_id), and
  a transaction-level advisory lock that serialises budget admissions (the
  spend is summed and the job inserted under the lock).
- **Notifications.** A saved event sends ``NOTIFY`` (job id, sequence, origin
  replica) on one channel per schema, right after the commit, batched; a
  cancel request and a released lease do too. ``listen`` yields them; the
  watcher's replica then reads the events from the ``events`` table, so a
  notification carries no data that could be lost or reordered.
- **Webhook outbox** rows are claimed by one replica at a time
  (``claimed_by``/``claim_until``, taken with ``SKIP LOCKED``), so two replicas
  never send the same event at once.
- **Migrations** are versioned (``MIGRATIONS``), recorded in
  ``schema_migrations`` and applied on ``open`` under an advisory lock, so
  replicas starting together migrate once.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from mediagen.v1 import asset_pb2, common_pb2
from providers.errors import BudgetExceeded, QuotaViolation
from server.store import (
    TERMINAL_STATES,
    AssetRecord,
    BudgetCheck,
    JobRecord,
    JobStore,
    LeaseLost,
    UsageGroup,
    WebhookItem,
    _usd,
    charged_micros,
    decode_page_token,
    encode_page_token,
)

log = structlog.get_logger("mediagen.pgstore")

#: (version, name, SQL). Append only: a released migration is never edited.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "jobs, events and the webhook outbox, with leases for several replicas",
        """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    media_type INTEGER NOT NULL,
    state INTEGER NOT NULL,
    request_id TEXT,
    create_ns BIGINT NOT NULL,
    job BYTEA NOT NULL,
    request BYTEA NOT NULL,
    stage TEXT NOT NULL,
    handle TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    end_ns BIGINT,
    provider TEXT NOT NULL DEFAULT '',
    -- estimate while running, final cost once ended (see charged_micros)
    cost_micros BIGINT NOT NULL DEFAULT 0,
    -- the replica driving the job, the claim's number, and until when (database clock)
    lease_owner TEXT,
    lease_epoch BIGINT NOT NULL DEFAULT 0,
    lease_until TIMESTAMPTZ,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX jobs_spend ON jobs (tenant, create_ns);
CREATE INDEX jobs_spend_all ON jobs (create_ns);
CREATE INDEX jobs_ended ON jobs (end_ns) WHERE end_ns IS NOT NULL;
CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_listing ON jobs (tenant, media_type, create_ns DESC, id DESC);
CREATE INDEX jobs_unfinished ON jobs (create_ns) WHERE state IN (1, 2);
CREATE TABLE events (
    job_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    event BYTEA NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE webhook_outbox (
    event_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    type INTEGER NOT NULL,
    body BYTEA NOT NULL,
    create_ns BIGINT NOT NULL,
    next_ns BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL,
    last_status INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_ns BIGINT,
    claimed_by TEXT,
    claim_until TIMESTAMPTZ
);
CREATE INDEX webhook_due ON webhook_outbox (next_ns) WHERE state = 1;
CREATE INDEX webhook_job ON webhook_outbox (job_id);
""",
    ),
    (
        2,
        "assets: uploaded inputs (AssetService)",
        """
CREATE TABLE assets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    create_ns BIGINT NOT NULL,
    -- NULL: kept until deleted (retention 0)
    expire_ns BIGINT,
    asset BYTEA NOT NULL
);
CREATE INDEX assets_expiry ON assets (expire_ns) WHERE expire_ns IS NOT NULL;
""",
    ),
]

#: How long a replica may hold a webhook event it is sending (a send times out after ~10 s).
WEBHOOK_CLAIM_SECONDS = 60.0

_RECORD_COLUMNS = "job, request, stage, handle, extra, cancel_requested"
# Save a job fenced by this replica's lease, with its event, in one statement;
# answers 1 when saved, 0 when the lease is gone (then nothing changed).
_SAVE = (
    "WITH saved AS (UPDATE jobs SET state = %(state)s, job = %(job)s, stage = %(stage)s, handle = %(handle)s,"
    " extra = %(extra)s, end_ns = %(end_ns)s, provider = %(provider)s, cost_micros = %(cost)s"
    " WHERE id = %(id)s AND lease_owner = %(owner)s AND lease_epoch = %(epoch)s RETURNING id),"
    " event AS (INSERT INTO events (job_id, sequence, event) SELECT id, %(sequence)s, %(event)s FROM saved"
    "  WHERE %(event)s::bytea IS NOT NULL ON CONFLICT (job_id, sequence) DO UPDATE SET event = EXCLUDED.event)"
    " SELECT count(*) FROM saved"
)
_WEBHOOK_COLUMNS = (
    "event_id, job_id, tenant, url, type, body, create_ns, next_ns, attempts, state, last_status, last_error,"
    " delivered_ns"
)


async def migrate(conn: psycopg.AsyncConnection, migrations: Sequence[tuple[int, str, str]] = MIGRATIONS) -> list[int]:
    """Apply the migrations not yet recorded in ``schema_migrations``; returns their versions.

    Runs in one transaction under an advisory lock named after the schema, so
    replicas that start together apply each migration once.
    """
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.mediagen.migrations'))")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for version, name, statements in sorted(migrations):
            if version in done:
                continue
            await conn.execute(statements.encode())  # no parameters: several statements are allowed
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied_now.append(version)
        newest = max(done | set(applied_now), default=0)
    known = max((m[0] for m in migrations), default=0)
    if newest > known:
        log.warning("database schema is newer than this replica knows", schema_version=newest, known=known)
    return applied_now


class PostgresJobStore(JobStore):
    shared = True

    def __init__(self, url: str, *, owner: str, lease_seconds: float = 15.0, pool_size: int = 10) -> None:
        self.url = url
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._pool = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, kwargs={"autocommit": True}, name="mediagen"
        )
        # Lease bookkeeping has its own connections: renewals must never wait
        # behind RPCs queued for the main pool (a budget admission holds its
        # connection while it waits for the admission lock).
        self._lease_pool = AsyncConnectionPool(
            url, min_size=1, max_size=3, open=False, kwargs={"autocommit": True}, name="mediagen-leases"
        )
        # Leases this replica holds: job id -> epoch of its claim (the fencing token).
        self._epochs: dict[str, int] = {}
        self.channel = ""
        # Event notifications wait here for the notifier (see _notify_events).
        self._outgoing: builtins.list[str] = []
        self._outgoing_ready = asyncio.Event()
        self._notifier: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=30.0)
        await self._lease_pool.open(wait=True, timeout=30.0)
        async with self._pool.connection() as conn:
            applied = await migrate(conn)
            cur = await conn.execute("SELECT current_schema()")
            row = await cur.fetchone()
        schema = row[0] if row else "public"
        # NOTIFY channels are per database, not per schema: name ours after the schema.
        self.channel = f"mediagen_{schema}"[:63]
        if applied:
            log.info("database migrated", versions=applied)
        self._notifier = asyncio.get_running_loop().create_task(self._notify_events(), name="notifier")

    async def close(self) -> None:
        if self._notifier is not None:
            self._notifier.cancel()
            await asyncio.gather(self._notifier, return_exceptions=True)
            await self._send_notifications()
        await self._lease_pool.close()
        await self._pool.close()

    async def _notify_events(self) -> None:
        """Send event notifications, many per transaction.

        Not in the transaction that saves the event: PostgreSQL serialises the
        commits of all notifying transactions (a global lock held through the
        WAL flush), which would cap every replica's saves at one disk flush
        each. Sent after the commit, so a notification still means "committed".
        If this replica dies in between, watchers elsewhere get the event at
        their next heartbeat, when they read the store again.
        """
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready.clear()
            await self._send_notifications()

    async def _send_notifications(self) -> None:
        batch, self._outgoing = self._outgoing, []
        if not batch:
            return
        try:
            async with self._lease_pool.connection() as conn:
                await conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (self.channel, batch))
        except Exception as exc:  # watchers read the store again at their next heartbeat
            log.warning("could not send notifications", count=len(batch), error=str(exc))

    # --- reading ----------------------------------------------------------------------

    @staticmethod
    def _row_to_record(row: Sequence[Any]) -> JobRecord:
        job_blob, request, stage, handle, extra, cancel_requested = row
        return JobRecord(
            job=common_pb2.Job.FromString(bytes(job_blob)),
            request=bytes(request),
            stage=stage,
            handle=json.loads(handle) if handle else None,
            extra=json.loads(extra),
            cancel_requested=bool(cancel_requested),
        )

    async def _fetchall(
        self, query: str | sql.Composed, args: Sequence[Any] = (), *, pool: AsyncConnectionPool | None = None
    ) -> builtins.list[tuple[Any, ...]]:
        async with (pool or self._pool).connection() as conn:
            cur = await conn.execute(query, args)
            return await cur.fetchall()

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._fetchall(f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        return self._row_to_record(rows[0]) if rows else None

    async def get_by_request_id(self, tenant: str, request_id: str) -> JobRecord | None:
        rows = await self._fetchall(
            f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE tenant = %s AND request_id = %s", (tenant, request_id)
        )
        return self._row_to_record(rows[0]) if rows else None

    async def list(
        self,
        *,
        media_type: int,
        tenant: str,
        state: int = 0,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[builtins.list[common_pb2.Job], str]:
        query = "SELECT job, create_ns, id FROM jobs WHERE tenant = %s AND media_type = %s"
        args: list[Any] = [tenant, media_type]
        if state:
            query += " AND state = %s"
            args.append(state)
        if page_token:
            create_ns, job_id = decode_page_token(page_token)
            query += " AND (create_ns, id) < (%s, %s)"
            args += [create_ns, job_id]
        query += " ORDER BY create_ns DESC, id DESC LIMIT %s"
        args.append(page_size + 1)
        rows = await self._fetchall(query, args)
        jobs = [common_pb2.Job.FromString(bytes(r[0])) for r in rows[:page_size]]
        next_token = encode_page_token(rows[page_size - 1][1], rows[page_size - 1][2]) if len(rows) > page_size else ""
        return jobs, next_token

    async def events(self, job_id: str, after_sequence: int = 0) -> builtins.list[common_pb2.JobEvent]:
        rows = await self._fetchall(
            "SELECT event FROM events WHERE job_id = %s AND sequence > %s ORDER BY sequence", (job_id, after_sequence)
        )
        return [common_pb2.JobEvent.FromString(bytes(r[0])) for r in rows]

    async def unfinished(self) -> builtins.list[JobRecord]:
        rows = await self._fetchall(
            f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE state IN (%s, %s) ORDER BY create_ns",
            (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING),
        )
        return [self._row_to_record(r) for r in rows]

    async def ended_before(self, cutoff_ns: int, limit: int = 500) -> builtins.list[JobRecord]:
        rows = await self._fetchall(
            f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE end_ns < %s ORDER BY end_ns LIMIT %s", (cutoff_ns, limit)
        )
        return [self._row_to_record(r) for r in rows]

    # --- spend ----------------------------------------------------------------------

    @staticmethod
    async def _spent_on(conn: psycopg.AsyncConnection, tenant: str | None, since_ns: int) -> tuple[int, int]:
        query = (
            "SELECT COALESCE(SUM(cost_micros) FILTER (WHERE end_ns IS NOT NULL), 0),"
            " COALESCE(SUM(cost_micros) FILTER (WHERE end_ns IS NULL), 0) FROM jobs WHERE create_ns >= %s"
        )
        args: list[Any] = [since_ns]
        if tenant is not None:
            query += " AND tenant = %s"
            args.append(tenant)
        cur = await conn.execute(query, args)
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async def spent(self, tenant: str | None, since_ns: int) -> tuple[int, int]:
        async with self._pool.connection() as conn:
            return await self._spent_on(conn, tenant, since_ns)

    async def usage(
        self, *, start_ns: int, end_ns: int, tenant: str | None, by_tenant: bool, by_provider: bool,
        by_media_type: bool, period: str,
    ) -> builtins.list[UsageGroup]:
        # Period buckets in UTC, as epoch nanoseconds (the same values SQLite computes).
        bucket = {
            "": "0::bigint",
            "day": "(extract(epoch FROM date_trunc('day', to_timestamp(create_ns / 1000000000) AT TIME ZONE 'UTC'))"
            "::bigint * 1000000000)",
            "month": "(extract(epoch FROM date_trunc('month', to_timestamp(create_ns / 1000000000) AT TIME ZONE 'UTC'))"
            "::bigint * 1000000000)",
        }[period]
        columns = [
            "tenant" if by_tenant else "''",
            "provider" if by_provider else "''",
            "media_type" if by_media_type else "0",
            bucket,
        ]
        query = (
            f"SELECT {', '.join(columns)}, COUNT(*),"
            " COALESCE(SUM(cost_micros) FILTER (WHERE end_ns IS NOT NULL), 0),"
            " COALESCE(SUM(cost_micros) FILTER (WHERE end_ns IS NULL), 0)"
            " FROM jobs WHERE create_ns >= %s AND create_ns < %s"
        )
        args: list[Any] = [start_ns, end_ns]
        if tenant is not None:
            query += " AND tenant = %s"
            args.append(tenant)
        query += " GROUP BY 1, 2, 3, 4 ORDER BY 4, 1, 2, 3"
        rows = await self._fetchall(query, args)
        return [UsageGroup(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6])) for r in rows]

    @staticmethod
    def _budget_error(check: BudgetCheck, used: int, estimate_micros: int) -> BudgetExceeded:
        return BudgetExceeded(
            f"budget for {check.label} would be exceeded: {_usd(used)} used or reserved "
            f"of {_usd(check.limit_micros)}, this job needs {_usd(estimate_micros)}",
            metadata={
                "budget": check.label,
                "limitMicros": str(check.limit_micros),
                "usedMicros": str(used),
                "estimateMicros": str(estimate_micros),
            },
            quota_violations=[QuotaViolation(check.label, "budget would be exceeded by this job's estimate")],
        )

    # --- writing ----------------------------------------------------------------------

    async def create(
        self, record: JobRecord, event: common_pb2.JobEvent, budgets: Collection[BudgetCheck] = ()
    ) -> tuple[JobRecord, bool]:
        job = record.job
        async with self._pool.connection() as conn, conn.transaction():
            if budgets:
                # One admission at a time, across every replica: the sum below
                # sees every job admitted before, and this one is inserted before
                # the next admission can sum (the lock is released at commit).
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.mediagen.budgets'))")
                if job.request_id:
                    earlier = await self._by_request_id_on(conn, job.tenant, job.request_id)
                    if earlier is not None:
                        return earlier, False
                estimate = job.estimated_cost.amount_micros
                for check in budgets:
                    spent, reserved = await self._spent_on(conn, check.tenant, check.since_ns)
                    if spent + reserved + estimate > check.limit_micros:
                        raise self._budget_error(check, spent + reserved, estimate)
            cur = await conn.execute(
                "INSERT INTO jobs (id, tenant, media_type, state, request_id, create_ns, job, request, stage, handle,"
                " extra, provider, cost_micros, lease_owner, lease_epoch, lease_until)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,1, clock_timestamp() + make_interval(secs => %s))"
                " ON CONFLICT (tenant, request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING id",
                (
                    job.id,
                    job.tenant,
                    job.media_type,
                    job.state,
                    job.request_id or None,
                    job.create_time.ToNanoseconds(),
                    job.SerializeToString(),
                    record.request,
                    record.stage,
                    json.dumps(record.handle) if record.handle else None,
                    json.dumps(record.extra),
                    job.provider,
                    charged_micros(job),
                    self.owner,
                    self.lease_seconds,
                ),
            )
            if await cur.fetchone() is None:
                # Another request with this request_id won (it has committed: the
                # insert waited for it), so this statement sees its row.
                earlier = await self._by_request_id_on(conn, job.tenant, job.request_id)
                if earlier is None:
                    raise RuntimeError("request_id conflict without an earlier job")
                return earlier, False
            await self._insert_event(conn, job.id, event)
        self._epochs[job.id] = 1
        return record, True

    async def _by_request_id_on(self, conn: psycopg.AsyncConnection, tenant: str, request_id: str) -> JobRecord | None:
        cur = await conn.execute(
            f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE tenant = %s AND request_id = %s", (tenant, request_id)
        )
        row = await cur.fetchone()
        return self._row_to_record(row) if row else None

    @staticmethod
    async def _insert_event(conn: psycopg.AsyncConnection, job_id: str, event: common_pb2.JobEvent) -> None:
        await conn.execute(
            "INSERT INTO events (job_id, sequence, event) VALUES (%s, %s, %s)"
            " ON CONFLICT (job_id, sequence) DO UPDATE SET event = EXCLUDED.event",
            (job_id, event.sequence, event.SerializeToString()),
        )

    async def save(
        self, record: JobRecord, event: common_pb2.JobEvent | None = None, webhooks: Collection[WebhookItem] = ()
    ) -> None:
        job = record.job
        epoch = self._epochs.get(job.id)
        if epoch is None:
            raise LeaseLost(job.id)
        values = {
            "state": job.state,
            "job": job.SerializeToString(),
            "stage": record.stage,
            "handle": json.dumps(record.handle) if record.handle else None,
            "extra": json.dumps(record.extra),
            "end_ns": job.end_time.ToNanoseconds() if job.HasField("end_time") else None,
            "provider": job.provider,
            "cost": charged_micros(job),
            "id": job.id,
            "owner": self.owner,
            "epoch": epoch,
            "sequence": event.sequence if event is not None else 0,
            "event": event.SerializeToString() if event is not None else None,
        }
        async with self._pool.connection() as conn, conn.transaction() if webhooks else contextlib.nullcontext():
            # One statement (one round trip, one commit when there are no webhooks).
            cur = await conn.execute(_SAVE, values)
            row = await cur.fetchone()
            if not row or row[0] != 1:
                self._epochs.pop(job.id, None)
                raise LeaseLost(job.id)
            for item in webhooks:
                await conn.execute(
                    "INSERT INTO webhook_outbox (event_id, job_id, tenant, url, type, body, create_ns, next_ns,"
                    " attempts, state) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (event_id) DO NOTHING",
                    (item.event_id, item.job_id, item.tenant, item.url, item.type, item.body, item.create_ns,
                     item.next_ns, item.attempts, item.state),
                )
        if event is not None:
            self._outgoing.append(f"e {job.id} {event.sequence} {self.owner}")
            self._outgoing_ready.set()
        if job.state in TERMINAL_STATES:
            self._epochs.pop(job.id, None)

    async def delete(self, job_id: str) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM events WHERE job_id = %s", (job_id,))
            await conn.execute("DELETE FROM webhook_outbox WHERE job_id = %s", (job_id,))
            await conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))

    # --- assets ------------------------------------------------------------------------

    async def create_asset(self, record: AssetRecord) -> None:
        asset = record.asset
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO assets (id, tenant, storage_key, create_ns, expire_ns, asset) VALUES (%s,%s,%s,%s,%s,%s)",
                (asset.id, asset.tenant, record.key, asset.create_time.ToNanoseconds(), record.expire_ns,
                 asset.SerializeToString()),
            )

    async def get_asset(self, asset_id: str) -> AssetRecord | None:
        rows = await self._fetchall("SELECT asset, storage_key FROM assets WHERE id = %s", (asset_id,))
        return AssetRecord(asset_pb2.Asset.FromString(bytes(rows[0][0])), rows[0][1]) if rows else None

    async def delete_asset(self, asset_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("DELETE FROM assets WHERE id = %s", (asset_id,))

    async def expired_assets(self, cutoff_ns: int, limit: int = 500) -> builtins.list[AssetRecord]:
        rows = await self._fetchall(
            "SELECT asset, storage_key FROM assets WHERE expire_ns < %s ORDER BY expire_ns LIMIT %s", (cutoff_ns, limit)
        )
        return [AssetRecord(asset_pb2.Asset.FromString(bytes(a)), k) for a, k in rows]

    # --- webhook outbox -----------------------------------------------------------------

    async def due_webhooks(self, now_ns: int, limit: int = 100) -> builtins.list[WebhookItem]:
        """Due events, each claimed for this replica for ``WEBHOOK_CLAIM_SECONDS``."""
        if limit <= 0:
            return []
        rows = await self._fetchall(
            "UPDATE webhook_outbox o SET claimed_by = %s, claim_until = now() + make_interval(secs => %s)"
            " FROM (SELECT event_id FROM webhook_outbox WHERE state = 1 AND next_ns <= %s"
            "  AND (claim_until IS NULL OR claim_until < now()) ORDER BY next_ns LIMIT %s FOR UPDATE SKIP LOCKED) due"
            " WHERE o.event_id = due.event_id RETURNING "
            + ", ".join(f"o.{c.strip()}" for c in _WEBHOOK_COLUMNS.split(",")),
            (self.owner, WEBHOOK_CLAIM_SECONDS, now_ns, limit),
        )
        items = [self._webhook(r) for r in rows]
        return sorted(items, key=lambda i: (i.next_ns, i.event_id))

    @staticmethod
    def _webhook(row: Sequence[Any]) -> WebhookItem:
        values = list(row)
        values[5] = bytes(values[5])
        return WebhookItem(*values)

    async def update_webhook(self, item: WebhookItem) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_outbox SET next_ns = %s, attempts = %s, state = %s, last_status = %s, last_error = %s,"
                " delivered_ns = %s, claimed_by = NULL, claim_until = NULL WHERE event_id = %s",
                (item.next_ns, item.attempts, item.state, item.last_status, item.last_error, item.delivered_ns,
                 item.event_id),
            )

    async def webhooks_for(self, job_id: str) -> builtins.list[WebhookItem]:
        rows = await self._fetchall(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhook_outbox WHERE job_id = %s ORDER BY create_ns, event_id", (job_id,)
        )
        return [self._webhook(r) for r in rows]

    # --- leases -------------------------------------------------------------------------

    def held(self) -> dict[str, int]:
        """Jobs whose lease this replica holds (as far as it knows): id -> epoch."""
        return dict(self._epochs)

    async def claim(self, limit: int, exclude: Collection[str] = (), job_id: str | None = None) -> builtins.list[JobRecord]:
        """Take the lease of up to ``limit`` unfinished jobs whose lease expired, oldest first.

        ``job_id``: only that job. ``exclude``: jobs this replica is still busy with.
        """
        if limit <= 0:
            return []
        where = "state IN (1, 2) AND (lease_until IS NULL OR lease_until < now()) AND NOT (id = ANY(%s))"
        args: list[Any] = [list(exclude)]
        if job_id is not None:
            where += " AND id = %s"
            args.append(job_id)
        rows = await self._fetchall(
            f"WITH due AS (SELECT id FROM jobs WHERE {where} ORDER BY create_ns LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE jobs j SET lease_owner = %s, lease_epoch = j.lease_epoch + 1,"
            " lease_until = clock_timestamp() + make_interval(secs => %s)"
            " FROM due WHERE j.id = due.id RETURNING j.id, j.lease_epoch, j.create_ns, "
            + ", ".join(f"j.{c.strip()}" for c in _RECORD_COLUMNS.split(",")),
            [*args, limit, self.owner, self.lease_seconds],
            pool=self._lease_pool,
        )
        rows.sort(key=lambda r: r[2])
        records = []
        for row in rows:
            self._epochs[row[0]] = int(row[1])
            records.append(self._row_to_record(row[3:]))
        return records

    async def renew(self, job_ids: Collection[str]) -> tuple[set[str], set[str], set[str]]:
        """Extend this replica's leases of ``job_ids``.

        Returns (renewed, lost, cancel requested among the renewed). A job this
        replica holds no lease of (it ended, or was never claimed) is in neither.
        """
        epochs = {j: self._epochs[j] for j in job_ids if j in self._epochs}
        if not epochs:
            return set(), set(), set()
        rows = await self._fetchall(
            "UPDATE jobs SET lease_until = clock_timestamp() + make_interval(secs => %s)"
            " FROM unnest(%s::text[], %s::bigint[]) AS held(id, epoch)"
            " WHERE jobs.id = held.id AND jobs.lease_epoch = held.epoch AND jobs.lease_owner = %s"
            " RETURNING jobs.id, jobs.cancel_requested",
            (self.lease_seconds, list(epochs), list(epochs.values()), self.owner),
            pool=self._lease_pool,
        )
        renewed = {r[0] for r in rows}
        lost = set(epochs) - renewed
        for job_id in lost:
            if self._epochs.get(job_id) == epochs[job_id]:
                del self._epochs[job_id]
        return renewed, lost, {r[0] for r in rows if r[1]}

    def forget(self, job_id: str) -> None:
        """Stop fencing writes of ``job_id`` with this replica's lease (it gave the job up)."""
        self._epochs.pop(job_id, None)

    async def release(self, job_ids: Collection[str] | None = None) -> int:
        """Give up leases (all held when None) so other replicas claim those jobs at once."""
        epochs = {j: e for j, e in self._epochs.items() if job_ids is None or j in job_ids}
        if not epochs:
            return 0
        async with self._lease_pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL"
                " FROM unnest(%s::text[], %s::bigint[]) AS held(id, epoch)"
                " WHERE jobs.id = held.id AND jobs.lease_epoch = held.epoch AND jobs.lease_owner = %s",
                (list(epochs), list(epochs.values()), self.owner),
            )
            released = cur.rowcount
            await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"j - 0 {self.owner}"))
        for job_id in epochs:
            self._epochs.pop(job_id, None)
        return released

    async def request_cancel(self, job_id: str) -> bool:
        """Mark an unfinished job to be cancelled by whichever replica drives it. False if it ended."""
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE jobs SET cancel_requested = TRUE WHERE id = %s AND state IN (1, 2) RETURNING id", (job_id,)
            )
            if await cur.fetchone() is None:
                return False
            await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"c {job_id} 0 {self.owner}"))
        return True

    # --- notifications ----------------------------------------------------------------

    async def listen(self) -> AsyncIterator[tuple[str, str, int, str]]:
        """Notifications of every replica, as (kind, job id, sequence, origin replica).

        kind: "e" a job event was saved, "c" a cancel was requested, "j" leases
        were released. Yields ("connected", "", 0, "") first, once listening: a
        consumer resynchronises then, as notifications sent while it was not
        listening are lost. Ends when the connection breaks (call again).
        """
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            yield "connected", "", 0, ""
            async for note in conn.notifies():
                kind, job_id, sequence, origin = (note.payload.split(" ") + ["", "", "", ""])[:4]
                yield kind, job_id, int(sequence or 0), origin
        finally:
            await conn.close()

    async def now_ns(self) -> int:
        """The database clock (tests and diagnostics)."""
        rows = await self._fetchall("SELECT (extract(epoch FROM clock_timestamp()) * 1e9)::bigint")
        return int(rows[0][0])

