"""Byte-level access to local folders and S3 prefixes behind one small interface.

Used for reading images and manifests, and for everything a run writes under its output
(Parquet files, plans, commit markers, status). Writes are atomic for readers: S3 PUTs are
atomic by nature; local writes go to a temporary file in the same folder, then ``os.replace``.

:func:`storage_for` picks the implementation from the URI. Errors are translated to
``FileNotFoundError`` (missing object or file), :class:`PreconditionFailedError` (a conditional
write lost) and :class:`StorageError` (anything else, with the likely cause).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.s3 import S3Options, make_client
from pipeline.uris import S3_SCHEME, is_s3, parse_s3

logger = logging.getLogger(__name__)

#: Keys per ListObjectsV2 page (the S3 maximum).
LIST_PAGE_SIZE = 1000
#: Objects per DeleteObjects call (the S3 maximum).
DELETE_BATCH = 1000
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION_CODES = {"PreconditionFailedError", "412", "ConditionalRequestConflict"}


class StorageError(OSError):
    """A storage operation failed for a reason other than a missing object."""


class PreconditionFailedError(StorageError):
    """A conditional write found the object already there (another writer won)."""


@dataclass(frozen=True)
class ObjectInfo:
    """An object or file: its URI, size in bytes and version tag (S3 ETag, or size-mtime)."""

    uri: str
    size: int
    etag: str


class LocalStorage:
    """Files under local folders, addressed by absolute paths."""

    def read_bytes(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        path = Path(uri)
        if max_bytes is not None:
            size = path.stat().st_size
            if size > max_bytes:
                raise ObjectTooLargeError(uri, size, max_bytes)
        return path.read_bytes()

    def info(self, uri: str) -> ObjectInfo:
        st = os.stat(uri)
        return ObjectInfo(uri, st.st_size, local_etag(st))

    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if if_absent:
                try:
                    os.link(tmp, path)  # atomic create-if-absent
                except FileExistsError:
                    raise PreconditionFailedError(f"{uri} already exists") from None
            else:
                os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def exists(self, uri: str) -> bool:
        return os.path.exists(uri)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uri)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Files under the folder ``prefix``, depth first, each folder's entries sorted by name."""
        yield from _walk_sorted(prefix)

    def list_folders(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of the folder ``prefix``, sorted."""
        try:
            return sorted(e.name for e in os.scandir(prefix) if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []


def local_etag(st: os.stat_result) -> str:
    """A local file's version tag: size and modification time in ns."""
    return f"{st.st_size}-{st.st_mtime_ns}"


def _walk_sorted(folder: str) -> Iterator[ObjectInfo]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(entry.path)
        elif entry.is_file():
            st = entry.stat()
            yield ObjectInfo(entry.path, st.st_size, local_etag(st))


class ObjectTooLargeError(StorageError):
    """An object is over the configured byte limit; it was not downloaded."""

    def __init__(self, uri: str, size: int, limit: int) -> None:
        super().__init__(f"object is {size} bytes, over the limit of {limit}")
        self.uri, self.size, self.limit = uri, size, limit


class S3Storage:
    """Objects in S3 or an S3-compatible store, through one thread-safe boto3 client."""

    def __init__(self, options: S3Options | None = None, *, max_pool_connections: int = 16):
        self.options = options or S3Options()
        self._max_pool = max_pool_connections
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = make_client(self.options, max_pool_connections=self._max_pool)
        return self._client

    def read_bytes(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        loc = parse_s3(uri)
        with _translated(uri):
            response = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
            size = response.get("ContentLength")
            if max_bytes is not None and size is not None and size > max_bytes:
                response["Body"].close()
                raise ObjectTooLargeError(uri, size, max_bytes)
            return response["Body"].read()

    def info(self, uri: str) -> ObjectInfo:
        loc = parse_s3(uri)
        with _translated(uri):
            head = self.client.head_object(Bucket=loc.bucket, Key=loc.key)
        return ObjectInfo(uri, head["ContentLength"], head["ETag"].strip('"'))

    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        loc = parse_s3(uri)
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        with _translated(uri):
            self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **extra)

    def exists(self, uri: str) -> bool:
        try:
            self.info(uri)
        except FileNotFoundError:
            return False
        return True

    def delete(self, uri: str) -> None:
        loc = parse_s3(uri)
        with _translated(uri):
            self.client.delete_object(Bucket=loc.bucket, Key=loc.key)

    def list_folders(self, prefix: str) -> list[str]:
        """Names of the "folders" (common prefixes) directly under ``prefix/``, sorted."""
        loc = parse_s3(prefix.rstrip("/") + "/")
        paginator = self.client.get_paginator("list_objects_v2")
        names = []
        with _translated(prefix):
            for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key, Delimiter="/"):
                for common in page.get("CommonPrefixes", ()):
                    names.append(common["Prefix"][len(loc.key) :].rstrip("/"))
        return sorted(names)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with the prefix, in S3 listing (UTF-8 binary) order.

        To list a "folder", end the prefix with ``/``.
        """
        loc = parse_s3(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=loc.bucket, Prefix=loc.key, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
        )
        with _translated(prefix):
            for page in pages:
                for item in page.get("Contents", ()):
                    yield ObjectInfo(
                        f"{S3_SCHEME}{loc.bucket}/{item['Key']}",
                        item["Size"],
                        item["ETag"].strip('"'),
                    )


@contextlib.contextmanager
def _translated(uri: str):
    """Map botocore errors to FileNotFoundError / PreconditionFailedError / StorageError."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            raise StorageError(
                f"bucket of {uri} does not exist; create it or fix the URI"
            ) from None
        if code in _MISSING_CODES or status == 404:
            raise FileNotFoundError(2, "not found", uri) from None
        if code in _PRECONDITION_CODES or status == 412:
            raise PreconditionFailedError(f"{uri} already exists") from None
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            raise StorageError(
                f"access denied to {uri} ({code}); check the credentials and the bucket policy"
            ) from None
        raise StorageError(f"{uri}: {code or status}: {error.get('Message', exc)}") from None
    except BotoCoreError as exc:
        raise StorageError(
            f"{uri}: {exc}; check the endpoint (--endpoint-url / AWS_ENDPOINT_URL) and network"
        ) from None


Storage = LocalStorage | S3Storage


def storage_for(uri: str, s3_options: S3Options | None = None) -> Storage:
    """The storage implementation for ``uri`` (``s3://`` or a local path)."""
    if is_s3(uri):
        return S3Storage(s3_options)
    return LocalStorage()
