"""Vendor keys never appear in logs, errors, job fields or the catalog.

Every adapter is configured with a recognisable fake key and pointed at a
hostile vendor that answers every call with a failure *echoing back the
request's headers and query string* (the key included) — the worst case. Jobs
run through each failure; then the logs, every RPC error, every job and the
catalog are scanned for any key.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import pkgutil

import grpc
import pytest
from google.protobuf import json_format
from grpc_status import rpc_status

import providers
from mediagen.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2
from providers.registry import adapter_classes
from providers.secrets import register
from server.app import MediagenServer
from server.jobs import media_key
from server.logs import configure_logging
from tests.conftest import make_settings
from tests.fakes.server import FakeVendorServer, Reply
from tests.test_server_e2e import MEDIA, Api

MODES = ("401", "400", "429", "500", "garbage")
_PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def _secret_for(name: str) -> str:
    return register(f"SECRET-{name}-7f3a9c1e")


def _echo(request) -> str:
    headers = "; ".join(f"{k}={v}" for k, v in request.headers.items())
    return f"you sent {request.method} {request.path}?{request.query} with {headers}"


def hostile(mode: str):
    def answer(request):
        echo = _echo(request)
        if mode == "garbage":
            return Reply(200, "{not json " + echo, {"Content-Type": "application/json"})
        if mode == "500":
            return Reply(500, echo, {"Content-Type": "text/plain"})
        status = int(mode)
        body = {"error": {"message": echo, "code": echo}, "detail": echo, "message": echo}
        return Reply(status, body, {"Retry-After": "0"} if status == 429 else {})

    return answer


def _adapter_modules():
    for info in pkgutil.walk_packages(providers.__path__, "providers."):
        if not info.name.startswith(("providers.mock", "providers.storage")):
            yield importlib.import_module(info.name)


@pytest.fixture
def hostile_vendors(monkeypatch):
    servers = {mode: FakeVendorServer().__enter__() for mode in MODES}
    for mode, server in servers.items():
        for method in ("GET", "POST", "PUT", "DELETE"):
            server.route(method, "/{rest:path}", hostile(mode))
    current = {"mode": MODES[0]}
    secrets_used: set[str] = set()

    def fake_env_secret(*names):
        secret = _secret_for(names[0])
        secrets_used.add(secret)
        return secret, names[0]

    def fake_base_url(prefix, default=""):
        return servers[current["mode"]].url

    for module in _adapter_modules():
        if hasattr(module, "env_secret"):
            monkeypatch.setattr(module, "env_secret", fake_env_secret)
        if hasattr(module, "base_url_from_env"):
            monkeypatch.setattr(module, "base_url_from_env", fake_base_url)
    yield current, secrets_used
    for server in servers.values():
        server.__exit__(None, None, None)


def _requests_for(media_type: int) -> dict:
    noun = {"video": "Video", "speech": "Speech", "music": "Music", "sound_effect": "SoundEffect", "image": "Image"}[
        media_key(media_type)
    ]
    fields = dict(MEDIA[noun][2])
    if noun == "Video":
        fields = {"prompt": "a fox", "duration_seconds": 5, "aspect_ratio": "16:9"}
    if noun in ("Video", "Image"):
        fields["input_image"] = {"data": json_format.MessageToDict(common_pb2.MediaInput(data=_PNG_1PX))["data"]}
    return noun, fields


async def test_no_key_in_logs_errors_jobs_or_catalog(tmp_path, hostile_vendors):
    current, secrets_used = hostile_vendors
    classes = adapter_classes()
    assert classes, "no vendor adapters found"
    log_stream = io.StringIO()
    leaks: list[str] = []
    seen: list[str] = []
    try:
        for mode in MODES:
            current["mode"] = mode
            configure_logging("debug", "json", stream=log_stream)
            server = MediagenServer(make_settings(tmp_path / mode))
            await server.start()
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:

                    async def one(cls):
                        noun, fields = _requests_for(cls.media_type)
                        api = Api(channel, noun)
                        try:
                            job = await api.generate(**fields, provider=cls.name)
                        except grpc.aio.AioRpcError as err:
                            seen.append(err.details() or "")
                            seen.append(str(rpc_status.from_call(err)))
                            return
                        try:
                            events = await asyncio.wait_for(api.events(job.id), 60)
                            seen.extend(json_format.MessageToJson(e) for e in events)
                        except grpc.aio.AioRpcError as err:
                            seen.append(str(err))
                        seen.append(json_format.MessageToJson(await api.get(job.id)))

                    await asyncio.gather(*(one(cls) for cls in classes))
                    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
                    listed = await catalog.ListProviders(catalog_pb2.ListProvidersRequest())
                    seen.append(json_format.MessageToJson(listed))
            finally:
                await server.stop(grace=0.1)
    finally:
        configure_logging("warning", "console")
    seen.append(log_stream.getvalue())
    assert secrets_used, "the adapters read no keys"
    everything = "\n".join(seen)
    for secret in secrets_used:
        if secret in everything:
            leaks.append(secret)
    assert not leaks, f"keys leaked: {leaks}"
    # The hostile answers did reach the adapters and come back as errors.
    assert "[REDACTED]" in everything
    failures = [json.loads(line) for line in log_stream.getvalue().splitlines() if '"vendor_call"' in line]
    assert failures, "no vendor call was made"
