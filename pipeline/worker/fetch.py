"""Reading one object's bytes, with bounded per-image retries and error rows that say why.

A permanent failure (missing, over the byte limit, unreadable) becomes the image's ``error``;
a refusal of this process itself (expired or wrong credentials, clock skew:
:class:`~pipeline.store.storage.NodeFaultError`) fails the shard attempt at once; a
transient one (throttling, 5xx, timeout, dropped connection) is retried up to
:data:`FETCH_ATTEMPTS` times and, if it persists, raises :class:`TransientStorageError` so that
the whole shard attempt fails and the driver retries it: never an ``error`` row, which would be
final, since a resume skips committed shards.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from pipeline.store.storage import (
    NodeFaultError,
    ObjectTooLargeError,
    Storage,
    TransientStorageError,
    is_transient,
)
from pipeline.worker.loaded_image import LoadedImage
from pipeline.worker.reasons import ERROR_NOT_FOUND, fetch_reason, too_large
from yolov4.retry import jittered_backoff_s

if TYPE_CHECKING:
    from pipeline.store.sources import SourceObject
    from pipeline.worker.storages import ActorStorages

logger = logging.getLogger(__name__)

#: Reads of one image that failed transiently (throttled, 5xx, timed out, connection dropped,
#: after the storage layer's own retries) before the shard attempt gives up: never an error
#: row, which would lose the image for good, since a resume skips committed shards.
FETCH_ATTEMPTS = 3
#: Delay before the first per-image retry; doubles each time, capped, with jitter.
FETCH_RETRY_BACKOFF_S = 0.5
FETCH_RETRY_BACKOFF_MAX_S = 4.0


class Fetcher:
    """Reads objects of at most ``max_image_bytes`` from ``storages``; safe across threads."""

    def __init__(self, storages: ActorStorages, max_image_bytes: int) -> None:
        self.storages = storages
        self.max_image_bytes = max_image_bytes

    def fetch(self, row: int, obj: SourceObject, cancel: threading.Event) -> LoadedImage:
        """Read ``obj`` (the shard's ``row``): a :class:`LoadedImage` with ``data``, or with
        ``error`` when the object is missing, too large or unreadable, or ``cancel`` is set.

        Raises :class:`TransientStorageError` when a transient failure outlasts the retries.
        """
        uri: str = obj.uri
        size: int | None = getattr(obj, "size", None)
        loaded = LoadedImage(row=row, size=size, etag=getattr(obj, "etag", None))
        if cancel.is_set():
            loaded.error = "fetch: cancelled"
            return loaded
        limit = self.max_image_bytes
        if size is not None and size > limit:  # known from the listing: skip the download
            loaded.error = too_large(size, limit)
            return loaded
        started = time.perf_counter()
        storage = self.storages.for_uri(uri)
        try:
            if loaded.etag is None and storage is self.storages.local:
                info = storage.info(uri)
                loaded.etag, loaded.size = info.etag, info.size
            data = self.read(storage, uri, limit, cancel)
        except (TransientStorageError, NodeFaultError):
            # Not the image's fault: fails the shard attempt, which the driver retries (on
            # another actor for a node fault), or a resume does.
            raise
        except (FileNotFoundError, NotADirectoryError):
            loaded.error = ERROR_NOT_FOUND
            loaded.size, loaded.etag = size, getattr(obj, "etag", None)
        except ObjectTooLargeError as exc:
            loaded.size = exc.size
            loaded.error = too_large(exc.size, exc.limit)
        except Exception as exc:
            loaded.error = f"fetch: {fetch_reason(exc, uri)}"
            loaded.size, loaded.etag = size, getattr(obj, "etag", None)
        else:
            loaded.size = loaded.nbytes = len(data)
            loaded.data = data
        loaded.fetch_s = time.perf_counter() - started
        return loaded

    def read(self, storage: Storage, uri: str, limit: int, cancel: threading.Event) -> bytes:
        """``storage.read_bytes``, retried on transient failures (:data:`FETCH_ATTEMPTS`).

        Permanent failures (missing, too large, access denied) raise at once; a transient one
        that outlasts the retries raises :class:`TransientStorageError` for the whole shard.
        """
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                return storage.read_bytes(uri, max_bytes=limit)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                reason = fetch_reason(exc, uri)
                if attempt == FETCH_ATTEMPTS or cancel.is_set():
                    raise TransientStorageError(
                        f"could not read {uri} in {attempt} attempt(s) ({reason}): the store is "
                        "throttling or unreachable; the shard will be retried, and if it runs "
                        "out of attempts, resume the run later (--resume)"
                    ) from None
                delay = jittered_backoff_s(
                    attempt, FETCH_RETRY_BACKOFF_S, FETCH_RETRY_BACKOFF_MAX_S
                )
                logger.warning(
                    "reading %s failed (%s); try %d of %d in %.1f s",
                    uri,
                    reason,
                    attempt + 1,
                    FETCH_ATTEMPTS,
                    delay,
                )
                if cancel.wait(delay):  # the shard gave up meanwhile
                    raise TransientStorageError(f"reading {uri}: cancelled") from None
        raise AssertionError("unreachable")  # pragma: no cover
