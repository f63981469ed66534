"""The storages an actor reads its images from and writes its Parquet files to."""

from __future__ import annotations

from pipeline.store.s3 import S3Options
from pipeline.store.storage import LocalStorage, S3Storage, Storage
from pipeline.store.uris import is_s3


class ActorStorages:
    """Local files and one S3 client, shared by every shard of an actor and all its threads.

    Args:
        s3_options: non-secret S3 client settings (credentials come from the environment).
        max_pool_connections: of the S3 client; at least the reads that may run at once.
    """

    def __init__(self, s3_options: S3Options | None, *, max_pool_connections: int) -> None:
        self.local = LocalStorage()
        self.s3 = S3Storage(s3_options, max_pool_connections=max_pool_connections)

    def for_uri(self, uri: str) -> Storage:
        """The storage that holds ``uri`` (``s3://...`` or an absolute local path)."""
        return self.s3 if is_s3(uri) else self.local
