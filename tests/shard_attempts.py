"""A shard attempt's two Parquet files written straight to an output, as an actor writes them
(no Ray, no model), for the tests of the commit protocol, ``yolo-batch migrate`` and
``yolo-batch compact``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout
from pipeline.store.ledger import RunRecord, ShardCounts, new_attempt_token
from pipeline.store.storage import Storage
from pipeline.store.tables import DataFile, ShardFiles
from pipeline.worker.sink import DetectionsBuffer, class_name_array, images_table, write_parquet

CLASS_NAMES = ("person", "bicycle", "car")
#: Detections of every ok image.
DETECTIONS_PER_IMAGE = 2


def image_uris(run_id: str, shard_id: int, images: int, tag: str = "") -> list[str]:
    return [f"s3://photos/{run_id[-6:]}{tag}/s{shard_id}/img{k}.jpg" for k in range(images)]


def shard_tables(
    run_id: str, shard_id: int, uris: list[str], *, errors: int = 0, width: int = 640
) -> dict[str, pa.Table]:
    """The ``detections`` and ``images`` tables of one shard: the last ``errors`` images are
    errors, every other has :data:`DETECTIONS_PER_IMAGE` detections; ``width`` tells attempts
    apart."""
    n, ok = len(uris), len(uris) - errors
    buffer = DetectionsBuffer()
    rows = np.repeat(np.arange(ok), DETECTIONS_PER_IMAGE)
    boxes = np.tile(np.array([[1.0, 2.0, 30.0, 40.0]], np.float32), (len(rows), 1))
    scores = np.linspace(0.3, 0.9, len(rows), dtype=np.float32)
    buffer.add(rows, boxes, scores, rows % len(CLASS_NAMES))
    uri_array = pa.array(uris, pa.string())
    return {
        DETECTIONS_TABLE: buffer.table(uri_array, class_name_array(CLASS_NAMES), run_id),
        IMAGES_TABLE: images_table(
            image_uris=uri_array,
            status=["ok"] * ok + ["error"] * errors,
            error=[None] * ok + ["decode: not an image"] * errors,
            width=[width] * ok + [None] * errors,
            height=[480] * ok + [None] * errors,
            num_detections=buffer.counts(n),
            etag=[f"etag-{k}" for k in range(n)],
            size_bytes=[1000] * n,
            run_id=run_id,
            shard_id=shard_id,
        ),
    }


def write_attempt(
    storage: Storage,
    output: str,
    run_id: str,
    shard_id: int,
    token: str,
    tables: dict[str, pa.Table],
) -> ShardFiles:
    """Write one attempt's files under its token; returns them as the log records them."""
    layout = OutputLayout(output)
    files = {}
    for name, table in tables.items():
        uri = layout.data_file(name, run_id, shard_id, token)
        files[name] = DataFile.of_table(uri, table, write_parquet(storage, uri, table))
    return ShardFiles(shard_id, files)


def run_record(run_id: str, output: str) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        source="s3://photos/",
        output=output,
        model={"model": "yolov4-tiny", "weights_sha256": "0" * 64},
        config={},
        status="succeeded",
    )


def write_shard(
    storage: Storage,
    output: str,
    run_id: str,
    shard_id: int,
    *,
    images: int = 4,
    errors: int = 1,
    attempt: int = 1,
) -> tuple[ShardFiles, ShardCounts]:
    """Write a fresh attempt at shard ``shard_id`` (``images`` images, the last ``errors`` of
    them errors); returns its files and the counts the log should report for it."""
    uris = [f"s3://photos/shard{shard_id}/img{k:03d}.jpg" for k in range(images)]
    tables = shard_tables(run_id, shard_id, uris, errors=errors)
    files = write_attempt(storage, output, run_id, shard_id, new_attempt_token(attempt), tables)
    ok = images - errors
    counts = ShardCounts(images=images, ok=ok, errors=errors, detections=ok * DETECTIONS_PER_IMAGE)
    return files, counts
