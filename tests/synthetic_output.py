"""Shard files written straight to an output, without Ray or a model: what an actor writes
(the ``images`` and ``detections`` Parquet files of one attempt), for the tests of the
commit protocol and the readers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout
from pipeline.store.ledger import ShardCounts, new_attempt_token
from pipeline.store.storage import Storage
from pipeline.store.tables import DataFile, ShardFiles
from pipeline.worker.sink import DetectionsBuffer, class_name_array, images_table, write_parquet

CLASS_NAMES = ("person", "bicycle", "car")


def shard_uris(shard_id: int, images: int) -> list[str]:
    return [f"s3://photos/shard{shard_id}/img{k:03d}.jpg" for k in range(images)]


def write_shard(
    storage: Storage,
    output: str,
    run_id: str,
    shard_id: int,
    *,
    images: int = 4,
    errors: int = 1,
    detections_per_image: int = 2,
    attempt: int = 1,
    uris: list[str] | None = None,
) -> tuple[ShardFiles, ShardCounts]:
    """Write one attempt's two files: ``images`` rows (the last ``errors`` are errors) and
    ``detections_per_image`` detections per ok image. Returns its files and counts."""
    uris = uris or shard_uris(shard_id, images)
    n = len(uris)
    ok = n - errors
    buffer = DetectionsBuffer()
    rows = np.repeat(np.arange(ok), detections_per_image)
    boxes = np.tile(np.array([[1.0, 2.0, 30.0, 40.0]], np.float32), (len(rows), 1))
    buffer.add(rows, boxes, np.full(len(rows), 0.75, np.float32), rows % len(CLASS_NAMES))
    uri_array = pa.array(uris, pa.string())
    tables = {
        DETECTIONS_TABLE: buffer.table(uri_array, class_name_array(CLASS_NAMES), run_id),
        IMAGES_TABLE: images_table(
            image_uris=uri_array,
            status=["ok"] * ok + ["error"] * errors,
            error=[None] * ok + ["decode: not an image"] * errors,
            width=[640] * ok + [None] * errors,
            height=[480] * ok + [None] * errors,
            num_detections=buffer.counts(n),
            etag=[f"etag-{k}" for k in range(n)],
            size_bytes=[1000] * n,
            run_id=run_id,
            shard_id=shard_id,
        ),
    }
    layout = OutputLayout(output)
    token = new_attempt_token(attempt)
    files = {}
    for name, table in tables.items():
        uri = layout.data_file(name, run_id, shard_id, token)
        files[name] = DataFile.of_table(uri, table, write_parquet(storage, uri, table))
    counts = ShardCounts(images=n, ok=ok, errors=errors, detections=len(rows))
    return ShardFiles(shard_id, files), counts
