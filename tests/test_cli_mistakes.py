"""Every subcommand, given a typical mistake, answers as a person can act on: one line on
stderr (``yolo-batch: error: ...``), no traceback, exit 1. Each runs as a real ``yolo-batch``
subprocess, so what libraries log or print reaches the stderr checked here."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.errors import EXIT_USAGE
from tests.test_pipeline_e2e import REPO_ROOT, cli_command, cli_env

#: A subprocess that does not answer in this long is a hang, not a mistake handled.
MISTAKE_TIMEOUT_S = 180

#: (command words, a typical mistake's arguments). ``{tmp}`` is a fresh empty folder; paths
#: under it that the arguments name do not exist unless the case creates them.
MISTAKES = [
    ("detect", ["detect", "{tmp}/holiday.jpg"]),
    ("detect --device", ["detect", "--samples", "--device", "cuda:7"]),
    ("run", ["run", "--source", "{tmp}/photos", "--output", "{tmp}/results"]),
    ("run --conf", ["run", "--source", "{tmp}", "--output", "{tmp}/results", "--conf", "2"]),
    ("run abbreviation", ["run", "--sourc", "{tmp}", "--output", "{tmp}/results"]),
    ("status", ["status", "{tmp}/results"]),
    ("query", ["query", "{tmp}/results", "SELECT count(*) FROM detections"]),
    ("weights fetch", ["weights", "fetch", "yolov4tiny"]),
    ("weights verify", ["weights", "verify", "yolov5"]),
    ("weights list", ["weights", "list", "--format", "xml"]),
    ("report", ["report", "{tmp}/results", "--out", "{tmp}/report.html"]),
    ("jobs validate", ["jobs", "validate", "{tmp}/nightly.yaml"]),
    ("jobs render", ["jobs", "render", "{tmp}/nightly.yaml", "--target", "cron"]),
    ("export", ["export", "{tmp}/results", "--format", "coco", "--dest", "{tmp}/coco.json"]),
    ("eval", ["eval", "{tmp}/results", "--ground-truth", "{tmp}/instances_val.json"]),
    ("bench", ["bench", "--model", "yolov4tiny"]),
    ("compact", ["compact", "{tmp}/results"]),
    ("migrate", ["migrate", "{tmp}/results"]),
]


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[str]:
    """The command words of every leaf subcommand of ``parser``, e.g. ``"weights fetch"``."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= subcommands(sub, (*prefix, name)) or {" ".join((*prefix, name))}
    return found


def test_every_subcommand_has_a_mistake_case():
    covered = {case.split(" --")[0].split(" abbreviation")[0] for case, _ in MISTAKES}
    assert subcommands(build_parser()) <= covered


@pytest.mark.parametrize("args", [args for _, args in MISTAKES], ids=[c for c, _ in MISTAKES])
def test_a_typical_mistake_is_one_line_on_stderr_and_exit_1(args, tmp_path: Path, cache):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = subprocess.run(
        [*cli_command(), *argv],
        env=cli_env(cache),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=MISTAKE_TIMEOUT_S,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("yolo-batch: error: "), lines
