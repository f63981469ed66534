"""Model hyperparameters: what a darknet cfg's ``[net]`` and ``[yolo]`` sections say.

The architectures themselves (layer wiring) are fixed in :mod:`yolov4.model`; a
:class:`ModelConfig` sets everything a custom-trained darknet model may change: class count,
anchors, per-head masks and ``scale_x_y``, input size, letterbox, NMS kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

ARCH_YOLOV4 = "yolov4"
ARCH_YOLOV4_TINY = "yolov4-tiny"
ARCHITECTURES = (ARCH_YOLOV4, ARCH_YOLOV4_TINY)

#: Head strides in cfg order (the order of the ``[yolo]`` sections and of the model's outputs).
HEAD_STRIDES = {ARCH_YOLOV4: (8, 16, 32), ARCH_YOLOV4_TINY: (32, 16)}

#: Network inputs must be multiples of the largest stride.
INPUT_SIZE_MULTIPLE = 32

NMS_DIOU = "diou"
NMS_IOU = "iou"
NMS_KINDS = (NMS_DIOU, NMS_IOU)
#: darknet's ``beta_nms`` default for ``nms_kind=greedynms`` (DIoU exponent).
DEFAULT_DIOU_BETA = 0.6


@dataclass(frozen=True)
class HeadConfig:
    """One ``[yolo]`` layer: which anchors it uses and its box-centre scale.

    ``mask`` indexes :attr:`ModelConfig.anchors`; ``stride`` is the head's downsampling factor.
    """

    stride: int
    mask: tuple[int, ...]
    scale_x_y: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a YOLOv4 or YOLOv4-tiny model.

    ``anchors`` are ``(width, height)`` in pixels of the network input; ``heads`` are in cfg
    order; ``input_size`` is ``(width, height)``.
    """

    arch: str
    num_classes: int
    anchors: tuple[tuple[float, float], ...]
    heads: tuple[HeadConfig, ...]
    input_size: tuple[int, int]
    letterbox: bool = False
    nms_kind: str = NMS_DIOU
    nms_beta: float = DEFAULT_DIOU_BETA
    class_names: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; expected one of {ARCHITECTURES}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.num_classes}")
        strides = tuple(h.stride for h in self.heads)
        if strides != HEAD_STRIDES[self.arch]:
            raise ValueError(
                f"{self.arch} has heads at strides {HEAD_STRIDES[self.arch]}, got {strides}"
            )
        for head in self.heads:
            bad = [m for m in head.mask if not 0 <= m < len(self.anchors)]
            if bad or not head.mask:
                raise ValueError(
                    f"head at stride {head.stride} has mask {head.mask}, which must index "
                    f"the {len(self.anchors)} anchors"
                )
        check_input_size(self.input_size)
        if self.nms_kind not in NMS_KINDS:
            raise ValueError(f"nms_kind must be one of {NMS_KINDS}, got {self.nms_kind!r}")

    def with_input_size(self, input_size: tuple[int, int] | int) -> ModelConfig:
        """The same model at another input size (``int`` means square)."""
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        return replace(self, input_size=tuple(input_size))

    def head_channels(self, head: HeadConfig) -> int:
        """Output channels of a head's final 1x1 conv: ``len(mask) * (5 + num_classes)``."""
        return len(head.mask) * (5 + self.num_classes)


def check_input_size(input_size: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless both sides are positive multiples of 32."""
    width, height = input_size
    if min(width, height) <= 0 or width % INPUT_SIZE_MULTIPLE or height % INPUT_SIZE_MULTIPLE:
        raise ValueError(
            f"input size {width}x{height} is not allowed: width and height must be positive "
            f"multiples of {INPUT_SIZE_MULTIPLE} (e.g. 320, 416, 512, 608)"
        )


#: darknet's yolov4.cfg.
YOLOV4_COCO_CONFIG = ModelConfig(
    arch=ARCH_YOLOV4,
    num_classes=80,
    anchors=(
        (12, 16),
        (19, 36),
        (40, 28),
        (36, 75),
        (76, 55),
        (72, 146),
        (142, 110),
        (192, 243),
        (459, 401),
    ),
    heads=(
        HeadConfig(8, (0, 1, 2), 1.2),
        HeadConfig(16, (3, 4, 5), 1.1),
        HeadConfig(32, (6, 7, 8), 1.05),
    ),
    input_size=(608, 608),
)

#: darknet's yolov4-tiny.cfg. Note the stride-16 head's mask ``1,2,3`` (not ``0,1,2``).
YOLOV4_TINY_COCO_CONFIG = ModelConfig(
    arch=ARCH_YOLOV4_TINY,
    num_classes=80,
    anchors=((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319)),
    heads=(HeadConfig(32, (3, 4, 5), 1.05), HeadConfig(16, (1, 2, 3), 1.05)),
    input_size=(416, 416),
)

DEFAULT_CONFIGS = {ARCH_YOLOV4: YOLOV4_COCO_CONFIG, ARCH_YOLOV4_TINY: YOLOV4_TINY_COCO_CONFIG}
