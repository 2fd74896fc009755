"""Around every RPC: bearer-token auth (server.auth) and metrics, wrapped once per method.

grpc.aio's ``ServerInterceptor`` runs its chain on every call and can act around
a handler only by building a new handler each time; with two interceptors that
was ~35 µs of server CPU on a GetJob that grpc.aio itself serves in ~170 µs
(bench/README.md). Instead the server registers every service through
``Instrumented``, which wraps each method's handler once, at start-up, in one
function that checks the caller's token, sets the tenant, and records the
call's final code and duration.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from providers import metrics
from server.auth import BearerTokens, current_tenant


def _kind(handler: grpc.RpcMethodHandler) -> str:
    return ("stream" if handler.request_streaming else "unary") + "_" + ("stream" if handler.response_streaming else "unary")


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serialisers as ``handler`` running ``behavior``."""
    make = getattr(grpc, f"{_kind(handler)}_rpc_method_handler")
    return make(behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


class Instrumented:
    """Stands in for the ``grpc.aio.Server`` in ``add_<Service>Servicer_to_server`` calls.

    ``tokens``: when set, every method but those ``BearerTokens.is_open`` names
    needs a valid bearer token.
    """

    def __init__(self, server: grpc.aio.Server, tokens: BearerTokens | None = None) -> None:
        self._server = server
        self._tokens = tokens

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(
            service_name, {name: self.wrap(f"/{service_name}/{name}", h) for name, h in method_handlers.items()}
        )

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self.wrap) for h in handlers))

    def wrap(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """``handler`` (for the method ``/<service>/<method>``) with auth and metrics around it."""
        _, service, method = path.split("/", 2)
        tokens = self._tokens if self._tokens is not None and not self._tokens.is_open(path) else None
        latency = metrics.RPC_LATENCY.labels(service, method)
        handled: dict[str, list[int]] = {}
        inner = getattr(handler, _kind(handler))

        async def admit(context: grpc.aio.ServicerContext) -> None:
            assert tokens is not None
            tenant, refusal = tokens.admit(context.invocation_metadata())
            if refusal is not None:
                await context.abort_with_status(refusal)
            current_tenant.set(tenant)

        def finish(context: grpc.aio.ServicerContext, started: float) -> None:
            code = context.code() or grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            counter = handled.get(name)
            if counter is None:
                counter = handled[name] = metrics.RPCS.labels(service, method, name)
            counter[0] += 1
            latency.observe(time.perf_counter() - started)

        if handler.response_streaming:

            async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    if tokens is not None:
                        await admit(context)
                    result = inner(request, context)
                    if inspect.isasyncgen(result):
                        async for response in result:
                            yield response
                    else:  # a servicer that writes with context.write() returns a coroutine
                        await result
                finally:
                    finish(context, started)

            return _rebuild(handler, streaming)

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                if tokens is not None:
                    await admit(context)
                return await inner(request, context)
            finally:
                finish(context, started)

        return _rebuild(handler, unary)


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come out wrapped (once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path: str = handler_call_details.method  # type: ignore[attr-defined]
        if path not in self._wrapped:
            handler = self._inner.service(handler_call_details)
            # Unknown methods are not remembered: a caller could fill the dict with names.
            if handler is None:
                return None
            self._wrapped[path] = self._wrap(path, handler)
        return self._wrapped[path]
