"""From decoded rows to final detections: thresholds, NMS, mapping to image pixels.

darknet's ``detector test`` rule (reference NOTES): a row is a candidate when its objectness
exceeds the threshold; each of its classes whose probability (objectness x class) exceeds the
threshold becomes a detection (one box may carry several classes); greedy NMS per class on
boxes relative to the image; boxes scaled to pixels. Unlike darknet, final boxes are clipped
to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yolov4.config import DEFAULT_DIOU_BETA, NMS_DIOU
from yolov4.decode import RawPredictions
from yolov4.nms import batched_nms
from yolov4.preprocess import ImageTransforms

#: darknet ``detector test`` defaults.
DEFAULT_CONF_THRESHOLD = 0.25
DEFAULT_NMS_THRESHOLD = 0.45
DEFAULT_MAX_DETECTIONS = 300


@dataclass
class Detections:
    """Final detections of a batch, flat (one row per detection), on one device.

    - ``boxes``: ``[N, 4]`` float32 ``(x_min, y_min, x_max, y_max)`` in original-image pixels;
    - ``scores``: ``[N]`` float32, objectness x class probability;
    - ``class_ids``: ``[N]`` int64;
    - ``image_index``: ``[N]`` int64, the row's image in the batch.

    Rows are ordered by image, then by descending score.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    image_index: torch.Tensor
    num_images: int

    def to(self, device: torch.device | str) -> Detections:
        return Detections(
            self.boxes.to(device),
            self.scores.to(device),
            self.class_ids.to(device),
            self.image_index.to(device),
            self.num_images,
        )

    def counts(self) -> torch.Tensor:
        """``[num_images]`` int64: detections per image."""
        return torch.bincount(self.image_index, minlength=self.num_images)

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image: ``(boxes [n, 4], scores [n], class_ids [n])``."""
        sizes = self.counts().tolist()
        return list(
            zip(
                self.boxes.split(sizes),
                self.scores.split(sizes),
                self.class_ids.split(sizes),
            )
        )


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` ``(cx, cy, w, h)`` -> ``(x_min, y_min, x_max, y_max)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def postprocess(
    predictions: RawPredictions,
    transforms: ImageTransforms,
    *,
    conf_threshold: float = DEFAULT_CONF_THRESHOLD,
    nms_threshold: float = DEFAULT_NMS_THRESHOLD,
    nms_kind: str = NMS_DIOU,
    nms_beta: float = DEFAULT_DIOU_BETA,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    class_mask: torch.Tensor | None = None,
    clip: bool = True,
) -> Detections:
    """Thresholds, per-class NMS and the mapping to pixels, for a whole batch on its device.

    ``class_mask``: optional ``[C]`` bool, the classes to keep (filtered before NMS).
    """
    probs = predictions.class_probs
    batch, _, num_classes = probs.shape
    candidate = (predictions.objectness > conf_threshold).unsqueeze(-1) & (probs > conf_threshold)
    if class_mask is not None:
        candidate &= class_mask.to(candidate.device).view(1, 1, -1)
    image_idx, row_idx, class_idx = candidate.nonzero(as_tuple=True)
    scores = probs[image_idx, row_idx, class_idx]
    # Boxes relative to the original image (darknet's correct_yolo_boxes), as corners.
    rel = predictions.boxes[image_idx, row_idx]
    offset, scale = transforms.offset[image_idx], transforms.scale[image_idx]
    centres = (rel[:, :2] - offset) * scale
    sizes = rel[:, 2:] * scale
    boxes = cxcywh_to_xyxy(torch.cat([centres, sizes], dim=1))
    keep = batched_nms(
        boxes, scores, image_idx * num_classes + class_idx, nms_threshold, nms_kind, nms_beta
    )
    # batched_nms orders by (image, class) then score; re-sort by image then score.
    keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
    keep = keep[torch.sort(image_idx[keep], stable=True).indices]
    image_of_kept = image_idx[keep]
    counts = torch.bincount(image_of_kept, minlength=batch)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[image_of_kept]
    keep = keep[rank < max_detections]
    image_of_kept = image_idx[keep]
    pixels = boxes[keep] * transforms.image_sizes[image_of_kept].repeat(1, 2)
    if clip:
        limits = transforms.image_sizes[image_of_kept]
        pixels = torch.minimum(pixels.clamp(min=0), limits.repeat(1, 2))
    return Detections(pixels, scores[keep], class_idx[keep], image_of_kept, batch)
