"""Sample images of a run with their boxes drawn, as small embedded JPEGs.

Samples are chosen deterministically: images that decoded, those with detections first, then
ordered by the MD5 of their URI — a fixed pseudo-random order, so the same output always gives
the same gallery and the samples are spread over the whole collection rather than its first
folder. Each sample is read again from its source (local or ``s3://``), resized so its long side
is :data:`THUMBNAIL_LONG_SIDE` pixels, and drawn with the detector's class colours.
"""

from __future__ import annotations

import base64
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np
from PIL import Image

from pipeline.store.s3 import S3Options
from pipeline.store.storage import storage_for
from yolov4.draw import draw_detections
from yolov4.imageio import decode_image

logger = logging.getLogger(__name__)

THUMBNAIL_LONG_SIDE = 320
"""Pixels on the long side of a gallery thumbnail."""

THUMBNAIL_JPEG_QUALITY = 80

MAX_SAMPLES = 200
"""Upper bound on gallery images, to keep the page a few MB at most."""

MAX_SAMPLE_BYTES = 64 * 1024 * 1024
"""Sample images larger than this are not downloaded for the gallery."""

FETCH_THREADS = 8


@dataclass(frozen=True)
class SampleBox:
    class_id: int
    class_name: str
    score: float
    box: tuple[float, float, float, float]


@dataclass
class Sample:
    """One gallery image: its URI, its detections and, when it could be read, a thumbnail."""

    image_uri: str
    width: int | None
    height: int | None
    boxes: list[SampleBox]
    jpeg: bytes | None = None
    problem: str | None = None

    @property
    def data_uri(self) -> str | None:
        if self.jpeg is None:
            return None
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


def thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """Size of the thumbnail of a ``width x height`` image (never larger than the image)."""
    scale = min(1.0, THUMBNAIL_LONG_SIDE / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_for_thumbnail(pixels: np.ndarray) -> Image.Image:
    """The plain thumbnail of an ``[H, W, 3]`` RGB image (no boxes)."""
    height, width = pixels.shape[:2]
    return Image.fromarray(pixels).resize(thumbnail_size(width, height), Image.Resampling.BILINEAR)


def render_thumbnail(
    pixels: np.ndarray, boxes: list[SampleBox], original_size: tuple[int, int] | None = None
) -> bytes:
    """JPEG bytes of the thumbnail of ``pixels`` with ``boxes`` drawn.

    ``boxes`` are in pixels of an image of ``original_size`` (``width, height``; default the
    size of ``pixels``) and are scaled to the thumbnail.
    """
    height, width = pixels.shape[:2]
    source_width, source_height = original_size or (width, height)
    small = resize_for_thumbnail(pixels)
    scale_x = small.width / max(source_width, 1)
    scale_y = small.height / max(source_height, 1)
    names: dict[int, str] = {b.class_id: b.class_name for b in boxes}
    top = max(names, default=-1)
    class_names = [names.get(i, str(i)) for i in range(top + 1)]
    coords = np.array([b.box for b in boxes], dtype=np.float64).reshape(-1, 4)
    coords *= np.array([scale_x, scale_y, scale_x, scale_y])
    drawn = draw_detections(
        np.asarray(small),
        coords,
        np.array([b.score for b in boxes], dtype=np.float64),
        np.array([b.class_id for b in boxes], dtype=np.int64),
        class_names,
    )
    out = io.BytesIO()
    drawn.save(out, format="JPEG", quality=THUMBNAIL_JPEG_QUALITY)
    return out.getvalue()


def load_samples(
    con: duckdb.DuckDBPyConnection, count: int, s3_options: S3Options | None = None
) -> list[Sample]:
    """Choose ``count`` samples from the view ``run_images`` and draw their thumbnails.

    Their detections come from the view ``run_detections``. An image that cannot be read
    again (moved, deleted, no permission) keeps its place with :attr:`Sample.problem` set.
    """
    count = min(count, MAX_SAMPLES)
    if count <= 0:
        return []
    rows = con.execute(
        """
        SELECT image_uri, width, height FROM run_images WHERE status = 'ok'
        ORDER BY num_detections = 0, md5(image_uri), image_uri LIMIT $count
        """,
        {"count": count},
    ).fetchall()
    uris = [r[0] for r in rows]
    boxes: dict[str, list[SampleBox]] = {uri: [] for uri in uris}
    if uris:
        detections = con.execute(
            """
            SELECT image_uri, class_id, class_name, score, x_min, y_min, x_max, y_max
            FROM run_detections WHERE list_contains($uris, image_uri)
            ORDER BY image_uri, score DESC
            """,
            {"uris": uris},
        ).fetchall()
        for uri, class_id, name, score, *box in detections:
            boxes[uri].append(SampleBox(int(class_id), str(name), float(score), tuple(box)))
    samples = [Sample(uri, w, h, boxes[uri]) for uri, w, h in rows]
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        list(pool.map(lambda s: _draw(s, s3_options), samples))
    return samples


def _draw(sample: Sample, s3_options: S3Options | None) -> None:
    try:
        data = storage_for(sample.image_uri, s3_options).read_bytes(
            sample.image_uri, max_bytes=MAX_SAMPLE_BYTES
        )
        pixels = decode_image(data)
    except Exception as exc:  # any failure only costs this thumbnail
        sample.problem = f"could not read the image again: {' '.join(str(exc).split())}"
        logger.warning("report sample %s: %s", sample.image_uri, sample.problem)
        return
    size = (sample.width, sample.height) if sample.width and sample.height else None
    if size is not None and size != (pixels.shape[1], pixels.shape[0]):
        sample.problem = "the image changed since the run; boxes may not match"
        logger.warning("report sample %s: %s", sample.image_uri, sample.problem)
    sample.jpeg = render_thumbnail(pixels, sample.boxes, size)
