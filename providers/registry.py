"""Which providers exist, which are configured, and which one a request gets."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import structlog

from mediagen.v1 import catalog_pb2, common_pb2
from providers.base import Provider
from providers.errors import InvalidArgument, ProviderNotConfigured

log = structlog.get_logger("mediagen.registry")

# Vendor adapters live one module per vendor in these packages; every concrete
# Provider subclass found there is loaded and constructed with the Settings.
# Within a media type, ``Provider.preference`` (lower first) orders the
# automatic default.
ADAPTER_PACKAGES = ("providers.video", "providers.speech", "providers.music", "providers.sound_effect", "providers.image")

MEDIA_NAMES = {
    common_pb2.MEDIA_TYPE_VIDEO: "video",
    common_pb2.MEDIA_TYPE_SPEECH: "speech",
    common_pb2.MEDIA_TYPE_MUSIC: "music",
    common_pb2.MEDIA_TYPE_SOUND_EFFECT: "sound_effect",
    common_pb2.MEDIA_TYPE_IMAGE: "image",
}


class ProviderRegistry:
    def __init__(self, providers: list[Provider], defaults: dict[str, str] | None = None) -> None:
        self._providers: dict[tuple[int, str], Provider] = {}
        for provider in providers:
            key = (provider.media_type, provider.name)
            if key in self._providers:
                raise ValueError(f"two providers named {provider.name} for one media type")
            self._providers[key] = provider
        self._defaults: dict[int, str] = {}
        for media_type, media in MEDIA_NAMES.items():
            wanted = (defaults or {}).get(media)
            if wanted:
                if (media_type, wanted) not in self._providers:
                    raise ValueError(f"default provider {wanted!r} for {media} does not exist")
                self._defaults[media_type] = wanted
            else:
                self._defaults[media_type] = self._automatic_default(media_type)

    def _automatic_default(self, media_type: int) -> str:
        """The first configured, non-retired vendor; the mock when there is none."""
        for provider in self.for_media(media_type):
            entry = provider.describe()
            if not entry.mock and entry.configured and not entry.retired:
                return provider.name
        return "mock"

    def for_media(self, media_type: int) -> list[Provider]:
        return [p for (m, _), p in self._providers.items() if m == media_type]  # in preference order

    def all(self) -> list[Provider]:
        return list(self._providers.values())

    def get(self, media_type: int, name: str) -> Provider:
        provider = self._providers.get((media_type, name))
        if provider is None:
            known = ", ".join(sorted(p.name for p in self.for_media(media_type)))
            raise InvalidArgument.field("provider", f"unknown provider {name!r}; known: {known}", "UNKNOWN_PROVIDER")
        return provider

    def default_name(self, media_type: int) -> str:
        return self._defaults[media_type]

    def resolve(self, media_type: int, name: str) -> Provider:
        """The provider a request asked for (or the default), ready to be used."""
        provider = self.get(media_type, name or self._defaults[media_type])
        entry = provider.describe()
        if not entry.configured:
            raise ProviderNotConfigured(
                f"provider {provider.name} is not configured: {entry.not_configured_reason}",
                provider=provider.name,
                metadata={"reason": entry.not_configured_reason},
            )
        # A retired provider is never picked by default, but a caller who names
        # it (e.g. against a self-hosted stand-in) gets it.
        return provider

    def describe(self, media_type: int = 0) -> list[catalog_pb2.Provider]:
        entries = []
        for provider in self.all():
            if media_type and provider.media_type != media_type:
                continue
            entry = provider.describe()
            entry.default = self._defaults[provider.media_type] == provider.name
            entries.append(entry)
        return entries

    async def aclose(self) -> None:
        for provider in self.all():
            await provider.aclose()


def adapter_classes() -> list[type[Provider]]:
    """Every concrete vendor adapter class, in preference order."""
    found: dict[str, type[Provider]] = {}
    for package_name in ADAPTER_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package_name}.{info.name}")
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, Provider) and not inspect.isabstract(cls) and cls.__module__ == module.__name__:
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return sorted(found.values(), key=lambda c: (c.media_type, c.preference, c.name))


def build_registry(settings) -> ProviderRegistry:
    from providers.mock.provider import mock_providers

    providers: list[Provider] = list(mock_providers(settings))
    # Every adapter takes the settings (the Provider interface declares no __init__).
    providers += [cls(settings) for cls in adapter_classes()]  # type: ignore[call-arg]
    registry = ProviderRegistry(providers, settings.default_providers)
    for media_type, media in MEDIA_NAMES.items():
        log.info("default provider", media=media, provider=registry.default_name(media_type))
    return registry
