"""The job store contract, on both backends: embedded SQLite and shared PostgreSQL.

Every test runs against each backend (``store`` is parametrized); PostgreSQL
gets a fresh schema per test (tests/pg.py). Where a test needs "two replicas",
it opens a second store on the same database. Lease, notification and
migration tests at the end are PostgreSQL only (SQLite is one process).
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mediagen.v1 import asset_pb2, common_pb2
from providers.errors import BudgetExceeded, InvalidArgument
from server.store import (
    AssetRecord,
    BudgetCheck,
    JobRecord,
    JobStore,
    LeaseLost,
    SQLiteJobStore,
    WebhookItem,
)
from tests.pg import fresh_schema

VIDEO, SPEECH = common_pb2.MEDIA_TYPE_VIDEO, common_pb2.MEDIA_TYPE_SPEECH
QUEUED, RUNNING = common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING
SUCCEEDED, FAILED = common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED
USD = 1_000_000

OpenStore = Callable[..., Awaitable[JobStore]]


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(request, tmp_path) -> AsyncIterator[OpenStore]:
    """``await open_store(owner)``: a store on this test's database; call again for another replica."""
    opened: list[JobStore] = []
    if request.param == "sqlite":
        path = tmp_path / "jobs.db"

        async def open_sqlite(owner: str = "a") -> JobStore:
            store = SQLiteJobStore(path)
            opened.append(store)
            return store

        yield open_sqlite
    else:
        from server.pgstore import PostgresJobStore

        with fresh_schema() as url:

            async def open_pg(owner: str = "a") -> JobStore:
                store = PostgresJobStore(url, owner=owner, lease_seconds=5, pool_size=10)
                await store.open()
                opened.append(store)
                return store

            yield open_pg
            for store in opened:
                await store.close()
            opened.clear()
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store) -> JobStore:
    return await open_store("a")


def make(
    *,
    tenant: str = "t",
    media_type: int = VIDEO,
    request_id: str = "",
    estimate: int = 0,
    create_ns: int | None = None,
    provider: str = "mock",
) -> tuple[JobRecord, common_pb2.JobEvent]:
    job = common_pb2.Job(
        id=f"job_{uuid.uuid4().hex}",
        media_type=media_type,
        state=QUEUED,
        provider=provider,
        tenant=tenant,
        request_id=request_id,
        last_sequence=1,
    )
    job.create_time.FromNanoseconds(create_ns if create_ns is not None else time.time_ns())
    job.estimated_cost.amount_micros = estimate
    event = common_pb2.JobEvent(sequence=1, type=common_pb2.JOB_EVENT_TYPE_CREATED, job=job)
    return JobRecord(job=job, request=b"request-bytes", extra={"candidates": []}), event


def advance(record: JobRecord, state: int, event_type: int = common_pb2.JOB_EVENT_TYPE_PROGRESS) -> common_pb2.JobEvent:
    job = record.job
    job.state = state
    job.last_sequence += 1
    if state in (SUCCEEDED, FAILED, common_pb2.JOB_STATE_CANCELLED):
        job.end_time.FromNanoseconds(time.time_ns())
        event_type = common_pb2.JOB_EVENT_TYPE_ENDED
    return common_pb2.JobEvent(sequence=job.last_sequence, type=event_type, job=job)


async def test_create_get_and_first_event(store):
    record, event = make(request_id="r-1")
    stored, created = await store.create(record, event)
    assert created and stored.id == record.id
    got = await store.get(record.id)
    assert got is not None and got.job == record.job and got.request == b"request-bytes"
    assert got.stage == "queued" and got.handle is None and got.extra == {"candidates": []}
    assert (await store.get_by_request_id("t", "r-1")).id == record.id
    assert await store.get_by_request_id("other", "r-1") is None
    assert await store.get("job_" + "0" * 32) is None
    assert [e.sequence for e in await store.events(record.id)] == [1]


@pytest.mark.parametrize("with_budget", [False, True], ids=["plain", "budgeted"])
async def test_request_id_race_makes_one_job(open_store, with_budget):
    replicas = [await open_store("a"), await open_store("b")]
    budgets = [BudgetCheck("t", 1000 * USD, 0, "tenant t, day")] if with_budget else []
    attempts = [make(request_id="same", estimate=USD) for _ in range(20)]
    results = await asyncio.gather(
        *(replicas[i % 2].create(record, event, budgets) for i, (record, event) in enumerate(attempts))
    )
    winners = [r for r, created in results if created]
    assert len(winners) == 1
    assert {r.id for r, _ in results} == {winners[0].id}
    assert (await replicas[1].get_by_request_id("t", "same")).id == winners[0].id
    assert (await replicas[0].spent("t", 0)) == (0, USD)  # one reservation, not twenty
    # The same request id of another tenant is another job.
    other, event = make(tenant="u", request_id="same")
    assert (await replicas[0].create(other, event))[1]


