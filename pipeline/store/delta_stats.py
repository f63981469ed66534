"""Delta Lake file statistics of a data file, computed from its Arrow table.

Every engine that reads the results tables (delta-rs, Spark, Trino, DuckDB, Polars) skips files
by these statistics: ``numRecords``, and per column ``nullCount``, ``minValues`` and
``maxValues`` (Delta protocol, "Per-file Statistics"). yolo-batch commits files that an actor
wrote itself, so the actor computes their statistics the same way ``deltalake`` would for a file
it wrote: hand-written here because ``deltalake`` only computes them inside its own writer.

Every non-empty column gets its minimum and maximum: delta-rs reads a missing statistic as
``NULL`` and then skips the file for any filter on that column. Dictionary columns are
compared by their values; strings longer than :data:`MAX_STRING_STAT_CHARS` keep a prefix as
their minimum and, as their maximum, the prefix with its last character incremented (a bound
every string with that prefix stays below, as Delta writers do). Partition columns are left
out (their value is in the log).
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.compute as pc

#: Longest string kept as a min/max statistic.
MAX_STRING_STAT_CHARS = 256
_MAX_CODE_POINT = 0x10FFFF


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
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if table.num_rows == column.null_count or not _has_order_stats(column.type):
            continue
        low, high = (value.as_py() for value in pc.min_max(column).values())
        if isinstance(low, float) and (math.isnan(low) or math.isnan(high)):
            continue  # not in the results schemas: boxes and scores are finite
        if isinstance(low, str):
            low, high = low[:MAX_STRING_STAT_CHARS], _upper_bound(high)
            if high is None:
                continue
        mins[name], maxs[name] = low, high
    return json.dumps(
        {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        separators=(",", ":"),
    )


def _upper_bound(text: str) -> str | None:
    """``text``, or when longer than :data:`MAX_STRING_STAT_CHARS` a shorter string above
    every string that starts with its prefix (``None`` when there is none)."""
    if len(text) <= MAX_STRING_STAT_CHARS:
        return text
    prefix = text[:MAX_STRING_STAT_CHARS]
    while prefix:
        last = ord(prefix[-1])
        if last < _MAX_CODE_POINT and not 0xD800 <= last + 1 <= 0xDFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def _has_order_stats(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind)
