"""A shard's output: its rows and detections as they become known, and its Parquet files.

:class:`ShardState` gathers one shard attempt's per-image outcomes, detections, counts and
timings; :class:`ShardWriter` writes them as the shard's ``images`` and ``detections`` tables,
one Parquet file each, named by the attempt token, straight to the output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout
from pipeline.store.schema import STATUS_ERROR, STATUS_OK
from pipeline.store.tables import DataFile
from pipeline.worker.sink import DetectionsBuffer, images_table, write_parquet
from pipeline.worker.tasks import ShardTask

if TYPE_CHECKING:
    from pipeline.worker.loaded_image import LoadedImage
    from pipeline.worker.storages import ActorStorages

logger = logging.getLogger(__name__)


@dataclass
class ShardState:
    """Per-shard accumulators. The per-image columns are indexed by row (plan order) and filled
    as each image's outcome is known: by the shard's own thread, and by the stage thread for
    the JPEGs it decodes on the GPU (rows no other thread touches). Timings in seconds."""

    num_images: int
    detections: DetectionsBuffer = field(default_factory=DetectionsBuffer)
    status: list[str | None] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)
    width: list[int | None] = field(default_factory=list)
    height: list[int | None] = field(default_factory=list)
    etag: list[str | None] = field(default_factory=list)
    size: list[int | None] = field(default_factory=list)
    bytes_read: int = 0
    fetch_s: float = 0.0
    decode_s: float = 0.0
    wait_s: float = 0.0
    queued_s: float = 0.0
    detect_s: float = 0.0
    num_batches: int = 0

    def __post_init__(self) -> None:
        for column in (self.status, self.error, self.width, self.height, self.etag, self.size):
            column.extend([None] * self.num_images)

    def set_ok(self, row: int, width: int, height: int) -> None:
        self.status[row], self.error[row] = STATUS_OK, None
        self.width[row], self.height[row] = int(width), int(height)

    def set_error(self, row: int, error: str) -> None:
        self.status[row], self.error[row] = STATUS_ERROR, error
        self.width[row] = self.height[row] = None

    def record(self, loaded: LoadedImage, uri: str) -> None:
        """Take in a loaded image's fetch and decode: its timings, bytes, etag and size, and
        its outcome, unless it is a JPEG left for the GPU (recorded once decoded)."""
        row = loaded.row
        self.fetch_s += loaded.fetch_s
        self.decode_s += loaded.decode_s
        self.bytes_read += loaded.nbytes
        self.etag[row] = loaded.etag
        self.size[row] = loaded.size
        if loaded.image is not None:
            self.set_ok(row, *loaded.image_size)
        elif loaded.jpeg is None:
            self.set_error(row, loaded.error or "fetch: unknown failure")
            if loaded.error:
                logger.debug("%s: %s", uri, loaded.error)


class ShardWriter:
    """Writes a shard's two tables to its output.

    Args:
        storages: where output roots live.
        class_names: the model's class names as :func:`~pipeline.worker.sink.class_name_array`.
    """

    def __init__(self, storages: ActorStorages, class_names: pa.Array) -> None:
        self.storages = storages
        self.class_names = class_names

    def write(self, task: ShardTask, state: ShardState) -> tuple[dict[str, DataFile], int, float]:
        """Write ``state`` as ``task``'s files: ``(file by table name, bytes written, seconds)``;
        each :class:`~pipeline.store.tables.DataFile` carries the statistics the driver commits
        to the table's log with it."""
        started = time.perf_counter()
        objects = task.objects
        uris = pa.array([obj.uri for obj in objects], type=pa.string())
        tables = {
            DETECTIONS_TABLE: state.detections.table(uris, self.class_names, task.run_id),
            IMAGES_TABLE: images_table(
                image_uris=uris,
                status=state.status,
                error=state.error,
                width=state.width,
                height=state.height,
                num_detections=state.detections.counts(len(objects)),
                etag=state.etag,
                size_bytes=state.size,
                run_id=task.run_id,
                shard_id=task.shard_id,
            ),
        }
        layout = OutputLayout(task.output_root)
        storage = self.storages.for_uri(task.output_root)
        files: dict[str, DataFile] = {}
        written = 0
        for name, table in tables.items():
            uri = layout.data_file(name, task.run_id, task.shard_id, task.attempt_token)
            size = write_parquet(storage, uri, table)
            files[name] = DataFile.of_table(uri, table, size)
            written += size
        return files, written, time.perf_counter() - started
