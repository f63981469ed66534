"""Helpers shared by the reference tests: darknet files on disk, random darknet weights."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from yolov4.darknet_weights import save_darknet_weights
from yolov4.random_weights import random_darknet_model

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


def write_random_darknet_weights(config, path: Path, seed: int = 0) -> torch.nn.Module:
    """Write random ``.weights`` for ``config`` to ``path`` (:func:`random_darknet_model`, which
    keeps activations of order one through every layer); return the model (eval mode, CPU)."""
    model = random_darknet_model(config, seed=seed)
    save_darknet_weights(model.darknet_convs(), path)
    return model
