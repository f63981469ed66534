"""``yolo-batch report OUTPUT --out report.html``: one self-contained HTML page about a run."""

from __future__ import annotations

import argparse
import os

from pipeline.cli.s3_options import add_s3_arguments, s3_options
from pipeline.results.evaluate import MATCH_AUTO, MATCH_MODES
from pipeline.results.report import write_report
from pipeline.results.report.data import DEFAULT_SAMPLES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="one self-contained HTML page about a run: summary, charts, errors, samples",
        description=(
            "Write one HTML file (no external resources) describing a run of OUTPUT: summary, "
            "class distribution, score and detections-per-image histograms, throughput over "
            "the run, the errors by reason, sample images with their boxes drawn, and with "
            "--ground-truth the run's accuracy."
        ),
    )
    parser.add_argument("output", help="the results (s3://bucket/prefix or folder)")
    parser.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    parser.add_argument("--run", help="a run id (default: the latest)")
    parser.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"sample images in the gallery (default {DEFAULT_SAMPLES}; 0 for none)",
    )
    parser.add_argument(
        "--ground-truth",
        help="COCO instances JSON (local path or s3:// URI): adds the run's mAP, precision, "
        "recall and precision-recall curve against it",
    )
    parser.add_argument(
        "--match",
        choices=MATCH_MODES,
        default=MATCH_AUTO,
        help="with --ground-truth: match its file_name to image URIs as yolo-batch eval does",
    )
    add_s3_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = write_report(
        args.output,
        args.out,
        run_id=args.run,
        samples=args.samples,
        s3_options=s3_options(args),
        ground_truth=args.ground_truth,
        match=args.match,
    )
    size_kb = os.path.getsize(args.out) / 1024
    print(
        f"wrote {args.out} ({size_kb:,.0f} KB): run {data.run['run_id']}, "
        f"{data.images_total:,} images, {data.detections_total:,} detections, "
        f"{len(data.samples)} samples"
    )
    return 0
