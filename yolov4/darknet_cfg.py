"""Reading darknet ``.cfg`` files: hyperparameters, and a check against our architectures.

This is not a cfg interpreter: the layer wiring lives in :mod:`yolov4.model`. A cfg is read
for what a custom-trained model may change (``[net]`` width/height/letter_box, ``[yolo]``
classes/anchors/mask/scale_x_y/nms_kind) and checked, layer by layer, against the model it is
loaded into, so weights never land in the wrong layers.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from yolov4.config import (
    ARCH_YOLOV4,
    ARCH_YOLOV4_TINY,
    DEFAULT_DIOU_BETA,
    HEAD_STRIDES,
    NMS_DIOU,
    NMS_IOU,
    HeadConfig,
    ModelConfig,
)
from yolov4.errors import DarknetFormatError
from yolov4.layers import ConvSpec

#: Section counts that identify each supported architecture in a cfg.
ARCH_SECTION_COUNTS = {
    ARCH_YOLOV4: Counter(
        {"convolutional": 110, "route": 21, "shortcut": 23, "maxpool": 3, "upsample": 2, "yolo": 3}
    ),
    ARCH_YOLOV4_TINY: Counter(
        {"convolutional": 21, "route": 11, "maxpool": 3, "upsample": 1, "yolo": 2}
    ),
}
LAYER_SECTION_TYPES = ("convolutional", "route", "shortcut", "maxpool", "upsample", "yolo")


@dataclass
class CfgSection:
    """One ``[type]`` block of a cfg; ``line`` is where it starts (1-based)."""

    type: str
    line: int
    options: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def get_int(self, key: str, default: int | None = None) -> int:
        return int(self._number(key, default, int))

    def get_float(self, key: str, default: float | None = None) -> float:
        return float(self._number(key, default, float))

    def get_ints(self, key: str) -> list[int]:
        raw = self.options.get(key)
        if raw is None:
            raise DarknetFormatError(f"[{self.type}] at line {self.line} has no '{key}='; add it")
        try:
            return [int(v) for v in raw.split(",") if v.strip()]
        except ValueError:
            raise DarknetFormatError(
                f"[{self.type}] at line {self.line}: '{key}={raw}' must be a comma-separated "
                "list of integers"
            ) from None

    def _number(self, key: str, default, kind):
        raw = self.options.get(key)
        if raw is None:
            if default is None:
                raise DarknetFormatError(
                    f"[{self.type}] at line {self.line} has no '{key}='; add it"
                )
            return default
        try:
            return kind(raw)
        except ValueError:
            raise DarknetFormatError(
                f"[{self.type}] at line {self.line}: '{key}={raw}' is not a valid {kind.__name__}"
            ) from None


def parse_cfg(path: str | os.PathLike) -> list[CfgSection]:
    """Parse the darknet cfg file at ``path`` (see :func:`parse_cfg_text`)."""
    return parse_cfg_text(Path(path).read_text(encoding="utf-8", errors="replace"))


def parse_cfg_text(text: str) -> list[CfgSection]:
    """Parse a darknet cfg's text into its sections, in order; the first must be ``[net]``.
    Raises :class:`DarknetFormatError` naming the line of anything malformed."""
    sections: list[CfgSection] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetFormatError(f"cfg line {number}: section header {line!r} lacks ']'")
            sections.append(CfgSection(line[1:-1].strip().lower(), number))
            continue
        if "=" not in line:
            raise DarknetFormatError(f"cfg line {number}: expected 'key=value', got {line!r}")
        if not sections:
            raise DarknetFormatError(f"cfg line {number}: option {line!r} before any [section]")
        key, value = (part.strip() for part in line.split("=", 1))
        sections[-1].options[key] = value
    if not sections or sections[0].type not in ("net", "network"):
        raise DarknetFormatError("a darknet cfg must start with a [net] section")
    return sections


def detect_arch(sections: list[CfgSection]) -> str:
    """Which supported architecture the cfg describes, judged by its section counts."""
    counts = Counter(s.type for s in sections if s.type in LAYER_SECTION_TYPES)
    for arch, expected in ARCH_SECTION_COUNTS.items():
        if counts == expected:
            return arch
    found = ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))
    raise DarknetFormatError(
        f"the cfg has {found} layers, which is neither yolov4 (110 convolutional, 3 yolo) nor "
        "yolov4-tiny (21 convolutional, 2 yolo); only those two architectures are supported"
    )


def config_from_cfg(sections: list[CfgSection], class_names: tuple[str, ...] = ()) -> ModelConfig:
    """Build a :class:`ModelConfig` from a parsed cfg (architecture detected from its layers)."""
    arch = detect_arch(sections)
    net = sections[0]
    yolos = [s for s in sections if s.type == "yolo"]
    classes = {s.get_int("classes") for s in yolos}
    if len(classes) != 1:
        raise DarknetFormatError(f"[yolo] sections disagree on classes= ({sorted(classes)})")
    anchor_lists = {tuple(_floats(s, "anchors")) for s in yolos}
    if len(anchor_lists) != 1:
        raise DarknetFormatError("[yolo] sections disagree on anchors=; use one list in all")
    flat = anchor_lists.pop()
    if len(flat) % 2:
        raise DarknetFormatError(f"anchors= has {len(flat)} numbers; it needs (w, h) pairs")
    anchors = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
    heads = []
    for section, stride in zip(yolos, HEAD_STRIDES[arch]):
        if section.get_int("new_coords", 0) != 0:
            raise DarknetFormatError(
                f"[yolo] at line {section.line} uses new_coords=1 (scaled-YOLOv4 decoding); "
                "only new_coords=0 models (yolov4, yolov4-tiny) are supported"
            )
        heads.append(
            HeadConfig(stride, tuple(section.get_ints("mask")), section.get_float("scale_x_y", 1.0))
        )
    nms_kind, nms_beta = _nms_rule(yolos[0])
    num_classes = classes.pop()
    if class_names and len(class_names) != num_classes:
        raise DarknetFormatError(
            f"the names file lists {len(class_names)} classes but the cfg says classes="
            f"{num_classes}; use the names file the model was trained with"
        )
    try:
        return ModelConfig(
            arch=arch,
            num_classes=num_classes,
            anchors=anchors,
            heads=tuple(heads),
            input_size=(net.get_int("width"), net.get_int("height")),
            letterbox=net.get_int("letter_box", 0) == 1,
            nms_kind=nms_kind,
            nms_beta=nms_beta,
            class_names=tuple(class_names),
        )
    except ValueError as exc:
        raise DarknetFormatError(f"the cfg's hyperparameters are invalid: {exc}") from None


def check_conv_specs(sections: list[CfgSection], model_specs: list[ConvSpec], arch: str) -> None:
    """Raise :class:`DarknetFormatError` at the first conv layer where cfg and model differ."""
    convs = [s for s in sections if s.type == "convolutional"]
    if len(convs) != len(model_specs):
        raise DarknetFormatError(
            f"the cfg has {len(convs)} convolutional layers but {arch} has {len(model_specs)}"
        )
    for index, (section, spec) in enumerate(zip(convs, model_specs)):
        found = {
            "filters": section.get_int("filters"),
            "size": section.get_int("size", 1),
            "stride": section.get_int("stride", 1),
            "batch_normalize": section.get_int("batch_normalize", 0) == 1,
            "activation": section.get("activation", "logistic"),
            "pad": section.get_int("pad", 0),
            "groups": section.get_int("groups", 1),
        }
        expected = {
            "filters": spec.filters,
            "size": spec.size,
            "stride": spec.stride,
            "batch_normalize": spec.batch_normalize,
            "activation": spec.activation,
            "pad": 1 if spec.size > 1 or found["pad"] == 1 else 0,
            "groups": 1,
        }
        for key, value in expected.items():
            if found[key] != value:
                raise DarknetFormatError(
                    f"cfg convolutional layer #{index} (line {section.line}) has {key}="
                    f"{found[key]} where {arch} expects {value}; this cfg does not describe "
                    f"{arch} — pass the cfg the weights were trained with"
                )


def read_names(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names, one per non-empty line (darknet ``.names`` format)."""
    names = tuple(
        line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()
    )
    if not names:
        raise DarknetFormatError(f"names file {path} lists no class names")
    return names


def _floats(section: CfgSection, key: str) -> list[float]:
    raw = section.get(key)
    if raw is None:
        raise DarknetFormatError(f"[{section.type}] at line {section.line} has no '{key}='")
    try:
        return [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise DarknetFormatError(
            f"[{section.type}] at line {section.line}: '{key}=' must list numbers"
        ) from None


def _nms_rule(yolo: CfgSection) -> tuple[str, float]:
    """darknet's NMS for a ``[yolo]`` section: ``greedynms`` uses DIoU with exponent 0.6
    (fixed in ``box_diou``), ``diounms`` DIoU with ``beta_nms``, anything else plain IoU."""
    kind = (yolo.get("nms_kind") or "default").lower()
    if kind == "greedynms":
        return NMS_DIOU, DEFAULT_DIOU_BETA
    if kind == "diounms":
        return NMS_DIOU, yolo.get_float("beta_nms", DEFAULT_DIOU_BETA)
    return NMS_IOU, DEFAULT_DIOU_BETA
