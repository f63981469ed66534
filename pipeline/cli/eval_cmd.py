"""``yolo-batch eval OUTPUT --ground-truth COCO_JSON``: COCO mAP of the results, with precision
and recall at the run's score threshold (and, with ``--json``, the precision-recall curve)."""

from __future__ import annotations

import argparse
import json
import math

from pipeline.cli.query_cmd import format_table
from pipeline.cli.s3_options import add_s3_arguments, s3_options
from pipeline.results.evaluate import IOU_TYPES, MATCH_AUTO, MATCH_MODES, PR_IOU, evaluate


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="COCO mAP of the results against a ground-truth COCO JSON",
        description=(
            "Evaluate the latest committed detections against ground truth in COCO format "
            "with pycocotools: AP over IoU 0.50:0.95 and AP at IoU 0.50, per category and "
            "overall, and precision and recall at the run's score threshold. Ground-truth "
            "images are matched to results by URI or file name (those without results count "
            "as misses); categories by name (darknet spellings mapped to COCO's)."
        ),
    )
    parser.add_argument("output", help="the results (s3://bucket/prefix or folder)")
    parser.add_argument(
        "--ground-truth", required=True, help="COCO instances JSON (local path or s3:// URI)"
    )
    parser.add_argument(
        "--iou-type",
        choices=IOU_TYPES,
        default="bbox",
        help="what the overlap is measured on (default %(default)s, the only kind of results)",
    )
    parser.add_argument(
        "--match",
        choices=MATCH_MODES,
        default=MATCH_AUTO,
        help="match file_name to image URIs exactly (uri), by file name (basename) or auto",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_s3_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = evaluate(
        args.output,
        args.ground_truth,
        match=args.match,
        iou_type=args.iou_type,
        s3_options=s3_options(args),
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    columns = ["category", "id", "model_class", "gt", "detections", "AP", "AP50"]
    rows = [
        {
            "category": c.name,
            "id": c.category_id,
            "model_class": c.model_class,
            "gt": c.num_ground_truth,
            "detections": c.num_detections,
            "AP": _score(c.ap),
            "AP50": _score(c.ap50),
        }
        for c in result.classes
    ]
    print(format_table(columns, rows))
    print(
        f"mAP@[.5:.95] {_score(result.ap)}  mAP@.5 {_score(result.ap50)}  "
        f"({result.images_evaluated} images evaluated, matched by {result.match}; "
        f"{result.ground_truth_images_unmatched} ground-truth images without results, their "
        "boxes counted as misses)"
    )
    conf = result.conf_threshold
    threshold = "the run's --conf" if conf is None else f"{conf:g} (the run's --conf)"
    print(
        f"precision {_score(result.precision)}  recall {_score(result.recall)} at IoU "
        f"{PR_IOU:.2f}, scores >= {threshold}; --json adds the precision-recall curve"
    )
    return 0


def _score(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"
