"""The one small async interface every vendor adapter implements.

A job goes through a provider as::

    handle = await provider.submit(request, ctx)        # the paid call
    while True:
        result = await provider.poll(handle, ctx)       # VendorState + progress
        if result.done: break
        await sleep(result.poll_after or interval)
    for output in result.outputs:
        async with provider.open_output(handle, output, ctx) as chunks:
            await storage.write(key, chunks)            # streamed, hashed, atomic

Vendors that answer at once (text-to-speech, most image APIs) fit the same shape:
``submit`` may return a handle whose first ``poll`` already reports SUCCEEDED,
and ``open_output`` may be where the bytes are produced. Everything in a
``VendorHandle`` must be JSON-serialisable: it is stored with the job so that a
restarted server can resume polling without submitting again.

``request`` is the caller's Generate<Media>Request protobuf message as received
(already validated against the provider's catalog limits).
"""

from __future__ import annotations

import abc
import enum
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.message import Message

from mediagen.v1 import catalog_pb2, common_pb2
from providers.errors import FieldViolation, InvalidArgument

if TYPE_CHECKING:
    from providers.inputs import InputMedia

MICROS = 1_000_000


class VendorState(enum.Enum):
    QUEUED = "queued"  # accepted, waiting in the vendor's queue
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self in (VendorState.SUCCEEDED, VendorState.FAILED, VendorState.CANCELLED)


@dataclass
class JobContext:
    """What an adapter may know about the job it works for."""

    job_id: str
    # Absolute time.monotonic() by which the whole job must end; None: no deadline.
    deadline: float | None = None
    # Stable per job: pass it as the vendor's idempotency key where one exists.
    idempotency_key: str = ""
    attempt: int = 1
    # The request's input_image, resolved by the server before submit (inline
    # bytes, the caller's URL or an uploaded asset); None when it has none.
    # See providers.inputs. Never stored: a resumed job resolves it again.
    input_image: InputMedia | None = None

    def time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()


@dataclass
class VendorHandle:
    """The vendor's handle on a submitted job. JSON-serialisable; stored with the job."""

    vendor_job_id: str
    # Adapter-specific data needed to poll, cancel or fetch (status URLs, model...).
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"vendor_job_id": self.vendor_job_id, "data": self.data}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> VendorHandle:
        return cls(vendor_job_id=value.get("vendor_job_id", ""), data=dict(value.get("data") or {}))


@dataclass
class Output:
    """One result of a finished vendor job, before it is stored."""

    # Where to fetch it (vendor output URL), when the vendor gives one.
    url: str = ""
    content_type: str = ""
    # Facts worth keeping on the Artifact: licence, attribution, revised prompt...
    metadata: dict[str, str] = field(default_factory=dict)
    # Adapter-specific data for open_output (e.g. index of an inline base64 image).
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProgressInfo:
    fraction: float | None = None
    vendor_status: str = ""
    queue_position: int | None = None
    eta_seconds: float | None = None
    message: str = ""


@dataclass
class VendorUsage:
    """What the vendor reported it charged, when it does (credits, characters)."""

    units: float
    unit: int  # common_pb2.PriceUnit
    unit_price_micros: int


@dataclass
class PollResult:
    state: VendorState
    progress: ProgressInfo = field(default_factory=ProgressInfo)
    outputs: list[Output] = field(default_factory=list)
    # Set when state is FAILED: the classified error (ProviderJobFailed, ContentRejected...).
    error: Exception | None = None
    usage: VendorUsage | None = None
    # Seconds the vendor asked us to wait before the next poll, if it said.
    poll_after: float | None = None

    @property
    def done(self) -> bool:
        return self.state.done


@dataclass
class StoredArtifact:
    """What storage and probing found out about one stored output."""

    index: int
    uri: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    duration_seconds: float = 0.0
    width: int = 0
    height: int = 0
    sample_rate_hz: int = 0
    channels: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


