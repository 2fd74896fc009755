"""How the client retries: only UNAVAILABLE, few attempts, full-jitter backoff.

Unary calls that are safe to repeat (Get, List, Cancel, ListProviders, and
Generate, which always carries a request_id) are retried when the server or
the connection is UNAVAILABLE, within the call's overall deadline. Nothing else
is retried (AIP-194): INVALID_ARGUMENT, DEADLINE_EXCEEDED... are answers, not
accidents. Streams are not re-sent blindly either: Watch reconnects after the
last sequence number it saw and Download after the last byte it wrote, and the
same policy paces those reconnections.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["DEFAULT_RETRY", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retried calls and reconnected streams.

    Attributes:
        attempts: Tries in all, the first included (1 disables retrying). For
            streams: consecutive breaks survived without receiving anything.
        initial: Cap of the first delay, in seconds.
        maximum: Largest cap; also the longest server ``RetryInfo`` delay the
            client is willing to sleep for (longer ones are raised at once).
        multiplier: Growth of the cap from one retry to the next.
    """

    attempts: int = 5
    initial: float = 0.25
    maximum: float = 4.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not 0 <= self.initial <= self.maximum:
            raise ValueError("need 0 <= initial <= maximum")

    def delay(self, retry: int, server_delay: float | None = None) -> float | None:
        """Seconds to sleep before retry number ``retry`` (1 for the first), or None to give up.

        Full jitter: uniform between 0 and the cap, so clients that failed
        together do not come back together. A server's ``RetryInfo`` delay is
        a floor.
        """
        if retry >= self.attempts:
            return None
        if server_delay is not None and server_delay > self.maximum:
            return None
        cap = min(self.initial * self.multiplier ** (retry - 1), self.maximum)
        return max(random.uniform(0.0, cap), server_delay or 0.0)


DEFAULT_RETRY = RetryPolicy()