async def test_save_stores_state_events_and_end(store):
    record, event = make()
    await store.create(record, event)
    record.stage, record.handle, record.extra["attempt"] = "polling", {"vendor_job_id": "v-1"}, 2
    await store.save(record, advance(record, RUNNING, common_pb2.JOB_EVENT_TYPE_STATE_CHANGED))
    await store.save(record, advance(record, RUNNING))
    await store.save(record)  # a save without an event
    got = await store.get(record.id)
    assert got.job.state == RUNNING and got.stage == "polling"
    assert got.handle == {"vendor_job_id": "v-1"} and got.extra["attempt"] == 2
    assert [e.sequence for e in await store.events(record.id)] == [1, 2, 3]
    assert [e.sequence for e in await store.events(record.id, after_sequence=2)] == [3]
    assert (await store.events(record.id))[1].type == common_pb2.JOB_EVENT_TYPE_STATE_CHANGED
    record.job.final_cost.amount_micros = 3 * USD
    record.stage = "done"
    await store.save(record, advance(record, SUCCEEDED))
    got = await store.get(record.id)
    assert got.ended and got.job.final_cost.amount_micros == 3 * USD
    assert (await store.events(record.id))[-1].type == common_pb2.JOB_EVENT_TYPE_ENDED
    assert [r.id for r in await store.ended_before(time.time_ns() + 10**9)] == [record.id]
    assert await store.ended_before(record.job.end_time.ToNanoseconds()) == []



async def test_a_record_from_get_is_the_callers_own_copy(store):
    record, event = make()
    await store.create(record, event)
    first = await store.get(record.id)
    first.job.state, first.stage, first.extra["attempt"] = FAILED, "done", 9
    again = await store.get(record.id)
    assert again.job.state == QUEUED and again.stage == "queued" and "attempt" not in again.extra
    record.stage = "polling"
    await store.save(record, advance(record, RUNNING))
    assert (await store.get(record.id)).stage == "polling"
    await store.delete(record.id)
    assert await store.get(record.id) is None


async def test_derived_values_follow_the_stored_job(store):
    record, event = make()
    await store.create(record, event)
    built: list[int] = []

    def state_of(stored: JobRecord) -> int:
        built.append(stored.job.state)
        return stored.job.state

    assert await store.derived(record.id, "state", state_of) == QUEUED
    assert await store.derived(record.id, "state", state_of) == QUEUED
    await store.save(record, advance(record, RUNNING))
    assert await store.derived(record.id, "state", state_of) == RUNNING
    assert built[-1] == RUNNING  # built again from the new version, never a stale one
    await store.delete(record.id)
    assert await store.derived(record.id, "state", state_of) is None

async def test_list_pages_newest_first_with_filters(store):
    base = time.time_ns() - 10**12
    ids = []
    for i in range(7):
        record, event = make(create_ns=base + i * 1000)
        await store.create(record, event)
        ids.append(record.id)
        if i % 3 == 0:
            await store.save(record, advance(record, SUCCEEDED))
    await store.create(*make(tenant="other", create_ns=base))
    await store.create(*make(media_type=SPEECH, create_ns=base))
    newest_first = list(reversed(ids))
    seen, token = [], ""
    while True:
        page, token = await store.list(media_type=VIDEO, tenant="t", page_size=3, page_token=token)
        seen += [j.id for j in page]
        assert len(page) <= 3
        if not token:
            break
    assert seen == newest_first
    done, token = await store.list(media_type=VIDEO, tenant="t", state=SUCCEEDED, page_size=10)
    assert [j.id for j in done] == [ids[6], ids[3], ids[0]] and token == ""
    # Ties on create time are broken by id, still without repeats or gaps.
    tied = [make(tenant="tie", create_ns=base)[0] for _ in range(5)]
    for record in tied:
        await store.create(record, make()[1])
    page1, token = await store.list(media_type=VIDEO, tenant="tie", page_size=2)
    page2, token = await store.list(media_type=VIDEO, tenant="tie", page_size=2, page_token=token)
    page3, token = await store.list(media_type=VIDEO, tenant="tie", page_size=2, page_token=token)
    assert token == ""
    assert [j.id for j in page1 + page2 + page3] == sorted((r.id for r in tied), reverse=True)
    with pytest.raises(InvalidArgument):
        await store.list(media_type=VIDEO, tenant="t", page_token="not-a-token")


