"""What ``yolo-batch bench`` measures: :class:`BenchConfig`, its defaults, and the device check."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.worker.decode_modes import DECODE_AUTO, DECODE_GPU, DECODE_MODES
from pipeline.worker.model_spec import DEFAULT_MODEL
from pipeline.worker.tasks import DEFAULT_BATCH_SIZE, DEFAULT_FETCH_THREADS
from yolov4 import devices
from yolov4.detector import PRECISIONS

STAGE_DECODE = "decode"
STAGE_MODEL = "model"
STAGE_E2E = "e2e"
STAGES = (STAGE_DECODE, STAGE_MODEL, STAGE_E2E)

DEFAULT_IMAGES = 256
DEFAULT_IMAGE_SIZE = (1280, 720)
DEFAULT_SECONDS = 5.0
#: Default batch per device type: the actor's default on CPU, a GPU-sized one on CUDA.
DEFAULT_BATCH = {"cpu": DEFAULT_BATCH_SIZE, "cuda": 32}
#: Images per end-to-end shard (at least two batches, a whole number of batches).
DEFAULT_SHARD_SIZE = 64
#: Seed of the generated images and of random weights (``random_weights``).
DEFAULT_SEED = 0


class BenchError(ValueError):
    """A benchmark that cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``batch_sizes``, ``precisions`` and ``decode`` are swept.

    ``size``: network input side in pixels (default the model's). ``image_size``: generated
    images' ``(width, height)``. ``seconds``: timed seconds per figure at least. ``threads``:
    torch threads (default the CPUs this process may use). ``decode_threads``: the actor's
    decode pool (default the same). ``check``: compare half precisions with fp32 (``None``:
    when a half precision is measured). ``compile``: the detector's ``torch.compile`` option
    (model only and end to end; the compilation is part of the warm-up, not timed).
    """

    model: str | None = None
    cfg: str | None = None
    weights: str | None = None
    names: str | None = None
    random_weights: bool = False
    size: int | None = None
    batch_sizes: tuple[int, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)
    device: str = "cpu"
    decode: tuple[str, ...] = (DECODE_AUTO,)
    threads: int | None = None
    decode_threads: int | None = None
    fetch_threads: int = DEFAULT_FETCH_THREADS
    seconds: float = DEFAULT_SECONDS
    only: tuple[str, ...] = STAGES
    images: int = DEFAULT_IMAGES
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    source: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    check: bool | None = None
    seed: int = DEFAULT_SEED
    compile: bool = False

    def __post_init__(self) -> None:
        if self.cfg or self.weights:
            if self.model:
                raise BenchError("use either --model or --cfg/--weights, not both")
            if not self.cfg:
                raise BenchError("--weights needs --cfg (the darknet cfg it belongs to)")
            if not (self.weights or self.random_weights):
                raise BenchError("--cfg needs --weights, or --random-weights to measure speed")
            if self.weights and self.random_weights:
                raise BenchError("use either --weights or --random-weights, not both")
        for name in ("images", "shard_size", "fetch_threads"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("threads", "decode_threads", "size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.seconds > 0:
            raise BenchError(f"--seconds must be positive, got {self.seconds}")
        if any(b < 1 for b in self.batch_sizes):
            raise BenchError(f"batch sizes must be at least 1, got {list(self.batch_sizes)}")
        _check_choices("--precision", self.precisions, tuple(PRECISIONS))
        _check_choices("--decode", self.decode, DECODE_MODES)
        _check_choices("--only", self.only, STAGES)
        if min(self.image_size) < 1:
            raise BenchError(f"--image-size must be positive, got {self.image_size}")

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    @property
    def batches(self) -> tuple[int, ...]:
        """The batch sizes to measure (the device's default when none was given)."""
        return self.batch_sizes or (DEFAULT_BATCH.get(self.device_type, DEFAULT_BATCH["cpu"]),)

    @property
    def run_check(self) -> bool:
        """Whether to run the fidelity check: asked for, or by default when a fast path (a half
        precision, GPU decoding) is measured with trained weights (random ones say nothing
        about real detections)."""
        fast = any(p != "fp32" for p in self.precisions) or (
            self.device_type == "cuda" and bool({DECODE_AUTO, DECODE_GPU} & set(self.decode))
        )
        if self.check is not None:
            return fast and self.check
        measured = STAGE_MODEL in self.only or STAGE_E2E in self.only
        return fast and measured and not self.random_weights

    def parameters(self) -> dict[str, Any]:
        """Every parameter, JSON-ready (tuples as lists), the defaults resolved."""
        out = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }
        out["batch_sizes"] = list(self.batches)
        out["model"] = self.model if (self.model or self.cfg) else DEFAULT_MODEL
        out["check"] = self.run_check
        return out


def _check_choices(option: str, values: Sequence[str], choices: Sequence[str]) -> None:
    if not values:
        raise BenchError(f"{option} needs at least one value ({', '.join(choices)})")
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise BenchError(
            f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(choices)}"
        )


def check_device(device: str) -> torch.device:
    """The torch device for ``device`` (:func:`yolov4.devices.check_device`); a
    :class:`BenchError` saying what to use where it cannot be used here."""
    try:
        return devices.check_device(device, option="--device")
    except devices.DeviceError as exc:
        raise BenchError(str(exc)) from None
