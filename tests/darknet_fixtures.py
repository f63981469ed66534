"""Helpers shared by the reference tests: darknet files on disk, random darknet weights."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from yolov4.darknet_weights import save_darknet_weights
from yolov4.model import build_model

DARKNET_DIR = Path(__file__).parent / "data" / "darknet"
YOLOV4_CFG = DARKNET_DIR / "yolov4.cfg"
YOLOV4_TINY_CFG = DARKNET_DIR / "yolov4-tiny.cfg"
COCO_NAMES = DARKNET_DIR / "coco.names"


def cfg_with(
    cfg: Path,
    dest: Path,
    *,
    yolo_thresh: float | None = None,
    size: int | None = None,
    classes: int | None = None,
) -> Path:
    """Copy ``cfg`` to ``dest`` with some options changed (for OpenCV and custom models)."""
    text = cfg.read_text()
    if yolo_thresh is not None:
        # OpenCV zeroes class scores <= thresh (0.2 by default); 0 keeps every value.
        text = text.replace("[yolo]", f"[yolo]\nthresh={yolo_thresh}")
    if size is not None:
        text = re.sub(r"^width=\d+", f"width={size}", text, flags=re.M)
        text = re.sub(r"^height=\d+", f"height={size}", text, flags=re.M)
    if classes is not None:
        text = re.sub(r"^classes=\d+", f"classes={classes}", text, flags=re.M)
        sections = text.split("[yolo]")
        # The conv before each [yolo] predicts len(mask) * (5 + classes) channels.
        for i in range(len(sections) - 1):
            masks = re.search(r"^mask\s*=\s*([\d,\s]+)$", sections[i + 1], flags=re.M).group(1)
            filters = len(masks.split(",")) * (5 + classes)
            head, _, last = sections[i].rpartition("filters=")
            sections[i] = head + "filters=" + str(filters) + last[last.index("\n") :]
        text = "[yolo]".join(sections)
    dest.write_text(text)
    return dest


@torch.no_grad()
def randomize_for_reference(
    model: torch.nn.Module, seed: int = 0, size: int = 256
) -> torch.nn.Module:
    """Random weights that keep activations of order one through every layer.

    Conv weights ~ N(0, 2 / fan_in); batch-norm statistics calibrated on a random input (one
    forward in training mode with momentum 1, as in data-dependent init) so every BN output is
    about unit scale; BN variances floored at 0.5, far from zero, since OpenCV's epsilon (1e-6)
    differs from darknet's (1e-5). Prediction convs are scaled so exp(tw) stays moderate.
    """
    generator = torch.Generator().manual_seed(seed)
    for conv in model.darknet_convs():
        weight = conv.conv.weight
        gain = 0.5 if conv.bn is None else 2.0
        std = np.sqrt(gain / weight[0].numel())
        weight.copy_(torch.randn(weight.shape, generator=generator) * std)
        if conv.bn is None:
            conv.conv.bias.copy_(torch.randn(conv.conv.bias.shape, generator=generator) * 0.1)
            continue
        n = conv.spec.filters
        conv.bn.weight.copy_(0.3 + 0.4 * torch.rand(n, generator=generator))
        conv.bn.bias.copy_(torch.randn(n, generator=generator) * 0.2)
        conv.bn.momentum = 1.0
    model.train()
    model(torch.rand((2, 3, size, size), generator=generator))
    model.eval()
    for conv in model.darknet_convs():
        if conv.bn is not None:
            conv.bn.momentum = 0.1
            conv.bn.running_var.clamp_(min=0.5)
    return model


def write_random_darknet_weights(config, path: Path, seed: int = 0) -> torch.nn.Module:
    """Build a model for ``config``, randomise it, write it as ``.weights``; return the model."""
    model = randomize_for_reference(build_model(config), seed)
    save_darknet_weights(model.darknet_convs(), path)
    return model
