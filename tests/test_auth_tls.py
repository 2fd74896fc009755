"""Bearer-token tenants, TLS and mutual TLS, over real channels."""

from __future__ import annotations

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from mediagen.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, image_pb2, image_pb2_grpc
from server.app import MediagenServer
from server.config import ConfigError
from tests.conftest import make_settings
from tests.helpers import certificate

TOKENS = "acme:acme-token-123456,globex:globex-token-654321"


@pytest.fixture
async def auth_server(tmp_path):
    server = MediagenServer(make_settings(tmp_path, auth_tokens=TOKENS))
    await server.start()
    yield server
    await server.stop(grace=0.1)


def _bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


async def _wait(stub, job_id, token):
    request = image_pb2.WatchImageJobRequest(job_id=job_id)
    return [r.event async for r in stub.WatchImageJob(request, metadata=_bearer(token))][-1].job


async def test_every_rpc_but_health_needs_a_valid_token(auth_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        for metadata in ((), _bearer("wrong-token-000000"), (("authorization", "Basic abc"),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await catalog.ListProviders(catalog_pb2.ListProvidersRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "token-" not in (err.value.details() or "")
        images = image_pb2_grpc.ImageServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in images.WatchImageJob(image_pb2.WatchImageJobRequest(job_id="job_" + "0" * 32)):
                pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = await catalog.ListProviders(catalog_pb2.ListProvidersRequest(), metadata=_bearer("acme-token-123456"))
        assert listed.providers



def _handled(method: str, code: str) -> float:
    labels = {"grpc_service": "mediagen.v1.CatalogService", "grpc_method": method, "grpc_code": code}
    return REGISTRY.get_sample_value("mediagen_grpc_server_handled_total", labels) or 0.0


async def test_every_rpc_is_counted_with_its_final_code_refusals_included(auth_server):
    before_ok, before_refused = _handled("ListProviders", "OK"), _handled("ListProviders", "UNAUTHENTICATED")
    before_bad = _handled("GetProvider", "INVALID_ARGUMENT") + _handled("GetProvider", "NOT_FOUND")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        await catalog.ListProviders(catalog_pb2.ListProvidersRequest(), metadata=_bearer("acme-token-123456"))
        with pytest.raises(grpc.aio.AioRpcError):
            await catalog.ListProviders(catalog_pb2.ListProvidersRequest(), metadata=_bearer("wrong-token-000000"))
        with pytest.raises(grpc.aio.AioRpcError):
            await catalog.GetProvider(catalog_pb2.GetProviderRequest(), metadata=_bearer("acme-token-123456"))
    assert _handled("ListProviders", "OK") == before_ok + 1
    assert _handled("ListProviders", "UNAUTHENTICATED") == before_refused + 1
    assert _handled("GetProvider", "INVALID_ARGUMENT") + _handled("GetProvider", "NOT_FOUND") == before_bad + 1

async def test_a_tenant_sees_only_its_own_jobs(auth_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        stub = image_pb2_grpc.ImageServiceStub(channel)
        acme, globex = "acme-token-123456", "globex-token-654321"
        job = (await stub.GenerateImage(image_pb2.GenerateImageRequest(prompt="a", width=64, height=64), metadata=_bearer(acme))).job
        assert job.tenant == "acme"
        final = await _wait(stub, job.id, acme)
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED
        assert final.artifacts[0].uri.startswith("file:acme/")
        for call in (
            stub.GetImageJob(image_pb2.GetImageJobRequest(job_id=job.id), metadata=_bearer(globex)),
            stub.CancelImageJob(image_pb2.CancelImageJobRequest(job_id=job.id), metadata=_bearer(globex)),
            _wait(stub, job.id, globex),
            _drain(stub.DownloadImage(image_pb2.DownloadImageRequest(job_id=job.id), metadata=_bearer(globex))),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        theirs = await stub.ListImageJobs(image_pb2.ListImageJobsRequest(), metadata=_bearer(globex))
        assert not theirs.jobs
        ours = await stub.ListImageJobs(image_pb2.ListImageJobsRequest(), metadata=_bearer(acme))
        assert [j.id for j in ours.jobs] == [job.id]


async def _drain(call):
    return [m async for m in call]


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def pki(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("mediagen test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = certificate("localhost", server_key, ca, ca_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = certificate("client", client_key, ca, ca_key)
    files = {
        "ca": _pem(ca),
        "server_cert": _pem(server_cert),
        "server_key": _key_pem(server_key),
        "client_cert": _pem(client_cert),
        "client_key": _key_pem(client_key),
    }
    paths = {}
    for name, data in files.items():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = str(path)
    return files, paths


async def _catalog_call(port, credentials):
    options = (("grpc.ssl_target_name_override", "localhost"),)
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials, options=options) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        return await stub.ListProviders(catalog_pb2.ListProvidersRequest(), timeout=5)


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_and_mutual_tls(tmp_path, pki, mutual):
    files, paths = pki
    settings = make_settings(
        tmp_path,
        listen="localhost:0",
        tls_cert_file=paths["server_cert"],
        tls_key_file=paths["server_key"],
        tls_client_ca_file=paths["ca"] if mutual else "",
    )
    server = MediagenServer(settings)
    await server.start()
    try:
        with_client_cert = grpc.ssl_channel_credentials(
            root_certificates=files["ca"], private_key=files["client_key"], certificate_chain=files["client_cert"]
        )
        assert (await _catalog_call(server.port, with_client_cert)).providers
        server_only = grpc.ssl_channel_credentials(root_certificates=files["ca"])
        if mutual:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _catalog_call(server.port, server_only)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        else:
            assert (await _catalog_call(server.port, server_only)).providers
        async with grpc.aio.insecure_channel(f"localhost:{server.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await catalog_pb2_grpc.CatalogServiceStub(plain).ListProviders(catalog_pb2.ListProvidersRequest(), timeout=2)
    finally:
        await server.stop(grace=0.1)


def test_tls_settings_go_together(tmp_path):
    with pytest.raises(ConfigError):
        make_settings(tmp_path, tls_cert_file="cert.pem")
    with pytest.raises(ConfigError):
        make_settings(tmp_path, tls_client_ca_file="ca.pem")


def test_malformed_token_lists_are_refused():
    from server.auth import parse_tokens

    for spec in ("no-colon", ":token", "tenant:", "bad tenant:token"):
        with pytest.raises(ValueError):
            parse_tokens(spec)
    assert set(parse_tokens("a:tok-aaaaaa, b:tok-bbbbbb").values()) == {"a", "b"}
