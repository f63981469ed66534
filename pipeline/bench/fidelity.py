"""The ``--check``: detections of each fast path (half precision, GPU decoding) against the
reference path's (fp32, Pillow decoding), within :mod:`yolov4.compare`'s tolerances."""

from __future__ import annotations

import io
import logging
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.bench.images import JPEG_QUALITY, ImageSet
from pipeline.bench.models import BenchModel
from pipeline.bench.timing import free_device_memory
from yolov4 import imageio
from yolov4.compare import (
    GPU_DECODE_TOLERANCE,
    PRECISION_TOLERANCES,
    Tolerance,
    max_differences,
    mismatches,
)
from yolov4.detector import Detection
from yolov4.gpu_jpeg import decode_jpegs, encoded, gpu_decodable, gpu_jpeg_available
from yolov4.imageio import EXIF_ORIENTATION_TAG

logger = logging.getLogger(__name__)

#: Sample photos used for the fidelity check when there are no sample photos to be had.
CHECK_FALLBACK_IMAGES = 4
MAX_REPORTED_MISMATCHES = 10
#: Benchmark JPEGs decoded both ways by the GPU-decoding check (plus the sample photos).
GPU_CHECK_IMAGES = 16
#: EXIF orientation 6: stored rotated 90 degrees counter-clockwise, displayed rotated back.
EXIF_ROTATE_90_CW = 6


def fidelity_check(
    model: BenchModel, images: ImageSet, precisions: Sequence[str], device: torch.device
) -> list[dict]:
    """Detections of each half precision against fp32's, on the same decoded sample photos
    (or the first benchmark images when the photos are not available), same device."""
    photos = images.photos or [imageio.decode_image(d) for d in images.data[:CHECK_FALLBACK_IMAGES]]
    where = "the sample photos" if images.photos else "the first benchmark images"
    detector = model.build(device, "fp32")
    reference = detector.detect(photos)
    del detector
    rows = []
    for precision in precisions:
        if precision == "fp32":
            continue
        detector = model.build(device, precision)
        found = detector.detect(photos)
        threshold = detector.conf_threshold
        del detector
        free_device_memory(device)
        row = _fidelity_row(
            reference, found, PRECISION_TOLERANCES[precision], threshold, precision=precision,
            reference="fp32", images=len(photos), on=where,
        )  # fmt: skip
        rows.append(row)
        logger.info("fidelity %s vs fp32: %s", precision, "PASS" if row["passed"] else "FAIL")
    if device.type == "cuda" and gpu_jpeg_available(str(device)):
        rows.append(gpu_decode_check(model, images, device))
    return rows


def gpu_decode_check(model: BenchModel, images: ImageSet, device: torch.device) -> dict:
    """Detections (fp32) on JPEGs decoded by nvJPEG against the same files decoded by Pillow:
    the benchmark's JPEGs and one EXIF-rotated copy of each sample photo."""
    files = [data for data in images.data[:GPU_CHECK_IMAGES] if gpu_decodable(data, None)]
    files += [_exif_rotated(photo) for photo in images.photos]
    detector = model.build(device, "fp32")
    to_tensor = lambda rgb: torch.from_numpy(rgb).permute(2, 0, 1)  # noqa: E731
    on_cpu = [to_tensor(imageio.decode_image(data)) for data in files]
    on_gpu = decode_jpegs([encoded(data) for data in files], device)
    failed = sum(image is None for image in on_gpu)
    sizes_differ = sum(g is not None and g.shape != c.shape for g, c in zip(on_gpu, on_cpu))
    pairs = [(c, g) for c, g in zip(on_cpu, on_gpu) if g is not None]
    reference = [detector.per_image(detector.detect_batch([c]))[0] for c, _ in pairs]
    found = [detector.per_image(detector.detect_batch([g]))[0] for _, g in pairs]
    pixel_diff = [(g.cpu().int() - c.int()).abs() for c, g in pairs if g.shape == c.shape]
    threshold = detector.conf_threshold
    del detector
    free_device_memory(device)
    extra = [f"{failed} file(s) nvJPEG could not decode"] * bool(failed)
    extra += [f"{sizes_differ} file(s) decoded to another size"] * bool(sizes_differ)
    row = _fidelity_row(
        reference, found, GPU_DECODE_TOLERANCE, threshold, extra_problems=extra,
        precision="fp32", decode="gpu", reference="Pillow decode", images=len(files),
        on="the benchmark's JPEGs and EXIF-rotated sample photos",
        max_pixel_diff=max((int(d.max()) for d in pixel_diff), default=0),
        mean_pixel_diff=statistics.fmean(float(d.float().mean()) for d in pixel_diff)
        if pixel_diff
        else 0.0,
    )  # fmt: skip
    logger.info("fidelity of GPU decoding vs Pillow: %s", "PASS" if row["passed"] else "FAIL")
    return row


def _fidelity_row(
    expected: Sequence[list[Detection]],
    found: Sequence[list[Detection]],
    tolerance: Tolerance,
    threshold: float,
    *,
    extra_problems: Sequence[str] = (),
    **fields: Any,
) -> dict:
    """One fidelity row: ``fields`` (what was compared, on what), the worst differences, the
    mismatches of ``found`` from ``expected`` beyond ``tolerance`` (plus ``extra_problems``)
    and the verdict."""
    problems = [
        f"image {index}: {problem}"
        for index, (ref, fast) in enumerate(zip(expected, found))
        for problem in mismatches(ref, fast, tolerance, threshold)
    ]
    problems += extra_problems
    worst = [max_differences(ref, fast) for ref, fast in zip(expected, found)]
    return {
        **fields,
        "reference_detections": sum(len(ref) for ref in expected),
        "detections": sum(len(fast) for fast in found),
        "max_score_diff": max((score for score, _ in worst), default=0.0),
        "min_iou": min((overlap for _, overlap in worst), default=1.0),
        "score_tolerance": tolerance.score_tol,
        "min_iou_tolerance": tolerance.min_iou,
        "mismatch_count": len(problems),
        "mismatches": problems[:MAX_REPORTED_MISMATCHES],
        "passed": not problems,
    }


def _exif_rotated(photo: np.ndarray) -> bytes:
    """A JPEG of ``photo`` stored rotated with EXIF orientation 6, so that its display
    orientation is ``photo`` again (both decoders must apply the tag)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_90_CW
    buffer = io.BytesIO()
    Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90).save(
        buffer, "JPEG", quality=JPEG_QUALITY, exif=exif
    )
    return buffer.getvalue()
