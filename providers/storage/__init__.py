"""Where artifacts live: local disk (default) or S3."""

from providers.storage.base import CHUNK_SIZE, Storage, StoredObject, safe_key

__all__ = ["CHUNK_SIZE", "Storage", "StoredObject", "safe_key"]
