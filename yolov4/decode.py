"""darknet's ``[yolo]`` layer decoding (``new_coords=0``), vectorised over the batch.

For head output channels ``a * (5 + C) + k`` at grid cell ``(row, col)`` of an ``H x W`` grid,
with ``s = scale_x_y`` and the head's masked anchors ``(anchor_w, anchor_h)`` in input pixels:

- ``x' = sigmoid(tx) * s - 0.5 * (s - 1)``; ``bx = (col + x') / W`` (same for y with H);
- ``bw = exp(tw) * anchor_w / net_w``; ``bh = exp(th) * anchor_h / net_h``;
- ``objectness = sigmoid(to)``; ``class_prob[c] = objectness * sigmoid(tc)``.

Rows are ordered ``(row * W + col) * A + a`` within a head (OpenCV's order), heads in cfg order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yolov4.config import ModelConfig


@dataclass
class RawPredictions:
    """Decoded rows for a batch.

    - ``boxes``: ``[B, N, 4]`` float32, ``(cx, cy, w, h)`` relative to the network input (0..1);
    - ``objectness``: ``[B, N]``;
    - ``class_probs``: ``[B, N, C]``, ``objectness * sigmoid(class logit)``, not thresholded.
    """

    boxes: torch.Tensor
    objectness: torch.Tensor
    class_probs: torch.Tensor


def decode_head(
    output: torch.Tensor,
    anchors: torch.Tensor,
    scale_x_y: float,
    input_size: tuple[int, int],
) -> RawPredictions:
    """Decode one head.

    ``output``: ``[B, A * (5 + C), H, W]``; ``anchors``: ``[A, 2]`` (w, h) in input pixels;
    ``input_size``: ``(net_w, net_h)``. Computed in float32 whatever the input dtype.
    """
    batch, channels, height, width = output.shape
    num_anchors = anchors.shape[0]
    attrs = channels // num_anchors
    # [B, A, 5+C, H, W] -> [B, H, W, A, 5+C]
    p = output.float().view(batch, num_anchors, attrs, height, width).permute(0, 3, 4, 1, 2)
    rows = torch.arange(height, device=output.device, dtype=torch.float32).view(1, height, 1, 1)
    cols = torch.arange(width, device=output.device, dtype=torch.float32).view(1, 1, width, 1)
    grid_offset = 0.5 * (scale_x_y - 1.0)
    net_w, net_h = input_size
    cx = (cols + torch.sigmoid(p[..., 0]) * scale_x_y - grid_offset) / width
    cy = (rows + torch.sigmoid(p[..., 1]) * scale_x_y - grid_offset) / height
    anchors = anchors.to(device=output.device, dtype=torch.float32)
    w = torch.exp(p[..., 2]) * anchors[:, 0] / net_w
    h = torch.exp(p[..., 3]) * anchors[:, 1] / net_h
    objectness = torch.sigmoid(p[..., 4])
    class_probs = objectness.unsqueeze(-1) * torch.sigmoid(p[..., 5:])
    boxes = torch.stack([cx, cy, w, h], dim=-1)
    n = height * width * num_anchors
    return RawPredictions(
        boxes.reshape(batch, n, 4),
        objectness.reshape(batch, n),
        class_probs.reshape(batch, n, attrs - 5),
    )


def decode_outputs(outputs: list[torch.Tensor], config: ModelConfig) -> RawPredictions:
    """Decode every head of a model (cfg order) and concatenate the rows.

    The network input size is inferred from each head's grid and stride, so one config serves
    any input size.
    """
    decoded = []
    all_anchors = torch.tensor(config.anchors, dtype=torch.float32)
    for output, head in zip(outputs, config.heads):
        height, width = output.shape[-2:]
        input_size = (width * head.stride, height * head.stride)
        anchors = all_anchors[list(head.mask)]
        decoded.append(decode_head(output, anchors, head.scale_x_y, input_size))
    return RawPredictions(
        torch.cat([d.boxes for d in decoded], dim=1),
        torch.cat([d.objectness for d in decoded], dim=1),
        torch.cat([d.class_probs for d in decoded], dim=1),
    )
