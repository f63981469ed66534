"""Byte-level access to local folders and S3 prefixes behind one small interface.

Used for reading images and manifests, and for everything a run writes under its output
(Parquet files, plans, run records, status). Writes are atomic for readers: S3 PUTs are
atomic by nature; local writes go to a temporary file in the same folder, then ``os.replace``.

Compare-and-swap, for objects several processes contend for (the output's lease):
:meth:`~LocalStorage.read_versioned` returns an object's bytes with its version tag, and
:meth:`~LocalStorage.write_if_version` / :meth:`~LocalStorage.delete_if_version` act only if
the object still carries that tag (``None``: only if there is no object). On S3 these are
``If-Match`` / ``If-None-Match`` requests and the tag is the ETag; locally the tag is a hash
of the content, and the compare and the replace happen under an exclusive ``flock`` of a
sibling lock file (``.NAME.lock``), which every such call takes.

:func:`storage_for` picks the implementation from the URI. Errors are translated to
``FileNotFoundError`` (missing object or file), :class:`PreconditionFailedError` (a conditional
write lost) and :class:`StorageError` (anything else, with the likely cause).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from pipeline.store.s3 import S3Options, make_client
from pipeline.store.uris import S3_SCHEME, is_s3, parse_s3
from yolov4.retry import jittered_backoff_s

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Keys per ListObjectsV2 page (the S3 maximum).
LIST_PAGE_SIZE = 1000
#: Objects per DeleteObjects call (the S3 maximum).
DELETE_BATCH = 1000
#: Bytes per read while streaming an object to a local file.
DOWNLOAD_CHUNK_BYTES = 1 << 20
#: Tries of one S3 operation that failed transiently *after* botocore's own retries: a body
#: that broke while being read (botocore retries requests, not bodies), or botocore giving up
#: once its retry quota is spent under sustained throttling. Conditional writes are not
#: retried here (a lost response would turn our own success into "already exists").
S3_ATTEMPTS = 3
#: Delay before the first such retry; doubles each time, capped, with full jitter.
S3_RETRY_BACKOFF_S = 0.25
S3_RETRY_BACKOFF_MAX_S = 2.0
#: Error codes of a store that is overloaded or briefly failing (worth retrying later).
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "TooManyRequests",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "PriorRequestNotComplete",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
#: How each node fault is put: its cause, and what to do about it.
_EXPIRED = (
    "the credentials have expired",
    "refresh them (a new session token or role credentials) on every node",
)
_BAD_TOKEN = (
    "the session token is not valid",
    "check AWS_SESSION_TOKEN or the profile on every node",
)
_UNKNOWN_KEY = (
    "access denied: the store does not know this access key id",
    "check the credentials (AWS_ACCESS_KEY_ID or the profile) on every node",
)
_WRONG_SECRET = (
    "access denied: the secret key does not match the access key id",
    "check the credentials (AWS_SECRET_ACCESS_KEY or the profile) on every node",
)
_SKEWED_CLOCK = (
    "this machine's clock is too far from the store's",
    "synchronise the clock (NTP/chrony) on every node",
)
#: Error codes with which a store refuses the caller itself, whatever the object: the cause and
#: the fix of each, for the one sentence a run stops with (:class:`NodeFaultError`).
_NODE_FAULT_CODES = {
    "ExpiredToken": _EXPIRED,
    "ExpiredTokenException": _EXPIRED,
    "TokenRefreshRequired": _EXPIRED,
    "InvalidToken": _BAD_TOKEN,
    "InvalidAccessKeyId": _UNKNOWN_KEY,
    "SignatureDoesNotMatch": _WRONG_SECRET,
    "RequestTimeTooSkewed": _SKEWED_CLOCK,
    "RequestExpired": _SKEWED_CLOCK,
}
#: botocore's errors for credentials it could not find or load on this machine.
_CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
)
#: The end of a node fault's message: what a run that stopped on it does next.
_RESUME = " (a run that stopped on it continues with --resume)"
_PRECONDITION_CODES = {"PreconditionFailedError", "412", "ConditionalRequestConflict"}


class StorageError(OSError):
    """A storage operation failed for a reason other than a missing object."""


class PreconditionFailedError(StorageError):
    """A conditional write found the object already there (another writer won)."""


class TransientStorageError(StorageError):
    """The store throttled, failed with a 5xx, timed out or dropped the connection: the same
    operation may well succeed later."""


class NodeFaultError(StorageError):
    """The store refused this process for a reason of its own (expired or wrong credentials,
    no credentials at all, a clock too far off): every read from here fails the same way, so
    it is never a property of one image. A shard attempt that meets it fails and is retried on
    another actor; the message is one sentence naming the cause and the fix."""


@dataclass(frozen=True)
class Versioned:
    """An object's bytes and the version tag they had when read (see the module docstring)."""

    data: bytes
    version: str


