"""providers.inputs: type and size from the first bytes, the resolved input's forms, and
fitting an image to a vendor's limits."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from providers.base import JobContext
from providers.errors import FailedPrecondition, InvalidArgument
from providers.inputs import (
    HEAD_LIMIT,
    InlineInput,
    MediaHead,
    UnreadableMedia,
    UnsupportedMedia,
    UrlInput,
    data_uri_capacity,
    detect_bytes,
    detect_head,
    fit_image,
    url_ttl,
)

TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def encode(width: int, height: int, fmt: str, **options) -> bytes:
    pixels = np.random.default_rng(width * 7 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("JPEG", {"icc_profile": b"\0" * 150_000, "exif": b"Exif\0\0" + b"\0" * 60_000}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"quality": 70}),
        ("WEBP", {"exif": b"Exif\0\0" + b"\0" * 100}),  # the extended (VP8X) layout
    ],
)
@pytest.mark.parametrize("size", [(1, 1), (17, 33), (1920, 1080), (4001, 3)])
def test_detection_agrees_with_pillow_from_the_first_bytes(fmt, options, size):
    data = encode(*size, fmt, **options)
    with Image.open(io.BytesIO(data)) as image:
        expected = MediaHead(TYPES[fmt], *image.size)
    # Fed a byte at a time up to the header, as an upload's chunks would.
    needed = next(n for n in range(1, len(data) + 1) if detect_head(data[:n]) is not None)
    assert detect_head(data[:needed]) == expected
    assert needed <= HEAD_LIMIT
    assert needed < 400 or "icc_profile" in options
    assert detect_head(data, final=True) == expected


def test_what_is_not_accepted_is_known_early():
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, "GIF")
    for data, found in (
        (gif.getvalue(), "image/gif"),
        (b"%PDF-1.4\n", "application/pdf"),
        (b"RIFF\x24\0\0\0WAVEfmt ", "audio/wav"),
        (b"ID3\x04\0\0\0\0\0\0", "audio/mpeg"),
        (b"\0\0\0\x18ftypheic", "image/heic"),
        (b"hello, world", ""),
    ):
        with pytest.raises(UnsupportedMedia) as err:
            detect_head(data[:12])
        assert err.value.found == found
    with pytest.raises(UnsupportedMedia):
        detect_head(b"<svg")  # four bytes that no accepted type starts with
    assert detect_head(b"\x89PN") is None  # could still be a PNG


def test_broken_headers():
    png = encode(8, 8, "PNG")
    with pytest.raises(UnreadableMedia):
        detect_head(png[:12] + b"IDAT" + png[16:])
    with pytest.raises(UnreadableMedia):
        detect_head(png[:20], final=True)  # cut inside the header
    with pytest.raises(UnreadableMedia):
        detect_head(b"\xff\xd8\xff\xda" + b"\0" * 40)  # image data before any frame header
    with pytest.raises(UnreadableMedia):
        detect_head(b"\xff\xd8" + b"\xff\xe1\xff\xff" + b"\0" * (HEAD_LIMIT + 10))  # no frame header in the head
    with pytest.raises(InvalidArgument) as err:
        detect_bytes(b"GIF89a....", "input_image.data")
    assert err.value.field_violations[0].field == "input_image.data"


async def test_inline_input_forms():
    data = encode(64, 48, "JPEG")
    media = InlineInput(data, content_type="image/jpg")
    assert (media.content_type, media.size, media.width, media.height) == ("image/jpeg", len(data), 64, 48)
    assert await media.public_url(60) is None and not media.may_have_public_url
    uri = await media.as_data_uri(10 * len(data))
    assert uri.startswith("data:image/jpeg;base64,")
    assert len(uri) == len("data:image/jpeg;base64,") + 4 * math.ceil(len(data) / 3)
    with pytest.raises(InvalidArgument) as err:
        await media.as_data_uri(len(uri) - 1)
    assert err.value.field_violations[0].reason == "TOO_LARGE"
    async with media.open() as chunks:
        assert b"".join([c async for c in chunks]) == data
    assert data_uri_capacity("image/jpeg", len(uri)) >= len(data)


async def test_a_url_without_a_fetcher_cannot_give_bytes():
    media = UrlInput("https://images.example.com/a.png")
    assert await media.public_url(60) == "https://images.example.com/a.png"
    with pytest.raises(FailedPrecondition):
        await media.read_bytes(100)


def test_presigned_urls_live_as_long_as_the_job():
    assert url_ttl(None) == 24 * 3600
    assert url_ttl(JobContext(job_id="j")) == 24 * 3600
    import time

    assert url_ttl(JobContext(job_id="j", deadline=time.monotonic() + 60)) == 15 * 60
    assert 7100 < url_ttl(JobContext(job_id="j", deadline=time.monotonic() + 7200)) <= 7200
    assert url_ttl(JobContext(job_id="j", deadline=time.monotonic() + 30 * 24 * 3600)) == 7 * 24 * 3600


def test_fit_image_within_limits():
    wide = encode(2000, 400, "PNG")  # 5:1
    fitted = fit_image(wide, types=["image/jpeg", "image/png"], max_bytes=10_000_000, min_side=300, max_aspect=2.5)
    assert fitted.content_type == "image/jpeg"
    assert fitted.width / fitted.height <= 2.5 and min(fitted.width, fitted.height) >= 300
    with Image.open(io.BytesIO(fitted.data)) as image:
        assert image.format == "JPEG" and image.size == (fitted.width, fitted.height)

    big = encode(2000, 2000, "PNG")
    fitted = fit_image(big, types=["image/jpeg"], max_bytes=200_000)
    assert len(fitted.data) <= 200_000

    fitted = fit_image(big, types=["image/png"], max_bytes=5_000_000, exact_sizes=[(1024, 576), (768, 768)])
    assert (fitted.content_type, fitted.width, fitted.height) == ("image/png", 768, 768)

    fitted = fit_image(encode(100, 100, "WEBP"), types=["image/png"], max_bytes=1_000_000, min_side=300)
    assert (fitted.content_type, fitted.width, fitted.height) == ("image/png", 300, 300)
