"""Comparing the detections of a fast path (fp16/bf16, JPEG draft decoding, GPU decoding) with
those of the fp32 reference path, within a stated tolerance (the tests and ``yolo-batch bench``
use it).

Every reference detection must be found again (same class, IoU at least ``min_iou``, score
within ``score_tol``), and every found detection must match a reference one; the exception
is a detection whose score is within ``score_tol`` of the confidence threshold, which a
rounding difference may legitimately push to the other side of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from yolov4.detector import Detection
from yolov4.postprocess import DEFAULT_CONF_THRESHOLD


@dataclass(frozen=True)
class Tolerance:
    """How far a fast path's detection may be from its fp32 counterpart.

    ``score_tol``: largest absolute difference of score; ``min_iou``: smallest IoU of boxes.
    """

    score_tol: float
    min_iou: float


def iou(a: Detection, b: Detection) -> float:
    """Intersection over union of two detections' ``(x_min, y_min, x_max, y_max)`` boxes."""
    width = max(0.0, min(a.x_max, b.x_max) - max(a.x_min, b.x_min))
    height = max(0.0, min(a.y_max, b.y_max) - max(a.y_min, b.y_min))
    inter = width * height
    area = lambda d: (d.x_max - d.x_min) * (d.y_max - d.y_min)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def mismatches(
    reference: Sequence[Detection],
    found: Sequence[Detection],
    tolerance: Tolerance,
    threshold: float = DEFAULT_CONF_THRESHOLD,
) -> list[str]:
    """What differs beyond ``tolerance`` between two images' detections (empty: within it)."""
    problems: list[str] = []
    borderline = lambda d: abs(d.score - threshold) <= tolerance.score_tol  # noqa: E731

    def unmatched(side: Sequence[Detection], other: Sequence[Detection], label: str) -> None:
        for det in side:
            same_class = [o for o in other if o.class_id == det.class_id]
            best = max(same_class, key=lambda o: iou(det, o), default=None)
            if best is not None and iou(det, best) >= tolerance.min_iou:
                if abs(best.score - det.score) > tolerance.score_tol:
                    problems.append(
                        f"{label} {det.class_name} score {det.score:.4f} vs {best.score:.4f}"
                    )
            elif not borderline(det):
                closest = f"best IoU {iou(det, best):.4f}" if best is not None else "none"
                problems.append(f"{label} {det.class_name} {det.score:.4f} unmatched ({closest})")

    unmatched(reference, found, "reference")
    unmatched(found, reference, "found")
    return problems


def max_differences(
    reference: Sequence[Detection], found: Sequence[Detection]
) -> tuple[float, float]:
    """``(largest score difference, smallest IoU)`` over reference detections matched by class
    and best IoU: the figures to state a tolerance from."""
    worst_score, worst_iou = 0.0, 1.0
    for det in reference:
        same_class = [o for o in found if o.class_id == det.class_id]
        best = max(same_class, key=lambda o: iou(det, o), default=None)
        if best is None:
            continue
        worst_score = max(worst_score, abs(best.score - det.score))
        worst_iou = min(worst_iou, iou(det, best))
    return worst_score, worst_iou


#: The stated tolerances of the half precisions against fp32, on yolov4-tiny's detections of
#: the sample photos (what "within" means: :func:`mismatches`). bf16's is the wider (its 8-bit
#: mantissa is the coarser). ``yolo-batch bench`` checks the same on the machine it runs on,
#: CUDA included; docs/performance.md has measured differences.
PRECISION_TOLERANCES = {
    "fp16": Tolerance(score_tol=0.01, min_iou=0.99),
    "bf16": Tolerance(score_tol=0.04, min_iou=0.97),
}

#: The stated tolerance of JPEG draft decoding (``yolov4.imageio.decode_image_reduced`` with the
#: default ``draft_min_size``, factor 2) against full decoding. Wider than the precisions'
#: because it is not a rounding difference: the pixels are resampled differently (libjpeg
#: averages each s x s block; the full path's resize samples without antialiasing), and
#: yolov4-tiny's weak detections are that sensitive to resampling. Within it, every detection
#: scoring more than ``score_tol`` above the confidence threshold (0.60 at darknet's 0.25) is
#: found again; the measured spread, and how it compares with decoding the photo stored at
#: another size, is in docs/performance.md ("JPEG draft decoding").
DRAFT_TOLERANCE = Tolerance(score_tol=0.35, min_iou=0.65)

#: The stated tolerance of GPU JPEG decoding (nvJPEG) against Pillow's, fp32 both: nvJPEG's
#: IDCT differs from libjpeg's by a few levels per pixel, a rounding-sized change of the input
#: (docs/performance.md, "GPU", has the measured pixel differences). ``yolo-batch bench
#: --check`` measures it on the GPU at hand.
GPU_DECODE_TOLERANCE = Tolerance(score_tol=0.05, min_iou=0.95)
