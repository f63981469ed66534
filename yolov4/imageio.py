"""Image decoding to RGB ``uint8`` arrays, the way darknet's loader sees images.

Every decoder here returns a C-contiguous, writable ``numpy.ndarray`` of shape
``[H, W, 3]``, dtype ``uint8``, channels in RGB order, owned by the caller (never a view
of the input). Encoded files are returned in *display orientation*: the EXIF orientation
tag is applied, the same result as ``PIL.ImageOps.exif_transpose``.

Pixel modes are reduced to RGB the way darknet's stb_image loader does: alpha is dropped
(not composited), grey is replicated to three channels, palette images take their palette
colours (transparency ignored), 16-bit samples keep their high byte (``v >> 8``, so
``0..65535`` maps onto ``0..255`` without clipping), and multi-frame files (animated GIF,
multi-page TIFF, APNG) give their first frame.

:func:`decode_image_reduced` decodes large JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
scaling, several times faster) when that still leaves at least a given size, for a detector
whose input is far smaller than the photo; it returns the pixels with the full image's size.

Failures to decode raise :class:`yolov4.errors.ImageDecodeError`, whose message starts
with ``decode: `` and is short enough to store in a results table. The pixel limit is
checked from the header, before any pixel data is decoded, so a decompression bomb never
gets its buffer allocated. Pillow's global settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``) are read but never changed.
"""

from __future__ import annotations

import errno
import functools
import io
import logging
import math
import os
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from yolov4.errors import ImageDecodeError

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
"""Largest ``width * height`` decoded by default (an 8-bit RGB copy is ~300 MB)."""

DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024
"""Largest encoded file accepted by default, in bytes."""

SUPPORTED_FORMATS: tuple[str, ...] = (
    "JPEG",  # includes MPO (multi-picture JPEG from cameras)
    "PNG",  # includes APNG
    "GIF",
    "BMP",
    "TIFF",
    "WEBP",
    "PPM",  # PBM / PGM / PPM / PFM
    "JPEG2000",
    "AVIF",  # only where Pillow was built with it
    "HEIF",  # HEIC / HEIF photos, through pillow-heif's plugin (:func:`_register_plugins`)
)
"""Pillow format names tried when decoding, in order.

Formats without a reliable signature (TGA) or that run external programs (EPS) are left
out on purpose: for untrusted collections they would turn garbage or hostile files into
"images" instead of errors.
"""

EXIF_ORIENTATION_TAG = 0x0112

_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF values that swap width and height

DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
"""Pillow formats :func:`decode_image_reduced` may decode at a reduced scale (libjpeg's DCT
scaling by 1/2, 1/4 or 1/8)."""

DRAFT_MIN_SCALE = 2.0
"""Default :func:`draft_min_size` factor: a reduced decode keeps at least this many stored
pixels per network input pixel in each dimension (fewer than twice as many when it is reduced
at all). At this factor detections stay within ``yolov4.compare.DRAFT_TOLERANCE`` of full
decoding; a smaller factor reduces more photos further (faster) but moves detections more, and
factor 1 loses some. docs/performance.md ("JPEG draft decoding") has the measured figures."""

PREFIX_REPR_BYTES = 12
"""How many leading bytes an unrecognised-format message shows."""

MAX_DETAIL_CHARS = 80
"""Longest underlying-error text kept in a ``decode: corrupt ...`` message."""

UINT16_TO_UINT8_SHIFT = 8

