"""What the speech adapter tests share (a server around a fake vendor, gRPC helpers), and the
tests that hold for every speech provider (catalog entries, presets, unconfigured keys)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_status import rpc_status

from mediagen.v1 import catalog_pb2, common_pb2
from providers.mock.media import MediaInfo, probe
from providers.retry import RetryPolicy
from providers.speech_text import VOICE_PRESETS
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.helpers import Env, error_reason, serving
from tests.helpers import assert_failed as failed_with
from tests.helpers import bad_fields as bad_fields  # for the speech tests
from tests.helpers import retry_delay as retry_delay  # for the speech tests

SPEECH = common_pb2.MEDIA_TYPE_SPEECH
SOUND_EFFECT = common_pb2.MEDIA_TYPE_SOUND_EFFECT
FAST = RetryPolicy(initial=0.01, maximum=0.05, max_retry_after=5.0, max_attempts=3)
Code = grpc.StatusCode

def probe_bytes(data: bytes, content_type: str = "") -> MediaInfo:
    fd, path = tempfile.mkstemp(prefix="speech-test-")
    os.close(fd)
    try:
        Path(path).write_bytes(data)
        return probe(path, content_type)
    finally:
        os.unlink(path)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, media_type: int, provider_name: str, **settings):
    """Start a MediagenServer (the environment must already point at the fake).

    Failure tests share one server, so its circuit breakers must not open.
    """
    settings.setdefault("circuit_threshold", 1_000_000)
    server = MediagenServer(make_settings(tmp_path, **settings))
    server.runner.output_retry = FAST
    async with serving(server) as channel:
        yield Env(server, channel, media_type, provider_name)


@contextlib.asynccontextmanager
async def vendor_server(
    tmp_path: Path,
    media_type: int,
    provider_name: str,
    env: dict[str, str],
    class_attributes: Iterable[tuple[type, str, Any]] = (),
    unset: Iterable[str] = (),
):
    """A server whose environment names the fake (set with monkeypatch before it is built)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in unset:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        for cls, attribute, value in class_attributes:
            patch.setattr(cls, attribute, value)
        async with running(tmp_path, media_type, provider_name) as served:
            yield served


def assert_failed(job: common_pb2.Job, code: grpc.StatusCode, reason: str) -> dict[str, str]:
    """helpers.assert_failed, answering the ErrorInfo metadata."""
    return dict(failed_with(job, code, reason).metadata)


# --- every speech provider ----------------------------------------------------------------

VENDOR_ENV = ("ELEVENLABS_API_KEY", "ELEVEN_API_KEY", "OPENAI_API_KEY", "GOOGLE_API_KEY",
              "GOOGLE_OAUTH_ACCESS_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN")


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bare(tmp_path_factory):
    """A server with no vendor keys at all."""
    async with vendor_server(tmp_path_factory.mktemp("bare"), SPEECH, "elevenlabs", {}, unset=VENDOR_ENV) as env:
        yield env


@pytest.mark.parametrize(
    ("media_type", "name", "variable"),
    [
        (SPEECH, "elevenlabs", "ELEVENLABS_API_KEY"),
        (SPEECH, "openai", "OPENAI_API_KEY"),
        (SPEECH, "google", "GOOGLE_API_KEY"),
        (SOUND_EFFECT, "elevenlabs", "ELEVENLABS_API_KEY"),
    ],
)
async def test_missing_key_is_failed_precondition_naming_the_variable(bare, media_type, name, variable):
    bare.media_type, bare.provider_name = media_type, name
    fields = {"text": "Hello."} if media_type == SPEECH else {"prompt": "a door slams"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bare.generate(**fields)
    assert caught.value.code() == Code.FAILED_PRECONDITION
    reason, _ = error_reason(rpc_status.from_call(caught.value))
    assert reason == "PROVIDER_NOT_CONFIGURED"
    assert variable in caught.value.details()
    entry = (await bare.catalog.GetProvider(catalog_pb2.GetProviderRequest(name=name, media_type=media_type))).provider
    assert not entry.configured and variable in entry.not_configured_reason


async def test_catalog_entries_describe_the_speech_vendors(bare):
    listed = await bare.catalog.ListProviders(catalog_pb2.ListProvidersRequest(media_type=SPEECH))
    entries = {p.name: p for p in listed.providers}
    for name, default_model in (("elevenlabs", "eleven_multilingual_v2"), ("openai", "tts-1"), ("google", "neural2")):
        entry = entries[name]
        assert entry.documentation_uri.startswith("https://")
        assert [m.name for m in entry.models if m.default] == [default_model]
        assert entry.limits.max_text_characters > 0 and entry.limits.formats
        priced = {p.model for p in entry.prices}
        assert {m.name for m in entry.models} <= priced
        assert all(p.unit_price_micros > 0 and p.note for p in entry.prices)
        # every shared voice preset is documented by every provider
        notes = " ".join(entry.notes)
        assert all(preset in notes for preset in VOICE_PRESETS), name
    retired = [m.name for m in entries["elevenlabs"].models if m.retired]
    assert retired == ["eleven_monolingual_v1", "eleven_multilingual_v1"]
