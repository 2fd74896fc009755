"""Assembles the gRPC server: services, health, reflection, the job runner."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from prometheus_client import start_http_server

from mediagen.v1 import (
    asset_pb2,
    asset_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from providers import metrics
from providers.registry import MEDIA_NAMES, ProviderRegistry, build_registry
from providers.storage import Storage
from providers.storage.local import LocalStorage
from server.assets import Assets, AssetServicer
from server.auth import BearerTokens, parse_tokens, server_credentials
from server.budgets import period_start
from server.config import Settings
from server.events import EventBus
from server.instrument import Instrumented
from server.routing import Router
from server.runner import JobRunner
from server.services import CatalogServicer, JobService, media_servicer
from server.shared import SharedMode
from server.store import JobStore, SQLiteJobStore
from server.usage import UsageServicer
from server.webhooks import WebhookPolicy, WebhookSender

log = structlog.get_logger("mediagen.server")

MEDIA_SERVICES = ("Video", "Speech", "Music", "SoundEffect", "Image")
PROVIDER_HEALTH_INTERVAL = 2.0


def provider_health_name(provider) -> str:
    return f"mediagen.provider.{MEDIA_NAMES[provider.media_type]}.{provider.name}"


def build_storage(settings: Settings) -> Storage:
    if settings.storage == "s3":
        from providers.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    storage = LocalStorage(settings.storage_path)
    removed = storage.clean_temporary_files()
    if removed:
        log.info("removed half-written files of an earlier run", count=removed)
    return storage


def build_store(settings: Settings, replica_id: str) -> JobStore:
    if settings.database_url:
        from server.pgstore import PostgresJobStore

        return PostgresJobStore(
            settings.database_url,
            owner=replica_id,
            lease_seconds=settings.lease_seconds,
            pool_size=settings.database_pool_size,
        )
    return SQLiteJobStore(settings.database_path)


class MediagenServer:
    """One server process. ``start`` binds and recovers jobs; ``stop`` drains."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: ProviderRegistry | None = None,
        storage: Storage | None = None,
        store: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or build_registry(settings)
        self.storage = storage or build_storage(settings)
        # This process's name in leases and logs (shared mode).
        self.replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.store = store or build_store(settings, self.replica_id)
        self.bus = EventBus()
        self.router = Router(self.registry, settings)
        self.webhook_policy = WebhookPolicy(settings)
        self.webhooks = WebhookSender(self.store, self.webhook_policy, settings)
        self.runner = JobRunner(
            store=self.store,
            bus=self.bus,
            router=self.router,
            storage=self.storage,
            settings=settings,
            webhooks=self.webhook_policy,
            on_webhooks=self.webhooks.wake,
        )
        self.jobs = JobService(
            settings=settings,
            store=self.store,
            bus=self.bus,
            router=self.router,
            storage=self.storage,
            runner=self.runner,
            webhooks=self.webhook_policy,
        )
        # Uploaded inputs (AssetService), and the inputs of Generate requests resolved.
        self.assets = Assets(store=self.store, storage=self.storage, settings=settings)
        self.jobs.assets = self.runner.assets = self.assets
        # Shared mode: leases and cross-replica events (see server.shared).
        self.shared: SharedMode | None = None
        if self.store.shared:
            from server.pgstore import PostgresJobStore

            assert isinstance(self.store, PostgresJobStore)
            self.shared = SharedMode(
                store=self.store, runner=self.runner, bus=self.bus, settings=settings, on_ready=self._on_ready
            )
            self.jobs.shared = self.shared
        self._stopping = False
        self.metrics_port = 0
        self._metrics_server: WSGIServer | None = None
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int = 0
        self.service_names: list[str] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> int:
        await self.store.open()
        options = [
            ("grpc.max_receive_message_length", self.settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        server = grpc.aio.server(options=options)
        tokens = BearerTokens(parse_tokens(self.settings.auth_tokens)) if self.settings.auth_tokens else None
        # Every service is registered through Instrumented: auth and metrics around each method.
        services = Instrumented(server, tokens)
        for noun in MEDIA_SERVICES:
            servicer, add, name = media_servicer(noun, self.jobs)
            add(servicer, services)
            self.service_names.append(name)
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(self.registry, self.router), services)
        self.service_names.append(catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name)
        asset_pb2_grpc.add_AssetServiceServicer_to_server(AssetServicer(self.assets), services)
        self.service_names.append(asset_pb2.DESCRIPTOR.services_by_name["AssetService"].full_name)
        usage = UsageServicer(self.store, self.jobs.budgets, auth_on=bool(self.settings.auth_tokens))
        usage_pb2_grpc.add_UsageServiceServicer_to_server(usage, services)
        self.service_names.append(usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, services)
        self.service_names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)

        from server.reflection import enable_reflection

        enable_reflection(services, self.service_names)
        if self.settings.tls_cert_file:
            credentials = server_credentials(
                self.settings.tls_cert_file, self.settings.tls_key_file, self.settings.tls_client_ca_file
            )
            self.port = server.add_secure_port(self.settings.listen, credentials)
        else:
            self.port = server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self.server = server
        if self.shared is not None:
            await self.shared.start()  # claims what stopped or dead replicas left
        else:
            await self.runner.recover()
        self.webhooks.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="retention sweep")
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._update_provider_health()
        if self.settings.metrics_listen:
            host, _, port = self.settings.metrics_listen.rpartition(":")
            self._metrics_server, _ = start_http_server(int(port), addr=host or "0.0.0.0")
            self.metrics_port = self._metrics_server.server_port
        log.info(
            "serving",
            listen=self.settings.listen,
            port=self.port,
            storage=self.settings.storage,
            **({"replica": self.replica_id} if self.shared else {}),
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let streams finish within ``grace``, keep jobs for the next start."""
        grace = self.settings.shutdown_grace if grace is None else grace
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.server is not None:
            await self.server.stop(grace)
        await self.runner.shutdown()
        if self.shared is not None:
            await self.shared.stop()  # hands this replica's jobs to the others at once
        await self.webhooks.close()
        await self.assets.aclose()
        await self.registry.aclose()
        await self.storage.aclose()
        await self.store.close()
        log.info("stopped")

    async def _on_ready(self, ready: bool) -> None:
        """Shared mode: readiness follows whether this replica can reach the database."""
        if self._stopping:
            return
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        if not ready:
            log.error("not ready: the database cannot be reached")

    async def _update_provider_health(self) -> None:
        """Per-provider health ("mediagen.provider.<media>.<name>"): NOT_SERVING while
        the provider is not configured or its circuit is open."""
        for provider in self.registry.all():
            entry = provider.describe()
            healthy = entry.configured and self.router.breaker(provider.media_type, provider.name).allows()
            status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(provider_health_name(provider), status)

    async def _sweep_forever(self) -> None:
        """Housekeeping: retention sweeps, and provider health every few seconds."""
        next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= next_sweep:
                try:
                    await self.jobs.sweep_expired()
                except Exception:  # a failed sweep is retried at the next interval
                    log.exception("retention sweep failed")
                next_sweep = loop.time() + self.settings.retention_sweep_interval
            await self._update_provider_health()
            await self._update_budget_metrics()
            await asyncio.sleep(PROVIDER_HEALTH_INTERVAL)

    async def _update_budget_metrics(self) -> None:
        for budget in self.jobs.budgets:
            since = int(period_start(budget.period).timestamp() * 1e9)
            spent, reserved = await self.store.spent(budget.tenant, since)
            metrics.BUDGET_SPENT.labels(budget.label).set(spent / 1e6)
            metrics.BUDGET_RESERVED.labels(budget.label).set(reserved / 1e6)

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()


async def serve_until_signal(settings: Settings) -> None:
    import signal

    server = MediagenServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", grace=settings.shutdown_grace)
    await server.stop()
