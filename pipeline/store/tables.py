"""The results tables of an output as Delta Lake tables, and the log commits that make a
shard's files visible.

``OUTPUT/detections``, ``OUTPUT/images`` and ``OUTPUT/tombstones`` are Delta tables
(``deltalake``, delta-rs) partitioned by ``run_id``: no catalog service, the log lives beside
the data, and Spark, Trino/Athena, Databricks, Snowflake, DuckDB, Polars and Daft read them.
A query for one run reads only that run's partition; opening a table reads its latest
checkpoint and the few commits after it (:data:`CHECKPOINT_INTERVAL`), however many shards it
holds.

Commit protocol (:meth:`ResultTables.commit_shards`): actors write a shard's two Parquet files
(named by shard and attempt token) into the tables' folders; the driver adds them to the logs in
batches, ``detections`` first. A shard's ``detections`` file in the log is its *claim*; its
``images`` file makes it committed. Every commit carries the Delta application transaction
``yolo-batch/RUN_ID`` (:data:`APP_ID_PREFIX`), so two commits of the same run that race each
other conflict and the loser re-reads the log. Before each commit the batch is checked against
the log: a shard another attempt claimed or committed is dropped, and re-adding a path the log
already holds changes nothing. So a lost commit reply, a retried commit or a second driver never
shows a shard twice, and a driver killed between the two commits leaves a claim that
:meth:`ResultTables.reconcile` completes on resume.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import boto3
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from pipeline import faults
from pipeline.errors import OutputError
from pipeline.store.delta_stats import file_stats
from pipeline.store.layout import (
    DETECTIONS_TABLE,
    IMAGES_TABLE,
    TOMBSTONES_TABLE,
    OutputLayout,
)
from pipeline.store.ledger import ShardCounts
from pipeline.store.s3 import DEFAULT_REGION, S3Options, make_session
from pipeline.store.schema import DETECTIONS_SCHEMA, IMAGES_SCHEMA, STATUS_ERROR, TOMBSTONE_SCHEMA
from pipeline.store.storage import Storage, StorageError
from pipeline.store.uris import is_s3, join, normalize
from yolov4.retry import backoff_s

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Every results table is partitioned by run: one run's queries read one folder.
PARTITION_COLUMN = "run_id"
TABLE_SCHEMAS = {
    DETECTIONS_TABLE: DETECTIONS_SCHEMA,
    IMAGES_TABLE: IMAGES_SCHEMA,
    TOMBSTONES_TABLE: TOMBSTONE_SCHEMA,
}
TABLE_DESCRIPTIONS = {
    DETECTIONS_TABLE: "yolo-batch detections: one row per detection (boxes in original pixels)",
    IMAGES_TABLE: "yolo-batch images: one row per input image and run, failures included",
    TOMBSTONES_TABLE: "yolo-batch tombstones: objects an incremental run found deleted",
}
#: A shard's tables in commit order: the ``detections`` file claims the shard, the ``images``
#: file commits it (the ``detections`` view joins on ``images``, so it never shows half a shard).
SHARD_TABLES = (DETECTIONS_TABLE, IMAGES_TABLE)
#: Commits between checkpoints: opening a table reads at most this many commit files.
CHECKPOINT_INTERVAL = 20
#: Table properties (never credentials).
TABLE_CONFIGURATION = {"delta.checkpointInterval": str(CHECKPOINT_INTERVAL)}
#: Attempts at opening, refreshing or creating a table when the store fails transiently, on top
#: of the object-store client's own retries (it gives up on a connection reset during a
#: conditional PUT, for one); the wait between them doubles from the first, capped.
DELTA_IO_ATTEMPTS = 8
DELTA_IO_BACKOFF_S = 0.5
DELTA_IO_BACKOFF_MAX_S = 8.0
#: Application-transaction id of a run's commits: ``yolo-batch/RUN_ID``.
APP_ID_PREFIX = "yolo-batch/"
#: Commits of one batch that conflict with another driver's before the batch gives up.
MAX_COMMIT_CONFLICTS = 5
_SHARD_FILE = re.compile(r"(?:^|/)shard-(\d+)-([A-Za-z0-9_-]+)\.parquet$")


def app_id(run_id: str) -> str:
    """The application-transaction id of ``run_id``'s commits."""
    return APP_ID_PREFIX + run_id


