"""Shared mode: several replicas on one PostgreSQL database and one S3 bucket.

Any replica answers any RPC for any job: jobs, events, idempotency keys and
budgets live in the database, artifacts in the bucket. What needs coordinating
is who *drives* a job (submits it, polls the vendor, stores the result) and how
events reach watchers connected to other replicas. ``SharedMode`` does both.

Leases (see ``server.pgstore``):

- The replica that creates a job holds its lease from the insert on and drives
  it at once. Every ``lease_seconds / 3`` it renews the leases of the jobs it
  drives; a renewal that finds a lease gone (another replica claimed it)
  stops that job's task at once (``JobRunner.abandon``), without writing.
- Every ``min(lease_seconds / 3, 1 s)`` (and at once when another replica
  releases leases) each replica claims unfinished jobs whose lease expired,
  up to its free ``max_concurrent_jobs`` slots, with ``FOR UPDATE SKIP
  LOCKED``; a claim bumps the lease epoch. So a killed replica's jobs are
  taken over within ``lease_seconds`` plus one claim interval, and resume from
  their stored stage exactly as after a restart (a job caught between
  "submitting" and the vendor's answer is never submitted twice).
- Every write of a job is fenced by (owner, epoch): a replica that lost a
  lease cannot change the job any more, even before its renewal notices.
- A replica that cannot reach the database stops driving its jobs before
  their leases can expire (``0.8 * lease_seconds`` after the last renewal it
  sent), and reports NOT_SERVING on the health service until it can again.
  Lease times are the database's clock, so replicas' clocks do not matter.
- On a clean stop a replica releases its leases and notifies the others,
  which claim the jobs at once.

Notifications (one LISTEN connection per replica): a saved event notifies
(job id, sequence, origin); a replica with watchers of that job reads the
events after the last one it relayed from the ``events`` table and publishes
them on its in-process bus (reads for one job are coalesced). Watch replays
from the store after subscribing, so nothing falls in between; on a
reconnect of the LISTEN connection, and at every heartbeat of a watcher, the
store is read again, so a lost notification only delays an event.

Cancel on a replica that does not drive the job marks it cancel-requested in
the database and notifies; the driving replica cancels it (renewals also
report the flag, in case the notification was missed). If no live replica
holds the job's lease, the cancelling replica claims the job and cancels it
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from mediagen.v1 import common_pb2
from server.config import Settings
from server.events import EventBus
from server.runner import VENDOR_CANCEL_TIMEOUT, JobRunner

if TYPE_CHECKING:
    from server.pgstore import PostgresJobStore

log = structlog.get_logger("mediagen.shared")

#: Fraction of the lease after the last renewal sent at which a replica that
#: cannot reach the database stops driving its jobs.
SELF_FENCE_FRACTION = 0.8
#: How long Cancel waits for another replica to end a job.
CANCEL_WAIT = VENDOR_CANCEL_TIMEOUT + 2.0


class SharedMode:
    def __init__(
        self,
        *,
        store: PostgresJobStore,
        runner: JobRunner,
        bus: EventBus,
        settings: Settings,
        on_ready: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.bus = bus
        self.settings = settings
        self.on_ready = on_ready
        self.owner = store.owner
        self.renew_every = settings.lease_seconds / 3
        self.claim_every = min(self.renew_every, 1.0)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._cancelling: dict[str, asyncio.Task[bool]] = {}
        self._ready: bool | None = None
        # Relay of other replicas' events to local watchers.
        self._relayed: dict[str, int] = {}  # job id -> last sequence published here
        self._dirty: set[str] = set()
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self.listening = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self._claim()  # what dead or stopped replicas left, before serving begins
        self._tasks = [
            loop.create_task(self._lease_loop(), name="leases"),
            loop.create_task(self._listen_loop(), name="listen"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), 10.0)

    async def stop(self) -> None:
        """After the runner stopped: give the leases back so other replicas take over at once."""
        for task in [*self._tasks, *self._fetching.values(), *self._cancelling.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._fetching.values(), *self._cancelling.values(), return_exceptions=True)
        try:
            released = await self.store.release()
        except Exception as exc:  # they expire by themselves
            log.warning("could not release leases", error=str(exc))
        else:
            if released:
                log.info("leases released", count=released)

    # --- leases ----------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        loop = asyncio.get_running_loop()
        fence_after = SELF_FENCE_FRACTION * self.settings.lease_seconds
        renewed = answered = loop.time()  # last renewal sent that succeeded; last database answer
        next_renewal = renewed + self.renew_every
        while True:
            try:
                now = loop.time()
                if now >= next_renewal:
                    next_renewal = now + self.renew_every
                    # A renewal that hangs must not keep this loop past the fence.
                    async with asyncio.timeout(max(renewed + fence_after - now, 0.01)):
                        await self._renew()
                    renewed = now
                async with asyncio.timeout(self.renew_every):
                    await self._claim()
                answered = loop.time()
                await self._set_ready(True)
            except Exception as exc:
                log.warning("lease bookkeeping failed", error=str(exc) or type(exc).__name__)
            now = loop.time()
            if now >= renewed + fence_after and self.runner.in_flight():
                # Stop before the leases can expire (they last lease_seconds
                # after the last renewal sent): nobody else drives them yet.
                self._give_up_all("the database could not be reached to renew leases")
                await self._set_ready(False)
            elif now >= answered + fence_after:
                await self._set_ready(False)
            wait = self.claim_every
            if self.runner.in_flight():
                wait = min(wait, max(renewed + fence_after - now, 0.01))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _renew(self) -> None:
        _, lost, cancels = await self.store.renew(self.runner.active_ids())
        for job_id in lost:
            log.warning("lease lost to another replica", job_id=job_id)
            self.runner.abandon(job_id)
        for job_id in cancels:
            self._cancel_soon(job_id)

    async def _claim(self) -> None:
        free = self.settings.max_concurrent_jobs - self.runner.in_flight()
        records = await self.store.claim(free, exclude=self.runner.active_ids())
        for record in records:
            self.runner.start(record)
            if record.cancel_requested:
                self._cancel_soon(record.id)
        if records:
            log.info("jobs claimed", count=len(records), job_ids=[r.id for r in records])

    def _give_up_all(self, why: str) -> None:
        ids = self.runner.active_ids()
        for job_id in ids:
            self.runner.abandon(job_id)
            self.store.forget(job_id)
        if ids:
            log.error("stopped driving jobs", why=why, count=len(ids))

    async def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            self._ready = ready
            if self.on_ready is not None:
                await self.on_ready(ready)

    # --- cancel -------------------------------------------------------------------------

    def _cancel_soon(self, job_id: str) -> None:
        if job_id in self._cancelling or job_id not in self.runner.active_ids():
            return
        task = asyncio.get_running_loop().create_task(self.runner.cancel(job_id), name=f"cancel {job_id}")
        self._cancelling[job_id] = task
        task.add_done_callback(lambda _: self._cancelling.pop(job_id, None))

    async def cancel_elsewhere(self, job_id: str) -> None:
        """Cancel a job this replica does not drive; returns when it ended or after ``CANCEL_WAIT``."""
        if not await self.store.request_cancel(job_id):
            return  # it has ended
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT
        queue = self.bus.subscribe(job_id)
        try:
            while True:
                # Nobody drives it (its replica died, or stopped): take it and cancel it here.
                claimed = await self.store.claim(1, exclude=self.runner.active_ids(), job_id=job_id)
                if claimed:
                    self.runner.start(claimed[0])
                    await asyncio.sleep(0)  # let the job's task start: one cancelled before its first step writes nothing
                    await self.runner.cancel(job_id)
                    return
                record = await self.store.get(job_id)
                if record is None or record.ended or loop.time() >= deadline:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queue.get(), min(0.5, max(deadline - loop.time(), 0.0)))
        finally:
            self.bus.unsubscribe(job_id, queue)

    # --- notifications --------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        while True:
            try:
                async for kind, job_id, sequence, origin in self.store.listen():
                    if kind == "connected":
                        self.listening.set()
                        self._resync()
                    elif kind == "e":
                        self._on_event(job_id, sequence, origin)
                    elif kind == "c":
                        self._cancel_soon(job_id)
                    elif kind == "j" and origin != self.owner:
                        self._wake.set()  # leases were released: claim now
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("database notifications interrupted; reconnecting", error=str(exc))
            self.listening.clear()
            await asyncio.sleep(1.0)

    def _resync(self) -> None:
        """Notifications may have been missed while not listening: read again for every watched job."""
        self._wake.set()
        for job_id in list(self._relayed):
            self._fetch_soon(job_id)

    def _on_event(self, job_id: str, sequence: int, origin: str) -> None:
        if origin == self.owner:
            return  # published on this replica's bus by the runner already
        if not self.bus.has_watchers(job_id):
            self._relayed.pop(job_id, None)
            return
        if job_id not in self._relayed:
            # Watchers subscribe before replaying the store, so they have seen
            # everything before this notification's event, or will.
            self._relayed[job_id] = sequence - 1
        elif sequence <= self._relayed[job_id]:
            return
        self._fetch_soon(job_id)

    def _fetch_soon(self, job_id: str) -> None:
        self._dirty.add(job_id)
        if job_id not in self._fetching:
            task = asyncio.get_running_loop().create_task(self._fetch(job_id), name=f"relay {job_id}")
            self._fetching[job_id] = task

    async def _fetch(self, job_id: str) -> None:
        try:
            while job_id in self._dirty:
                self._dirty.discard(job_id)
                if job_id not in self._relayed:
                    return
                for event in await self.store.events(job_id, self._relayed[job_id]):
                    self.bus.publish(job_id, event)
                    self._relayed[job_id] = event.sequence
                    if event.type == common_pb2.JOB_EVENT_TYPE_ENDED:
                        self._relayed.pop(job_id, None)
                        return
        except Exception as exc:  # the watcher reads the store again at its next heartbeat
            log.warning("could not relay events", job_id=job_id, error=str(exc))
        finally:
            self._dirty.discard(job_id)
            self._fetching.pop(job_id, None)
