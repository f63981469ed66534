"""Finished shards on their way into the results tables' logs, committed in batches.

A shard's files are written by its actor; the driver adds them to the Delta logs
(:meth:`pipeline.store.tables.ResultTables.commit_shards`) in batches of up to
:data:`COMMIT_BATCH_SHARDS` shards or every :data:`COMMIT_INTERVAL_S` seconds, whichever comes
first, so a run of 100,000 shards makes a few thousand commits, not 100,000 (and a checkpoint
every :data:`~pipeline.store.tables.CHECKPOINT_INTERVAL` of them keeps opening the tables cheap).

A batch whose commit fails stays pending and is tried again after a backoff with the same files
(a shard that finished is never run again because its commit failed), up to
:data:`MAX_COMMIT_FAILURES` failures in a row; then the run stops with an error, and
``--resume`` commits what the log is missing (:meth:`ResultTables.reconcile`).

Right before each commit the batcher calls its ``fence`` (the run's
:meth:`~pipeline.run.lease.Lease.fence`): a driver whose lease may have been taken over raises
:class:`~pipeline.run.lease.LeaseLostError` there, and nothing reaches the logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from deltalake.exceptions import DeltaError

from pipeline import faults
from pipeline.errors import RunError
from pipeline.store.ledger import ShardCounts
from pipeline.store.storage import StorageError
from pipeline.store.tables import ResultTables, ShardFiles
from yolov4.retry import backoff_s

logger = logging.getLogger(__name__)

#: Shards per log commit at most.
COMMIT_BATCH_SHARDS = 64
#: Seconds a finished shard waits for its batch's commit at most.
COMMIT_INTERVAL_S = 2.0
#: Failed commits in a row before the run stops.
MAX_COMMIT_FAILURES = 8
#: First wait after a failed commit; doubles with each failure, capped.
COMMIT_RETRY_BACKOFF_S = 1.0
COMMIT_RETRY_BACKOFF_MAX_S = 30.0


class CommitBatcher:
    """Collects finished shards and commits them to ``tables`` in batches.

    ``on_committed(shard_id, counts)`` is called for each shard once its commit succeeded;
    ``fence()``, right before each commit, raises to stop it (the lease is not surely ours).
    Call :meth:`flush` on every turn of the dispatch loop (it commits only when a batch is
    due) and :meth:`close` once no more shards will come.
    """

    def __init__(
        self,
        tables: ResultTables,
        run_id: str,
        on_committed: Callable[[int, ShardCounts], None],
        *,
        batch_shards: int = COMMIT_BATCH_SHARDS,
        interval_s: float = COMMIT_INTERVAL_S,
        fence: Callable[[], None] | None = None,
    ) -> None:
        self.tables = tables
        self.fence = fence
        self.run_id = run_id
        self.on_committed = on_committed
        self.batch_shards = batch_shards
        self.interval_s = interval_s
        self._pending: dict[int, tuple[ShardFiles, ShardCounts]] = {}
        self._oldest: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self.commits = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, files: ShardFiles, counts: ShardCounts) -> None:
        """Queue a finished shard for the next commit."""
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._pending[files.shard_id] = (files, counts)

    def due(self) -> bool:
        if not self._pending or time.monotonic() < self._retry_at:
            return False
        return (
            len(self._pending) >= self.batch_shards
            or time.monotonic() - self._oldest >= self.interval_s
        )

    def flush(self, *, force: bool = False) -> None:
        """Commit the pending shards when a batch is due (or ``force``)."""
        if not self._pending or not (force or self.due()):
            return
        faults.before_commit()
        if self.fence is not None:
            self.fence()  # raises, and nothing is committed, once the lease may not be ours
        batch = [files for files, _ in self._pending.values()]
        try:
            committed = set(self.tables.commit_shards(self.run_id, batch))
        except (DeltaError, StorageError, OSError) as exc:
            self._failed(exc)
            return
        self._failures = 0
        self.commits += 1
        for shard_id, (_, counts) in sorted(self._pending.items()):
            if shard_id in committed:
                self.on_committed(shard_id, counts)
        self._pending.clear()
        self._oldest = None

    def close(self) -> None:
        """Commit what is pending, retrying failed commits with backoff; raises
        :class:`~pipeline.errors.RunError` after :data:`MAX_COMMIT_FAILURES` in a row."""
        while self._pending:
            time.sleep(max(0.0, self._retry_at - time.monotonic()))
            self.flush(force=True)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures >= MAX_COMMIT_FAILURES:
            raise RunError(
                f"could not commit {len(self._pending)} finished shard(s) to the results "
                f"tables after {self._failures} attempts ({exc}); check that the output is "
                "writable, then resume the run with --resume"
            ) from exc
        delay = backoff_s(self._failures, COMMIT_RETRY_BACKOFF_S, COMMIT_RETRY_BACKOFF_MAX_S)
        logger.warning(
            "committing %d shard(s) failed (%s); trying again in %.1f s",
            len(self._pending),
            exc,
            delay,
        )
        self._retry_at = time.monotonic() + delay
