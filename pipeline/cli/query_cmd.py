"""``yolo-batch query OUTPUT "SQL"``: SQL over the committed results."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from pipeline.cli.s3_options import add_s3_arguments, s3_options
from pipeline.results.query import query


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query",
        help="SQL over the results: views detections, images, runs",
        description=(
            "Run SQL (DuckDB dialect) over a run output's committed results. Views: "
            "detections and images (latest result per image), all_detections and all_images "
            "(every run), tombstones, runs. The SQL reads these views only: it cannot read or "
            "write files, reach URLs, load extensions or change settings."
        ),
    )
    parser.add_argument("output", help="the results (s3://bucket/prefix or folder)")
    parser.add_argument("sql", help='e.g. "SELECT class_name, count(*) FROM detections GROUP BY 1"')
    parser.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="how the result prints: table, csv or json (default %(default)s)",
    )
    add_s3_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = query(args.output, args.sql, s3_options(args))
    rows = table.to_pylist()
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow([row[c] for c in table.column_names])
    else:
        print(format_table(table.column_names, rows))
    return 0


def format_table(columns: list[str], rows: list[dict]) -> str:
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
