"""``Detector``: the one entry point other code uses to run YOLOv4.

Build it from a pretrained name or from darknet cfg + weights (+ names); it owns the model on
its device, the preprocessing, the decode and the NMS::

    detector = Detector.from_pretrained("yolov4-tiny")
    per_image = detector.detect(["bus.jpg", "zidane.jpg"])       # list[list[Detection]]

    # Pipeline path: uint8 [3, H, W] tensors in, flat device tensors out.
    dets = detector.detect_batch([torch.from_numpy(rgb).permute(2, 0, 1)])

Boxes are ``(x_min, y_min, x_max, y_max)`` in pixels of the original image after EXIF
orientation, clipped to it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from yolov4.config import DEFAULT_CONFIGS, ModelConfig, check_input_size
from yolov4.darknet_cfg import check_conv_specs, config_from_cfg, parse_cfg_text, read_names
from yolov4.darknet_weights import load_darknet_weights
from yolov4.decode import RawPredictions, decode_outputs
from yolov4.devices import check_device
from yolov4.errors import YoloError
from yolov4.hub import check_sha256, fetch
from yolov4.imageio import DEFAULT_MAX_IMAGE_PIXELS, load_images
from yolov4.layers import DarknetConv, Mish
from yolov4.model import build_model
from yolov4.onednn import pack_convolutions
from yolov4.postprocess import (
    DEFAULT_CONF_THRESHOLD,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_NMS_THRESHOLD,
    Detections,
    postprocess,
)
from yolov4.preprocess import (
    RESIZE_DARKNET,
    RESIZE_LETTERBOX,
    RESIZE_MODES,
    ImageTransforms,
    prepare_batch,
)
from yolov4.pretrained import PretrainedModel, get_pretrained
from yolov4.suggest import did_you_mean

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_BATCH_SIZE = 8
#: On CPU, the default ``micro_batch`` packs at most this many input pixels into one model call
#: (2 images at 416x416, 1 at 608x608). Larger calls make each activation map a fresh
#: allocation of tens of MB, which glibc's malloc returns to the OS after use and page-faults
#: in again on the next call; smaller ones reuse memory that is already mapped, which is faster
#: on CPU (docs/performance.md has the measured gain).
CPU_MICRO_BATCH_PIXELS = 2 * 416 * 416


@dataclass
class PreparedBatch:
    """A network batch ready for the model (:meth:`Detector.prepare`).

    - ``batch``: ``[B, 3, net_h, net_w]`` in ``[0, 1]``, the model's dtype, on its device;
    - ``transforms``: the per-image geometry that maps boxes back to image pixels;
    - ``ready``: on CUDA, an event recorded on the stream that prepared the batch, when that
      was not the stream the model runs on; ``None`` otherwise.
    """

    batch: torch.Tensor
    transforms: ImageTransforms
    ready: torch.cuda.Event | None = None


@dataclass(frozen=True)
class Detection:
    """One detected object; box in pixels of the original image."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    score: float
    class_id: int
    class_name: str

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)


