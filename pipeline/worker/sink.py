"""Arrow tables of a shard's results, and their Parquet files.

Columns are built from numpy arrays in bulk: no Python object per detection. A detection's
``image_uri`` is a ``take`` of the shard's URI array by the detection's image row, and its
``class_name`` a dictionary array whose int16 indices are the class ids into the model's
class-name list.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.schema import DETECTIONS_SCHEMA, IMAGES_SCHEMA, PARQUET_COMPRESSION

_INT16_MAX = np.iinfo(np.int16).max


class DetectionsBuffer:
    """Detections of a shard, gathered batch by batch as numpy chunks.

    Each chunk gives, per detection, its image's row in the shard (the position of the image
    in the shard's plan), its box ``[n, 4]`` (``x_min, y_min, x_max, y_max``), score and
    class id.
    """

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._boxes: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._class_ids: list[np.ndarray] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(
        self,
        image_rows: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        class_ids: np.ndarray,
    ) -> None:
        n = len(image_rows)
        if not (boxes.shape == (n, 4) and len(scores) == n and len(class_ids) == n):
            raise ValueError(
                f"detection chunk shapes disagree: rows {n}, boxes {boxes.shape}, "
                f"scores {len(scores)}, class ids {len(class_ids)}"
            )
        if n == 0:
            return
        self._rows.append(np.asarray(image_rows, dtype=np.int64))
        self._boxes.append(np.asarray(boxes, dtype=np.float32))
        self._scores.append(np.asarray(scores, dtype=np.float32))
        self._class_ids.append(np.asarray(class_ids))
        self._count += n

    def image_rows(self) -> np.ndarray:
        return _concat(self._rows, np.int64)

    def counts(self, num_images: int) -> np.ndarray:
        """``[num_images]`` int32: detections per image row."""
        return np.bincount(self.image_rows(), minlength=num_images).astype(np.int32)

    def table(self, image_uris: pa.Array, class_names: pa.Array, run_id: str) -> pa.Table:
        """The ``detections`` table (:data:`~pipeline.store.schema.DETECTIONS_SCHEMA`)."""
        rows = self.image_rows()
        boxes = np.concatenate(self._boxes) if self._boxes else np.zeros((0, 4), dtype=np.float32)
        scores = _concat(self._scores, np.float32)
        class_ids = _concat(self._class_ids, np.int64)
        if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= len(class_names)):
            raise ValueError(
                f"class ids span {class_ids.min()}..{class_ids.max()}, outside the model's "
                f"{len(class_names)} class names"
            )
        if len(class_names) > _INT16_MAX + 1:
            raise ValueError(f"{len(class_names)} classes do not fit int16 class ids")
        ids16 = pa.array(class_ids.astype(np.int16), type=pa.int16())
        columns = [
            image_uris.take(pa.array(rows, type=pa.int64())),
            ids16,
            pa.DictionaryArray.from_arrays(ids16, class_names),
            pa.array(scores, type=pa.float32()),
            *(pa.array(np.ascontiguousarray(boxes[:, k]), type=pa.float32()) for k in range(4)),
            pa.repeat(pa.scalar(run_id, pa.string()), len(rows)),
        ]
        return pa.Table.from_arrays(columns, schema=DETECTIONS_SCHEMA)


def class_name_array(class_names: Sequence[str]) -> pa.Array:
    """The dictionary of the ``class_name`` column: the model's class names, by class id."""
    return pa.array(list(class_names), type=pa.string())


def images_table(
    *,
    image_uris: pa.Array,
    status: Sequence[str],
    error: Sequence[str | None],
    width: Sequence[int | None],
    height: Sequence[int | None],
    num_detections: np.ndarray,
    etag: Sequence[str | None],
    size_bytes: Sequence[int | None],
    run_id: str,
    shard_id: int,
) -> pa.Table:
    """The ``images`` table (:data:`~pipeline.store.schema.IMAGES_SCHEMA`): one row per image."""
    n = len(image_uris)
    columns = [
        image_uris,
        pa.array(status, type=pa.string()),
        pa.array(error, type=pa.string()),
        pa.array(width, type=pa.int32()),
        pa.array(height, type=pa.int32()),
        pa.array(np.asarray(num_detections, dtype=np.int32), type=pa.int32()),
        pa.array(etag, type=pa.string()),
        pa.repeat(pa.scalar(run_id, pa.string()), n),
        pa.repeat(pa.scalar(shard_id, pa.int32()), n),
        pa.array(size_bytes, type=pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=IMAGES_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as one Parquet file (zstd), in memory."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=PARQUET_COMPRESSION)
    return buffer.getvalue()


def write_parquet(storage, uri: str, table: pa.Table) -> int:
    """Write ``table`` to ``uri`` through ``storage`` (atomic for readers); returns its bytes.

    Failures raise (``StorageError`` and friends): a shard whose output cannot be written is
    retried as a whole.
    """
    data = parquet_bytes(table)
    storage.write_bytes(uri, data)
    return len(data)


def _concat(chunks: list[np.ndarray], dtype) -> np.ndarray:
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(chunks).astype(dtype, copy=False)
