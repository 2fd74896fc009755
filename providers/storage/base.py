"""The storage interface and the key rules every backend shares."""

from __future__ import annotations

import abc
import posixpath
import re
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO

from providers.errors import InvalidStorageKey

# Download chunk size: well under gRPC's 4 MiB message limit, large enough that
# per-message overhead stays small (see bench/README.md for the measurement).
# A multiple of 3 so that the base64 of each chunk (grpcurl's JSON) has no
# padding and the chunks' base64 texts can simply be concatenated and decoded.
CHUNK_SIZE = 3 * 128 * 1024

_KEY_CHARS = re.compile(r"^[A-Za-z0-9._\-/=+]+$")
MAX_KEY_LENGTH = 512


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    size_bytes: int
    sha256: str


def safe_key(key: str) -> str:
    """Return ``key`` if it stays inside the storage root, else raise InvalidStorageKey.

    Keys are relative POSIX paths of plain characters: no absolute paths, no
    ``..`` or ``.`` segments, no empty segments, no backslashes or control bytes.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidStorageKey(f"storage key must be 1 to {MAX_KEY_LENGTH} characters")
    if not _KEY_CHARS.match(key):
        raise InvalidStorageKey("storage key has characters outside [A-Za-z0-9._-/=+]")
    if key.startswith("/") or key.endswith("/"):
        raise InvalidStorageKey("storage key must be a relative file path")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidStorageKey("storage key must not contain empty, '.' or '..' segments")
    if posixpath.normpath(key) != key:
        raise InvalidStorageKey("storage key is not normalised")
    return key


class Storage(abc.ABC):
    """A place to keep artifacts. Writes are atomic: all or nothing."""

    #: "local" or "s3".
    kind: str
    #: Whether ``presign`` gives URLs (vendors that fetch inputs by URL need one).
    can_presign: bool = False

    @abc.abstractmethod
    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int | None = None
    ) -> StoredObject:
        """Store the stream under ``key``, hashing as it goes.

        Nothing is visible under ``key`` until the whole stream is stored; when
        the stream or the backend fails, nothing partial is left behind.
        """

    @abc.abstractmethod
    def read(self, key: str, *, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Stream the object from ``offset``; raises NotFound when absent."""

    @abc.abstractmethod
    async def size(self, key: str) -> int:
        """Size in bytes; raises NotFound when absent."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; absent objects are fine."""

    @abc.abstractmethod
    def open_file(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A seekable binary reader (blocking; call it in a thread), e.g. for probing."""

    async def presign(self, key: str, ttl_seconds: int) -> str | None:
        """A URL to fetch the object directly, or None where the backend has none."""
        return None

    @abc.abstractmethod
    def uri(self, key: str) -> str:
        """How the object is named in Artifact.uri."""

    async def aclose(self) -> None:
        """Release resources."""
