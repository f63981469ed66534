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
#: Most pixels normalised and resized in one call, by device type. On CUDA one call per group
#: of same-sized images saves kernel launches; on CPU one image per call keeps the float copy
#: small (a batch of 8 full-HD photos would be a fresh 200 MB allocation per batch).
_GROUP_PIXELS = {"cuda": 64_000_000}


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


def _resize(images: torch.Tensor, size_hw: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """``[n, 3, H, W]`` float -> ``[n, 3, h, w]`` bilinear, no antialiasing."""
    if tuple(images.shape[-2:]) == tuple(size_hw):
        return images
    return F.interpolate(images, size=size_hw, mode="bilinear", align_corners=align_corners)


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
    *,
    dtype: torch.dtype = torch.float32,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[torch.Tensor, ImageTransforms]:
    """Resize decoded images into one network batch.

    ``images``: each ``[3, H_i, W_i]`` uint8 RGB, on the host or already on ``device`` (GPU
    decoding). Host images go to the device as uint8 (a quarter of float32's bytes) in one
    copy per group of same-sized images, from pinned memory when the device is CUDA so the
    copy is asynchronous; each group is then normalised and resized in one call on the device.
    ``input_size``: ``(net_w, net_h)``. ``dtype``: the batch's dtype (the model's; the resize
    itself runs in float32). ``image_sizes``: optional ``(width, height)`` per image, the size
    to map boxes back to when an image was decoded smaller than its stored size (JPEG draft
    decoding); default each tensor's own size. ``memory_format``: the batch's (the model's, so
    that it needs no conversion).

    Returns the batch ``[B, 3, net_h, net_w]`` in ``[0, 1]`` and the transforms.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if not images:
        raise ValueError("prepare_batch needs at least one image")
    if image_sizes is not None and len(image_sizes) != len(images):
        raise ValueError(f"{len(image_sizes)} image sizes given for {len(images)} images")
    net_w, net_h = input_size
    device = torch.device(device) if device is not None else images[0].device
    groups: dict[tuple[int, int, torch.device], list[int]] = {}
    for index, image in enumerate(images):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"image {index} must be a uint8 [3, H, W] RGB tensor, got {image.dtype} "
                f"{list(image.shape)}"
            )
        groups.setdefault((image.shape[1], image.shape[2], image.device), []).append(index)
    batch = torch.empty(
        (len(images), 3, net_h, net_w), dtype=dtype, device=device, memory_format=memory_format
    )
    offsets = [(0.0, 0.0)] * len(images)
    scales = [(1.0, 1.0)] * len(images)
    for (height, width, _), same_size in groups.items():
        step = max(1, _GROUP_PIXELS.get(device.type, 0) // (height * width))
        for start in range(0, len(same_size), step):
            members = same_size[start : start + step]
            _resize_into(batch, offsets, scales, images, members, mode, input_size, (height, width))
    if image_sizes is None:
        image_sizes = [(image.shape[2], image.shape[1]) for image in images]
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.float32, device=device)  # noqa: E731
    return batch, ImageTransforms(as_tensor(image_sizes), as_tensor(offsets), as_tensor(scales))


def _resize_into(
    batch: torch.Tensor,
    offsets: list,
    scales: list,
    images: Sequence[torch.Tensor],
    members: list[int],
    mode: str,
    input_size: tuple[int, int],
    size_hw: tuple[int, int],
) -> None:
    """Normalise and resize the same-sized ``images[members]`` into their rows of ``batch``."""
    net_w, net_h = input_size
    height, width = size_hw
    device, dtype = batch.device, batch.dtype
    pixels = _to_device([images[i] for i in members], device).float().div_(_UINT8_MAX)
    if mode == RESIZE_LETTERBOX:
        new_w, new_h = letterbox_size((width, height), input_size)
        top, left = (net_h - new_h) // 2, (net_w - new_w) // 2
        content = _resize(pixels, (new_h, new_w), align_corners=True)
        for slot, index in enumerate(members):
            batch[index].fill_(LETTERBOX_FILL)
            batch[index, :, top : top + new_h, left : left + new_w] = content[slot]
            offsets[index] = ((net_w - new_w) / 2 / net_w, (net_h - new_h) / 2 / net_h)
            scales[index] = (net_w / new_w, net_h / new_h)
    else:
        resized = _resize(pixels, (net_h, net_w), align_corners=mode == RESIZE_DARKNET)
        if len(members) == 1:  # a plain copy, layout to layout (index_copy_ goes element-wise)
            batch[members[0]].copy_(resized[0])
        else:
            target = torch.tensor(members, device=device)
            batch.index_copy_(0, target, resized.to(dtype))


def _to_device(images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Same-sized ``[3, H, W]`` uint8 images -> one ``[n, 3, H, W]`` uint8 tensor on ``device``.

    From the host to CUDA the copies run asynchronously on the current stream: straight from
    images already in pinned memory, else through one pinned staging tensor.
    """
    if len(images) == 1:
        return images[0].to(device, non_blocking=images[0].is_pinned()).unsqueeze(0)
    source = images[0].device
    if source == device or source.type != "cpu" or device.type != "cuda":
        return torch.stack([image.to(device) for image in images])
    if all(image.is_pinned() for image in images):  # decoded into pinned memory: no staging
        return torch.stack([image.to(device, non_blocking=True) for image in images])
    staged = torch.empty((len(images), *images[0].shape), dtype=torch.uint8, pin_memory=True)
    torch.stack(images, out=staged)
    return staged.to(device, non_blocking=True)
