"""Overlapping shards in one actor: what it saves when the store is remote.

The actor's worker (:class:`pipeline.worker.ShardProcessor`, in this process, no Ray) reads
generated JPEGs from a real S3-compatible server (SeaweedFS on 127.0.0.1) through a proxy
that holds every response ``--latency-ms`` before its first byte, as a remote store's time to
first byte does (S3 within a region: tens of milliseconds), and writes each shard's Parquet
files back through it. Two contenders, timed in alternation round after round (the order
rotating), on the same shards:

- ``one at a time``: one shard in flight, as an actor that takes its queued shards in turn:
  the model waits for each shard's first images and for its output write;
- ``overlapped``: ``--in-flight`` shards at once (the driver's ``shards_per_actor``, which the
  actor runs concurrently): the next shard loads while the model finishes one, and the model
  moves on while it writes (:class:`pipeline.worker.ModelTurns`).

Reported per contender: images/s (median over rounds), the model's busy fraction (time in
``detect_batch`` / wall time), and the overlapped / one-at-a-time ratio (median of per-round
ratios). ``--latency-ms 0`` shows the cost of overlapping where nothing is remote.

    .venv/bin/python benchmarks/bench_overlap.py                    # ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_overlap.py --latency-ms 0 50 --json overlap.json
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_json  # noqa: E402
from infra.local.fault_proxy import FaultProxy  # noqa: E402
from infra.local.object_store import SeaweedS3Server  # noqa: E402
from pipeline.bench.config import BenchConfig  # noqa: E402
from pipeline.bench.end_to_end import measure_e2e, shard_task  # noqa: E402
from pipeline.bench.images import ImageSet, prepare_images  # noqa: E402
from pipeline.bench.models import load_model  # noqa: E402
from pipeline.run.config import DEFAULT_SHARDS_PER_ACTOR  # noqa: E402
from pipeline.store.s3 import S3Options  # noqa: E402
from pipeline.store.sources import SourceObject  # noqa: E402
from pipeline.worker import ActorConfig, ShardProcessor, available_cpus  # noqa: E402

BUCKET = "overlap-bench"
ONE_AT_A_TIME = "one at a time"
OVERLAPPED = "overlapped"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[30.0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--shard-size", type=int, default=16, help="images per shard")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=DEFAULT_SHARDS_PER_ACTOR)
    parser.add_argument("--size", type=int, default=None, help="network input (model's)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPUs)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed per contender")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def upload_images(server: SeaweedS3Server, images: ImageSet) -> list[SourceObject]:
    client = server.client()
    client.create_bucket(Bucket=BUCKET)
    objects = []
    for index, data in enumerate(images.data):
        key = f"images/{index:05d}.jpg"
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
        objects.append(SourceObject(f"s3://{BUCKET}/{key}", size=len(data)))
    return objects


def measure(args: argparse.Namespace, server: SeaweedS3Server, objects, model, latency_s: float):
    """Rounds of both contenders through a proxy with ``latency_s``; per contender the list
    of ``measure_e2e`` figures."""
    rates: dict[str, list[dict]] = {ONE_AT_A_TIME: [], OVERLAPPED: []}
    in_flight = {ONE_AT_A_TIME: 1, OVERLAPPED: args.in_flight}
    config = ActorConfig(
        batch_size=args.batch_size, precision=args.precision, torch_threads=args.threads
    )
    with FaultProxy(server.endpoint_url, latency_s=latency_s) as proxy:
        options = S3Options(endpoint_url=proxy.endpoint_url, region=server.region)
        with ShardProcessor(model.spec, model.weights, config, options) as processor:
            for round_index in range(args.rounds):
                order = list(rates) if round_index % 2 == 0 else list(reversed(rates))
                for name in order:
                    output = f"s3://{BUCKET}/out-{round_index}-{len(rates[name])}-{name[0]}"
                    tasks = functools.partial(shard_task, objects, args.shard_size, output)
                    figures = measure_e2e(processor, tasks, args.seconds, in_flight[name])
                    rates[name].append(figures)
                    print(
                        f"  latency {latency_s * 1000:.0f} ms, round {round_index + 1}, {name}: "
                        f"{figures['images_per_s']:.1f} images/s, model busy "
                        f"{figures['model_busy_fraction']:.0%}",
                        flush=True,
                    )
    return rates


def summarise(rates: dict[str, list[dict]]) -> dict:
    ratios = [
        over["images_per_s"] / one["images_per_s"]
        for one, over in zip(rates[ONE_AT_A_TIME], rates[OVERLAPPED])
    ]
    return {
        name: {
            "images_per_s": statistics.median(f["images_per_s"] for f in figures),
            "model_busy_fraction": statistics.median(f["model_busy_fraction"] for f in figures),
            "rounds": figures,
        }
        for name, figures in rates.items()
    } | {"ratio_overlapped_to_one": statistics.median(ratios), "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or available_cpus())
    report: dict = {"parameters": vars(args) | {"json": str(args.json)}, "latencies": {}}
    with tempfile.TemporaryDirectory(prefix="bench-overlap-") as workdir:
        config = BenchConfig(images=args.images, size=args.size)
        images = prepare_images(config, Path(workdir))
        device = torch.device("cpu")
        model = load_model(config, lambda: None, device)  # trained weights
        with SeaweedS3Server(Path(workdir) / "store") as server:
            os.environ["AWS_ACCESS_KEY_ID"] = server.access_key
            os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_key
            objects = upload_images(server, images)
            for latency_ms in args.latency_ms:
                rates = measure(args, server, objects, model, latency_ms / 1000)
                report["latencies"][f"{latency_ms:g}"] = summarise(rates)
    print(f"\n{'latency':>10}{'one at a time':>16}{'overlapped':>14}{'ratio':>8}  model busy")
    for latency, row in report["latencies"].items():
        one, over = row[ONE_AT_A_TIME], row[OVERLAPPED]
        print(
            f"{latency + ' ms':>10}{one['images_per_s']:>12.1f} i/s{over['images_per_s']:>10.1f}"
            f" i/s{row['ratio_overlapped_to_one']:>7.2f}x  "
            f"{one['model_busy_fraction']:.0%} -> {over['model_busy_fraction']:.0%}"
        )
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
