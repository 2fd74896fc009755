"""A real S3 emulator over HTTP for tests: moto's server mode on a free loopback port.

Not an in-process mock of boto3: boto3 talks HTTP to a werkzeug server that
implements the S3 REST API (multipart uploads, ranged GETs, presigned URLs,
the 5 MiB minimum part size). Presigned URL signatures and expiry are NOT
verified by moto; tests check the URL's query parameters instead.

    with S3Emulator() as s3:
        client = s3.client()
        client.create_bucket(Bucket="media")
        storage = S3Storage("media", "mediagen", endpoint_url=s3.endpoint_url, region=s3.region, path_style=True)
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Emulator:
    region = "us-east-1"

    def __init__(self) -> None:
        self._server: Any = None
        self._client: Any = None
        self.endpoint_url = ""

    def start(self) -> S3Emulator:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> S3Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client(self) -> Any:
        """A boto3 client of the emulator (made once: making one takes about a second)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        name = f"mediagen-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_emulator() -> Iterator[S3Emulator]:
    """One moto server for the whole test session (each test makes its own bucket)."""
    saved = {name: os.environ.get(name) for name in DUMMY_CREDENTIALS}
    os.environ.update(DUMMY_CREDENTIALS)
    try:
        with S3Emulator() as emulator:
            yield emulator
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
