"""The one place where errors become gRPC statuses.

Every servicer method is wrapped: a ``MediagenError`` is sent as its own code
with ``google.rpc.Status`` details (ErrorInfo, BadRequest, RetryInfo...); any
other exception is a bug, logged with its traceback and sent as INTERNAL with
no internals in the message.
"""

from __future__ import annotations

import functools
import inspect
import time

import grpc
import structlog
from grpc_status import rpc_status

from providers.errors import InternalError, MediagenError

log = structlog.get_logger("mediagen.rpc")


async def abort(context: grpc.aio.ServicerContext, err: MediagenError):
    await context.abort_with_status(rpc_status.to_status(err.to_status()))


def _as_error(exc: Exception, rpc: str) -> MediagenError:
    if isinstance(exc, MediagenError):
        return exc
    log.exception("rpc crashed", rpc=rpc)
    return InternalError("internal error; the server log has the details")


def rpc(method):
    """Wrap a unary or server-streaming servicer method with logging and error mapping."""
    name = method.__name__

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self, request, context):
            started = time.perf_counter()
            try:
                async for response in method(self, request, context):
                    yield response
            except MediagenError as exc:
                log.info("rpc failed", rpc=name, reason=exc.reason, ms=_ms(started))
                await abort(context, exc)
            except Exception as exc:
                await abort(context, _as_error(exc, name))

        return streaming

    @functools.wraps(method)
    async def unary(self, request, context):
        started = time.perf_counter()
        try:
            return await method(self, request, context)
        except MediagenError as exc:
            log.info("rpc failed", rpc=name, reason=exc.reason, ms=_ms(started))
            await abort(context, exc)
        except Exception as exc:
            await abort(context, _as_error(exc, name))

    return unary


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
