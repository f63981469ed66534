"""SQL over a run output's committed results, with DuckDB.

Views:

- ``images``, ``detections``: the latest committed result per image (the newest run that
  processed it), leaving out images whose latest event is a deletion recorded by an incremental
  run (:mod:`pipeline.run.incremental`); ``all_images``, ``all_detections``: every committed row of
  every run.
- ``tombstones``: ``image_uri``, ``run_id`` of the objects incremental runs found deleted.
- ``runs``: one row per run record.

The tables are Delta Lake tables read through their logs (:mod:`pipeline.store.committed`), so
partial or retried shards never show; they reach DuckDB as Arrow datasets (DuckDB's own Delta
and S3 extensions would need downloading), and a filter on ``run_id`` reads only that run's
partition.
"""

from __future__ import annotations

import json
import logging
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

logger = logging.getLogger(__name__)

RECORD_READ_THREADS = 16
RUNS_COLUMNS = (
    "run_id", "status", "source", "output", "model", "weights_sha256", "created_at",
    "started_at", "finished_at", "resumed", "num_shards", "num_images", "shards_committed",
    "shards_failed", "images_ok", "images_error", "detections", "images_per_second", "message",
    "config", "incremental", "objects_listed", "objects_new", "objects_changed",
    "objects_retried", "objects_unchanged", "objects_deleted", "duplicates",
)  # fmt: skip
#: Run-record counts of incremental runs (``NULL`` for full runs).
_DELTA_COLUMNS = (
    "objects_listed", "objects_new", "objects_changed", "objects_retried", "objects_unchanged",
    "objects_deleted",
)  # fmt: skip


def connect(
    output: str,
    s3_options: S3Options | None = None,
    *,
    local_dir: str | None = None,
    tables: ResultTables | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the result views of ``output`` registered.

    ``local_dir``: DuckDB reads the tables' files itself (bounded by its memory limit), copying
    files on S3 into this folder first; for scans of the whole output (export). Without it the
    tables are Arrow datasets (:func:`pipeline.store.committed.register_tables`).
    ``tables``: ``output``'s tables (:func:`~pipeline.store.committed.open_tables`) when the
    caller reads them too: opening them again would read their logs again."""
    output = normalize(output)
    storage = storage_for(output, s3_options)
    ledger = Ledger(storage, OutputLayout(output))
    if tables is None:
        tables = open_tables(output, s3_options)
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
    con.register("runs_arrow", _runs_table(ledger))
    con.execute("CREATE VIEW runs AS SELECT * FROM runs_arrow")
    return con


def query(output: str, sql: str, s3_options: S3Options | None = None) -> pa.Table:
    """Run ``sql`` against the views of ``output``; returns an Arrow table."""
    con = connect(output, s3_options)
    try:
        relation = con.sql(sql)
        if relation is None:  # a statement without a result set
            return pa.table({})
        # DuckDB 2 renamed Relation.arrow() to to_arrow_table().
        fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
        return fetch()
    finally:
        con.close()


def _runs_table(ledger: Ledger) -> pa.Table:
    ids = ledger.run_ids()
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
