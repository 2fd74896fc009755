"""Every Prometheus metric mediagen exports, defined in one place.

The providers layer (vendor calls) and the server (jobs, RPCs, budgets) both
record here; ``server.app`` serves them over HTTP when ``metrics_listen`` is set.
Metrics live in the process-wide default registry, so several servers in one
process (tests) share them: tests compare values before and after.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _LoopCounts(Collector):
    """A counter per label set, recorded without locks.

    For what is recorded on every RPC and every vendor call: prometheus_client
    takes a lock per increment and walks the buckets in Python, ~15 µs of server
    CPU per GetJob in the benchmark. These are recorded from the event-loop
    thread only, so plain integers are enough; Prometheus reads them through
    ``collect`` like any other metric.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._values: dict[tuple[str, ...], list[int]] = {}

    def labels(self, *values: str) -> list[int]:
        """The count for these label values: ``count[0] += 1`` records one."""
        return self._values.setdefault(values, [0])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, count in list(self._values.items()):
            family.add_metric(values, count[0])
        yield family


class _LoopHistogram(Collector):
    """A latency histogram per label set, recorded without locks (see ``_LoopCounts``)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._bounds = list(buckets)
        self._series: dict[tuple[str, ...], _Series] = {}

    def labels(self, *values: str) -> _Series:
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = _Series(self._bounds)
        return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [*(str(float(b)) for b in self._bounds), "+Inf"]
        for values, series in list(self._series.items()):
            cumulative, total = [], 0
            for count in series.counts:
                total += count
                cumulative.append(total)
            family.add_metric(values, list(zip(bounds, cumulative, strict=True)), series.sum)
        yield family


class _Series:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        if not math.isnan(seconds):
            self.counts[bisect.bisect_left(self._bounds, seconds)] += 1
            self.sum += seconds


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

VENDOR_CALLS = _LoopCounts("mediagen_vendor_calls", "HTTP calls to vendors", ("provider", "method", "outcome"))
VENDOR_LATENCY = _LoopHistogram(
    "mediagen_vendor_call_seconds", "Vendor HTTP call latency", ("provider", "method"), _LATENCY_BUCKETS
)
VENDOR_RETRIES = Counter("mediagen_vendor_retries", "Vendor calls retried", ["provider", "reason"])

RPCS = _LoopCounts("mediagen_grpc_server_handled", "RPCs completed", ("grpc_service", "grpc_method", "grpc_code"))
RPC_LATENCY = _LoopHistogram(
    "mediagen_grpc_server_handling_seconds",
    "RPC handling time (streams: until the stream ends)",
    ("grpc_service", "grpc_method"),
    _LATENCY_BUCKETS,
)
for _metric in (VENDOR_CALLS, VENDOR_LATENCY, RPCS, RPC_LATENCY):
    REGISTRY.register(_metric)


def vendor_call(provider: str, method: str, status: int | None, seconds: float, error: str = "") -> None:
    outcome = error or (f"{status // 100}xx" if status else "no_answer")
    VENDOR_CALLS.labels(provider, method, outcome)[0] += 1
    VENDOR_LATENCY.labels(provider, method).observe(seconds)
