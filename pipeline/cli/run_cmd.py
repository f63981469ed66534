"""``yolo-batch run --source URI --output URI``: the distributed detection job."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.model_options import add_model_arguments, detector_options
from pipeline.config import (
    ACTOR_START_TIMEOUT_S,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SHARDS_PER_ACTOR,
    ModelChoice,
    RunConfig,
)
from pipeline.plan import DEFAULT_SHARD_SIZE
from pipeline.s3 import DEFAULT_MAX_ATTEMPTS as S3_DEFAULT_MAX_ATTEMPTS
from pipeline.s3 import READ_TIMEOUT_S, S3Options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="detect over a bucket, folder or manifest into Parquet tables",
        description=(
            "Run YOLOv4 over every image of a source (s3://bucket/prefix, a local folder, or a "
            "manifest .txt/.csv/.parquet of URIs) on Ray actors and write the detections and "
            "images tables under the output (s3://bucket/prefix or a local folder)."
        ),
    )
    io = parser.add_argument_group("data")
    io.add_argument("--source", required=True, help="s3://bucket/prefix, folder or manifest")
    io.add_argument("--output", required=True, help="s3://bucket/prefix or folder for results")
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
    res.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    res.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images/shard")
    res.add_argument("--actors", type=int, help="detector actors (default: one per GPU, or 1)")
    res.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (0 = CPU; 0.5 shares)"
    )
    res.add_argument("--cpus-per-actor", type=float, help="CPUs per actor")
    res.add_argument("--fetch-threads", type=int, default=16, help="concurrent reads per actor")
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
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    resume_id = None if args.resume in (None, "latest") else args.resume
    return RunConfig(
        source=args.source,
        output=args.output,
        model=ModelChoice(args.model, args.cfg, args.weights, args.names),
        detector=detector_options(args),
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        fetch_threads=args.fetch_threads,
        max_attempts=args.max_attempts,
        shards_per_actor=args.shards_per_actor,
        ray_address=args.address,
        s3=S3Options(
            endpoint_url=args.endpoint_url,
            region=args.region,
            max_attempts=args.s3_max_attempts,
            read_timeout_s=args.s3_read_timeout,
        ),
        precision=args.precision,
        resume=args.resume is not None,
        run_id=resume_id,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        actor_start_timeout_s=args.actor_start_timeout,
    )


def run(args: argparse.Namespace) -> int:
    from pipeline import driver

    config = config_from_args(args)
    outcome = driver.run(config, bar=False if args.no_progress else None)
    p = outcome.progress
    print(
        f"run {outcome.run_id}: {p.state}; {p.images_done:,}/{p.images_total:,} images "
        f"({p.images_error:,} errors), {p.detections:,} detections, "
        f"{p.shards_committed}/{p.shards_total} shards committed, {p.shards_failed} failed"
    )
    if p.shards_failed:
        print(
            f"retry the failed shards with: yolo-batch run --source {args.source} "
            f"--output {args.output} --resume {outcome.run_id}",
            file=sys.stderr,
        )
    return outcome.exit_code
