"""The benchmark's command line: run what the options ask for, print the tables, write the JSON.

:func:`run_command` serves the ``yolo-batch bench`` subcommand; :func:`main` is
``python -m pipeline.bench``, the same options where Ray is not installed (nothing here
imports it). Exit codes as ``yolo-batch``'s: 0 success, 1 usage or input error, 130
interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.bench.options import add_arguments, config_from_args
from pipeline.bench.output import format_table, write_json
from pipeline.bench.runner import run_bench
from pipeline.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from yolov4.errors import YoloError

PROG = "python -m pipeline.bench"
DESCRIPTION = "``yolo-batch bench``: how fast a model runs on this machine, for sizing a cluster."
#: argparse's own exit code for a usage error, reported as EXIT_USAGE.
ARGPARSE_USAGE_ERROR = 2


def run_command(args: argparse.Namespace) -> int:
    """Run the benchmark the options describe, print the tables, write the JSON; exit code."""
    report = run_bench(config_from_args(args))
    _print(format_table(report))
    if args.json:
        write_json(report, args.json)
        _print(f"wrote {args.json}")
    return EXIT_OK


def _print(text: str, *, stream=None) -> None:
    print(text, file=stream or sys.stdout, flush=True)  # noqa: T201


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.bench``: the same options as ``yolo-batch bench``."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors; the CLI's contract says 1
        return EXIT_USAGE if exc.code == ARGPARSE_USAGE_ERROR else int(exc.code or 0)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return run_command(args)
    except KeyboardInterrupt:
        _print("bench: interrupted", stream=sys.stderr)
        return EXIT_INTERRUPTED
    except (YoloError, ValueError, OSError) as exc:
        _print(f"bench: error: {' '.join(str(exc).split())}", stream=sys.stderr)
        return EXIT_USAGE
