"""The one error tree of mediagen.

Every failure that reaches a caller is a ``MediagenError``: it knows its gRPC
status code, a stable UPPER_SNAKE ``reason`` (the thing clients match on) and
turns itself into a ``google.rpc.Status`` with exactly one ``ErrorInfo`` plus,
where they help, ``BadRequest``, ``RetryInfo`` and ``QuotaFailure``.

Providers raise these; the server maps them onto RPC errors and Job.error in one
place (``server.errors``). Messages must never contain a secret: they are passed
through ``providers.secrets.redact`` before they leave the process anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from providers.secrets import redact

ERROR_DOMAIN = "mediagen.v1"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str
    reason: str = "INVALID_FIELD"


@dataclass(frozen=True)
class QuotaViolation:
    subject: str
    description: str


class MediagenError(Exception):
    """Base of every error mediagen reports. Subclasses set ``code`` and ``reason``."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    # Whether doing the same thing again later may succeed (drives retries).
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        quota_violations: Iterable[QuotaViolation] = (),
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if retryable is not None:
            self.retryable = retryable
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items() if v}
        self.field_violations = list(field_violations)
        self.quota_violations = list(quota_violations)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.reason}: {redact(self.message)}"

    def to_status(self) -> status_pb2.Status:
        """The google.rpc.Status this error is reported as (secrets redacted)."""
        status = status_pb2.Status(code=_grpc_to_rpc_code(self.code), message=redact(self.message))
        info = error_details_pb2.ErrorInfo(
            reason=self.reason,
            domain=ERROR_DOMAIN,
            metadata={k: redact(v) for k, v in self.metadata.items()},
        )
        _pack(status, info)
        if self.field_violations:
            bad = error_details_pb2.BadRequest()
            for v in self.field_violations:
                bad.field_violations.add(
                    field=v.field, description=redact(v.description), reason=v.reason
                )
            _pack(status, bad)
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(max(self.retry_after, 0.0) * 1e9))
            _pack(status, error_details_pb2.RetryInfo(retry_delay=delay))
        if self.quota_violations:
            quota = error_details_pb2.QuotaFailure()
            for q in self.quota_violations:
                quota.violations.add(subject=q.subject, description=q.description)
            _pack(status, quota)
        return status


def _pack(status: status_pb2.Status, detail) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)


def _grpc_to_rpc_code(code: grpc.StatusCode) -> int:
    return code_pb2.Code.Value(code.name)


def error_from_status(status: status_pb2.Status) -> MediagenError:
    """Rebuild an error from a stored google.rpc.Status (for recovered jobs)."""
    err = MediagenError(status.message)
    err.code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            err.reason = info.reason
            err.metadata = dict(info.metadata)
    return err


# --- caller's request -------------------------------------------------------


class InvalidArgument(MediagenError):
    """The request is malformed; ``field_violations`` name the fields."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    @classmethod
    def field(cls, field: str, description: str, reason: str = "INVALID_FIELD") -> InvalidArgument:
        return cls(
            f"{field}: {description}",
            metadata={"field": field},
            field_violations=[FieldViolation(field, description, reason)],
        )


class NotFound(MediagenError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class FailedPrecondition(MediagenError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Unauthenticated(MediagenError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class ResourceExhausted(MediagenError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class BudgetExceeded(ResourceExhausted):
    reason = "BUDGET_EXCEEDED"


class JobCancelled(MediagenError):
    code = grpc.StatusCode.CANCELLED
    reason = "JOB_CANCELLED"


class JobDeadlineExceeded(MediagenError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "JOB_DEADLINE_EXCEEDED"


class InternalError(MediagenError):
    """A bug in mediagen. Never used for anything a caller or vendor did."""


# --- vendors ----------------------------------------------------------------


class ProviderError(MediagenError):
    """Base of vendor failures. Metadata carries provider, model and vendorRequestId."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "PROVIDER_ERROR"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        vendor_request_id: str = "",
        http_status: int | None = None,
        **kwargs,
    ) -> None:
        metadata = dict(kwargs.pop("metadata", None) or {})
        metadata.update(provider=provider, model=model, vendorRequestId=vendor_request_id)
        if http_status is not None:
            metadata["httpStatus"] = str(http_status)
        super().__init__(message, metadata=metadata, **kwargs)
        self.provider = provider
        self.model = model
        self.vendor_request_id = vendor_request_id
        self.http_status = http_status


class ProviderNotConfigured(ProviderError):
    """The provider's credentials are missing; the message names the variable."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "PROVIDER_NOT_CONFIGURED"


class ProviderRetired(ProviderError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "PROVIDER_RETIRED"


class ProviderAuthFailed(ProviderError):
    """The vendor refused our credentials (an operator problem, not the caller's)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "PROVIDER_AUTH_FAILED"


class ProviderOutOfCredit(ProviderError):
    """Account out of credit or quota exhausted: retrying will not help."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "PROVIDER_OUT_OF_CREDIT"


class ProviderRateLimited(ProviderError):
    """Too many requests; ``retry_after`` carries the vendor's Retry-After when given."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "PROVIDER_RATE_LIMITED"
    retryable = True


class ProviderInvalidRequest(ProviderError):
    """The vendor rejected a field; the message is the vendor's own."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "PROVIDER_INVALID_REQUEST"


class ContentRejected(ProviderError):
    """The vendor's moderation refused the prompt, input or output."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "CONTENT_REJECTED"


class ProviderUnavailable(ProviderError):
    """5xx, connection failure, timeout or a garbled answer: may work later."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "PROVIDER_UNAVAILABLE"
    retryable = True


class ProviderTimeout(ProviderUnavailable):
    reason = "PROVIDER_TIMEOUT"


class ProviderBadResponse(ProviderUnavailable):
    """The vendor answered something we cannot read (malformed JSON, missing fields)."""

    reason = "PROVIDER_BAD_RESPONSE"


class ProviderJobFailed(ProviderError):
    """The vendor accepted the job, then reported it failed."""

    code = grpc.StatusCode.ABORTED
    reason = "PROVIDER_JOB_FAILED"


class ProviderOutputUnavailable(ProviderUnavailable):
    """The result could not be fetched (404, expired URL, cut short after retries)."""

    reason = "PROVIDER_OUTPUT_UNAVAILABLE"


class OutputTooLarge(ProviderError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OUTPUT_TOO_LARGE"


class UnsafeOutputURL(ProviderError):
    """A URL we were asked to fetch (or call back) points somewhere we refuse to go.

    Plain http, or a host resolving to a private, loopback, link-local,
    multicast or otherwise non-public address (SSRF protection). Fetching the
    same URL again cannot help, and it is neither the caller's request nor a
    vendor outage: FAILED_PRECONDITION, like other operator-side conditions.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "OUTPUT_URL_REJECTED"


class SubmitOutcomeUnknown(ProviderError):
    """The server stopped while a submit was in flight to a vendor without idempotency."""

    code = grpc.StatusCode.ABORTED
    reason = "SUBMIT_OUTCOME_UNKNOWN"


# --- storage ----------------------------------------------------------------


class StorageError(MediagenError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "STORAGE_UNAVAILABLE"
    retryable = True


class StorageFull(StorageError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "STORAGE_FULL"
    retryable = False


class InvalidStorageKey(MediagenError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_STORAGE_KEY"
