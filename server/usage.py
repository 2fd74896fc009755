"""UsageService: spend summed by tenant, provider, media type and period."""

from __future__ import annotations

import datetime
import time

from mediagen.v1 import usage_pb2, usage_pb2_grpc
from providers.errors import InvalidArgument
from server.auth import current_tenant
from server.budgets import Budget, period_start
from server.rpc_errors import rpc
from server.store import JobStore

_PERIODS = {usage_pb2.USAGE_PERIOD_UNSPECIFIED: "", usage_pb2.USAGE_PERIOD_DAY: "day", usage_pb2.USAGE_PERIOD_MONTH: "month"}
_DEFAULT_RANGE_NS = 30 * 24 * 3600 * 10**9


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, store: JobStore, budgets: list[Budget], auth_on: bool) -> None:
        self.store = store
        self.budgets = budgets
        self.auth_on = auth_on

    @rpc
    async def GetUsage(self, request, context):
        if request.period not in _PERIODS:
            raise InvalidArgument.field("period", "unknown period", "UNSUPPORTED_VALUE")
        dimensions = set(request.group_by)
        if not dimensions <= set(usage_pb2.UsageDimension.values()) - {0}:
            raise InvalidArgument.field("group_by", "unknown or unspecified dimension", "UNSUPPORTED_VALUE")
        end_ns = request.end_time.ToNanoseconds() if request.HasField("end_time") else time.time_ns()
        start_ns = request.start_time.ToNanoseconds() if request.HasField("start_time") else end_ns - _DEFAULT_RANGE_NS
        if start_ns >= end_ns:
            raise InvalidArgument.field("start_time", "must be before end_time", "OUT_OF_RANGE")
        # With authentication on a tenant sees its own spend only; off, everyone's.
        tenant = current_tenant.get() if self.auth_on else None
        groups = await self.store.usage(
            start_ns=start_ns,
            end_ns=end_ns,
            tenant=tenant,
            by_tenant=usage_pb2.USAGE_DIMENSION_TENANT in dimensions,
            by_provider=usage_pb2.USAGE_DIMENSION_PROVIDER in dimensions,
            by_media_type=usage_pb2.USAGE_DIMENSION_MEDIA_TYPE in dimensions,
            period=_PERIODS[request.period],
        )
        response = usage_pb2.GetUsageResponse(currency_code="USD")
        for group in groups:
            row = response.rows.add(
                tenant=group.tenant,
                provider=group.provider,
                media_type=group.media_type,
                job_count=group.job_count,
                spent_micros=group.spent_micros,
                reserved_micros=group.reserved_micros,
                currency_code="USD",
            )
            if request.period:
                row.period_start.FromNanoseconds(group.period_start_ns)
            response.total_spent_micros += group.spent_micros
            response.total_reserved_micros += group.reserved_micros
        for budget in self.budgets:
            if tenant is not None and budget.tenant not in (None, tenant):
                continue
            since = period_start(budget.period)
            spent, reserved = await self.store.spent(budget.tenant, int(since.timestamp() * 1e9))
            status = response.budgets.add(
                tenant=budget.tenant or "",
                period=usage_pb2.USAGE_PERIOD_DAY if budget.period == "day" else usage_pb2.USAGE_PERIOD_MONTH,
                limit_micros=budget.limit_micros,
                spent_micros=spent,
                reserved_micros=reserved,
                currency_code="USD",
            )
            status.period_start.FromDatetime(since.astimezone(datetime.UTC).replace(tzinfo=None))
        return response
