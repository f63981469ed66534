"""Export a run output's committed detections as COCO JSON, YOLO labels or Label Studio tasks.

:func:`export_results` streams the latest result of every ``ok`` image (see
:mod:`pipeline.results.export.reader`) into one of the writers of
:mod:`pipeline.results.export.formats`, so memory stays flat whatever the number of images.
Images with ``status = 'error'`` are skipped and counted. ``dest`` is a local path or an
``s3://`` URI (written locally, then uploaded: see :mod:`pipeline.results.export.destination`);
a folder ``dest`` (YOLO labels) must be empty or new.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.results.coco_categories import categories_for, is_coco_class_list
from pipeline.results.export.destination import (
    require_empty_folder,
    staged_file,
    staged_folder,
)
from pipeline.results.export.formats import CocoWriter, LabelStudioWriter, YoloWriter
from pipeline.results.export.reader import DEFAULT_MEMORY_LIMIT, Filters, ResultsReader
from pipeline.store.s3 import S3Options

logger = logging.getLogger(__name__)

FORMAT_COCO = "coco"
FORMAT_YOLO = "yolo"
FORMAT_LABELSTUDIO = "labelstudio"
FORMATS = (FORMAT_COCO, FORMAT_YOLO, FORMAT_LABELSTUDIO)
#: Log a progress line every this many images.
PROGRESS_EVERY = 100_000


@dataclass(frozen=True)
class ExportOptions:
    """``min_score`` / ``classes``: filters; ``yolo_score``: a score column in YOLO labels;
    ``ls_*``: Label Studio tag names, model version and local-files document root."""

    min_score: float | None = None
    classes: tuple[str, ...] | None = None
    yolo_score: bool = False
    ls_from_name: str = "label"
    ls_to_name: str = "image"
    ls_model_version: str | None = None
    ls_local_root: str | None = None
    memory_limit: str = DEFAULT_MEMORY_LIMIT


@dataclass(frozen=True)
class ExportSummary:
    format: str
    dest: str
    images: int
    detections: int
    skipped_error_images: int

    def line(self) -> str:
        return (
            f"exported {self.images} images, {self.detections} detections to {self.dest} "
            f"({self.format}); skipped {self.skipped_error_images} images with errors"
        )


def export_results(
    output: str,
    fmt: str,
    dest: str,
    options: ExportOptions = ExportOptions(),
    s3_options: S3Options | None = None,
) -> ExportSummary:
    """Write the committed results of ``output`` to ``dest`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if options.min_score is not None and not 0.0 <= options.min_score <= 1.0:
        raise ValueError(f"--min-score {options.min_score} is outside 0..1; give a score in 0..1")
    if fmt == FORMAT_YOLO:  # before any result is read
        require_empty_folder(dest, s3_options)
    with ResultsReader(output, s3_options, memory_limit=options.memory_limit) as reader:
        class_ids = reader.class_ids_for(options.classes) if options.classes else None
        filters = Filters(options.min_score, class_ids)
        if fmt == FORMAT_YOLO:
            with staged_folder(dest, s3_options) as folder:
                writer = YoloWriter(folder, reader.class_names, with_score=options.yolo_score)
                images = _write_all(reader, filters, writer)
        else:
            with staged_file(dest, s3_options) as path:
                if fmt == FORMAT_COCO:
                    writer = CocoWriter(path, categories_for(reader.class_names))
                else:
                    writer = LabelStudioWriter(
                        path,
                        model_version=options.ls_model_version,
                        from_name=options.ls_from_name,
                        to_name=options.ls_to_name,
                        local_root=options.ls_local_root,
                        coco_names=is_coco_class_list(reader.class_names),
                    )
                images = _write_all(reader, filters, writer)
    summary = ExportSummary(fmt, dest, images, writer.annotations, reader.error_images)
    logger.info("%s", summary.line())
    return summary


def _write_all(reader: ResultsReader, filters: Filters, writer) -> int:
    count = 0
    try:
        for count, image in enumerate(reader.images(filters), start=1):
            writer.add(image, count)
            if count % PROGRESS_EVERY == 0:
                logger.info("exported %d images", count)
    except BaseException:
        writer.close()
        raise
    writer.finish()
    return count
