"""Keeping the results tables cheap to read: compaction, vacuum and checkpoints.

A run commits one small file per shard and table. Once a run has succeeded, :func:`compact_run`
rewrites its partition into files of about :data:`TARGET_FILE_BYTES` when that pays (at least
:data:`COMPACT_MIN_FILES` files averaging under :data:`SMALL_FILE_BYTES`), so scans open tens of
files instead of thousands. :func:`maintain_output` (``yolo-batch compact``) does that for every
run, deletes unreferenced files older than the retention (``vacuum``), and writes a checkpoint;
it must hold the output's lease, because a running job's uncommitted files are unreferenced too.

Compacted files hold many shards; the shards of a run are then counted from its rows
(:meth:`pipeline.store.tables.ResultTables.committed_shards`).
"""

from __future__ import annotations

import logging
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


@dataclass
class MaintenanceReport:
    """What :func:`maintain_output` did, by table."""

    files_removed_by_compaction: dict[str, int] = field(default_factory=dict)
    files_added_by_compaction: dict[str, int] = field(default_factory=dict)
    files_vacuumed: dict[str, int] = field(default_factory=dict)
    claims_reconciled: int = 0
    versions: dict[str, int] = field(default_factory=dict)


def worth_compacting(tables: ResultTables, table: str, run_id: str) -> bool:
    """Whether ``run_id``'s partition of ``table`` has many small files."""
    files = tables.run_files(table, run_id)
    if files.num_rows < COMPACT_MIN_FILES:
        return False
    total = sum(files.column("size_bytes").to_pylist())
    return total / files.num_rows < SMALL_FILE_BYTES


def compact_run(tables: ResultTables, run_id: str) -> dict[str, int]:
    """Compact ``run_id``'s partitions of ``detections`` and ``images`` when that pays (both
    or neither, so a run's tables stay alike); returns files removed by table."""
    if not any(worth_compacting(tables, name, run_id) for name in (IMAGES_TABLE, DETECTIONS_TABLE)):
        return {}
    removed = {}
    for name in (DETECTIONS_TABLE, IMAGES_TABLE):
        table = tables.table(name, refresh=True)
        metrics = table.optimize.compact(
            partition_filters=[(PARTITION_COLUMN, "=", run_id)],
            target_size=TARGET_FILE_BYTES,
        )
        removed[name] = int(metrics.get("numFilesRemoved", 0))
        logger.info(
            "compacted run %s's %s: %d files into %d",
            run_id,
            name,
            metrics.get("numFilesRemoved", 0),
            metrics.get("numFilesAdded", 0),
        )
    return removed


def maintain_output(
    tables: ResultTables,
    storage: Storage,
    run_ids: list[str],
    *,
    retention_hours: int = VACUUM_RETENTION_HOURS,
) -> MaintenanceReport:
    """Reconcile half-committed shards, compact every run, vacuum and checkpoint every table.
    The caller holds the output's lease."""
    report = MaintenanceReport()
    if not tables.exists():
        return report
    for run_id in run_ids:
        report.claims_reconciled += len(tables.reconcile(run_id, storage))
    for run_id in run_ids:
        for name, count in compact_run(tables, run_id).items():
            report.files_removed_by_compaction[name] = (
                report.files_removed_by_compaction.get(name, 0) + count
            )
    for name in (DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE):
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
        table.create_checkpoint()
        table.cleanup_metadata()
        report.versions[name] = table.version()
    return report
