"""What the end-to-end tests share: rich gRPC error details, test images, test certificates, and
a running MediagenServer with one vendor fake behind it."""

from __future__ import annotations

import contextlib
import datetime
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from mediagen.v1 import (
    catalog_pb2_grpc,
    common_pb2,
    image_pb2,
    image_pb2_grpc,
    music_pb2,
    music_pb2_grpc,
    sound_effect_pb2,
    sound_effect_pb2_grpc,
    speech_pb2,
    speech_pb2_grpc,
    video_pb2,
    video_pb2_grpc,
)
from server.app import MediagenServer
from tests.conftest import make_settings

# media type -> (pb2, pb2_grpc, the noun in its RPC names)
SERVICES = {
    common_pb2.MEDIA_TYPE_VIDEO: (video_pb2, video_pb2_grpc, "Video"),
    common_pb2.MEDIA_TYPE_IMAGE: (image_pb2, image_pb2_grpc, "Image"),
    common_pb2.MEDIA_TYPE_MUSIC: (music_pb2, music_pb2_grpc, "Music"),
    common_pb2.MEDIA_TYPE_SPEECH: (speech_pb2, speech_pb2_grpc, "Speech"),
    common_pb2.MEDIA_TYPE_SOUND_EFFECT: (sound_effect_pb2, sound_effect_pb2_grpc, "SoundEffect"),
}


# --- rich error details ---------------------------------------------------------------------


def error_info(status) -> error_details_pb2.ErrorInfo:
    """The first ErrorInfo of a google.rpc.Status; fails the test when there is none."""
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo")


def error_reason(status) -> tuple[str, dict[str, str]]:
    """(ErrorInfo.reason, its metadata) of a google.rpc.Status."""
    info = error_info(status)
    return info.reason, dict(info.metadata)


def retry_delay(status) -> float | None:
    """The RetryInfo delay of a google.rpc.Status in seconds, None without one."""
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def bad_fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields a failed call's BadRequest details name."""
    fields = []
    for detail in rpc_status.from_call(err).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


def assert_failed(
    job: common_pb2.Job, code: int | grpc.StatusCode, reason: str
) -> error_details_pb2.ErrorInfo:
    """Assert ``job`` failed with ``code`` and ``reason`` and kept no artifact; its ErrorInfo."""
    if isinstance(code, grpc.StatusCode):
        code = code.value[0]
    assert job.state == common_pb2.JOB_STATE_FAILED, job
    assert job.error.code == code, job.error
    info = error_info(job.error)
    assert info.reason == reason, job.error
    assert not job.artifacts
    return info


# --- images -----------------------------------------------------------------------------------


def png(width: int = 64, height: int = 36, fmt: str = "PNG") -> bytes:
    """A one-colour image (PNG unless ``fmt`` says otherwise)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 120, 200)).save(buffer, fmt)
    return buffer.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: random pixels."""
    pixels = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


# --- a running server -------------------------------------------------------------------------


def set_env(monkeypatch, values: Mapping[str, str], unset: Iterable[str] = ()) -> None:
    """Remove the ``unset`` variables, then set ``values`` (with monkeypatch)."""
    for name in unset:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@contextlib.asynccontextmanager
async def serving(server: MediagenServer):
    """Start ``server`` and open a channel to it; close both after."""
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        await server.stop(grace=0.1)


