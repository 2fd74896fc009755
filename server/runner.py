"""Drives each job through its provider: submit, poll, store, with every change
saved and then pushed to watchers.

One asyncio task per unfinished job; at most ``max_concurrent_jobs`` of them
hold a slot (the rest wait, QUEUED). A job's task is the only writer of that
job, so there are no per-job locks. Each change is saved (with its event) before
it is published, so ``GetJob`` and a resumed ``Watch`` can always rebuild what a
live watcher saw.

Restart safety rests on the ``stage`` stored with the job:
- queued:      not sent anywhere yet; start from the beginning.
- submitting:  a submit may or may not have reached the vendor. Resubmit only
               when the adapter passes an idempotency key; otherwise fail with
               SUBMIT_OUTCOME_UNKNOWN rather than risk paying twice.
- polling / storing: the vendor handle is stored; poll again (a finished
               vendor job answers with its outputs again) and store them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from mediagen.v1 import common_pb2
from providers import metrics
from providers.base import (
    JobContext,
    Output,
    PollResult,
    Provider,
    StoredArtifact,
    VendorHandle,
    VendorState,
)
from providers.errors import (
    InternalError,
    JobCancelled,
    JobDeadlineExceeded,
    MediagenError,
    ProviderAuthFailed,
    ProviderBadResponse,
    ProviderJobFailed,
    ProviderNotConfigured,
    ProviderOutOfCredit,
    ProviderRateLimited,
    ProviderUnavailable,
    SubmitOutcomeUnknown,
)
from providers.mock.media import extension_for, probe
from providers.retry import RetryPolicy
from providers.storage import Storage
from server.config import Settings
from server.events import EventBus
from server.jobs import media_key, now_timestamp, request_class, seconds_until
from server.routing import Router
from server.store import JobRecord, JobStore, LeaseLost
from server.webhooks import WebhookPolicy

if TYPE_CHECKING:
    from server.assets import Assets

log = structlog.get_logger("mediagen.runner")

# Consecutive failed polls (after the HTTP layer's own retries) before giving up.
MAX_POLL_FAILURES = 10
# How long a vendor cancel call may take when a job is cancelled or times out.
VENDOR_CANCEL_TIMEOUT = 10.0

# Failures before a vendor accepted the job that another vendor may not have.
_FALLBACK_BEFORE_ACCEPTANCE = (ProviderUnavailable, ProviderRateLimited, ProviderAuthFailed, ProviderOutOfCredit, ProviderNotConfigured)
# Failures after acceptance worth resubmitting elsewhere (policy "resubmit").
_FALLBACK_AFTER_ACCEPTANCE = (ProviderJobFailed, ProviderUnavailable)

_PHASE_FOR_VENDOR_STATE = {
    VendorState.QUEUED: common_pb2.JOB_PHASE_VENDOR_QUEUED,
    VendorState.RUNNING: common_pb2.JOB_PHASE_GENERATING,
}


@dataclass
class _Active:
    task: asyncio.Task[None]
    cancel_requested: bool = False


class JobRunner:
    def __init__(
        self,
        *,
        store: JobStore,
        bus: EventBus,
        router: Router,
        storage: Storage,
        settings: Settings,
        output_retry: RetryPolicy | None = None,
        webhooks: WebhookPolicy | None = None,
        on_webhooks: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.router = router
        self.storage = storage
        self.settings = settings
        self.output_retry = output_retry or RetryPolicy()
        self.webhooks = webhooks
        # Called after a change that queued webhook events (wakes the sender).
        self.on_webhooks = on_webhooks
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._active: dict[str, _Active] = {}
        # Resolves a request's input image for the adapter (set by the server).
        self.assets: Assets | None = None

    # --- public ------------------------------------------------------------

    def start(self, record: JobRecord) -> None:
        """Drive ``record`` in the background (it is already stored)."""
        task = asyncio.get_running_loop().create_task(self._run(record), name=f"job {record.id}")
        self._active[record.id] = _Active(task)
        metrics.JOBS_IN_FLIGHT.inc()
        task.add_done_callback(lambda _: self._finished(record.id))

    def _finished(self, job_id: str) -> None:
        self._active.pop(job_id, None)
        metrics.JOBS_IN_FLIGHT.dec()

    async def recover(self) -> int:
        """Resume every unfinished job found in the store. Returns how many."""
        records = await self.store.unfinished()
        for record in records:
            if record.id not in self._active:
                self.start(record)
        if records:
            log.info("jobs recovered", count=len(records))
        return len(records)

    async def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop. False when this process is not driving it."""
        active = self._active.get(job_id)
        if active is None:
            return False
        active.cancel_requested = True
        active.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(active.task)
        return True

    def abandon(self, job_id: str) -> bool:
        """Stop driving a job without changing it (shared mode: its lease went to
        another replica). False when this process is not driving it."""
        active = self._active.get(job_id)
        if active is None:
            return False
        active.task.cancel()
        return True

    def active_ids(self) -> list[str]:
        """The jobs this process is driving (or about to)."""
        return list(self._active)

    async def shutdown(self) -> None:
        """Stop driving jobs without changing them: they resume on the next start."""
        tasks = [a.task for a in self._active.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def in_flight(self) -> int:
        return len(self._active)

    async def commit(self, record: JobRecord, event_type: int) -> common_pb2.JobEvent:
        """Save the record with a new event, then publish the event."""
        job = record.job
        job.update_time.CopyFrom(now_timestamp())
        job.last_sequence += 1
        event = common_pb2.JobEvent(
            sequence=job.last_sequence, type=event_type, event_time=job.update_time, job=job
        )
        outbox = self.webhooks.items_for(record, event) if self.webhooks else []
        try:
            await self.store.save(record, event, outbox)
        except BaseException:
            # Not saved (e.g. the task was cancelled mid-save to end the job): the next
            # event must take this number, or Watch would see a gap in the sequence.
            job.last_sequence -= 1
            raise
        self.bus.publish(job.id, event)
        if outbox and self.on_webhooks:
            self.on_webhooks()
        return event

    # --- one job ---------------------------------------------------------------

    async def _run(self, record: JobRecord) -> None:
        try:
            await self._run_job(record)
        except LeaseLost:
            # Shared mode: another replica took the job over. It drives the job
            # from what was stored; this task wrote nothing after losing it.
            log.warning("lease lost: no longer driving the job", job_id=record.id)

    async def _run_job(self, record: JobRecord) -> None:
        job = record.job
        bound = log.bind(job_id=job.id)
        try:
            async with self._slots:
                provider = self.router.resolve(job.media_type, job.provider)
                request = request_class(job.media_type).FromString(record.request)
                remaining = seconds_until(job.expire_time)
                ctx = JobContext(
                    job_id=job.id,
                    deadline=time.monotonic() + remaining,
                    idempotency_key=job.id,
                    attempt=len(job.attempts) or 1,
                )
                started = time.monotonic()
                try:
                    async with asyncio.timeout(max(remaining, 0.0)):
                        await self._drive_with_fallback(record, provider, request, ctx)
                except TimeoutError:
                    provider = self.router.resolve(job.media_type, job.provider)
                    await self._cancel_at_vendor(provider, record, ctx)
                    await self._fail(record, JobDeadlineExceeded("the job did not finish before its deadline"))
                except MediagenError as err:
                    await self._fail(record, err)
                except LeaseLost:
                    raise
                except Exception:
                    bound.exception("job crashed", provider=job.provider)
                    await self._fail(record, InternalError("mediagen failed while running the job"))
                bound.info(
                    "job ended",
                    provider=job.provider,
                    model=job.model,
                    state=common_pb2.JobState.Name(job.state),
                    attempts=len(job.attempts),
                    seconds=round(time.monotonic() - started, 3),
                )
        except asyncio.CancelledError:
            active = self._active.get(job.id)
            if active is None or not active.cancel_requested:
                raise  # shutdown: leave the job as stored, it resumes on restart
            provider = self.router.resolve(job.media_type, job.provider)
            await self._cancel_at_vendor(provider, record, JobContext(job_id=job.id))
            await self._end(record, common_pb2.JOB_STATE_CANCELLED, JobCancelled("cancelled by the caller"))
            bound.info("job cancelled")

    async def _drive_with_fallback(self, record: JobRecord, provider: Provider, request, ctx: JobContext) -> None:
        """Run the job on its provider; on failure, move on to the next candidate if policy allows."""
        while True:
            try:
                await self._drive(record, provider, request, ctx)
                return
            except MediagenError as err:
                successor = self._successor(record, err)
                if successor is None:
                    raise
                if record.handle:  # accepted by the vendor: stop it there first
                    await self._cancel_at_vendor(provider, record, ctx)
                await self._switch(record, provider, successor, request, err)
                provider = successor
                ctx.attempt += 1

    def _successor(self, record: JobRecord, err: MediagenError) -> Provider | None:
        """The next candidate to try after ``err``, or None to fail the job."""
        accepted = record.handle is not None
        if accepted:
            if self.settings.fallback_after_acceptance != "resubmit" or not isinstance(err, _FALLBACK_AFTER_ACCEPTANCE):
                return None
        elif not isinstance(err, _FALLBACK_BEFORE_ACCEPTANCE):
            return None
        remaining = list(record.extra.get("candidates", []))
        while remaining:
            name = remaining.pop(0)
            record.extra["candidates"] = remaining
            candidate = self.router.resolve(record.job.media_type, name)
            entry = candidate.describe()
            if entry.configured and self.router.breaker(candidate.media_type, name).allows():
                return candidate
        return None

    async def _switch(self, record: JobRecord, old: Provider, new: Provider, request, err: MediagenError) -> None:
        job = record.job
        attempt = job.attempts[-1]
        attempt.state = common_pb2.JOB_STATE_FAILED
        attempt.error.CopyFrom(err.to_status())
        attempt.end_time.CopyFrom(now_timestamp())
        if record.handle:
            attempt.cost.CopyFrom(job.estimated_cost)  # the vendor may bill an accepted job
        model = new.default_model()
        job.provider, job.model, job.vendor_job_id = new.name, model, ""
        job.estimated_cost.CopyFrom(new.estimate_cost(request, model))
        job.attempts.add(provider=new.name, model=model, state=common_pb2.JOB_STATE_RUNNING, start_time=now_timestamp())
        job.progress.CopyFrom(
            common_pb2.Progress(
                phase=common_pb2.JOB_PHASE_SUBMITTING,
                message=f"{old.name} failed ({err.reason}); trying {new.name}",
            )
        )
        record.handle = None
        record.stage = "queued"
        metrics.FALLBACKS.labels(media_key(job.media_type), old.name, new.name).inc()
        log.warning("falling back", job_id=job.id, from_provider=old.name, to_provider=new.name, reason=err.reason)
        await self.commit(record, common_pb2.JOB_EVENT_TYPE_PROGRESS)

    async def _vendor(self, provider: Provider, call):
        """Await a vendor call, feeding the provider's circuit breaker."""
        breaker = self.router.breaker(provider.media_type, provider.name)
        try:
            result = await call
        except MediagenError as err:
            breaker.record_failure(err)
            raise
        breaker.record_success()
        return result

    async def _drive(self, record: JobRecord, provider: Provider, request, ctx: JobContext) -> None:
        job = record.job
        if record.stage in ("queued", "submitting"):
            if record.stage == "submitting" and not provider.submit_is_idempotent:
                raise SubmitOutcomeUnknown(
                    "the server stopped while this job was being submitted; it was not sent again "
                    "to avoid paying twice (check the vendor's dashboard)",
                    provider=job.provider,
                    model=job.model,
                )
            if ctx.input_image is None and self.assets is not None:
                # Looked up again here (never stored with the job): an asset deleted since
                # Generate fails the job with ASSET_NOT_FOUND before any vendor call.
                ctx.input_image = await self.assets.input_for(request, job.tenant, ctx)
            job.state = common_pb2.JOB_STATE_RUNNING
            if not job.HasField("start_time"):
                job.start_time.CopyFrom(now_timestamp())
            job.progress.phase = common_pb2.JOB_PHASE_SUBMITTING
            if not job.attempts:
                job.attempts.add(
                    provider=job.provider, model=job.model, state=common_pb2.JOB_STATE_RUNNING, start_time=now_timestamp()
                )
            record.stage = "submitting"
            await self.commit(record, common_pb2.JOB_EVENT_TYPE_STATE_CHANGED)
            handle = await self._vendor(provider, provider.submit(request, job.model, ctx))
            record.handle = handle.to_json()
            record.stage = "polling"
            job.vendor_job_id = handle.vendor_job_id
            job.attempts[-1].vendor_job_id = handle.vendor_job_id
            job.progress.phase = common_pb2.JOB_PHASE_VENDOR_QUEUED
            await self.commit(record, common_pb2.JOB_EVENT_TYPE_PROGRESS)
        handle = VendorHandle.from_json(record.handle or {})
        result = await self._poll_until_done(record, provider, handle, ctx)
        if result.state is VendorState.FAILED:
            raise result.error or ProviderJobFailed("the vendor reported the job failed", provider=job.provider)
        if result.state is VendorState.CANCELLED:
            raise JobCancelled("the vendor cancelled the job", reason="VENDOR_CANCELLED")
        if not result.outputs:
            raise ProviderBadResponse("the vendor reported success without any output", provider=job.provider)
        record.stage = "storing"
        job.progress.phase = common_pb2.JOB_PHASE_STORING
        job.progress.message = "storing the result"
        await self.commit(record, common_pb2.JOB_EVENT_TYPE_PROGRESS)
        stored: list[StoredArtifact] = []
        try:
            for index, output in enumerate(result.outputs):
                stored.append(await self._store_output(record, provider, handle, output, index, ctx))
        except BaseException:
            for artifact in stored:  # all or nothing: no half-stored job
                with contextlib.suppress(Exception):
                    await self.storage.delete(artifact.key)
            raise
        cost = provider.final_cost(request, job.model, result, stored)
        record.extra["keys"] = [a.key for a in stored]
        for artifact in stored:
            job.artifacts.add(
                index=artifact.index,
                uri=artifact.uri,
                content_type=artifact.content_type,
                size_bytes=artifact.size_bytes,
                sha256=artifact.sha256,
                duration_seconds=artifact.duration_seconds,
                width=artifact.width,
                height=artifact.height,
                sample_rate_hz=artifact.sample_rate_hz,
                channels=artifact.channels,
                metadata=artifact.metadata,
            )
        job.attempts[-1].cost.CopyFrom(cost)
        # The job's cost includes what earlier, accepted attempts may have been billed.
        cost.amount_micros += sum(a.cost.amount_micros for a in job.attempts[:-1])
        job.final_cost.CopyFrom(cost)
        job.progress.fraction = 1.0
        await self._end(record, common_pb2.JOB_STATE_SUCCEEDED, None)

    async def _poll_until_done(
        self, record: JobRecord, provider: Provider, handle: VendorHandle, ctx: JobContext
    ) -> PollResult:
        interval = self.settings.poll_interval
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            wait = interval
            try:
                result = await self._vendor(provider, provider.poll(handle, ctx))
                # The next poll is due ``wait`` after this answer, not after saving its progress.
                answered = loop.time()
            except MediagenError as err:
                failures += 1
                if not err.retryable or failures >= MAX_POLL_FAILURES:
                    raise
                wait = max(interval, err.retry_after or 0.0)
            else:
                failures = 0
                if result.done:
                    return result
                if self._apply_progress(record.job, result):
                    await self.commit(record, common_pb2.JOB_EVENT_TYPE_PROGRESS)
                if result.poll_after is not None:
                    wait = result.poll_after
                wait = max(0.0, answered + wait - loop.time())
            await asyncio.sleep(wait)
            interval = min(interval * 1.5, self.settings.poll_interval_max)

    @staticmethod
    def _apply_progress(job: common_pb2.Job, result: PollResult) -> bool:
        """Copy the vendor's progress onto the job; True when anything changed."""
        info = result.progress
        progress = common_pb2.Progress(
            phase=_PHASE_FOR_VENDOR_STATE.get(result.state, common_pb2.JOB_PHASE_GENERATING),
            vendor_status=info.vendor_status,
            message=info.message,
        )
        if info.fraction is not None:
            progress.fraction = min(max(info.fraction, 0.0), 1.0)
        if info.queue_position is not None:
            progress.queue_position = info.queue_position
        if info.eta_seconds is not None:
            progress.eta.FromNanoseconds(int(max(info.eta_seconds, 0.0) * 1e9))
        if progress == job.progress:
            return False
        job.progress.CopyFrom(progress)
        return True

    async def _store_output(
        self,
        record: JobRecord,
        provider: Provider,
        handle: VendorHandle,
        output: Output,
        index: int,
        ctx: JobContext,
    ) -> StoredArtifact:
        job = record.job
        key = f"{job.tenant or 'default'}/{job.id}/{index}{extension_for(output.content_type)}"

        async def transfer():
            async with provider.open_output(handle, output, ctx) as chunks:
                return await self.storage.write(
                    key, chunks, content_type=output.content_type, max_bytes=self.settings.max_output_bytes
                )

        stored = await self.output_retry.run(transfer, deadline=ctx.deadline)
        try:
            info = await asyncio.to_thread(self._probe, key, output.content_type)
        except ValueError:
            await self.storage.delete(key)
            raise ProviderBadResponse(
                f"the vendor's output {index} is not a decodable {output.content_type or 'media file'}",
                provider=job.provider,
                model=job.model,
            ) from None
        return StoredArtifact(
            index=index,
            uri=stored.uri,
            key=key,
            content_type=info.content_type,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            duration_seconds=info.duration_seconds,
            width=info.width,
            height=info.height,
            sample_rate_hz=info.sample_rate_hz,
            channels=info.channels,
            metadata=dict(output.metadata),
        )

    def _probe(self, key: str, content_type: str):
        with self.storage.open_file(key) as handle:
            return probe(handle, content_type_hint=content_type)

    async def _cancel_at_vendor(self, provider: Provider, record: JobRecord, ctx: JobContext) -> None:
        if not record.handle:
            return
        try:
            async with asyncio.timeout(VENDOR_CANCEL_TIMEOUT):
                await provider.cancel(VendorHandle.from_json(record.handle), ctx)
        except Exception as exc:  # best effort: the job ends either way
            log.warning("vendor cancel failed", job_id=record.id, provider=provider.name, error=str(exc))

    async def _fail(self, record: JobRecord, err: MediagenError) -> None:
        await self._end(record, common_pb2.JOB_STATE_FAILED, err)

    async def _end(self, record: JobRecord, state: int, err: MediagenError | None) -> None:
        job = record.job
        job.state = state
        job.progress.phase = common_pb2.JOB_PHASE_DONE
        job.progress.ClearField("eta")
        job.progress.ClearField("queue_position")
        job.end_time.CopyFrom(now_timestamp())
        if err is not None:
            job.error.CopyFrom(err.to_status())
        if job.attempts:
            attempt = job.attempts[-1]
            attempt.state = state
            attempt.end_time.CopyFrom(job.end_time)
            if err is not None:
                attempt.error.CopyFrom(job.error)
        if state != common_pb2.JOB_STATE_SUCCEEDED:
            if job.vendor_job_id and job.attempts:
                # Accepted by the vendor, then failed or cancelled: it may have
                # billed, so the estimate stays charged (conservative for budgets).
                job.attempts[-1].cost.CopyFrom(job.estimated_cost)
            billed = sum(a.cost.amount_micros for a in job.attempts)
            if billed:
                job.final_cost.CopyFrom(job.estimated_cost)
                job.final_cost.amount_micros = billed
                job.final_cost.basis = common_pb2.COST_BASIS_ESTIMATED
        record.stage = "done"
        await self.commit(record, common_pb2.JOB_EVENT_TYPE_ENDED)
        media, provider = media_key(job.media_type), job.provider
        metrics.JOBS_ENDED.labels(media, provider, common_pb2.JobState.Name(state)).inc()
        metrics.JOB_COST.labels(media, provider).inc(job.final_cost.amount_micros / 1e6)
