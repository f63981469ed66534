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
        image. Higher-scoring detections are drawn last, on top.
    """
    pixels = to_rgb_array(image)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    class_ids = np.asarray(class_ids).reshape(-1)
    if not len(boxes) == len(scores) == len(class_ids):
        raise ValueError(
            f"boxes, scores and class_ids differ in length: "
            f"{len(boxes)}, {len(scores)}, {len(class_ids)}"
        )
    canvas = Image.fromarray(pixels)
    height, width = pixels.shape[:2]
    line_width = line_width_for(width, height)
    font = _font(font_size_for(width, height))
    draw = ImageDraw.Draw(canvas)

    order = np.argsort(scores, kind="stable")
    visible = [i for i in order if np.isfinite(boxes[i]).all()]
    edges = {i: _pixel_edges(boxes[i], width, height) for i in visible}
    visible = [i for i in visible if edges[i] is not None]
    for i in visible:
        draw.rectangle(edges[i], outline=class_colour(int(class_ids[i])), width=line_width)
    for i in visible:
        class_id = int(class_ids[i])
        name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
        label = f"{name} {scores[i]:.2f}"
        _draw_label(draw, canvas.size, label, edges[i], class_colour(class_id), font)
    return canvas


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


def _draw_label(
    draw: ImageDraw.ImageDraw,
    image_size: tuple[int, int],
    text: str,
    edges: tuple[int, int, int, int],
    colour: Colour,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """Filled label above the box's top-left corner, moved inside the image if needed."""
    image_width, image_height = image_size
    text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), text, font=font)
    padding = max(1, int(LABEL_PADDING_FRACTION * (text_bottom - text_top) + 0.5))
    label_width = text_right - text_left + 2 * padding
    label_height = text_bottom - text_top + 2 * padding
    box_left, box_top = edges[0], edges[1]
    top = box_top - label_height if box_top - label_height >= 0 else box_top
    top = max(0, min(top, image_height - label_height))
    left = max(0, min(box_left, image_width - label_width))
    draw.rectangle(
        (left, top, left + label_width - 1, top + label_height - 1), fill=colour, outline=colour
    )
    draw.text(
        (left + padding - text_left, top + padding - text_top),
        text,
        fill=text_colour(colour),
        font=font,
    )
