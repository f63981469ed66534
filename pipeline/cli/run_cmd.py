"""``yolo-batch run --source URI --output URI`` or ``yolo-batch run jobs/NAME.yaml``: the
distributed detection job.

With a job spec, the spec gives the settings and options given on the command line override
them: the options a spec can set default to ``None`` here, so only explicit ones win.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from pipeline.cli.model_options import add_model_arguments
from pipeline.run.config import (
    ACTOR_START_TIMEOUT_S,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SHARDS_PER_ACTOR,
    ModelChoice,
    RunConfig,
)
from pipeline.run.jobspec import load_spec
from pipeline.run.plan import DEFAULT_SHARD_SIZE
from pipeline.store.s3 import DEFAULT_MAX_ATTEMPTS as S3_DEFAULT_MAX_ATTEMPTS
from pipeline.store.s3 import READ_TIMEOUT_S
from pipeline.worker.decode_modes import DECODE_MODES

#: Options a job spec can also set (option dest -> RunConfig field, ``detector.`` / ``s3.`` for
#: the nested settings). They default to ``None`` in the parser: given ones override the spec,
#: absent ones leave the spec's value, or RunConfig's default (the same as the help texts say).
SPEC_OPTIONS = {
    "source": "source",
    "output": "output",
    "size": "detector.input_size",
    "conf": "detector.conf_threshold",
    "iou": "detector.nms_threshold",
    "nms": "detector.nms_kind",
    "resize": "detector.resize",
    "max_det": "detector.max_detections",
    "classes": "detector.classes",
    "precision": "precision",
    "batch_size": "batch_size",
    "shard_size": "shard_size",
    "actors": "num_actors",
    "gpus_per_actor": "gpus_per_actor",
    "cpus_per_actor": "cpus_per_actor",
    "fetch_threads": "fetch_threads",
    "decode": "decode",
    "compile": "compile",
    "endpoint_url": "s3.endpoint_url",
    "region": "s3.region",
    "incremental": "incremental",
    "job_name": "job_name",
}


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
    io = parser.add_argument_group("data")
    io.add_argument("--source", help="s3://bucket/prefix, folder or manifest")
    io.add_argument("--output", help="s3://bucket/prefix or folder for results")
    io.add_argument(
        "--job-name",
        metavar="NAME",
        help="the job this run belongs to (a job spec's name): names its lease and run records",
    )
    io.add_argument(
        "--incremental",
        action=argparse.BooleanOptionalAction,
        help="process only images new or changed (URI + ETag) since the output's earlier "
        "committed runs (job specs: on unless the spec says incremental: false)",
    )
    io.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_ID",
        help="continue an interrupted run (the latest, or RUN_ID): committed shards are skipped",
    )
    io.add_argument("--endpoint-url", help="S3-compatible endpoint (else AWS_ENDPOINT_URL)")
    io.add_argument("--region", help="S3 region (else the AWS configuration)")
    io.add_argument(
        "--s3-read-timeout",
        type=float,
        default=READ_TIMEOUT_S,
        metavar="SECONDS",
        help=f"longest wait for the next bytes of an S3 response (default {READ_TIMEOUT_S})",
    )
    io.add_argument(
        "--s3-max-attempts",
        type=int,
        metavar="N",
        help="attempts per S3 request, the first included (default: AWS_MAX_ATTEMPTS, else "
        f"{S3_DEFAULT_MAX_ATTEMPTS}); failed image reads are also retried per image, then "
        "per shard",
    )
    add_model_arguments(parser)
    res = parser.add_argument_group("resources")
    res.add_argument("--batch-size", type=int, help=f"images per batch ({DEFAULT_BATCH_SIZE})")
    res.add_argument("--shard-size", type=int, help=f"images per shard ({DEFAULT_SHARD_SIZE})")
    res.add_argument(
        "--actors", type=int, help="detector actors (default: one per GPU, or one per CPU)"
    )
    res.add_argument(
        "--gpus-per-actor", type=float, help="GPUs per actor (0 = CPU, the default; 0.5 shares)"
    )
    res.add_argument("--cpus-per-actor", type=float, help="CPUs per actor")
    res.add_argument("--fetch-threads", type=int, help="concurrent reads per actor (16)")
    res.add_argument(
        "--decode",
        choices=DECODE_MODES,
        help="image decoding: cpu (full size: darknet's exact input), gpu (nvJPEG, for JPEGs), "
        "draft (large JPEGs at reduced scale, faster, detections within a stated tolerance); "
        "auto (default): gpu on CUDA with torchvision, else cpu",
    )
    res.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="run the model through torch.compile in each actor, after a compilation of seconds "
        "to a minute per actor: for GPUs (on CPU it adds little to the eager model; default off)",
    )
    res.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS)
    res.add_argument("--shards-per-actor", type=int, default=DEFAULT_SHARDS_PER_ACTOR)
    res.add_argument("--max-image-bytes", type=int, help="larger objects become error rows")
    res.add_argument("--max-image-pixels", type=int, help="larger images become error rows")
    res.add_argument("--address", help="Ray cluster address (else RAY_ADDRESS, else local)")
    res.add_argument(
        "--actor-start-timeout",
        type=float,
        default=ACTOR_START_TIMEOUT_S,
        metavar="SECONDS",
        help="how long an actor may take to be placed and load the model before the run goes "
        "on without it (or stops, if no actor started)",
    )
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    # Only explicit options may override a job spec: the spec's options default to None here.
    parser.set_defaults(func=run, **{dest: None for dest in SPEC_OPTIONS})


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's settings: the job spec's (if given) with the explicit options on top, else the
    options with RunConfig's defaults."""
    given = {d: getattr(args, d) for d in SPEC_OPTIONS if getattr(args, d, None) is not None}
    if given.get("classes") is not None:
        given["classes"] = tuple(c.strip() for c in given["classes"].split(",") if c.strip())
    if args.spec:
        base = load_spec(args.spec).run_config()
    else:
        missing = [f"--{d}" for d in ("source", "output") if d not in given]
        if missing:
            raise ValueError(
                f"{' and '.join(missing)} missing: give --source URI --output URI, or a job spec "
                "(yolo-batch run jobs/NAME.yaml)"
            )
        base = RunConfig(source=given["source"], output=given["output"])
    top: dict = {"detector": {}, "s3": {}}
    for dest, value in given.items():
        section, _, name = SPEC_OPTIONS[dest].rpartition(".")
        (top[section] if section else top)[name] = value
    resume_id = None if args.resume in (None, "latest") else args.resume
    return dataclasses.replace(
        base,
        **{k: v for k, v in top.items() if k not in ("detector", "s3")},
        model=_model_choice(base.model, args),
        detector=dataclasses.replace(base.detector, **top["detector"]),
        s3=dataclasses.replace(
            base.s3,
            **top["s3"],
            max_attempts=args.s3_max_attempts,
            read_timeout_s=args.s3_read_timeout,
        ),
        max_attempts=args.max_attempts,
        shards_per_actor=args.shards_per_actor,
        ray_address=args.address,
        resume=args.resume is not None,
        run_id=resume_id,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        actor_start_timeout_s=args.actor_start_timeout,
    )


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
        what = str(args.spec) if args.spec else f"--source {config.source} --output {config.output}"
        print(
            f"retry the failed shards with: yolo-batch run {what} --resume {outcome.run_id}",
            file=sys.stderr,
        )
    return outcome.exit_code