class Detector:
    """A YOLOv4 / YOLOv4-tiny model ready for inference on one device.

    Args:
        model: a :class:`yolov4.model.YOLOv4` or ``YOLOv4Tiny`` with weights loaded (not fused).
        class_names: one name per class; defaults to ``class<i>``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; one this machine lacks raises
            :class:`~yolov4.devices.DeviceError` (:func:`~yolov4.devices.check_device`).
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``: the dtype of the weights and
            activations (the whole model is cast, no autocast; decode and NMS stay float32).
            On CPU, bf16 is faster than fp32 where oneDNN has native bf16 kernels (AVX512-BF16
            or AMX; :func:`fast_on_cpu`); fp16 runs there for checking numerics.
        resize: ``"darknet"`` (default; ``"letterbox"`` if the cfg says ``letter_box=1``),
            ``"bilinear"`` or ``"letterbox"``; see :mod:`yolov4.preprocess`.
        input_size: network input ``(width, height)`` or one int; defaults to the cfg's.
        conf_threshold, nms_threshold: darknet's ``thresh`` (0.25) and ``nms`` (0.45).
        nms_kind: ``"diou"`` or ``"iou"``; defaults to the cfg's rule.
        max_detections: per image, highest scores first.
        classes: optional class ids or names to keep; others are dropped before NMS.
        fuse: fold batch norm into the convolutions (same outputs, faster). Either way the
            model is for inference only from then on: its activations run in place.
        channels_last: run the model in channels-last (NHWC) memory format. ``None`` (default):
            on; oneDNN's NHWC convolution and pooling kernels are faster on CPU and cuDNN's
            tensor-core kernels take NHWC. Outputs equal up to float rounding (a different
            summation order).
        micro_batch: at most this many images per model call; larger batches are run in
            slices and the outputs concatenated (same results per image). ``None`` (default):
            on CPU as many as fit in ``CPU_MICRO_BATCH_PIXELS``, elsewhere the whole batch.
        compile: run the model through ``torch.compile`` (Inductor, static shapes, weights
            frozen as constants), after a compilation on the first call of each batch size
            (:meth:`warm_up` does it ahead). On CPU it adds little to the eager model with
            ``prepack``, which already packs the weights; it is meant for GPUs, where it fuses
            the Mish activations (docs/performance.md has the measured figures).
            Calls smaller than the largest batch seen are padded up to it, so a stream of
            batches compiles once.
        prepack: on CPU, lay each convolution's weight out for oneDNN once, here, instead of
            on every call, and run leaky ReLU inside the convolution (faster forward passes,
            outputs equal up to float rounding; checked here on a small random image, the
            plain path kept if they are not; :mod:`yolov4.onednn`).
            Applies where available: fp32 or native bf16, folded batch norm, not compiled
            (compiling packs the weights itself). Costs a second copy of the weights in memory.
        name: a label for logs and result records.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        class_names: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        resize: str | None = None,
        input_size: int | tuple[int, int] | None = None,
        conf_threshold: float = DEFAULT_CONF_THRESHOLD,
        nms_threshold: float = DEFAULT_NMS_THRESHOLD,
        nms_kind: str | None = None,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        classes: Sequence[int | str] | None = None,
        fuse: bool = True,
        channels_last: bool | None = None,
        micro_batch: int | None = None,
        compile: bool = False,  # noqa: A002 (torch.compile's own name for it)
        prepack: bool = True,
        name: str | None = None,
    ) -> None:
        config: ModelConfig = model.config
        self.device = check_device(device)
        if precision not in PRECISIONS:
            raise YoloError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if self.device.type == "cpu" and not fast_on_cpu(precision):
            logger.warning(
                "precision %s on this CPU runs several times slower than fp32 (no native "
                "kernels): use it to check numerics, not for speed",
                precision,
            )
        if input_size is not None:
            try:  # with_input_size re-validates the config: ValueError for a bad size
                config = config.with_input_size(input_size)
                check_input_size(config.input_size)
            except ValueError as exc:
                raise YoloError(str(exc)) from None
        resize = resize or (RESIZE_LETTERBOX if config.letterbox else RESIZE_DARKNET)
        if resize not in RESIZE_MODES:
            raise YoloError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if not 0.0 <= conf_threshold < 1.0:
            raise YoloError(f"conf_threshold must be in [0, 1), got {conf_threshold}")
        if not 0.0 < nms_threshold <= 1.0:
            raise YoloError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
        if max_detections < 1:
            raise YoloError(f"max_detections must be at least 1, got {max_detections}")
        if micro_batch is not None and micro_batch < 1:
            raise YoloError(f"micro_batch must be at least 1, got {micro_batch}")
        names = tuple(class_names or config.class_names) or tuple(
            f"class{i}" for i in range(config.num_classes)
        )
        if len(names) != config.num_classes:
            raise YoloError(
                f"{len(names)} class names given for a model with {config.num_classes} classes"
            )
        self.config = config
        self.class_names = names
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.resize = resize
        self.conf_threshold = conf_threshold
        self.nms_threshold = nms_threshold
        self.nms_kind = nms_kind or config.nms_kind
        self.max_detections = max_detections
        self.name = name or config.arch
        self.class_mask = self._class_mask(classes)
        model = model.eval()
        if fuse:
            model.fuse()
        _inplace_activations(model)
        self.channels_last = True if channels_last is None else bool(channels_last)
        self._memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, self.dtype, memory_format=self._memory_format)
        if self.device.type == "cuda":
            # Fixed input shapes: let cuDNN time its kernels once per shape and keep the best.
            torch.backends.cudnn.benchmark = True
        if micro_batch is None and self.device.type == "cpu":
            width, height = config.input_size
            micro_batch = max(1, CPU_MICRO_BATCH_PIXELS // (width * height))
        self.micro_batch = micro_batch
        self.compiled = bool(compile)
        #: How many convolutions run on weights packed for oneDNN (0: the plain path).
        self.packed_convolutions = 0
        if prepack and not compile and self.device.type == "cpu":
            # Packed for the shape of this detector's model calls.
            width, height = config.input_size
            calls = self.micro_batch or DEFAULT_BATCH_SIZE
            self.packed_convolutions = pack_convolutions(
                self.model, (calls, 3, height, width), self._memory_format
            )
        self._compiled_model = torch.compile(self.model, dynamic=False) if compile else None
        self._compiled_batch = 0  # the largest batch the compiled model has run

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_darknet(
        cls,
        cfg: str | os.PathLike,
        weights: str | os.PathLike | bytes,
        names: str | os.PathLike | Sequence[str] | None = None,
        **kwargs,
    ) -> Detector:
        """Build from a darknet cfg file, ``.weights`` and optional ``.names`` file.

        The cfg is checked layer by layer against the architecture it describes before any
        weight is read; the weights must fill the model exactly.
        """
        kwargs.setdefault("name", Path(cfg).stem)
        return cls.from_darknet_text(
            Path(cfg).read_text(encoding="utf-8", errors="replace"), weights, names, **kwargs
        )

    @classmethod
    def from_darknet_text(
        cls,
        cfg_text: str,
        weights: str | os.PathLike | bytes,
        names: str | os.PathLike | Sequence[str] | None = None,
        **kwargs,
    ) -> Detector:
        """As :meth:`from_darknet`, with the cfg given as its text (e.g. read from object
        storage) rather than as a file."""
        sections = parse_cfg_text(cfg_text)
        class_names = (
            tuple(names)
            if isinstance(names, (list, tuple))
            else (read_names(names) if names is not None else ())
        )
        config = config_from_cfg(sections, class_names)
        model = build_model(config)
        convs = model.darknet_convs()
        check_conv_specs(sections, [conv.spec for conv in convs], config.arch)
        model_name = f"{config.arch} ({config.num_classes} classes)"
        load_darknet_weights(convs, weights, model_name=model_name)
        kwargs.setdefault("class_names", class_names or None)
        return cls(model, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        model: str | PretrainedModel,
        *,
        cache: str | os.PathLike | None = None,
        weights: bytes | None = None,
        **kwargs,
    ) -> Detector:
        """Build from a registered pretrained model (``"yolov4"``, ``"yolov4-tiny"``, or a
        :class:`~yolov4.pretrained.PretrainedModel`).

        Fetches the weights into the cache (``cache``, else ``$YOLO_BATCH_CACHE``, else
        ``~/.cache/yolo-batch``) on first use and verifies their sha256 every time.
        ``weights``: the file's bytes when the caller already holds them (e.g. shipped to a
        worker); they are verified against the registry's sha256 too.
        """
        entry = get_pretrained(model) if isinstance(model, str) else model
        if weights is None:
            weights = fetch(entry.weights, cache=cache)
        else:
            check_sha256(weights, entry.weights.sha256, f"the weights given for {entry.name}")
        base = DEFAULT_CONFIGS[entry.arch]
        config = ModelConfig(
            arch=base.arch,
            num_classes=len(entry.class_names),
            anchors=base.anchors,
            heads=base.heads,
            input_size=tuple(entry.input_size),
            letterbox=base.letterbox,
            nms_kind=base.nms_kind,
            nms_beta=base.nms_beta,
            class_names=tuple(entry.class_names),
        )
        model = build_model(config)
        load_darknet_weights(model.darknet_convs(), weights, model_name=entry.name)
        kwargs.setdefault("name", entry.name)
        kwargs.setdefault("class_names", entry.class_names)
        return cls(model, **kwargs)

    # ----------------------------------------------------------------- properties
    @property
    def input_size(self) -> tuple[int, int]:
        """Network input ``(width, height)``."""
        return self.config.input_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    # ----------------------------------------------------------------- inference
    def forward_raw(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """The model's raw head tensors for a prepared ``[B, 3, h, w]`` float batch in [0, 1].

        Returned contiguous (NCHW) whatever the model's memory format.
        """
        return [o.contiguous() for o in self._forward(batch)]

    def predict_raw(self, batch: torch.Tensor) -> RawPredictions:
        """Decoded rows (before thresholds and NMS) for a prepared batch."""
        with torch.inference_mode():
            return decode_outputs(self._forward(batch), self.config)

    def detect_batch(
        self,
        images: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> Detections:
        """Detect on decoded images; everything stays on the device.

        ``images``: each ``[3, H_i, W_i]`` uint8 RGB (display orientation), sizes may differ;
        on the host (pinned memory makes the copy asynchronous) or on ``self.device``.
        ``image_sizes``: optional ``(width, height)`` per image to report boxes in, for images
        decoded at a reduced scale (JPEG draft decoding); default each tensor's own size.
        Returns flat :class:`~yolov4.postprocess.Detections` on ``self.device``.

        Equal to ``detect_prepared(prepare(images, image_sizes))``; a pipeline calls the two
        halves apart to prepare the next batch while the model runs this one.
        """
        return self.detect_prepared(self.prepare(images, image_sizes))

    def prepare(
        self,
        images: Sequence[torch.Tensor],
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> PreparedBatch:
        """The first half of :meth:`detect_batch`: copy ``images`` to the device and resize
        them into the network batch (:func:`~yolov4.preprocess.prepare_batch`).

        On CUDA the work is queued on the current stream; to run it on a side stream while the
        model computes on the default one, call this under ``torch.cuda.stream(side)`` and set
        the result's ``ready`` to an event recorded on ``side`` afterwards.
        """
        with torch.inference_mode():
            batch, transforms = prepare_batch(
                images,
                self.input_size,
                self.resize,
                self.device,
                dtype=self.dtype,
                image_sizes=image_sizes,
                memory_format=self._memory_format,
            )
        return PreparedBatch(batch, transforms)

    def detect_prepared(self, prepared: PreparedBatch) -> Detections:
        """The second half of :meth:`detect_batch`: forward, decode and NMS on a prepared batch.

        A batch prepared on another CUDA stream (``prepared.ready`` set) is waited for on the
        device, not on the host, and its memory is marked in use by this stream.
        """
        batch, transforms = prepared.batch, prepared.transforms
        if prepared.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(prepared.ready)
            for tensor in (batch, transforms.image_sizes, transforms.offset, transforms.scale):
                tensor.record_stream(stream)  # not reused by the other stream's allocations
        with torch.inference_mode():
            predictions = decode_outputs(self._forward(batch), self.config)
            return postprocess(
                predictions,
                transforms,
                conf_threshold=self.conf_threshold,
                nms_threshold=self.nms_threshold,
                nms_kind=self.nms_kind,
                nms_beta=self.config.nms_beta,
                max_detections=self.max_detections,
                class_mask=self.class_mask,
            )

    def detect(
        self,
        images: Sequence,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> list[list[Detection]]:
        """Detect on paths, encoded bytes, PIL images or ``[H, W, 3]`` RGB arrays.

        Returns one list of :class:`Detection` per input, highest score first. An image that
        cannot be read raises (``FileNotFoundError``, :class:`~yolov4.errors.ImageDecodeError`).
        A single image (not in a list) raises ``TypeError``.
        """
        single = isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike))
        if single or getattr(images, "ndim", 4) < 4 or not hasattr(images, "__getitem__"):
            # A bare path/bytes/array would otherwise be iterated as characters/bytes/rows.
            raise TypeError(
                f"detect takes a list of images, not one {type(images).__name__}; "
                "wrap a single image in a list: detect([image])"
            )
        results: list[list[Detection]] = []
        for start in range(0, len(images), batch_size):
            arrays = load_images(images[start : start + batch_size], max_pixels=max_pixels)
            tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
            results += self.per_image(self.detect_batch(tensors))
        return results

    def per_image(self, detections: Detections) -> list[list[Detection]]:
        """Flat batch :class:`~yolov4.postprocess.Detections` (any device) as one list of
        :class:`Detection` per image, highest score first."""
        return [
            [
                Detection(*box, score, class_id, self.class_names[class_id])
                for box, score, class_id in zip(boxes.tolist(), scores.tolist(), class_ids.tolist())
            ]
            for boxes, scores, class_ids in detections.to("cpu").split()
        ]

    # ----------------------------------------------------------------- helpers
    def _forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """Head outputs in the model's memory format (decode reads NHWC directly)."""
        with torch.inference_mode():
            batch = batch.to(self.device, self.dtype, memory_format=self._memory_format)
            step = self.micro_batch or batch.shape[0]
            if batch.shape[0] <= step:
                return [o.float() for o in self._run_model(batch)]
            slices = [self._run_model(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
            return [torch.cat(heads).float() for heads in zip(*slices)]

    def warm_up(self, batch_size: int) -> None:
        """Run one zero batch of ``batch_size`` through the model: with ``compile``, compiles
        it now (a missing compiler fails here, with what to do, not on the first real batch).
        """
        width, height = self.input_size
        batch = torch.zeros((batch_size, 3, height, width), dtype=self.dtype, device=self.device)
        try:
            self._forward(batch)
        except Exception as exc:
            if not self.compiled:
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            raise YoloError(
                f"torch.compile could not compile the model ({type(exc).__name__}: {first_line}); "
                "run without compile, or install what Inductor needs (a C++ compiler for CPU, "
                "Triton for CUDA)"
            ) from exc

    def _run_model(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """One model call on ``[n, 3, h, w]``; compiled, padded up to the largest batch it has
        run (one compilation, not one per size, for the smaller last batch of each stream)."""
        if self._compiled_model is None:
            return self.model(batch)
        count = batch.shape[0]
        self._compiled_batch = max(self._compiled_batch, count)
        if count < self._compiled_batch:
            padding = batch.new_zeros((self._compiled_batch - count, *batch.shape[1:]))
            batch = torch.cat([batch, padding]).contiguous(memory_format=self._memory_format)
        # Frozen weights: constants to Inductor, pre-packed once for oneDNN (without it, on CPU,
        # each call re-lays out every convolution's weights).
        from torch._inductor import config as inductor_config  # slow to import: on demand

        with inductor_config.patch(freezing=True):
            heads = self._compiled_model(batch)
        return [head[:count] for head in heads]

    def _class_mask(self, classes: Sequence[int | str] | None) -> torch.Tensor | None:
        if classes is None:
            return None
        mask = torch.zeros(self.config.num_classes, dtype=torch.bool)
        for item in classes:
            if isinstance(item, str) and not item.isdigit():
                if item not in self.class_names:
                    raise YoloError(
                        f"unknown class {item!r}; {did_you_mean(item, self.class_names)}the "
                        f"model's classes include {', '.join(self.class_names[:8])}, ..."
                    )
                mask[self.class_names.index(item)] = True
            else:
                class_id = int(item)
                if not 0 <= class_id < self.config.num_classes:
                    raise YoloError(
                        f"class id {class_id} out of range 0..{self.config.num_classes - 1}"
                    )
                mask[class_id] = True
        return mask.to(self.device)


def fast_on_cpu(precision: str) -> bool:
    """Whether ``precision`` runs at least as fast as fp32 on this CPU: fp32 itself, and bf16
    where oneDNN has native bf16 kernels (AVX512-BF16 or AMX; docs/performance.md has the
    measured gain). fp16 convolutions have no fast CPU kernels in PyTorch."""
    if precision == "fp32":
        return True
    if precision == "bf16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _inplace_activations(model: torch.nn.Module) -> None:
    """Make each conv layer's activation overwrite its input instead of allocating a new map.

    Safe for inference: an activation's input is the fresh output of its own convolution (or
    batch norm), read by nothing else. Same kernels, same values; on CPU it saves one
    allocation, and the page faults of first touching it, per layer (a few percent).
    """
    for layer in model.modules():
        if isinstance(layer, DarknetConv):
            if isinstance(layer.act, torch.nn.LeakyReLU):
                layer.act.inplace = True
            elif isinstance(layer.act, Mish):
                layer.act = torch.nn.Mish(inplace=True)
