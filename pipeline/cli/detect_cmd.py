"""``yolo-batch detect IMAGE...``: detect on local files, print a table or JSON, optionally
write annotated copies.

An image that cannot be read is reported on stderr and skipped; the others are still
processed, and the exit code is 1 if any image failed. Annotated copies never replace an input:
an ``--out`` whose copy of an image would be written over one of the input files (the same file,
by whatever path) is refused before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.cli.model_options import add_model_arguments, detector_options, precision
from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.run.config import RunConfig
from pipeline.worker.model_spec import DEFAULT_MODEL
from pipeline.worker.tasks import DEFAULT_BATCH_SIZE
from yolov4.detector import Detection, Detector
from yolov4.devices import check_device
from yolov4.draw import save_annotated
from yolov4.errors import ImageDecodeError, YoloError
from yolov4.imageio import read_image
from yolov4.pretrained import fetch_sample_images

ANNOTATED_SUFFIXES = (".jpg", ".jpeg", ".png")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect objects in local image files",
        description="Detect objects in local image files with YOLOv4 and print the results.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--samples", action="store_true", help="also detect on the two bundled sample photos"
    )
    add_model_arguments(parser, remote_files=False)
    options = parser.add_argument_group("device")
    options.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (cpu)")
    options.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"images per forward ({DEFAULT_BATCH_SIZE})",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, help="write annotated copies into this directory")
    output.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=run)


def build_detector(args: argparse.Namespace) -> Detector:
    """The detector the options describe (local files only)."""
    check_device(args.device, option="--device")  # before any weights are read or fetched
    options = dict(
        device=args.device,
        precision=precision(args, RunConfig.precision),
        **detector_options(args).as_kwargs(),
    )
    if args.cfg or args.weights:
        if not (args.cfg and args.weights):
            raise YoloError("--cfg and --weights go together; give both")
        if args.model:
            raise YoloError("use either --model or --cfg/--weights, not both")
        return Detector.from_darknet(args.cfg, args.weights, args.names, **options)
    return Detector.from_pretrained(args.model or DEFAULT_MODEL, **options)


def run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.images]
    if args.samples:
        paths.extend(fetch_sample_images())
    if not paths:
        print("yolo-batch: error: no images given; pass image files or --samples", file=sys.stderr)
        return EXIT_USAGE
    detector = build_detector(args)
    failed = 0
    loaded: list[tuple[Path, np.ndarray]] = []
    for path in paths:
        try:
            loaded.append((path, read_image(path)))
        except (FileNotFoundError, IsADirectoryError, PermissionError, ImageDecodeError) as exc:
            failed += 1
            reason = f"file not found: {path}" if isinstance(exc, FileNotFoundError) else exc
            print(f"yolo-batch: error: {path}: {reason}", file=sys.stderr)
    targets = annotated_paths(args.out, [path for path, _ in loaded]) if args.out else []
    refuse_overwriting_inputs(targets, paths)
    results = detector.detect([image for _, image in loaded], batch_size=args.batch_size)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        _write_annotated(targets, loaded, results, detector.class_names)
    if args.json:
        print(
            json.dumps(
                [_as_json(p, img, dets) for (p, img), dets in zip(loaded, results)], indent=2
            )
        )
    else:
        for (path, image), detections in zip(loaded, results):
            print(_as_table(path, image, detections))
    if args.out:
        # After the results; on stderr with --json, so that stdout stays one JSON document.
        plural = "" if len(targets) == 1 else "s"
        print(
            f"wrote {len(targets)} annotated image{plural} to {args.out}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return EXIT_USAGE if failed else EXIT_OK


def annotated_paths(out_dir: Path, paths: list[Path]) -> list[Path]:
    """Where the annotated copy of each of ``paths`` goes in ``out_dir``: the input's file
    name, ``.jpg`` unless it ends in a suffix it can be saved as, ``-2``, ``-3``… added when
    inputs from different folders share a name."""
    used: set[str] = set()
    out = []
    for path in paths:
        suffix = path.suffix.lower() if path.suffix.lower() in ANNOTATED_SUFFIXES else ".jpg"
        name, counter = f"{path.stem}{suffix}", 1
        while name in used:
            counter += 1
            name = f"{path.stem}-{counter}{suffix}"
        used.add(name)
        out.append(out_dir / name)
    return out


def refuse_overwriting_inputs(targets: list[Path], inputs: list[Path]) -> None:
    """Raise :class:`YoloError` if any of ``targets`` is one of the ``inputs`` files, by any
    path (a symbolic link, ``..``, a hard link: the same device and inode)."""
    identities = {}
    for path in inputs:
        try:
            stat = path.stat()
        except OSError:  # unreadable inputs were reported and skipped
            continue
        identities[(stat.st_dev, stat.st_ino)] = path
    for target in targets:
        try:
            stat = target.stat()
        except OSError:  # nothing there yet: nothing to overwrite
            continue
        same = identities.get((stat.st_dev, stat.st_ino))
        if same is not None:
            copy = "" if str(target) == str(same) else f" {target}"
            raise YoloError(
                f"--out {target.parent} would write the annotated copy{copy} over the input "
                f"{same}; give --out a folder that holds none of the input images"
            )


def _as_table(path: Path, image: np.ndarray, detections: list[Detection]) -> str:
    height, width = image.shape[:2]
    lines = [f"{path} ({width}x{height}): {len(detections)} objects"]
    if detections:
        lines.append(f"  {'class':<16}{'score':>7}{'x_min':>9}{'y_min':>9}{'x_max':>9}{'y_max':>9}")
    for d in detections:
        lines.append(
            f"  {d.class_name:<16}{d.score:>7.3f}{d.x_min:>9.1f}{d.y_min:>9.1f}"
            f"{d.x_max:>9.1f}{d.y_max:>9.1f}"
        )
    return "\n".join(lines) + "\n"


def _as_json(path: Path, image: np.ndarray, detections: list[Detection]) -> dict:
    height, width = image.shape[:2]
    return {
        "image": str(path),
        "width": width,
        "height": height,
        "detections": [
            {
                "class_id": d.class_id,
                "class_name": d.class_name,
                "score": round(d.score, 6),
                "box": [round(v, 2) for v in d.box],
            }
            for d in detections
        ],
    }


def _write_annotated(targets: list[Path], loaded, results, class_names) -> None:
    for target, (_, image), detections in zip(targets, loaded, results):
        save_annotated(
            target,
            image,
            np.array([d.box for d in detections], dtype=np.float32).reshape(-1, 4),
            np.array([d.score for d in detections], dtype=np.float32),
            np.array([d.class_id for d in detections], dtype=np.int64),
            class_names,
        )
