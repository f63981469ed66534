"""List a large S3 prefix with several concurrent ListObjectsV2 streams, checkpointable.

One ListObjectsV2 stream returns at most 1,000 keys a request, one request after another: a
prefix of 100 million objects takes hours. :class:`S3Listing` lists disjoint key ranges of the
prefix at once, one stream each, splitting ranges as listers fall idle (work stealing), and
can save its progress (:meth:`S3Listing.checkpoint`) and resume from it.

Key ranges
    A range is ``(after, upto]`` over keys, ``after=None`` meaning the start of the prefix and
    ``upto=None`` its end. It is listed with ``Prefix=<key prefix>``, ``StartAfter=after`` and
    continuation tokens, and ends at its first key ``> upto`` (the rest of that page belongs to
    the next range) or at the last page. This relies on the store listing keys in UTF-8 binary
    order, as S3 does (Python compares ``str`` in the same order). SeaweedFS (the local test
    server) does not under nested "folders": it lists ``a/b`` before ``a b`` and ``a!``, and
    a ``StartAfter`` of ``a`` passes over ``a/...``; there, list flat prefixes, or one stream
    (``listers=1``, no resume), which never depends on the order.

Splitting
    The listing starts with one range over everything (or the ranges of a checkpoint). A lister
    with no unstarted range to take, while fewer than ``listers`` ranges are being listed,
    splits the range with the largest remaining key span (:func:`~pipeline.store.key_space.span`)
    whose last page was truncated, once it has fetched :data:`PAGES_BEFORE_SPLIT` pages: at a
    key ``m`` strictly between its last fetched key and its ``upto``
    (:func:`~pipeline.store.key_space.midpoint`), the running stream keeps
    ``(cur, m]`` and the idle lister takes ``(m, old upto]``. A split range that turns out empty
    costs one request; bisection then moves on to narrower halves, so sequential names such as
    ``img_000001.jpg`` .. converge onto their live part in a few dozen requests.

Memory
    Fetched pages wait in one queue of at most :data:`QUEUED_PAGES_PER_LISTER` pages per
    lister; listers block while it is full, so memory does not grow with the object count.

Checkpoint format (JSON-serialisable ``dict``)::

    {"version": 1,
     "prefix": "s3://bucket/key/prefix/",
     "ranges": [[after, upto], ...]}     # after, upto: str or null; sorted by after

    ``ranges`` holds the ranges not yet fully yielded to the consumer, ``after`` advanced to
    the last key the consumer received from that range. Resuming from it lists exactly the
    objects not yet yielded at checkpoint time (for an unchanged prefix), and never lists a
    finished range again. A finished listing's checkpoint has no ranges.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.store import key_space
from pipeline.store.storage import LIST_PAGE_SIZE, ObjectInfo, S3Storage
from pipeline.store.uris import S3_SCHEME, parse_s3

logger = logging.getLogger(__name__)

#: Concurrent ListObjectsV2 streams by default: each keeps one request in flight, so latency
#: (tens of ms a page on S3) overlaps; past a few streams the client's parsing of the pages
#: (~70 CPU ms per 1,000 keys in botocore, under one GIL) is the limit, and each split costs a
#: few extra requests. Keep it at or under the storage's connection pool
#: (``S3Storage(max_pool_connections=...)``, 16 by default).
DEFAULT_LISTERS = 8
#: Fetched pages that may wait for the consumer, per lister (the queue is bounded by this
#: times ``listers``): enough to ride out a slow consumer step, small enough to bound memory.
QUEUED_PAGES_PER_LISTER = 4
#: How often blocked threads (a lister on a full queue, an idle lister, the consumer on an
#: empty queue) wake up to notice :meth:`S3Listing.close` or a failed lister, in seconds.
POLL_S = 0.1
#: How long :meth:`S3Listing.close` waits for the lister threads to end, in all (a request
#: already in flight finishes first; the threads are daemons, so one stuck in a request is
#: left behind).
CLOSE_JOIN_S = 2.0
#: Pages a range's stream fetches before it may be split: a prefix of a few pages lists in
#: well under a second with one stream, and bisecting toward its keys would cost more requests
#: (tens, for sequential names) than it saves.
PAGES_BEFORE_SPLIT = 4
#: The version of the checkpoint format written by :meth:`S3Listing.checkpoint`.
CHECKPOINT_VERSION = 1


@dataclass(eq=False)
class _Range:
    """A key range ``(after, upto]`` and its progress. ``emitted`` is the consumer's to
    change; the other fields change under the listing's lock."""

    after: str | None  # StartAfter of the range's first request
    upto: str | None  # the last key that belongs to it (None: the end of the prefix)
    cur: str | None  # the last key fetched (None: nothing yet)
    emitted: str | None  # the last key yielded to the consumer (None: nothing yet)
    token: str | None = None  # ContinuationToken of the next request
    truncated: bool = False  # the last page said more keys follow
    pages: int = 0  # pages fetched
    started: bool = False  # a lister took it
    fetched: bool = False  # its last page has been fetched


