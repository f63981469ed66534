"""The ``yolo-batch`` console script.

Each subcommand lives in its own module with a ``register(subparsers)`` function that
adds its parser and sets ``func`` to a callable taking the parsed namespace and
returning an exit code.

Exit codes (:mod:`pipeline.errors`): 0 success, 1 usage or input error, 2 run finished with
failed shards, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM, handled as Ctrl-C:
:mod:`pipeline.cli.signals`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys

from pipeline.cli.signals import sigterm_as_interrupt
from pipeline.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    OutputError,
    RunError,
    Terminated,
)
from pipeline.store.storage import StorageError
from yolov4.errors import YoloError


def build_parser() -> argparse.ArgumentParser:
    from pipeline.cli import (
        bench_cmd,
        compact_cmd,
        detect_cmd,
        eval_cmd,
        export_cmd,
        jobs_cmd,
        migrate_cmd,
        query_cmd,
        report_cmd,
        run_cmd,
        status_cmd,
        weights_cmd,
    )

    parser = argparse.ArgumentParser(
        prog="yolo-batch",
        description="YOLOv4 object detection over large image collections.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in (
        detect_cmd,
        run_cmd,
        status_cmd,
        query_cmd,
        weights_cmd,
        report_cmd,
        jobs_cmd,
        export_cmd,
        eval_cmd,
        bench_cmd,
        compact_cmd,
        migrate_cmd,
    ):
        module.register(subparsers)
    return parser


#: Libraries whose debug logs carry credentials (the access key id in signed headers); -vv
#: shows our debug logs and theirs at INFO at most.
CREDENTIAL_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors; the contract says 1
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
        return EXIT_USAGE if code == 2 else code
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in CREDENTIAL_LOGGERS:  # their debug logs print signed request headers
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    try:
        with sigterm_as_interrupt():
            return int(args.func(args))
    except BrokenPipeError:  # e.g. piped into `head`; not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except Terminated:
        print("yolo-batch: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("yolo-batch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (
        YoloError,
        RunError,
        OutputError,
        ValueError,
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
        StorageError,
    ) as exc:
        print(f"yolo-batch: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


def entry_point() -> None:
    """The ``yolo-batch`` console script: :func:`main`, then exit without finalising the
    interpreter.

    ``atexit`` handlers run as on any exit (Ray's shutdown among them), the streams are
    flushed, and the process ends with :func:`os._exit`: the native thread pools of the Delta
    and Arrow libraries are then never destroyed mid-teardown, which otherwise aborts the
    process now and then ("terminate called without an active exception", exit 134) after its
    work is done, turning a success into a failure for a scheduler.
    """
    code = main()
    atexit._run_exitfuncs()  # what interpreter shutdown would run first
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"file not found: {exc.filename}; check the path"
    return " ".join(str(exc).split())


if __name__ == "__main__":  # pragma: no cover
    entry_point()
