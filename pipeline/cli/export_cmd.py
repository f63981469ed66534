"""``yolo-batch export OUTPUT --format coco|yolo|labelstudio --dest PATH``."""

from __future__ import annotations

import argparse

from pipeline.cli.s3_options import add_s3_arguments, s3_options
from pipeline.results.export import FORMATS, ExportOptions, export_results
from pipeline.results.export.reader import DEFAULT_MEMORY_LIMIT


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write the results as COCO JSON, YOLO labels or Label Studio tasks",
        description=(
            "Export the latest committed result of every image with status ok (images with "
            "errors are skipped and counted). Streams: memory does not grow with the number "
            "of images. coco: one JSON file (bbox = [x, y, width, height] in pixels, official "
            "COCO category ids for COCO-trained models). yolo: a folder with labels/*.txt "
            "(class cx cy w h, normalised to 0..1), classes.txt and manifest.csv (image URI -> "
            "label file). labelstudio: one JSON file of pre-annotated tasks (percent "
            "coordinates). --dest is a local path or s3:// URI (written locally, then uploaded)."
        ),
    )
    parser.add_argument("output", help="the results (s3://bucket/prefix or folder)")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        dest="export_format",
        help=f"what to write: {', '.join(FORMATS)} (see above)",
    )
    parser.add_argument(
        "--dest", required=True, help="file (coco, labelstudio) or folder (yolo); local or s3://"
    )
    parser.add_argument("--min-score", type=float, help="keep detections scoring at least this")
    parser.add_argument(
        "--classes",
        help="comma-separated class names to keep, e.g. person,car (model or COCO spelling)",
    )
    parser.add_argument(
        "--yolo-score",
        action="store_true",
        help="yolo: add the score as a sixth column (not part of the standard label format)",
    )
    parser.add_argument(
        "--ls-from-name", default="label", help="labelstudio: the RectangleLabels tag name"
    )
    parser.add_argument("--ls-to-name", default="image", help="labelstudio: the Image tag name")
    parser.add_argument(
        "--ls-model-version", help="labelstudio: prediction model_version (default: the model)"
    )
    parser.add_argument(
        "--ls-local-root",
        help=(
            "labelstudio: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; local images under it become "
            "/data/local-files/?d=... URLs"
        ),
    )
    parser.add_argument(
        "--memory-limit",
        default=DEFAULT_MEMORY_LIMIT,
        help=f"DuckDB working memory before it spills to disk (default {DEFAULT_MEMORY_LIMIT})",
    )
    add_s3_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    classes = None
    if args.classes is not None:
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
        if not classes:
            raise ValueError("--classes lists no class name; give e.g. --classes person,car")
    options = ExportOptions(
        min_score=args.min_score,
        classes=classes,
        yolo_score=args.yolo_score,
        ls_from_name=args.ls_from_name,
        ls_to_name=args.ls_to_name,
        ls_model_version=args.ls_model_version,
        ls_local_root=args.ls_local_root,
        memory_limit=args.memory_limit,
    )
    summary = export_results(
        args.output,
        args.export_format,
        args.dest,
        options,
        s3_options(args),
    )
    print(summary.line())
    return 0
