"""Typed errors raised by the mediagen client.

Every failure surfaces as a ``MediagenError``; raw ``grpc.RpcError`` never
escapes the client. The class is picked by the canonical gRPC code, and the
``google.rpc.Status`` details the server sends are unpacked onto it::

    MediagenError                     .code .reason .domain .metadata .message
    ├── InvalidArgumentError          INVALID_ARGUMENT  (.field_violations)
    ├── FailedPreconditionError       FAILED_PRECONDITION
    ├── OutOfRangeError               OUT_OF_RANGE
    ├── NotFoundError                 NOT_FOUND
    ├── AlreadyExistsError            ALREADY_EXISTS
    ├── AbortedError                  ABORTED
    ├── ResourceExhaustedError        RESOURCE_EXHAUSTED (.retry_delay, .quota_violations)
    ├── UnauthenticatedError          UNAUTHENTICATED
    ├── PermissionDeniedError         PERMISSION_DENIED
    ├── JobCancelledError             CANCELLED (named so it does not shadow asyncio's)
    ├── DeadlineExceededError         DEADLINE_EXCEEDED
    │   └── WaitTimeoutError          ``wait`` gave up before the job ended (client side)
    ├── UnavailableError              UNAVAILABLE (.retry_delay)
    ├── UnimplementedError            UNIMPLEMENTED
    ├── InternalError                 INTERNAL
    ├── UnknownError                  UNKNOWN
    ├── DataLossError                 DATA_LOSS
    │   └── DownloadVerificationError a download did not match its size or sha256 (client side)
    └── JobFailedError                a job ended FAILED or CANCELLED; ``.job`` holds it

Clients should branch on ``reason`` (stable, UPPER_SNAKE), never on the message.
``domain`` is "mediagen.v1" for errors the server reported and empty for the
few the client raises itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from mediagen.v1 import common_pb2

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "DataLossError",
    "DeadlineExceededError",
    "DownloadVerificationError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "JobCancelledError",
    "JobFailedError",
    "MediagenError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "QuotaViolation",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "WaitTimeoutError",
    "from_rpc_error",
    "from_status",
]


class FieldViolation(NamedTuple):
    """One bad request field, from ``google.rpc.BadRequest``."""

    field: str
    description: str
    reason: str


class QuotaViolation(NamedTuple):
    """One exceeded quota, from ``google.rpc.QuotaFailure``."""

    subject: str
    description: str


_CLASS_FOR_CODE: dict[grpc.StatusCode, type[MediagenError]] = {}


class MediagenError(Exception):
    """Base of every error the client raises.

    Attributes:
        message: The server's developer-facing message.
        code: The canonical gRPC status code.
        reason: ``ErrorInfo.reason``, e.g. "PROVIDER_RATE_LIMITED"; None when
            the status carried no ErrorInfo (e.g. a connection failure).
        domain: ``ErrorInfo.domain``; "mediagen.v1" for server errors.
        metadata: ``ErrorInfo.metadata`` (camelCase keys).
        field_violations: ``BadRequest`` field violations, in order.
        quota_violations: ``QuotaFailure`` violations, in order.
        retry_delay: Seconds to wait before trying again (``RetryInfo``), or None.
        status: The whole ``google.rpc.Status``, when there was one.
    """

    grpc_status_code: ClassVar[grpc.StatusCode | None] = None

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The hierarchy is the code -> class table (api-core style); only the
        # first class declaring a code owns it, so client-side subclasses
        # such as WaitTimeoutError do not take over.
        code = cls.__dict__.get("grpc_status_code")
        if code is not None:
            _CLASS_FOR_CODE.setdefault(code, cls)

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
        retry_delay: float | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: grpc.StatusCode = code or self.grpc_status_code or grpc.StatusCode.UNKNOWN
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[FieldViolation] = list(field_violations)
        self.quota_violations: list[QuotaViolation] = list(quota_violations)
        self.retry_delay = retry_delay
        self.status = status

    def __str__(self) -> str:
        return f"{self.reason or self.code.name}: {self.message}"


class InvalidArgumentError(MediagenError):
    grpc_status_code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPreconditionError(MediagenError):
    grpc_status_code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRangeError(MediagenError):
    grpc_status_code = grpc.StatusCode.OUT_OF_RANGE


class NotFoundError(MediagenError):
    grpc_status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(MediagenError):
    grpc_status_code = grpc.StatusCode.ALREADY_EXISTS


class AbortedError(MediagenError):
    grpc_status_code = grpc.StatusCode.ABORTED


class ResourceExhaustedError(MediagenError):
    grpc_status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnauthenticatedError(MediagenError):
    grpc_status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(MediagenError):
    grpc_status_code = grpc.StatusCode.PERMISSION_DENIED


class JobCancelledError(MediagenError):
    grpc_status_code = grpc.StatusCode.CANCELLED


class DeadlineExceededError(MediagenError):
    grpc_status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(MediagenError):
    grpc_status_code = grpc.StatusCode.UNAVAILABLE


class UnimplementedError(MediagenError):
    grpc_status_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(MediagenError):
    grpc_status_code = grpc.StatusCode.INTERNAL


class UnknownError(MediagenError):
    grpc_status_code = grpc.StatusCode.UNKNOWN


class DataLossError(MediagenError):
    grpc_status_code = grpc.StatusCode.DATA_LOSS


class WaitTimeoutError(DeadlineExceededError):
    """``wait`` gave up before the job ended. The job itself goes on (unless cancelled)."""

    def __init__(self, job_id: str, timeout: float, job: common_pb2.Job | None) -> None:
        super().__init__(
            f"job {job_id} did not end within {timeout:g} s",
            reason="WAIT_TIMEOUT",
            metadata={"jobId": job_id},
        )
        self.job_id = job_id
        #: The job as last seen, or None when it was never read.
        self.job = job


class DownloadVerificationError(DataLossError):
    """The downloaded bytes do not match the size or sha256 the server announced."""

    def __init__(self, message: str, *, reason: str, path: str) -> None:
        super().__init__(message, reason=reason, metadata={"path": path})
        self.path = path


class JobFailedError(MediagenError):
    """A job ended without succeeding (FAILED, or CANCELLED).

    ``code``, ``reason``, ``retry_delay``... are decoded from ``job.error``, so a
    rate-limited job reads like the RESOURCE_EXHAUSTED error it failed with.
    """

    def __init__(self, job: common_pb2.Job) -> None:
        cause = from_status(job.error) if job.HasField("error") else None
        state = common_pb2.JobState.Name(job.state)
        message = cause.message if cause else f"job {job.id} ended {state}"
        super().__init__(
            message,
            code=cause.code if cause else grpc.StatusCode.UNKNOWN,
            reason=cause.reason if cause else None,
            domain=cause.domain if cause else "",
            metadata=cause.metadata if cause else None,
            field_violations=cause.field_violations if cause else (),
            quota_violations=cause.quota_violations if cause else (),
            retry_delay=cause.retry_delay if cause else None,
            status=job.error if cause else None,
        )
        self.job = job

    def __str__(self) -> str:
        return f"job {self.job.id} {common_pb2.JobState.Name(self.job.state)}: {super().__str__()}"


def _code_from_number(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


def from_status(status: status_pb2.Status) -> MediagenError:
    """Build the typed error a ``google.rpc.Status`` (e.g. ``Job.error``) stands for."""
    code = _code_from_number(status.code)
    return _build(code, status.message, status)


def from_rpc_error(error: grpc.RpcError) -> MediagenError:
    """Build the typed error for a failed call, unpacking its rich status if it has one.

    Works for ``grpc.aio.AioRpcError`` and sync ``grpc.Call`` errors alike: both
    expose ``code()``, ``details()`` and ``trailing_metadata()``.
    """
    call: grpc.Call = error  # type: ignore[assignment]
    code = call.code() or grpc.StatusCode.UNKNOWN
    message = call.details() or ""
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        # The rich status contradicts the call's own code: trust the call.
        status = None
    return _build(code, message, status)


def _build(code: grpc.StatusCode, message: str, status: status_pb2.Status | None) -> MediagenError:
    reason: str | None = None
    domain = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    quota: list[QuotaViolation] = []
    retry_delay: float | None = None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        failure = error_details_pb2.QuotaFailure()
        if detail.Unpack(info):
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Unpack(bad):
            violations.extend(FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations)
        elif detail.Unpack(retry):
            retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Unpack(failure):
            quota.extend(QuotaViolation(v.subject, v.description) for v in failure.violations)
    cls = _CLASS_FOR_CODE.get(code, MediagenError)
    return cls(
        message,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
        quota_violations=quota,
        retry_delay=retry_delay,
        status=status,
    )
