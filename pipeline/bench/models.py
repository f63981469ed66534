"""The model under test: a pretrained name, a darknet cfg + weights, or generated weights."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.config import BenchConfig, BenchError
from pipeline.worker.model_spec import (
    DEFAULT_MODEL,
    DetectorOptions,
    ModelSpec,
    resolve_model,
)
from yolov4.config import DEFAULT_CONFIGS, ModelConfig
from yolov4.darknet_cfg import config_from_cfg, parse_cfg, read_names
from yolov4.darknet_weights import darknet_weights_bytes, load_darknet_weights
from yolov4.detector import Detector
from yolov4.errors import WeightsUnavailableError
from yolov4.flops import model_flops
from yolov4.hub import check_sha256
from yolov4.model import build_model
from yolov4.pretrained import get_pretrained
from yolov4.random_weights import random_darknet_model

#: Random weights: boxes per image that pass the score threshold, as with trained weights
#: (raw random outputs would pass thousands, and NMS would dominate).
RANDOM_CANDIDATES_PER_IMAGE = 20


@dataclass(frozen=True)
class RandomWeightsSpec:
    """A model with generated darknet weights, in the form :class:`ShardProcessor` takes a
    :class:`~pipeline.worker.model_spec.ModelSpec` (``name``, ``build_detector``): the architecture
    comes from ``config``, not from a registry entry whose sha256 the weights would fail."""

    name: str
    config: ModelConfig
    weights_sha256: str
    options: DetectorOptions

    def build_detector(self, weights: bytes, **detector_options) -> Detector:
        """As :meth:`pipeline.worker.model_spec.ModelSpec.build_detector`: ``detector_options``
        are its keywords (``device``, ``precision``, ``compile``, ``prepack``)."""
        check_sha256(weights, self.weights_sha256, f"weights for {self.name}")
        model = build_model(self.config)
        load_darknet_weights(model.darknet_convs(), weights, model_name=self.name)
        options = {**self.options.as_kwargs(), "input_size": None, **detector_options}
        return Detector(model, name=self.name, **options)


@dataclass
class BenchModel:
    """The model under test: what an actor gets (``spec``, ``weights``) and what it computes.

    ``config``: at the benchmark's input size. ``weights_source``: ``pretrained``, ``file`` or
    ``random``. ``flops_per_image``: convolution FLOPs (2 per multiply-add).
    """

    spec: ModelSpec | RandomWeightsSpec
    weights: bytes
    config: ModelConfig
    weights_source: str
    flops_per_image: int

    def build(self, device: torch.device, precision: str, compile: bool = False) -> Detector:  # noqa: A002
        return self.spec.build_detector(
            self.weights, device=str(device), precision=precision, compile=compile
        )

    def summary(self) -> dict[str, Any]:
        width, height = self.config.input_size
        return {
            "name": self.spec.name,
            "arch": self.config.arch,
            "input_width": width,
            "input_height": height,
            "num_classes": self.config.num_classes,
            "flops_per_image": self.flops_per_image,
            "gflops_per_image": self.flops_per_image / 1e9,
            "weights": self.weights_source,
            "weights_sha256": self.spec.weights_sha256,
        }


def architecture(config: BenchConfig) -> tuple[str, ModelConfig]:
    """``(name, ModelConfig at the benchmark's input size)`` without reading any weights."""
    if config.cfg:
        names = read_names(config.names) if config.names else ()
        model_config = config_from_cfg(parse_cfg(config.cfg), names)
        name = Path(config.cfg).stem
    else:
        entry = get_pretrained(config.model or DEFAULT_MODEL)
        model_config = dataclasses.replace(
            DEFAULT_CONFIGS[entry.arch],
            input_size=tuple(entry.input_size),
            class_names=tuple(entry.class_names),
        )
        name = entry.name
    if config.size:
        try:
            model_config = model_config.with_input_size(config.size)
        except ValueError as exc:
            raise BenchError(f"--size {config.size}: {exc}") from None
    return name, model_config


def load_model(
    config: BenchConfig, calibration: Callable[[], torch.Tensor], device: torch.device
) -> BenchModel:
    """The model ``config`` names, with its weights (generated with ``random_weights``).

    ``calibration``: gives ``[n, 3, h, w]`` float images in [0, 1] for generated weights.
    """
    name, model_config = architecture(config)
    options = DetectorOptions(input_size=config.size)
    flops = model_flops(model_config)
    if config.random_weights:
        model = random_darknet_model(
            model_config,
            seed=config.seed,
            calibration=calibration(),
            candidates_per_image=RANDOM_CANDIDATES_PER_IMAGE,
            device=device,
        )
        weights = darknet_weights_bytes(model.darknet_convs())
        digest = hashlib.sha256(weights).hexdigest()
        spec = RandomWeightsSpec(name, model_config, digest, options)
        return BenchModel(spec, weights, model_config, "random", flops)
    try:
        spec, weights = resolve_model(
            model=config.model,
            cfg=config.cfg,
            weights=config.weights,
            names=config.names,
            options=options,
        )
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(
            f"{exc} (to measure speed without the weights, add --random-weights)"
        ) from None
    source = "file" if config.cfg else "pretrained"
    return BenchModel(spec, weights, model_config, source, flops)
