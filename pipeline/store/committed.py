"""What a run output holds that readers may see: the results tables' current files, through
their Delta logs (:mod:`pipeline.store.tables`).

Only files in a log are read, so partial, failed or retried shard attempts never show. The
tables reach DuckDB in one of two ways (:func:`register_tables`):

- as Arrow datasets (the default): a query that filters on ``run_id`` reads only that run's
  partition, file statistics prune the rest, and nothing is copied. Cheap for queries that read
  a run or aggregate; but DuckDB's memory cap does not hold for an Arrow scan (measured: a sort
  of 10 M ``images`` rows under a 256 MB cap peaked 560 MB above the interpreter), so
- for whole-output scans (export, the incremental delta) DuckDB reads the files itself
  (``read_parquet``, bounded by its memory cap, spilling beyond it): local files where they
  are, ``s3://`` ones first copied to a local folder (:func:`local_files`), each streamed to
  disk, so every file is fetched once however many passes the queries make.

Either way ``run_id`` is the partition value: files that compaction rewrote do not hold the
column (Delta keeps partition values in the log and the path), so a direct read takes it from
the ``run_id=RUN`` folder of the path.
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pyarrow as pa

from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE, OutputLayout
from pipeline.store.ledger import Ledger
from pipeline.store.legacy import refuse_legacy
from pipeline.store.s3 import S3Options
from pipeline.store.storage import Storage, storage_for
from pipeline.store.tables import PARTITION_COLUMN, TABLE_SCHEMAS, ResultTables
from pipeline.store.uris import is_s3, normalize

#: The results views and the tables they show.
VIEWS = (
    (DETECTIONS_TABLE, "all_detections"),
    (IMAGES_TABLE, "all_images"),
    (TOMBSTONES_TABLE, "tombstones"),
)
#: Files copied at once from S3 (each streamed to disk: memory does not grow with a file).
DOWNLOAD_THREADS = 8
#: Characters DuckDB would read as a glob in a local path: such files are copied too.
_GLOB_CHARS = re.compile(r"[*?\[\]{}]")
#: ``TABLE/run_id=RUN/FILE`` at the end of a data file's URI.
_TABLE_PART = re.compile(r"([^/]+/run_id=[^/]+/[^/]+)$")


def open_tables(output: str, s3_options: S3Options | None = None) -> ResultTables:
    """The results tables of ``output`` for reading. Raises
    :class:`~pipeline.errors.OutputError` for an output of an earlier version, or one whose
    conversion has not finished (it names the ``migrate`` command)."""
    output = normalize(output)
    tables = ResultTables(output, s3_options)
    ledger = Ledger(storage_for(output, s3_options), OutputLayout(output))
    refuse_legacy(ledger, images_table_exists=tables.table(IMAGES_TABLE) is not None)
    return tables


def register_tables(
    con: duckdb.DuckDBPyConnection,
    tables: ResultTables,
    *,
    local_dir: str | None = None,
    storage: Storage | None = None,
) -> None:
    """Register the views ``all_detections``, ``all_images`` (every committed row of every
    run) and ``tombstones`` (``image_uri``, ``run_id``) of ``tables`` on ``con``.

    With ``local_dir``, DuckDB reads the current files itself, ``s3://`` ones copied under
    ``local_dir`` first through ``storage`` (see the module docstring); otherwise the views
    scan Arrow datasets."""
    for name, view in VIEWS:
        if local_dir is None:
            con.register(f"{view}_arrow", tables.dataset(name))
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM {view}_arrow")
            continue
        files = local_files(table_files(tables, name), storage, local_dir)
        parquet_view(con, view, files, TABLE_SCHEMAS[name])


def table_files(tables: ResultTables, name: str, run_ids: list[str] | None = None) -> list[str]:
    """URIs of the current files of table ``name`` (of ``run_ids``' partitions only, when
    given), from its log."""
    table = tables.table(name)
    if table is None or (run_ids is not None and not run_ids):
        return []
    if run_ids is None:
        return table.file_uris()
    return table.file_uris(file_pruning_predicate=[(PARTITION_COLUMN, "in", list(run_ids))])


def local_files(files: list[str], storage: Storage | None, folder: str) -> list[str]:
    """``files`` as local paths DuckDB can read: local files as they are; ``s3://`` files (and
    local paths DuckDB would read as globs) copied under ``folder`` as ``TABLE/run_id=RUN/FILE``
    through ``storage``, :data:`DOWNLOAD_THREADS` at a time."""
    copies = {
        uri: os.path.join(folder, _table_part(uri))
        for uri in files
        if is_s3(uri) or _GLOB_CHARS.search(uri)
    }
    if not copies:
        return list(files)
    if storage is None:
        raise ValueError("data files on S3 need the storage to copy them with")
    for path in {os.path.dirname(p) for p in copies.values()}:
        os.makedirs(path, exist_ok=True)

    def copy(item: tuple[str, str]) -> None:
        uri, path = item
        if is_s3(uri):
            storage.download(uri, path)
        else:
            shutil.copyfile(uri, path)

    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        list(pool.map(copy, copies.items()))
    return [copies.get(uri, uri) for uri in files]


def parquet_view(
    con: duckdb.DuckDBPyConnection,
    view: str,
    files: list[str],
    schema: pa.Schema,
    columns: list[str] | None = None,
) -> None:
    """The view ``view`` over the local Parquet data ``files`` of one results table, read by
    DuckDB itself: ``columns`` (default: every column of ``schema``), ``run_id`` from each
    file's ``run_id=RUN`` folder (see the module docstring), files of older schemas padded with
    NULLs. No files: an empty view of ``schema``."""
    columns = list(columns or schema.names)
    if not files:
        con.register(f"{view}_empty", schema.empty_table().select(columns))
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {view}_empty")
        return
    relation = con.sql(
        f"SELECT {', '.join(columns)} FROM read_parquet($files, hive_partitioning = true, "
        f"hive_types = {{'{PARTITION_COLUMN}': VARCHAR}}, union_by_name = true)",
        params={"files": files},
    )
    relation.create_view(view, replace=True)


def _table_part(uri: str) -> str:
    match = _TABLE_PART.search(uri)
    if match is None:
        raise ValueError(f"{uri!r} is not a data file of a results table (TABLE/run_id=RUN/...)")
    return match[1]
