"""Where a run's files live under the output URI.

::

    OUTPUT/
      _status.json                              progress of the latest run (refreshed)
      _lease.json                               the running run's lease (one run at a time)
      _migrating.json                           while ``yolo-batch migrate`` converts the output
      _runs/RUN_ID/run.json                     run record: config, model, start/end, counts
      _runs/RUN_ID/plan.json                    plan summary: shards, images (written last)
      _runs/RUN_ID/plan-checkpoint.json         planning so far: shards written, listing position
      _runs/RUN_ID/listing/chunk-000003.parquet an incremental run's listing, compared so far
      _runs/RUN_ID/plan/shard-000012.parquet    the objects of shard 12, in order
      _runs/RUN_ID/failed/shard-000012.json     shard 12 ran out of attempts (cleared on commit)
      detections/_delta_log/                    Delta Lake log of the detections table
      detections/run_id=RUN_ID/shard-000012-ATTEMPT.parquet
      images/_delta_log/                        Delta Lake log of the images table
      images/run_id=RUN_ID/shard-000012-ATTEMPT.parquet
      tombstones/_delta_log/                    objects incremental runs found gone (a Delta table)
      tombstones/run_id=RUN_ID/part-....parquet

``detections``, ``images`` and ``tombstones`` are Delta Lake tables partitioned by ``run_id``
(:mod:`pipeline.store.tables`). Data files are named by shard and attempt token and become
visible to readers only once the driver adds them to the table's log, so files of failed or
retried attempts never show.

No part of a path comes from an object key: paths are built from the run id, table names, shard
numbers and attempt tokens only, and each of those must be one plain name segment
(:func:`checked_segment`), so nothing a user or a source supplies can point outside the output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.store.uris import join

RUNS_DIR = "_runs"
STATUS_FILE = "_status.json"
LEASE_FILE = "_lease.json"
#: Present from the start of ``yolo-batch migrate`` until it has finished: readers refuse the
#: output meanwhile (:mod:`pipeline.store.migrate`).
MIGRATION_FILE = "_migrating.json"
DELETED_DIR = "_deleted"
DETECTIONS_TABLE = "detections"
IMAGES_TABLE = "images"
TOMBSTONES_TABLE = "tombstones"
#: The log folder of a Delta table.
DELTA_LOG_DIR = "_delta_log"
SHARD_DIGITS = 6
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: The run id in a data file's path (``TABLE/run_id=RUN/shard-...parquet``).
_DATA_FILE_RUN = re.compile(r"/run_id=([^/]+)/[^/]+$")


def checked_segment(value: str, what: str) -> str:
    """``value`` if it is one safe path segment (letters, digits, ``_ . -``; no ``..``)."""
    if not isinstance(value, str) or not _SEGMENT.match(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a plain name (letters, digits, '_', '.', '-'): it would "
            "not stay inside the output folder"
        )
    return value


def deleted_dir(output_uri: str, run_id: str | None = None) -> str:
    """Where tombstones live: ``OUTPUT/_deleted/`` or one run's folder in it."""
    base = join(output_uri, DELETED_DIR)
    return join(base, checked_segment(run_id, "run id")) if run_id else base


def data_file_run_id(data_file: str) -> str:
    """The run id of a data file ``.../TABLE/run_id=RUN/shard-....parquet``."""
    match = _DATA_FILE_RUN.search(data_file.replace("\\", "/"))
    if match is None:
        raise ValueError(f"{data_file!r} is not a data file of a run output (TABLE/run_id=RUN/...)")
    return match[1]


def shard_name(shard_id: int) -> str:
    if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
        raise ValueError(f"shard id must be a non-negative integer, got {shard_id!r}")
    return f"shard-{shard_id:0{SHARD_DIGITS}d}"


@dataclass(frozen=True)
class OutputLayout:
    """Paths of one output root (an ``s3://`` prefix or an absolute local folder)."""

    root: str

    @property
    def status(self) -> str:
        return join(self.root, STATUS_FILE)

    @property
    def lease(self) -> str:
        return join(self.root, LEASE_FILE)

    @property
    def migration(self) -> str:
        return join(self.root, MIGRATION_FILE)

    @property
    def runs_dir(self) -> str:
        return join(self.root, RUNS_DIR)

    def run_dir(self, run_id: str) -> str:
        return join(self.root, RUNS_DIR, checked_segment(run_id, "run id"))

    def run_record(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "run.json")

    def plan_summary(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "plan.json")

    def plan_checkpoint(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "plan-checkpoint.json")

    def listing_chunk(self, run_id: str, chunk: int) -> str:
        """An incremental run's listed objects of one compared chunk."""
        return join(self.run_dir(run_id), "listing", f"chunk-{chunk:0{SHARD_DIGITS}d}.parquet")

    def plan_dir(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "plan")

    def plan_shard(self, run_id: str, shard_id: int) -> str:
        return join(self.plan_dir(run_id), f"{shard_name(shard_id)}.parquet")

    def commits_dir(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "commits")

    def failed_dir(self, run_id: str) -> str:
        return join(self.run_dir(run_id), "failed")

    def failed_marker(self, run_id: str, shard_id: int) -> str:
        return join(self.failed_dir(run_id), f"{shard_name(shard_id)}.json")

    def table_root(self, table: str) -> str:
        """The root of the Delta table ``table`` (its log is ``_delta_log/`` in it)."""
        if table not in (DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE):
            raise ValueError(
                f"unknown table {table!r}: {DETECTIONS_TABLE}, {IMAGES_TABLE} or {TOMBSTONES_TABLE}"
            )
        return join(self.root, table)

    def table_dir(self, table: str, run_id: str) -> str:
        """The folder of ``run_id``'s partition of ``table``."""
        return join(self.table_root(table), f"run_id={checked_segment(run_id, 'run id')}")

    def data_file(self, table: str, run_id: str, shard_id: int, attempt_token: str) -> str:
        token = checked_segment(attempt_token, "attempt token")
        return join(self.table_dir(table, run_id), f"{shard_name(shard_id)}-{token}.parquet")
