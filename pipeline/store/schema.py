"""Arrow schemas of the results tables (the contract in DESIGN.md).

``detections``: one row per detection; ``images``: one row per input image, failures included;
``runs``: one row per run (built from the run records). Column names and meanings are fixed;
extra columns may be added.
"""

from __future__ import annotations

import pyarrow as pa

#: Objects an incremental run found deleted from the source (the ``tombstones`` table).
TOMBSTONE_SCHEMA = pa.schema([("image_uri", pa.string()), ("run_id", pa.string())])

STATUS_OK = "ok"
STATUS_ERROR = "error"

DETECTIONS_SCHEMA = pa.schema(
    [
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("class_name", pa.dictionary(pa.int16(), pa.string()), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("x_min", pa.float32(), nullable=False),
        pa.field("y_min", pa.float32(), nullable=False),
        pa.field("x_max", pa.float32(), nullable=False),
        pa.field("y_max", pa.float32(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("num_detections", pa.int32(), nullable=False),
        pa.field("etag", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("shard_id", pa.int32(), nullable=False),
        pa.field("size_bytes", pa.int64()),
    ]
)

#: A shard's plan: the objects it covers, in order.
PLAN_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("etag", pa.string()),
    ]
)

#: Parquet writer settings for every table the pipeline writes.
PARQUET_COMPRESSION = "zstd"
