"""Conventions every ``yolo-batch`` command follows, through ``pipeline.cli.main`` and the real
console script.

- Options are spelled out in full: an abbreviation (``--sourc``) is refused by every command,
  not taken for the option it begins.
- ``-v`` works before and after the command, and the two count together.
- ``--version`` prints the installed version; every option of every command has help text.
- ``run --output OUT --resume [RUN_ID]`` takes the source and every other setting from the run
  record: a resume needs no ``--source``, and settings given at the start need not be repeated.
- ``run`` ends by saying where the results are and what to run next, and those commands work.
"""

# ruff: noqa: F811  (pytest fixtures imported from another test module)

from __future__ import annotations

import argparse
import importlib.metadata
import shlex
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    assert_one_line_error,
    cli_env,
    read_run_record,
    run_args,
)
from tests.test_pipeline_faults import (  # noqa: F401  (fixtures: job, reference)
    NUM_SHARDS,
    PER_SHARD_COMMITS,
    SHARD_SIZE,
    assert_complete,
    commits,
    job,
    reference,
)


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("yolo-batch",)):
    """``(command path, parser)`` for the top parser and every (nested) subcommand's."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def commands() -> set[str]:
    """The names of the top-level commands."""
    return {path[1] for path, _ in parsers(build_parser()) if len(path) == 2}


# --------------------------------------------------------------------------- abbreviations


def abbreviated_argv(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Per command: a command line that is valid but for one abbreviated option, and that
    abbreviation. Where the abbreviation were taken for the option, each would fail fast or do
    nothing lasting (missing paths, an unknown model)."""
    none = str(tmp / "none")
    return {
        "detect": (["detect", none + ".jpg", "--jso", "--model", "nope"], "--jso"),
        "run": (["run", "--sourc", none, "--output", str(tmp / "out")], "--sourc"),
        "status": (["status", none, "--jso"], "--jso"),
        "query": (["query", none, "SELECT 1", "--form", "csv"], "--form"),
        "weights": (["weights", "list", "--jso"], "--jso"),
        "report": (["report", none, "--out", str(tmp / "r.html"), "--sampl", "3"], "--sampl"),
        "jobs": (["jobs", "render", none + ".yaml", "--target", "cron", "--work", none], "--work"),
        "export": (
            ["export", none, "--format", "coco", "--dest", str(tmp / "x.json"), "--min", "0.5"],
            "--min",
        ),
        "eval": (["eval", none, "--ground-truth", str(tmp / "gt.json"), "--jso"], "--jso"),
        "bench": (["bench", "--onl", "no-such-stage"], "--onl"),
        "compact": (["compact", none, "--retention", "1"], "--retention"),
        "migrate": (["migrate", none, "--endpoint", "http://127.0.0.1:9"], "--endpoint"),
    }


def test_every_command_is_covered_by_the_abbreviation_cases(tmp_path):
    assert set(abbreviated_argv(tmp_path)) == commands()


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_command_refuses_an_abbreviated_option(command, tmp_path, capsys):
    argv, abbreviation = abbreviated_argv(tmp_path)[command]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"yolo-batch: error: unrecognized arguments: {abbreviation}" in err, err
    assert not (tmp_path / "out").exists()


def test_no_parser_takes_abbreviations():
    for path, parser in parsers(build_parser()):
        assert parser.allow_abbrev is False, " ".join(path)


# --------------------------------------------------------------------------- -v, --version, help


def test_verbose_works_after_the_command_and_counts_with_the_one_before(cli, cache):
    """``-vv`` shows debug logs (the weights cache's "using cached" line); ``-v`` alone does
    not."""
    fetch = ["weights", "fetch", "yolov4-tiny"]
    for argv in ([*fetch, "-vv"], ["-v", *fetch, "-v"], [*fetch, "--verbose", "-v"]):
        result = cli.run(argv, cli_env(cache), QUICK_TIMEOUT_S)
        assert result.returncode == 0, result.describe()
        assert "DEBUG yolov4.hub: using cached" in result.stderr, (argv, result.describe())
    once = cli.run([*fetch, "-v"], cli_env(cache), QUICK_TIMEOUT_S)
    assert once.returncode == 0, once.describe()
    assert "DEBUG" not in once.stderr, once.describe()


