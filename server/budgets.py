"""Spending limits per tenant (and for everyone), per UTC day or month.

Configured as ``budgets = "acme:day:50, acme:month:900, *:month:5000"`` —
tenant (``*`` for the global budget), period, and the limit in USD. At
admission a job's estimate is reserved against every budget that applies, in
the same store transaction that creates the job (see JobStore.create); when the
job ends, its reservation becomes its final cost.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from server.store import BudgetCheck

PERIODS = ("day", "month")


@dataclass(frozen=True)
class Budget:
    tenant: str | None  # None: everyone together
    period: str
    limit_micros: int

    @property
    def label(self) -> str:
        who = "all tenants" if self.tenant is None else f"tenant {self.tenant or '(default)'}"
        return f"{who}, {self.period}"


def parse_budgets(spec: str) -> list[Budget]:
    budgets = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError("budgets: each entry must be tenant:period:usd, e.g. acme:day:50")
        tenant, period, amount = (p.strip() for p in parts)
        if period not in PERIODS:
            raise ValueError(f"budgets: period must be one of {', '.join(PERIODS)}")
        try:
            usd = float(amount)
        except ValueError:
            raise ValueError(f"budgets: {amount!r} is not an amount in USD") from None
        if not usd >= 0:
            raise ValueError("budgets: amounts must not be negative")
        budgets.append(Budget(None if tenant == "*" else tenant, period, int(round(usd * 1_000_000))))
    return budgets


def period_start(period: str, now: datetime.datetime | None = None) -> datetime.datetime:
    now = now or datetime.datetime.now(datetime.UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def checks_for(budgets: list[Budget], tenant: str) -> list[BudgetCheck]:
    """The budget checks a new job of ``tenant`` must pass now."""
    checks = []
    for budget in budgets:
        if budget.tenant is not None and budget.tenant != tenant:
            continue
        since = int(period_start(budget.period).timestamp() * 1e9)
        checks.append(BudgetCheck(budget.tenant, budget.limit_micros, since, budget.label))
    return checks
