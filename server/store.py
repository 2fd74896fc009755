"""The durable job store: jobs, their events and idempotency keys.

``JobStore`` is the interface; ``SQLiteJobStore`` is the embedded default and
``server.pgstore.PostgresJobStore`` the shared one (several replicas). SQLite runs in WAL mode
with synchronous=NORMAL: a commit survives the process being killed (-9), and
only a power loss can take back the last few commits. Queries are short and
run on the event loop thread; there is one connection and one writer.
"""

from __future__ import annotations

import abc
import base64
import builtins
import json
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mediagen.v1 import asset_pb2, common_pb2
from providers.errors import BudgetExceeded, InvalidArgument, QuotaViolation

T = TypeVar("T")


@dataclass(frozen=True)
class BudgetCheck:
    """At admission: the spend of ``tenant`` (None: everyone) since ``since_ns``,
    plus the new job's estimate, must stay within ``limit_micros``."""

    tenant: str | None
    limit_micros: int
    since_ns: int
    label: str  # e.g. "tenant acme, day" — for the QuotaFailure subject


@dataclass(frozen=True)
class UsageGroup:
    tenant: str
    provider: str
    media_type: int
    period_start_ns: int
    job_count: int
    spent_micros: int
    reserved_micros: int


@dataclass
class WebhookItem:
    """One webhook event in the outbox: written with the job change, sent by the worker."""

    event_id: str
    job_id: str
    tenant: str
    url: str
    type: int  # common_pb2.WebhookEventType
    body: bytes
    create_ns: int
    next_ns: int
    attempts: int = 0
    state: int = 1  # common_pb2.WEBHOOK_DELIVERY_STATE_PENDING
    last_status: int = 0
    last_error: str = ""
    delivered_ns: int | None = None


