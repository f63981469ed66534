"""SQL over a run output's committed results, with DuckDB.

Views:

- ``images``, ``detections``: the latest committed result per image (the newest run that
  processed it), leaving out images whose latest event is a deletion recorded by an incremental
  run (:mod:`pipeline.run.incremental`); ``all_images``, ``all_detections``: every committed row of
  every run.
- ``tombstones``: ``image_uri``, ``run_id`` of the objects incremental runs found deleted.
- ``runs``: one row per run record.

An output with neither runs nor tables (a mistyped path, say) is an error, not an empty result.
The runs are listed before the tables are opened: missing credentials, a wrong endpoint or a
missing bucket fail that listing at once, with their cause (:mod:`pipeline.store.storage`).

The SQL of :func:`query` reads these views and nothing else: its connection is locked down
(:data:`LOCKDOWN_SETTINGS`) before the SQL runs, so it cannot read or write files, reach URLs,
load extensions or change settings. Its errors are :class:`QueryError`, one sentence each.

The tables are Delta Lake tables read through their logs (:mod:`pipeline.store.committed`), so
partial or retried shards never show; they reach DuckDB as Arrow datasets (DuckDB's own Delta
and S3 extensions would need downloading), and a filter on ``run_id`` reads only that run's
partition.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow as pa

from pipeline.store.committed import open_tables, register_tables
from pipeline.store.layout import OutputLayout
from pipeline.store.ledger import Ledger
from pipeline.store.s3 import S3Options
from pipeline.store.storage import storage_for
from pipeline.store.tables import ResultTables
from pipeline.store.uris import normalize
from yolov4.errors import YoloError

logger = logging.getLogger(__name__)

RECORD_READ_THREADS = 16
RUNS_COLUMNS = (
    "run_id", "status", "source", "output", "model", "weights_sha256", "created_at",
    "started_at", "finished_at", "resumed", "num_shards", "num_images", "shards_committed",
    "shards_failed", "images_ok", "images_error", "detections", "images_per_second", "message",
    "config", "incremental", "objects_listed", "objects_new", "objects_changed",
    "objects_retried", "objects_unchanged", "objects_deleted", "duplicates",
)  # fmt: skip
#: The views a query reads, as its errors name them.
VIEW_NAMES = ("detections", "images", "all_detections", "all_images", "tombstones", "runs")
#: DuckDB settings of a query's connection, set once its views are registered, then locked
#: (``lock_configuration``): no file system or network access of DuckDB's own (``COPY ... TO``,
#: ``read_csv``, ``ATTACH``, URLs; the views are Arrow scans, read outside DuckDB's file system),
#: no extension installed or loaded, no Python variable read as a table.
LOCKDOWN_SETTINGS = (
    ("enable_external_access", False),
    ("autoinstall_known_extensions", False),
    ("autoload_known_extensions", False),
    ("allow_community_extensions", False),
    ("python_enable_replacements", False),
)
#: The DuckDB error text that marks a refused setting change of a locked connection.
_LOCKED = "the configuration has been locked"
#: Run-record counts of incremental runs (``NULL`` for full runs).
_DELTA_COLUMNS = (
    "objects_listed", "objects_new", "objects_changed", "objects_retried", "objects_unchanged",
    "objects_deleted",
)  # fmt: skip


class QueryError(ValueError):
    """The SQL of a query failed or reached beyond the views; the message is DuckDB's in one
    line, with what to do."""


def no_runs_error(output: str) -> YoloError:
    """The error for an output without runs (as ``status`` says it): the path is mistyped, or
    nothing ran there yet."""
    return YoloError(
        f"no runs under {output}; check the path, or start a run there with yolo-batch run"
    )


def connect(
    output: str,
    s3_options: S3Options | None = None,
    *,
    local_dir: str | None = None,
    tables: ResultTables | None = None,
    run_ids: list[str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the result views of ``output`` registered.

    ``local_dir``: DuckDB reads the tables' files itself (bounded by its memory limit), copying
    files on S3 into this folder first; for scans of the whole output (export). Without it the
    tables are Arrow datasets (:func:`pipeline.store.committed.register_tables`).
    ``tables``: ``output``'s tables (:func:`~pipeline.store.committed.open_tables`) when the
    caller reads them too: opening them again would read their logs again. ``run_ids``: the
    output's runs (:meth:`~pipeline.store.ledger.Ledger.run_ids`) when the caller listed them.
    Raises :class:`~yolov4.errors.YoloError` (:func:`no_runs_error`) when ``output`` holds
    neither runs nor results tables."""
    output = normalize(output)
    storage = storage_for(output, s3_options)
    ledger = Ledger(storage, OutputLayout(output))
    if run_ids is None:  # before the tables: a store that fails, fails here at once
        run_ids = ledger.run_ids()
    if tables is None:
        tables = open_tables(output, s3_options)
    if not run_ids and not tables.exists():
        raise no_runs_error(output)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # it would print to stdout
    register_tables(con, tables, local_dir=local_dir, storage=storage)
    con.execute(
        """
        CREATE VIEW images AS
        SELECT * EXCLUDE (_rank) FROM (
            SELECT *, row_number() OVER (PARTITION BY image_uri ORDER BY run_id DESC) AS _rank
            FROM all_images
        ) i WHERE _rank = 1 AND NOT EXISTS (
            SELECT 1 FROM tombstones t WHERE t.image_uri = i.image_uri AND t.run_id > i.run_id
        )
        """
    )
    con.execute(
        """
        CREATE VIEW detections AS
        SELECT d.* FROM all_detections d
        JOIN (SELECT image_uri, run_id FROM images) latest USING (image_uri, run_id)
        """
    )
    con.register("runs_arrow", _runs_table(ledger, run_ids))
    con.execute("CREATE VIEW runs AS SELECT * FROM runs_arrow")
    return con


