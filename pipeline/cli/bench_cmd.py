"""``yolo-batch bench``: how fast a model runs on this machine, for sizing a cluster.

Decode images/s per core, model-only images/s (and TFLOP/s), end-to-end images/s through the
actor's own worker, and their ratios; a table on stdout, everything in JSON with ``--json``.
The work is done by :mod:`pipeline.bench`, which also runs as ``python -m pipeline.bench``
where Ray is not installed.
"""

from __future__ import annotations

import argparse

from pipeline import bench


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure decode, model and end-to-end throughput on this machine",
        description=(
            "Measure, for one model and input size on this machine: decode images/s per core, "
            "model-only images/s, end-to-end images/s (the actor's worker, without Ray) and "
            "their ratios. Prints a table; --json writes every figure and parameter."
        ),
    )
    bench.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return bench.run_command(args)
