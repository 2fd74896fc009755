"""Which provider a job goes to, and which ones it may fall back to.

A request that names a provider gets exactly that provider (no fallback). A
request that names none gets an ordered list of *candidates* by the
configured policy; only providers that are configured, not retired, not behind
an open circuit, and able to do the request (their own ``validate``) are
candidates. The first runs the job; the rest are its fallbacks, tried in order
(see server/runner.py). The list is stored with the job, so a restarted server
falls back the same way.
"""

from __future__ import annotations

from google.protobuf.message import Message

from mediagen.v1 import common_pb2
from providers.base import Provider
from providers.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MediagenError,
    ProviderUnavailable,
)
from providers.inputs import InputMedia
from providers.registry import MEDIA_NAMES, ProviderRegistry
from server.circuit import CircuitBreaker
from server.config import Settings


class Router:
    def __init__(self, registry: ProviderRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._breakers: dict[tuple[int, str], CircuitBreaker] = {}
        for name_list in settings.provider_order.values():
            for name in name_list:
                if not any(p.name == name for p in registry.all()):
                    raise ValueError(f"provider_order names unknown provider {name!r}")

    def breaker(self, media_type: int, name: str) -> CircuitBreaker:
        key = (media_type, name)
        if key not in self._breakers:
            self._breakers[key] = CircuitBreaker(self.settings.circuit_threshold, self.settings.circuit_cooldown)
        return self._breakers[key]

    def candidates(self, media_type: int, request: Message, media: InputMedia | None = None) -> list[Provider]:
        """Providers for this request, first choice first. Raises when there is none.

        ``media`` is the request's input image, resolved: each provider checks it
        too (type, size, and whether it can be handed over in a form the vendor takes).
        """
        if request.provider:
            provider = self.registry.resolve(media_type, request.provider)
            provider.validate(request)
            if media is not None:
                provider.validate_input(request, media)
            if not self.breaker(media_type, provider.name).allows():
                raise ProviderUnavailable(
                    f"provider {provider.name} is failing repeatedly; its circuit is open, try again later",
                    reason="PROVIDER_CIRCUIT_OPEN",
                    provider=provider.name,
                    retry_after=self.settings.circuit_cooldown,
                )
            return [provider]
        pool = self._pool(media_type)
        eligible: list[Provider] = []
        ruled_out: list[tuple[Provider, MediagenError | str]] = []
        for provider in pool:
            why = self._why_not(provider, request, media)
            if why is None:
                eligible.append(provider)
            else:
                ruled_out.append((provider, why))
        if eligible:
            if self.settings.routing == "cheapest":
                eligible.sort(key=lambda p: p.estimate_cost(request, p.default_model()).amount_micros)
            return eligible
        if len(ruled_out) == 1 and isinstance(ruled_out[0][1], MediagenError):
            raise ruled_out[0][1]  # one provider in play: its own error is the clearest
        raise _no_provider(media_type, ruled_out)

    def _pool(self, media_type: int) -> list[Provider]:
        media = MEDIA_NAMES[media_type]
        order = [self.registry.get(media_type, n) for n in self.settings.provider_order.get(media, [])]
        if self.settings.routing == "default":
            default = self.registry.get(media_type, self.registry.default_name(media_type))
            return [default, *[p for p in order if p is not default]]
        if self.settings.routing == "preference" and order:
            return order
        # cheapest (or preference with no list): every vendor; mocks only when no vendor is configured
        vendors = [p for p in self.registry.for_media(media_type) if not p.describe().mock]
        if any(p.describe().configured for p in vendors):
            return vendors
        return self.registry.for_media(media_type)

    def _why_not(self, provider: Provider, request: Message, media: InputMedia | None) -> MediagenError | str | None:
        entry = provider.describe()
        if not entry.configured:
            return f"not configured ({entry.not_configured_reason})"
        if entry.retired:
            return "retired by the vendor"
        if not self.breaker(provider.media_type, provider.name).allows():
            return "circuit open after repeated failures"
        try:
            provider.validate(request)
            if media is not None:
                provider.validate_input(request, media)
        except (InvalidArgument, FailedPrecondition) as err:
            return err
        return None

    def resolve(self, media_type: int, name: str) -> Provider:
        return self.registry.get(media_type, name)


def _no_provider(media_type: int, ruled_out: list[tuple[Provider, MediagenError | str]]) -> InvalidArgument:
    violations: list[FieldViolation] = []
    lines = []
    for provider, why in ruled_out:
        if isinstance(why, MediagenError) and why.field_violations:
            for v in why.field_violations:
                violations.append(FieldViolation(v.field, f"{provider.name}: {v.description}", v.reason))
            lines.append(f"{provider.name}: " + "; ".join(f"{v.field} {v.description}" for v in why.field_violations))
        else:
            lines.append(f"{provider.name}: {why}")
    media = common_pb2.MediaType.Name(media_type)
    return InvalidArgument(
        f"no configured provider can do this {media} request — " + " | ".join(lines),
        reason="NO_ELIGIBLE_PROVIDER",
        field_violations=violations or [FieldViolation("provider", "no eligible provider", "NO_ELIGIBLE_PROVIDER")],
        metadata={"mediaType": media},
    )
