"""Stream a run output's committed results image by image, for the exporters and ``eval``.

The committed shards are read one at a time (a shard's ``images`` and ``detections`` Parquet
files, with pyarrow), runs oldest first and shards in order, so memory is bounded by the shard
size, never by the number of images. DuckDB (the result views of :mod:`pipeline.results.query`)
is used only for small questions: the runs' models, and which images a newer run processed again
(only the newest result of an image is exported; this set is as large as the number of
re-processed images). Only images with ``status = 'ok'`` are yielded; ``error`` ones are
counted.

Boxes are ``x_min, y_min, x_max, y_max`` in pixels of the original image (after EXIF
orientation), exactly as in the ``detections`` table.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.results.coco_categories import coco_name
from pipeline.results.query import connect
from pipeline.store.committed import arrow_filesystem, committed_files, fs_path
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, data_file_run_id
from pipeline.store.s3 import S3Options
from pipeline.store.schema import STATUS_OK
from pipeline.store.uris import normalize

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image_uri", "status", "width", "height", "run_id")
DETECTION_COLUMNS = (
    "image_uri", "class_id", "class_name", "score", "x_min", "y_min", "x_max", "y_max",
)  # fmt: skip
#: DuckDB's working-memory cap while exporting; it spills sorts to a temporary folder beyond.
DEFAULT_MEMORY_LIMIT = "512MB"
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
        self._spill_dir = tempfile.mkdtemp(prefix="yolo-batch-duckdb-")
        self.con = connect(self.output, s3_options)
        self.con.execute(f"SET memory_limit = '{_checked_memory_limit(memory_limit)}'")
        self.con.execute("SET temp_directory = ?", [self._spill_dir])
        self.con.execute("SET enable_progress_bar = false")  # it would print to stdout
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute(f"SET threads = {DUCKDB_THREADS}")
        self._filesystem = arrow_filesystem(self.output, s3_options)
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
        files = committed_files(self.output, self.s3_options)[DETECTIONS_TABLE]
        filesystem = arrow_filesystem(self.output, self.s3_options)
        for uri in reversed(files):  # the newest run's files come last
            with filesystem.open_input_file(fs_path(uri)) as fh:
                parquet = pq.ParquetFile(fh)
                if parquet.metadata.num_rows == 0:
                    continue
                column = parquet.read_row_group(0, columns=["class_name"]).column(0)
                return tuple(column.chunk(0).dictionary.to_pylist())
        return ()

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
        """Every ``ok`` image of the latest results with its detections (best score first).

        Reads one committed shard at a time (its ``images`` and ``detections`` files), runs
        oldest first and shards in order, so memory is bounded by the shard size. An image that
        a newer run processed again is taken from the newest run only. Counts the skipped
        ``error`` images in :attr:`error_images`.
        """
        self.error_images = 0
        files = committed_files(self.output, self.s3_options)
        runs_with_files = {data_file_run_id(uri) for uri in files[IMAGES_TABLE]}
        stale = self._superseded() if len(runs_with_files) > 1 else set()
        models = dict(self.con.sql("SELECT run_id, model FROM runs").fetchall())
        for images_uri, detections_uri in zip(files[IMAGES_TABLE], files[DETECTIONS_TABLE]):
            images = self._read(images_uri, IMAGE_COLUMNS)
            by_image = self._shard_detections(detections_uri, filters)
            cols = images.to_pydict()
            for k, uri in enumerate(cols["image_uri"]):
                run_id = cols["run_id"][k]
                if stale and (uri, run_id) in stale:
                    continue
                if cols["status"][k] != STATUS_OK:
                    self.error_images += 1
                    continue
                yield ImageResult(
                    uri,
                    cols["width"][k],
                    cols["height"][k],
                    run_id,
                    models.get(run_id),
                    by_image.get(uri, []),
                )

    def _superseded(self) -> set[tuple[str, str]]:
        """``(image_uri, run_id)`` of results a newer run replaced (only images processed by
        more than one run are looked at)."""
        rows = self.con.sql(
            """
            SELECT image_uri, run_id FROM (
                SELECT image_uri, run_id,
                       row_number() OVER (PARTITION BY image_uri ORDER BY run_id DESC) AS rank
                FROM all_images
                WHERE image_uri IN (
                    SELECT image_uri FROM all_images GROUP BY image_uri HAVING count(*) > 1
                )
            ) WHERE rank > 1
            """
        ).fetchall()
        return {(uri, run_id) for uri, run_id in rows}

    def _read(self, uri: str, columns: Sequence[str]) -> pa.Table:
        with self._filesystem.open_input_file(fs_path(uri)) as fh:
            return pq.read_table(fh, columns=list(columns))

    def _shard_detections(self, uri: str, filters: Filters) -> dict[str, list[Detection]]:
        table = self._read(uri, DETECTION_COLUMNS)
        if filters.min_score is not None:
            table = table.filter(pc.greater_equal(table["score"], filters.min_score))
        if filters.class_ids is not None:
            wanted = pa.array(filters.class_ids, pa.int16())
            table = table.filter(pc.is_in(table["class_id"], value_set=wanted))
        table = table.sort_by(
            [("image_uri", "ascending"), ("score", "descending"), ("class_id", "ascending")]
        )
        names = table["class_name"].cast(pa.string())
        table = table.set_column(table.schema.get_field_index("class_name"), "class_name", names)
        cols = table.to_pydict()
        out: dict[str, list[Detection]] = {}
        checked: set[tuple[int, str]] = set()
        for k, image_uri in enumerate(cols["image_uri"]):
            class_id, name = cols["class_id"][k], cols["class_name"][k]
            if (class_id, name) not in checked:
                self._check_class(class_id, name)
                checked.add((class_id, name))
            out.setdefault(image_uri, []).append(
                Detection(
                    class_id,
                    name,
                    cols["score"][k],
                    cols["x_min"][k],
                    cols["y_min"][k],
                    cols["x_max"][k],
                    cols["y_max"][k],
                )
            )
        return out

    def _check_class(self, class_id: int, name: str) -> None:
        if class_id >= len(self.class_names) or self.class_names[class_id] != name:
            raise ValueError(
                f"class id {class_id} is {name!r} in some results but the newest run's model "
                "lists other classes: the output mixes models; export each model's runs to "
                "separate outputs"
            )


def _checked_memory_limit(text: str) -> str:
    value = text.strip()
    if not value or not all(c.isalnum() or c in ". " for c in value):
        raise ValueError(f"memory limit {text!r} is not a size like '512MB' or '2GB'; fix it")
    return value
