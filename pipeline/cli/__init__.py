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
import importlib.metadata
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

#: The distribution whose version ``--version`` prints.
DISTRIBUTION = "yolo-batch"
VERBOSE_FLAGS = ("-v", "--verbose")
VERBOSE_HELP = "more log output (-vv: debug); before or after the command"
#: Where a ``-v`` given after the command counts (added to the one before it in :func:`main`).
SUBCOMMAND_VERBOSE = "verbose_after_command"


class CliParser(argparse.ArgumentParser):
    """The parser of ``yolo-batch`` and, through ``add_subparsers``, of every subcommand:
    options must be spelled out in full (``--sourc`` is no ``--source``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """A usage mistake as one line (argparse's default prints the whole usage first),
        pointing at the command's help; exits 2 (:func:`main` makes it 1)."""
        self.exit(2, f"yolo-batch: error: {message}; see {self.prog} --help\n")


class SubcommandParser(CliParser):
    """A subcommand's parser: also takes ``-v``, so it works after the command too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            *VERBOSE_FLAGS,
            action="count",
            dest=SUBCOMMAND_VERBOSE,
            default=argparse.SUPPRESS,
            help=VERBOSE_HELP,
        )


def version() -> str:
    """This installation's version (``unknown`` when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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

    parser = CliParser(
        prog="yolo-batch",
        description="YOLOv4 object detection over large image collections.",
    )
    parser.add_argument(*VERBOSE_FLAGS, action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version"
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=SubcommandParser
    )
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
    args.verbose += vars(args).pop(SUBCOMMAND_VERBOSE, 0)
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