async def test_unfinished_oldest_first(store):
    base = time.time_ns() - 10**12
    records = []
    for i in (2, 0, 1, 3):
        record, event = make(create_ns=base + i)
        await store.create(record, event)
        records.append((i, record))
    by_age = [r for _, r in sorted(records, key=lambda pair: pair[0])]
    await store.save(by_age[1], advance(by_age[1], FAILED))
    await store.save(by_age[3], advance(by_age[3], RUNNING))
    assert [r.id for r in await store.unfinished()] == [by_age[0].id, by_age[2].id, by_age[3].id]


async def test_budgets_never_overspend_under_concurrency(open_store):
    """100 admissions at once, from two replicas, against a 10-job budget: exactly 10 get in."""
    replicas = [await open_store("a"), await open_store("b")]
    since = time.time_ns() - 10**9
    checks = [BudgetCheck("t", 10 * USD, since, "tenant t, day"), BudgetCheck(None, 1000 * USD, since, "all, day")]

    async def admit(i: int) -> bool:
        record, event = make(estimate=USD)
        try:
            await replicas[i % 2].create(record, event, checks)
        except BudgetExceeded as err:
            assert err.reason == "BUDGET_EXCEEDED" and "tenant t, day" in err.message
            return False
        return True

    admitted = await asyncio.gather(*(admit(i) for i in range(100)))
    assert sum(admitted) == 10
    assert await replicas[0].spent("t", since) == (0, 10 * USD)
    # A global budget counts every tenant.
    tight = [BudgetCheck(None, 11 * USD, since, "all tenants, day")]
    assert (await replicas[1].create(*make(tenant="u", estimate=USD), tight))[1]
    with pytest.raises(BudgetExceeded):
        await replicas[0].create(*make(tenant="v", estimate=USD), tight)
    assert await replicas[1].spent(None, since) == (0, 11 * USD)


async def test_usage_grouped_by_tenant_provider_media_and_period(store):
    def ns(*args: int) -> int:
        return int(datetime.datetime(*args, tzinfo=datetime.UTC).timestamp() * 1e9)

    rows = [
        ("a", "runway", VIDEO, ns(2026, 3, 31, 23, 30), 2 * USD, True),
        ("a", "runway", VIDEO, ns(2026, 3, 31, 8, 0), 1 * USD, False),
        ("a", "luma", VIDEO, ns(2026, 4, 1, 0, 30), 4 * USD, True),
        ("b", "openai", SPEECH, ns(2026, 4, 2, 12, 0), 8 * USD, True),
    ]
    for tenant, provider, media, create_ns, cost, ended in rows:
        record, event = make(tenant=tenant, provider=provider, media_type=media, create_ns=create_ns, estimate=cost)
        await store.create(record, event)
        if ended:
            record.job.final_cost.amount_micros = cost
            await store.save(record, advance(record, SUCCEEDED))
    window = {"start_ns": ns(2026, 3, 1), "end_ns": ns(2026, 5, 1)}
    total = await store.usage(**window, tenant=None, by_tenant=False, by_provider=False, by_media_type=False, period="")
    assert [(g.job_count, g.spent_micros, g.reserved_micros) for g in total] == [(4, 14 * USD, 1 * USD)]
    by_tenant_day = await store.usage(
        **window, tenant=None, by_tenant=True, by_provider=False, by_media_type=False, period="day"
    )
    assert [(g.tenant, g.period_start_ns, g.job_count, g.spent_micros, g.reserved_micros) for g in by_tenant_day] == [
        ("a", ns(2026, 3, 31), 2, 2 * USD, 1 * USD),
        ("a", ns(2026, 4, 1), 1, 4 * USD, 0),
        ("b", ns(2026, 4, 2), 1, 8 * USD, 0),
    ]
    by_month = await store.usage(
        **window, tenant="a", by_tenant=False, by_provider=True, by_media_type=True, period="month"
    )
    assert [(g.provider, g.media_type, g.period_start_ns, g.job_count) for g in by_month] == [
        ("runway", VIDEO, ns(2026, 3, 1), 2),
        ("luma", VIDEO, ns(2026, 4, 1), 1),
    ]
    assert await store.spent("a", ns(2026, 4, 1)) == (4 * USD, 0)


