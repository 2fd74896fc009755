"""The gRPC servicers: one per media type, all backed by one ``JobService``.

The five media services have the same seven RPCs under media-specific names
(GenerateVideo, GetVideoJob, ...); ``media_servicer`` builds each servicer class
from the generated base and the shared implementation.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from mediagen.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    image_pb2,
    image_pb2_grpc,
    music_pb2,
    music_pb2_grpc,
    sound_effect_pb2,
    sound_effect_pb2_grpc,
    speech_pb2,
    speech_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from providers import metrics
from providers.errors import FailedPrecondition, InvalidArgument, MediagenError, NotFound
from providers.registry import ProviderRegistry
from providers.storage import Storage
from server.auth import current_tenant
from server.budgets import checks_for, parse_budgets
from server.config import Settings
from server.events import EventBus
from server.jobs import media_key, new_job_id, now_timestamp, timestamp_after
from server.routing import Router
from server.rpc_errors import rpc
from server.runner import JobRunner
from server.store import JobRecord, JobStore
from server.validation import validate_generate, validate_job_id
from server.webhooks import WebhookPolicy, delivery_message

if TYPE_CHECKING:
    from server.assets import Assets
    from server.shared import SharedMode

log = structlog.get_logger("mediagen.rpc")
M = TypeVar("M", bound=Message)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class OutOfRange(MediagenError):
    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "OFFSET_OUT_OF_RANGE"


def tenant_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's tenant, set by the auth interceptor ('' when auth is off)."""
    return current_tenant.get()


