"""Keeping the results tables cheap to read: compaction, vacuum and checkpoints.

A run commits one small file per shard and table. Once a run has succeeded, :func:`compact_run`
rewrites its partition into files of about :data:`TARGET_FILE_BYTES` when that pays (at least
:data:`COMPACT_MIN_FILES` files averaging under :data:`SMALL_FILE_BYTES`), so scans open tens of
files instead of thousands. :func:`maintain_output` (``yolo-batch compact``) does that for every
run, deletes unreferenced files older than the retention (``vacuum`` in full mode: the files
compaction replaced, and those of failed or abandoned attempts, which no log ever held), writes
a checkpoint and deletes the log entries it covers once older than the table's log retention
(``cleanup_metadata``: Delta's default of 30 days). It must hold the output's lease, because a
running job's uncommitted files are unreferenced too.

Compacted files hold many shards; the shards of a run are then counted from its rows
(:meth:`pipeline.store.tables.ResultTables.committed_shards`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE
from pipeline.store.storage import Storage
from pipeline.store.tables import PARTITION_COLUMN, ResultTables

logger = logging.getLogger(__name__)

#: A run partition with fewer files is left as it is.
COMPACT_MIN_FILES = 16
#: Files smaller than this on average make a partition worth compacting.
SMALL_FILE_BYTES = 16 * 1024 * 1024
#: Size of a compacted file.
TARGET_FILE_BYTES = 128 * 1024 * 1024
#: Unreferenced files younger than this survive a vacuum (readers of older snapshots, and
#: Delta's own default of seven days).
VACUUM_RETENTION_HOURS = 7 * 24
#: Keys of ``deltalake``'s ``optimize.compact`` metrics.
METRIC_FILES_REMOVED = "numFilesRemoved"
METRIC_FILES_ADDED = "numFilesAdded"


@dataclass(frozen=True)
class Compaction:
    """What compacting one table's partition did: files it replaced, files it wrote."""

    files_removed: int
    files_added: int


@dataclass
class MaintenanceReport:
    """What :func:`maintain_output` did, by table."""

    files_removed_by_compaction: dict[str, int] = field(default_factory=dict)
    files_added_by_compaction: dict[str, int] = field(default_factory=dict)
    runs_compacted: int = 0
    files_vacuumed: dict[str, int] = field(default_factory=dict)
    claims_reconciled: int = 0
    #: Each table's version and number of files once done.
    versions: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)


def worth_compacting(tables: ResultTables, table: str, run_id: str) -> bool:
    """Whether ``run_id``'s partition of ``table`` has many small files."""
    files = tables.run_files(table, run_id)
    if files.num_rows < COMPACT_MIN_FILES:
        return False
    total = sum(files.column("size_bytes").to_pylist())
    return total / files.num_rows < SMALL_FILE_BYTES


def compact_run(tables: ResultTables, run_id: str) -> dict[str, Compaction]:
    """Compact ``run_id``'s partitions of ``detections`` and ``images`` when that pays (both
    or neither, so a run's tables stay alike); returns what it did by table (nothing when it
    did not pay). ``detections`` goes first: a compaction stopped between the two leaves the
    run's shards counted from its rows, which stay right."""
    if not any(worth_compacting(tables, name, run_id) for name in (IMAGES_TABLE, DETECTIONS_TABLE)):
        return {}
    done = {}
    for name in (DETECTIONS_TABLE, IMAGES_TABLE):
        table = tables.table(name, refresh=True)
        if table is None:
            continue
        metrics = table.optimize.compact(
            partition_filters=[(PARTITION_COLUMN, "=", run_id)],
            target_size=TARGET_FILE_BYTES,
        )
        table.update_incremental()
        done[name] = Compaction(
            int(metrics.get(METRIC_FILES_REMOVED, 0)), int(metrics.get(METRIC_FILES_ADDED, 0))
        )
        logger.info(
            "compacted run %s's %s: %d files into %d",
            run_id,
            name,
            done[name].files_removed,
            done[name].files_added,
        )
    return done


def maintain_output(
    tables: ResultTables,
    storage: Storage,
    run_ids: list[str],
    *,
    retention_hours: int = VACUUM_RETENTION_HOURS,
    check: Callable[[], None] | None = None,
) -> MaintenanceReport:
    """Reconcile half-committed shards, compact every run, vacuum and checkpoint every table.

    The caller holds the output's lease; ``check`` (e.g. the lease's) is called between steps
    and stops the work by raising. Vacuum deletes every file no log references (files of
    failed attempts included) that is older than ``retention_hours``, and the files
    compaction replaced once they are that old: readers of a snapshot older than that fail.
    """
    if retention_hours < 0:
        raise ValueError(f"the retention must be at least 0 hours, got {retention_hours}")
    report = MaintenanceReport()
    check = check or (lambda: None)
    if not tables.exists():
        return report
    for run_id in run_ids:
        check()
        report.claims_reconciled += len(tables.reconcile(run_id, storage))
    for run_id in run_ids:
        check()
        compacted = compact_run(tables, run_id)
        report.runs_compacted += bool(compacted)
        for name, done in compacted.items():
            removed, added = report.files_removed_by_compaction, report.files_added_by_compaction
            removed[name] = removed.get(name, 0) + done.files_removed
            added[name] = added.get(name, 0) + done.files_added
    for name in (DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE):
        check()
        table = tables.table(name, refresh=True)
        if table is None:
            continue
        vacuumed = table.vacuum(
            retention_hours=retention_hours,
            dry_run=False,
            enforce_retention_duration=False,
            full=True,
        )
        report.files_vacuumed[name] = len(vacuumed)
        table.update_incremental()
        table.create_checkpoint()
        table.cleanup_metadata()
        report.versions[name] = table.version()
        report.files[name] = len(table.file_uris())
    return report
