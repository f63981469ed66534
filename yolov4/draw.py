"""Annotated copies of images: detection boxes with class-coloured labels.

Boxes are ``[N, 4]`` arrays of ``x_min, y_min, x_max, y_max`` in pixels of the image
they are drawn on (``x`` to the right, ``y`` down, origin at the top-left corner of the
top-left pixel; ``x_max``/``y_max`` are exclusive edges, so a box ``0, 0, W, H`` covers
the whole image).
"""

from __future__ import annotations

import colorsys
import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from yolov4.imageio import to_rgb_array

GOLDEN_RATIO_CONJUGATE = (math.sqrt(5.0) - 1.0) / 2.0
"""Hue step between consecutive class ids: spreads any number of ids around the wheel."""

COLOUR_SATURATIONS = (0.95, 0.55, 0.75)
"""Saturation cycles with ``class_id % 3`` so ids with close hues still differ."""

COLOUR_VALUES = (1.0, 0.8, 0.6)
"""Brightness cycles with ``(class_id // 3) % 3``."""

LINE_WIDTH_FRACTION = 0.003
"""Box outline width as a fraction of the image's mean side (1 px at 333 px)."""

MIN_LINE_WIDTH = 1

FONT_SIZE_FRACTION = 0.025
"""Label text height as a fraction of the image's shorter side."""

MIN_FONT_SIZE = 10
MAX_FONT_SIZE = 48

LABEL_PADDING_FRACTION = 0.2
"""Padding around label text as a fraction of the font size."""

TEXT_LUMA_THRESHOLD = 150
"""Label backgrounds brighter than this (ITU-R BT.601 luma, 0..255) get black text."""

SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
DEFAULT_JPEG_QUALITY = 90

Colour = tuple[int, int, int]

Rect = tuple[int, int, int, int]
"""An inclusive pixel rectangle ``(left, top, right, bottom)``."""


@dataclass(frozen=True)
class PlacedLabel:
    """Where the label of one detection goes: ``index`` into the detections drawn, its text,
    its filled background ``rect`` and the point its text is drawn at."""

    index: int
    text: str
    rect: Rect
    text_origin: tuple[int, int]


def class_colour(class_id: int) -> Colour:
    """A stable RGB colour for a class id, distinct from its neighbours.

    Hues step by the golden ratio conjugate, so consecutive ids land far apart on the
    colour wheel; saturation and brightness cycle too. Pure arithmetic: the same id gives
    the same colour in every process.
    """
    class_id = int(class_id)
    hue = (class_id * GOLDEN_RATIO_CONJUGATE) % 1.0
    saturation = COLOUR_SATURATIONS[class_id % len(COLOUR_SATURATIONS)]
    value = COLOUR_VALUES[(class_id // len(COLOUR_SATURATIONS)) % len(COLOUR_VALUES)]
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(red * 255), round(green * 255), round(blue * 255))


def text_colour(background: Colour) -> Colour:
    """Black or white, whichever reads better on ``background``."""
    red, green, blue = background
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    return (0, 0, 0) if luma > TEXT_LUMA_THRESHOLD else (255, 255, 255)


def line_width_for(width: int, height: int) -> int:
    """Box outline width in pixels for an image of ``width x height``."""
    return max(MIN_LINE_WIDTH, int(LINE_WIDTH_FRACTION * (width + height) / 2 + 0.5))


def font_size_for(width: int, height: int) -> int:
    """Label font size in pixels for an image of ``width x height``."""
    size = int(FONT_SIZE_FRACTION * min(width, height) + 0.5)
    return min(MAX_FONT_SIZE, max(MIN_FONT_SIZE, size))


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px, or its fixed bitmap font on old Pillow."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    class_names: Sequence[str],
) -> Image.Image:
    """Draw detections on a copy of ``image``.

    Args:
        image: ``[H, W, 3]`` ``uint8`` RGB (anything :func:`yolov4.imageio.to_rgb_array`
            accepts); left unchanged.
        boxes: ``[N, 4]`` ``x_min, y_min, x_max, y_max`` in pixels of ``image``; parts
            outside the image are clipped, boxes with non-finite coordinates skipped.
        scores: ``[N]`` confidences, shown with two decimals.
        class_ids: ``[N]`` integer class ids; ids outside ``class_names`` show the number.
        class_names: name of each class id.

    Returns:
        An RGB ``PIL.Image.Image`` of size ``W x H``: each box outlined in its class colour
        (:func:`class_colour`) with a filled label ``"{name} {score:.2f}"`` above its
        top-left corner (inside the box when there is no room above), always within the
        image; labels never overlap one another (:func:`layout_labels`). Higher-scoring
        detections are drawn last, on top.
    """
    pixels = to_rgb_array(image)
    canvas = Image.fromarray(pixels)
    height, width = pixels.shape[:2]
    line_width = line_width_for(width, height)
    font = _font(font_size_for(width, height))
    draw = ImageDraw.Draw(canvas)
    ids = _flat_ids(class_ids)
    for i, edges in _visible_boxes(boxes, scores, class_ids, width, height):
        draw.rectangle(edges, outline=class_colour(int(ids[i])), width=line_width)
    for label in layout_labels((width, height), boxes, scores, class_ids, class_names):
        colour = class_colour(int(ids[label.index]))
        draw.rectangle(label.rect, fill=colour, outline=colour)
        draw.text(label.text_origin, label.text, fill=text_colour(colour), font=font)
    return canvas