@dataclass
class _Page:
    range: _Range
    objects: list[ObjectInfo]
    last: bool  # the range's final page


class _Wakeup:
    """Put on the page queue to wake the consumer (a lister failed)."""


class S3Listing:
    """Every object under an S3 key prefix, listed by up to ``listers`` concurrent
    ListObjectsV2 streams over disjoint key ranges, split dynamically as streams fall idle.

    ``prefix_uri`` is ``s3://bucket/keyprefix``, a raw key prefix (end it with ``/`` to list a
    folder); every key under it is yielded, folder markers included. Iterating yields
    :class:`~pipeline.store.storage.ObjectInfo` (``uri`` = ``s3://bucket/key``, ``size``,
    ``etag`` without quotes) exactly once per object, in no global order: each range's objects
    come in key order, ranges interleave. An instance iterates once.

    :meth:`checkpoint`, called between ``next()`` calls, returns the progress as of the last
    object yielded (format in the module docstring); ``S3Listing(storage, prefix,
    resume=state)`` lists exactly the objects not yielded yet. A lister's error (after
    :meth:`S3Storage._retrying`'s retries) is raised from ``next()`` as the same exception;
    the checkpoint stays valid, so a failed listing can be resumed.

    Counters for benchmarks and tests: ``requests`` (ListObjectsV2 requests made so far that
    returned a page; retried attempts are not counted), ``ranges_started`` (ranges a lister
    began, the first one included) and ``max_concurrent`` (most ranges listed at once).

    Use as a context manager, or call :meth:`close`, to stop the lister threads of a listing
    not iterated to the end.
    """

    def __init__(
        self,
        storage: S3Storage,
        prefix_uri: str,
        *,
        listers: int = DEFAULT_LISTERS,
        resume: dict | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        if listers < 1:
            raise ValueError(f"listers must be at least 1, not {listers}")
        if not 1 <= page_size <= LIST_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 .. {LIST_PAGE_SIZE}, not {page_size}")
        location = parse_s3(prefix_uri)
        self.storage = storage
        self.prefix_uri = prefix_uri
        self.listers = listers
        self.page_size = page_size
        self._bucket, self._prefix = location.bucket, location.key
        self._key_offset = len(f"{S3_SCHEME}{self._bucket}/")  # of the key in an object's URI
        self.requests = 0
        self.ranges_started = 0
        self.max_concurrent = 0
        self._lock = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._pages: queue.Queue[_Page | _Wakeup] = queue.Queue(QUEUED_PAGES_PER_LISTER * listers)
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._iterated = False
        if resume is None:
            self._ranges = [_Range(None, None, None, None)]
        else:
            self._ranges = [_Range(a, u, a, a) for a, u in self._parse_resume(resume)]

    # -- the consumer's side -------------------------------------------------------------------

    def __iter__(self) -> Iterator[ObjectInfo]:
        if self._iterated:
            raise RuntimeError(
                "an S3Listing iterates once; to go on, make a new one with "
                "resume=listing.checkpoint()"
            )
        self._iterated = True
        return self._objects()

    def _objects(self) -> Iterator[ObjectInfo]:
        self._start()
        try:
            while True:
                with self._lock:
                    if not self._ranges:
                        break
                page = self._next_page()
                objects = page.objects
                if not objects:  # an empty final page: the range ended on a page boundary
                    self._finished(page.range)
                for index, info in enumerate(objects):
                    # Progress is recorded before the object leaves, so a checkpoint taken
                    # while the consumer holds it counts it as yielded.
                    page.range.emitted = info.uri[self._key_offset :]
                    if page.last and index == len(objects) - 1:
                        self._finished(page.range)
                    yield info
            logger.debug(
                "listed %s: %d requests, %d ranges, up to %d at once",
                self.prefix_uri,
                self.requests,
                self.ranges_started,
                self.max_concurrent,
            )
        finally:
            self.close()

    def _finished(self, r: _Range) -> None:
        """The consumer has (or is about to get) the last object of ``r``: drop it, so the
        ranges kept stay few however many splits a long listing makes."""
        with self._lock:
            self._ranges.remove(r)

    def _next_page(self) -> _Page:
        while True:
            if self._error is not None:
                raise self._error
            if self._stop.is_set():
                raise RuntimeError(f"the listing of {self.prefix_uri} was closed")
            try:
                item = self._pages.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, _Page):
                return item

    def checkpoint(self) -> dict:
        """The progress as of the last object yielded: ``{"version", "prefix", "ranges"}``
        (see the module docstring), JSON-serialisable."""
        with self._lock:
            ranges = [[r.emitted, r.upto] for r in self._ranges]
        ranges.sort(key=lambda bounds: (bounds[0] is not None, bounds[0] or ""))
        return {"version": CHECKPOINT_VERSION, "prefix": self.prefix_uri, "ranges": ranges}

    def close(self) -> None:
        """Stop the lister threads (a request in flight finishes first). Idempotent."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        deadline = time.monotonic() + CLOSE_JOIN_S
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.0))
                if thread.is_alive():
                    logger.debug("lister %s still in a request after close", thread.name)

    def __enter__(self) -> S3Listing:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _parse_resume(self, state: dict) -> list[tuple[str | None, str | None]]:
        fresh = "start a fresh listing (resume=None)"
        if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
            version = state.get("version") if isinstance(state, dict) else None
            raise ValueError(
                f"resume state has format version {version!r}, not {CHECKPOINT_VERSION}: pass "
                f"a state saved by S3Listing.checkpoint() of this version, or {fresh}"
            )
        if state.get("prefix") != self.prefix_uri:
            raise ValueError(
                f"resume state is for {state.get('prefix')!r}, not {self.prefix_uri!r}: pass the "
                f"state saved for this prefix, or {fresh}"
            )
        ranges = state.get("ranges")
        out = []
        for bounds in ranges if isinstance(ranges, list) else [ranges]:
            ok = isinstance(bounds, list | tuple) and len(bounds) == 2
            ok = ok and all(
                b is None or (isinstance(b, str) and b.startswith(self._prefix)) for b in bounds
            )
            ok = ok and (None in bounds or bounds[0] < bounds[1])
            if not ok:
                raise ValueError(
                    f"resume state for {self.prefix_uri!r} has a malformed range {bounds!r} "
                    f"(expected [after, upto] keys under the prefix, after < upto): pass the "
                    f"state exactly as S3Listing.checkpoint() returned it, or {fresh}"
                )
            out.append((bounds[0], bounds[1]))
        out.sort(key=lambda bounds: (bounds[0] is not None, bounds[0] or ""))
        for (_, upto), (after, _) in zip(out, out[1:]):
            if upto is None or after is None or after < upto:
                raise ValueError(
                    f"resume state for {self.prefix_uri!r} has overlapping ranges (one up to "
                    f"{upto!r}, the next after {after!r}): pass the state exactly as "
                    f"S3Listing.checkpoint() returned it, or {fresh}"
                )
        return out

    # -- the listers' side ---------------------------------------------------------------------

    def _start(self) -> None:
        for number in range(self.listers):
            thread = threading.Thread(target=self._lister, name=f"s3-lister-{number}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _lister(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    work = self._take_work()
                    if work is None:
                        if all(r.fetched for r in self._ranges):
                            return
                        self._lock.wait(POLL_S)
                        continue
                self._list_range(work)
        except BaseException as exc:  # handed to the consumer, raised from next()
            self._error = exc
            self._stop.set()
            # A full queue means the consumer is not waiting on it; it sees _error next anyway.
            with contextlib.suppress(queue.Full):
                self._pages.put_nowait(_Wakeup())

    def _active(self) -> list[_Range]:
        return [r for r in self._ranges if r.started and not r.fetched]

    def _take_work(self) -> _Range | None:
        """An unstarted range, or one split off the widest active range; ``None`` when there is
        none to take now. Called with the lock held."""
        work = next((r for r in self._ranges if not r.started), None)
        if work is None:
            work = self._split()
        if work is not None:
            work.started = True
            self.ranges_started += 1
            self.max_concurrent = max(self.max_concurrent, len(self._active()))
        return work

    def _split(self) -> _Range | None:
        active = self._active()
        if len(active) >= self.listers:
            return None
        candidates = [
            r
            for r in active
            if r.truncated and r.cur is not None and r.pages >= PAGES_BEFORE_SPLIT
        ]
        if not candidates:
            return None
        width = max(len(b) for r in candidates for b in (r.cur, r.upto or "")) - len(self._prefix)
        width += key_space.EXTRA_DIGITS
        candidates.sort(
            key=lambda r: key_space.span(r.cur, r.upto, prefix=self._prefix, width=width),
            reverse=True,
        )
        for victim in candidates:
            m = key_space.midpoint(victim.cur, victim.upto, prefix=self._prefix)
            if m is None or not (victim.cur < m and (victim.upto is None or m < victim.upto)):
                continue
            piece = _Range(after=m, upto=victim.upto, cur=m, emitted=m)
            victim.upto = m
            self._ranges.append(piece)
            logger.debug("split %s at %r: (%r, %r]", self.prefix_uri, m, m, piece.upto)
            return piece
        return None

    def _list_range(self, r: _Range) -> None:
        """Fetch the pages of ``r`` onto the queue until it ends (or the listing stops)."""
        while not self._stop.is_set():
            params = {"Bucket": self._bucket, "Prefix": self._prefix, "MaxKeys": self.page_size}
            if r.token:
                params["ContinuationToken"] = r.token
            elif r.after is not None:
                params["StartAfter"] = r.after
            page = self.storage._retrying(
                self.prefix_uri,
                "list",
                lambda params=params: self.storage.client.list_objects_v2(**params),
            )
            contents = page.get("Contents", ())
            with self._lock:
                self.requests += 1
                objects = []
                beyond = False
                for item in contents:
                    key = item["Key"]
                    if r.upto is not None and key > r.upto:
                        beyond = True  # the rest of the page belongs to the next range
                        break
                    objects.append(
                        ObjectInfo(
                            f"{S3_SCHEME}{self._bucket}/{key}",
                            item["Size"],
                            item.get("ETag", "").strip('"'),
                        )
                    )
                if objects:
                    r.cur = objects[-1].uri[self._key_offset :]
                r.token = page.get("NextContinuationToken")
                last = beyond or not page.get("IsTruncated") or not r.token
                r.truncated = not last
                r.pages += 1
                r.fetched = last
                self._lock.notify_all()
            if objects or last:
                self._put(_Page(r, objects, last))
            if last:
                return

    def _put(self, page: _Page) -> None:
        while not self._stop.is_set():
            try:
                self._pages.put(page, timeout=POLL_S)
                return
            except queue.Full:
                continue
