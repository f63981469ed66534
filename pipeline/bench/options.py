"""The options of ``yolo-batch bench`` and ``python -m pipeline.bench``, and the
:class:`~pipeline.bench.config.BenchConfig` they describe."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.bench.config import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_IMAGES,
    DEFAULT_SECONDS,
    DEFAULT_SEED,
    DEFAULT_SHARD_SIZE,
    STAGES,
    BenchConfig,
)
from pipeline.worker.decode_modes import DECODE_AUTO, DECODE_MODES
from pipeline.worker.model_spec import DEFAULT_MODEL
from pipeline.worker.tasks import DEFAULT_FETCH_THREADS
from yolov4.detector import PRECISIONS


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _image_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        return int(width), int(height) if sep else int(width)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 1280x720, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``yolo-batch bench`` and ``python -m pipeline.bench``."""
    model = parser.add_argument_group("model (a pretrained name, or a darknet cfg + weights)")
    model.add_argument("--model", help=f"pretrained name (default {DEFAULT_MODEL})")
    model.add_argument("--cfg", help="darknet .cfg of a custom model")
    model.add_argument("--weights", help="darknet .weights matching --cfg")
    model.add_argument("--names", help="class names file, one per line")
    model.add_argument(
        "--random-weights",
        action="store_true",
        help="generated weights (fixed seed) for a model whose weights are not at hand: "
        "speed does not depend on the values",
    )
    model.add_argument("--size", type=int, help="network input size (multiple of 32)")
    run = parser.add_argument_group("what to run")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cpu)")
    run.add_argument(
        "--batch-size",
        type=_int_list,
        default=(),
        metavar="N[,N...]",
        help="images per forward; a comma list sweeps (default 8 on CPU, 32 on CUDA)",
    )
    run.add_argument(
        "--precision",
        type=_name_list,
        default=("fp32",),
        metavar="P[,P...]",
        help=f"{', '.join(PRECISIONS)}; a comma list sweeps (fp32)",
    )
    run.add_argument(
        "--decode",
        type=_name_list,
        default=(DECODE_AUTO,),
        metavar="MODE[,MODE...]",
        help=f"end to end decoding: {', '.join(DECODE_MODES)}; a comma list sweeps (auto)",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help="the model through torch.compile, as `run --compile` (compilation untimed)",
    )
    run.add_argument("--threads", type=int, help="torch threads (default: the CPUs available)")
    run.add_argument("--decode-threads", type=int, help="decode threads (default: the CPUs)")
    run.add_argument(
        "--fetch-threads", type=int, default=DEFAULT_FETCH_THREADS, help="read threads (16)"
    )
    run.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"timed seconds per figure, after a warm-up ({DEFAULT_SECONDS:g})",
    )
    run.add_argument(
        "--only",
        type=_name_list,
        default=STAGES,
        metavar="STAGE[,STAGE...]",
        help=f"which figures: {','.join(STAGES)} (all)",
    )
    run.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare fp16/bf16 detections with fp32 on the sample photos (default: when a "
        "half precision is measured with trained weights)",
    )
    data = parser.add_argument_group("images")
    data.add_argument(
        "--images", type=int, default=DEFAULT_IMAGES, help=f"how many ({DEFAULT_IMAGES})"
    )
    data.add_argument(
        "--image-size",
        type=_image_size,
        default=DEFAULT_IMAGE_SIZE,
        metavar="WxH",
        help="generated JPEGs' size (1280x720)",
    )
    data.add_argument(
        "--source", help="use these images instead: a local folder, s3:// prefix or manifest"
    )
    data.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"images per end-to-end shard, rounded up to whole batches ({DEFAULT_SHARD_SIZE})",
    )
    data.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the generated JPEGs, for repeatable figures ({DEFAULT_SEED})",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the parsed options describe."""
    return BenchConfig(
        model=args.model,
        cfg=args.cfg,
        weights=args.weights,
        names=args.names,
        random_weights=args.random_weights,
        size=args.size,
        batch_sizes=tuple(args.batch_size),
        precisions=tuple(args.precision),
        device=args.device,
        decode=tuple(args.decode),
        threads=args.threads,
        decode_threads=args.decode_threads,
        fetch_threads=args.fetch_threads,
        seconds=args.seconds,
        only=tuple(args.only),
        images=args.images,
        image_size=tuple(args.image_size),
        source=args.source,
        shard_size=args.shard_size,
        check=args.check,
        seed=args.seed,
        compile=args.compile,
    )