def storage_options(
    output: str,
    s3_options: S3Options | None = None,
    *,
    session: boto3.session.Session | None = None,
) -> dict[str, str] | None:
    """``deltalake`` storage options for ``output``: ``None`` locally; on S3 the AWS
    credentials of ``session`` (default: one of ``s3_options``' profile,
    :func:`~pipeline.store.s3.make_session`; used in memory, never written to a log or a
    table property), region, endpoint, timeout and conditional writes
    (``If-None-Match``/``If-Match``), which make concurrent log commits safe on S3 and on
    S3-compatible stores without a lock service."""
    if not is_s3(output):
        return None
    options = s3_options or S3Options()
    session = session or make_session(options)
    out = {
        "AWS_REGION": options.region or session.region_name or DEFAULT_REGION,
        "conditional_put": "etag",
        "timeout": f"{int(options.read_timeout_s)}s",
    }
    endpoint = options.resolved_endpoint()
    if endpoint:
        out["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        out["AWS_ACCESS_KEY_ID"] = frozen.access_key
        out["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            out["AWS_SESSION_TOKEN"] = frozen.token
    return out


@dataclass(frozen=True)
class DataFile:
    """A data file an actor wrote, as the log records it.

    ``uri``: where it is; ``size``: its bytes; ``stats``: its Delta statistics JSON
    (:func:`pipeline.store.delta_stats.file_stats`)."""

    uri: str
    size: int
    stats: str

    @classmethod
    def of_table(cls, uri: str, table: pa.Table, size: int) -> DataFile:
        return cls(uri, size, file_stats(table, (PARTITION_COLUMN,)))


@dataclass(frozen=True)
class ShardFiles:
    """A finished shard attempt: its data files by table (:data:`SHARD_TABLES`)."""

    shard_id: int
    files: dict[str, DataFile]


@dataclass(frozen=True)
class _LoggedFile:
    path: str
    shard_id: int
    token: str


class ResultTables:
    """The Delta tables of one output (an ``s3://`` prefix or an absolute local folder).

    Tables are opened lazily and kept; :meth:`table` with ``refresh`` brings one up to date
    with commits made since (reading only those commits)."""

    def __init__(self, output: str, s3_options: S3Options | None = None) -> None:
        self.root = normalize(output)
        self.layout = OutputLayout(self.root)
        self.s3_options = s3_options
        self._tables: dict[str, DeltaTable] = {}
        self._session: boto3.session.Session | None = None
        self._options: dict[str, str] | None = None
        self._credentials_key: tuple | None = None
        #: The last file list read per table, with the table version it belongs to.
        self._actions: dict[str, tuple[int, pa.Table]] = {}

    @property
    def storage_options(self) -> dict[str, str] | None:
        """The current storage options. Credentials that expire (an assumed role, web identity)
        are refreshed by botocore; when they change, the open tables are reopened with them,
        so a run longer than its credentials' lifetime keeps committing."""
        if not is_s3(self.root):
            return None
        if self._session is None:
            self._session = make_session(self.s3_options)
        credentials = self._session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        key = (frozen.access_key, frozen.token) if frozen else None
        if self._options is None or key != self._credentials_key:
            if self._options is not None:
                logger.info("AWS credentials changed: reopening the results tables")
                self._tables.clear()
            self._options = storage_options(self.root, self.s3_options, session=self._session)
            self._credentials_key = key
        return self._options

    def uri(self, name: str) -> str:
        return self.layout.table_root(name)

    # ------------------------------------------------------------ lifecycle
    def exists(self, name: str = IMAGES_TABLE) -> bool:
        """Whether table ``name`` exists (opening it, which later calls reuse)."""
        return self.table(name) is not None

    def create(self) -> None:
        """Create every table that does not exist yet (empty, partitioned by run)."""
        for name, schema in TABLE_SCHEMAS.items():
            if self.exists(name):
                continue
            self.retrying(
                f"creating the {name} table",
                lambda name=name, schema=schema: create_table_with_add_actions(
                    self.uri(name),
                    DeltaSchema.from_arrow(schema),
                    [],
                    mode="ignore",  # a creation whose reply was lost is not an error
                    partition_by=[PARTITION_COLUMN],
                    name=name,
                    description=TABLE_DESCRIPTIONS[name],
                    configuration=TABLE_CONFIGURATION,
                    storage_options=self.storage_options,
                ),
            )

    def table(self, name: str, *, refresh: bool = False) -> DeltaTable | None:
        """The Delta table ``name``, or ``None`` when it does not exist yet."""
        options = self.storage_options  # reopens the tables when credentials changed
        table = self._tables.get(name)
        if table is not None:
            if refresh:
                self.retrying(f"reading the {name} log", table.update_incremental)
            return table
        try:
            table = self.retrying(
                f"opening the {name} table",
                lambda: DeltaTable(self.uri(name), storage_options=options),
            )
        except TableNotFoundError:
            return None
        self._tables[name] = table
        return table

    def dataset(self, name: str) -> ds.Dataset | pa.Table:
        """What a reader scans: the table's current files as an Arrow dataset (files prune by
        partition and statistics), or an empty table of its schema."""
        table = self.table(name)
        if table is None:
            return TABLE_SCHEMAS[name].empty_table()
        return table.to_pyarrow_dataset()

    def retrying(self, what: str, operation: Callable[[], T]) -> T:
        """``operation()``, tried :data:`DELTA_IO_ATTEMPTS` times while the store fails
        transiently (an ``OSError`` or a ``deltalake`` error other than a missing table or a
        commit conflict, which callers handle)."""
        for attempt in range(1, DELTA_IO_ATTEMPTS + 1):
            try:
                return operation()
            except (TableNotFoundError, CommitFailedError):
                raise
            except (OSError, DeltaError) as exc:
                if attempt == DELTA_IO_ATTEMPTS:
                    raise StorageError(
                        f"{what} under {self.root} failed {attempt} times "
                        f"({' '.join(str(exc).split())[:300]}); the store is failing or "
                        "unreachable: try again later (a started run: --resume)"
                    ) from exc
                delay = backoff_s(attempt, DELTA_IO_BACKOFF_S, DELTA_IO_BACKOFF_MAX_S)
                logger.warning(
                    "%s under %s failed (%s); trying again in %.1f s",
                    what,
                    self.root,
                    " ".join(str(exc).split())[:300],
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ the log
    def run_files(self, name: str, run_id: str) -> pa.Table:
        """The log's files of ``run_id`` in table ``name``: ``path``, ``size_bytes``,
        ``modification_time`` (ms), ``num_records`` and the flattened statistics."""
        table = self.table(name)
        if table is None:
            return pa.table({"path": pa.array([], pa.string())})
        version = table.version()
        cached = self._actions.get(name)
        if cached is None or cached[0] != version:
            cached = (version, pa.table(table.get_add_actions(flatten=True)))
            self._actions[name] = cached
        actions = cached[1]
        if actions.num_rows == 0:
            return actions
        keep = pa.compute.equal(actions[f"partition.{PARTITION_COLUMN}"], run_id)
        return actions.filter(keep)

    def _logged(self, name: str, run_id: str) -> dict[int, _LoggedFile]:
        """``run_id``'s per-shard files in ``name``'s log, by shard id (compacted files,
        which hold many shards, are not in it)."""
        out = {}
        for path in self.run_files(name, run_id).column("path").to_pylist():
            match = _SHARD_FILE.search(path)
            if match:
                out[int(match[1])] = _LoggedFile(path, int(match[1]), match[2])
        return out

    def committed_shards(self, run_id: str) -> dict[int, ShardCounts]:
        """The committed shards of ``run_id`` and their counts, from the log's statistics
        alone (``errors`` are the rows whose ``error`` column is not null). A run whose files
        were compacted (in either table: compaction may have stopped between the two) has its
        shards counted from its ``images`` rows instead."""
        images = self.run_files(IMAGES_TABLE, run_id)
        if images.num_rows == 0:
            return {}
        paths = images.column("path").to_pylist()
        det_files = self.run_files(DETECTIONS_TABLE, run_id)
        det_paths = det_files.column("path").to_pylist() if det_files.num_rows else []
        if not all(_SHARD_FILE.search(p) for p in paths + det_paths):
            return self._committed_from_rows(run_id)
        records = images.column("num_records").to_pylist()
        nulls = images.column("null_count.error").to_pylist()
        detections = {shard_id: 0 for shard_id in (int(_SHARD_FILE.search(p)[1]) for p in paths)}
        if det_files.num_rows:
            tokens = {int(m[1]): m[2] for m in map(_SHARD_FILE.search, paths)}
            for path, n in zip(
                det_files.column("path").to_pylist(), det_files.column("num_records").to_pylist()
            ):
                match = _SHARD_FILE.search(path)
                if match and tokens.get(int(match[1])) == match[2]:
                    detections[int(match[1])] = n or 0
        out = {}
        for path, n, null_errors in zip(paths, records, nulls):
            shard_id = int(_SHARD_FILE.search(path)[1])
            errors = (n or 0) - (null_errors or 0)
            out[shard_id] = ShardCounts(
                images=n or 0, ok=(n or 0) - errors, errors=errors, detections=detections[shard_id]
            )
        return out

    def _committed_from_rows(self, run_id: str) -> dict[int, ShardCounts]:
        scan = self.dataset(IMAGES_TABLE)
        rows = scan.to_table(
            columns=["shard_id", "status", "num_detections"],
            filter=ds.field(PARTITION_COLUMN) == run_id,
        )
        grouped = rows.group_by("shard_id").aggregate(
            [("status", "count"), ("num_detections", "sum")]
        )
        errors = (
            rows.filter(pa.compute.equal(rows["status"], STATUS_ERROR))
            .group_by("shard_id")
            .aggregate([("status", "count")])
        )
        error_count = dict(zip(errors["shard_id"].to_pylist(), errors["status_count"].to_pylist()))
        out = {}
        for shard_id, n, dets in zip(
            grouped["shard_id"].to_pylist(),
            grouped["status_count"].to_pylist(),
            grouped["num_detections_sum"].to_pylist(),
        ):
            bad = error_count.get(shard_id, 0)
            out[shard_id] = ShardCounts(images=n, ok=n - bad, errors=bad, detections=dets or 0)
        return out

    # ------------------------------------------------------------ commits
    def commit_shards(self, run_id: str, shards: list[ShardFiles]) -> list[int]:
        """Add ``shards``' files to the logs (``detections``, then ``images``); returns the ids
        of the shards this call committed. A shard the log already has from another attempt is
        left out (its files stay orphans, for :meth:`remove_orphans`).

        Raises :class:`~pipeline.errors.OutputError` when another driver keeps committing the
        same run, and the storage's errors (``OSError`` and ``deltalake`` errors) when a
        commit fails; a failed call may be repeated with the same shards.
        """
        if not shards:
            return []
        self.create()
        for _ in range(MAX_COMMIT_CONFLICTS):
            try:
                return self._commit_once(run_id, shards)
            except CommitFailedError as exc:  # another commit won the version: re-read the log
                logger.warning("run %s: a concurrent commit (%s); re-reading the log", run_id, exc)
        raise OutputError(
            f"another driver keeps committing run {run_id} to {self.root}: only one driver may "
            "run it at a time; stop the other one (yolo-batch status shows its lease)"
        )

    def _commit_once(self, run_id: str, shards: list[ShardFiles]) -> list[int]:
        mine = {shard.shard_id: shard for shard in shards}
        claims = self._logged_fresh(DETECTIONS_TABLE, run_id)
        self.table(IMAGES_TABLE, refresh=True)
        committed = self.committed_shards(run_id)
        to_claim = []
        for shard_id, shard in mine.items():
            claim = claims.get(shard_id)
            token = _token(shard.files[DETECTIONS_TABLE].uri)
            if shard_id in committed or (claim is not None and claim.token != token):
                logger.warning(
                    "run %s: shard %d is already in the log from another attempt; this "
                    "attempt's files are left out",
                    run_id,
                    shard_id,
                )
                continue
            if claim is None:
                to_claim.append(shard)
        self._append(DETECTIONS_TABLE, run_id, [s.files[DETECTIONS_TABLE] for s in to_claim])
        if to_claim:
            faults.after_claim()
        claims = self._logged_fresh(DETECTIONS_TABLE, run_id)
        self.table(IMAGES_TABLE, refresh=True)
        committed = self.committed_shards(run_id)
        to_commit = [
            shard
            for shard_id, shard in mine.items()
            if shard_id not in committed
            and claims.get(shard_id) is not None
            and claims[shard_id].token == _token(shard.files[DETECTIONS_TABLE].uri)
        ]
        self._append(IMAGES_TABLE, run_id, [s.files[IMAGES_TABLE] for s in to_commit])
        return [shard.shard_id for shard in to_commit]

    def _logged_fresh(self, name: str, run_id: str) -> dict[int, _LoggedFile]:
        if self.table(name, refresh=True) is None:
            return {}
        return self._logged(name, run_id)

    def _append(
        self, name: str, run_id: str, files: list[DataFile], removes: list[str] = ()
    ) -> None:
        """One commit of ``files`` (and removals of the logged ``removes`` paths) to ``name``,
        under ``run_id``'s application transaction (its next version)."""
        if not files and not removes:
            return
        table = self.table(name)
        version = (table.transaction_version(app_id(run_id)) or 0) + 1
        now_ms = int(time.time() * 1000)
        root = self.uri(name) + "/"
        actions: list[AddAction | RemoveAction] = [
            AddAction(
                _relative(f.uri, root), f.size, {PARTITION_COLUMN: run_id}, now_ms, True, f.stats
            )
            for f in files
        ]
        actions += [
            RemoveAction(path, True, now_ms, partition_values={PARTITION_COLUMN: run_id})
            for path in removes
        ]
        table.create_write_transaction(
            actions,
            mode="append",
            schema=DeltaSchema.from_arrow(TABLE_SCHEMAS[name]),
            partition_by=[PARTITION_COLUMN],
            commit_properties=CommitProperties(
                custom_metadata={"yolo-batch.run_id": run_id, "yolo-batch.files": str(len(files))},
                app_transactions=[Transaction(app_id(run_id), version)],
            ),
        )
        table.update_incremental()

    def reconcile(self, run_id: str, storage: Storage) -> list[int]:
        """Finish what a driver killed between a batch's two commits left: a shard claimed in
        ``detections`` but missing from ``images`` gets its ``images`` file committed (read
        back for its statistics), or, when that file is gone, its claim removed so the shard
        runs again. Returns the shards committed here. Each try re-reads the logs, so a try
        that failed half-way (or whose commit reply was lost) is simply tried again."""
        for attempt in range(1, DELTA_IO_ATTEMPTS + 1):
            try:
                return self._reconcile_once(run_id, storage)
            except (OSError, DeltaError) as exc:
                if attempt == DELTA_IO_ATTEMPTS:
                    raise
                logger.warning("completing run %s's claims failed (%s); again", run_id, exc)
                time.sleep(backoff_s(attempt, DELTA_IO_BACKOFF_S, DELTA_IO_BACKOFF_MAX_S))
        raise AssertionError("unreachable")

    def _reconcile_once(self, run_id: str, storage: Storage) -> list[int]:
        if self.table(IMAGES_TABLE) is None:
            return []
        claims = self._logged_fresh(DETECTIONS_TABLE, run_id)
        self.table(IMAGES_TABLE, refresh=True)
        committed = self.committed_shards(run_id)
        dangling = [claim for shard_id, claim in claims.items() if shard_id not in committed]
        if not dangling:
            return []
        files, removes, done = [], [], []
        for claim in dangling:
            uri = self.layout.data_file(IMAGES_TABLE, run_id, claim.shard_id, claim.token)
            try:
                data = storage.read_bytes(uri)
            except FileNotFoundError:
                removes.append(claim.path)
                continue
            table = pq.read_table(pa.BufferReader(data))
            files.append(DataFile.of_table(uri, table, len(data)))
            done.append(claim.shard_id)
        logger.warning(
            "run %s: %d shard(s) were claimed but not committed by an earlier driver: %d "
            "committed now, %d to run again",
            run_id,
            len(dangling),
            len(done),
            len(removes),
        )
        self._append(DETECTIONS_TABLE, run_id, [], removes)
        self._append(IMAGES_TABLE, run_id, files)
        return done

    def replace_tombstones(self, run_id: str, rows: pa.RecordBatchReader) -> None:
        """Make ``rows`` (:data:`~pipeline.store.schema.TOMBSTONE_SCHEMA`, all of ``run_id``)
        the tombstones of ``run_id``, replacing any it had (a resumed plan writes them
        again). Streams ``rows``; never holds them all."""
        self.create()
        table = self.table(TOMBSTONES_TABLE, refresh=True)
        predicate = f"{PARTITION_COLUMN} = '{run_id}'"
        if self.run_files(TOMBSTONES_TABLE, run_id).num_rows:
            table.delete(predicate)
        write_deltalake(
            table,
            rows,
            mode="append",
            partition_by=[PARTITION_COLUMN],
            commit_properties=CommitProperties(custom_metadata={"yolo-batch.run_id": run_id}),
        )
        table.update_incremental()

    def remove_orphans(self, run_id: str, storage: Storage) -> int:
        """Delete ``run_id``'s data files that no log holds (failed, retried or abandoned
        attempts); returns how many. Only while nothing else writes the run (its lease)."""
        removed = 0
        for name in SHARD_TABLES:
            if self.table(name, refresh=True) is None:
                continue
            logged = {
                join(self.uri(name), p) for p in self.run_files(name, run_id)["path"].to_pylist()
            }
            folder = self.layout.table_dir(name, run_id) + "/"
            for info in list(storage.list(folder)):
                if info.uri.endswith(".parquet") and info.uri not in logged:
                    storage.delete(info.uri)
                    removed += 1
        return removed


def shard_of_file(path: str) -> int | None:
    """The shard id of a per-shard data file's path, ``None`` for a compacted file."""
    match = _SHARD_FILE.search(path)
    return int(match[1]) if match else None


def _token(uri: str) -> str:
    match = _SHARD_FILE.search(uri)
    if match is None:
        raise ValueError(f"{uri!r} is not a shard data file (shard-NNNNNN-TOKEN.parquet)")
    return match[2]


def _relative(uri: str, root: str) -> str:
    if not uri.startswith(root):
        raise ValueError(f"data file {uri} is not inside its table {root}")
    return uri[len(root) :]
