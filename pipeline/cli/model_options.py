"""Model and inference options shared by ``detect`` and ``run``."""

from __future__ import annotations

import argparse

from pipeline.worker.model_spec import DEFAULT_MODEL, DetectorOptions
from yolov4.detector import PRECISIONS
from yolov4.preprocess import RESIZE_MODES
from yolov4.pretrained import pretrained_names


def add_model_arguments(parser: argparse.ArgumentParser, *, remote_files: bool = True) -> None:
    """Add ``--model`` / ``--cfg --weights --names`` and the inference settings.

    ``remote_files``: whether the cfg/weights/names may be ``s3://`` URIs (``run``) or only
    local paths (``detect``).
    """
    where = " (path or s3://)" if remote_files else ""
    model = parser.add_argument_group("model (a pretrained name, or a darknet cfg + weights)")
    model.add_argument(
        "--model", help=f"pretrained: {', '.join(pretrained_names())} (default {DEFAULT_MODEL})"
    )
    model.add_argument("--cfg", help=f"darknet .cfg of a custom model{where}")
    model.add_argument("--weights", help=f"darknet .weights matching --cfg{where}")
    model.add_argument("--names", help=f"class names file, one per line{where}")
    options = parser.add_argument_group("inference")
    options.add_argument("--size", type=int, help="network input size (multiple of 32)")
    options.add_argument("--conf", type=float, default=0.25, help="score threshold (0.25)")
    options.add_argument("--iou", type=float, default=0.45, help="NMS overlap threshold (0.45)")
    options.add_argument("--nms", choices=("diou", "iou"), help="NMS overlap (model default)")
    options.add_argument("--resize", choices=RESIZE_MODES, help="resize mode (model default)")
    options.add_argument("--classes", help="comma-separated class names or ids to keep")
    options.add_argument("--max-det", type=int, default=300, help="detections per image (300)")
    options.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="fp32",
        help="fp16: CUDA; bf16: CUDA, or CPUs with AVX512-BF16 or AMX (about 2x fp32)",
    )


def detector_options(args: argparse.Namespace) -> DetectorOptions:
    """The inference settings the parsed options describe."""
    classes = None
    if args.classes:
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    return DetectorOptions(
        input_size=args.size,
        conf_threshold=args.conf,
        nms_threshold=args.iou,
        nms_kind=args.nms,
        resize=args.resize,
        max_detections=args.max_det,
        classes=classes,
    )