class Provider(abc.ABC):
    """A vendor adapter. One instance per provider, shared by all jobs."""

    #: Stable id used in requests and the catalog, e.g. "runway".
    name: str
    display_name: str = ""
    media_type: int  # common_pb2.MediaType
    #: Names of the environment variables that configure it (first one is preferred).
    credential_env: tuple[str, ...] = ()
    #: Lower comes first when the server picks a default among configured vendors.
    preference: int = 100

    # --- catalog ---------------------------------------------------------

    @abc.abstractmethod
    def describe(self) -> catalog_pb2.Provider:
        """Catalog entry: capabilities, limits, prices, models, retired.

        ``configured`` / ``not_configured_reason`` must be filled in here too.
        """

    def is_configured(self) -> tuple[bool, str]:
        """(configured, why not). Default: from ``describe()``."""
        entry = self.describe()
        return entry.configured, entry.not_configured_reason

    def default_model(self) -> str:
        entry = self.describe()
        for model in entry.models:
            if model.default:
                return model.name
        return entry.models[0].name if entry.models else ""

    # --- before any vendor call -------------------------------------------

    def validate(self, request: Message) -> None:
        """Raise InvalidArgument (with field violations) for what this provider cannot do.

        The default checks the generic catalog limits; adapters extend it.
        """
        violations = check_limits(self.describe().limits, request)
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                metadata={"provider": self.name},
                field_violations=violations,
            )

    def validate_input(self, request: Message, media: InputMedia) -> None:
        """Check the request's resolved input image (type, bytes, pixels, and whether the
        vendor can be given it in a form it takes) before any vendor call.

        Raises InvalidArgument, or FailedPrecondition when the server's set-up
        rules the input out (a URL-only vendor and an asset on local storage).
        The default checks the catalog's max_input_bytes / max_input_pixels and,
        for a provider whose only input form is "url", that a URL can be had.
        Adapters extend it with their own rules (formats, exact sizes...).
        """
        from providers.inputs import no_public_url

        limits = self.describe().limits
        violations = input_limit_problems(limits, media)
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                metadata={"provider": self.name},
                field_violations=violations,
            )
        if list(limits.input_forms) == ["url"] and not media.may_have_public_url:
            raise no_public_url(media, self.name)

    @abc.abstractmethod
    def estimate_cost(self, request: Message, model: str) -> common_pb2.Cost:
        """Cost before the job runs, from the published price."""

    def final_cost(
        self,
        request: Message,
        model: str,
        result: PollResult,
        artifacts: list[StoredArtifact],
    ) -> common_pb2.Cost:
        """Cost of a finished job. Default: vendor-reported usage, else the estimate."""
        if result.usage is not None:
            return make_cost(
                result.usage.units,
                result.usage.unit,
                result.usage.unit_price_micros,
                common_pb2.COST_BASIS_VENDOR_REPORTED,
            )
        cost = self.estimate_cost(request, model)
        cost.basis = common_pb2.COST_BASIS_MEASURED if cost.basis != common_pb2.COST_BASIS_FREE else cost.basis
        return cost

    # --- the job ----------------------------------------------------------

    @abc.abstractmethod
    async def submit(self, request: Message, model: str, ctx: JobContext) -> VendorHandle:
        """Start the job at the vendor. Raises a ProviderError subclass on failure."""

    @abc.abstractmethod
    async def poll(self, handle: VendorHandle, ctx: JobContext) -> PollResult:
        """Ask the vendor where the job is."""

    async def cancel(self, handle: VendorHandle, ctx: JobContext) -> bool:
        """Cancel at the vendor where it has a cancel call. True when forwarded."""
        return False

    @abc.abstractmethod
    def open_output(
        self, handle: VendorHandle, output: Output, ctx: JobContext
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Open one output as a byte stream (never the whole file in memory)."""

    async def aclose(self) -> None:
        """Release pooled connections."""

    # Submitting twice is safe when the vendor takes an idempotency key; the
    # runner then retries a submit whose outcome is unknown after a restart.
    submit_is_idempotent: bool = False


def provider_options(request: Message) -> dict[str, Any]:
    """The request's free-form ``provider_options`` as plain values ({} when unset)."""
    if not request.HasField("provider_options"):
        return {}
    return json_format.MessageToDict(request.provider_options)


def make_cost(units: float, unit: int, unit_price_micros: int, basis: int) -> common_pb2.Cost:
    return common_pb2.Cost(
        amount_micros=int(round(units * unit_price_micros)),
        currency_code="USD",
        units=units,
        unit=unit,
        unit_price_micros=unit_price_micros,
        basis=basis,
    )


def usd(amount: float) -> int:
    """Dollars to micros, for price tables written in dollars."""
    return int(round(amount * MICROS))


def _has(request: Message, name: str) -> bool:
    return name in request.DESCRIPTOR.fields_by_name


def check_limits(limits: catalog_pb2.ProviderLimits, request: Message) -> list[FieldViolation]:
    """Generic checks of a Generate request against a provider's catalog limits."""
    out: list[FieldViolation] = []
    if _has(request, "duration_seconds") and request.duration_seconds:
        d = request.duration_seconds
        if limits.allowed_durations_seconds and not any(
            abs(d - a) < 1e-6 for a in limits.allowed_durations_seconds
        ):
            allowed = ", ".join(f"{a:g}" for a in limits.allowed_durations_seconds)
            out.append(FieldViolation("duration_seconds", f"must be one of {allowed}", "UNSUPPORTED_VALUE"))
        elif limits.max_duration_seconds and d > limits.max_duration_seconds + 1e-6:
            out.append(
                FieldViolation(
                    "duration_seconds", f"at most {limits.max_duration_seconds:g} for this provider", "OUT_OF_RANGE"
                )
            )
        elif limits.min_duration_seconds and d < limits.min_duration_seconds - 1e-6:
            out.append(
                FieldViolation(
                    "duration_seconds", f"at least {limits.min_duration_seconds:g} for this provider", "OUT_OF_RANGE"
                )
            )
    if _has(request, "aspect_ratio") and request.aspect_ratio and limits.aspect_ratios:
        if request.aspect_ratio not in limits.aspect_ratios:
            out.append(
                FieldViolation(
                    "aspect_ratio", "must be one of " + ", ".join(limits.aspect_ratios), "UNSUPPORTED_VALUE"
                )
            )
    if _has(request, "width") and request.width and request.height and limits.sizes:
        size = f"{request.width}x{request.height}"
        if size not in limits.sizes:
            out.append(FieldViolation("width", "size must be one of " + ", ".join(limits.sizes), "UNSUPPORTED_VALUE"))
    if _has(request, "prompt") and limits.max_prompt_characters:
        if len(request.prompt) > limits.max_prompt_characters:
            out.append(FieldViolation("prompt", f"at most {limits.max_prompt_characters} characters", "TOO_LONG"))
    if _has(request, "count") and limits.max_count and request.count > limits.max_count:
        out.append(FieldViolation("count", f"at most {limits.max_count} for this provider", "OUT_OF_RANGE"))
    if _has(request, "input_image"):
        has_image = request.HasField("input_image")
        if limits.input_image_required and not has_image:
            out.append(FieldViolation("input_image", "required by this provider (image-to-video only)", "REQUIRED"))
        if has_image and request.input_image.WhichOneof("source") == "data" and limits.max_input_bytes:
            if len(request.input_image.data) > limits.max_input_bytes:
                out.append(
                    FieldViolation("input_image.data", f"at most {limits.max_input_bytes} bytes", "TOO_LARGE")
                )
    if _has(request, "format") and limits.formats and request.format:
        name = format_name(request)
        if name not in limits.formats:
            out.append(FieldViolation("format", "must be one of " + ", ".join(limits.formats), "UNSUPPORTED_VALUE"))
    return out


def input_limit_problems(limits: catalog_pb2.ProviderLimits, media: InputMedia) -> list[FieldViolation]:
    """The resolved input against the catalog's max_input_bytes and max_input_pixels."""
    out: list[FieldViolation] = []
    if limits.max_input_bytes and media.size is not None and media.size > limits.max_input_bytes:
        out.append(
            FieldViolation(
                media.field, f"at most {limits.max_input_bytes} bytes for this provider ({media.size} given)", "TOO_LARGE"
            )
        )
    if limits.max_input_pixels and media.pixels > limits.max_input_pixels:
        out.append(
            FieldViolation(
                media.field,
                f"at most {limits.max_input_pixels} pixels for this provider ({media.width}x{media.height} given)",
                "TOO_LARGE",
            )
        )
    return out


def format_name(request: Message) -> str:
    """'mp3', 'wav', 'png'... from a request's AudioFormat/ImageFormat enum ('' when unset)."""
    if not _has(request, "format") or not request.format:
        return ""
    enum_type = request.DESCRIPTOR.fields_by_name["format"].enum_type
    value = enum_type.values_by_number[request.format].name
    return value.split("_FORMAT_", 1)[1].lower()