def query(output: str, sql: str, s3_options: S3Options | None = None) -> pa.Table:
    """Run ``sql`` against the views of ``output`` on a locked-down connection (see the module
    docstring); returns an Arrow table. Raises :class:`QueryError` when the SQL fails."""
    con = connect(output, s3_options)
    spill_dir = tempfile.mkdtemp(prefix="yolo-batch-query-")
    try:
        lock_down(con, spill_dir)
        try:
            relation = con.sql(sql)
            if relation is None:  # a statement without a result set
                return pa.table({})
            # DuckDB 2 renamed Relation.arrow() to to_arrow_table().
            fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
            return fetch()
        except duckdb.Error as exc:
            raise QueryError(_error_sentence(exc)) from None
    finally:
        con.close()
        shutil.rmtree(spill_dir, ignore_errors=True)


def lock_down(con: duckdb.DuckDBPyConnection, spill_dir: str) -> None:
    """Apply :data:`LOCKDOWN_SETTINGS` to ``con`` and lock its configuration; sorts and joins
    larger than memory spill to ``spill_dir`` (instead of ``.tmp`` in the working folder)."""
    con.execute("SET temp_directory = ?", [spill_dir])
    for name, value in LOCKDOWN_SETTINGS:
        con.execute(f"SET {name} = {str(value).lower()}")
    con.execute("SET lock_configuration = true")


def _error_sentence(exc: duckdb.Error) -> str:
    """DuckDB's message in one line (its ``LINE n:`` excerpt and caret left out), with what to
    do about it."""
    lines = []
    for line in str(exc).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    message = " ".join(lines)
    views = ", ".join(VIEW_NAMES)
    if isinstance(exc, duckdb.PermissionException) or _LOCKED in message:
        return (
            f"the query was refused: {message}; queries read only the views ({views}) and "
            "cannot read or write files, reach URLs, load extensions or change settings"
        )
    if isinstance(exc, duckdb.ProgrammingError | duckdb.DataError | duckdb.NotSupportedError):
        return f"the SQL failed: {message}; fix the SQL (the views: {views})"
    return f"the query failed: {message}"


def _runs_table(ledger: Ledger, ids: list[str]) -> pa.Table:
    with ThreadPoolExecutor(RECORD_READ_THREADS) as pool:
        records = list(pool.map(ledger.read_run, ids))
    rows = {name: [] for name in RUNS_COLUMNS}
    for record in records:
        raw = json.loads(record.to_json())
        for name in RUNS_COLUMNS:
            if name == "model":
                rows[name].append(raw["model"].get("model"))
            elif name == "weights_sha256":
                rows[name].append(raw["model"].get("weights_sha256"))
            elif name == "config":
                rows[name].append(json.dumps(raw["config"], sort_keys=True))
            else:
                rows[name].append(raw.get(name))
    types = {
        "created_at": pa.timestamp("s", tz="UTC"),
        "started_at": pa.timestamp("s", tz="UTC"),
        "finished_at": pa.timestamp("s", tz="UTC"),
        "resumed": pa.int32(),
        "num_shards": pa.int64(),
        "num_images": pa.int64(),
        "shards_committed": pa.int64(),
        "shards_failed": pa.int64(),
        "images_ok": pa.int64(),
        "images_error": pa.int64(),
        "detections": pa.int64(),
        "images_per_second": pa.float64(),
        "incremental": pa.bool_(),
        "duplicates": pa.int64(),
        **{name: pa.int64() for name in _DELTA_COLUMNS},
    }
    columns = {}
    for name in RUNS_COLUMNS:
        values = rows[name]
        kind = types.get(name, pa.string())
        if pa.types.is_timestamp(kind):
            values = [None if v is None else int(v) for v in values]
        columns[name] = pa.array(values, type=kind)
    return pa.table(columns)
