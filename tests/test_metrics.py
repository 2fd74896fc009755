"""The lock-free metrics recorded on every RPC and vendor call, as Prometheus reads them."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from providers import metrics


def test_vendor_calls_and_latency_buckets_read_like_prometheus_client_ones():
    provider = f"p{uuid.uuid4().hex[:8]}"
    for seconds in (0.005, 0.007, 3.0, 500.0):  # on a bound, between bounds, past the last one
        metrics.vendor_call(provider, "GET", 200, seconds)
    metrics.vendor_call(provider, "GET", None, 0.1, "PROVIDER_TIMEOUT")

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"provider": provider, "method": "GET", **labels})

    assert sample("mediagen_vendor_calls_total", outcome="2xx") == 4
    assert sample("mediagen_vendor_calls_total", outcome="PROVIDER_TIMEOUT") == 1
    assert sample("mediagen_vendor_call_seconds_bucket", le="0.005") == 1
    assert sample("mediagen_vendor_call_seconds_bucket", le="0.01") == 2
    assert sample("mediagen_vendor_call_seconds_bucket", le="0.1") == 3
    assert sample("mediagen_vendor_call_seconds_bucket", le="5.0") == 4
    assert sample("mediagen_vendor_call_seconds_bucket", le="120.0") == 4
    assert sample("mediagen_vendor_call_seconds_bucket", le="+Inf") == 5
    assert sample("mediagen_vendor_call_seconds_count") == 5
    assert abs(sample("mediagen_vendor_call_seconds_sum") - 503.112) < 1e-9
