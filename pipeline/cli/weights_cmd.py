"""``yolo-batch weights list|fetch|verify``: manage the pretrained weights cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipeline.errors import EXIT_OK, EXIT_USAGE
from yolov4.hub import cache_dir, local_path, verify
from yolov4.pretrained import PretrainedModel, get_pretrained, list_pretrained, pretrained_names

SHA256_PREFIX_CHARS = 12
BYTES_PER_MB = 1_000_000


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``weights`` subcommand and its ``list``, ``fetch`` and ``verify`` actions."""
    names = ", ".join(pretrained_names())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache directory (default: $YOLO_BATCH_CACHE, $XDG_CACHE_HOME/yolo-batch "
        "or ~/.cache/yolo-batch)",
    )

    parser = subparsers.add_parser(
        "weights",
        help="list, fetch and verify pretrained weights",
        description=f"Manage the pretrained weights cache. Models: {names}.",
    )
    actions = parser.add_subparsers(dest="weights_command", metavar="ACTION")
    actions.required = True

    list_parser = actions.add_parser(
        "list", parents=[common], help="show the registered models and whether they are cached"
    )
    list_parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    list_parser.set_defaults(func=run_list)

    fetch_parser = actions.add_parser(
        "fetch", parents=[common], help="download and verify weights; print their paths"
    )
    fetch_parser.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {names}")
    fetch_parser.set_defaults(func=run_fetch)

    verify_parser = actions.add_parser(
        "verify", parents=[common], help="check the sha256 of cached weights"
    )
    verify_parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"one of: {names} (default: all)"
    )
    verify_parser.set_defaults(func=run_verify)


def _say(line: object) -> None:
    """Write one line of the command's output to stdout."""
    print(line)  # noqa: T201 - command output, not logging


def _resolve(names: list[str]) -> list[PretrainedModel]:
    """Look up every name first, so a typo fails before anything is downloaded."""
    return [get_pretrained(name) for name in names]


def _is_cached(model: PretrainedModel, cache: Path | None) -> bool:
    """Cheap check (no hashing): the file exists with the registered size."""
    path = local_path(model.weights, cache)
    return path.is_file() and path.stat().st_size == model.weights.size


def _describe(model: PretrainedModel, cache: Path | None) -> dict[str, Any]:
    width, height = model.input_size
    return {
        "name": model.name,
        "arch": model.arch,
        "input_size": [width, height],
        "filename": model.weights.filename,
        "size_bytes": model.weights.size,
        "sha256": model.weights.sha256,
        "cached": _is_cached(model, cache),
        "path": str(local_path(model.weights, cache)),
        "num_classes": model.num_classes,
        "metrics": model.metrics,
        "description": model.description,
        "license": model.license,
        "source": model.source,
    }


def run_list(args: argparse.Namespace) -> int:
    """Print the registry as a table (or JSON with ``--json``)."""
    rows = [_describe(model, args.cache) for model in list_pretrained()]
    if args.json:
        _say(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    header = ("NAME", "INPUT", "SIZE MB", "CACHED", "SHA256", "AP50")
    table = [header]
    for row in rows:
        ap50 = row["metrics"].get("ap50")
        table.append(
            (
                row["name"],
                "x".join(str(v) for v in row["input_size"]),
                f"{row['size_bytes'] / BYTES_PER_MB:.1f}",
                "yes" if row["cached"] else "no",
                row["sha256"][:SHA256_PREFIX_CHARS],
                "-" if ap50 is None else f"{ap50:.1f}",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        _say("  ".join(cells).rstrip())
    directory = args.cache if args.cache is not None else cache_dir()
    _say(f"cache: {directory}")
    return EXIT_OK


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch each named model's weights and print the cached path of each."""
    for model in _resolve(args.names):
        _say(model.fetch_weights(cache=args.cache))
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    """Check cached weights; exit 0 only if every one is present and matches its sha256."""
    models = _resolve(args.names) if args.names else list_pretrained()
    status = EXIT_OK
    for model in models:
        path = local_path(model.weights, args.cache)
        if not path.is_file():
            _say(
                f"{model.name}: missing: {path} is not cached; "
                f"run `yolo-batch weights fetch {model.name}`"
            )
            status = EXIT_USAGE
            continue
        result = verify(path, model.weights)
        if result.ok:
            _say(f"{model.name}: ok: {path}")
            continue
        _say(
            f"{model.name}: bad: {path} has sha256 {result.sha256} ({result.size} bytes), "
            f"expected {model.weights.sha256} ({model.weights.size} bytes); "
            f"delete it and run `yolo-batch weights fetch {model.name}`"
        )
        status = EXIT_USAGE
    return status