async def test_retention_deletes_job_events_and_outbox(store):
    record, event = make()
    await store.create(record, event)
    hook = WebhookItem(f"evt_{record.id}_2", record.id, "t", "https://example.com/h", 4, b"{}", 1, 1)
    await store.save(record, advance(record, SUCCEEDED), [hook])
    keep, keep_event = make()
    await store.create(keep, keep_event)
    expired = await store.ended_before(time.time_ns() + 10**9)
    assert [r.id for r in expired] == [record.id]
    await store.delete(record.id)
    assert await store.get(record.id) is None
    assert await store.events(record.id) == []
    assert await store.webhooks_for(record.id) == []
    assert (await store.get(keep.id)) is not None and len(await store.events(keep.id)) == 1


async def test_webhook_outbox(open_store):
    store = await open_store("a")
    record, event = make()
    await store.create(record, event)
    now = time.time_ns()
    items = [
        WebhookItem(f"evt_{record.id}_{i}", record.id, "t", "https://example.com/h", 2, b'{"n":%d}' % i, now + i, now + i)
        for i in range(3)
    ]
    later = WebhookItem(f"evt_{record.id}_9", record.id, "t", "https://example.com/h", 2, b"{}", now, now + 10**12)
    await store.save(record, advance(record, RUNNING), [*items, later])
    await store.save(record, advance(record, RUNNING), items[:1])  # the same event again: kept once
    due = await store.due_webhooks(now + 10)
    assert [i.event_id for i in due] == [i.event_id for i in items] and due[1].body == b'{"n":1}'
    first = due[0]
    first.attempts, first.state, first.last_status, first.delivered_ns = 1, 2, 204, now + 5  # delivered
    await store.update_webhook(first)
    second = due[1]
    second.attempts, second.last_status, second.last_error, second.next_ns = 1, 503, "HTTP 503", now + 10**12  # retry later
    await store.update_webhook(second)
    await store.update_webhook(due[2])  # handed back as it was
    assert [i.event_id for i in await store.due_webhooks(now + 10)] == [items[2].event_id]
    listed = {i.event_id: i for i in await store.webhooks_for(record.id)}
    assert len(listed) == 4
    assert listed[first.event_id].state == 2 and listed[first.event_id].delivered_ns == now + 5
    assert listed[second.event_id].last_error == "HTTP 503" and listed[second.event_id].attempts == 1
    if store.shared:
        # Two replicas asking at once never get the same event: each claims what it reads.
        other = await open_store("b")
        more = [
            WebhookItem(f"evt_{record.id}_{i}", record.id, "t", "https://example.com/h", 2, b"{}", now, now)
            for i in range(10, 40)
        ]
        await store.save(record, advance(record, RUNNING), more)
        got_a, got_b = await asyncio.gather(store.due_webhooks(now + 10, 20), other.due_webhooks(now + 10, 20))
        ids_a, ids_b = {i.event_id for i in got_a}, {i.event_id for i in got_b}
        assert not ids_a & ids_b
        assert len(ids_a | ids_b) == 30  # items[2] is still claimed by the read above
        assert await other.due_webhooks(now + 10) == []  # all claimed


async def test_assets_are_kept_found_expired_and_deleted(open_store):
    store = await open_store("a")
    now = time.time_ns()

    def asset(number: int, expire_ns: int | None) -> AssetRecord:
        message = asset_pb2.Asset(id=f"asset_{number:032x}", content_type="image/png", size_bytes=10, tenant="t")
        message.create_time.FromNanoseconds(now)
        if expire_ns is not None:
            message.expire_time.FromNanoseconds(expire_ns)
        return AssetRecord(message, f"t/assets/{message.id}.png")

    records = [asset(1, now - 3), asset(2, now - 5), asset(3, now + 10**12), asset(4, None)]
    for record in records:
        await store.create_asset(record)
    got = await store.get_asset(records[0].asset.id)
    assert got == records[0]
    assert await store.get_asset("asset_" + "f" * 32) is None
    # Oldest expiry first; an asset without one never expires.
    assert [r.asset.id for r in await store.expired_assets(now)] == [records[1].asset.id, records[0].asset.id]
    assert [r.asset.id for r in await store.expired_assets(now, limit=1)] == [records[1].asset.id]
    if store.shared:  # another replica sees them at once
        other = await open_store("b")
        assert await other.get_asset(records[3].asset.id) == records[3]
    await store.delete_asset(records[1].asset.id)
    await store.delete_asset(records[1].asset.id)  # absent is fine
    assert [r.asset.id for r in await store.expired_assets(now + 2 * 10**12)] == [
        records[0].asset.id,
        records[2].asset.id,
    ]