_ACCEPT_PREFIX_BYTES = 16  # what Pillow's format sniffers are given

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    # (magic, offset, format name): used only to word errors for recognisable files
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WEBP"),
    (b"ftypheic", 4, "HEIF"),
    (b"ftypheix", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_PREMULTIPLIED_MODES = frozenset({"La", "RGBa"})

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
"""Anything :func:`load_images` accepts as one item."""


# --------------------------------------------------------------------------- public API


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
) -> np.ndarray:
    """Decode an encoded image file held in memory.

    Args:
        data: the complete file contents (JPEG, PNG, GIF, BMP, TIFF, WebP, PNM, ...).
        max_pixels: refuse images whose header declares more than this many pixels
            (``width * height``); ``None`` disables this check (Pillow's own
            ``Image.MAX_IMAGE_PIXELS`` safeguard may still refuse very large images).
        max_bytes: refuse inputs longer than this many bytes; ``None`` disables it.

    Returns:
        ``[H, W, 3]`` ``uint8`` RGB array in display orientation (EXIF applied).

    Raises:
        ImageDecodeError: for every problem with the data; the message starts with
            ``decode: ``.
        TypeError: if ``data`` is not a bytes-like object (e.g. a path: use
            :func:`read_image`).
    """
    return _decode_bytes(data, "decode_image", max_pixels, max_bytes, min_size=None).pixels


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image decoded by :func:`decode_image_reduced`.

    - ``pixels``: ``[h, w, 3]`` ``uint8`` RGB array in display orientation (EXIF applied),
      C-contiguous, writable and owned, as :func:`decode_image` returns; possibly smaller than
      the image (``h <= height``, ``w <= width``).
    - ``size``: ``(width, height)`` of the full-resolution image in display orientation: what
      a results table reports, and what detection boxes are to be mapped to
      (``Detector.detect_batch(..., image_sizes=[size])``).
    """

    pixels: np.ndarray
    size: tuple[int, int]

    @property
    def reduced(self) -> bool:
        """Whether ``pixels`` is smaller than ``size`` (the decode was reduced)."""
        height, width = self.pixels.shape[:2]
        return (width, height) != self.size


def decode_image_reduced(
    data: bytes | bytearray | memoryview,
    *,
    min_size: tuple[int, int],
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
) -> DecodedImage:
    """Decode an image file held in memory, JPEGs at a reduced scale where that is enough.

    A JPEG (or MPO) of display size ``(W, H)`` is decoded at scale ``1/s`` by libjpeg's DCT
    scaling (Pillow's ``Image.draft``), ``s`` the largest of 8, 4 and 2 with
    ``W >= s * min_w`` and ``H >= s * min_h``; its pixels are then
    ``ceil(W / s) x ceil(H / s)``, so at least ``min_size``. That is several times faster than
    a full decode (and than resizing a full decode), and not the same pixels as a full decode
    followed by a resize: each output pixel is about the mean of an ``s x s`` block. Every
    other image, and every JPEG smaller than twice ``min_size`` in either dimension, is decoded
    exactly as :func:`decode_image` decodes it.

    Everything else is as for :func:`decode_image`: the same limits, checked against the
    full-resolution size before any pixel is decoded; the same :class:`ImageDecodeError`
    messages for empty, oversized, corrupt, truncated and unrecognised inputs; EXIF
    orientation applied; the same pixel-mode reduction to RGB.

    Args:
        data: the complete file contents.
        min_size: ``(width, height)`` in display orientation, both positive: the least the
            returned pixels may have (unless the image itself is smaller). For a detector, use
            :func:`draft_min_size` of its input size.
        max_pixels, max_bytes: as for :func:`decode_image`.

    Returns:
        :class:`DecodedImage`: ``pixels`` (``[h, w, 3]`` ``uint8`` RGB, display orientation) and
        ``size``, the full-resolution ``(width, height)`` in display orientation. When the
        decode was not reduced, ``size == (w, h)`` and ``pixels`` equals what
        :func:`decode_image` returns.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
        TypeError: if ``data`` is not a bytes-like object.
        ValueError: if ``min_size`` is not two positive integers.
    """
    if len(min_size) != 2 or not all(
        isinstance(side, (int, np.integer)) and side >= 1 for side in min_size
    ):
        raise ValueError(f"min_size must be two positive integers, got {min_size!r}")
    min_w, min_h = min_size
    return _decode_bytes(
        data, "decode_image_reduced", max_pixels, max_bytes, min_size=(int(min_w), int(min_h))
    )


def draft_min_size(input_size: tuple[int, int], scale: float = DRAFT_MIN_SCALE) -> tuple[int, int]:
    """The ``min_size`` for :func:`decode_image_reduced` in front of a network input.

    ``input_size``: the network input ``(net_w, net_h)``. Returns
    ``(ceil(scale * net_w), ceil(scale * net_h))``: each dimension of a reduced decode keeps at
    least ``scale`` pixels per input pixel, so the detector's resize still samples the image at
    that density or finer. ``scale`` must be at least 1.
    """
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    net_w, net_h = input_size
    return math.ceil(scale * net_w), math.ceil(scale * net_h)


def read_image(
    path: str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
) -> np.ndarray:
    """Read and decode an image file.

    The size limit is checked before the file is read. Limits are as for
    :func:`decode_image`.

    Returns:
        ``[H, W, 3]`` ``uint8`` RGB array in display orientation.

    Raises:
        FileNotFoundError: ``path`` does not exist (``filename`` is set).
        IsADirectoryError: ``path`` is a directory (``filename`` is set).
        OSError: the file exists but cannot be read.
        ImageDecodeError: the contents are not a decodable image.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    with open(path, "rb") as fh:
        _check_byte_count(os.fstat(fh.fileno()).st_size, max_bytes)
        data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes)


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Convert an in-memory image to a new ``[H, W, 3]`` ``uint8`` RGB array.

    Accepted inputs:

    * ``PIL.Image.Image`` in any mode, reduced as described in the module docstring.
      Pixels are taken as they are: no EXIF orientation is applied (call
      ``PIL.ImageOps.exif_transpose`` first if the image came from a file).
    * ``numpy.ndarray`` of shape ``[H, W]`` (grey), ``[H, W, 1]`` (grey), ``[H, W, 3]``
      (RGB) or ``[H, W, 4]`` (RGBA, alpha dropped), with dtype

      - ``uint8``: used as is;
      - ``uint16``: full range ``0..65535``, reduced to the high byte (``v >> 8``);
      - ``float16/32/64``: intensities in ``[0, 1]``, scaled by 255 and rounded; values
        outside are clipped and NaN becomes 0;
      - ``bool``: ``False`` -> 0, ``True`` -> 255.

    Raises:
        ImageDecodeError: unsupported array shape or dtype, or unsupported PIL mode.
        TypeError: ``image`` is neither a PIL image nor an array.
    """
    if isinstance(image, Image.Image):
        return _owned_copy(_pil_to_rgb(image))
    if isinstance(image, np.ndarray):
        return _owned_copy(_array_to_rgb(image))
    raise TypeError(f"to_rgb_array takes a PIL image or a numpy array, not {type(image).__name__}")


def load_images(
    items: Iterable[ImageSource],
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
) -> list[np.ndarray]:
    """Turn each item into an ``[H, W, 3]`` ``uint8`` RGB array.

    Each item is a path (:func:`read_image`), encoded bytes (:func:`decode_image`), a PIL
    image or a numpy array (:func:`to_rgb_array`). The limits apply to paths and bytes.
    The first failure is raised; decode items one at a time to collect per-item errors.
    """
    arrays = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            arrays.append(read_image(item, max_pixels=max_pixels, max_bytes=max_bytes))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            arrays.append(decode_image(item, max_pixels=max_pixels, max_bytes=max_bytes))
        else:
            arrays.append(to_rgb_array(item))
    return arrays


# --------------------------------------------------------------------------- decoding


def _decode_bytes(
    data: bytes | bytearray | memoryview,
    caller: str,
    max_pixels: int | None,
    max_bytes: int | None,
    *,
    min_size: tuple[int, int] | None,
) -> DecodedImage:
    """Check the input type and byte count, then :func:`_decode` it."""
    if isinstance(data, (str, os.PathLike)):
        raise TypeError(f"{caller} takes the file's bytes; use read_image for a path")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"{caller} takes bytes, bytearray or memoryview, not {type(data).__name__}"
        ) from None
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B") if view.c_contiguous else memoryview(view.tobytes())
    _check_byte_count(view.nbytes, max_bytes)
    prefix = view[:PREFIX_REPR_BYTES].tobytes()
    return _decode(io.BytesIO(view), prefix, max_pixels, min_size)


def _check_byte_count(nbytes: int, max_bytes: int | None) -> None:
    if nbytes == 0:
        raise ImageDecodeError("decode: empty file (0 bytes)")
    if max_bytes is not None and nbytes > max_bytes:
        raise ImageDecodeError(
            f"decode: file is {nbytes} bytes, over the limit of {max_bytes} "
            "(raise the limit, --max-image-bytes, to allow it)"
        )


def _decode(
    fp: io.BytesIO, prefix: bytes, max_pixels: int | None, min_size: tuple[int, int] | None
) -> DecodedImage:
    """Open, check, load and convert; every Pillow failure becomes ImageDecodeError.

    ``min_size``: ``(width, height)`` in display orientation to reduce a JPEG's decode to
    (see :func:`_load_rgb`); ``None`` for a full decode.

    Pillow's warnings are captured and logged at debug level instead of printed
    (``warnings.catch_warnings`` swaps the process-wide filters for the duration, so
    warnings raised meanwhile by other threads may be logged here too).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = _open(fp, prefix)
            try:
                _check_pixel_count(image.size, max_pixels)
                array, size = _load_rgb(image, min_size)
            finally:
                image.close()
        except ImageDecodeError:
            raise
        except Image.DecompressionBombError as exc:
            # Only reachable when max_pixels allows more than Pillow's own hard limit.
            raise ImageDecodeError(
                f"decode: image is over Pillow's pixel limit of "
                f"{_pillow_hard_limit()} pixels (raise PIL.Image.MAX_IMAGE_PIXELS to allow it)"
            ) from exc
        except MemoryError:
            raise
        except Exception as exc:  # any Pillow/plugin failure on hostile or broken data
            raise ImageDecodeError(_describe_failure(exc, prefix)) from exc
        finally:
            for warning in caught:
                logger.debug("image decode warning: %s", warning.message)
    # one copy at most: the pixels above are fresh or read-only/broadcast views
    return DecodedImage(np.require(array, dtype=np.uint8, requirements=["C", "W", "O"]), size)


