"""SQL over a run output's committed results, with DuckDB.

Views:

- ``images``, ``detections``: the latest committed result per image (the newest run that
  processed it), leaving out images whose latest event is a deletion recorded by an incremental
  run (:mod:`pipeline.incremental`); ``all_images``, ``all_detections``: every committed row of
  every run.
- ``tombstones``: ``image_uri``, ``run_id`` of the objects incremental runs found deleted.
- ``runs``: one row per run record.

Only files named by commit markers are read, so partial or retried shards never show. Parquet
is handed to DuckDB as Arrow datasets (local files directly; S3 through ``pyarrow.fs`` with the
process's AWS credentials), because DuckDB's own S3 extension would need downloading.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import boto3
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from pipeline.incremental import TOMBSTONE_SCHEMA, deleted_dir
from pipeline.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout
from pipeline.ledger import Ledger
from pipeline.s3 import DEFAULT_REGION, S3Options
from pipeline.schema import DETECTIONS_SCHEMA, IMAGES_SCHEMA
from pipeline.storage import storage_for
from pipeline.uris import is_s3, normalize

logger = logging.getLogger(__name__)

RECORD_READ_THREADS = 16
RUNS_COLUMNS = (
    "run_id", "status", "source", "output", "model", "weights_sha256", "created_at",
    "started_at", "finished_at", "resumed", "num_shards", "num_images", "shards_committed",
    "shards_failed", "images_ok", "images_error", "detections", "images_per_second", "message",
    "config", "incremental", "objects_listed", "objects_new", "objects_changed",
    "objects_retried", "objects_unchanged", "objects_deleted",
)  # fmt: skip
#: Run-record counts of incremental runs (``NULL`` for full runs).
_DELTA_COLUMNS = (
    "objects_listed", "objects_new", "objects_changed", "objects_retried", "objects_unchanged",
    "objects_deleted",
)  # fmt: skip


def committed_files(output: str, s3_options: S3Options | None = None) -> dict[str, list[str]]:
    """URIs of every committed data file under ``output``, by table."""
    output = normalize(output)
    ledger = Ledger(storage_for(output, s3_options), OutputLayout(output))
    files: dict[str, list[str]] = {DETECTIONS_TABLE: [], IMAGES_TABLE: []}
    for run_id in ledger.run_ids():
        for marker in sorted(ledger.commits(run_id).values(), key=lambda m: m.shard_id):
            for table, uri in ledger.data_files(run_id, marker).items():
                files[table].append(uri)
    return files


def tombstone_files(output: str, s3_options: S3Options | None = None) -> list[str]:
    """URIs of every tombstone file under ``output`` (one listing of ``_deleted/``)."""
    output = normalize(output)
    storage = storage_for(output, s3_options)
    return [
        info.uri
        for info in storage.list(deleted_dir(output) + "/")
        if info.uri.endswith(".parquet") and "/." not in info.uri
    ]


def connect(output: str, s3_options: S3Options | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the result views of ``output`` registered."""
    output = normalize(output)
    storage = storage_for(output, s3_options)
    ledger = Ledger(storage, OutputLayout(output))
    files = committed_files(output, s3_options)
    filesystem = _arrow_filesystem(output, s3_options)
    con = duckdb.connect()
    for table, schema in ((DETECTIONS_TABLE, DETECTIONS_SCHEMA), (IMAGES_TABLE, IMAGES_SCHEMA)):
        paths = [_fs_path(uri) for uri in files[table]]
        dataset = (
            ds.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
            if paths
            else schema.empty_table()
        )
        con.register(f"all_{table}_arrow", dataset)
        con.execute(f"CREATE VIEW all_{table} AS SELECT * FROM all_{table}_arrow")
    register_tombstones(con, output, s3_options, filesystem=filesystem)
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


def register_tombstones(
    con: duckdb.DuckDBPyConnection,
    output: str,
    s3_options: S3Options | None = None,
    *,
    filesystem: pafs.FileSystem | None = None,
) -> None:
    """Register the view ``tombstones`` (``image_uri``, ``run_id``) of ``output`` on ``con``.

    On its own it costs one listing of ``_deleted/``, not the look at every committed file
    that :func:`connect` makes: the incremental delta needs nothing more.
    """
    output = normalize(output)
    paths = [_fs_path(uri) for uri in tombstone_files(output, s3_options)]
    if paths and filesystem is None:
        filesystem = _arrow_filesystem(output, s3_options)
    tombstones = (
        ds.dataset(paths, schema=TOMBSTONE_SCHEMA, format="parquet", filesystem=filesystem)
        if paths
        else TOMBSTONE_SCHEMA.empty_table()
    )
    con.register("tombstones_arrow", tombstones)
    con.execute("CREATE VIEW tombstones AS SELECT * FROM tombstones_arrow")


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


def _arrow_filesystem(output: str, s3_options: S3Options | None) -> pafs.FileSystem:
    if not is_s3(output):
        return pafs.LocalFileSystem()
    options = s3_options or S3Options()
    session = boto3.session.Session()
    credentials = session.get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials else None
    kwargs = {"region": options.region or session.region_name or DEFAULT_REGION}
    if frozen:
        kwargs.update(
            access_key=frozen.access_key,
            secret_key=frozen.secret_key,
            session_token=frozen.token,
        )
    endpoint = options.resolved_endpoint()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    return pafs.S3FileSystem(**kwargs)


def _fs_path(uri: str) -> str:
    return uri[len("s3://") :] if is_s3(uri) else uri
