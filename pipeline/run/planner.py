"""Streaming, checkpointed planning: shards are cut and dispatched while the listing goes on.

A :class:`Planner` runs the listing on a background thread and cuts its objects into shards
(sized by a :class:`~pipeline.run.shard_sizing.ShardSizer`), each written as a plan file by a
pool of writers (S3 PUTs are latency-bound). After the shards up to some point are all
written, the planner writes ``plan-checkpoint.json`` (:class:`~pipeline.run.plan.PlanCheckpoint`:
those shards, the listing's position after them, the objects listed but not yet in a shard)
and only then offers those shards to the dispatcher (:meth:`Planner.take`). So:

- the first shard is dispatched as soon as it is listed, written and checkpointed, whatever
  the size of the source;
- a driver killed at any moment and resumed (``start=`` the checkpoint) continues the listing
  from the checkpoint; shards past it are cut again, and none of them was ever dispatched, so
  no object is planned twice or skipped, even if the source changed meanwhile;
- memory is bounded: the driver holds the shard being cut, the writes in flight and a window
  of at most :data:`PLAN_WINDOW_SHARDS` planned-but-undispatched shard ids; when the
  dispatcher falls that far behind, the listing waits.

When the listing ends, the last checkpoint covers every shard and ``plan.json`` marks the
plan complete (:func:`~pipeline.run.plan.write_plan_summary`). A manifest that lists a URI
more than once is planned with its first listing only (:mod:`pipeline.store.listing`); the
checkpoints and ``plan.json`` carry how many entries were left out (``duplicates``);
``plan.json`` also the files the source's extension filter left out, by extension.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from pipeline import faults
from pipeline.run.plan import (
    PlanCheckpoint,
    PlannedObject,
    PlanSummary,
    shard_bytes,
    write_checkpoint,
    write_plan_summary,
)
from pipeline.run.shard_sizing import ShardSizer
from pipeline.store.layout import OutputLayout
from pipeline.store.listing import Listing
from pipeline.store.storage import Storage

logger = logging.getLogger(__name__)

#: Concurrent shard-plan writes (S3 PUTs are latency-bound).
PLAN_WRITE_THREADS = 8
#: Shard files written but not yet confirmed, at most (bounds memory while planning).
PLAN_WRITES_IN_FLIGHT = 32
#: Objects listed before the first shard is cut, at most, and the longest wait for them: the
#: first shards' size then comes from this much of the source (a folder or a manifest is
#: usually listed whole by then) instead of from a handful of objects.
FIRST_CUT_LOOKAHEAD = 20_000
FIRST_CUT_WAIT_S = 1.0
#: Planned shards not yet taken by the dispatcher, at most: beyond it the listing waits.
PLAN_WINDOW_SHARDS = 4096
#: Longest wait on a condition before checking for a stop request.
WAIT_SLICE_S = 0.5
#: Seconds :meth:`Planner.stop` waits for the planning thread.
STOP_TIMEOUT_S = 30.0


class Planner:
    """Plans ``run_id`` from ``listing`` on a background thread; see the module docstring.

    ``start``: the checkpoint of an earlier, interrupted planning of the same run (its
    shards are offered first, its carried objects open the next shard). ``extra()`` (called
    at each checkpoint) returns what the caller keeps in the checkpoint's ``extra``.
    ``fence()`` is called right before each plan file, checkpoint and summary is written (the
    run's :meth:`~pipeline.run.lease.Lease.fence`): when it raises, that write does not happen
    and planning stops with its error.
    ``on_shard(shards, images, objects_listed)`` is called on the planning thread after each
    shard is cut, and once more when the listing ends. Use :meth:`start` once, then
    :meth:`take` / :meth:`wait` until :attr:`finished`; :meth:`stop` ends it early. An
    error of the planning thread (the store failing past its retries, a source that
    changed) is raised by :meth:`take` and :meth:`wait`.
    """

    def __init__(
        self,
        listing: Listing,
        *,
        storage: Storage,
        layout: OutputLayout,
        run_id: str,
        source: str,
        sizer: ShardSizer,
        start: PlanCheckpoint | None = None,
        window: int = PLAN_WINDOW_SHARDS,
        extra: Callable[[], dict] | None = None,
        on_shard: Callable[[int, int, int], None] | None = None,
        fence: Callable[[], None] | None = None,
    ) -> None:
        start = start or PlanCheckpoint()
        self.listing = listing
        self.storage = storage
        self.layout = layout
        self.run_id = run_id
        self.source = source
        self.sizer = sizer
        self.window = window
        self._extra = extra or dict
        self._on_shard = on_shard
        self._fence = fence or _unfenced
        self._cond = threading.Condition()
        self._stop = threading.Event()
        #: Shards cut (files written or being written) and the objects in them.
        self.shards_cut = start.shards
        self.images_cut = start.images
        self.largest_shard = start.largest_shard
        self._open: list[PlannedObject] = [PlannedObject(*item) for item in start.carry]
        self._written: set[int] = set()
        #: Shards ``0 .. _durable-1`` are all written.
        self._durable = start.shards
        #: Checkpoints waiting for their shards to be written, oldest first.
        self._candidates: list[PlanCheckpoint] = []
        self._wanted: PlanCheckpoint | None = None
        self._checkpoint_writer: threading.Thread | None = None
        #: Shards ``0 .. _offered-1`` are in a written checkpoint: the dispatcher may take them.
        self._offered = start.shards
        self._taken = 0
        self.listing_done = False
        self.finished = False
        self.summary: PlanSummary | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        #: Objects the listing gave the planner (the shards' and the open shard's).
        self.objects_received = start.images + len(start.carry)
        self._listed_at_start = start.objects_listed
        self._duplicates_at_start = start.duplicates
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------ dispatcher side
    def start(self) -> Planner:
        self._thread = threading.Thread(target=self._plan, name="planner", daemon=True)
        self._thread.start()
        return self

    def take(self, limit: int | None = None) -> list[int]:
        """Ids of the shards planned and checkpointed since the last call (in order), at most
        ``limit``."""
        with self._cond:
            self._raise_error()
            end = self._offered if limit is None else min(self._offered, self._taken + limit)
            ids = list(range(self._taken, end))
            self._taken = end
            self._cond.notify_all()
            return ids

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for new shards, the end of planning or an error."""
        with self._cond:
            if self._taken == self._offered and not self.finished and self._error is None:
                self._cond.wait(timeout)
            self._raise_error()

    @property
    def shards_available(self) -> int:
        """Shards checkpointed and not yet taken."""
        return self._offered - self._taken

    @property
    def objects_listed(self) -> int:
        """Objects of the source listed so far (a resumed checkpoint's included)."""
        return max(self.listing.objects_listed, self._listed_at_start)

    @property
    def duplicates(self) -> int:
        """Objects of the source left out so far as their URI was listed before (a resumed
        checkpoint's included)."""
        return max(self.listing.duplicates, self._duplicates_at_start)

    @property
    def listing_rate(self) -> float:
        """Objects listed per second by this planner (not counting a resumed checkpoint)."""
        elapsed = max(time.monotonic() - self.started_at, 1e-9)
        return max(self.objects_listed - self._listed_at_start, 0) / elapsed

    def stop(self) -> None:
        """Stop planning (the listing and the writers); what is checkpointed stays."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.listing.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT_S)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ planning thread
    def _plan(self) -> None:
        try:
            with ThreadPoolExecutor(PLAN_WRITE_THREADS, thread_name_prefix="plan-write") as pool:
                self._pool = pool
                self._list_and_cut()
                if self._stop.is_set():
                    return
                self.listing_done = True
                self._report_shard()  # the totals after the last cut, trailing duplicates too
                self._add_candidate(carry=())
                self._wait_for(lambda: self._offered == self.shards_cut or self._error)
            self._raise_error()
            if self._stop.is_set():
                return
            self.summary = PlanSummary(
                self.run_id,
                self.source,
                self.largest_shard,
                self.shards_cut,
                self.images_cut,
                duplicates=self.duplicates,
                skipped=self.listing.skipped.as_dict(),
            )
            self._fence()
            write_plan_summary(self.storage, self.layout, self.summary)
            logger.info(
                "planned %d images in %d shards of up to %d%s%s",
                self.images_cut,
                self.shards_cut,
                self.largest_shard,
                f" ({self.duplicates} duplicate URIs skipped)" if self.duplicates else "",
                f"; {self.listing.skipped.summary()}" if self.listing.skipped.total else "",
            )
            with self._cond:
                self.finished = True
                self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the dispatcher's thread
            with self._cond:
                self._error = self._error or exc
                self._cond.notify_all()
        finally:
            self.listing.close()

    def _list_and_cut(self) -> None:
        """List, cutting shards as objects come. Unless the shard size is fixed, the first cut
        waits for :data:`FIRST_CUT_LOOKAHEAD` objects or :data:`FIRST_CUT_WAIT_S` (or the
        listing's end), so a source that lists fast (a folder, a manifest, a small prefix) is
        cut in shards sized from its whole count rather than growing from the smallest."""
        listing = self.listing
        if not listing.resumable_anywhere:
            listing.on_boundary = lambda: self._add_candidate(carry=self._open)
        looking_ahead = not self.shards_cut and self.sizer.fixed is None
        for obj in listing:
            self._open.append(obj)
            self.objects_received += 1
            if looking_ahead:
                if (
                    len(self._open) < FIRST_CUT_LOOKAHEAD
                    and time.monotonic() - self.started_at < FIRST_CUT_WAIT_S
                ):
                    continue
                looking_ahead = False
            if not self._cut_full_shards():
                return
            if self._stop.is_set():
                return
        if not self._stop.is_set():
            self._cut_full_shards(final=True)

    def _cut_full_shards(self, *, final: bool = False) -> bool:
        """Cut every shard the open objects fill (``final``: all of them); ``False`` when
        stopped meanwhile."""
        while self._open:
            size = self.sizer.size(self.objects_received)
            if len(self._open) < size and not final:
                break
            self._cut(size)
            if self.listing.resumable_anywhere:
                self._add_candidate(carry=self._open)
            faults.after_plan_shard()
            if not self._wait_for_window():
                return False
        return True

    def _cut(self, size: int) -> None:
        """Write the first ``size`` open objects as the next shard (in the background)."""
        objects, self._open = self._open[:size], self._open[size:]
        shard_id = self.shards_cut
        self.shards_cut += 1
        self.images_cut += len(objects)
        self.largest_shard = max(self.largest_shard, len(objects))
        self._wait_for(lambda: self.shards_cut - self._durable <= PLAN_WRITES_IN_FLIGHT)
        uri = self.layout.plan_shard(self.run_id, shard_id)
        future = self._pool.submit(self._write_fenced, uri, shard_bytes(objects))
        future.add_done_callback(lambda f, shard_id=shard_id: self._written_one(shard_id, f))
        self._report_shard()

    def _report_shard(self) -> None:
        if self._on_shard:
            self._on_shard(self.shards_cut, self.images_cut, self.objects_listed)

    def _write_fenced(self, uri: str, data: bytes) -> None:
        """Write one plan file (on a writer thread), the fence first."""
        self._fence()
        self.storage.write_bytes(uri, data)

    def _wait_for_window(self) -> bool:
        """Wait while the dispatcher has :attr:`window` shards it has not taken; ``False``
        when stopped meanwhile."""
        self._wait_for(lambda: self.shards_cut - self._taken < self.window)
        return not self._stop.is_set()

    def _wait_for(self, ready: Callable[[], object]) -> None:
        with self._cond:
            while not ready() and not self._stop.is_set() and self._error is None:
                self._cond.wait(WAIT_SLICE_S)
        self._raise_error()

    def _add_candidate(self, *, carry: Iterable[PlannedObject]) -> None:
        """A checkpoint at the current point of the listing, to write once its shards are."""
        candidate = PlanCheckpoint(
            shards=self.shards_cut,
            images=self.images_cut,
            largest_shard=self.largest_shard,
            objects_listed=self.objects_listed,
            duplicates=self.duplicates,
            listing=self.listing.checkpoint(),
            carry=[[o.uri, o.size, o.etag] for o in carry],
            extra=self._extra(),
        )
        with self._cond:
            self._candidates.append(candidate)
            self._promote()

    # ------------------------------------------------------------------ checkpoints
    def _written_one(self, shard_id: int, future: Future) -> None:
        """A plan file write finished (on a writer thread)."""
        with self._cond:
            exc = future.exception()
            if exc is not None:
                self._error = self._error or exc
                self._cond.notify_all()
                return
            self._written.add(shard_id)
            while self._durable in self._written:
                self._written.discard(self._durable)
                self._durable += 1
            self._promote()
            self._cond.notify_all()

    def _promote(self) -> None:
        """Make the newest candidate whose shards are all written the checkpoint to write
        (caller holds the lock)."""
        ready = None
        while self._candidates and self._candidates[0].shards <= self._durable:
            ready = self._candidates.pop(0)
        if ready is None:
            return
        self._wanted = ready
        if self._checkpoint_writer is None:
            self._checkpoint_writer = threading.Thread(
                target=self._write_checkpoints, name="plan-checkpoint", daemon=True
            )
            self._checkpoint_writer.start()

    def _write_checkpoints(self) -> None:
        """Write the wanted checkpoint, then any newer one, in order; offer their shards."""
        while True:
            with self._cond:
                wanted, self._wanted = self._wanted, None
                if wanted is None:
                    self._checkpoint_writer = None
                    return
            try:
                self._fence()
                write_checkpoint(self.storage, self.layout, self.run_id, wanted)
            except BaseException as exc:  # noqa: BLE001 - handed to the dispatcher's thread
                with self._cond:
                    self._error = self._error or exc
                    self._checkpoint_writer = None
                    self._cond.notify_all()
                return
            with self._cond:
                self._offered = max(self._offered, wanted.shards)
                self._cond.notify_all()


def _unfenced() -> None:
    """The fence of a planner whose caller holds no lease (tools, benchmarks)."""


def write_plan(
    objects: Iterable,
    *,
    storage: Storage,
    layout: OutputLayout,
    run_id: str,
    source: str,
    shard_size: int,
) -> PlanSummary:
    """Plan ``objects`` (anything with ``uri``, ``size``, ``etag``) in shards of
    ``shard_size``, to the end, without a dispatcher; returns the summary (also written as
    ``plan.json``). For tools and benchmarks: a run plans through :class:`Planner`."""
    planner = Planner(
        _IterableListing(objects),
        storage=storage,
        layout=layout,
        run_id=run_id,
        source=source,
        sizer=ShardSizer(fixed=shard_size, batch_size=1, actors=1),
        window=1 << 62,
    ).start()
    while not planner.finished:
        planner.wait(WAIT_SLICE_S)
        planner.take()
    return planner.summary


class _IterableListing(Listing):
    """Objects of a plain iterable; its checkpoint is the count passed (not resumable)."""

    def __init__(self, objects: Iterable) -> None:
        self._objects = objects

    def __iter__(self):
        for obj in self._objects:
            self.objects_seen += 1
            yield obj

    def checkpoint(self) -> dict:
        return {"kind": "iterable", "position": self.objects_seen}


__all__ = ["PLAN_WINDOW_SHARDS", "Planner", "write_plan"]
