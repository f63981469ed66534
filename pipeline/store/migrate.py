"""Converting an output of an earlier version into Delta tables, in place (``yolo-batch
migrate``).

An earlier version made a shard visible with a commit marker naming the attempt whose two
Parquet files hold its rows, and kept tombstones under ``_deleted/``
(:mod:`pipeline.store.legacy`). The files of a committed attempt already sit where the Delta
tables keep theirs (``TABLE/run_id=RUN/shard-NNNNNN-TOKEN.parquet``), so conversion adds them
to the logs as they are: each file is read once for its size and statistics and never
rewritten.

Steps, in this order:

1. write ``_migrating.json`` (:data:`~pipeline.store.layout.MIGRATION_FILE`);
2. for every run, add its committed shards' files to the logs through
   :meth:`~pipeline.store.tables.ResultTables.commit_shards`, :data:`BATCH_SHARDS` shards per
   call (``detections`` claims, then ``images`` commits, as a run does);
3. for every run with tombstones, write them to the ``tombstones`` table;
4. delete the commit markers and the converted runs' ``_deleted/RUN_ID/`` files (a file
   elsewhere under ``_deleted/`` is left, with a warning);
5. delete ``_migrating.json``.

Crash safety: nothing an earlier version wrote is deleted before every shard and tombstone is
in the logs (step 4 comes after 2 and 3 have finished for every run), and each step can be
repeated. Step 2 skips a shard whose ``images`` file the log holds already and completes one
whose ``detections`` claim is all the log holds; step 3 skips a run whose tombstones the table
holds already (they are written in one commit). So a migrate stopped anywhere, run again,
finishes the job, and a migrate of a converted output changes nothing.

Readers: from step 2 on the ``images`` table exists while holding only part of the shards, so
its existence cannot tell a converted output from half of one, and ``deltalake`` cannot create
a table with a property of our own that would say so (it rejects unknown properties at
creation). ``_migrating.json`` says so instead: while it exists, readers and runs refuse the
output, naming this command (:func:`pipeline.store.legacy.refuse_legacy`; one existence check
per open). It is written before the first commit and deleted after the last deletion.

Files of attempts that no marker names (failed or retried attempts, and the earlier attempt of
a shard with two markers) are not added: no reader saw them. They stay where they are, invisible,
until ``yolo-batch compact`` vacuums them.

The caller holds the output's lease, so no job writes the output meanwhile.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputError
from pipeline.store.layout import IMAGES_TABLE, TOMBSTONES_TABLE, deleted_dir, shard_name
from pipeline.store.ledger import Ledger, is_run_id
from pipeline.store.legacy import (
    LegacyCommit,
    legacy_commits,
    legacy_tombstone_files,
    migration_unfinished,
)
from pipeline.store.schema import TOMBSTONE_SCHEMA
from pipeline.store.storage import Storage
from pipeline.store.tables import SHARD_TABLES, DataFile, ResultTables, ShardFiles
from pipeline.store.uris import join

logger = logging.getLogger(__name__)

#: Shards added to the logs per commit: a large output makes many modest commits, not one
#: giant one.
BATCH_SHARDS = 256
#: Files read (for their statistics) or deleted at once: object stores reward parallel
#: requests.
IO_THREADS = 16


@dataclass(frozen=True)
class LegacyRun:
    """What an earlier version left of one run: its commit markers and tombstone files."""

    run_id: str
    commits: dict[int, LegacyCommit]
    tombstone_files: list[str]


@dataclass(frozen=True)
class LegacyState:
    """What of an earlier version an output holds."""

    runs: list[LegacyRun]
    #: ``_migrating.json`` exists: a conversion started and has not finished.
    unfinished: bool
    images_table: bool

    @property
    def pending(self) -> bool:
        """Whether :func:`migrate_output` has anything to do."""
        return self.unfinished or any(run.commits or run.tombstone_files for run in self.runs)


@dataclass
class MigrationReport:
    """What :func:`migrate_output` did."""

    runs: int = 0
    #: Shards added to the logs now, and shards an earlier, stopped migrate had added.
    shards: int = 0
    shards_already: int = 0
    data_files: int = 0
    tombstones: int = 0
    runs_tombstones_already: int = 0
    markers_deleted: int = 0
    tombstone_files_deleted: int = 0


def legacy_state(tables: ResultTables, storage: Storage) -> LegacyState:
    """The commit markers and tombstone files of every run of ``tables``' output (a listing
    of each run's markers and one of ``_deleted/``)."""
    layout = tables.layout
    run_ids = Ledger(storage, layout).run_ids()
    tombstones = _tombstone_files_by_run(storage, layout.root)
    runs = [
        LegacyRun(
            run_id,
            legacy_commits(storage, layout, run_id) if run_id in run_ids else {},
            tombstones.get(run_id, []),
        )
        for run_id in sorted(set(run_ids) | set(tombstones))
    ]
    return LegacyState(
        runs=[run for run in runs if run.commits or run.tombstone_files],
        unfinished=migration_unfinished(storage, layout),
        images_table=tables.exists(IMAGES_TABLE),
    )


