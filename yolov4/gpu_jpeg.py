"""Batched JPEG decoding on a CUDA device (nvJPEG, through ``torchvision.io.decode_jpeg``).

Used when torchvision is installed beside a CUDA build of PyTorch; everything else keeps to
:mod:`yolov4.imageio` (Pillow), which stays the reference: a file goes to the GPU only when
:func:`gpu_decodable` has found, from its header alone, a baseline or progressive JPEG that
nvJPEG decodes to the same picture — YCbCr or grey (not CMYK or YCCK, which nvJPEG refuses),
within the pixel limit, and complete (nvJPEG fills a truncated file's missing rows with grey
where Pillow raises, so a file not ending in an EOI marker stays on the CPU, which reports it).

GPU results are ``[3, H, W]`` uint8 RGB on the device, in display orientation (EXIF applied by
torchvision as by Pillow). nvJPEG's IDCT is not libjpeg's: pixels differ by a few levels (mean
absolute difference about 0.3 on a 1280x720 photo, largest 17 on an H200), so detections
differ within ``yolov4.compare.GPU_DECODE_TOLERANCE``; ``yolo-batch bench --check`` measures
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
#: Colour modes Pillow reports for JPEGs nvJPEG decodes to RGB.
_GPU_MODES = frozenset({"RGB", "L"})
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
    ``max_pixels``; reads the header only. ``False`` sends the file to the CPU decoder, which
    gives any error its proper message."""
    if not data.startswith(_SOI) or not data.rstrip(_TRAILING_PADDING).endswith(_EOI):
        return False
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            width, height = image.size
            if image.mode not in _GPU_MODES:
                return False
    except Exception:  # Pillow cannot even read the header: the CPU path says why
        return False
    return max_pixels is None or width * height <= max_pixels


def decode_jpegs(datas: Sequence[bytes], device: torch.device | str) -> list[torch.Tensor | None]:
    """Decode JPEG files on ``device`` in one nvJPEG batch.

    ``datas``: files that passed :func:`gpu_decodable`. Returns, per file, a ``[3, H, W]``
    uint8 RGB tensor on ``device`` in display orientation, or ``None`` where nvJPEG failed
    (the caller decodes those on the CPU). A batch that fails as a whole is retried file by
    file, so one bad file costs only itself.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]

    def decode(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        return decode_jpeg(
            batch, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True
        )

    try:
        return list(decode(tensors))
    except RuntimeError as exc:
        logger.debug("GPU batch of %d JPEGs failed (%s); decoding one by one", len(datas), exc)
    results: list[torch.Tensor | None] = []
    for tensor in tensors:
        try:
            results.append(decode([tensor])[0])
        except RuntimeError:
            results.append(None)
    return results