# --- PostgreSQL only: leases, cancel requests, notifications, migrations ------------------------


@pytest.fixture
async def pg_url():
    with fresh_schema() as url:
        yield url


async def _pg(url: str, owner: str, lease: float = 5.0):
    from server.pgstore import PostgresJobStore

    store = PostgresJobStore(url, owner=owner, lease_seconds=lease, pool_size=4)
    await store.open()
    return store


async def test_leases_claim_renew_fence_and_release(pg_url):
    a, b = await _pg(pg_url, "a", lease=1.0), await _pg(pg_url, "b", lease=1.0)
    try:
        record, event = make()
        await a.create(record, event)
        assert await b.claim(10) == []  # a holds it from the insert on
        assert (await a.renew([record.id]))[0] == {record.id}
        await asyncio.sleep(1.2)  # a stops renewing: the lease expires
        claimed = await b.claim(10)
        assert [r.id for r in claimed] == [record.id]
        assert await a.claim(10) == []  # never two owners
        renewed, lost, _ = await a.renew([record.id])
        assert renewed == set() and lost == {record.id}
        # a's writes are fenced off: nothing changes.
        with pytest.raises(LeaseLost):
            await a.save(record, advance(record, RUNNING))
        assert (await b.get(record.id)).job.state == QUEUED
        taken = claimed[0]
        await b.save(taken, advance(taken, RUNNING))
        assert [e.sequence for e in await b.events(record.id)] == [1, 2]
        # A cancel request reaches the holder through its renewals.
        assert await a.request_cancel(record.id)
        assert (await b.renew([record.id]))[2] == {record.id}
        assert (await b.get(record.id)).cancel_requested
        # Released leases are claimable at once, with a new epoch.
        assert await b.release() == 1
        again = await a.claim(10)
        assert [r.id for r in again] == [record.id] and again[0].cancel_requested
        with pytest.raises(LeaseLost):
            await b.save(taken, advance(taken, RUNNING))
        await a.save(again[0], advance(again[0], common_pb2.JOB_STATE_CANCELLED))
        assert not await a.request_cancel(record.id)  # ended
        assert await b.claim(10) == []  # ended jobs are never claimed
    finally:
        await a.close()
        await b.close()


async def test_claims_are_disjoint_and_bounded(pg_url):
    stores = [await _pg(pg_url, f"r{i}", lease=0.5) for i in range(3)]
    try:
        for _ in range(30):
            await stores[0].create(*make())
        await asyncio.sleep(0.7)
        batches = await asyncio.gather(*(s.claim(8) for s in stores))
        ids = [r.id for batch in batches for r in batch]
        assert len(ids) == len(set(ids)) == 24 and all(len(b) == 8 for b in batches)
        rest = await stores[0].claim(100, exclude=ids)
        assert len(rest) == 6
    finally:
        for store in stores:
            await store.close()


async def test_notifications_carry_job_and_sequence(pg_url):
    a, b = await _pg(pg_url, "a"), await _pg(pg_url, "b")
    received: list[tuple[str, str, int, str]] = []
    listening, three = asyncio.Event(), asyncio.Event()

    async def listen():
        async for note in b.listen():
            if note[0] == "connected":
                listening.set()
                continue
            received.append(note)
            if len(received) == 3:
                three.set()

    task = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(listening.wait(), 10)
        record, event = make()
        await a.create(record, event)
        await a.save(record, advance(record, RUNNING))
        await b.request_cancel(record.id)
        await a.release()
        await asyncio.wait_for(three.wait(), 5)
        # (Event notifications are sent right after their commit, by a background task: in any order here.)
        assert sorted(received) == [("c", record.id, 0, "b"), ("e", record.id, 2, "a"), ("j", "-", 0, "a")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.close()
        await b.close()


async def test_migrations_are_versioned_and_applied_once(pg_url):
    import psycopg

    from server.pgstore import MIGRATIONS, migrate

    stores = await asyncio.gather(*(_pg(pg_url, f"r{i}") for i in range(3)))  # replicas starting together
    for store in stores:
        await store.close()
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        assert await cur.fetchall() == [(v, n) for v, n, _ in MIGRATIONS]
        later = [*MIGRATIONS, (len(MIGRATIONS) + 1, "a later change", "ALTER TABLE jobs ADD COLUMN note TEXT")]
        assert await migrate(conn, later) == [len(MIGRATIONS) + 1]
        assert await migrate(conn, later) == []