@dataclass
class Env:
    """A MediagenServer with one vendor fake behind it, and gRPC stubs to it."""

    server: MediagenServer
    channel: grpc.aio.Channel
    media_type: int
    provider_name: str
    fake: Any = None
    #: A second fake server (a CDN the vendor's output URLs point at, an image host).
    cdn: Any = None
    #: Request fields every generate() starts from.
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Deadline of a watch; None watches without one.
    watch_timeout: float | None = 20
    #: Assert that every watch ends with the ENDED event.
    require_end: bool = False

    @property
    def pb2(self):
        return SERVICES[self.media_type][0]

    @property
    def noun(self) -> str:
        return SERVICES[self.media_type][2]

    @property
    def stub(self):
        pb2_grpc = SERVICES[self.media_type][1]
        return getattr(pb2_grpc, f"{self.noun}ServiceStub")(self.channel)

    @property
    def catalog(self) -> catalog_pb2_grpc.CatalogServiceStub:
        return catalog_pb2_grpc.CatalogServiceStub(self.channel)

    @property
    def provider(self):
        return self.server.registry.get(self.media_type, self.provider_name)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.settings.data_dir)

    async def generate(self, **fields) -> common_pb2.Job:
        request = getattr(self.pb2, f"Generate{self.noun}Request")()
        json_format.ParseDict({"provider": self.provider_name, **self.defaults, **fields}, request)
        return (await getattr(self.stub, f"Generate{self.noun}")(request)).job

    async def events(self, job_id: str) -> list[common_pb2.JobEvent]:
        request = getattr(self.pb2, f"Watch{self.noun}JobRequest")(job_id=job_id)
        call = getattr(self.stub, f"Watch{self.noun}Job")(request, timeout=self.watch_timeout)
        events = [r.event async for r in call]
        if self.require_end:
            assert events[-1].type == common_pb2.JOB_EVENT_TYPE_ENDED
        return events

    async def wait(self, job_id: str) -> common_pb2.Job:
        return (await self.events(job_id))[-1].job

    async def run(self, **fields) -> common_pb2.Job:
        return await self.wait((await self.generate(**fields)).id)

    async def cancel(self, job_id: str) -> common_pb2.Job:
        request = getattr(self.pb2, f"Cancel{self.noun}JobRequest")(job_id=job_id)
        return (await getattr(self.stub, f"Cancel{self.noun}Job")(request)).job

    def _download(self, job_id: str, index: int):
        request = getattr(self.pb2, f"Download{self.noun}Request")(
            job_id=job_id, artifact_index=index
        )
        return getattr(self.stub, f"Download{self.noun}")(request)

    async def download(self, job_id: str, index: int = 0) -> bytes:
        return b"".join([m.data async for m in self._download(job_id, index)])

    async def download_artifact(
        self, job_id: str, index: int = 0
    ) -> tuple[common_pb2.Artifact, bytes]:
        """The artifact the download describes, and its bytes."""
        messages = [m async for m in self._download(job_id, index)]
        return messages[0].artifact, b"".join(m.data for m in messages)

    def stored_files(self, job_id: str = "", *, partial: bool = True) -> list[Path]:
        """Files in storage (of one job when ``job_id`` is given); ``partial``: with
        half-written ones."""
        root = self.data_dir / "artifacts"
        files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        if not partial:
            files = [p for p in files if ".tmp" not in p.parts]
        return [p for p in files if job_id in p.as_posix()]


@contextlib.asynccontextmanager
async def vendor_env(
    monkeypatch,
    tmp_path: Path,
    media_type: int,
    provider_name: str,
    env: Mapping[str, str] | None = None,
    *,
    unset: Iterable[str] = (),
    retry=None,
    settings: Mapping[str, Any] | None = None,
    **fields,
):
    """Set the environment that names the fake, start a server, yield its Env.

    ``retry``: the adapter's and the output download's retry policy; ``settings``: overrides
    for make_settings; ``fields``: more Env fields (fake, cdn, defaults, ...).
    """
    set_env(monkeypatch, env or {}, unset)
    server = MediagenServer(make_settings(tmp_path, **(settings or {})))
    if retry is not None:
        server.registry.get(media_type, provider_name).http.retry = retry
        server.runner.output_retry = retry
    async with serving(server) as channel:
        yield Env(server, channel, media_type, provider_name, **fields)


def certificate(subject: str, key: Any, issuer: x509.Certificate | None = None, issuer_key: Any = None, *, ca: bool = False) -> x509.Certificate:
    """A certificate for ``subject`` valid for an hour: a CA's, or a leaf's for "localhost"."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())
