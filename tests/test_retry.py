"""The one retry policy: backoff with full jitter, Retry-After, attempts and deadlines.

A fake clock advances only when the policy sleeps, so nothing here waits.
"""

from __future__ import annotations

import email.utils

import pytest

from providers.errors import (
    InvalidArgument,
    ProviderOutOfCredit,
    ProviderRateLimited,
    ProviderUnavailable,
)
from providers.retry import RetryPolicy, parse_retry_after, retry_after_from_headers


class FakeClock:
    """Monotonic time that moves only when the code under test sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(clock: FakeClock, **options) -> RetryPolicy:
    # random() == 1.0 makes full jitter return its cap, so waits are exact.
    return RetryPolicy(sleep=clock.sleep, clock=clock, random=lambda: 1.0, **options)


class Script:
    """An async callable that raises the scripted errors, then returns ``result``."""

    def __init__(self, *errors: Exception, result: str = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


# --- parse_retry_after ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("1.5", 1.5),
        ("  7 ", 7.0),
        ("0", 0.0),
        ("-3", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_is_relative_to_now():
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == 30.0


def test_parse_retry_after_date_in_the_past_means_now():
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_retry_after_ms_wins_over_retry_after():
    assert retry_after_from_headers({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


def test_retry_after_date_is_measured_from_the_response_date():
    # Our clock may be off; the vendor's own Date header is the reference.
    sent = 1_800_000_000.0
    headers = {
        "date": email.utils.formatdate(sent, usegmt=True),
        "retry-after": email.utils.formatdate(sent + 12, usegmt=True),
    }
    assert retry_after_from_headers(headers) == 12.0


def test_unreadable_retry_after_ms_falls_back_to_retry_after():
    assert retry_after_from_headers({"retry-after-ms": "later", "retry-after": "4"}) == 4.0


# --- backoff ----------------------------------------------------------------------------


def test_backoff_doubles_from_half_a_second_up_to_the_maximum():
    clock = FakeClock()
    p = policy(clock)
    assert [p.backoff(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert p.backoff(10_000) == 30.0  # no overflow on absurd attempt numbers


def test_full_jitter_spans_zero_to_the_cap():
    p = RetryPolicy(random=lambda: 0.0)
    assert p.backoff(5) == 0.0
    p = RetryPolicy(random=lambda: 0.5)
    assert p.backoff(3) == 1.0


def test_invalid_policies_are_refused():
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(multiplier=0.5)


# --- run --------------------------------------------------------------------------------


async def test_retryable_errors_are_retried_until_success():
    clock = FakeClock()
    fn = Script(ProviderUnavailable("503"), ProviderUnavailable("502"))
    assert await policy(clock).run(fn) == "ok"
    assert fn.calls == 3
    assert clock.sleeps == [0.5, 1.0]


async def test_non_retryable_errors_are_raised_at_once():
    clock = FakeClock()
    fn = Script(ProviderOutOfCredit("no credit"))
    with pytest.raises(ProviderOutOfCredit):
        await policy(clock).run(fn)
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_attempts_are_bounded_and_the_last_error_is_raised():
    clock = FakeClock()
    errors = [ProviderUnavailable(f"try {n}") for n in range(1, 10)]
    fn = Script(*errors)
    with pytest.raises(ProviderUnavailable) as raised:
        await policy(clock, max_attempts=3).run(fn)
    assert fn.calls == 3
    assert raised.value is errors[2]
    assert len(clock.sleeps) == 2


async def test_retry_after_is_honoured():
    clock = FakeClock()
    fn = Script(ProviderRateLimited("slow down", retry_after=7.0))
    assert await policy(clock).run(fn) == "ok"
    assert clock.sleeps == [7.0]


async def test_retry_after_is_capped():
    clock = FakeClock()
    fn = Script(ProviderRateLimited("come back in an hour", retry_after=3600.0))
    await policy(clock, max_retry_after=60.0).run(fn)
    assert clock.sleeps == [60.0]


async def test_retry_after_past_the_deadline_raises_without_sleeping():
    clock = FakeClock()
    error = ProviderRateLimited("slow down", retry_after=30.0)
    fn = Script(error)
    with pytest.raises(ProviderRateLimited) as raised:
        await policy(clock).run(fn, deadline=clock.now + 10)
    assert raised.value.retry_after == 30.0  # the caller's RetryInfo keeps the vendor's figure
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_vendor_wait_beyond_the_cap_is_judged_uncapped_against_the_deadline():
    # The cap would let us retry after 60 s, but the vendor wants 600 s and we have 120.
    clock = FakeClock()
    fn = Script(ProviderRateLimited("slow down", retry_after=600.0))
    with pytest.raises(ProviderRateLimited):
        await policy(clock, max_retry_after=60.0).run(fn, deadline=clock.now + 120)
    assert clock.sleeps == []


async def test_backoff_stops_at_the_deadline():
    clock = FakeClock()
    deadline = clock.now + 5
    fn = Script(*[ProviderUnavailable("down") for _ in range(10)])
    with pytest.raises(ProviderUnavailable):
        await policy(clock, max_attempts=10).run(fn, deadline=deadline)
    # 0.5 + 1 + 2 = 3.5 s slept; the next wait (4 s) would end past the deadline.
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert clock.now < deadline


async def test_on_retry_hears_about_every_retry():
    clock = FakeClock()
    seen = []
    fn = Script(ProviderUnavailable("a"), ProviderRateLimited("b", retry_after=2.0))
    await policy(clock).run(fn, on_retry=lambda n, err, delay: seen.append((n, err.reason, delay)))
    assert seen == [(1, "PROVIDER_UNAVAILABLE", 0.5), (2, "PROVIDER_RATE_LIMITED", 2.0)]


async def test_retry_if_narrows_what_is_retried():
    clock = FakeClock()
    fn = Script(ProviderUnavailable("down"))
    with pytest.raises(ProviderUnavailable):
        await policy(clock).run(fn, retry_if=lambda err: False)
    assert fn.calls == 1


async def test_other_exceptions_are_not_retried():
    clock = FakeClock()
    fn = Script(KeyError("bug"))
    with pytest.raises(KeyError):
        await policy(clock).run(fn)
    assert fn.calls == 1


async def test_caller_errors_are_not_retried():
    clock = FakeClock()
    fn = Script(InvalidArgument.field("prompt", "required"))
    with pytest.raises(InvalidArgument):
        await policy(clock).run(fn)
    assert fn.calls == 1


def test_with_options_returns_a_changed_copy():
    base = RetryPolicy()
    changed = base.with_options(max_attempts=2)
    assert changed.max_attempts == 2
    assert base.max_attempts == 5
