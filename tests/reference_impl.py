"""A plain float64 implementation of darknet's decode and NMS, written from the reference
notes with loops and no vectorisation, to check the library's batched versions against."""

from __future__ import annotations

import math

import numpy as np


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def decode_head_reference(output: np.ndarray, anchors, scale_x_y: float, net_wh) -> np.ndarray:
    """One image's head ``[A * (5 + C), H, W]`` -> rows ``[H * W * A, 5 + C]``:
    cx, cy, w, h (relative to the input), objectness, objectness x sigmoid(class)."""
    channels, height, width = output.shape
    num_anchors = len(anchors)
    attrs = channels // num_anchors
    rows = []
    for row in range(height):
        for col in range(width):
            for a, (anchor_w, anchor_h) in enumerate(anchors):
                t = output[a * attrs : (a + 1) * attrs, row, col].astype(np.float64)
                x = sigmoid(t[0]) * scale_x_y - 0.5 * (scale_x_y - 1)
                y = sigmoid(t[1]) * scale_x_y - 0.5 * (scale_x_y - 1)
                obj = sigmoid(t[4])
                rows.append(
                    [
                        (col + x) / width,
                        (row + y) / height,
                        math.exp(t[2]) * anchor_w / net_wh[0],
                        math.exp(t[3]) * anchor_h / net_wh[1],
                        obj,
                        *[obj * sigmoid(v) for v in t[5:]],
                    ]
                )
    return np.array(rows, dtype=np.float64)


def overlap_reference(a, b, kind: str, beta: float = 0.6) -> float:
    """IoU or darknet's DIoU of two (x_min, y_min, x_max, y_max) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    iou = inter / union if union > 0 else 0.0
    if kind == "iou":
        return iou
    cw = max(a[2], b[2]) - min(a[0], b[0])
    ch = max(a[3], b[3]) - min(a[1], b[1])
    c = cw * cw + ch * ch
    if c == 0:
        return iou
    d = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    return iou - (d / c) ** beta


def nms_reference(boxes, scores, threshold: float, kind: str, beta: float = 0.6) -> list[int]:
    """darknet's greedy NMS for one class: indices kept, by descending score (ties: index)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    alive = {i: True for i in order}
    kept = []
    for pos, i in enumerate(order):
        if not alive[i]:
            continue
        kept.append(i)
        for j in order[pos + 1 :]:
            if alive[j] and overlap_reference(boxes[i], boxes[j], kind, beta) > threshold:
                alive[j] = False
    return kept


def detections_reference(
    rows: np.ndarray,
    image_wh,
    thresh: float,
    nms: float,
    kind: str,
    beta: float = 0.6,
    offset=(0.0, 0.0),
    scale=(1.0, 1.0),
):
    """darknet's detector-test rule on decoded rows of one image.

    Returns ``[(class_id, score, (x_min, y_min, x_max, y_max) in pixels, unclipped)]``.
    """
    out = []
    num_classes = rows.shape[1] - 5
    for c in range(num_classes):
        boxes, scores = [], []
        for r in rows:
            if r[4] > thresh and r[5 + c] > thresh:
                cx = (r[0] - offset[0]) * scale[0]
                cy = (r[1] - offset[1]) * scale[1]
                w, h = r[2] * scale[0], r[3] * scale[1]
                boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
                scores.append(float(r[5 + c]))
        for i in nms_reference(boxes, scores, nms, kind, beta):
            x0, y0, x1, y1 = boxes[i]
            width, height = image_wh
            out.append((c, scores[i], (x0 * width, y0 * height, x1 * width, y1 * height)))
    return out
