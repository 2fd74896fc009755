"""Durability and storage faults: idempotency across restarts, a full disk, input bounds."""

from __future__ import annotations

import errno
import io
import uuid

import grpc
import pytest
from PIL import Image

from mediagen.v1 import common_pb2, image_pb2, image_pb2_grpc, music_pb2, music_pb2_grpc
from providers.storage import local as local_storage
from providers.storage.local import LocalStorage
from server.app import MediagenServer
from tests.conftest import make_settings


async def test_request_id_idempotency_holds_across_restarts(tmp_path):
    request_id = str(uuid.uuid4())
    ids = []
    for _ in range(2):
        server = MediagenServer(make_settings(tmp_path))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = image_pb2_grpc.ImageServiceStub(channel)
                job = (await stub.GenerateImage(image_pb2.GenerateImageRequest(prompt="x", request_id=request_id))).job
                ids.append(job.id)
        finally:
            await server.stop(grace=0.1)
    assert ids[0] == ids[1]


class FullDisk(LocalStorage):
    """Local storage on a disk that fills up after a few writes of one chunk."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.chunks_left = 2


async def test_disk_full_mid_write_leaves_nothing_and_fails_clearly(tmp_path, monkeypatch):
    storage = FullDisk(tmp_path / "artifacts")
    real_write = local_storage._write_and_hash

    def filling_write(handle, digest, chunk):
        if storage.chunks_left == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        storage.chunks_left -= 1
        real_write(handle, digest, chunk)

    monkeypatch.setattr(local_storage, "_write_and_hash", filling_write)
    server = MediagenServer(make_settings(tmp_path), storage=storage)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = music_pb2_grpc.MusicServiceStub(channel)
            # 30 s of 44.1 kHz WAV is several chunks long.
            job = (await stub.GenerateMusic(music_pb2.GenerateMusicRequest(prompt="x", duration_seconds=30))).job
            final = [r.event async for r in stub.WatchMusicJob(music_pb2.WatchMusicJobRequest(job_id=job.id))][-1].job
    finally:
        await server.stop(grace=0.1)
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "STORAGE_FULL" in str(final.error)
    assert not final.artifacts
    files = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert files == [], f"partial files left: {files}"


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, reason",
    [(b"definitely not an image", "INVALID_FORMAT"), (_png(8000, 6000), "TOO_LARGE")],
)
async def test_input_images_are_bounded_in_bytes_and_pixels(channel, data, reason):
    stub = image_pb2_grpc.ImageServiceStub(channel)
    request = image_pb2.GenerateImageRequest(prompt="x", input_image=common_pb2.MediaInput(data=data))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GenerateImage(request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input_image.data" in err.value.details()
