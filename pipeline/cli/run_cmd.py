"""``yolo-batch run --source URI --output URI`` or ``yolo-batch run jobs/NAME.yaml``: the
distributed detection job.

The options are generated from the run settings' schema (:mod:`pipeline.run.settings`). With a
job spec, the spec gives the settings and options given on the command line override them:
every option defaults to ``None`` (not given), so only explicit ones win.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from pipeline.cli.model_options import add_model_arguments
from pipeline.cli.s3_options import s3_options
from pipeline.run.config import ModelChoice, RunConfig
from pipeline.run.jobspec import load_spec
from pipeline.run.recorded_config import recorded_config
from pipeline.run.settings import (
    GROUP_DATA,
    INFERENCE_SETTINGS,
    SETTINGS,
    add_arguments,
    given_settings,
    with_values,
)
from pipeline.store.ledger import RUN_INTERRUPTED

#: The settings ``run`` takes as options besides the model's (which add_model_arguments adds):
#: the data first, then resources, object storage and Ray.
DATA_SETTINGS = tuple(s for s in SETTINGS if s.group == GROUP_DATA)
OTHER_SETTINGS = tuple(s for s in SETTINGS if s not in (*DATA_SETTINGS, *INFERENCE_SETTINGS))
#: The tables a run writes under its output.
RESULT_TABLES = ("detections", "images")
#: The query ``run`` suggests once it is done.
EXAMPLE_QUERY = "SELECT class_name, count(*) FROM detections GROUP BY 1 ORDER BY 2 DESC"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="detect over a bucket, folder or manifest into Parquet tables",
        description=(
            "Run YOLOv4 over every image of a source (s3://bucket/prefix, a local folder, or a "
            "manifest .txt/.csv/.parquet of URIs) on Ray actors and write the detections and "
            "images tables under the output (s3://bucket/prefix or a local folder). With a job "
            "spec (jobs/NAME.yaml) the spec gives the settings; options given here override it."
        ),
    )
    parser.add_argument(
        "spec",
        nargs="?",
        metavar="SPEC",
        help="a job spec (jobs/NAME.yaml); then --source and --output are optional overrides",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_ID",
        help="continue an interrupted run (the latest, or RUN_ID) with the source and settings "
        "it started with (--output is enough; options given override them): committed shards "
        "are skipped",
    )
    add_arguments(parser, DATA_SETTINGS)
    add_model_arguments(parser)
    add_arguments(parser, OTHER_SETTINGS)
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help=(
            "progress lines in the log (every 60 s, YOLO_BATCH_PROGRESS_INTERVAL_S, and at each "
            "change of state) instead of a bar; also when stderr is not a terminal"
        ),
    )
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's settings: the job spec's (if given) with the explicit options on top; for
    ``--resume`` without a spec, the resumed run's recorded settings with the explicit options
    on top; else the options with RunConfig's defaults. Options not given are ``None`` and
    leave the spec's (or record's) value, or the default, as it is."""
    given = given_settings(args, SETTINGS)
    resume_id = None if args.resume in (None, "latest") else args.resume
    if args.spec:
        base = load_spec(args.spec).run_config()
    elif args.resume is not None:
        if "output" not in given:
            raise ValueError(
                "--output missing: give the output of the run to resume "
                "(yolo-batch run --output URI --resume [RUN_ID])"
            )
        base = recorded_config(given["output"], resume_id, s3_options(args))
    else:
        missing = [f"--{name}" for name in ("source", "output") if name not in given]
        if missing:
            raise ValueError(
                f"{' and '.join(missing)} missing: give --source URI --output URI, or a job spec "
                "(yolo-batch run jobs/NAME.yaml)"
            )
        base = RunConfig(source=given["source"], output=given["output"])
    config = with_values(
        base,
        {
            **given,
            "model": _model_choice(base.model, args),
            "resume": args.resume is not None,
            "run_id": resume_id,
        },
    )
    config.validate(from_spec=bool(args.spec))
    return config


def _model_choice(base: ModelChoice, args: argparse.Namespace) -> ModelChoice:
    """``--model`` or ``--cfg`` replaces the spec's model; ``--weights`` / ``--names`` alone
    replace only that file of the spec's custom model."""
    if args.model or args.cfg:
        return ModelChoice(args.model, args.cfg, args.weights, args.names)
    files = {d: getattr(args, d) for d in ("weights", "names") if getattr(args, d)}
    return dataclasses.replace(base, **files)


def run(args: argparse.Namespace) -> int:
    from pipeline.run import driver

    config = config_from_args(args)
    outcome = driver.run(config, bar=False if args.no_progress else None)
    p = outcome.progress
    print(
        f"run {outcome.run_id}: {p.state}; {p.images_done:,}/{p.images_total:,} images "
        f"({p.images_error:,} errors), {p.detections:,} detections, "
        f"{p.shards_committed}/{p.shards_total} shards committed, {p.shards_failed} failed"
        + (f"; {outcome.note}" if outcome.note else "")
    )
    if p.shards_failed:
        output = f"--output {shlex.quote(config.output)}"
        what = shlex.quote(str(args.spec)) if args.spec else output
        print(
            f"retry the failed shards with: yolo-batch run {what} --resume {outcome.run_id}",
            file=sys.stderr,
        )
    _print_where_next(config.output, outcome.run_id, p.state)
    return outcome.exit_code


def _print_where_next(output: str, run_id: str, state: str) -> None:
    """Where the results are and what to run next (on stderr: stdout holds the run's line)."""
    out = shlex.quote(output)
    print(f"results: {output} (tables {', '.join(RESULT_TABLES)})", file=sys.stderr)
    if state == RUN_INTERRUPTED:  # stopped by Ctrl-C or SIGTERM: resume it
        steps = [f"yolo-batch run --output {out} --resume {run_id}"]
    else:
        steps = [
            f"yolo-batch status {out}",
            f"yolo-batch query {out} {shlex.quote(EXAMPLE_QUERY)}",
        ]
    print("next: " + " · ".join(steps), file=sys.stderr)
