"""Stream a run output's latest results image by image, for the exporters and ``eval``.

Rows come from the ``images`` and ``detections`` views of :mod:`pipeline.results.query` (the
latest result per image, tombstoned images left out), grouped per image and ordered by image
URI inside DuckDB, which spills to a temporary folder beyond :data:`DEFAULT_MEMORY_LIMIT`; they
reach Python in record batches of :data:`BATCH_ROWS` images, so memory is bounded however many
images the output holds. DuckDB reads the tables' Parquet files itself (an output on S3 is
copied to that temporary folder first, each file once), not through Arrow datasets, whose
scans its memory limit does not bound (:mod:`pipeline.store.committed`). Only images with
``status = 'ok'`` are yielded; ``error`` ones are counted.

Boxes are ``x_min, y_min, x_max, y_max`` in pixels of the original image (after EXIF
orientation), exactly as in the ``detections`` table.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.results.coco_categories import coco_name
from pipeline.results.query import connect
from pipeline.store.committed import open_tables
from pipeline.store.layout import DETECTIONS_TABLE, OutputLayout
from pipeline.store.ledger import Ledger
from pipeline.store.s3 import S3Options
from pipeline.store.schema import STATUS_OK
from pipeline.store.storage import storage_for
from pipeline.store.tables import PARTITION_COLUMN
from pipeline.store.uris import normalize

logger = logging.getLogger(__name__)

#: Images per record batch read from DuckDB.
BATCH_ROWS = 2048
#: DuckDB's working-memory cap while exporting; it spills sorts to a temporary folder beyond.
#: 256MB keeps ``yolo-batch export`` of 10 M images at a 746 MiB peak (512MB: 1,004 MiB) in
#: the same time (benchmarks/bench_delta_scale.py).
DEFAULT_MEMORY_LIMIT = "256MB"
#: DuckDB threads while exporting (each thread holds its own sort buffers).
DUCKDB_THREADS = 1
#: Class names listed in an "unknown class" error before it shortens the list.
MAX_NAMES_IN_ERROR = 12


class Detection(NamedTuple):
    """One detection: model class id and name, score, box in original-image pixels."""

    class_id: int
    class_name: str
    score: float
    x_min: float
    y_min: float
    x_max: float
    y_max: float


@dataclass
class ImageResult:
    """One image with ``status = 'ok'`` and its (filtered) detections, best score first."""

    uri: str
    width: int
    height: int
    run_id: str
    model: str | None
    detections: list[Detection] = field(default_factory=list)


@dataclass(frozen=True)
class Filters:
    """``min_score``: keep detections scoring at least this; ``class_ids``: keep only these."""

    min_score: float | None = None
    class_ids: tuple[int, ...] | None = None


class ResultsReader:
    """The committed results of one output, read in image-URI order.

    ``class_names`` is the model's class list (index = ``class_id``), read from the dictionary of
    the ``class_name`` column that every detections file carries, so classes with no detection
    are known too.
    """

    def __init__(
        self,
        output: str,
        s3_options: S3Options | None = None,
        *,
        memory_limit: str = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.output = normalize(output)
        self.s3_options = s3_options
        # The runs first: a store that fails (credentials, endpoint, bucket) fails at once.
        ledger = Ledger(storage_for(self.output, s3_options), OutputLayout(self.output))
        run_ids = ledger.run_ids()
        self._tables = open_tables(self.output, s3_options)
        self._spill_dir = tempfile.mkdtemp(prefix="yolo-batch-duckdb-")
        try:
            self.con = connect(
                self.output,
                s3_options,
                local_dir=os.path.join(self._spill_dir, "data"),
                tables=self._tables,
                run_ids=run_ids,
            )
        except BaseException:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            raise
        self.con.execute(f"SET memory_limit = '{_checked_memory_limit(memory_limit)}'")
        self.con.execute("SET temp_directory = ?", [self._spill_dir])
        self.con.execute("SET enable_progress_bar = false")  # it would print to stdout
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute(f"SET threads = {DUCKDB_THREADS}")
        self.class_names = self._model_class_names()
        self.error_images = 0

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._spill_dir, ignore_errors=True)

    def __enter__(self) -> ResultsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ classes
    def _model_class_names(self) -> tuple[str, ...]:
        """The newest run's class list: the dictionary of a ``class_name`` column chunk of one of
        its files (located from the log's statistics, one footer and one column read); for an
        output whose detections were all compacted, the class ids and names seen in them."""
        table = self._tables.table(DETECTIONS_TABLE)
        if table is None:
            return ()
        files = pa.table(table.get_add_actions(flatten=True))
        if files.num_rows == 0:
            return ()
        dataset = table.to_pyarrow_dataset()
        run_column = files.column(f"partition.{PARTITION_COLUMN}").to_pylist()
        counts = files.column("num_records").to_pylist()
        paths = files.column("path").to_pylist()
        candidates = sorted((run, path) for run, n, path in zip(run_column, counts, paths) if n)
        for _, path in reversed(candidates[-1:]):
            with dataset.filesystem.open_input_file(path) as fh:
                column = pq.ParquetFile(fh).read_row_group(0, columns=["class_name"]).column(0)
            chunk = column.chunk(0)
            if pa.types.is_dictionary(chunk.type):
                return tuple(chunk.dictionary.to_pylist())
        rows = self.con.sql(
            "SELECT DISTINCT class_id, class_name FROM all_detections ORDER BY class_id"
        ).fetchall()
        names = [""] * (max((r[0] for r in rows), default=-1) + 1)
        for class_id, name in rows:
            names[class_id] = name
        return tuple(names)

    def class_ids_for(self, names: Sequence[str]) -> tuple[int, ...]:
        """Class ids of ``names`` (the model's spelling, or COCO 2017's for COCO models)."""
        by_name = {name: i for i, name in enumerate(self.class_names)}
        by_name.update({coco_name(name): i for i, name in enumerate(self.class_names)})
        ids = []
        for name in names:
            if name not in by_name:
                known = ", ".join(self.class_names[:MAX_NAMES_IN_ERROR])
                more = ", ..." if len(self.class_names) > MAX_NAMES_IN_ERROR else ""
                raise ValueError(
                    f"unknown class {name!r}: the model's classes are {known}{more}; fix --classes"
                    if self.class_names
                    else f"unknown class {name!r}: the results hold no detections; drop --classes"
                )
            ids.append(by_name[name])
        return tuple(sorted(set(ids)))

    # ------------------------------------------------------------------ rows
    def images(self, filters: Filters = Filters()) -> Iterator[ImageResult]:
        """Every ``ok`` image of the latest results with its detections (best score first),
        in image-URI order. Counts the skipped ``error`` images in :attr:`error_images`.

        DuckDB sorts the ``ok`` images, and their detections, by URI into two temporary
        Parquet files (an external sort: it spills past the memory limit); the two are then
        read back batch by batch and merged, so no step holds more than a batch."""
        images_view, detections_view = self._latest_views()
        ((self.error_images,),) = self.con.sql(
            f"SELECT count(*) FROM {images_view} WHERE status <> ?", params=[STATUS_OK]
        ).fetchall()
        self._check_classes(detections_view)
        conditions = ["TRUE"]
        if filters.min_score is not None:
            conditions.append(f"score >= {float(filters.min_score)!r}")
        if filters.class_ids is not None:
            ids = ", ".join(str(int(c)) for c in filters.class_ids) or "NULL"
            conditions.append(f"class_id IN ({ids})")
        images_file = os.path.join(self._spill_dir, "images.parquet")
        detections_file = os.path.join(self._spill_dir, "detections.parquet")
        self.con.execute(
            f"""
            COPY (
                SELECT i.image_uri, i.width, i.height, i.run_id, r.model
                FROM {images_view} i LEFT JOIN runs r USING (run_id)
                WHERE i.status = '{STATUS_OK}'
                ORDER BY i.image_uri
            ) TO '{_sql_text(images_file)}' (FORMAT parquet)
            """
        )
        self.con.execute(
            f"""
            COPY (
                SELECT image_uri, class_id, CAST(class_name AS VARCHAR) AS class_name, score,
                       x_min, y_min, x_max, y_max
                FROM {detections_view} WHERE {" AND ".join(conditions)}
                ORDER BY image_uri, score DESC, class_id
            ) TO '{_sql_text(detections_file)}' (FORMAT parquet)
            """
        )
        detections = _detections_by_image(detections_file)
        pending = next(detections, None)
        for batch in _batches(images_file):
            cols = batch.to_pydict()
            for k, uri in enumerate(cols["image_uri"]):
                found: list[Detection] = []
                while pending is not None and pending[0] <= uri:
                    if pending[0] == uri:
                        found = pending[1]
                    pending = next(detections, None)
                yield ImageResult(
                    uri,
                    cols["width"][k],
                    cols["height"][k],
                    cols["run_id"][k],
                    cols["model"][k],
                    found,
                )

    def _latest_views(self) -> tuple[str, str]:
        """The views holding the latest result per image: ``images``/``detections``, or, when
        every row is the latest (one run with results, no tombstones), the plain tables,
        which need no window or join."""
        ((runs,),) = self.con.sql("SELECT count(DISTINCT run_id) FROM all_images").fetchall()
        ((tombstones,),) = self.con.sql("SELECT count(*) FROM tombstones").fetchall()
        if runs <= 1 and not tombstones:
            return "all_images", "all_detections"
        return "images", "detections"

    def _check_classes(self, detections_view: str) -> None:
        """Raise ``ValueError`` when the results mix models with different class lists."""
        rows = self.con.sql(
            f"SELECT DISTINCT class_id, class_name FROM {detections_view}"
        ).fetchall()
        for class_id, name in rows:
            if class_id >= len(self.class_names) or self.class_names[class_id] != name:
                raise ValueError(
                    f"class id {class_id} is {name!r} in some results but the newest run's "
                    "model lists other classes: the output mixes models; export each model's "
                    "runs to separate outputs"
                )


def _detections_by_image(path: str) -> Iterator[tuple[str, list[Detection]]]:
    """``(image_uri, detections)`` from a Parquet file sorted by image URI, batch by batch."""
    uri, found = None, []
    for batch in _batches(path):
        cols = batch.to_pydict()
        for k, image_uri in enumerate(cols["image_uri"]):
            if image_uri != uri:
                if uri is not None:
                    yield uri, found
                uri, found = image_uri, []
            found.append(
                Detection(
                    cols["class_id"][k],
                    cols["class_name"][k],
                    cols["score"][k],
                    cols["x_min"][k],
                    cols["y_min"][k],
                    cols["x_max"][k],
                    cols["y_max"][k],
                )
            )
    if uri is not None:
        yield uri, found


def _batches(path: str) -> Iterator[pa.RecordBatch]:
    """The record batches of a local Parquet file, one row group read at a time (no
    pre-buffering: it would hold about 50 MB more per file, and two are read at once)."""
    yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(BATCH_ROWS)


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _checked_memory_limit(text: str) -> str:
    value = text.strip()
    if not value or not all(c.isalnum() or c in ". " for c in value):
        raise ValueError(f"memory limit {text!r} is not a size like '512MB' or '2GB'; fix it")
    return value