@dataclass(frozen=True)
class ObjectInfo:
    """An object or file: its URI, size in bytes and version tag (S3 ETag, or size-mtime)."""

    uri: str
    size: int
    etag: str


class LocalStorage:
    """Files under local folders, addressed by absolute paths."""

    def read_bytes(self, uri: str, *, max_bytes: int | None = None) -> bytes:
        """The file's bytes. Anything but a regular file (a FIFO, socket or device, where a
        read may block forever) raises :class:`StorageError` without being opened."""
        path = Path(uri)
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "is a directory", uri)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{uri}: not a regular file (a FIFO, socket or device)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ObjectTooLargeError(uri, st.st_size, max_bytes)
        return path.read_bytes()

    def info(self, uri: str) -> ObjectInfo:
        st = os.stat(uri)
        return ObjectInfo(uri, st.st_size, local_etag(st))

    def download(self, uri: str, path: str) -> None:
        """Copy the file ``uri`` to the local ``path`` (its folder must exist)."""
        shutil.copyfile(uri, path)

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

    def probe_read(self, uri: str) -> None:
        """Read the file's first byte: proves read permission without reading it all."""
        with open(uri, "rb") as fh:
            fh.read(1)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(uri)

    def read_versioned(self, uri: str) -> Versioned:
        """The file's bytes and version tag (a hash of them), for :meth:`write_if_version`."""
        data = self.read_bytes(uri)
        return Versioned(data, content_version(data))

    def write_if_version(self, uri: str, data: bytes, version: str | None) -> str:
        """Write ``data`` only if the file's version is ``version`` (``None``: only if there is
        no file); returns the new version. Raises :class:`PreconditionFailedError` otherwise."""
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path):
            if version is None:
                self.write_bytes(uri, data, if_absent=True)
            else:
                _require_version(path, version)
                self.write_bytes(uri, data)
        return content_version(data)

    def delete_if_version(self, uri: str, version: str) -> None:
        """Delete the file only if its version is ``version``; raises
        :class:`PreconditionFailedError` when it changed or is gone."""
        path = Path(uri)
        if not path.parent.is_dir():
            raise PreconditionFailedError(f"{uri} is gone; it was not deleted")
        with _exclusive(path):
            _require_version(path, version)
            os.unlink(path)

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


#: Prefix and suffix of the sibling lock file of a local compare-and-swap (``.NAME.lock``).
LOCK_PREFIX = "."
LOCK_SUFFIX = ".lock"


