"""Server interceptors: bearer-token auth (server.auth) and RPC metrics.

gRPC aio interceptors see the handler before it runs; to act around the
handler itself (set the tenant, time the call, read its final status) they
wrap its behaviour in a new handler of the same kind. ``wrap`` does that once
for all four kinds of RPC.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import grpc

from providers import metrics

# around(context, run) must await run() and return its result.
Around = Callable[[grpc.aio.ServicerContext, Callable[[], Awaitable[None]]], Awaitable[None]]


def _kind(handler) -> str:
    return ("stream" if handler.request_streaming else "unary") + "_" + ("stream" if handler.response_streaming else "unary")


def rebuild(handler, behavior):
    """A handler of the same kind and serialisers as ``handler`` running ``behavior``."""
    make = getattr(grpc, f"{_kind(handler)}_rpc_method_handler")
    return make(behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def behavior_of(handler):
    return getattr(handler, _kind(handler))


def wrap(handler, before: Callable[[grpc.aio.ServicerContext], object], after: Callable[[grpc.aio.ServicerContext], object] | None = None):
    """Run ``before(context)`` ahead of the handler and ``after(context)`` once it is done."""
    inner = behavior_of(handler)
    if handler.response_streaming:

        async def streaming(request, context):
            before(context)
            try:
                result = inner(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                else:  # a servicer that writes with context.write() returns a coroutine
                    await result
            finally:
                if after is not None:
                    after(context)

        return rebuild(handler, streaming)

    async def unary(request, context):
        before(context)
        try:
            return await inner(request, context)
        finally:
            if after is not None:
                after(context)

    return rebuild(handler, unary)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC by service, method and final code, and times it."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return handler
        _, service, method = details.method.split("/", 2)
        started = [0.0]

        def before(context) -> None:
            started[0] = time.perf_counter()

        def after(context) -> None:
            code = context.code() or grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            metrics.RPCS.labels(service, method, name).inc()
            metrics.RPC_LATENCY.labels(service, method).observe(time.perf_counter() - started[0])

        return wrap(handler, before, after)
