"""``yolo-batch bench``: how fast a model runs on this machine, for sizing a cluster.

Decode images/s per core, model-only images/s (and TFLOP/s), end-to-end images/s through the
actor's own worker, and their ratios; a table on stdout, everything in JSON with ``--json``.
The options and the work are :mod:`pipeline.bench`'s (``python -m pipeline.bench`` runs the
same where Ray is not installed); this module only registers the subcommand.
"""

from __future__ import annotations

import argparse

from pipeline.bench.command import run_command
from pipeline.bench.options import add_arguments


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
    add_arguments(parser)
    parser.set_defaults(func=run_command)