def content_version(data: bytes) -> str:
    """The version tag of a local file's content for compare-and-swap: its SHA-256. Unlike
    :func:`local_etag` it cannot repeat for a different content written within the file
    system's timestamp granularity."""
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive ``flock`` of ``path``'s sibling lock file (created if missing; left
    in place, as removing a lock file races with its next taker)."""
    lock = path.with_name(f"{LOCK_PREFIX}{path.name}{LOCK_SUFFIX}")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _require_version(path: Path, version: str) -> None:
    """Raise :class:`PreconditionFailedError` unless ``path`` exists with ``version``."""
    try:
        current = content_version(path.read_bytes())
    except FileNotFoundError:
        raise PreconditionFailedError(f"{path} is gone (expected version {version})") from None
    if current != version:
        raise PreconditionFailedError(f"{path} changed (expected version {version})")


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
        """The object's bytes; a body that breaks mid-read is fetched again (see
        :data:`S3_ATTEMPTS`). Raises :class:`TransientStorageError` when it still cannot."""
        loc = parse_s3(uri)

        def read() -> bytes:
            response = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
            body = response["Body"]
            try:
                size = response.get("ContentLength")
                if max_bytes is not None and size is not None and size > max_bytes:
                    raise ObjectTooLargeError(uri, size, max_bytes)
                return body.read()  # botocore checks the length (and checksum, if sent)
            finally:
                body.close()

        return self._retrying(uri, "read", read)

    def download(self, uri: str, path: str) -> None:
        """Stream the object into the local file ``path`` (its folder must exist), a chunk of
        :data:`DOWNLOAD_CHUNK_BYTES` at a time, so memory does not grow with the object; a
        body that breaks mid-read is fetched again (see :data:`S3_ATTEMPTS`). ``path`` appears
        whole or not at all."""
        loc = parse_s3(uri)
        folder = os.path.dirname(path) or "."

        def fetch() -> None:
            response = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
            body = response["Body"]
            fd, tmp = tempfile.mkstemp(prefix=".download.", dir=folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    shutil.copyfileobj(body, fh, DOWNLOAD_CHUNK_BYTES)
                os.replace(tmp, path)
            finally:
                body.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

        self._retrying(uri, "download", fetch)

    def info(self, uri: str) -> ObjectInfo:
        loc = parse_s3(uri)
        head = self._retrying(
            uri, "head", lambda: self.client.head_object(Bucket=loc.bucket, Key=loc.key)
        )
        return ObjectInfo(uri, head["ContentLength"], head["ETag"].strip('"'))

    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        loc = parse_s3(uri)
        if if_absent:  # botocore's retries only: see S3_ATTEMPTS
            with _translated(uri):
                self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, IfNoneMatch="*")
            return
        self._retrying(
            uri, "write", lambda: self.client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        )

    def exists(self, uri: str) -> bool:
        try:
            self.info(uri)
        except FileNotFoundError:
            return False
        return True

    def probe_read(self, uri: str) -> None:
        """GET the object's first byte: proves ``s3:GetObject`` without downloading it."""
        loc = parse_s3(uri)

        def probe() -> None:
            response = self.client.get_object(Bucket=loc.bucket, Key=loc.key, Range="bytes=0-0")
            response["Body"].read()

        try:
            self._retrying(uri, "probe", probe)  # a flaky network is not a missing permission
        except StorageError as exc:
            if "InvalidRange" not in str(exc):  # an empty object has no first byte
                raise

    def delete(self, uri: str) -> None:
        loc = parse_s3(uri)
        self._retrying(
            uri, "delete", lambda: self.client.delete_object(Bucket=loc.bucket, Key=loc.key)
        )

    def read_versioned(self, uri: str) -> Versioned:
        """The object's bytes and ETag, from one GET (retried as :meth:`read_bytes` is)."""
        loc = parse_s3(uri)

        def read() -> Versioned:
            response = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
            body = response["Body"]
            try:
                return Versioned(body.read(), response["ETag"].strip('"'))
            finally:
                body.close()

        return self._retrying(uri, "read", read)

    def write_if_version(self, uri: str, data: bytes, version: str | None) -> str:
        """PUT ``data`` only if the object's ETag is ``version`` (``If-Match``; ``None``: only
        if there is no object, ``If-None-Match: *``); returns the new ETag. Raises
        :class:`PreconditionFailedError` otherwise (a 412, or the 404 some stores answer an
        ``If-Match`` on a missing key). Not retried here beyond botocore: a retry after a
        lost reply meets our own write and fails; the caller tells that case by reading."""
        loc = parse_s3(uri)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": f'"{version}"'}
        try:
            with _translated(uri):
                response = self.client.put_object(
                    Bucket=loc.bucket, Key=loc.key, Body=data, **condition
                )
        except (PreconditionFailedError, FileNotFoundError):
            expected = "no object" if version is None else f"version {version}"
            raise PreconditionFailedError(f"{uri} is not at {expected}; not written") from None
        return response["ETag"].strip('"')

    def delete_if_version(self, uri: str, version: str) -> None:
        """DELETE the object only if its ETag is ``version`` (``If-Match``, as AWS S3 and
        SeaweedFS honour it); raises :class:`PreconditionFailedError` when it changed or is
        gone. A store that ignores the header deletes unconditionally."""
        loc = parse_s3(uri)
        try:
            with _translated(uri):
                self.client.delete_object(Bucket=loc.bucket, Key=loc.key, IfMatch=f'"{version}"')
        except (PreconditionFailedError, FileNotFoundError):
            raise PreconditionFailedError(
                f"{uri} is not at version {version}; not deleted"
            ) from None

    def list_folders(self, prefix: str) -> list[str]:
        """Names of the "folders" (common prefixes) directly under ``prefix/``, sorted."""
        loc = parse_s3(prefix.rstrip("/") + "/")
        names = []
        for page in self._pages(prefix, Bucket=loc.bucket, Prefix=loc.key, Delimiter="/"):
            for common in page.get("CommonPrefixes", ()):
                names.append(common["Prefix"][len(loc.key) :].rstrip("/"))
        return sorted(names)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose key starts with the prefix, in S3 listing (UTF-8 binary) order.

        To list a "folder", end the prefix with ``/``.
        """
        loc = parse_s3(prefix)
        for page in self._pages(prefix, Bucket=loc.bucket, Prefix=loc.key, MaxKeys=LIST_PAGE_SIZE):
            for item in page.get("Contents", ()):
                yield ObjectInfo(
                    f"{S3_SCHEME}{loc.bucket}/{item['Key']}",
                    item["Size"],
                    item["ETag"].strip('"'),
                )

    def _pages(self, prefix: str, **params) -> Iterator[dict]:
        """ListObjectsV2 pages, each request retried on its own (a long listing does not
        start over when one page fails)."""
        token = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._retrying(
                prefix, "list", lambda extra=extra: self.client.list_objects_v2(**params, **extra)
            )
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _retrying(self, uri: str, what: str, call: Callable[[], _T]) -> _T:
        """``call()`` with errors translated; transient failures retried (:data:`S3_ATTEMPTS`)."""
        for attempt in range(1, S3_ATTEMPTS + 1):
            try:
                with _translated(uri):
                    return call()
            except TransientStorageError as exc:
                if attempt == S3_ATTEMPTS:
                    raise
                delay = jittered_backoff_s(attempt, S3_RETRY_BACKOFF_S, S3_RETRY_BACKOFF_MAX_S)
                logger.debug(
                    "%s of %s failed (%s); try %d of %d in %.2f s",
                    what,
                    uri,
                    exc,
                    attempt + 1,
                    S3_ATTEMPTS,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure the same operation may not meet again later: throttling,
    a 5xx, a timeout, a dropped connection or a body that broke while being read."""
    return isinstance(
        exc,
        TransientStorageError
        | BotoConnectionError
        | HTTPClientError
        | IncompleteReadError
        | FlexibleChecksumError
        | urllib3.exceptions.HTTPError
        | ConnectionError
        | TimeoutError,
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
        if code in _NODE_FAULT_CODES:
            cause, fix = _NODE_FAULT_CODES[code]
            raise NodeFaultError(
                f"{cause} ({code}, reading or writing {uri}); {fix}{_RESUME}"
            ) from None
        if code in {"AccessDenied", "403"}:
            raise StorageError(
                f"access denied to {uri} ({code}): the credentials in use lack permission for "
                "it; grant them the S3 actions needed (s3:ListBucket, s3:GetObject, and "
                "s3:PutObject to write) in the IAM or bucket policy, or use credentials that "
                "have them (--profile)"
            ) from None
        if code in _TRANSIENT_CODES or (status or 0) >= 500 or status == 429:
            raise TransientStorageError(
                f"{uri}: {code or status}: {error.get('Message', exc)}; the store is throttling "
                "or failing, after botocore's retries (more: --s3-max-attempts); try again later"
            ) from None
        raise StorageError(f"{uri}: {code or status}: {error.get('Message', exc)}") from None
    except _CREDENTIAL_ERRORS as exc:
        raise NodeFaultError(
            f"no usable credentials on this machine ({type(exc).__name__}: {exc}); provide "
            "them with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile of the AWS "
            "config files (--profile NAME or AWS_PROFILE) or an instance or workload role, on "
            f"every node of a run{_RESUME}"
        ) from None
    except (BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
        if is_transient(exc):
            raise TransientStorageError(
                f"{uri}: {exc}; the store is slow or unreachable: check the endpoint "
                "(--endpoint-url / AWS_ENDPOINT_URL) and network, or try again later"
            ) from None
        raise StorageError(
            f"{uri}: {exc}; check the endpoint (--endpoint-url / AWS_ENDPOINT_URL) and network"
        ) from None


Storage = LocalStorage | S3Storage


def storage_for(uri: str, s3_options: S3Options | None = None) -> Storage:
    """The storage implementation for ``uri`` (``s3://`` or a local path)."""
    if is_s3(uri):
        return S3Storage(s3_options)
    return LocalStorage()