class LeaseLost(Exception):
    """This replica no longer holds the job's lease (shared mode): another replica
    drives it now, and nothing was written."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"lease of {job_id} lost")
        self.job_id = job_id


TERMINAL_STATES = frozenset(
    {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
)


@dataclass
class JobRecord:
    """A job plus what the server needs to drive it, as stored."""

    job: common_pb2.Job
    # The caller's Generate<Media>Request, serialised.
    request: bytes
    # Where the runner is: queued, submitting, polling, storing, done.
    stage: str = "queued"
    # VendorHandle.to_json() once the vendor accepted the job.
    handle: dict[str, Any] | None = None
    # Anything else the runner keeps across restarts (attempt count...).
    extra: dict[str, Any] = field(default_factory=dict)
    # Shared mode: a Cancel reached a replica that does not drive the job.
    cancel_requested: bool = False

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def ended(self) -> bool:
        return self.job.state in TERMINAL_STATES


@dataclass
class AssetRecord:
    """An uploaded asset (server.assets) and where its bytes are stored."""

    asset: asset_pb2.Asset
    key: str

    @property
    def expire_ns(self) -> int | None:
        return self.asset.expire_time.ToNanoseconds() if self.asset.HasField("expire_time") else None


def charged_micros(job: common_pb2.Job) -> int:
    """What a job counts against budgets: its estimate until it ends, then its final cost."""
    if job.state in TERMINAL_STATES:
        return job.final_cost.amount_micros
    return job.estimated_cost.amount_micros


class JobStore(abc.ABC):
    #: True when several replicas share the store (leases, notifications): see server.pgstore.
    shared: bool = False

    async def open(self) -> None:
        """Connect and bring the schema up to date (stores that need to)."""

    @abc.abstractmethod
    async def create(
        self, record: JobRecord, event: common_pb2.JobEvent, budgets: Sequence[BudgetCheck] = ()
    ) -> tuple[JobRecord, bool]:
        """Insert a new job and its first event, unless (tenant, request_id) exists.

        The budget checks and the insert are one transaction, so concurrent
        admissions can never overspend. Raises BudgetExceeded.
        Returns (the stored record, True) or (the earlier record, False).
        """

    @abc.abstractmethod
    async def get(self, job_id: str) -> JobRecord | None: ...

    async def derived(self, job_id: str, key: object, build: Callable[[JobRecord], T]) -> T | None:
        """``build(record)`` for the job as stored now, or None when there is no such job.

        A store may keep the result until the job next changes (the embedded
        store does), so ``build`` must depend on the record alone and callers
        must not change what it returns.
        """
        record = await self.get(job_id)
        return None if record is None else build(record)

    @abc.abstractmethod
    async def get_by_request_id(self, tenant: str, request_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def save(
        self, record: JobRecord, event: common_pb2.JobEvent | None = None, webhooks: Sequence[WebhookItem] = ()
    ) -> None:
        """Store the record's current state, its event and its webhook events in one transaction."""

    @abc.abstractmethod
    async def due_webhooks(self, now_ns: int, limit: int = 100) -> list[WebhookItem]:
        """Pending webhook events whose next attempt is due, oldest first.

        A shared store claims what it returns for this replica for a while, so
        other replicas do not send the same events; ``update_webhook`` ends the claim.
        """

    @abc.abstractmethod
    async def update_webhook(self, item: WebhookItem) -> None:
        """Record an attempt's outcome (state, attempts, next attempt...)."""

    @abc.abstractmethod
    async def webhooks_for(self, job_id: str) -> list[WebhookItem]: ...

    @abc.abstractmethod
    async def list(
        self,
        *,
        media_type: int,
        tenant: str,
        state: int = 0,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[common_pb2.Job], str]:
        """Jobs newest first, and the token of the next page ('' at the end)."""

    @abc.abstractmethod
    async def events(self, job_id: str, after_sequence: int = 0) -> builtins.list[common_pb2.JobEvent]: ...

    @abc.abstractmethod
    async def unfinished(self) -> builtins.list[JobRecord]:
        """Jobs that have not ended, oldest first (for recovery after a restart)."""

    @abc.abstractmethod
    async def spent(self, tenant: str | None, since_ns: int) -> tuple[int, int]:
        """(final cost of ended jobs, estimates of unfinished jobs) created since ``since_ns``."""

    @abc.abstractmethod
    async def usage(
        self, *, start_ns: int, end_ns: int, tenant: str | None, by_tenant: bool, by_provider: bool,
        by_media_type: bool, period: str,
    ) -> builtins.list[UsageGroup]:
        """Spend grouped as asked; ``period`` is "", "day" or "month" (UTC)."""

    @abc.abstractmethod
    async def ended_before(self, cutoff_ns: int, limit: int = 500) -> builtins.list[JobRecord]:
        """Jobs that ended before ``cutoff_ns`` (epoch nanoseconds), oldest first."""

    @abc.abstractmethod
    async def delete(self, job_id: str) -> None:
        """Remove a job and its events."""

    # --- assets (server.assets) ------------------------------------------------

    @abc.abstractmethod
    async def create_asset(self, record: AssetRecord) -> None:
        """Store a new asset's metadata (its bytes are already in storage)."""

    @abc.abstractmethod
    async def get_asset(self, asset_id: str) -> AssetRecord | None: ...

    @abc.abstractmethod
    async def delete_asset(self, asset_id: str) -> None:
        """Remove an asset's metadata; absent is fine."""

    @abc.abstractmethod
    async def expired_assets(self, cutoff_ns: int, limit: int = 500) -> builtins.list[AssetRecord]:
        """Assets whose expire_time is before ``cutoff_ns`` (epoch nanoseconds), oldest first."""

    @abc.abstractmethod
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    media_type INTEGER NOT NULL,
    state INTEGER NOT NULL,
    request_id TEXT,
    create_ns INTEGER NOT NULL,
    job BLOB NOT NULL,
    request BLOB NOT NULL,
    stage TEXT NOT NULL,
    handle TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    end_ns INTEGER,
    provider TEXT NOT NULL DEFAULT '',
    -- estimate while running, final cost once ended (see charged_micros)
    cost_micros INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_spend ON jobs (tenant, create_ns);
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (end_ns) WHERE end_ns IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_listing ON jobs (tenant, media_type, create_ns DESC, id DESC);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (state) WHERE state IN (1, 2);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    event_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    type INTEGER NOT NULL,
    body BLOB NOT NULL,
    create_ns INTEGER NOT NULL,
    next_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state INTEGER NOT NULL,
    last_status INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_ns INTEGER
);
CREATE INDEX IF NOT EXISTS webhook_due ON webhook_outbox (next_ns) WHERE state = 1;
CREATE INDEX IF NOT EXISTS webhook_job ON webhook_outbox (job_id);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    create_ns INTEGER NOT NULL,
    -- NULL: kept until deleted (retention 0)
    expire_ns INTEGER,
    asset BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS assets_expiry ON assets (expire_ns) WHERE expire_ns IS NOT NULL;