def test_version_prints_the_installed_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"yolo-batch {importlib.metadata.version('yolo-batch')}\n"


def test_every_option_of_every_command_has_help():
    missing = []
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{' '.join(path)} {choice.dest}"
                    for choice in action._choices_actions
                    if not choice.help
                ]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


# --------------------------------------------------------------------------- resume from the record


def test_resume_takes_the_source_and_settings_from_the_run_record(cli, cache, tmp_path):
    """A run over an empty folder finishes without starting Ray, so resuming it is cheap. Its
    class filter and threshold would make the resume refused if they were not taken from the
    record (a resume must keep the run's inference settings)."""
    source, output = tmp_path / "empty", tmp_path / "results of a run"
    source.mkdir()
    settings = ["--classes", "person,bus", "--conf", "0.3", "--max-attempts", "5"]
    first = cli.run(run_args(source, output, *settings), cli_env(cache), QUICK_TIMEOUT_S)
    assert first.returncode == 0, first.describe()

    again = cli.run(["run", "--output", output, "--resume"], cli_env(cache), QUICK_TIMEOUT_S)
    assert again.returncode == 0, again.describe()
    assert again.run_id == first.run_id
    record = read_run_record(output, first.run_id)
    assert record["resumed"] == 1
    assert record["source"] == str(source)
    assert record["config"]["max_attempts"] == 5
    assert record["config"]["detector"]["classes"] == ["person", "bus"]

    by_id = ["run", "--output", output, "--resume", first.run_id, "--no-progress"]
    third = cli.run(by_id, cli_env(cache), QUICK_TIMEOUT_S)
    assert third.returncode == 0, third.describe()
    assert read_run_record(output, first.run_id)["resumed"] == 2

    # An option given with --resume still overrides the record: a different filter is refused.
    other = cli.run([*by_id, "--classes", "person"], cli_env(cache), QUICK_TIMEOUT_S)
    assert_one_line_error(other, first.run_id, "person")


def test_resume_of_an_output_without_runs_says_so(cli, cache, tmp_path):
    output = tmp_path / "fresh"
    result = cli.run(["run", "--output", output, "--resume"], cli_env(cache), QUICK_TIMEOUT_S)
    assert_one_line_error(result, "nothing to resume", str(output))
    assert not output.exists()
    result = cli.run(["run", "--resume"], cli_env(cache), QUICK_TIMEOUT_S)
    assert_one_line_error(result, "--output missing", "--resume")


@pytest.mark.slow
def test_resume_with_only_the_output_completes_a_run_with_a_failed_shard(
    cli, cache, job, reference
):
    source, output, expected = job
    failing = 1
    args = run_args(source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS)
    first = cli.run([*args, "--max-attempts", 2], cli_env(cache, faults={"fail_shards": [failing]}))
    assert first.returncode == 2, first.describe()
    assert sorted(commits(output)) == [s for s in range(NUM_SHARDS) if s != failing]

    resumed = cli.run(["run", "--output", output, "--resume", "--no-progress"], cli_env(cache))
    assert resumed.returncode == 0, resumed.describe()
    assert resumed.run_id == first.run_id
    assert_complete(output, expected, reference, first.run_id)
    assert read_run_record(output, first.run_id)["config"]["max_attempts"] == 2


# --------------------------------------------------------------------------- what to run next


def test_run_ends_with_where_the_results_are_and_commands_that_work(cli, cache, tmp_path):
    source, output = tmp_path / "empty", tmp_path / "my results"
    source.mkdir()
    result = cli.run(run_args(source, output), cli_env(cache), QUICK_TIMEOUT_S)
    assert result.returncode == 0, result.describe()
    assert result.stdout.startswith(f"run {result.run_id}: succeeded;")
    lines = result.stderr.strip().splitlines()
    assert f"results: {output} (tables detections, images)" in lines, result.describe()
    (next_line,) = [line for line in lines if line.startswith("next: ")]
    steps = next_line.removeprefix("next: ").split(" · ")
    assert [shlex.split(step)[:2] for step in steps] == [
        ["yolo-batch", "status"],
        ["yolo-batch", "query"],
    ]
    for step in steps:  # each runs as printed (the output's name has a space: quoted)
        done = cli.run(shlex.split(step)[1:], cli_env(cache), QUICK_TIMEOUT_S)
        assert done.returncode == 0, (step, done.describe())
