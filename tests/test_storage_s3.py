"""S3 storage against a real S3 emulator over HTTP (moto's server mode), and end to end over gRPC."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import ClientError
from google.protobuf import duration_pb2, json_format

from mediagen.v1 import common_pb2
from providers.errors import InvalidStorageKey, NotFound, OutputTooLarge, StorageError
from providers.mock.media import probe
from providers.storage.s3 import MAX_PRESIGN_SECONDS, S3Storage
from server.app import MediagenServer
from tests.conftest import make_settings
from tests.helpers import png, serving
from tests.s3_emulator import S3Emulator, s3_emulator  # noqa: F401 - the fixture
from tests.test_server_e2e import MEDIA, Api

MiB = 1024 * 1024


async def chunks_of(data: bytes, size: int = 256 * 1024):
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def failing_after(data: bytes, limit: int, exc: BaseException):
    async for chunk in chunks_of(data):
        if limit <= 0:
            raise exc
        limit -= len(chunk)
        yield chunk


@pytest.fixture
def bucket(s3_emulator: S3Emulator) -> str:  # noqa: F811 - the fixture
    return s3_emulator.new_bucket()


@pytest.fixture
async def storage(s3_emulator: S3Emulator, bucket: str):  # noqa: F811
    store = S3Storage(
        bucket, "mediagen/", endpoint_url=s3_emulator.endpoint_url, region=s3_emulator.region, path_style=True
    )
    yield store
    await store.aclose()


def leftovers(s3_emulator: S3Emulator, bucket: str) -> tuple[list[str], list[str]]:  # noqa: F811
    client = s3_emulator.client()
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return objects, uploads


async def test_multipart_upload_and_ranged_download(storage, s3_emulator, bucket):  # noqa: F811
    data = os.urandom(12 * MiB + 12345)
    stored = await storage.write("tenant/job/0.mp4", chunks_of(data), content_type="video/mp4", max_bytes=100 * MiB)
    assert stored.size_bytes == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stored.uri == f"s3://{bucket}/mediagen/tenant/job/0.mp4"
    client = s3_emulator.client()
    head = client.head_object(Bucket=bucket, Key="mediagen/tenant/job/0.mp4")
    assert head["ContentType"] == "video/mp4" and head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-2")  # two parts: 8 MiB + the rest
    tags = client.get_object_tagging(Bucket=bucket, Key="mediagen/tenant/job/0.mp4")["TagSet"]
    assert {"Key": "sha256", "Value": stored.sha256} in tags
    assert await storage.size("tenant/job/0.mp4") == len(data)
    for offset in (0, 1, 5 * MiB + 7, len(data) - 1, len(data)):
        got = b"".join([c async for c in storage.read("tenant/job/0.mp4", offset=offset, chunk_size=300_000)])
        assert got == data[offset:], offset
    assert leftovers(s3_emulator, bucket)[1] == []


async def test_small_object_is_one_put_with_its_checksum(storage, s3_emulator, bucket):  # noqa: F811
    data = b"tiny artifact"
    stored = await storage.write("a/b.txt", chunks_of(data), content_type="text/plain")
    head = s3_emulator.client().head_object(Bucket=bucket, Key="mediagen/a/b.txt", ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == stored.sha256 == hashlib.sha256(data).hexdigest()
    assert head["ContentType"] == "text/plain"
    empty = await storage.write("a/empty.bin", chunks_of(b""), content_type="application/octet-stream")
    assert empty.size_bytes == 0 and await storage.size("a/empty.bin") == 0
    assert [c async for c in storage.read("a/empty.bin")] == []


@pytest.mark.parametrize("where", [1 * MiB, 9 * MiB])
async def test_failure_mid_upload_leaves_nothing(storage, s3_emulator, bucket, where):  # noqa: F811
    data = os.urandom(12 * MiB)
    with pytest.raises(RuntimeError):
        await storage.write("x/broken.bin", failing_after(data, where, RuntimeError("source broke")), content_type="x/y")
    assert leftovers(s3_emulator, bucket) == ([], [])


async def test_too_large_mid_upload_leaves_nothing(storage, s3_emulator, bucket):  # noqa: F811
    data = os.urandom(11 * MiB)
    with pytest.raises(OutputTooLarge):
        await storage.write("x/big.bin", chunks_of(data), content_type="x/y", max_bytes=10 * MiB)
    assert leftovers(s3_emulator, bucket) == ([], [])


async def test_cancellation_mid_upload_leaves_nothing(storage, s3_emulator, bucket):  # noqa: F811
    started = asyncio.Event()

    async def endless():
        for _ in range(40):  # 10 MiB, then the producer stalls
            yield os.urandom(256 * 1024)
        started.set()
        await asyncio.sleep(3600)
        yield b""

    task = asyncio.create_task(storage.write("x/cancelled.bin", endless(), content_type="x/y"))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(s3_emulator, bucket) == ([], [])


async def test_presigned_url_fetches_the_object(storage):
    data = os.urandom(300_000)
    await storage.write("p/q.bin", chunks_of(data), content_type="application/octet-stream")
    url = await storage.presign("p/q.bin", 120)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["120"]
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200 and response.content == data
    capped = await storage.presign("p/q.bin", 10 * MAX_PRESIGN_SECONDS)
    assert parse_qs(urlsplit(capped).query)["X-Amz-Expires"] == [str(MAX_PRESIGN_SECONDS)]


async def test_open_file_is_seekable_for_probing(storage):
    image = png(320, 200)
    await storage.write("img/0.png", chunks_of(image, 1000), content_type="image/png")
    with storage.open_file("img/0.png") as handle:
        info = probe(handle, content_type_hint="image/png")
        assert (info.width, info.height) == (320, 200)
        handle.seek(-4, io.SEEK_END)
        assert handle.read() == image[-4:]
        handle.seek(1)
        assert handle.read(3) == b"PNG" and handle.tell() == 4
    with pytest.raises(NotFound):
        with storage.open_file("img/missing.png"):
            pass


async def test_missing_objects(storage):
    with pytest.raises(NotFound):
        await storage.size("no/such.bin")
    with pytest.raises(NotFound):
        [c async for c in storage.read("no/such.bin")]
    await storage.delete("no/such.bin")  # absent is fine


@pytest.mark.parametrize("key", ["../escape", "/abs/key", "a//b", "a/./b", "a/../../b", "", "a\\b", "trailing/", "a b"])
async def test_key_escapes_are_refused(storage, key):
    with pytest.raises(InvalidStorageKey):
        await storage.write(key, chunks_of(b"x"), content_type="x/y")
    with pytest.raises(InvalidStorageKey):
        [c async for c in storage.read(key)]
    with pytest.raises(InvalidStorageKey):
        await storage.presign(key, 60)
    with pytest.raises(InvalidStorageKey):
        storage.uri(key)


def test_bad_prefix_and_part_size(s3_emulator):  # noqa: F811
    with pytest.raises(ValueError):
        S3Storage("b", "../up", endpoint_url=s3_emulator.endpoint_url)
    with pytest.raises(ValueError):
        S3Storage("b", "p", endpoint_url=s3_emulator.endpoint_url, part_size=1024)


async def test_missing_bucket_is_a_storage_error(s3_emulator):  # noqa: F811
    store = S3Storage("no-such-bucket-here", "", endpoint_url=s3_emulator.endpoint_url, region="us-east-1", path_style=True)
    try:
        with pytest.raises(StorageError) as err:
            await store.write("a.bin", chunks_of(b"x"), content_type="x/y")
        assert not err.value.retryable and err.value.metadata["s3ErrorCode"] == "NoSuchBucket"
    finally:
        await store.aclose()


# --- end to end over gRPC, every media type, on the mock providers ----------------------------


@pytest.fixture
async def s3_server(s3_emulator, bucket, tmp_path):  # noqa: F811
    settings = make_settings(
        tmp_path,
        storage="s3",
        s3_bucket=bucket,
        s3_prefix="mediagen/",
        s3_endpoint_url=s3_emulator.endpoint_url,
        s3_region=s3_emulator.region,
        s3_path_style=True,
    )
    server = MediagenServer(settings)
    async with serving(server) as channel:
        yield server, channel


@pytest.mark.parametrize("noun", list(MEDIA))
async def test_every_media_type_end_to_end_on_s3(s3_server, s3_emulator, bucket, noun, tmp_path):  # noqa: F811
    server, channel = s3_server
    assert isinstance(server.storage, S3Storage)
    api = Api(channel, noun)
    job = await api.generate(provider="mock")
    final = (await api.events(job.id))[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    artifact, data, _ = await api.download(job.id)
    assert artifact.uri.startswith(f"s3://{bucket}/mediagen/") and len(data) == artifact.size_bytes
    assert hashlib.sha256(data).hexdigest() == artifact.sha256
    key = artifact.uri.split(f"s3://{bucket}/", 1)[1]
    stored = s3_emulator.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored == data
    assert probe(io.BytesIO(data)).content_type == artifact.content_type
    _, tail, _ = await api.download(job.id, offset=len(data) // 2)
    assert tail == data[len(data) // 2 :]
    get = api.msg("Get{N}JobRequest", job_id=job.id, download_url_ttl=duration_pb2.Duration(seconds=600))
    got = (await getattr(api.stub, f"Get{noun}Job")(get)).job
    url = got.artifacts[0].download_url
    assert url and got.artifacts[0].HasField("download_url_expire_time")
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200 and response.content == data
    assert json_format.MessageToDict(got)["artifacts"][0]["uri"] == artifact.uri


async def test_unknown_key_prefix_cannot_be_read_through_download(s3_server, s3_emulator, bucket):  # noqa: F811
    server, _ = s3_server
    with pytest.raises(InvalidStorageKey):
        await server.storage.size("../other-prefix/secret")
    client = s3_emulator.client()
    client.put_object(Bucket=bucket, Key="outside.bin", Body=b"not ours")
    with pytest.raises(NotFound):
        await server.storage.size("outside.bin")  # looked up under mediagen/ only
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="mediagen/outside.bin")