def layout_labels(
    image_size: tuple[int, int],
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    class_names: Sequence[str],
) -> list[PlacedLabel]:
    """The labels :func:`draw_detections` draws on an image of ``image_size`` (``width,
    height``), placed so that no two overlap and each lies inside the image.

    A label's place is above its box's top-left corner (inside the box when there is no room
    above), moved inside the image. Labels are placed best score first; one whose place is
    taken moves up or down, to the nearest free place in the image (just above or below the
    labels in its way), so labels of boxes at the same place stack. Only when the image has no
    free place left does a label keep its place over another. Returned lowest score first, the
    order they are drawn in.
    """
    width, height = image_size
    font = _font(font_size_for(width, height))
    ids = _flat_ids(class_ids)
    visible = _visible_boxes(boxes, scores, class_ids, width, height)
    score_values = np.asarray(scores, dtype=np.float64).reshape(-1)
    placed: list[PlacedLabel] = []
    for i, edges in reversed(visible):  # best score first: it keeps its preferred place
        class_id = int(ids[i])
        name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
        text = f"{name} {score_values[i]:.2f}"
        text_left, text_top, text_right, text_bottom = font.getbbox(text)
        padding = max(1, int(LABEL_PADDING_FRACTION * (text_bottom - text_top) + 0.5))
        label_width = text_right - text_left + 2 * padding
        label_height = text_bottom - text_top + 2 * padding
        box_left, box_top = edges[0], edges[1]
        top = box_top - label_height if box_top - label_height >= 0 else box_top
        top = max(0, min(top, height - label_height))
        left = max(0, min(box_left, width - label_width))
        top = _free_top(
            left, top, label_width, label_height, height, [label.rect for label in placed]
        )
        rect = (left, top, left + label_width - 1, top + label_height - 1)
        origin = (left + padding - text_left, top + padding - text_top)
        placed.append(PlacedLabel(int(i), text, rect, origin))
    return placed[::-1]


def rects_overlap(a: Rect, b: Rect) -> bool:
    """Whether two inclusive pixel rectangles share a pixel."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def save_annotated(
    path: str | os.PathLike,
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    class_names: Sequence[str],
    *,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> None:
    """Draw detections (see :func:`draw_detections`) and write JPEG or PNG by suffix.

    Raises:
        ValueError: the suffix is not ``.jpg``, ``.jpeg`` or ``.png``.
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in SAVE_FORMATS:
        raise ValueError(
            f"cannot save annotated image as {suffix or 'a file without suffix'!r}; "
            f"use one of {', '.join(SAVE_FORMATS)}"
        )
    annotated = draw_detections(image, boxes, scores, class_ids, class_names)
    fmt = SAVE_FORMATS[suffix]
    options = {"quality": jpeg_quality} if fmt == "JPEG" else {}
    annotated.save(path, format=fmt, **options)


def _pixel_edges(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Inclusive pixel rectangle ``(left, top, right, bottom)`` of a box, clipped to the image.

    ``None`` when the box lies wholly outside. A box thinner than a pixel still gets a
    one-pixel outline.
    """
    left, top, right, bottom = (int(math.floor(float(v) + 0.5)) for v in box)
    right = max(right - 1, left)
    bottom = max(bottom - 1, top)
    if right < 0 or bottom < 0 or left > width - 1 or top > height - 1:
        return None
    return (max(0, left), max(0, top), min(width - 1, right), min(height - 1, bottom))


def _flat_ids(class_ids: np.ndarray) -> np.ndarray:
    """``class_ids`` as a flat array."""
    return np.asarray(class_ids).reshape(-1)


def _visible_boxes(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, width: int, height: int
) -> list[tuple[int, Rect]]:
    """``(index, pixel edges)`` of each box drawn on a ``width x height`` image, lowest score
    first; boxes wholly outside the image or with non-finite coordinates are left out."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    class_ids = _flat_ids(class_ids)
    if not len(boxes) == len(scores) == len(class_ids):
        raise ValueError(
            f"boxes, scores and class_ids differ in length: "
            f"{len(boxes)}, {len(scores)}, {len(class_ids)}"
        )
    out = []
    for i in np.argsort(scores, kind="stable"):
        if np.isfinite(boxes[i]).all():
            edges = _pixel_edges(boxes[i], width, height)
            if edges is not None:
                out.append((int(i), edges))
    return out


def _free_top(
    left: int,
    preferred: int,
    label_width: int,
    label_height: int,
    image_height: int,
    taken: list[Rect],
) -> int:
    """The top of a label at ``left`` nearest to ``preferred`` (above on a tie) where it lies
    inside the image and overlaps none of the ``taken`` rectangles; ``preferred`` when there
    is no such place.

    The nearest free place is ``preferred`` itself, an edge of the image, or just above or
    below a taken rectangle in the label's columns: only those are tried.
    """
    right = left + label_width - 1
    candidates = {preferred, 0, image_height - label_height}
    for rect in taken:
        if rect[0] <= right and left <= rect[2]:
            candidates.update((rect[1] - label_height, rect[3] + 1))
    free = [
        top
        for top in candidates
        if 0 <= top <= image_height - label_height
        and not any(rects_overlap((left, top, right, top + label_height - 1), r) for r in taken)
    ]
    if not free:
        return preferred
    return min(free, key=lambda top: (abs(top - preferred), top > preferred))
