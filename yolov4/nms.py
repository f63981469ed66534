"""Greedy per-class non-maximum suppression, batched and vectorised on the device.

darknet's rule (``do_nms_sort`` / ``diounms_sort``): within one group (image x class), visit
boxes by descending score; a box still alive suppresses every later box whose overlap with it
exceeds the threshold. The overlap is IoU, or for ``nms_kind=greedynms`` DIoU:
``IoU - (d^2 / c^2) ** beta`` with ``d`` the distance between centres, ``c`` the diagonal of
the smallest enclosing box and ``beta = 0.6``.

Written by hand because torchvision's ``batched_nms`` has no DIoU variant, and torchvision is
optional here. Instead of a per-box loop, each group's pairwise "would suppress" matrix is built
at once and the kept set is found by fixed-point iteration: ``keep[i] = not any(keep[j] and
suppresses[j, i] for j before i)``. Box ``i``'s state is final once every earlier box's is, so
the iteration ends after at most (longest suppression chain) steps, each a batched tensor op.
Ties in score keep input order.
"""

from __future__ import annotations

import torch

from yolov4.config import DEFAULT_DIOU_BETA, NMS_DIOU, NMS_IOU

#: Upper bound on pairwise-matrix elements materialised at once (bool + float32 ~ 5 B each).
MAX_PAIRWISE_ELEMENTS = 1 << 24
#: Candidates kept per (image, class) group before NMS, highest scores first. Only reached at
#: very low thresholds (e.g. 0.001 for mAP evaluation); darknet has no such cap.
MAX_CANDIDATES_PER_GROUP = 4096


def pairwise_overlap(
    a: torch.Tensor, b: torch.Tensor, kind: str = NMS_IOU, beta: float = DEFAULT_DIOU_BETA
) -> torch.Tensor:
    """IoU or DIoU between every box of ``a`` ``[..., N, 4]`` and ``b`` ``[..., M, 4]``.

    Boxes are ``(x_min, y_min, x_max, y_max)``; result ``[..., N, M]``.
    """
    a = a.unsqueeze(-2)
    b = b.unsqueeze(-3)
    inter_w = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    inter_h = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)
    if kind == NMS_IOU:
        return iou
    if kind != NMS_DIOU:
        raise ValueError(f"unknown NMS kind {kind!r}; expected {NMS_IOU!r} or {NMS_DIOU!r}")
    enclose_w = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    enclose_h = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    diagonal_sq = enclose_w**2 + enclose_h**2
    centre_dx = (a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) / 2
    centre_dy = (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) / 2
    ratio = (centre_dx**2 + centre_dy**2) / diagonal_sq.clamp(min=torch.finfo(iou.dtype).tiny)
    # darknet's box_diou returns plain IoU when the enclosing box is degenerate (c == 0).
    return torch.where(diagonal_sq > 0, iou - ratio.pow(beta), iou)


def batched_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    threshold: float,
    kind: str = NMS_DIOU,
    beta: float = DEFAULT_DIOU_BETA,
) -> torch.Tensor:
    """Greedy NMS independently within each group.

    ``boxes`` ``[K, 4]`` (x_min, y_min, x_max, y_max), ``scores`` ``[K]``, ``groups`` ``[K]``
    int64 (e.g. ``image * num_classes + class``). Returns the kept indices ``[M]`` (int64),
    ordered by group, then by descending score.
    """
    device = boxes.device
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[order]
    _, counts = torch.unique_consecutive(sorted_groups, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=device) - torch.repeat_interleave(starts, counts)
    group_index = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    within_cap = rank < MAX_CANDIDATES_PER_GROUP
    order, rank, group_index = order[within_cap], rank[within_cap], group_index[within_cap]
    width = int(min(int(counts.max()), MAX_CANDIDATES_PER_GROUP))
    num_groups = counts.numel()
    # padded[g, r] = input index of the r-th best box of group g, or -1.
    padded = torch.full((num_groups, width), -1, dtype=torch.int64, device=device)
    padded[group_index, rank] = order
    groups_per_chunk = max(1, MAX_PAIRWISE_ELEMENTS // (width * width))
    kept = [
        _nms_padded(boxes, padded[start : start + groups_per_chunk], threshold, kind, beta)
        for start in range(0, num_groups, groups_per_chunk)
    ]
    return torch.cat(kept)


def _nms_padded(
    boxes: torch.Tensor, padded: torch.Tensor, threshold: float, kind: str, beta: float
) -> torch.Tensor:
    """NMS for ``padded`` ``[G, K]`` index rows (sorted by score, ``-1`` = empty slot)."""
    valid = padded >= 0
    group_boxes = boxes[padded.clamp(min=0)]  # [G, K, 4]
    overlap = pairwise_overlap(group_boxes, group_boxes, kind, beta)  # [G, K, K]
    width = padded.shape[1]
    later = torch.ones(width, width, dtype=torch.bool, device=boxes.device).triu(diagonal=1)
    suppresses = (overlap > threshold) & later & valid.unsqueeze(1)
    keep = valid
    for _ in range(width):
        suppressed = (keep.unsqueeze(2) & suppresses).any(dim=1)
        new_keep = valid & ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return padded[keep]