def migrate_output(
    tables: ResultTables,
    storage: Storage,
    *,
    batch_shards: int = BATCH_SHARDS,
    check: Callable[[], None] | None = None,
) -> MigrationReport:
    """Convert ``tables``' output from commit markers to Delta logs (see the module's steps).

    The caller holds the output's lease; ``check`` (e.g. the lease's) is called between
    batches and stops the work by raising; a stopped migrate is finished by running it again.
    Raises :class:`~pipeline.errors.OutputError` when a marker names a data file that is gone.
    """
    check = check or (lambda: None)
    state = legacy_state(tables, storage)
    report = MigrationReport(runs=len(state.runs))
    if not state.pending:
        return report
    layout = tables.layout
    if not state.unfinished:
        body = {"started_at": time.time(), "runs": [run.run_id for run in state.runs]}
        storage.write_bytes(layout.migration, json.dumps(body).encode())
    tables.create()
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="migrate") as pool:
        for run in state.runs:
            _convert_shards(tables, storage, pool, run, report, batch_shards, check)
        for run in state.runs:
            check()
            _convert_tombstones(tables, storage, run, report)
        check()
        report.markers_deleted = _delete_all(
            storage,
            pool,
            [layout.commits_dir(run.run_id) for run in state.runs if run.commits],
        )
        report.tombstone_files_deleted = _delete_all(
            storage,
            pool,
            [deleted_dir(layout.root, run.run_id) for run in state.runs if run.tombstone_files],
        )
    storage.delete(layout.migration)
    logger.info(
        "converted %s: %d shard(s) now, %d before; %d tombstone(s); %d marker(s) and %d "
        "tombstone file(s) deleted",
        layout.root,
        report.shards,
        report.shards_already,
        report.tombstones,
        report.markers_deleted,
        report.tombstone_files_deleted,
    )
    return report


def _convert_shards(
    tables: ResultTables,
    storage: Storage,
    pool: ThreadPoolExecutor,
    run: LegacyRun,
    report: MigrationReport,
    batch_shards: int,
    check: Callable[[], None],
) -> None:
    """Add ``run``'s committed shards to the logs; shards whose ``images`` file is logged
    already are counted, not read."""
    logged = _logged_uris(tables, IMAGES_TABLE, run.run_id)
    layout = tables.layout
    todo = [
        commit
        for _, commit in sorted(run.commits.items())
        if layout.data_file(IMAGES_TABLE, run.run_id, commit.shard_id, commit.attempt_token)
        not in logged
    ]
    report.shards_already += len(run.commits) - len(todo)
    done = 0
    for start in range(0, len(todo), batch_shards):
        check()
        batch = todo[start : start + batch_shards]
        shards = list(pool.map(lambda c: _shard_files(tables, storage, run.run_id, c), batch))
        committed = tables.commit_shards(run.run_id, shards)
        done += len(batch)
        report.shards += len(committed)
        report.data_files += len(committed) * len(SHARD_TABLES)
        logger.info("run %s: %d of %d shard(s) to convert done", run.run_id, done, len(todo))


def _shard_files(
    tables: ResultTables, storage: Storage, run_id: str, commit: LegacyCommit
) -> ShardFiles:
    """The committed attempt's two files as the log records them (read, not rewritten)."""
    files = {}
    for name in SHARD_TABLES:
        uri = tables.layout.data_file(name, run_id, commit.shard_id, commit.attempt_token)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            marker = join(
                tables.layout.commits_dir(run_id),
                f"{shard_name(commit.shard_id)}.{commit.attempt_token}.json",
            )
            raise OutputError(
                f"shard {commit.shard_id} of run {run_id} is committed by {marker}, but its "
                f"{name} file {uri} is gone: restore the file, or delete the marker to drop "
                "the shard (then `yolo-batch run ... --resume` runs it again), and migrate again"
            ) from None
        files[name] = DataFile.of_table(uri, pq.read_table(pa.BufferReader(data)), len(data))
    return ShardFiles(commit.shard_id, files)


def _convert_tombstones(
    tables: ResultTables, storage: Storage, run: LegacyRun, report: MigrationReport
) -> None:
    """Write ``run``'s tombstone files to the ``tombstones`` table, unless it holds them."""
    if not run.tombstone_files:
        return
    if tables.run_files(TOMBSTONES_TABLE, run.run_id).num_rows:
        report.runs_tombstones_already += 1
        return
    counted = [0]

    def batches() -> Iterator[pa.RecordBatch]:
        for uri in run.tombstone_files:
            table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
            table = table.select(TOMBSTONE_SCHEMA.names).cast(TOMBSTONE_SCHEMA)
            counted[0] += table.num_rows
            yield from table.to_batches()

    tables.replace_tombstones(
        run.run_id, pa.RecordBatchReader.from_batches(TOMBSTONE_SCHEMA, batches())
    )
    report.tombstones += counted[0]
    logger.info("run %s: %d tombstone(s) converted", run.run_id, counted[0])


def _logged_uris(tables: ResultTables, name: str, run_id: str) -> set[str]:
    root = tables.uri(name)
    return {join(root, path) for path in tables.run_files(name, run_id)["path"].to_pylist()}


def _tombstone_files_by_run(storage: Storage, output: str) -> dict[str, list[str]]:
    """``_deleted/RUN_ID/*.parquet`` by run id; a file outside a run's folder is left alone."""
    prefix = deleted_dir(output) + "/"
    out: dict[str, list[str]] = {}
    for uri in legacy_tombstone_files(storage, output):
        folder, inside, _ = uri[len(prefix) :].partition("/")
        if inside and is_run_id(folder):
            out.setdefault(folder, []).append(uri)
        else:
            logger.warning("%s is not in a run's tombstone folder; it is left as it is", uri)
    return out


def _delete_all(storage: Storage, pool: ThreadPoolExecutor, folders: Sequence[str]) -> int:
    """Delete every file under ``folders``; returns how many."""
    uris = [info.uri for folder in folders for info in storage.list(folder.rstrip("/") + "/")]
    for _ in pool.map(storage.delete, uris):
        pass
    return len(uris)