def _load_rgb(
    image: Image.Image, min_size: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Load an opened image's pixels as RGB in display orientation.

    Returns the ``[h, w, 3]`` ``uint8`` array (possibly a read-only or broadcast view) and the
    full-resolution ``(width, height)`` in display orientation. With ``min_size`` set and a
    JPEG, the decode is reduced by Pillow's ``draft`` (the largest of 1/8, 1/4, 1/2 that keeps
    at least ``min_size``); the EXIF orientation is read from the header first, because the
    request must be made in stored orientation. Other images are loaded in full, the
    orientation read after loading (PNG may keep its EXIF after the pixel data).
    """
    if min_size is None or image.format not in DRAFT_FORMATS:
        image.load()
        array = _orient(_pil_to_rgb(image), _exif_orientation(image))
        return array, (array.shape[1], array.shape[0])
    orientation = _exif_orientation(image)
    stored_size = image.size
    image.draft(None, _swap_if_transposed(min_size, orientation))  # keeps the mode
    image.load()
    if image.size != stored_size:
        logger.debug("draft decode %s -> %s", stored_size, image.size)
    array = _orient(_pil_to_rgb(image), orientation)
    return array, _swap_if_transposed(stored_size, orientation)


def _swap_if_transposed(size: tuple[int, int], orientation: int | None) -> tuple[int, int]:
    """``(a, b)`` -> ``(b, a)`` for the EXIF orientations 5-8, which swap width and height
    (display size <-> stored size); unchanged otherwise."""
    transposed = any(orientation == value for value in _TRANSPOSING_ORIENTATIONS)  # as _orient
    return (size[1], size[0]) if transposed else size


def _open(fp: io.BytesIO, prefix: bytes) -> Image.Image:
    """Identify the format and parse the header, without Pillow's global pixel limit.

    ``Image.open`` refuses (with ``DecompressionBombError``) anything over twice
    ``Image.MAX_IMAGE_PIXELS`` before reporting its size; such files are re-opened
    through the format registry so the size can be checked against the caller's limit
    and reported.
    """
    formats = _available_formats()
    try:
        return Image.open(fp, formats=formats)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(_describe_unidentified(prefix)) from exc
    except Image.DecompressionBombError as exc:
        image = _open_without_limit(fp, formats)
        if image is None:
            raise ImageDecodeError(f"decode: {_shorten(str(exc))}") from exc
        return image


def _available_formats() -> tuple[str, ...]:
    Image.init()
    _register_plugins()
    return tuple(name for name in SUPPORTED_FORMATS if name in Image.OPEN)


@functools.cache
def _register_plugins() -> None:
    """Register pillow-heif's HEIF opener with Pillow, once per process: at this module's
    import, so that whatever opens images with :data:`SUPPORTED_FORMATS` (the decoders here, a
    header read for the memory a decode takes) finds every one of them. libheif applies
    a HEIF's own rotation and mirroring and pillow-heif sets the EXIF orientation to 1, so
    orienting the image as for any other format does not turn it twice. Without pillow-heif,
    HEIF files are not recognised (``decode: not a recognised image format``)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # pragma: no cover - a dependency; absent only in a partial install
        logger.warning("pillow-heif is not installed: HEIC/HEIF images cannot be decoded")
        return
    register_heif_opener()