class JobService:
    """What every media service does, for any media type."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        bus: EventBus,
        router: Router,
        storage: Storage,
        runner: JobRunner,
        webhooks: WebhookPolicy,
    ) -> None:
        self.settings = settings
        self.webhooks = webhooks
        self.store = store
        self.bus = bus
        self.router = router
        self.storage = storage
        self.runner = runner
        self.budgets = parse_budgets(settings.budgets)
        # Storage keys being streamed by Download now: retention never deletes these.
        self.reading: collections.Counter[str] = collections.Counter()
        # Shared mode (several replicas): set by the server.
        self.shared: SharedMode | None = None
        # Uploaded assets, and the resolution of input images: set by the server.
        self.assets: Assets | None = None

    async def generate(self, media_type: int, request: Message, tenant: str) -> common_pb2.Job:
        validate_generate(media_type, request)
        if request.request_id:
            earlier = await self._by_request_id(tenant, request.request_id)
            if earlier is not None:
                return earlier
        # The input image resolved (an asset must be the tenant's: NOT_FOUND otherwise),
        # so that every candidate provider can judge it before any vendor call.
        media = await self.assets.input_for(request, tenant) if self.assets is not None else None
        candidates = self.router.candidates(media_type, request, media)
        provider = candidates[0]
        model = request.model or provider.default_model()
        known_models = [m.name for m in provider.describe().models]
        if request.model and known_models and request.model not in known_models:
            raise InvalidArgument.field(
                "model", f"unknown model for {provider.name}; known: {', '.join(known_models)}", "UNKNOWN_MODEL"
            )
        webhook = await self.webhooks.config_for(request, tenant)
        timeout = self.settings.job_timeout
        if request.HasField("timeout"):
            timeout = min(request.timeout.ToNanoseconds() / 1e9, self.settings.max_job_timeout)
        now = now_timestamp()
        job = common_pb2.Job(
            id=new_job_id(),
            media_type=media_type,
            state=common_pb2.JOB_STATE_QUEUED,
            provider=provider.name,
            model=model,
            request_id=request.request_id,
            progress=common_pb2.Progress(phase=common_pb2.JOB_PHASE_QUEUED),
            estimated_cost=provider.estimate_cost(request, model),
            create_time=now,
            update_time=now,
            tenant=tenant,
            expire_time=timestamp_after(timeout),
            last_sequence=1,
        )
        event = common_pb2.JobEvent(sequence=1, type=common_pb2.JOB_EVENT_TYPE_CREATED, event_time=now, job=job)
        extra: dict = {"candidates": [p.name for p in candidates[1:]]}
        if webhook:
            extra["webhook"] = webhook
        record = JobRecord(job=job, request=request.SerializeToString(), extra=extra)
        record, created = await self.store.create(record, event, checks_for(self.budgets, tenant))
        if created:
            self.runner.start(record)
            metrics.JOBS_CREATED.labels(media_key(media_type), job.provider).inc()
            log.info("job created", job_id=job.id, provider=job.provider, model=job.model)
        return record.job

    async def _by_request_id(self, tenant: str, request_id: str) -> common_pb2.Job | None:
        record = await self.store.get_by_request_id(tenant, request_id)
        return record.job if record else None

    async def get_record(self, media_type: int, job_id: str, tenant: str) -> JobRecord:
        validate_job_id(job_id)
        record = await self.store.get(job_id)
        # Another tenant's job, or a job of another media type, does not exist here.
        if record is None or record.job.tenant != tenant or record.job.media_type != media_type:
            raise _not_found(job_id)
        return record

    async def get_response(self, media_type: int, request, tenant: str, response_class: type[M]) -> M:
        """GetJob's answer, built once per stored version of a job (see JobStore.derived).

        Answers that sign download URLs, or list webhook deliveries (which change
        without the job changing), are built every time.
        """
        if not request.HasField("download_url_ttl"):
            validate_job_id(request.job_id)
            answer = await self.store.derived(request.job_id, response_class, partial(_plain_answer, response_class))
            if answer is None:
                raise _not_found(request.job_id)
            if answer is not _NOT_PLAIN:
                assert isinstance(answer, response_class)
                job = answer.job  # type: ignore[attr-defined]
                if job.tenant != tenant or job.media_type != media_type:
                    raise _not_found(request.job_id)
                return answer
        return response_class(job=await self.get(media_type, request, tenant))

    async def get(self, media_type: int, request, tenant: str) -> common_pb2.Job:
        record = await self.get_record(media_type, request.job_id, tenant)
        job = record.job
        if "webhook" in record.extra:
            job.webhook_deliveries.extend(delivery_message(i) for i in await self.store.webhooks_for(job.id))
        if request.HasField("download_url_ttl") and job.artifacts:
            ttl = request.download_url_ttl.ToNanoseconds() / 1e9
            if ttl <= 0:
                raise InvalidArgument.field("download_url_ttl", "must be positive", "OUT_OF_RANGE")
            ttl = min(ttl, self.settings.max_download_url_ttl)
            for artifact, key in zip(job.artifacts, record.extra.get("keys", []), strict=False):
                url = await self.storage.presign(key, int(ttl))
                if url:
                    artifact.download_url = url
                    artifact.download_url_expire_time.CopyFrom(timestamp_after(ttl))
        return job

    async def list(self, media_type: int, request, tenant: str) -> tuple[list[common_pb2.Job], str]:
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative", "OUT_OF_RANGE")
        if request.state not in common_pb2.JobState.values():
            raise InvalidArgument.field("state", "unknown job state", "UNSUPPORTED_VALUE")
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        return await self.store.list(
            media_type=media_type, tenant=tenant, state=request.state, page_size=page_size, page_token=request.page_token
        )

    async def cancel(self, media_type: int, request, tenant: str) -> common_pb2.Job:
        record = await self.get_record(media_type, request.job_id, tenant)
        if not record.ended:
            if not await self.runner.cancel(record.id) and self.shared is not None:
                await self.shared.cancel_elsewhere(record.id)  # another replica drives it
            record = await self.get_record(media_type, request.job_id, tenant)
        return record.job

    async def watch(self, media_type: int, job_id: str, after_sequence: int, tenant: str) -> AsyncIterator[common_pb2.JobEvent]:
        if after_sequence < 0:
            raise InvalidArgument.field("after_sequence", "must not be negative", "OUT_OF_RANGE")
        validate_job_id(job_id)
        # Subscribe before reading history so nothing falls between the two.
        queue = self.bus.subscribe(job_id)
        metrics.WATCHERS.inc()
        try:
            record = await self.get_record(media_type, job_id, tenant)
            last = after_sequence
            for event in await self.store.events(job_id, after_sequence):
                yield event
                last = event.sequence
                if event.type == common_pb2.JOB_EVENT_TYPE_ENDED:
                    return
            if record.ended:
                return  # the caller has seen the end already
            while True:
                try:
                    # No wait_for: it wraps every get() in a new Task, ~13% of the server's CPU
                    # per message when one event fans out to many watchers (bench/README.md).
                    if queue.empty():
                        async with asyncio.timeout(self.settings.heartbeat_interval):
                            event = await queue.get()
                    else:
                        event = queue.get_nowait()
                except TimeoutError:
                    if self.store.shared:
                        # Another replica drives the job: a lost notification only delays its events.
                        ended = False
                        for event in await self.store.events(job_id, last):
                            yield event
                            last = event.sequence
                            ended = event.type == common_pb2.JOB_EVENT_TYPE_ENDED
                        if ended:
                            return
                    yield common_pb2.JobEvent(
                        sequence=last, type=common_pb2.JOB_EVENT_TYPE_HEARTBEAT, event_time=now_timestamp()
                    )
                    continue
                if event.sequence <= last:
                    continue
                yield event
                last = event.sequence
                if event.type == common_pb2.JOB_EVENT_TYPE_ENDED:
                    return
        finally:
            self.bus.unsubscribe(job_id, queue)
            metrics.WATCHERS.dec()

    async def download(self, media_type: int, request, tenant: str) -> AsyncIterator[tuple[int, bytes, common_pb2.Artifact | None]]:
        record = await self.get_record(media_type, request.job_id, tenant)
        job = record.job
        if job.state != common_pb2.JOB_STATE_SUCCEEDED:
            raise FailedPrecondition(
                f"job {job.id} has no artifacts: it is {common_pb2.JobState.Name(job.state)}",
                reason="JOB_NOT_SUCCEEDED",
                metadata={"jobId": job.id, "state": common_pb2.JobState.Name(job.state)},
            )
        if not 0 <= request.artifact_index < len(job.artifacts):
            raise InvalidArgument.field(
                "artifact_index", f"must be from 0 to {len(job.artifacts) - 1}", "OUT_OF_RANGE"
            )
        artifact = job.artifacts[request.artifact_index]
        if not 0 <= request.offset <= artifact.size_bytes:
            raise OutOfRange(
                f"offset must be from 0 to {artifact.size_bytes}",
                metadata={"offset": str(request.offset), "sizeBytes": str(artifact.size_bytes)},
            )
        key = record.extra["keys"][request.artifact_index]
        position = request.offset
        first: common_pb2.Artifact | None = artifact
        self.reading[key] += 1
        try:
            async for chunk in self.storage.read(key, offset=request.offset):
                yield position, chunk, first
                position += len(chunk)
                first = None
        finally:
            self.reading[key] -= 1
            if not self.reading[key]:
                del self.reading[key]
        if first is not None:  # offset == size: still announce the artifact once
            yield position, b"", first

    async def sweep_expired(self) -> int:
        """Delete jobs (and their artifacts) that ended more than ``retention`` ago.

        A job whose artifact is being downloaded right now is left for the next
        sweep. Artifacts go first: a crash in between leaves a job whose files
        are already gone, which the next sweep removes again. Expired uploaded
        assets are removed too (see server.assets).
        """
        if self.assets is not None:
            await self.assets.sweep()
        if not self.settings.retention:
            return 0
        cutoff = time.time_ns() - int(self.settings.retention * 1e9)
        removed = 0
        for record in await self.store.ended_before(cutoff):
            keys = record.extra.get("keys", [])
            if any(self.reading[k] for k in keys):
                continue
            for key in keys:
                await self.storage.delete(key)
            await self.store.delete(record.id)
            removed += 1
        if removed:
            log.info("expired jobs removed", count=removed)
        return removed


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"job {job_id} not found", reason="JOB_NOT_FOUND", metadata={"jobId": job_id})


_NOT_PLAIN = object()


def _plain_answer(response_class: type[M], record: JobRecord) -> M | object:
    """The GetJob answer for ``record``, or _NOT_PLAIN when it lists webhook deliveries."""
    return _NOT_PLAIN if "webhook" in record.extra else response_class(job=record.job)


_SPECS = {
    "Video": (common_pb2.MEDIA_TYPE_VIDEO, video_pb2, video_pb2_grpc),
    "Speech": (common_pb2.MEDIA_TYPE_SPEECH, speech_pb2, speech_pb2_grpc),
    "Music": (common_pb2.MEDIA_TYPE_MUSIC, music_pb2, music_pb2_grpc),
    "SoundEffect": (common_pb2.MEDIA_TYPE_SOUND_EFFECT, sound_effect_pb2, sound_effect_pb2_grpc),
    "Image": (common_pb2.MEDIA_TYPE_IMAGE, image_pb2, image_pb2_grpc),
}


def media_servicer(noun: str, jobs: JobService):
    """Build the servicer of ``<noun>Service`` (e.g. "Video") on top of ``jobs``."""
    media_type, pb2, pb2_grpc = _SPECS[noun]
    msg = lambda suffix: getattr(pb2, suffix.format(N=noun))  # noqa: E731

    @rpc
    async def generate(self, request, context):
        job = await jobs.generate(media_type, request, tenant_of(context))
        return msg("Generate{N}Response")(job=job)

    get_job_response = msg("Get{N}JobResponse")

    @rpc
    async def get(self, request, context):
        return await jobs.get_response(media_type, request, tenant_of(context), get_job_response)

    @rpc
    async def list_jobs(self, request, context):
        found, token = await jobs.list(media_type, request, tenant_of(context))
        return msg("List{N}JobsResponse")(jobs=found, next_page_token=token)

    @rpc
    async def cancel(self, request, context):
        return msg("Cancel{N}JobResponse")(job=await jobs.cancel(media_type, request, tenant_of(context)))

    @rpc
    async def watch(self, request, context):
        response = msg("Watch{N}JobResponse")
        async for event in jobs.watch(media_type, request.job_id, request.after_sequence, tenant_of(context)):
            yield response(event=event)

    @rpc
    async def generate_stream(self, request, context):
        if not request.HasField("request"):
            raise InvalidArgument.field("request", "is required", "REQUIRED")
        tenant = tenant_of(context)
        job = await jobs.generate(media_type, request.request, tenant)
        response = msg("Generate{N}StreamResponse")
        async for event in jobs.watch(media_type, job.id, 0, tenant):
            yield response(event=event)

    @rpc
    async def download(self, request, context):
        if request.offset < 0:
            raise InvalidArgument.field("offset", "must not be negative", "OUT_OF_RANGE")
        response = msg("Download{N}Response")
        async for offset, data, artifact in jobs.download(media_type, request, tenant_of(context)):
            yield response(offset=offset, data=data, artifact=artifact)

    methods = {
        f"Generate{noun}": generate,
        f"Get{noun}Job": get,
        f"List{noun}Jobs": list_jobs,
        f"Cancel{noun}Job": cancel,
        f"Watch{noun}Job": watch,
        f"Generate{noun}Stream": generate_stream,
        f"Download{noun}": download,
    }
    for name, method in methods.items():
        method.__name__ = name
    base = getattr(pb2_grpc, f"{noun}ServiceServicer")
    servicer = type(f"{noun}Servicer", (base,), methods)()
    adder = getattr(pb2_grpc, f"add_{noun}ServiceServicer_to_server")
    service_name = pb2.DESCRIPTOR.services_by_name[f"{noun}Service"].full_name
    return servicer, adder, service_name


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, registry: ProviderRegistry, router: Router) -> None:
        self.registry = registry
        self.router = router

    def _entries(self, media_type: int) -> list[catalog_pb2.Provider]:
        entries = self.registry.describe(media_type)
        for entry in entries:
            entry.circuit_state = self.router.breaker(entry.media_type, entry.name).state
        return entries

    @rpc
    async def ListProviders(self, request, context):
        if request.media_type not in common_pb2.MediaType.values():
            raise InvalidArgument.field("media_type", "unknown media type", "UNSUPPORTED_VALUE")
        return catalog_pb2.ListProvidersResponse(providers=self._entries(request.media_type))

    @rpc
    async def GetProvider(self, request, context):
        if not request.name:
            raise InvalidArgument.field("name", "is required", "REQUIRED")
        # A name can serve several media types (elevenlabs: speech and sound
        # effects); media_type picks one, else the first is returned.
        found = [p for p in self._entries(request.media_type) if p.name == request.name]
        if not found:
            raise NotFound(f"provider {request.name} not found", reason="PROVIDER_NOT_FOUND", metadata={"name": request.name})
        return catalog_pb2.GetProviderResponse(provider=found[0])
