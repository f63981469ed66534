"""What model a run uses, in a form that travels to Ray actors and into run records.

The driver resolves the model once (pretrained name, or darknet cfg + weights + names given as
local paths or ``s3://`` URIs), hashes the weights, and ships the bytes through the Ray object
store; each actor builds its :class:`~yolov4.detector.Detector` from the spec and those bytes,
so no node needs the weights on its own disk.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.store.s3 import S3Options
from pipeline.store.storage import storage_for
from pipeline.store.uris import normalize
from yolov4.detector import Detector
from yolov4.hub import check_sha256
from yolov4.postprocess import (
    DEFAULT_CONF_THRESHOLD,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_NMS_THRESHOLD,
)
from yolov4.pretrained import get_pretrained

#: The model used when none is named: small enough for CPUs, the default of the demo.
DEFAULT_MODEL = "yolov4-tiny"


@dataclass(frozen=True)
class DetectorOptions:
    """The model's inference settings, in :class:`yolov4.Detector`'s keywords (the run settings
    ``input_size``, ``conf``, ``iou``, ``nms``, ``resize``, ``max_det``, ``classes`` map onto
    them: :mod:`pipeline.run.settings`); part of a run's identity (a resume must not change
    them). Defaults are the detector's (darknet's)."""

    input_size: int | None = None
    conf_threshold: float = DEFAULT_CONF_THRESHOLD
    nms_threshold: float = DEFAULT_NMS_THRESHOLD
    nms_kind: str | None = None
    resize: str | None = None
    max_detections: int = DEFAULT_MAX_DETECTIONS
    classes: tuple[str, ...] | None = None

    def as_kwargs(self) -> dict[str, Any]:
        out = asdict(self)
        out["classes"] = list(self.classes) if self.classes else None
        return out


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: either ``pretrained`` or ``cfg_text`` is set.

    ``weights_sha256`` identifies the weights; ``name`` labels results and logs.
    """

    name: str
    weights_sha256: str
    pretrained: str | None = None
    cfg_text: str | None = None
    class_names: tuple[str, ...] | None = None
    options: DetectorOptions = field(default_factory=DetectorOptions)

    def fingerprint(self) -> dict[str, Any]:
        """What makes a run's results what they are: the weights, the class names and every
        inference setting. A resume must match it; an incremental run processes again the
        images an earlier run processed with another (:mod:`pipeline.run.incremental`)."""
        return {
            "model": self.name,
            "weights_sha256": self.weights_sha256,
            "cfg_sha256": hashlib.sha256(self.cfg_text.encode()).hexdigest()
            if self.cfg_text
            else None,
            "names_sha256": hashlib.sha256("\n".join(self.class_names).encode()).hexdigest()
            if self.class_names
            else None,
            "options": asdict(self.options),
        }

    def build_detector(
        self,
        weights: bytes,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,  # noqa: A002 (Detector's option)
        prepack: bool = True,
    ):
        """The detector for this spec (on an actor), from the weights' bytes.

        The bytes must hash to :attr:`weights_sha256`: an actor never runs other weights.
        ``prepack``: as :class:`~yolov4.detector.Detector`'s (off for a detector that only
        checks the model and runs nothing: packing copies and reorders every weight).
        """
        check_sha256(weights, self.weights_sha256, f"weights for {self.name}")
        common = dict(
            device=device,
            precision=precision,
            compile=compile,
            prepack=prepack,
            **self.options.as_kwargs(),
        )
        if self.pretrained:
            return Detector.from_pretrained(self.pretrained, weights=weights, **common)
        return Detector.from_darknet_text(
            self.cfg_text,
            weights,
            list(self.class_names) if self.class_names else None,
            name=self.name,
            **common,
        )


def resolve_model(
    *,
    model: str | None = None,
    cfg: str | None = None,
    weights: str | None = None,
    names: str | None = None,
    options: DetectorOptions | None = None,
    s3_options: S3Options | None = None,
) -> tuple[ModelSpec, bytes]:
    """Resolve the model the user asked for; returns the spec and the weights' bytes.

    ``model``: a pretrained name (default :data:`DEFAULT_MODEL`); or ``cfg`` + ``weights`` (+
    ``names``), each a local path or ``s3://`` URI. The detector is built once here to check
    that cfg, weights and names fit together before any actor starts.
    """
    options = options or DetectorOptions()
    if cfg or weights:
        if not (cfg and weights):
            raise ValueError("--cfg and --weights go together; give both")
        if model:
            raise ValueError("use either --model or --cfg/--weights, not both")
        cfg_text = _read_text(cfg, s3_options)
        weights_bytes = _read_bytes(weights, s3_options)
        class_names = None
        if names:
            class_names = tuple(
                line.strip() for line in _read_text(names, s3_options).splitlines() if line.strip()
            )
        name = normalize(cfg).rsplit("/", 1)[-1].removesuffix(".cfg")
        spec = ModelSpec(
            name=name,
            weights_sha256=hashlib.sha256(weights_bytes).hexdigest(),
            cfg_text=cfg_text,
            class_names=class_names,
            options=options,
        )
    else:
        entry = get_pretrained(model or DEFAULT_MODEL)
        weights_bytes = entry.fetch_weights().read_bytes()
        spec = ModelSpec(
            name=entry.name,
            weights_sha256=entry.weights.sha256,
            pretrained=entry.name,
            options=options,
        )
    # Fail here, with a clear error, not in every actor.
    spec.build_detector(weights_bytes, prepack=False)
    return spec, weights_bytes


def _read_bytes(uri: str, s3_options: S3Options | None) -> bytes:
    uri = normalize(uri)
    return storage_for(uri, s3_options).read_bytes(uri)


def _read_text(uri: str, s3_options: S3Options | None) -> str:
    return _read_bytes(uri, s3_options).decode("utf-8", errors="replace")
