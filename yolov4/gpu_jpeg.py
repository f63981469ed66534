"""Batched JPEG decoding on a CUDA device (nvJPEG, through ``torchvision.io.decode_jpeg``).

Used when torchvision is installed beside a CUDA build of PyTorch; everything else keeps to
:mod:`yolov4.imageio` (Pillow), which stays the reference: a file goes to the GPU only when
:func:`gpu_decodable` has found, from its header alone, a baseline or progressive JPEG that
nvJPEG decodes to the same picture — YCbCr or grey (not CMYK or YCCK, which nvJPEG refuses),
within the pixel limit, and complete (nvJPEG fills a truncated file's missing rows with grey
where Pillow raises, so a file not ending in an EOI marker stays on the CPU, which reports it).

GPU results are ``[3, H, W]`` uint8 RGB on the device, in display orientation (EXIF applied by
torchvision as by Pillow). nvJPEG's IDCT is not libjpeg's: pixels differ by a few levels
(docs/performance.md has the measured differences), so detections differ within
``yolov4.compare.GPU_DECODE_TOLERANCE``; ``yolo-batch bench --check`` measures
it on the machine at hand.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence

import torch
from PIL import Image

logger = logging.getLogger(__name__)

#: JPEG markers: start of image, end of image.
_SOI = b"\xff\xd8\xff"
_EOI = b"\xff\xd9"
#: Frame markers nvJPEG decodes (baseline, extended and progressive Huffman), and the others.
_SOF_GPU = frozenset({0xC0, 0xC1, 0xC2})
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOS = 0xDA
_APP14 = 0xEE
#: Adobe APP14 colour transform 1: YCbCr (0 is RGB or CMYK, 2 is YCCK).
_ADOBE_YCBCR = 1
#: Offset of the transform byte: "Adobe", version (2 bytes), flags0 (2), flags1 (2).
_ADOBE_TRANSFORM_AT = 11
_SAMPLE_BITS = 8
#: Components of a frame nvJPEG decodes as Pillow does: grey, or YCbCr.
_GPU_COMPONENTS = frozenset({1, 3})
#: Bytes some writers leave after the EOI marker (padding); anything else means a file that
#: does not end where its data does, which the CPU path judges.
_TRAILING_PADDING = b"\x00\r\n "


@functools.cache
def gpu_jpeg_available(device: str) -> bool:
    """Whether ``device`` can decode JPEGs: CUDA, torchvision importable, and one decode of a
    small JPEG works there (a build without nvJPEG fails here, once, not per batch)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as exc:  # not installed, or built for another torch
        logger.info("GPU JPEG decoding unavailable: torchvision does not import (%s)", exc)
        return False
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "JPEG")
    try:
        data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        decode_jpeg([data], mode=ImageReadMode.RGB, device=device)
    except Exception as exc:
        logger.info("GPU JPEG decoding unavailable on %s: %s", device, exc)
        return False
    return True


def gpu_decodable(data: bytes, max_pixels: int | None) -> bool:
    """Whether ``data`` is a complete JPEG that nvJPEG decodes as Pillow would, within
    ``max_pixels``. ``False`` sends the file to the CPU decoder, which gives any error its
    proper message.

    Reads the markers up to the frame header and nothing else: this runs once per image on
    the I/O threads, where Pillow's fuller header parsing would hold the GIL long enough to
    starve the thread that feeds the GPU.
    """
    if not data.startswith(_SOI) or not data.rstrip(_TRAILING_PADDING).endswith(_EOI):
        return False
    frame = _frame_header(data)
    if frame is None:
        return False
    width, height, components = frame
    if components not in _GPU_COMPONENTS or width == 0 or height == 0:
        return False
    return max_pixels is None or width * height <= max_pixels


def _frame_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, components)`` from the JPEG's frame header, or ``None`` when the
    file is not an 8-bit baseline, extended or progressive Huffman JPEG that nvJPEG decodes
    as YCbCr or grey (lossless and arithmetic-coded frames, 12-bit samples, and Adobe files
    that declare RGB or CMYK colour transforms go to the CPU), or is malformed."""
    offset, end = 2, len(data)
    while offset + 4 <= end:
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if length < 2 or offset + 2 + length > end:
            return None
        if marker in _SOF_GPU or marker == _APP14:
            segment = data[offset + 4 : offset + 2 + length]
        if marker == _APP14 and _adobe_transform(segment) not in (None, _ADOBE_YCBCR):
            return None
        if marker in _SOF_GPU:
            if len(segment) < 6 or segment[0] != _SAMPLE_BITS:
                return None
            height = int.from_bytes(segment[1:3], "big")
            width = int.from_bytes(segment[3:5], "big")
            return width, height, segment[5]
        if marker in _SOF_OTHER or marker == _SOS:  # no frame nvJPEG decodes before the scan
            return None
        offset += 2 + length
    return None


def encoded(data: bytes) -> torch.Tensor:
    """A file's bytes as the ``[N]`` uint8 host tensor :func:`decode_jpegs` takes (a copy:
    torch wants writable memory)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_jpegs(
    files: Sequence[torch.Tensor], device: torch.device | str
) -> list[torch.Tensor | None]:
    """Decode JPEG files on ``device`` in one nvJPEG batch.

    ``files``: ``[N_i]`` uint8 host tensors (:func:`encoded`) of files that passed
    :func:`gpu_decodable`. Returns, per file, a ``[3, H, W]`` uint8 RGB tensor on ``device``
    in display orientation, or ``None`` where nvJPEG failed (the caller decodes those on the
    CPU). A batch that fails as a whole is retried file by file, so one bad file costs only
    itself.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = list(files)

    def decode(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        return decode_jpeg(
            batch, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True
        )

    try:
        return list(decode(tensors))
    except RuntimeError as exc:
        logger.debug("GPU batch of %d JPEGs failed (%s); decoding one by one", len(files), exc)
    results: list[torch.Tensor | None] = []
    for tensor in tensors:
        try:
            results.append(decode([tensor])[0])
        except RuntimeError:
            results.append(None)
    return results


def _adobe_transform(segment: bytes) -> int | None:
    """The colour transform of an Adobe APP14 segment's payload, or ``None`` for another APP14."""
    if segment.startswith(b"Adobe") and len(segment) >= _ADOBE_TRANSFORM_AT + 1:
        return segment[_ADOBE_TRANSFORM_AT]
    return None
