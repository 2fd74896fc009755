"""Every Prometheus metric mediagen exports, defined in one place.

The providers layer (vendor calls) and the server (jobs, RPCs, budgets) both
record here; ``server.app`` serves them over HTTP when ``metrics_listen`` is set.
Metrics live in the process-wide default registry, so several servers in one
process (tests) share them: tests compare values before and after.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

JOBS_CREATED = Counter("mediagen_jobs_created", "Jobs admitted", ["media_type", "provider"])
JOBS_ENDED = Counter("mediagen_jobs_ended", "Jobs that reached an end state", ["media_type", "provider", "state"])
JOBS_IN_FLIGHT = Gauge("mediagen_jobs_in_flight", "Jobs this process is driving now")
WATCHERS = Gauge("mediagen_watchers", "Open Watch streams")
JOB_COST = Counter("mediagen_job_cost_usd", "Final cost of ended jobs, USD", ["media_type", "provider"])
BUDGET_RESERVED = Gauge(
    "mediagen_budget_reserved_usd", "Estimated cost of unfinished jobs reserved against budgets, USD", ["budget"]
)
BUDGET_SPENT = Gauge("mediagen_budget_spent_usd", "Spend in the budget's current period, USD", ["budget"])
FALLBACKS = Counter("mediagen_fallbacks", "Jobs moved to another provider", ["media_type", "from_provider", "to_provider"])

VENDOR_CALLS = Counter("mediagen_vendor_calls", "HTTP calls to vendors", ["provider", "method", "outcome"])
VENDOR_LATENCY = Histogram(
    "mediagen_vendor_call_seconds", "Vendor HTTP call latency", ["provider", "method"], buckets=_LATENCY_BUCKETS
)
VENDOR_RETRIES = Counter("mediagen_vendor_retries", "Vendor calls retried", ["provider", "reason"])

RPCS = Counter("mediagen_grpc_server_handled", "RPCs completed", ["grpc_service", "grpc_method", "grpc_code"])
RPC_LATENCY = Histogram(
    "mediagen_grpc_server_handling_seconds",
    "RPC handling time (streams: until the stream ends)",
    ["grpc_service", "grpc_method"],
    buckets=_LATENCY_BUCKETS,
)


def vendor_call(provider: str, method: str, status: int | None, seconds: float, error: str = "") -> None:
    outcome = error or (f"{status // 100}xx" if status else "no_answer")
    VENDOR_CALLS.labels(provider, method, outcome).inc()
    VENDOR_LATENCY.labels(provider, method).observe(seconds)
