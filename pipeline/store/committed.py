"""What a run output holds that readers may see: the results tables' current files, through
their Delta logs (:mod:`pipeline.store.tables`).

Only files in a log are read, so partial, failed or retried shard attempts never show. The
tables are handed to DuckDB as Arrow datasets: a query that filters on ``run_id`` reads only
that run's partition, and file statistics prune the rest.
"""

from __future__ import annotations

import duckdb

from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE, OutputLayout
from pipeline.store.ledger import Ledger
from pipeline.store.legacy import refuse_legacy
from pipeline.store.s3 import S3Options
from pipeline.store.storage import storage_for
from pipeline.store.tables import ResultTables
from pipeline.store.uris import normalize


def open_tables(output: str, s3_options: S3Options | None = None) -> ResultTables:
    """The results tables of ``output`` for reading. Raises
    :class:`~pipeline.errors.OutputError` for an output of an earlier version, or one whose
    conversion has not finished (it names the ``migrate`` command)."""
    output = normalize(output)
    tables = ResultTables(output, s3_options)
    ledger = Ledger(storage_for(output, s3_options), OutputLayout(output))
    refuse_legacy(ledger, images_table_exists=tables.table(IMAGES_TABLE) is not None)
    return tables


def register_tables(con: duckdb.DuckDBPyConnection, tables: ResultTables) -> None:
    """Register the views ``all_detections``, ``all_images`` (every committed row of every
    run) and ``tombstones`` (``image_uri``, ``run_id``) of ``tables`` on ``con``."""
    for name, view in (
        (DETECTIONS_TABLE, "all_detections"),
        (IMAGES_TABLE, "all_images"),
        (TOMBSTONES_TABLE, "tombstones"),
    ):
        con.register(f"{view}_arrow", tables.dataset(name))
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM {view}_arrow")