def _open_without_limit(fp: io.BytesIO, formats: tuple[str, ...]) -> Image.Image | None:
    """Header-only open through Pillow's plugin registry, as ``Image.open`` does."""
    fp.seek(0)
    head = fp.read(_ACCEPT_PREFIX_BYTES)
    for name in formats:
        try:
            factory, accept = Image.OPEN[name]
            verdict = accept(head) if accept else True
            if isinstance(verdict, str) or not verdict:  # a string is a warning: "no"
                continue
            fp.seek(0)
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error, KeyError, AttributeError):
            continue
    return None


def _check_pixel_count(size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"decode: image has no pixels ({width}x{height})")
    pixels = width * height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageDecodeError(
            f"decode: image is {width}x{height} = {pixels} pixels, over the limit of "
            f"{max_pixels} (raise the limit, --max-image-pixels, to allow it)"
        )


def _pillow_hard_limit() -> int | None:
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * limit


def _describe_unidentified(prefix: bytes) -> str:
    name = _sniff_format(prefix)
    if name is not None:
        return f"decode: truncated or corrupt {name} header"
    return f"decode: not a recognised image format (starts with {prefix!r})"


def _sniff_format(prefix: bytes) -> str | None:
    """Format name from a well-known signature, only to word error messages."""
    for magic, offset, name in _SIGNATURES:
        if prefix[offset : offset + len(magic)] == magic:
            return name
    return None


