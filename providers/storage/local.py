"""Local filesystem storage: keys confined to a root, atomic writes."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from providers.errors import InvalidStorageKey, NotFound, OutputTooLarge, StorageError, StorageFull
from providers.storage.base import CHUNK_SIZE, Storage, StoredObject, safe_key

_TMP_DIR = ".tmp"


class LocalStorage(Storage):
    kind = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / _TMP_DIR
        self._tmp.mkdir(exist_ok=True)

    def path_for(self, key: str) -> Path:
        """The file for ``key``; refuses keys (or symlinks) that lead outside the root."""
        safe_key(key)
        if key == _TMP_DIR or key.startswith(_TMP_DIR + "/"):
            raise InvalidStorageKey("storage key uses a reserved prefix")
        path = self.root / key
        # resolve() follows symlinks already on disk: a link pointing outside is refused.
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise InvalidStorageKey("storage key leads outside the storage root")
        return path

    def uri(self, key: str) -> str:
        return f"file:{key}"

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int | None = None
    ) -> StoredObject:
        final = self.path_for(key)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(open, tmp, "wb")
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise OutputTooLarge(f"output is larger than the {max_bytes} byte limit")
                    await asyncio.to_thread(_write_and_hash, handle, digest, chunk)
                await asyncio.to_thread(_finish, handle, tmp, final)
            finally:
                handle.close()
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _storage_error(exc) from exc
            raise
        return StoredObject(key=key, uri=self.uri(key), size_bytes=size, sha256=digest.hexdigest())

    async def read(self, key: str, *, offset: int = 0, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        path = self.path_for(key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {key} is not in storage", reason="ARTIFACT_NOT_FOUND") from exc
        try:
            handle.seek(offset)
            while True:
                chunk = await asyncio.to_thread(handle.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            handle.close()

    async def size(self, key: str) -> int:
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"artifact {key} is not in storage", reason="ARTIFACT_NOT_FOUND") from exc

    async def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    @contextmanager
    def open_file(self, key: str):  # type: ignore[override]
        with open(self.path_for(key), "rb") as handle:
            yield handle

    def clean_temporary_files(self) -> int:
        """Remove writes that a crash left half done. Called at start-up only."""
        removed = 0
        for part in self._tmp.glob("*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        return removed


def _write_and_hash(handle: BinaryIO, digest, chunk: bytes) -> None:
    handle.write(chunk)
    digest.update(chunk)


def _finish(handle: BinaryIO, tmp: Path, final: Path) -> None:
    """Make the write durable, then visible under its key in one rename."""
    handle.flush()
    os.fsync(handle.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _storage_error(exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull("storage is full; the artifact was not kept")
    return StorageError(f"storage write failed: {exc.strerror or exc.__class__.__name__}")