"""


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"


def encode_page_token(create_ns: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([create_ns, job_id]).encode()).decode()


def decode_page_token(token: str) -> tuple[int, str]:
    try:
        create_ns, job_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(create_ns, int) or not isinstance(job_id, str):
            raise ValueError
        return create_ns, job_id
    except (ValueError, TypeError, UnicodeError):
        raise InvalidArgument.field("page_token", "not a token this server issued", "INVALID_PAGE_TOKEN") from None


class _RecentRows:
    """The stored rows of recently used jobs, kept in step with every write.

    Each sqlite3 call releases the GIL, and in a busy server grpc's poller
    thread takes it every time: a GetJob's one SELECT cost ~70 µs of wall time
    instead of ~10 (bench/README.md). The embedded store is this process's
    alone, so rows it wrote or read can be served from memory. Rows whose
    request carries large inline media are not kept.
    """

    MAX_ROWS = 8192
    MAX_REQUEST_BYTES = 64 * 1024

    def __init__(self) -> None:
        # job id -> (row, what ``derived`` built from that row)
        self._rows: OrderedDict[str, tuple[tuple, dict[object, Any]]] = OrderedDict()

    def get(self, job_id: str) -> tuple | None:
        entry = self._rows.get(job_id)
        if entry is None:
            return None
        self._rows.move_to_end(job_id)
        return entry[0]

    def derived(self, job_id: str) -> dict[object, Any] | None:
        """Values built from the job's current row; a new row starts with none."""
        entry = self._rows.get(job_id)
        return None if entry is None else entry[1]

    def put(self, job_id: str, row: tuple) -> None:
        if len(row[1]) > self.MAX_REQUEST_BYTES:
            self._rows.pop(job_id, None)
            return
        self._rows[job_id] = (row, {})
        self._rows.move_to_end(job_id)
        if len(self._rows) > self.MAX_ROWS:
            self._rows.popitem(last=False)

    def forget(self, job_id: str) -> None:
        self._rows.pop(job_id, None)


