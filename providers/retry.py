"""The one retry policy of mediagen.

Every repeated vendor call goes through ``RetryPolicy.run``: the HTTP layer
(``providers.http``) for idempotent calls, and the job runner when it fetches
an output again. Keeping one loop keeps one behaviour:

- Only errors whose ``retryable`` is True are retried (``MediagenError.retryable``;
  the error class decides, e.g. ``ProviderRateLimited`` and ``ProviderUnavailable``).
- The wait is the vendor's ``Retry-After`` when the error carries one
  (``error.retry_after``), capped at ``max_retry_after``; otherwise exponential
  backoff with *full jitter*: a uniform random wait in ``[0, min(maximum,
  initial * multiplier ** (n - 1))]`` before retry ``n``. Full jitter spreads
  clients that failed together, so they do not come back together.
- Retrying stops after ``max_attempts`` calls, and before any wait that would
  end past the deadline (an absolute ``time.monotonic()``, as in
  ``JobContext.deadline``). When the vendor asked for a wait that ends past the
  deadline, the error is raised at once with its ``retry_after`` kept, so the
  caller's ``RetryInfo`` says how long the vendor wanted.

Example::

    policy = RetryPolicy(max_attempts=4)
    body = await policy.run(lambda: fetch_status(job_id), deadline=ctx.deadline)

Tests inject ``sleep``, ``clock`` and ``random`` to run without waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import math
import random as _random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from providers.errors import MediagenError

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
#: Called before each wait: (number of the attempt that failed, its error, seconds to wait).
OnRetry = Callable[[int, MediagenError, float], None]
#: Decides whether an error is retried; the default is ``error.retryable``.
RetryIf = Callable[[MediagenError], bool]

INITIAL_RETRY_DELAY = 0.5
RETRY_MULTIPLIER = 2.0
MAX_RETRY_DELAY = 30.0
MAX_RETRY_AFTER = 60.0
MAX_ATTEMPTS = 5


def _is_retryable(error: MediagenError) -> bool:
    return error.retryable


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff with full jitter, bounded by attempts and a deadline; honours Retry-After.

    Immutable: derive variants with ``with_options(...)``.
    """

    initial: float = INITIAL_RETRY_DELAY
    multiplier: float = RETRY_MULTIPLIER
    #: Largest backoff wait (without a Retry-After).
    maximum: float = MAX_RETRY_DELAY
    #: Largest wait granted to a vendor's Retry-After.
    max_retry_after: float = MAX_RETRY_AFTER
    #: Calls in total, the first one included.
    max_attempts: int = MAX_ATTEMPTS
    sleep: Sleep = field(default=asyncio.sleep, compare=False)
    #: Same time base as the deadline (``time.monotonic`` for ``JobContext.deadline``).
    clock: Clock = field(default=time.monotonic, compare=False)
    #: Uniform in [0, 1); replaced in tests for deterministic waits.
    random: Callable[[], float] = field(default=_random.random, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial < 0 or self.maximum < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def with_options(self, **changes) -> RetryPolicy:
        return dataclasses.replace(self, **changes)

    def backoff(self, retry_number: int) -> float:
        """Full-jitter wait before retry ``retry_number`` (1 for the first retry)."""
        exponent = max(retry_number - 1, 0)
        # min() before pow() overflow: 2.0 ** 2000 raises OverflowError.
        cap = (
            self.maximum
            if exponent > 64
            else min(self.maximum, self.initial * self.multiplier**exponent)
        )
        return self.random() * cap

    def delay_for(self, error: MediagenError, retry_number: int) -> float:
        """How long to wait before retrying after ``error``."""
        if error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.max_retry_after)
        return self.backoff(retry_number)

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        deadline: float | None = None,
        on_retry: OnRetry | None = None,
        retry_if: RetryIf | None = None,
    ) -> T:
        """Await ``fn()`` until it returns, retrying retryable ``MediagenError``s.

        Args:
            fn: makes a fresh awaitable for each attempt.
            deadline: absolute time on ``clock`` after which no retry starts.
            on_retry: told about each retry before its wait (logging, progress).
            retry_if: decides which errors are retried (default: ``error.retryable``).

        Raises:
            The last error when it may not be retried, attempts are used up, or
            the next wait would end past the deadline. Exceptions that are not
            ``MediagenError`` (bugs, cancellation) pass through untouched.
        """
        should_retry = retry_if or _is_retryable
        attempt = 1
        while True:
            try:
                return await fn()
            except MediagenError as error:
                if attempt >= self.max_attempts or not should_retry(error):
                    raise
                delay = self.delay_for(error, attempt)
                if deadline is not None:
                    # Judge the vendor's own figure, not the capped one: if it
                    # asks for longer than we have, a retry would only be refused.
                    needed = error.retry_after if error.retry_after is not None else delay
                    if self.clock() + needed >= deadline:
                        raise
                if on_retry is not None:
                    on_retry(attempt, error, delay)
                await self.sleep(delay)
                attempt += 1


DEFAULT_RETRY = RetryPolicy()


def parse_retry_after(header_value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    ``now`` is the reference wall-clock time (seconds since the epoch) for an
    HTTP-date; pass the response's ``Date`` so that clock skew between us and
    the vendor cancels out. A date in the past gives 0. Anything unreadable
    (or negative) gives None: the caller then falls back to its own backoff.
    """
    if header_value is None:
        return None
    value = header_value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are always GMT
        return None
    reference = time.time() if now is None else now
    return max(when.timestamp() - reference, 0.0)


def retry_after_from_headers(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """A response's requested wait: ``retry-after-ms`` first (OpenAI, ElevenLabs), then ``retry-after``.

    ``headers`` must look names up case-insensitively (``httpx.Headers`` does).
    When ``now`` is None the response's own ``Date`` header is the reference for
    an HTTP-date ``Retry-After``.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis)
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value / 1000.0
    if now is None:
        now = _date_header_time(headers.get("date"))
    return parse_retry_after(headers.get("retry-after"), now=now)


def _date_header_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp()
