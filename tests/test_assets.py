"""AssetService over a real channel: streamed uploads far above gRPC's 4 MiB message,
the limits enforced while the bytes arrive, tenancy, retention, S3, and an asset
used as the first frame of an image-to-video job."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib

import grpc
import pytest
from grpc_status import rpc_status
from PIL import Image

from clients import AsyncMediagenClient, MediagenClient
from clients.errors import DataLossError, InvalidArgumentError, NotFoundError
from mediagen.v1 import asset_pb2, asset_pb2_grpc, common_pb2, video_pb2
from server.app import MediagenServer
from tests.conftest import ThreadedServer, make_settings
from tests.helpers import bad_fields, error_reason, noise_png, png, serving
from tests.s3_emulator import S3Emulator, s3_emulator  # noqa: F401 - the fixture

MiB = 1024 * 1024
Code = grpc.StatusCode


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG of this size (signature and IHDR): enough to judge it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def jpeg_with_big_metadata() -> bytes:
    """A JPEG whose frame header comes after ~200 KiB of ICC profile."""
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480), "orange").save(buffer, "JPEG", icc_profile=b"\0" * 200_000)
    return buffer.getvalue()


def metadata(**fields) -> asset_pb2.UploadAssetRequest:
    return asset_pb2.UploadAssetRequest(metadata=asset_pb2.UploadAssetMetadata(**fields))


def chunk(data: bytes) -> asset_pb2.UploadAssetRequest:
    return asset_pb2.UploadAssetRequest(chunk=data)


def stored(server: MediagenServer) -> list[str]:
    """Every file in local storage, half-written ones included."""
    root = server.settings.storage_path
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
async def env(tmp_path):
    server = MediagenServer(make_settings(tmp_path, max_asset_bytes=16 * MiB))
    async with serving(server) as channel:
        yield server, channel, asset_pb2_grpc.AssetServiceStub(channel)


async def test_upload_far_above_the_message_limit(env):
    server, channel, stub = env
    image = noise_png(1900, 1900)  # ~10 MiB of incompressible pixels
    assert len(image) > 10 * MiB

    async def requests():
        yield metadata(filename="noise.png", size_bytes=len(image), content_type="image/png")
        for start in range(0, len(image), MiB):
            yield chunk(image[start : start + MiB])

    asset = (await stub.UploadAsset(requests())).asset
    assert asset.id.startswith("asset_") and len(asset.id) == 6 + 32
    assert asset.size_bytes == len(image)
    assert asset.sha256 == hashlib.sha256(image).hexdigest()
    assert (asset.content_type, asset.width, asset.height) == ("image/png", 1900, 1900)
    assert asset.filename == "noise.png" and asset.tenant == ""
    assert asset.HasField("create_time") and asset.HasField("expire_time")  # retention is on by default

    # Stored under <tenant or default>/assets/<id><ext>, byte for byte.
    key = f"default/assets/{asset.id}.png"
    assert stored(server) == [key]
    assert (server.settings.storage_path / key).read_bytes() == image
    assert (await stub.GetAsset(asset_pb2.GetAssetRequest(asset_id=asset.id))).asset == asset

    await stub.DeleteAsset(asset_pb2.DeleteAssetRequest(asset_id=asset.id))
    assert stored(server) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetAsset(asset_pb2.GetAssetRequest(asset_id=asset.id))
    assert err.value.code() == Code.NOT_FOUND
    assert error_reason(rpc_status.from_call(err.value))[0] == "ASSET_NOT_FOUND"


async def test_type_and_size_come_from_the_first_bytes(env):
    _, channel, stub = env
    cases = [
        (png(300, 200, "JPEG"), "image/jpeg", (300, 200)),
        (png(300, 200, "WEBP"), "image/webp", (300, 200)),
        (jpeg_with_big_metadata(), "image/jpeg", (640, 480)),
    ]
    for data, content_type, size in cases:

        async def requests(data=data):
            yield metadata()  # nothing declared: all of it is detected
            for start in range(0, len(data), 4096):  # small chunks: the header arrives in pieces
                yield chunk(data[start : start + 4096])

        asset = (await stub.UploadAsset(requests())).asset
        assert (asset.content_type, asset.width, asset.height) == (content_type, *size)
        assert asset.sha256 == hashlib.sha256(data).hexdigest()


async def refused(channel, requests, *, within: float = 10.0) -> grpc.aio.AioRpcError:
    """The error of an upload, which must arrive before ``within`` seconds.

    Sent as the Python client sends: message by message, stopping as soon as the
    server's refusal header arrives (so the status is the server's own).
    """
    client = AsyncMediagenClient(channel=channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(client._send_upload(_aiter(requests), 30), within)
    return err.value


async def _aiter(requests):
    if hasattr(requests, "__aiter__"):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


async def test_too_large_is_refused_while_streaming_and_nothing_is_kept(env):
    server, channel, stub = env
    sent = []

    async def endless():
        yield metadata(filename="big.png")  # size not declared
        yield chunk(noise_png(600, 600)[: MiB])
        while True:  # the stream would never end: only a prompt refusal ends the call
            sent.append(1)
            yield chunk(b"\0" * MiB)

    error = await refused(channel, endless())
    assert error.code() == Code.INVALID_ARGUMENT
    reason, info = error_reason(rpc_status.from_call(error))
    assert reason == "ASSET_TOO_LARGE"
    assert info["limit"] == "max_asset_bytes" and info["maxBytes"] == str(16 * MiB)
    assert "chunk" in bad_fields(error)
    assert len(sent) < 40  # refused on the chunk past 16 MiB (plus what flow control had in flight)
    assert stored(server) == []

    # A declared size above the limit is refused before any byte.
    async def declared():
        yield metadata(size_bytes=17 * MiB)
        while True:
            yield chunk(b"\0" * MiB)

    error = await refused(channel, declared())
    assert error_reason(rpc_status.from_call(error))[0] == "ASSET_TOO_LARGE"
    assert "metadata.size_bytes" in bad_fields(error)
    assert stored(server) == []


async def test_a_client_that_ignores_the_refusal_header_still_gets_the_refusal(env):
    # Any gRPC client (grpcurl...) writing without looking at headers: the header
    # arrives at once, the status within the server's settling time.
    _, channel, stub = env

    async def endless():
        yield metadata()
        yield chunk(png_header(20_000, 20_000))
        while True:
            yield chunk(b"\0" * MiB)

    call = stub.UploadAsset(endless())
    headers = await asyncio.wait_for(call.initial_metadata(), 5)
    assert ("mediagen-upload-refused", "ASSET_TOO_MANY_PIXELS") in list(headers)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asyncio.wait_for(call, 10)
    # gRPC's Python client may report its own failed write instead of the server's status.
    assert err.value.code() in (Code.INVALID_ARGUMENT, Code.INTERNAL)


async def test_too_many_pixels_is_refused_on_the_header(env):
    server, channel, stub = env
    sent = []

    async def requests():
        yield metadata(filename="huge.png")
        yield chunk(png_header(10_000, 5_000) + b"\0" * 1000)  # 50 MP
        while True:
            sent.append(1)
            yield chunk(b"\0" * MiB)

    error = await refused(channel, requests())
    assert error.code() == Code.INVALID_ARGUMENT
    reason, info = error_reason(rpc_status.from_call(error))
    assert reason == "ASSET_TOO_MANY_PIXELS" and info["maxPixels"] == "40000000"
    assert "10000x5000" in error.details()
    assert len(sent) < 20
    assert stored(server) == []


async def test_unsupported_type_is_refused_on_the_first_bytes(env):
    server, channel, stub = env
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, "GIF")
    for data in (gif.getvalue(), b"%PDF-1.7 not an image at all", b"RIFF\0\0\0\0WAVEfmt "):

        async def requests(data=data):
            yield metadata()
            yield chunk(data)
            while True:
                yield chunk(b"\0" * MiB)

        error = await refused(channel, requests())
        assert error.code() == Code.INVALID_ARGUMENT
        reason, info = error_reason(rpc_status.from_call(error))
        assert reason == "ASSET_TYPE_UNSUPPORTED", error.details()
        assert info["accepted"] == "image/png,image/jpeg,image/webp"
    assert stored(server) == []


async def test_malformed_uploads_are_refused_and_leave_nothing(env):
    server, channel, stub = env
    image = png(64, 64)
    cases = [
        ([chunk(image)], "metadata"),  # no metadata first
        ([metadata(), chunk(image), metadata()], "metadata"),  # metadata twice
        ([metadata()], "chunk"),  # no bytes
        ([metadata(), chunk(b"\0" * (MiB + 1))], "chunk"),  # chunk over 1 MiB
        ([metadata(content_type="image/jpeg"), chunk(image)], "metadata.content_type"),  # not what the bytes are
        ([metadata(content_type="image/gif"), chunk(image)], "metadata.content_type"),
        ([metadata(size_bytes=len(image) + 1), chunk(image)], "metadata.size_bytes"),  # ends short
        ([metadata(size_bytes=10), chunk(image)], "metadata.size_bytes"),  # more than declared
        ([metadata(sha256="0" * 64), chunk(image)], "metadata.sha256"),
        ([metadata(sha256="not-hex"), chunk(image)], "metadata.sha256"),
        ([metadata(filename="a\nb.png"), chunk(image)], "metadata.filename"),
        ([metadata(), chunk(image[:20])], "chunk"),  # a PNG cut before its header is whole
    ]
    for messages, field in cases:
        error = await refused(channel, iter(messages))
        assert error.code() == Code.INVALID_ARGUMENT, (field, error.details())
        assert field in bad_fields(error), (field, error.details())
    assert stored(server) == []
    assert not list((server.settings.storage_path / ".tmp").iterdir())
    # A declared sha256 that matches is fine.
    ok = [metadata(sha256=hashlib.sha256(image).hexdigest(), size_bytes=len(image)), chunk(image)]
    assert (await stub.UploadAsset(iter(ok))).asset.size_bytes == len(image)


async def test_bad_asset_ids(env):
    _, channel, stub = env
    for asset_id, code in (("", Code.INVALID_ARGUMENT), ("asset_x", Code.INVALID_ARGUMENT), ("asset_" + "0" * 32, Code.NOT_FOUND)):
        for call in (stub.GetAsset(asset_pb2.GetAssetRequest(asset_id=asset_id)), stub.DeleteAsset(asset_pb2.DeleteAssetRequest(asset_id=asset_id))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == code


async def test_python_clients_upload_from_disk(env, tmp_path):
    server, channel, _ = env
    path = tmp_path / "frame.png"
    path.write_bytes(noise_png(1400, 1400))  # ~5.6 MiB
    progress: list[tuple[int, int]] = []
    async with AsyncMediagenClient(channel=channel) as client:
        asset = await client.upload(path, on_progress=lambda done, total: progress.append((done, total)))
        assert asset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (asset.width, asset.height, asset.filename) == (1400, 1400, "frame.png")
        size = path.stat().st_size
        assert progress[-1] == (size, size) and len(progress) == -(-size // MiB)
        assert (await client.get_asset(asset.id)).sha256 == asset.sha256
        await client.delete_asset(asset.id)
        with pytest.raises(NotFoundError):
            await client.get_asset(asset.id)
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        with pytest.raises(InvalidArgumentError) as err:
            await client.upload(bad)
        assert err.value.reason == "ASSET_TYPE_UNSUPPORTED"


def test_blocking_client_uploads_and_generates_from_a_large_file(tmp_path):
    server = ThreadedServer(make_settings(tmp_path))
    try:
        path = tmp_path / "first-frame.png"
        path.write_bytes(noise_png(1200, 1200))  # above the 4 MiB inline limit
        with MediagenClient(f"127.0.0.1:{server.port}") as client:
            asset = client.upload(path)
            assert asset.size_bytes == path.stat().st_size
            # A path above 4 MiB is uploaded by generate itself and named by asset id.
            job = client.generate_and_wait("video", prompt="it moves", duration_seconds=1, input_image=str(path))
            (artifact,) = job.artifacts
            assert artifact.metadata["inputSha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            request = video_pb2.GenerateVideoRequest.FromString(
                server.call(server.server.store.get(job.id)).request
            )
            assert request.input_image.WhichOneof("source") == "asset_id"
            # A small file still goes inline.
            small = tmp_path / "small.png"
            small.write_bytes(png(64, 64))
            job = client.generate_and_wait("video", prompt="it moves", duration_seconds=1, input_image=small)
            request = video_pb2.GenerateVideoRequest.FromString(server.call(server.server.store.get(job.id)).request)
            assert request.input_image.WhichOneof("source") == "data"
    finally:
        server.close()


async def test_an_asset_is_the_first_frame_of_a_mock_video(env):
    server, channel, _ = env
    image = png(640, 360)
    async with AsyncMediagenClient(channel=channel) as client:
        path = server.settings.storage_path.parent / "frame.png"
        path.write_bytes(image)
        asset = await client.upload(path)
        job = await client.generate_and_wait(
            "video", prompt="waves", duration_seconds=1, input_image=common_pb2.MediaInput(asset_id=asset.id)
        )
    (artifact,) = job.artifacts
    assert artifact.metadata["inputSha256"] == asset.sha256


async def test_a_tenant_cannot_use_another_tenants_asset(tmp_path):
    server = MediagenServer(make_settings(tmp_path, auth_tokens="acme:token-acme,globex:token-globex"))
    async with serving(server) as channel:
        acme = AsyncMediagenClient(channel=channel, token="token-acme")
        globex = AsyncMediagenClient(channel=channel, token="token-globex")
        path = tmp_path / "frame.png"
        path.write_bytes(png(320, 180))
        asset = await acme.upload(path)
        assert asset.tenant == "acme"
        assert stored(server) == [f"acme/assets/{asset.id}.png"]
        with pytest.raises(NotFoundError):
            await globex.get_asset(asset.id)
        with pytest.raises(NotFoundError):
            await globex.delete_asset(asset.id)
        image = common_pb2.MediaInput(asset_id=asset.id)
        with pytest.raises(NotFoundError) as err:
            await globex.generate("video", prompt="mine now", input_image=image)
        assert err.value.reason == "ASSET_NOT_FOUND"
        assert err.value.metadata["field"] == "input_image.asset_id"
        job = await acme.generate_and_wait("video", prompt="mine", duration_seconds=1, input_image=image)
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED
        # The asset is untouched by globex's attempts.
        assert (await acme.get_asset(asset.id)).sha256 == asset.sha256


async def test_expired_assets_are_gone_and_swept(tmp_path):
    server = MediagenServer(make_settings(tmp_path, retention=1, job_timeout=0.5, max_job_timeout=0.5))
    async with serving(server) as channel:
        client = AsyncMediagenClient(channel=channel)
        path = tmp_path / "frame.png"
        path.write_bytes(png(64, 64))
        asset = await client.upload(path)
        assert asset.expire_time.ToNanoseconds() - asset.create_time.ToNanoseconds() == 1_000_000_000
        await asyncio.sleep(1.1)
        # Expired: not found at once, though its bytes stay until the sweep's grace
        # (max_job_timeout, for a job admitted just before the expiry) has passed too.
        with pytest.raises(NotFoundError):
            await client.get_asset(asset.id)
        with pytest.raises(NotFoundError):
            await client.generate("video", prompt="late", input_image=common_pb2.MediaInput(asset_id=asset.id))
        await asyncio.sleep(0.5)
        await server.jobs.sweep_expired()
        assert stored(server) == []
        assert await server.store.get_asset(asset.id) is None


async def test_upload_into_s3_and_a_refused_one_leaves_no_object(tmp_path, s3_emulator):  # noqa: F811
    bucket = s3_emulator.new_bucket()
    settings = make_settings(
        tmp_path,
        storage="s3",
        s3_bucket=bucket,
        s3_prefix="mg",
        s3_endpoint_url=s3_emulator.endpoint_url,
        s3_region=s3_emulator.region,
        s3_path_style=True,
        max_asset_bytes=12 * MiB,
    )
    server = MediagenServer(settings)
    client_s3 = s3_emulator.client()
    async with serving(server) as channel:
        stub = asset_pb2_grpc.AssetServiceStub(channel)
        image = noise_png(1700, 1700)  # ~8.3 MiB: a multipart upload in S3

        async def requests():
            yield metadata(size_bytes=len(image))
            for start in range(0, len(image), MiB):
                yield chunk(image[start : start + MiB])

        asset = (await stub.UploadAsset(requests())).asset
        body = client_s3.get_object(Bucket=bucket, Key=f"mg/default/assets/{asset.id}.png")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == asset.sha256 == hashlib.sha256(image).hexdigest()

        async def too_big():
            yield metadata()
            for start in range(0, len(image), MiB):
                yield chunk(image[start : start + MiB])
            while True:
                yield chunk(b"\0" * MiB)

        error = await refused(channel, too_big())
        assert error_reason(rpc_status.from_call(error))[0] == "ASSET_TOO_LARGE"
        keys = [o["Key"] for o in client_s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert keys == [f"mg/default/assets/{asset.id}.png"]
        assert client_s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_an_upload_whose_stored_bytes_differ_is_deleted(env, tmp_path, monkeypatch):
    server, channel, _ = env
    path = tmp_path / "frame.png"
    path.write_bytes(png(64, 64))
    async with AsyncMediagenClient(channel=channel) as client:
        original = client._assets.UploadAsset

        class Lying:
            """The call, except that the asset it answers has another sha256."""

            def __init__(self, call) -> None:
                self.call = call

            def __getattr__(self, name):
                return getattr(self.call, name)

            def __await__(self):
                response = yield from self.call.__await__()
                response.asset.sha256 = "0" * 64
                return response

        def lying(**kwargs):
            return Lying(original(**kwargs))

        monkeypatch.setattr(client._assets, "UploadAsset", lying)
        with pytest.raises(DataLossError) as err:
            await client.upload(path)
        assert err.value.reason == "UPLOAD_VERIFICATION_FAILED"
    assert stored(server) == []  # the client deleted what it could not verify