class SQLiteJobStore(JobStore):
    """The embedded store: one SQLite file in WAL mode, used by this process only."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._recent = _RecentRows()

    @staticmethod
    def _row_of(record: JobRecord, job_blob: bytes) -> tuple:
        """The (job, request, stage, handle, extra) columns for ``record``."""
        return (
            job_blob,
            record.request,
            record.stage,
            json.dumps(record.handle) if record.handle else None,
            json.dumps(record.extra),
        )

    def _row_to_record(self, row: tuple) -> JobRecord:
        job_blob, request, stage, handle, extra = row
        job = common_pb2.Job.FromString(job_blob)
        return JobRecord(
            job=job,
            request=request,
            stage=stage,
            handle=json.loads(handle) if handle else None,
            extra=json.loads(extra),
        )

    async def create(
        self, record: JobRecord, event: common_pb2.JobEvent, budgets: Sequence[BudgetCheck] = ()
    ) -> tuple[JobRecord, bool]:
        job = record.job
        row = self._row_of(record, job.SerializeToString())
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for check in budgets:
                    self._check_budget(check, job.estimated_cost.amount_micros)
                self._db.execute(
                    "INSERT INTO jobs (id, tenant, media_type, state, request_id, create_ns, job, request, stage, handle, extra,"
                    " provider, cost_micros) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        job.id,
                        job.tenant,
                        job.media_type,
                        job.state,
                        job.request_id or None,
                        job.create_time.ToNanoseconds(),
                        *row,
                        job.provider,
                        charged_micros(job),
                    ),
                )
                self._insert_event(job.id, event)
        except sqlite3.IntegrityError:
            earlier = await self.get_by_request_id(job.tenant, job.request_id) if job.request_id else None
            if earlier is None:  # the conflict was on the id itself, which is random: re-raise
                raise
            return earlier, False
        self._recent.put(job.id, row)
        return record, True

    async def get_by_request_id(self, tenant: str, request_id: str) -> JobRecord | None:
        row = self._db.execute(
            "SELECT job, request, stage, handle, extra FROM jobs WHERE tenant = ? AND request_id = ?",
            (tenant, request_id),
        ).fetchone()
        return self._row_to_record(row) if row else None

    def _check_budget(self, check: BudgetCheck, estimate_micros: int) -> None:
        spent, reserved = self._spent(check.tenant, check.since_ns)
        if spent + reserved + estimate_micros > check.limit_micros:
            raise BudgetExceeded(
                f"budget for {check.label} would be exceeded: {_usd(spent + reserved)} used or reserved "
                f"of {_usd(check.limit_micros)}, this job needs {_usd(estimate_micros)}",
                metadata={
                    "budget": check.label,
                    "limitMicros": str(check.limit_micros),
                    "usedMicros": str(spent + reserved),
                    "estimateMicros": str(estimate_micros),
                },
                quota_violations=[QuotaViolation(check.label, "budget would be exceeded by this job's estimate")],
            )

    def _spent(self, tenant: str | None, since_ns: int) -> tuple[int, int]:
        sql = (
            "SELECT COALESCE(SUM(CASE WHEN end_ns IS NOT NULL THEN cost_micros END), 0),"
            " COALESCE(SUM(CASE WHEN end_ns IS NULL THEN cost_micros END), 0) FROM jobs WHERE create_ns >= ?"
        )
        args: list[Any] = [since_ns]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        spent, reserved = self._db.execute(sql, args).fetchone()
        return int(spent), int(reserved)

    async def spent(self, tenant: str | None, since_ns: int) -> tuple[int, int]:
        return self._spent(tenant, since_ns)

    async def usage(
        self, *, start_ns: int, end_ns: int, tenant: str | None, by_tenant: bool, by_provider: bool,
        by_media_type: bool, period: str,
    ) -> list[UsageGroup]:
        # Period buckets are computed by SQLite from create_ns (UTC).
        bucket = {
            "": "0",
            "day": "CAST(strftime('%s', date(create_ns / 1000000000, 'unixepoch')) AS INTEGER) * 1000000000",
            "month": "CAST(strftime('%s', date(create_ns / 1000000000, 'unixepoch', 'start of month')) AS INTEGER) * 1000000000",
        }[period]
        columns = [
            "tenant" if by_tenant else "''",
            "provider" if by_provider else "''",
            "media_type" if by_media_type else "0",
            bucket,
        ]
        sql = (
            f"SELECT {', '.join(columns)}, COUNT(*),"
            " COALESCE(SUM(CASE WHEN end_ns IS NOT NULL THEN cost_micros END), 0),"
            " COALESCE(SUM(CASE WHEN end_ns IS NULL THEN cost_micros END), 0)"
            " FROM jobs WHERE create_ns >= ? AND create_ns < ?"
        )
        args: list[Any] = [start_ns, end_ns]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        sql += " GROUP BY 1, 2, 3, 4 ORDER BY 4, 1, 2, 3"
        return [UsageGroup(*row) for row in self._db.execute(sql, args).fetchall()]

    def _insert_event(self, job_id: str, event: common_pb2.JobEvent) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO events (job_id, sequence, event) VALUES (?,?,?)",
            (job_id, event.sequence, event.SerializeToString()),
        )

    async def get(self, job_id: str) -> JobRecord | None:
        row = self._recent.get(job_id)
        if row is None:
            row = self._db.execute(
                "SELECT job, request, stage, handle, extra FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                return None
            self._recent.put(job_id, row)
        return self._row_to_record(row)

    async def derived(self, job_id: str, key: object, build: Callable[[JobRecord], T]) -> T | None:
        built = self._recent.derived(job_id)
        if built is not None and key in built:
            return built[key]  # type: ignore[no-any-return]
        record = await self.get(job_id)  # which keeps the row
        if record is None:
            return None
        value = build(record)
        built = self._recent.derived(job_id)
        if built is not None:
            built[key] = value
        return value

    async def save(
        self, record: JobRecord, event: common_pb2.JobEvent | None = None, webhooks: Sequence[WebhookItem] = ()
    ) -> None:
        job = record.job
        row = self._row_of(record, job.SerializeToString())
        cached = self._recent.get(job.id)
        self._recent.forget(job.id)  # until the new row is committed
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            updated = self._db.execute(
                "UPDATE jobs SET state = ?, job = ?, stage = ?, handle = ?, extra = ?, end_ns = ?, provider = ?,"
                " cost_micros = ? WHERE id = ?",
                (
                    job.state,
                    row[0],
                    *row[2:],
                    job.end_time.ToNanoseconds() if job.HasField("end_time") else None,
                    job.provider,
                    charged_micros(job),
                    job.id,
                ),
            ).rowcount
            if event is not None:
                self._insert_event(job.id, event)
            for item in webhooks:
                self._db.execute(
                    "INSERT OR IGNORE INTO webhook_outbox (event_id, job_id, tenant, url, type, body, create_ns, next_ns,"
                    " attempts, state) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (item.event_id, item.job_id, item.tenant, item.url, item.type, item.body, item.create_ns,
                     item.next_ns, item.attempts, item.state),
                )
        if cached is not None and updated:
            # The request column is written once, at create: keep the stored one.
            self._recent.put(job.id, (row[0], cached[1], *row[2:]))

    _WEBHOOK_COLUMNS = (
        "event_id, job_id, tenant, url, type, body, create_ns, next_ns, attempts, state, last_status, last_error,"
        " delivered_ns"
    )

    async def due_webhooks(self, now_ns: int, limit: int = 100) -> list[WebhookItem]:
        rows = self._db.execute(
            f"SELECT {self._WEBHOOK_COLUMNS} FROM webhook_outbox WHERE state = 1 AND next_ns <= ? ORDER BY next_ns LIMIT ?",
            (now_ns, limit),
        ).fetchall()
        return [WebhookItem(*row) for row in rows]

    async def update_webhook(self, item: WebhookItem) -> None:
        with self._db:
            self._db.execute(
                "UPDATE webhook_outbox SET next_ns = ?, attempts = ?, state = ?, last_status = ?, last_error = ?,"
                " delivered_ns = ? WHERE event_id = ?",
                (item.next_ns, item.attempts, item.state, item.last_status, item.last_error, item.delivered_ns,
                 item.event_id),
            )

    async def webhooks_for(self, job_id: str) -> list[WebhookItem]:
        rows = self._db.execute(
            f"SELECT {self._WEBHOOK_COLUMNS} FROM webhook_outbox WHERE job_id = ? ORDER BY create_ns, event_id",
            (job_id,),
        ).fetchall()
        return [WebhookItem(*row) for row in rows]

    async def list(
        self,
        *,
        media_type: int,
        tenant: str,
        state: int = 0,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[common_pb2.Job], str]:
        sql = "SELECT job, create_ns, id FROM jobs WHERE tenant = ? AND media_type = ?"
        args: list[Any] = [tenant, media_type]
        if state:
            sql += " AND state = ?"
            args.append(state)
        if page_token:
            create_ns, job_id = decode_page_token(page_token)
            sql += " AND (create_ns < ? OR (create_ns = ? AND id < ?))"
            args += [create_ns, create_ns, job_id]
        sql += " ORDER BY create_ns DESC, id DESC LIMIT ?"
        args.append(page_size + 1)
        rows = self._db.execute(sql, args).fetchall()
        jobs = [common_pb2.Job.FromString(r[0]) for r in rows[:page_size]]
        next_token = encode_page_token(rows[page_size - 1][1], rows[page_size - 1][2]) if len(rows) > page_size else ""
        return jobs, next_token

    async def events(self, job_id: str, after_sequence: int = 0) -> builtins.list[common_pb2.JobEvent]:
        rows = self._db.execute(
            "SELECT event FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence",
            (job_id, after_sequence),
        ).fetchall()
        return [common_pb2.JobEvent.FromString(r[0]) for r in rows]

    async def unfinished(self) -> builtins.list[JobRecord]:
        rows = self._db.execute(
            "SELECT job, request, stage, handle, extra FROM jobs WHERE state IN (?, ?) ORDER BY create_ns",
            (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING),
        ).fetchall()
        return [self._row_to_record(r) for r in rows]

    async def ended_before(self, cutoff_ns: int, limit: int = 500) -> builtins.list[JobRecord]:
        rows = self._db.execute(
            "SELECT job, request, stage, handle, extra FROM jobs WHERE end_ns < ? ORDER BY end_ns LIMIT ?",
            (cutoff_ns, limit),
        ).fetchall()
        return [self._row_to_record(r) for r in rows]

    async def delete(self, job_id: str) -> None:
        self._recent.forget(job_id)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM webhook_outbox WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    async def create_asset(self, record: AssetRecord) -> None:
        asset = record.asset
        with self._db:
            self._db.execute(
                "INSERT INTO assets (id, tenant, storage_key, create_ns, expire_ns, asset) VALUES (?,?,?,?,?,?)",
                (asset.id, asset.tenant, record.key, asset.create_time.ToNanoseconds(), record.expire_ns,
                 asset.SerializeToString()),
            )

    async def get_asset(self, asset_id: str) -> AssetRecord | None:
        row = self._db.execute("SELECT asset, storage_key FROM assets WHERE id = ?", (asset_id,)).fetchone()
        return AssetRecord(asset_pb2.Asset.FromString(row[0]), row[1]) if row else None

    async def delete_asset(self, asset_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM assets WHERE id = ?", (asset_id,))

    async def expired_assets(self, cutoff_ns: int, limit: int = 500) -> builtins.list[AssetRecord]:
        rows = self._db.execute(
            "SELECT asset, storage_key FROM assets WHERE expire_ns < ? ORDER BY expire_ns LIMIT ?", (cutoff_ns, limit)
        ).fetchall()
        return [AssetRecord(asset_pb2.Asset.FromString(a), k) for a, k in rows]

    async def close(self) -> None:
        self._db.close()
