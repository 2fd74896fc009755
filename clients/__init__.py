"""Python client and CLI of mediagen.

``AsyncMediagenClient`` (asyncio) and ``MediagenClient`` (blocking, built on
the async one) cover the five media services and the catalog, with helpers
to wait for a job and download its artifacts to files, verified::

    from clients import MediagenClient

    with MediagenClient("localhost:50051") as client:
        job = client.generate_and_wait("video", prompt="a red fox in the snow", duration_seconds=4)
        path = client.download_to("video", job.id, f"{job.id}.mp4")

Errors are the typed ``MediagenError`` tree of ``clients.errors``.
"""

from clients.client import DEFAULT_TARGET, DEFAULT_TIMEOUT, ENDED_STATES, AsyncMediagenClient
from clients.errors import (
    AbortedError,
    AlreadyExistsError,
    DataLossError,
    DeadlineExceededError,
    DownloadVerificationError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    JobCancelledError,
    JobFailedError,
    MediagenError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    QuotaViolation,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    WaitTimeoutError,
    from_rpc_error,
    from_status,
)
from clients.media import MEDIA_NAMES, Media, MediaLike
from clients.retry import DEFAULT_RETRY, RetryPolicy
from clients.sync import MediagenClient
from clients.webhooks import WebhookVerificationError, verify_webhook
from mediagen.v1.catalog_pb2 import Provider
from mediagen.v1.common_pb2 import Artifact, Job, JobEvent, JobState, MediaType

__all__ = [
    "WebhookVerificationError",
    "verify_webhook",
    "DEFAULT_RETRY",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "ENDED_STATES",
    "MEDIA_NAMES",
    "AbortedError",
    "AlreadyExistsError",
    "Artifact",
    "AsyncMediagenClient",
    "DataLossError",
    "DeadlineExceededError",
    "DownloadVerificationError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "JobCancelledError",
    "JobEvent",
    "JobFailedError",
    "JobState",
    "Media",
    "MediaLike",
    "MediaType",
    "MediagenClient",
    "MediagenError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "Provider",
    "QuotaViolation",
    "ResourceExhaustedError",
    "RetryPolicy",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "WaitTimeoutError",
    "from_rpc_error",
    "from_status",
]
