"""Resizing decoded images into the network input, and the inverse box transform.

Resize modes (all on the device, from uint8 ``[3, H, W]`` RGB):

- ``darknet`` (default): darknet's own ``resize_image`` — bilinear in float on ``[0, 1]`` values
  with ``align_corners=True`` semantics, no antialiasing, no rounding. With the default
  post-processing this reproduces darknet's ``detector test`` output (reference NOTES).
- ``bilinear``: ``align_corners=False`` bilinear, equal to OpenCV ``INTER_LINEAR`` (what
  ``cv2.dnn.blobFromImage`` does) to within uint8 rounding. Differs from darknet by up to ~0.07
  in class score on large photos.
- ``letterbox``: darknet's ``letterbox_image`` — scale to fit keeping the aspect ratio (darknet
  resize), pad with 0.5 grey, centred. Use it for models trained with ``letter_box=1``.

The inverse transform maps boxes relative to the network input back to boxes relative to the
original image (``correct_yolo_boxes``): ``rel_image = (rel_input - offset) * scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RESIZE_DARKNET = "darknet"
RESIZE_BILINEAR = "bilinear"
RESIZE_LETTERBOX = "letterbox"
RESIZE_MODES = (RESIZE_DARKNET, RESIZE_BILINEAR, RESIZE_LETTERBOX)
#: darknet's letterbox padding value.
LETTERBOX_FILL = 0.5
_UINT8_MAX = 255.0


@dataclass
class ImageTransforms:
    """Per-image geometry of a prepared batch.

    - ``image_sizes``: ``[B, 2]`` float32 ``(width, height)`` of the original images;
    - ``offset``, ``scale``: ``[B, 2]`` float32 ``(x, y)``; a point relative to the network
      input maps to ``(p - offset) * scale`` relative to the image.
    """

    image_sizes: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor


def _resize(image: torch.Tensor, size_hw: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """``[3, H, W]`` float -> ``[3, h, w]`` bilinear, no antialiasing."""
    if tuple(image.shape[-2:]) == tuple(size_hw):
        return image
    return F.interpolate(
        image.unsqueeze(0), size=size_hw, mode="bilinear", align_corners=align_corners
    ).squeeze(0)


def letterbox_size(image_wh: tuple[int, int], input_wh: tuple[int, int]) -> tuple[int, int]:
    """darknet's letterbox content size ``(new_w, new_h)`` (integer arithmetic as in C).

    At least one pixel on each side: darknet's arithmetic gives 0 for images far thinner than
    the input (20000x8 into 416x416), which no resize can produce.
    """
    w, h = image_wh
    net_w, net_h = input_wh
    if net_w / w < net_h / h:
        return net_w, max(1, (h * net_w) // w)
    return max(1, (w * net_h) // h), net_h


def prepare_batch(
    images: Sequence[torch.Tensor],
    input_size: tuple[int, int],
    mode: str = RESIZE_DARKNET,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, ImageTransforms]:
    """Resize decoded images into one network batch.

    ``images``: each ``[3, H_i, W_i]`` uint8 RGB (any device; moved to ``device`` as uint8 so the
    host-to-device copy is a quarter of float32's). ``input_size``: ``(net_w, net_h)``.
    Returns the batch ``[B, 3, net_h, net_w]`` float32 in ``[0, 1]`` and the transforms.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if not images:
        raise ValueError("prepare_batch needs at least one image")
    net_w, net_h = input_size
    device = torch.device(device) if device is not None else images[0].device
    batch = torch.empty((len(images), 3, net_h, net_w), dtype=torch.float32, device=device)
    sizes, offsets, scales = [], [], []
    for index, image in enumerate(images):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"image {index} must be a uint8 [3, H, W] RGB tensor, got {image.dtype} "
                f"{list(image.shape)}"
            )
        height, width = image.shape[1:]
        pixels = image.to(device, non_blocking=True).float().div_(_UINT8_MAX)
        sizes.append((width, height))
        if mode == RESIZE_LETTERBOX:
            new_w, new_h = letterbox_size((width, height), input_size)
            batch[index].fill_(LETTERBOX_FILL)
            top, left = (net_h - new_h) // 2, (net_w - new_w) // 2
            batch[index, :, top : top + new_h, left : left + new_w] = _resize(
                pixels, (new_h, new_w), align_corners=True
            )
            offsets.append(((net_w - new_w) / 2 / net_w, (net_h - new_h) / 2 / net_h))
            scales.append((net_w / new_w, net_h / new_h))
        else:
            batch[index] = _resize(pixels, (net_h, net_w), align_corners=mode == RESIZE_DARKNET)
            offsets.append((0.0, 0.0))
            scales.append((1.0, 1.0))
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.float32, device=device)  # noqa: E731
    return batch, ImageTransforms(as_tensor(sizes), as_tensor(offsets), as_tensor(scales))
