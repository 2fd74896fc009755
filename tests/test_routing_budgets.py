"""Routing, fallback, circuit breakers, budgets, usage and metrics, over real gRPC.

The providers here are mock video providers dressed as priced vendors whose
submit and poll can be scripted to fail, so routing decisions can be watched
without any vendor's quirks.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from mediagen.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    usage_pb2,
    usage_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from providers.base import PollResult, VendorState, make_cost, usd
from providers.errors import ProviderJobFailed, ProviderUnavailable
from providers.mock.provider import MockVideo
from providers.registry import ProviderRegistry
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.helpers import serving


class PricedVideo(MockVideo):
    """A mock video vendor with a name, a price per second and scripted failures."""

    def __init__(self, settings, name, usd_per_second, *, max_duration=30.0, configured=True):
        super().__init__(settings)
        self.name = name
        self.price = usd(usd_per_second)
        self.max_duration = max_duration
        self.configured = configured
        self.submit_errors: list[Exception] = []
        self.fail_after_acceptance = False
        self.submits = 0
        self.cancels = 0

    def describe(self):
        entry = super().describe()
        entry.mock = False
        entry.display_name = self.name
        entry.limits.max_duration_seconds = self.max_duration
        entry.prices[0].unit_price_micros = self.price
        entry.configured = self.configured
        entry.not_configured_reason = "" if self.configured else f"set {self.name.upper()}_API_KEY"
        return entry

    def estimate_cost(self, request, model):
        return make_cost(request.duration_seconds or 4.0, common_pb2.PRICE_UNIT_SECOND, self.price, common_pb2.COST_BASIS_ESTIMATED)

    async def submit(self, request, model, ctx):
        self.submits += 1
        if self.submit_errors:
            raise self.submit_errors.pop(0)
        return await super().submit(request, model, ctx)

    async def poll(self, handle, ctx):
        if self.fail_after_acceptance:
            return PollResult(VendorState.FAILED, error=ProviderJobFailed("generation failed", provider=self.name))
        return await super().poll(handle, ctx)

    async def cancel(self, handle, ctx):
        self.cancels += 1
        return True


def _unavailable(name):
    return ProviderUnavailable("503 from vendor", provider=name)


@pytest.fixture
def vendors(tmp_path):
    settings = make_settings(tmp_path)
    return {
        "alpha": PricedVideo(settings, "alpha", 0.10, max_duration=10),
        "beta": PricedVideo(settings, "beta", 0.05, max_duration=5),
        "gamma": PricedVideo(settings, "gamma", 0.01, configured=False),
    }


def _server(tmp_path, vendors, **overrides):
    settings = make_settings(tmp_path, **overrides)
    registry = ProviderRegistry(list(vendors.values()), settings.default_providers)
    return MediagenServer(settings, registry=registry)


async def _run(stub, **fields):
    job = (await stub.GenerateVideo(video_pb2.GenerateVideoRequest(prompt="p", width=64, height=64, **fields))).job
    events = [r.event async for r in stub.WatchVideoJob(video_pb2.WatchVideoJobRequest(job_id=job.id))]
    return job, events[-1].job


@pytest.mark.parametrize(
    "routing, order, expected",
    [("cheapest", {}, "beta"), ("preference", {"video": ["alpha", "beta"]}, "alpha"), ("default", {}, "alpha")],
)
async def test_routing_policies_pick_configured_able_providers(tmp_path, vendors, routing, order, expected):
    server = _server(tmp_path, vendors, routing=routing, provider_order=order, default_providers={"video": "alpha"})
    async with serving(server) as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        job, final = await _run(stub, duration_seconds=2)
        assert job.provider == expected and final.state == common_pb2.JOB_STATE_SUCCEEDED
        # gamma is cheapest but not configured; a 7 s request rules out beta (max 5 s).
        if routing == "cheapest":
            job, _ = await _run(stub, duration_seconds=7)
            assert job.provider == "alpha"
            assert job.estimated_cost.amount_micros == 700_000


async def test_no_provider_able_is_refused_before_any_vendor_call(tmp_path, vendors):
    server = _server(tmp_path, vendors, routing="cheapest")
    async with serving(server) as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GenerateVideo(video_pb2.GenerateVideoRequest(prompt="p", duration_seconds=20))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details()
        assert "alpha" in details and "beta" in details and "gamma: not configured" in details
        assert vendors["alpha"].submits == vendors["beta"].submits == 0


async def test_fallback_before_acceptance_keeps_one_job_id(tmp_path, vendors):
    vendors["alpha"].submit_errors = [_unavailable("alpha")]
    server = _server(tmp_path, vendors, default_providers={"video": "alpha"}, provider_order={"video": ["beta"]})
    async with serving(server) as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        job, final = await _run(stub, duration_seconds=2)
        assert final.id == job.id and final.state == common_pb2.JOB_STATE_SUCCEEDED
        assert final.provider == "beta"
        assert [(a.provider, a.state) for a in final.attempts] == [
            ("alpha", common_pb2.JOB_STATE_FAILED),
            ("beta", common_pb2.JOB_STATE_SUCCEEDED),
        ]
        assert json_format.MessageToDict(final.attempts[0].error)["details"][0]["reason"] == "PROVIDER_UNAVAILABLE"
        got = (await stub.GetVideoJob(video_pb2.GetVideoJobRequest(job_id=job.id))).job
        assert len(got.attempts) == 2


@pytest.mark.parametrize("policy", ["fail", "resubmit"])
async def test_fallback_after_acceptance_follows_policy(tmp_path, vendors, policy):
    vendors["alpha"].fail_after_acceptance = True
    server = _server(
        tmp_path, vendors, default_providers={"video": "alpha"}, provider_order={"video": ["beta"]},
        fallback_after_acceptance=policy,
    )
    async with serving(server) as channel:
        _, final = await _run(video_pb2_grpc.VideoServiceStub(channel), duration_seconds=2)
        if policy == "fail":
            assert final.state == common_pb2.JOB_STATE_FAILED and len(final.attempts) == 1
            assert vendors["beta"].submits == 0
        else:
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED and final.provider == "beta"
            assert vendors["alpha"].cancels == 1  # stopped at the first vendor before resubmitting
            # The accepted first attempt may have been billed: it counts in the job's cost.
            assert final.attempts[0].cost.amount_micros == 200_000
            assert final.final_cost.amount_micros == 200_000 + final.attempts[1].cost.amount_micros


async def test_circuit_breaker_opens_and_shows(tmp_path, vendors):
    vendors["alpha"].submit_errors = [_unavailable("alpha") for _ in range(2)]
    server = _server(
        tmp_path, vendors, default_providers={"video": "alpha"}, circuit_threshold=2, circuit_cooldown=60
    )
    async with serving(server) as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        for _ in range(2):
            _, final = await _run(stub, duration_seconds=2)
            assert final.state == common_pb2.JOB_STATE_FAILED
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        alpha = (await catalog.GetProvider(catalog_pb2.GetProviderRequest(name="alpha"))).provider
        assert alpha.circuit_state == catalog_pb2.CIRCUIT_STATE_OPEN
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GenerateVideo(video_pb2.GenerateVideoRequest(prompt="p", provider="alpha"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert vendors["alpha"].submits == 2  # nothing more was sent
        await server._update_provider_health()
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="mediagen.provider.video.alpha"))
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        status = await health.Check(health_pb2.HealthCheckRequest(service="mediagen.provider.video.beta"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_budget_holds_under_100_concurrent_generates_and_a_restart(tmp_path, vendors):
    # Each stalled job reserves $0.40 (4 s at $0.10); $1.00 a day admits two.
    overrides = dict(default_providers={"video": "alpha"}, budgets="*:day:1.00")
    server = _server(tmp_path, vendors, **overrides)
    stall = {"mock_behavior": "stall"}
    async with serving(server) as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        request = lambda: video_pb2.GenerateVideoRequest(  # noqa: E731
            prompt="p", duration_seconds=4, request_id=str(uuid.uuid4()), provider_options=stall
        )
        results = await asyncio.gather(*(stub.GenerateVideo(request()) for _ in range(100)), return_exceptions=True)
        admitted = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(admitted) == 2 and len(refused) == 98
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        status = rpc_status.from_call(refused[0])
        quota = error_details_pb2.QuotaFailure()
        assert any(d.Unpack(quota) for d in status.details) and quota.violations[0].subject == "all tenants, day"
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        report = await usage.GetUsage(usage_pb2.GetUsageRequest())
        assert report.total_reserved_micros == 800_000
        assert report.budgets[0].limit_micros == 1_000_000 and report.budgets[0].reserved_micros == 800_000
    server = _server(tmp_path, vendors, **overrides)  # same database
    async with serving(server) as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GenerateVideo(video_pb2.GenerateVideoRequest(prompt="p", duration_seconds=4, provider_options=stall))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Cancelling a reserved job before the vendor accepted it releases its reservation.
        listed = await stub.ListVideoJobs(video_pb2.ListVideoJobsRequest())
        for job in listed.jobs:
            await stub.CancelVideoJob(video_pb2.CancelVideoJobRequest(job_id=job.id))
        report = await usage_pb2_grpc.UsageServiceStub(channel).GetUsage(usage_pb2.GetUsageRequest())
        assert report.total_reserved_micros == 0


async def test_usage_groups_spend_and_metrics_are_scraped(tmp_path, vendors):
    server = _server(tmp_path, vendors, default_providers={"video": "alpha"}, metrics_listen="127.0.0.1:0")
    async with serving(server) as channel:
        stub = video_pb2_grpc.VideoServiceStub(channel)
        await _run(stub, duration_seconds=2)
        await _run(stub, duration_seconds=1, provider="beta")
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        report = await usage.GetUsage(
            usage_pb2.GetUsageRequest(
                group_by=[usage_pb2.USAGE_DIMENSION_PROVIDER, usage_pb2.USAGE_DIMENSION_MEDIA_TYPE],
                period=usage_pb2.USAGE_PERIOD_DAY,
            )
        )
        by_provider = {row.provider: row for row in report.rows}
        assert by_provider["alpha"].job_count == 1 and by_provider["beta"].job_count == 1
        assert by_provider["alpha"].media_type == common_pb2.MEDIA_TYPE_VIDEO
        assert report.total_spent_micros == by_provider["alpha"].spent_micros + by_provider["beta"].spent_micros
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{server.metrics_port}/metrics")).text
        assert 'mediagen_jobs_created_total{media_type="video",provider="alpha"}' in text
        assert 'mediagen_jobs_ended_total{media_type="video",provider="beta",state="JOB_STATE_SUCCEEDED"}' in text
        assert 'grpc_method="GenerateVideo"' in text and "mediagen_grpc_server_handling_seconds_bucket" in text
        assert "mediagen_jobs_in_flight" in text and "mediagen_watchers" in text
