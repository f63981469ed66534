"""The export formats, each written incrementally, one image at a time.

Input boxes are ``x_min, y_min, x_max, y_max`` in pixels of the original image (after EXIF
orientation), as in the ``detections`` table. Each format states its own box convention:

- COCO: ``bbox = [x_min, y_min, width, height]`` in pixels; ``area = width * height``.
- YOLO: ``class cx cy w h`` (box centre and size) divided by the image width / height, so in
  ``[0, 1]``.
- Label Studio: ``x, y, width, height`` of the top-left corner and size, in percent (0-100) of
  the image width / height.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import IO
from urllib.parse import quote

from pipeline.results.coco_categories import Category, coco_name
from pipeline.results.export.destination import DestinationNotEmptyError
from pipeline.results.export.reader import ImageResult
from pipeline.store.uris import is_s3

#: Version stamp of the COCO ``info`` block.
COCO_INFO_DESCRIPTION = "yolo-batch detections"
#: YOLO export layout: the label folder, class list and manifest under ``--dest``.
YOLO_LABELS_DIR = "labels"
YOLO_CLASSES_FILE = "classes.txt"
YOLO_MANIFEST_FILE = "manifest.csv"
YOLO_MANIFEST_COLUMNS = ("image_uri", "label_file", "width", "height")
#: Decimals of normalised YOLO coordinates (1e-8 of the image size) and of scores.
YOLO_DECIMALS = 8
#: Longest label file stem kept from an image's name (before a collision suffix).
MAX_LABEL_STEM = 100
#: Label Studio control and object tag names of the default labelling config.
LS_FROM_NAME = "label"
LS_TO_NAME = "image"
#: Label Studio's URL prefix for files under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT.
LS_LOCAL_FILES_URL = "/data/local-files/?d="
PERCENT = 100.0

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class CocoWriter:
    """COCO detection JSON: ``images``, ``annotations``, ``categories``.

    ``images[].file_name`` is the image URI; image ids are 1.. in URI order; annotation ids
    1.. in image order. ``annotations`` are spooled to a temporary file while ``images`` are
    written, then appended, so memory stays flat however many images there are.
    """

    def __init__(self, path: Path, categories: list[Category]) -> None:
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in finish/abort)
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self._category_id = {c.class_id: c.id for c in categories}
        self._categories = categories
        self._images = 0
        self.annotations = 0
        info = {
            "description": COCO_INFO_DESCRIPTION,
            "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._fh.write('{"info": ' + json.dumps(info) + ', "licenses": [], "images": [')

    def add(self, image: ImageResult, image_id: int) -> None:
        entry = {
            "id": image_id,
            "file_name": image.uri,
            "width": image.width,
            "height": image.height,
        }
        self._fh.write(("\n" if self._images == 0 else ",\n") + json.dumps(entry))
        self._images += 1
        for det in image.detections:
            w, h = det.x_max - det.x_min, det.y_max - det.y_min
            self.annotations += 1
            annotation = {
                "id": self.annotations,
                "image_id": image_id,
                "category_id": self._category_id[det.class_id],
                "bbox": [det.x_min, det.y_min, w, h],
                "area": w * h,
                "score": det.score,
                "iscrowd": 0,
            }
            self._spool.write(("\n" if self.annotations == 1 else ",\n") + json.dumps(annotation))

    def finish(self) -> None:
        self._fh.write('\n], "annotations": [')
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, self._fh)
        categories = ",\n".join(json.dumps(c.to_coco()) for c in self._categories)
        self._fh.write('\n], "categories": [\n' + categories + "\n]}\n")
        self.close()

    def close(self) -> None:
        self._spool.close()
        self._fh.close()


class LabelStudioWriter:
    """Label Studio pre-annotation tasks: a JSON list, one task per image.

    Each task: ``data.image`` (the image URI, or a local-files URL under ``local_root``) and one
    prediction with ``model_version``, ``score`` (the best detection's score) and one
    ``rectanglelabels`` result per detection: ``value.x/y/width/height`` in percent of
    ``original_width/original_height``, ``rectanglelabels`` = the class name, ``score``.
    """

    def __init__(
        self,
        path: Path,
        *,
        model_version: str | None = None,
        from_name: str = LS_FROM_NAME,
        to_name: str = LS_TO_NAME,
        local_root: str | None = None,
        coco_names: bool = False,
    ) -> None:
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in finish/close)
        self._model_version = model_version
        self._from_name, self._to_name = from_name, to_name
        self._local_root = local_root.rstrip("/") + "/" if local_root else None
        self._coco_names = coco_names
        self._tasks = 0
        self.annotations = 0
        self._fh.write("[")

    def image_url(self, uri: str) -> str:
        """What Label Studio loads: ``s3://`` URIs as they are (resolved by a cloud storage
        connection), local paths under ``local_root`` as local-files URLs, others as paths."""
        if self._local_root and not is_s3(uri) and uri.startswith(self._local_root):
            return LS_LOCAL_FILES_URL + quote(uri[len(self._local_root) :], safe="/")
        return uri

    def add(self, image: ImageResult, image_id: int) -> None:
        results = []
        for det in image.detections:
            self.annotations += 1
            label = coco_name(det.class_name) if self._coco_names else det.class_name
            results.append(
                {
                    "id": f"r{self.annotations}",
                    "type": "rectanglelabels",
                    "from_name": self._from_name,
                    "to_name": self._to_name,
                    "original_width": image.width,
                    "original_height": image.height,
                    "image_rotation": 0,
                    "value": {
                        "x": det.x_min / image.width * PERCENT,
                        "y": det.y_min / image.height * PERCENT,
                        "width": (det.x_max - det.x_min) / image.width * PERCENT,
                        "height": (det.y_max - det.y_min) / image.height * PERCENT,
                        "rotation": 0,
                        "rectanglelabels": [label],
                    },
                    "score": det.score,
                }
            )
        prediction = {
            "model_version": self._model_version or image.model or "yolo-batch",
            "score": max((d.score for d in image.detections), default=0.0),
            "result": results,
        }
        task = {
            "data": {"image": self.image_url(image.uri), "image_uri": image.uri},
            "predictions": [prediction],
        }
        self._fh.write(("\n" if self._tasks == 0 else ",\n") + json.dumps(task))
        self._tasks += 1

    def finish(self) -> None:
        self._fh.write("\n]\n")
        self.close()

    def close(self) -> None:
        self._fh.close()


class YoloWriter:
    """Darknet / Ultralytics YOLO labels: ``labels/NAME.txt`` per image, ``classes.txt`` and
    ``manifest.csv`` (image URI -> label file).

    One line per detection: ``class_id cx cy w h`` normalised by the image size (and ``score``
    as a sixth column with ``with_score``). Images without detections get an empty file (a
    negative example). Label names: the image's file name without extension, folded to ASCII,
    characters other than letters, digits, ``. _ -`` replaced by ``_``; a name already taken
    (the same name in another folder; on a case-insensitive file system also one differing
    only in case) gets ``-2``, ``-3``, ... in image
    URI order. Names never contain a path separator, so nothing is written outside ``labels/``.
    """

    def __init__(self, folder: Path, class_names: tuple[str, ...], *, with_score: bool) -> None:
        self._labels = folder / YOLO_LABELS_DIR
        if self._labels.exists() and any(self._labels.iterdir()):
            raise DestinationNotEmptyError(str(folder))
        self._labels.mkdir(parents=True, exist_ok=True)
        (folder / YOLO_CLASSES_FILE).write_text(
            "".join(f"{name}\n" for name in class_names), encoding="utf-8"
        )
        self._manifest_fh: IO[str] = open(  # noqa: SIM115 (closed in finish/close)
            folder / YOLO_MANIFEST_FILE, "w", encoding="utf-8", newline=""
        )
        self._manifest = csv.writer(self._manifest_fh)
        self._manifest.writerow(YOLO_MANIFEST_COLUMNS)
        self._with_score = with_score
        self.annotations = 0

    def add(self, image: ImageResult, image_id: int) -> None:
        lines = []
        for det in image.detections:
            cx = (det.x_min + det.x_max) / 2 / image.width
            cy = (det.y_min + det.y_max) / 2 / image.height
            w = (det.x_max - det.x_min) / image.width
            h = (det.y_max - det.y_min) / image.height
            fields = [str(det.class_id)] + [f"{v:.{YOLO_DECIMALS}f}" for v in (cx, cy, w, h)]
            if self._with_score:
                fields.append(f"{det.score:.{YOLO_DECIMALS}f}")
            lines.append(" ".join(fields) + "\n")
        self.annotations += len(lines)
        name = self._create(label_stem(image.uri), "".join(lines))
        self._manifest.writerow((image.uri, f"{YOLO_LABELS_DIR}/{name}", image.width, image.height))

    def _create(self, stem: str, text: str) -> str:
        """Write ``text`` to a new label file named after ``stem``; returns the file name."""
        suffix = 1
        while True:
            name = f"{stem}.txt" if suffix == 1 else f"{stem}-{suffix}.txt"
            try:
                with open(self._labels / name, "x", encoding="utf-8") as fh:
                    fh.write(text)
                return name
            except FileExistsError:
                suffix += 1

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        self._manifest_fh.close()


def label_stem(uri: str) -> str:
    """A safe file stem from the image URI's last segment (see :class:`YoloWriter`)."""
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    if not is_s3(uri):
        base = Path(uri).name
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    safe = _UNSAFE.sub("_", ascii_stem).strip("._-")[:MAX_LABEL_STEM]
    return safe or "image"
