"""How fast one model runs on this machine, for sizing a cluster: ``yolo-batch bench``.

Four figures, each measured for at least ``seconds`` after a warm-up:

- **decode**: :func:`yolov4.imageio.decode_image` on one thread over a set of JPEGs, in
  images/s per core (and the reduced-size JPEG decoding, ``decode_image_reduced``, where this
  version of :mod:`yolov4.imageio` has it);
- **model only**: :meth:`Detector.detect_batch` (forward, decode, NMS, detections copied to the
  host) on images already decoded, resized to the network input and resident on the device as
  uint8 ``[3, h, w]`` tensors, so the resize is a no-op; in images/s and achieved TFLOP/s;
- **end to end**: :class:`pipeline.worker.actor.ShardProcessor`, the actor's own worker, in this
  process (no Ray): read, decode, detect and write Parquet, with as many shards in flight as
  the driver queues on an actor; images / wall time of the timed shards;
- **ratios**: end-to-end / model-only (what the input side and the writes cost), and
  decode images/s per core x decode threads / model-only (the input-side headroom: above 1 the
  decode threads can feed the model).

The images are JPEGs generated from the two sample photos (cropped, flipped and resized to
``image_size``, quality 90), or the first ``images`` objects of a source (``source``: a local
folder, an ``s3://`` prefix or a manifest, as ``yolo-batch run`` takes). With ``check``, the
detections of each half precision are compared with fp32's on the sample photos
(:mod:`yolov4.compare`, :data:`yolov4.compare.PRECISION_TOLERANCES`).

This module does not import Ray: it runs where only PyTorch and this project's light
dependencies are installed, as ``python -m pipeline.bench`` (same options as the subcommand).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import io
import itertools
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.run.config import DEFAULT_SHARDS_PER_ACTOR
from pipeline.store.sources import open_source
from pipeline.store.storage import storage_for
from pipeline.worker import (
    ActorConfig,
    ShardProcessor,
    ShardResult,
    ShardTask,
    available_cpus,
)
from pipeline.worker.decode_modes import DECODE_AUTO, DECODE_GPU, DECODE_MODES
from pipeline.worker.model_spec import (
    DEFAULT_MODEL,
    DetectorOptions,
    ModelSpec,
    check_weights_digest,
    resolve_model,
)
from yolov4 import imageio
from yolov4.compare import (
    GPU_DECODE_TOLERANCE,
    PRECISION_TOLERANCES,
    Tolerance,
    max_differences,
    mismatches,
)
from yolov4.config import DEFAULT_CONFIGS, ModelConfig
from yolov4.darknet_cfg import config_from_cfg, parse_cfg, read_names
from yolov4.darknet_weights import load_darknet_weights, save_darknet_weights
from yolov4.detector import PRECISIONS, Detection, Detector, fast_on_cpu
from yolov4.errors import WeightsUnavailableError
from yolov4.flops import model_flops
from yolov4.gpu_jpeg import decode_jpegs, encoded, gpu_decodable, gpu_jpeg_available
from yolov4.hub import fetch, local_path, verify
from yolov4.imageio import EXIF_ORIENTATION_TAG
from yolov4.model import build_model
from yolov4.postprocess import DEFAULT_CONF_THRESHOLD
from yolov4.pretrained import SAMPLE_IMAGES, get_pretrained

logger = logging.getLogger(__name__)

SCHEMA = "yolo-batch-bench/1"
#: Run id of the end-to-end shards (their Parquet files go to a temporary folder).
BENCH_RUN_ID = "bench"
STAGE_DECODE = "decode"
STAGE_MODEL = "model"
STAGE_E2E = "e2e"
STAGES = (STAGE_DECODE, STAGE_MODEL, STAGE_E2E)
DEVICES = ("cpu", "cuda")

DEFAULT_IMAGES = 256
DEFAULT_IMAGE_SIZE = (1280, 720)
DEFAULT_SECONDS = 5.0
#: Default batch per device type: the actor's default on CPU, a GPU-sized one on CUDA.
DEFAULT_BATCH = {"cpu": 8, "cuda": 32}
#: Images per end-to-end shard (at least two batches, a whole number of batches).
DEFAULT_SHARD_SIZE = 64
DEFAULT_FETCH_THREADS = 16
JPEG_QUALITY = 90
#: Generated images: a crop of at least this fraction of the photo's width or height.
CROP_MIN_FRACTION = 0.6

#: Warm-up before each timed figure (cuDNN autotunes each new shape on its first calls): at
#: least this many calls and this fraction of ``seconds``.
WARMUP_MIN_CALLS = 2
WARMUP_FRACTION = 0.2
#: Timed model calls / end-to-end shards at least, however long each takes.
MIN_TIMED_CALLS = 2
MIN_TIMED_SHARDS = 2
#: Images decoded at least per decode figure.
MIN_DECODED_IMAGES = 8

#: Random weights (``random_weights``): fixed seed; the batch-norm statistics are calibrated
#: on a few of the benchmark's images; each head's objectness bias is set so that about
#: ``RANDOM_CANDIDATES_PER_IMAGE`` boxes per image pass the score threshold (as with trained
#: weights; raw random outputs would pass thousands, and NMS would dominate), each for one
#: class (class logits ``RANDOM_CLASS_LOGIT_OFF``, one class per anchor ``..._ON``).
RANDOM_WEIGHTS_SEED = 0
RANDOM_CALIBRATION_IMAGES = 4
RANDOM_CANDIDATES_PER_IMAGE = 20
RANDOM_PREDICTION_SCALE = 0.1
RANDOM_MIN_BN_VARIANCE = 0.5
RANDOM_CLASS_LOGIT_OFF = -8.0
RANDOM_CLASS_LOGIT_ON = 8.0
#: Anchors' classes are spread over the class list by this step (any odd number will do).
RANDOM_CLASS_STEP = 11

#: Sample photos used for the fidelity check when there are no sample photos to be had.
CHECK_FALLBACK_IMAGES = 4
MAX_REPORTED_MISMATCHES = 10
#: Benchmark JPEGs decoded both ways by the GPU-decoding check (plus the sample photos).
GPU_CHECK_IMAGES = 16
#: EXIF orientation 6: stored rotated 90 degrees counter-clockwise, displayed rotated back.
EXIF_ROTATE_90_CW = 6
#: Other processes' CPU use during a figure (cores, averaged) above which the report warns
#: that the figures are contended.
BUSY_MACHINE_CORES = 0.25
BYTES_PER_MIB = 1 << 20
FLOPS_PER_TFLOP = 1e12


class BenchError(ValueError):
    """A benchmark that cannot run as asked; the message says what to do."""


# --------------------------------------------------------------------------- configuration


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
    seed: int = RANDOM_WEIGHTS_SEED
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
    """The torch device for ``device``; a clear error where it cannot be used."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise BenchError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type not in DEVICES:
        raise BenchError(f"--device {device!r} is not supported; use cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
            raise BenchError(
                f"--device {device}: CUDA is not available here (PyTorch {torch.__version__}, "
                f"{build}); run on a machine with an NVIDIA GPU and a CUDA build of PyTorch, "
                "or use --device cpu"
            )
        index = parsed.index or 0
        if index >= torch.cuda.device_count():
            raise BenchError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        parsed = torch.device("cuda", index)
    return parsed


# --------------------------------------------------------------------------- machine


def machine_info(device: torch.device) -> dict[str, Any]:
    """Device name, library versions and CPU facts for the report."""
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": _cpu_model(),
        "cpu": _cpu_model(),
        "cpus": available_cpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": _version("torchvision"),
        "pillow": _version("pillow"),
        "libjpeg_turbo": _libjpeg_turbo(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            device_memory_mib=round(props.total_memory / BYTES_PER_MIB),
            multiprocessors=props.multi_processor_count,
            compute_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _libjpeg_turbo() -> bool | None:
    try:
        from PIL import features

        return bool(features.check_feature("libjpeg_turbo"))
    except (ImportError, ValueError):
        return None


# --------------------------------------------------------------------------- images


@dataclass
class ImageSet:
    """The benchmark's encoded images: where they are (``objects``, plan order) and their bytes.

    ``description`` says where they come from; ``photos`` are the sample photos decoded as the
    pipeline decodes (``[H, W, 3]`` uint8 RGB), for the fidelity check (empty when they could
    not be had).
    """

    objects: list
    data: list[bytes]
    description: str
    photos: list[np.ndarray] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        sizes = [Image.open(io.BytesIO(d)).size for d in self.data]
        return {
            "count": len(self.data),
            "description": self.description,
            "mean_width": statistics.fmean(w for w, _ in sizes),
            "mean_height": statistics.fmean(h for _, h in sizes),
            "mean_bytes": statistics.fmean(len(d) for d in self.data),
        }


def sample_photo_paths() -> list[Path]:
    """The two sample photos (bus, zidane), from the weights cache or fetched into it; empty
    if neither is possible (no network, nothing cached): the benchmark then goes on without."""
    paths = []
    for remote in SAMPLE_IMAGES:
        cached = local_path(remote)
        try:
            paths.append(
                cached if cached.is_file() and verify(cached, remote).ok else fetch(remote)
            )
        except Exception as exc:  # offline, or no pip to fetch with
            logger.warning("sample photo %s unavailable (%s)", remote.filename, exc)
            return []
    return paths


def synthetic_photo(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A photo-like ``size`` (width, height) RGB image: smooth colour fields plus grain."""
    width, height = size
    coarse = rng.integers(0, 256, size=(9, 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    grain = rng.normal(0.0, 12.0, size=smooth.shape)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def generate_images(
    folder: Path, count: int, size: tuple[int, int], photos: Sequence[Image.Image], seed: int
) -> list[Path]:
    """``count`` distinct JPEGs of ``size`` (width, height) in ``folder``: random crops of
    ``photos`` with the target's aspect ratio, half of them mirrored, resized, quality 90."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)] if photos else synthetic_photo(size, rng)
        image = _random_crop(photo, width / height, rng).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"bench-{index:05d}.jpg"
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def _random_crop(photo: Image.Image, aspect: float, rng: np.random.Generator) -> Image.Image:
    """A crop of ``photo`` with ``aspect`` (width / height), at least CROP_MIN_FRACTION of the
    largest such crop, at a random place."""
    width, height = photo.size
    crop_w, crop_h = (
        (width, width / aspect) if width / height < aspect else (height * aspect, height)
    )
    scale = rng.uniform(CROP_MIN_FRACTION, 1.0)
    crop_w, crop_h = max(1, round(crop_w * scale)), max(1, round(crop_h * scale))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return photo.crop((left, top, left + crop_w, top + crop_h))


def prepare_images(config: BenchConfig, workdir: Path) -> ImageSet:
    """Generate the JPEG set (or list ``config.source``) and read every image's bytes."""
    paths = sample_photo_paths()
    photos = [imageio.read_image(path) for path in paths]
    if config.source:
        source = config.source
        description = f"the first {config.images} images of {source}"
    else:
        source = str(workdir / "images")
        pictures = [Image.fromarray(photo) for photo in photos]
        generate_images(Path(source), config.images, config.image_size, pictures, config.seed)
        content = "the sample photos" if photos else "synthetic content (no sample photos)"
        width, height = config.image_size
        description = (
            f"JPEGs {width}x{height}, quality {JPEG_QUALITY}, generated from {content} "
            "(cropped, mirrored, resized)"
        )
    objects = list(itertools.islice(open_source(source).iter_objects(), config.images))
    if not objects:
        raise BenchError(f"no images found in {source}")
    storage = storage_for(objects[0].uri)
    data = [storage.read_bytes(obj.uri) for obj in objects]
    logger.info("%d images: %s", len(objects), description)
    return ImageSet(objects, data, description, photos)


def network_inputs(
    data: Sequence[bytes], count: int, input_size: tuple[int, int], device: torch.device
) -> list[torch.Tensor]:
    """``count`` images (cycling over ``data``) decoded and resized to ``input_size`` (w, h):
    uint8 ``[3, h, w]`` tensors on ``device``."""
    distinct = [
        np.array(Image.fromarray(imageio.decode_image(d)).resize(input_size, Image.BILINEAR))
        for d in data[: min(count, len(data))]
    ]
    tensors = [torch.from_numpy(a).permute(2, 0, 1).contiguous().to(device) for a in distinct]
    return [tensors[i % len(tensors)] for i in range(count)]


# --------------------------------------------------------------------------- models


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
        check_weights_digest(self.name, weights, self.weights_sha256)
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
        weights = random_darknet_weights(
            model_config, calibration(), seed=config.seed, device=device
        )
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


@torch.no_grad()
def random_darknet_weights(
    config: ModelConfig,
    calibration: torch.Tensor,
    *,
    seed: int = RANDOM_WEIGHTS_SEED,
    candidates_per_image: int = RANDOM_CANDIDATES_PER_IMAGE,
    device: torch.device | str = "cpu",
) -> bytes:
    """A darknet ``.weights`` file (bytes) of random values that behave like trained weights
    where speed is concerned.

    Conv weights ~ N(0, 2 / fan_in) from ``seed``; batch-norm statistics from one
    training-mode forward on ``calibration`` (``[n, 3, h, w]`` float in [0, 1]), so every
    activation is of unit scale (no overflow in fp16, no denormals on CPU); prediction convs
    scaled down (moderate box sizes), their objectness biases set so that about
    ``candidates_per_image`` boxes per calibration image pass the default score threshold,
    each for one class. Speed does not depend on the values, only NMS on how many boxes pass.
    """
    generator = torch.Generator().manual_seed(seed)
    model = build_model(config)
    for conv in model.darknet_convs():
        weight = conv.conv.weight
        weight.copy_(
            torch.randn(weight.shape, generator=generator) * math.sqrt(2 / weight[0].numel())
        )
        if conv.bn is None:
            weight.mul_(RANDOM_PREDICTION_SCALE)
            conv.conv.bias.zero_()
        else:
            conv.bn.momentum = 1.0  # running statistics := the calibration batch's
    model.to(device)
    batch = calibration.to(device, torch.float32)
    model.train()
    model(batch)
    model.eval()
    for conv in model.darknet_convs():
        if conv.bn is not None:
            conv.bn.momentum = 0.1
            conv.bn.running_var.clamp_(min=RANDOM_MIN_BN_VARIANCE)
    _calibrate_heads(model, config, batch, candidates_per_image)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.weights"
        save_darknet_weights(model.darknet_convs(), path)
        return path.read_bytes()


def _calibrate_heads(
    model: torch.nn.Module, config: ModelConfig, batch: torch.Tensor, candidates_per_image: int
) -> None:
    """Shift the objectness biases so that ``candidates_per_image`` rows per image of ``batch``
    pass the score threshold; one class per anchor."""
    attrs = 5 + config.num_classes
    images = batch.shape[0]
    outputs = model(batch)
    objectness = torch.cat(
        [
            out.view(images, len(head.mask), attrs, -1)[:, :, 4].flatten()
            for out, head in zip(outputs, config.heads)
        ]
    )
    wanted = min(candidates_per_image * images, objectness.numel())
    kth = objectness.topk(wanted).values[-1]
    threshold_logit = math.log(DEFAULT_CONF_THRESHOLD / (1 - DEFAULT_CONF_THRESHOLD))
    shift = threshold_logit - float(kth) + 1e-3
    predictions = [conv for conv in model.darknet_convs() if conv.bn is None]
    anchor = 0
    for conv, head in zip(predictions, config.heads):
        bias = conv.conv.bias.view(len(head.mask), attrs)
        bias[:, 4] += shift
        bias[:, 5:] = RANDOM_CLASS_LOGIT_OFF
        for slot in range(len(head.mask)):
            bias[slot, 5 + (anchor * RANDOM_CLASS_STEP) % config.num_classes] = (
                RANDOM_CLASS_LOGIT_ON
            )
            anchor += 1


# --------------------------------------------------------------------------- timing


class OtherLoad:
    """CPU time other processes (and the hypervisor) took from this machine since creation,
    in cores averaged over the interval: a busy machine makes every figure here lower."""

    def __init__(self) -> None:
        self._start = _cpu_seconds()
        self._started = time.perf_counter()

    def cores(self) -> float | None:
        """Average cores used by everything but this process; None without ``/proc/stat``."""
        end = _cpu_seconds()
        if self._start is None or end is None:
            return None
        (busy0, own0), (busy1, own1) = self._start, end
        wall = max(time.perf_counter() - self._started, 1e-9)
        return max(0.0, (busy1 - busy0 - (own1 - own0)) / wall)


def _cpu_seconds() -> tuple[float, float] | None:
    """``(busy CPU seconds of the whole machine since boot, this process's CPU seconds)``."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    ticks = user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK"), time.process_time()


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(
    call: Callable[[], Any], seconds: float, min_calls: int = MIN_TIMED_CALLS
) -> list[float]:
    """Warm up, then call until ``seconds`` have passed (and at least ``min_calls`` times);
    returns each timed call's duration in seconds."""
    started = time.perf_counter()
    warmups = 0
    while warmups < WARMUP_MIN_CALLS or time.perf_counter() - started < WARMUP_FRACTION * seconds:
        call()
        warmups += 1
    durations: list[float] = []
    while len(durations) < min_calls or sum(durations) < seconds:
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return durations


# --------------------------------------------------------------------------- decode


def decoders(input_size: tuple[int, int]) -> dict[str, Callable[[bytes], Any]]:
    """The decoders to measure: ``full`` (:func:`decode_image`), and ``reduced`` when this
    :mod:`yolov4.imageio` has ``decode_image_reduced`` (JPEG draft decoding to at least
    ``draft_min_size`` of the network input ``(width, height)``, as the actor decodes)."""
    found = {"full": imageio.decode_image}
    reduced = getattr(imageio, "decode_image_reduced", None)
    if reduced is not None:
        min_size = getattr(imageio, "draft_min_size", tuple)(input_size)
        found["reduced"] = lambda data: reduced(data, min_size=min_size)
    return found


def measure_decode(data: Sequence[bytes], decode: Callable[[bytes], Any], seconds: float) -> dict:
    """Single-threaded decode rate over ``data`` (cycling), after one warm-up image."""
    decode(data[0])
    load = OtherLoad()
    decoded, started = 0, time.perf_counter()
    for item in itertools.cycle(data):
        decode(item)
        decoded += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and decoded >= min(MIN_DECODED_IMAGES, len(data)):
            break
    return {
        "images": decoded,
        "seconds": elapsed,
        "images_per_s_per_core": decoded / elapsed,
        "ms_per_image": 1000 * elapsed / decoded,
        "other_cores": load.cores(),
    }


# --------------------------------------------------------------------------- model only


def measure_model(
    detector: Detector, inputs: list[torch.Tensor], seconds: float, flops_per_image: int
) -> dict:
    """``detect_batch`` on resident network-sized inputs, synchronised, detections to host."""
    device = detector.device
    sync = _synchronizer(device)
    found = []

    def call() -> None:
        detections = detector.detect_batch(inputs).to("cpu")
        sync()
        found.append(len(detections.scores))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load = OtherLoad()
    durations = time_calls(call, seconds)
    total = sum(durations)
    images_per_s = len(inputs) * len(durations) / total
    timed_found = found[-len(durations) :]
    return {
        "images_per_s": images_per_s,
        "ms_per_batch": 1000 * statistics.median(durations),
        "ms_per_batch_min": 1000 * min(durations),
        "calls": len(durations),
        "seconds": total,
        "tflops": images_per_s * flops_per_image / FLOPS_PER_TFLOP,
        "detections_per_image": sum(timed_found) / (len(inputs) * len(timed_found)),
        "peak_memory_mib": (
            torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
            if device.type == "cuda"
            else None
        ),
        "other_cores": load.cores(),
    }


def run_model_only(
    model: BenchModel, images: ImageSet, config: BenchConfig, device: torch.device
) -> list[dict]:
    """One row per (precision, batch size)."""
    rows = []
    inputs = network_inputs(images.data, max(config.batches), model.config.input_size, device)
    for precision in config.precisions:
        detector = None
        for batch in config.batches:
            if detector is None or config.compile:  # compiled: one batch shape per detector
                detector = model.build(device, precision, config.compile)
            figures = measure_model(detector, inputs[:batch], config.seconds, model.flops_per_image)
            rows.append({"precision": precision, "batch_size": batch, **figures})
            logger.info(
                "model only %s batch %d: %.1f images/s", precision, batch, figures["images_per_s"]
            )
        del detector
        _free_device_memory(device)
    del inputs
    _free_device_memory(device)
    return rows


def _free_device_memory(device: torch.device) -> None:
    """Hand cached CUDA blocks back, so that the next model measures on a clean slate."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- end to end


def shard_task(
    objects: Sequence, shard_size: int, output_root: Path | str, index: int
) -> ShardTask:
    """Shard ``index``: the next ``shard_size`` objects, cycling over ``objects`` in order.
    ``output_root``: a local folder, or an ``s3://`` URI as a string."""
    start = index * shard_size
    return ShardTask(
        run_id=BENCH_RUN_ID,
        shard_id=index,
        attempt=1,
        attempt_token=f"a1-{index:04d}",
        output_root=output_root if isinstance(output_root, str) else str(output_root.resolve()),
        objects=tuple(objects[(start + k) % len(objects)] for k in range(shard_size)),
    )


def effective_shard_size(requested: int, batch: int) -> int:
    """At least two batches, a whole number of them (no partial batch in a timed shard)."""
    return max(2, math.ceil(requested / batch)) * batch


def measure_e2e(
    processor: ShardProcessor,
    tasks: Callable[[int], ShardTask],
    seconds: float,
    shards_in_flight: int = DEFAULT_SHARDS_PER_ACTOR,
) -> dict:
    """One warm-up shard, then shards until ``seconds`` (at least MIN_TIMED_SHARDS), with
    ``shards_in_flight`` of them running at once as in the Ray actor (the driver's
    ``shards_per_actor``): the next loads while the model finishes one, which then writes."""
    processor.process(tasks(0))
    load = OtherLoad()
    results: list[ShardResult] = []
    submitted = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(shards_in_flight, thread_name_prefix="shard") as shards:
        running: deque[Future] = deque()
        while True:
            while len(running) < shards_in_flight and (
                submitted < MIN_TIMED_SHARDS or time.perf_counter() - started < seconds
            ):
                submitted += 1
                running.append(shards.submit(processor.process, tasks(submitted)))
            if not running:
                break
            results.append(running.popleft().result())
    wall = time.perf_counter() - started
    images = sum(r.num_images for r in results)
    total = lambda name: sum(getattr(r, name) for r in results)  # noqa: E731
    return {
        "images_per_s": images / wall,
        "images": images,
        "shards": len(results),
        "seconds": wall,
        "model_seconds": total("detect_seconds"),
        "waited_seconds": total("wait_seconds"),
        "shards_in_flight": shards_in_flight,
        "decode_cpu_seconds": total("decode_seconds"),
        "write_seconds": total("write_seconds"),
        "model_busy_fraction": total("detect_seconds") / wall,
        "errors": total("num_errors"),
        "detections_per_image": total("num_detections") / images,
        "other_cores": load.cores(),
    }


def run_e2e(
    model: BenchModel, images: ImageSet, config: BenchConfig, device: torch.device, workdir: Path
) -> list[dict]:
    """One row per (precision, batch size, decode mode), each with a fresh ShardProcessor."""
    rows = []
    for precision, batch, decode in itertools.product(
        config.precisions, config.batches, config.decode
    ):
        shard_size = effective_shard_size(config.shard_size, batch)
        output = workdir / f"out-{precision}-{batch}-{decode}"
        actor = ActorConfig(
            batch_size=batch,
            fetch_threads=config.fetch_threads,
            decode_threads=config.decode_threads,
            device=str(device),
            precision=precision,
            torch_threads=config.threads,
            decode=decode,
            compile=config.compile,
        )
        with ShardProcessor(model.spec, model.weights, actor) as processor:
            figures = measure_e2e(
                processor,
                functools.partial(shard_task, images.objects, shard_size, output),
                config.seconds,
            )
            threads = {
                "decode_resolved": getattr(processor, "decode_mode", decode),
                "torch_threads": processor.torch_threads,
                "decode_threads": config.decode_threads or processor.cpus,
            }
        if figures["errors"]:
            logger.warning("%d images failed to decode or read end to end", figures["errors"])
        row = {"precision": precision, "batch_size": batch, "decode": decode}
        rows.append({**row, "shard_size": shard_size, **threads, **figures})
        logger.info(
            "end to end %s batch %d decode %s: %.1f images/s",
            precision,
            batch,
            decode,
            figures["images_per_s"],
        )
    return rows


# --------------------------------------------------------------------------- fidelity


def fidelity_check(
    model: BenchModel, images: ImageSet, precisions: Sequence[str], device: torch.device
) -> list[dict]:
    """Detections of each half precision against fp32's, on the same decoded sample photos
    (or the first benchmark images when the photos are not available), same device."""
    photos = images.photos or [imageio.decode_image(d) for d in images.data[:CHECK_FALLBACK_IMAGES]]
    where = "the sample photos" if images.photos else "the first benchmark images"
    detector = model.build(device, "fp32")
    reference = detector.detect(photos)
    del detector
    rows = []
    for precision in precisions:
        if precision == "fp32":
            continue
        detector = model.build(device, precision)
        found = detector.detect(photos)
        threshold = detector.conf_threshold
        del detector
        _free_device_memory(device)
        row = _fidelity_row(
            reference, found, PRECISION_TOLERANCES[precision], threshold, precision=precision,
            reference="fp32", images=len(photos), on=where,
        )  # fmt: skip
        rows.append(row)
        logger.info("fidelity %s vs fp32: %s", precision, "PASS" if row["passed"] else "FAIL")
    if device.type == "cuda" and gpu_jpeg_available(str(device)):
        rows.append(gpu_decode_check(model, images, device))
    return rows


def gpu_decode_check(model: BenchModel, images: ImageSet, device: torch.device) -> dict:
    """Detections (fp32) on JPEGs decoded by nvJPEG against the same files decoded by Pillow:
    the benchmark's JPEGs and one EXIF-rotated copy of each sample photo."""
    files = [data for data in images.data[:GPU_CHECK_IMAGES] if gpu_decodable(data, None)]
    files += [_exif_rotated(photo) for photo in images.photos]
    detector = model.build(device, "fp32")
    to_tensor = lambda rgb: torch.from_numpy(rgb).permute(2, 0, 1)  # noqa: E731
    on_cpu = [to_tensor(imageio.decode_image(data)) for data in files]
    on_gpu = decode_jpegs([encoded(data) for data in files], device)
    failed = sum(image is None for image in on_gpu)
    sizes_differ = sum(g is not None and g.shape != c.shape for g, c in zip(on_gpu, on_cpu))
    pairs = [(c, g) for c, g in zip(on_cpu, on_gpu) if g is not None]
    reference = [detector.per_image(detector.detect_batch([c]))[0] for c, _ in pairs]
    found = [detector.per_image(detector.detect_batch([g]))[0] for _, g in pairs]
    pixel_diff = [(g.cpu().int() - c.int()).abs() for c, g in pairs if g.shape == c.shape]
    threshold = detector.conf_threshold
    del detector
    _free_device_memory(device)
    extra = [f"{failed} file(s) nvJPEG could not decode"] * bool(failed)
    extra += [f"{sizes_differ} file(s) decoded to another size"] * bool(sizes_differ)
    row = _fidelity_row(
        reference, found, GPU_DECODE_TOLERANCE, threshold, extra_problems=extra,
        precision="fp32", decode="gpu", reference="Pillow decode", images=len(files),
        on="the benchmark's JPEGs and EXIF-rotated sample photos",
        max_pixel_diff=max((int(d.max()) for d in pixel_diff), default=0),
        mean_pixel_diff=statistics.fmean(float(d.float().mean()) for d in pixel_diff)
        if pixel_diff
        else 0.0,
    )  # fmt: skip
    logger.info("fidelity of GPU decoding vs Pillow: %s", "PASS" if row["passed"] else "FAIL")
    return row


def _fidelity_row(
    expected: Sequence[list[Detection]],
    found: Sequence[list[Detection]],
    tolerance: Tolerance,
    threshold: float,
    *,
    extra_problems: Sequence[str] = (),
    **fields: Any,
) -> dict:
    """One fidelity row: ``fields`` (what was compared, on what), the worst differences, the
    mismatches of ``found`` from ``expected`` beyond ``tolerance`` (plus ``extra_problems``)
    and the verdict."""
    problems = [
        f"image {index}: {problem}"
        for index, (ref, fast) in enumerate(zip(expected, found))
        for problem in mismatches(ref, fast, tolerance, threshold)
    ]
    problems += extra_problems
    worst = [max_differences(ref, fast) for ref, fast in zip(expected, found)]
    return {
        **fields,
        "reference_detections": sum(len(ref) for ref in expected),
        "detections": sum(len(fast) for fast in found),
        "max_score_diff": max((score for score, _ in worst), default=0.0),
        "min_iou": min((overlap for _, overlap in worst), default=1.0),
        "score_tolerance": tolerance.score_tol,
        "min_iou_tolerance": tolerance.min_iou,
        "mismatch_count": len(problems),
        "mismatches": problems[:MAX_REPORTED_MISMATCHES],
        "passed": not problems,
    }


def _exif_rotated(photo: np.ndarray) -> bytes:
    """A JPEG of ``photo`` stored rotated with EXIF orientation 6, so that its display
    orientation is ``photo`` again (both decoders must apply the tag)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_90_CW
    buffer = io.BytesIO()
    Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90).save(
        buffer, "JPEG", quality=JPEG_QUALITY, exif=exif
    )
    return buffer.getvalue()


# --------------------------------------------------------------------------- the whole run


def calibration_batch(images: ImageSet, input_size: tuple[int, int]) -> torch.Tensor:
    """``[n, 3, h, w]`` float in [0, 1]: a few benchmark images at the network input size."""
    tensors = network_inputs(
        images.data, RANDOM_CALIBRATION_IMAGES, input_size, torch.device("cpu")
    )
    return torch.stack(tensors).float().div_(255.0)


def add_ratios(report: dict, decode_threads: int) -> None:
    """Input-side headroom per model-only row, end-to-end / model-only per end-to-end row."""
    decode = report.get("decode", {})
    model_rows = {(r["precision"], r["batch_size"]): r for r in report.get("model_only", [])}
    for row in model_rows.values():
        row["decode_headroom"] = {
            name: figures["images_per_s_per_core"] * decode_threads / row["images_per_s"]
            for name, figures in decode.items()
        }
    for row in report.get("e2e", []):
        model_row = model_rows.get((row["precision"], row["batch_size"]))
        row["model_images_per_s"] = model_row["images_per_s"] if model_row else None
        row["e2e_over_model"] = (
            row["images_per_s"] / model_row["images_per_s"] if model_row else None
        )


def report_notes(config: BenchConfig, device: torch.device, report: dict) -> list[str]:
    """What a reader must know to read the figures right."""
    notes = []
    busiest = max_other_cores(report)
    if busiest is not None and busiest > BUSY_MACHINE_CORES:
        notes.append(
            f"other processes used up to {busiest:.1f} cores during the measurements: the "
            "figures are lower than this machine gives, and their ratios unreliable; measure "
            "on a quiet machine"
        )
    if config.random_weights:
        notes.append(
            f"random weights (seed {config.seed}; batch norm calibrated on the benchmark "
            f"images, objectness biased so that about {RANDOM_CANDIDATES_PER_IMAGE} boxes per "
            "image pass the threshold): speed does not depend on the values; the detections "
            "mean nothing"
        )
        if config.run_check:
            notes.append(
                "the fidelity tolerances were stated for trained weights; random ones amplify "
                "rounding differences, so the check says little here"
            )
    if STAGE_DECODE in config.only and "reduced" not in report.get("decode", {}):
        notes.append("reduced-size JPEG decoding is not in this version: not measured")
    if device.type == "cpu":
        notes.append(
            "on CPU the decode threads compete with the model for the same cores: the input "
            "headroom is an upper bound, and end to end pays for the sharing"
        )
        slow = [p for p in config.precisions if not fast_on_cpu(p)]
        if slow:
            notes.append(
                f"{'/'.join(slow)} on this CPU has no native kernels: for checking numerics, "
                "not for speed"
            )
    if STAGE_DECODE in config.only and device.type == "cuda":
        notes.append(
            "input headroom counts CPU decoding; with --decode gpu the GPU decodes the JPEGs"
        )
    return notes


def max_other_cores(report: dict) -> float | None:
    """The most CPU other processes used during any figure of ``report`` (cores)."""
    rows = [*report.get("decode", {}).values(), *report.get("model_only", [])]
    loads = [row["other_cores"] for row in rows + report.get("e2e", [])]
    return max((load for load in loads if load is not None), default=None)


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure what ``config`` asks for; returns the report (JSON-ready, unrounded)."""
    started = time.perf_counter()
    device = check_device(config.device)
    threads = config.threads or available_cpus()
    decode_threads = config.decode_threads or available_cpus()
    torch.set_num_threads(threads)
    name, arch = architecture(config)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "parameters": config.parameters(),
        "torch_threads": threads,
        "decode_threads": decode_threads,
        "model": {
            "name": name,
            "arch": arch.arch,
            "input_width": arch.input_size[0],
            "input_height": arch.input_size[1],
            "flops_per_image": model_flops(arch),
            "gflops_per_image": model_flops(arch) / 1e9,
        },
    }
    with tempfile.TemporaryDirectory(prefix="yolo-batch-bench-") as tmp:
        workdir = Path(tmp)
        images = prepare_images(config, workdir)
        report["images"] = images.summary()
        if STAGE_DECODE in config.only:
            report["decode"] = {
                label: measure_decode(images.data, decode, config.seconds)
                for label, decode in decoders(arch.input_size).items()
            }
        if STAGE_MODEL in config.only or STAGE_E2E in config.only or config.run_check:
            model = load_model(config, lambda: calibration_batch(images, arch.input_size), device)
            report["model"] = model.summary()
            if STAGE_MODEL in config.only:
                report["model_only"] = run_model_only(model, images, config, device)
            if STAGE_E2E in config.only:
                report["e2e"] = run_e2e(model, images, config, device, workdir)
            if config.run_check:
                report["check"] = fidelity_check(model, images, config.precisions, device)
    add_ratios(report, decode_threads)
    report["notes"] = report_notes(config, device, report)
    report["elapsed_s"] = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------- output


def format_table(report: dict[str, Any]) -> str:
    """The report as the plain-text tables ``yolo-batch bench`` prints."""
    lines = _header_lines(report)
    if "decode" in report:
        lines += ["", f"{'decode, one core':<36}{'images/s/core':>14}{'ms/image':>10}"]
        for label, figures in report["decode"].items():
            what = "full (decode_image)" if label == "full" else "reduced (decode_image_reduced)"
            lines.append(
                f"  {what:<34}{figures['images_per_s_per_core']:>14.1f}"
                f"{figures['ms_per_image']:>10.2f}"
            )
    if "model_only" in report:
        lines += _model_lines(report)
    if "e2e" in report:
        lines += _e2e_lines(report)
    for row in report.get("check", []):
        verdict = "PASS" if row["passed"] else f"FAIL ({row['mismatch_count']} mismatches)"
        lines += [
            "",
            f"fidelity {_fast_path(row)} vs {row['reference']} on {row['on']} "
            f"({row['images']} images, "
            f"{row['reference_detections']} reference detections): max score diff "
            f"{row['max_score_diff']:.4f} (tolerance {row['score_tolerance']}), min IoU "
            f"{row['min_iou']:.4f} (tolerance {row['min_iou_tolerance']}): {verdict}",
        ]
        lines += [f"  {problem}" for problem in row["mismatches"]]
    if report.get("notes"):
        lines += [""] + [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _header_lines(report: dict[str, Any]) -> list[str]:
    model, machine = report["model"], report["machine"]
    weights = {"pretrained": "official weights", "file": "weights file", "random": "random weights"}
    lines = [
        f"yolo-batch bench: {model['name']} at {model['input_width']}x{model['input_height']}, "
        f"{model['gflops_per_image']:.2f} GFLOP/image"
        + (f", {weights[model['weights']]}" if "weights" in model else ""),
        f"device {machine['device']} ({machine['device_name']}), PyTorch {machine['torch']}, "
        f"{report['torch_threads']} torch threads, {report['decode_threads']} decode threads",
    ]
    if "images" in report:
        images = report["images"]
        lines.append(
            f"images: {images['count']} {images['description']}; mean "
            f"{images['mean_width']:.0f}x{images['mean_height']:.0f}, "
            f"{images['mean_bytes'] / 1000:.0f} kB"
        )
    return lines


def _model_lines(report: dict[str, Any]) -> list[str]:
    decode = list(report.get("decode", {}))
    headroom = f"input headroom ({' / '.join(decode)} decode)" if decode else ""
    lines = [
        "",
        "model only: decoded images resized and on the device; detect_batch (forward, decode, "
        "NMS, to host)",
        f"  {'precision':<10}{'batch':>6}{'images/s':>11}{'ms/batch':>10}{'TFLOP/s':>9}"
        f"{'peak MiB':>10}  {headroom}",
    ]
    for row in report["model_only"]:
        memory = row["peak_memory_mib"]
        ratios = " / ".join(f"{row['decode_headroom'][name]:.2f}x" for name in decode)
        lines.append(
            f"  {row['precision']:<10}{row['batch_size']:>6}{row['images_per_s']:>11.1f}"
            f"{row['ms_per_batch']:>10.2f}{row['tflops']:>9.3f}"
            f"{(f'{memory:.0f}' if memory is not None else '-'):>10}  {ratios}"
        )
    return lines


def _e2e_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "end to end: ShardProcessor in this process (read, decode, detect, write Parquet); "
        "decode a>b: asked for a, the actor chose b",
        f"  {'precision':<10}{'batch':>6}{'decode':>10}{'shard':>7}{'images/s':>11}"
        f"{'e2e/model':>11}{'model busy':>12}{'waited s':>10}",
    ]
    for row in report["e2e"]:
        ratio = row["e2e_over_model"]
        decode = row["decode"]
        if row["decode_resolved"] != decode:
            decode = f"{decode}>{row['decode_resolved']}"
        lines.append(
            f"  {row['precision']:<10}{row['batch_size']:>6}{decode:>10}"
            f"{row['shard_size']:>7}{row['images_per_s']:>11.1f}"
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>11}"
            f"{100 * row['model_busy_fraction']:>11.0f}%{row['waited_seconds']:>10.2f}"
        )
    return lines


def _fast_path(check: dict) -> str:
    """What a fidelity row measured: ``fp16``, ``bf16`` or ``GPU decoding``."""
    return "GPU decoding" if check.get("decode") == "gpu" else check["precision"]


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report, every figure unrounded, to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":  # ``python -m pipeline.bench``: the command line, without Ray
    from pipeline.cli.bench_cmd import main

    sys.exit(main())
