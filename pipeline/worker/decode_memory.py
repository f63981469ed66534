"""How much memory a host decode takes, known from the image's header before decoding.

:func:`decode_peak_bytes` is what an image's decode takes from the actor's
:class:`~pipeline.worker.memory_budget.MemoryBudget` before it starts. Pillow decodes into
4 bytes per pixel for RGB (more for CMYK or alpha), copies that out into a bytes object (in
chunks, then joined) and ``yolov4.imageio`` copies the bytes into the owned ``[H, W, 3]``
array, so a decode peaks at several times the 3 bytes per pixel it leaves.
"""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image

from yolov4.imageio import DRAFT_FORMATS, SUPPORTED_FORMATS

#: Bytes per decoded pixel at the peak of a host decode (Pillow's pixels, its copy out and the
#: owned array), measured on 12 MP images: 10.2 for an RGB JPEG or PNG, 11.3 grey, 11.6
#: palette; rounded up.
DECODE_PEAK_BYTES_PER_PIXEL = 12
#: The same for images with four channels (CMYK JPEGs, RGBA PNGs): 14.4 measured.
DECODE_PEAK_BYTES_PER_PIXEL_4CH = 15
FOUR_CHANNEL_MODES = frozenset({"CMYK", "RGBA", "RGBX", "RGBa", "YCCK"})
#: Scales at which libjpeg can decode a JPEG (draft decoding), largest first.
DRAFT_SCALES = (8, 4, 2)


def decode_peak_bytes(
    data: bytes, *, max_pixels: int, draft_min_size: tuple[int, int] | None
) -> int:
    """Bytes the host decode of ``data`` takes at its peak, from the header alone (at least
    what it takes; 0 when the decoder will refuse the image from its header or cannot read
    it, before allocating any pixels). ``draft_min_size``: in draft decoding, the least size a
    reduced JPEG decode keeps (``None``: full-size decoding)."""
    header = _read_header(data)
    if header is None:
        return 0
    width, height, mode, image_format = header
    if width is None:  # over Pillow's own pixel limit: the most the decoder may accept
        pixels = max_pixels if max_pixels > 2 * (Image.MAX_IMAGE_PIXELS or 0) else 0
    else:
        pixels = width * height
        if pixels > max_pixels:
            return 0  # refused from the header
        if draft_min_size is not None and image_format in DRAFT_FORMATS:
            pixels = _draft_pixels(width, height, draft_min_size)
    if mode in FOUR_CHANNEL_MODES:
        return pixels * DECODE_PEAK_BYTES_PER_PIXEL_4CH
    return pixels * DECODE_PEAK_BYTES_PER_PIXEL


def _read_header(data: bytes) -> tuple[int | None, int | None, str, str] | None:
    """``(width, height, mode, format)`` from the header; ``(None, None, "", "")`` for an image
    over Pillow's own pixel limit; ``None`` when unreadable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
                width, height = image.size
                return width, height, image.mode, image.format or ""
        except Image.DecompressionBombError:
            return None, None, "", ""
        except Exception:  # the decoder reports what is wrong, without decoding pixels
            return None


def _draft_pixels(width: int, height: int, min_size: tuple[int, int]) -> int:
    """Pixels of a JPEG's reduced decode (``yolov4.imageio.decode_image_reduced``), at least:
    the scale is chosen against the larger side of ``min_size`` in both directions, so
    whatever the EXIF orientation, the real scale is at least as strong."""
    side = max(min_size)
    for scale in DRAFT_SCALES:
        if width >= scale * side and height >= scale * side:
            return math.ceil(width / scale) * math.ceil(height / scale)
    return width * height
