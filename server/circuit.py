"""A circuit breaker per provider: stop sending to a vendor that keeps failing.

After ``threshold`` consecutive availability failures (5xx, timeouts, garbled
answers, refused credentials) the circuit opens: the router skips the
provider (or, if named explicitly, the request fails fast with
PROVIDER_CIRCUIT_OPEN) for ``cooldown`` seconds. Then it is half-open: jobs go
through again, the first success closes the circuit and the first counted
failure opens it again.
Errors about the request itself (invalid input, moderation) say nothing about
the vendor's health and are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mediagen.v1 import catalog_pb2
from providers.errors import ProviderAuthFailed, ProviderUnavailable

_COUNTED = (ProviderUnavailable, ProviderAuthFailed)


class CircuitBreaker:
    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> int:
        if self._opened_at is None:
            return catalog_pb2.CIRCUIT_STATE_CLOSED
        if self._clock() - self._opened_at >= self.cooldown:
            return catalog_pb2.CIRCUIT_STATE_HALF_OPEN
        return catalog_pb2.CIRCUIT_STATE_OPEN

    def allows(self) -> bool:
        """Whether a new job may be sent to the vendor now."""
        return self.state != catalog_pb2.CIRCUIT_STATE_OPEN

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def record_failure(self, error: BaseException) -> None:
        if not isinstance(error, _COUNTED):
            return
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.threshold:
            self._opened_at = self._clock()
