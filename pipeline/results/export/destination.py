"""Where an export goes: a local path, or an ``s3://`` URI.

Local files are written beside their final name and renamed into place when complete. For S3
the export is written to a local temporary file (or folder, for YOLO labels) first and uploaded
when complete, with boto3's transfer manager (multipart above its 8 MiB threshold); the
temporary copy is removed afterwards. Nothing half-written ever appears at the destination.

A folder destination (YOLO labels) must be empty or new (:func:`require_empty_folder`): labels
of an earlier export left beside the new ones would mix two exports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.store.s3 import S3Options, make_client
from pipeline.store.storage import StorageError, storage_for
from pipeline.store.uris import is_s3, normalize, parse_s3

logger = logging.getLogger(__name__)

#: Parallel uploads of a folder's files to S3.
UPLOAD_THREADS = 16
#: Uploads submitted but not finished, at most (bounds memory for many small files).
UPLOAD_WINDOW = 4 * UPLOAD_THREADS


class DestinationNotEmptyError(ValueError):
    """A folder destination already holds files; the message says to choose another."""

    def __init__(self, dest: str) -> None:
        super().__init__(
            f"--dest {dest} is not empty; export the labels to an empty or new folder (they "
            "would mix with the files already there)"
        )


def require_empty_folder(dest: str, s3_options: S3Options | None = None) -> None:
    """Raise :class:`DestinationNotEmptyError` when the folder (or ``s3://`` prefix) ``dest``
    holds anything; a missing one is fine (it is created)."""
    dest = normalize(dest)
    if is_s3(dest):
        _check_s3_key(dest, folder=True)
        prefix = dest if dest.endswith("/") else dest + "/"
        if next(iter(storage_for(prefix, s3_options).list(prefix)), None) is not None:
            raise DestinationNotEmptyError(dest)
        return
    path = Path(dest)
    if path.is_dir() and not folder_is_empty(path):
        raise DestinationNotEmptyError(dest)


@contextlib.contextmanager
def staged_file(dest: str, s3_options: S3Options | None = None) -> Iterator[Path]:
    """A local path to write the export file to; on success it becomes ``dest``."""
    dest = normalize(dest)
    if is_s3(dest):
        _check_s3_key(dest, folder=False)
        with tempfile.TemporaryDirectory(prefix="yolo-batch-export-") as tmp:
            path = Path(tmp) / "export"
            yield path
            upload_file(path, dest, s3_options)
        return
    final = Path(dest)
    if final.is_dir():
        raise IsADirectoryError(f"{final} is a folder; give --dest a file name")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"
    tmp.touch(exist_ok=False)  # the user's umask applies (mkstemp would make it 0600)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def staged_folder(dest: str, s3_options: S3Options | None = None) -> Iterator[Path]:
    """A local folder to write the export's files into; on success its files are at ``dest``.

    A local ``dest`` is written in place (the folder itself).
    """
    dest = normalize(dest)
    if is_s3(dest):
        _check_s3_key(dest, folder=True)
        with tempfile.TemporaryDirectory(prefix="yolo-batch-export-") as tmp:
            yield Path(tmp)
            upload_folder(Path(tmp), dest, s3_options)
        return
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; give --dest a folder for this format")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


def upload_file(path: Path, uri: str, s3_options: S3Options | None = None, client=None) -> None:
    """Upload one local file to ``uri`` (multipart when large)."""
    loc = parse_s3(uri)
    client = client or make_client(s3_options)
    try:
        client.upload_file(str(path), loc.bucket, loc.key)
    except (S3UploadFailedError, ClientError, BotoCoreError) as exc:
        raise StorageError(
            f"upload to {uri} failed ({' '.join(str(exc).split())}); check the bucket, the "
            "credentials and the endpoint (--endpoint-url / AWS_ENDPOINT_URL)"
        ) from None
    logger.debug("uploaded %s", uri)


def upload_folder(folder: Path, prefix: str, s3_options: S3Options | None = None) -> int:
    """Upload every file under ``folder`` to ``prefix`` + its relative path; returns the count."""
    client = make_client(s3_options, max_pool_connections=UPLOAD_THREADS)
    base = prefix if prefix.endswith("/") else prefix + "/"

    def files() -> Iterator[tuple[Path, str]]:
        for root, _, names in os.walk(folder):
            for name in sorted(names):
                path = Path(root) / name
                yield path, base + path.relative_to(folder).as_posix()

    count = 0
    pending: set = set()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for path, uri in files():  # a bounded window of uploads in flight
            pending.add(pool.submit(upload_file, path, uri, client=client))
            if len(pending) >= UPLOAD_WINDOW:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                count += sum(1 for future in done if future.result() is None)
        for future in pending:
            future.result()
            count += 1
    return count


def folder_is_empty(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


def _check_s3_key(uri: str, *, folder: bool) -> None:
    loc = parse_s3(uri)
    if not folder and (not loc.key or loc.key.endswith("/")):
        raise ValueError(f"{uri} names no object; give --dest a key like s3://bucket/x.json")
