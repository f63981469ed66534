"""Delta Lake file statistics of a data file, computed from its Arrow table.

Every engine that reads the results tables (delta-rs, Spark, Trino, DuckDB, Polars) skips files
by these statistics: ``numRecords``, and per column ``nullCount``, ``minValues`` and
``maxValues`` (Delta protocol, "Per-file Statistics"). yolo-batch commits files that an actor
wrote itself, so the actor computes their statistics the same way ``deltalake`` would for a file
it wrote: hand-written here because ``deltalake`` only computes them inside its own writer.

Kept out of the statistics: partition columns (their value is in the log), dictionary columns
and strings longer than :data:`MAX_STRING_STAT_CHARS` (a truncated maximum would be wrong, and
a statistic may be left out).
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.compute as pc

#: Longest string kept as a min/max statistic.
MAX_STRING_STAT_CHARS = 256


def file_stats(table: pa.Table, partition_columns: tuple[str, ...] = ()) -> str:
    """The Delta ``stats`` JSON of ``table`` as one data file, leaving out ``partition_columns``."""
    mins: dict[str, object] = {}
    maxs: dict[str, object] = {}
    nulls: dict[str, int] = {}
    for name in table.column_names:
        if name in partition_columns:
            continue
        column = table.column(name)
        nulls[name] = column.null_count
        if table.num_rows == column.null_count or not _has_order_stats(column.type):
            continue
        low, high = (value.as_py() for value in pc.min_max(column).values())
        if isinstance(low, float) and (math.isnan(low) or math.isnan(high)):
            continue
        if isinstance(low, str) and max(len(low), len(high)) > MAX_STRING_STAT_CHARS:
            continue
        mins[name], maxs[name] = low, high
    return json.dumps(
        {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        separators=(",", ":"),
    )


def _has_order_stats(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind)