def _describe_failure(exc: Exception, prefix: bytes) -> str:
    text = str(exc)
    if isinstance(exc, EOFError) or "truncated" in text.lower():
        return "decode: truncated image data"
    kind = _sniff_format(prefix) or "image"
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"decode: corrupt {kind} data ({_shorten(detail)})"


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 3] + "..."


# --------------------------------------------------------------------------- orientation


def _exif_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag of ``image`` (XMP's as a fallback, as Pillow reads it).

    ``None`` when absent; unreadable EXIF is logged and ignored: the pixels are still good.
    """
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception as exc:  # corrupt EXIF must not lose a decodable image
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return None
    if isinstance(orientation, tuple) and orientation:
        orientation = orientation[0]
    return orientation


def _orient(array: np.ndarray, orientation: int | None) -> np.ndarray:
    """Rotate/flip ``array`` ([H, W, 3]) into display orientation for an EXIF ``orientation``.

    Same result as ``PIL.ImageOps.exif_transpose``; other values leave ``array`` as it is.
    """
    if orientation == 2:  # mirror horizontal
        return array[:, ::-1]
    if orientation == 3:  # rotate 180
        return array[::-1, ::-1]
    if orientation == 4:  # mirror vertical
        return array[::-1, :]
    if orientation == 5:  # transpose (mirror along the main diagonal)
        return array.transpose(1, 0, 2)
    if orientation == 6:  # rotate 90 clockwise
        return np.rot90(array, k=-1)
    if orientation == 7:  # transverse (mirror along the anti-diagonal)
        return array[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:  # rotate 90 counter-clockwise
        return np.rot90(array, k=1)
    return array


# --------------------------------------------------------------------------- conversion


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Reduce a PIL image of any mode to ``[H, W, 3]`` ``uint8`` RGB.

    The result may be a read-only or broadcast view; callers make the owned copy.
    """
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_uint16_to_uint8(np.asarray(image)))
    if mode == "I":  # 32-bit signed; Pillow uses it for 16-bit grey from some files
        values = np.clip(np.asarray(image), 0, np.iinfo(np.uint16).max)
        return _grey_to_rgb(_uint16_to_uint8(values))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(image), scale=1.0))
    if mode in _PREMULTIPLIED_MODES:  # drop alpha, like the straight-alpha modes
        channels = np.asarray(image)
        colour = channels[..., :1] if mode == "La" else channels[..., :3]
        return np.broadcast_to(colour, (*colour.shape[:2], 3))
    if mode == "LAB":
        return np.asarray(_lab_to_rgb(image))
    try:
        converted = image.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(f"decode: unsupported image mode {mode!r}") from exc
    return np.asarray(converted)


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    """CIE L*a*b* to sRGB through littlecms (Pillow's ``convert`` only copies channels)."""
    try:
        from PIL import ImageCms
    except ImportError as exc:
        raise ImageDecodeError("decode: LAB image needs Pillow built with littlecms") from exc
    transform = ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )
    return ImageCms.applyTransform(image, transform)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Reduce a numpy image (see :func:`to_rgb_array`) to ``[H, W, 3]`` ``uint8``; may be a view."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        channels = array[..., np.newaxis]
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        channels = array[..., :3]
    else:
        raise ImageDecodeError(
            f"decode: unsupported array shape {tuple(array.shape)} "
            "(expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4])"
        )
    if channels.shape[0] == 0 or channels.shape[1] == 0:
        raise ImageDecodeError(f"decode: image has no pixels (shape {tuple(array.shape)})")
    dtype = channels.dtype
    if dtype == np.uint8:
        pass
    elif dtype == np.uint16:
        channels = _uint16_to_uint8(channels)
    elif dtype == np.bool_:
        channels = channels.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(dtype, np.floating):
        channels = _float_to_uint8(channels, scale=255.0)
    else:
        raise ImageDecodeError(
            f"decode: unsupported array dtype {dtype} (expected uint8, uint16, float or bool)"
        )
    return np.broadcast_to(channels, (*channels.shape[:2], 3))


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """``0..65535`` -> ``0..255`` by the high byte, as darknet's loader reduces 16-bit PNG."""
    return (values.astype(np.uint16) >> UINT16_TO_UINT8_SHIFT).astype(np.uint8)


def _float_to_uint8(values: np.ndarray, *, scale: float) -> np.ndarray:
    """Scale, clip to ``[0, 255]`` and round; NaN -> 0."""
    scaled = np.nan_to_num(values.astype(np.float64) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """``[H, W]`` -> ``[H, W, 3]`` broadcast view."""
    return np.broadcast_to(grey[..., np.newaxis], (*grey.shape, 3))


def _owned_copy(array: np.ndarray) -> np.ndarray:
    """A new C-contiguous, writable ``uint8`` array that shares no memory with ``array``."""
    return np.array(array, dtype=np.uint8, order="C", copy=True)


_register_plugins()
