"""An actor's peak memory on a shard of large photos: with its image budget, and without.

A real Ray actor (:class:`pipeline.worker.remote.DetectorActor`, one CPU, as a run's CPU
actors) processes ``--images`` generated JPEGs of ``--image-size`` (12 MP by default, as
cameras take them) as ``--shards`` shards at once (the run's ``--shards-per-actor``), at each
``--batch-sizes``; a fresh actor per figure, so each peak is its own. Contenders:

- ``unbounded``: an image budget that never binds (1 TiB): every image of the look-ahead
  windows is decoded at once, as before budgets;
- ``budget``: ``--image-memory`` (the stated budget);
- ``default``: the budget the actor derives itself (no Ray memory asked: its share of this
  machine). In a checkout from before the budget existed, ``default`` is the only contender
  (``--contenders default``), and measures that code.

Reported per figure: the actor's resident memory once its model is loaded, its peak
(``VmHWM``) over the shards, the difference, and images/s. Peaks depend on the allocator and
on timing; the stated budget bounds the decoded images and batch rows, not the whole process.

    .venv/bin/python benchmarks/bench_actor_memory.py                  # ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_actor_memory.py --images 32 --batch-sizes 8 --json m.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from benchmarks.common import cpu_model, shutdown_ray, write_json  # noqa: E402
from pipeline.bench.images import generate_images, sample_photo_paths  # noqa: E402
from pipeline.run.config import DEFAULT_SHARDS_PER_ACTOR  # noqa: E402
from pipeline.store.sources import SourceObject  # noqa: E402
from pipeline.worker import ActorConfig, ShardTask  # noqa: E402
from pipeline.worker.model_spec import resolve_model  # noqa: E402

try:
    from pipeline.run.settings import byte_size
except ImportError:  # a checkout from before the image budget: only ``default`` runs there
    byte_size = int

UNBOUNDED = "unbounded"
BUDGET = "budget"
DEFAULT = "default"
CONTENDERS = (UNBOUNDED, BUDGET, DEFAULT)
#: An image budget no shard here comes near.
UNBOUNDED_BYTES = 2**40
MiB = 2**20
#: Seconds an actor may take to start, or a shard to finish, before the benchmark gives up.
WAIT_S = 1800
RUN_ID = "bench-memory"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", default="4000x3000", help="WIDTHxHEIGHT")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--image-memory", type=byte_size, default=2**30, help="the budget")
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS_PER_ACTOR)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=[UNBOUNDED, BUDGET])
    parser.add_argument("--model", default="yolov4-tiny")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def memory_kib(pid: int, field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` figure of ``pid`` from ``/proc`` (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def actor_config(contender: str, batch_size: int, image_memory: int) -> ActorConfig:
    fields = {f.name for f in dataclasses.fields(ActorConfig)}
    if contender != DEFAULT and "image_memory" not in fields:
        raise SystemExit(f"this checkout has no image budget: use --contenders {DEFAULT}")
    config = ActorConfig(batch_size=batch_size, torch_threads=1)
    if contender == UNBOUNDED:
        return dataclasses.replace(config, image_memory=UNBOUNDED_BYTES)
    if contender == BUDGET:
        return dataclasses.replace(config, image_memory=image_memory)
    return config


def measure(args, spec, weights_ref, uris: list[str], output: Path, contender: str, batch: int):
    """One fresh actor runs the shards at once; its memory figures and speed."""
    import ray

    from pipeline.worker.remote import DetectorActor

    config = actor_config(contender, batch, args.image_memory)
    actor = DetectorActor.options(num_cpus=1, max_concurrency=args.shards).remote(
        spec, weights_ref, config, None
    )
    info = ray.get(actor.ready.remote(), timeout=WAIT_S)
    pid = info["pid"]
    base_kib = memory_kib(pid, "VmRSS")
    per_shard = -(-len(uris) // args.shards)
    tasks = [
        ShardTask(
            RUN_ID,
            shard,
            1,
            f"{contender}-{batch}",
            str(output),
            tuple(SourceObject(uri) for uri in uris[shard * per_shard : (shard + 1) * per_shard]),
        )
        for shard in range(args.shards)
    ]
    started = time.perf_counter()
    results = ray.get([actor.process_shard.remote(task) for task in tasks], timeout=WAIT_S)
    seconds = time.perf_counter() - started
    peak_kib = memory_kib(pid, "VmHWM")
    ray.kill(actor)
    images = sum(result.num_ok for result in results)
    return {
        "contender": contender,
        "batch_size": batch,
        "image_memory_mib": info.get("image_memory", 0) / MiB,
        "rss_loaded_mib": base_kib / 1024,
        "rss_peak_mib": peak_kib / 1024,
        "peak_over_loaded_mib": (peak_kib - base_kib) / 1024,
        "images_ok": images,
        "images_per_s": images / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    import ray

    args = parse_args(argv)
    width, height = (int(side) for side in args.image_size.split("x"))
    spec, weights = resolve_model(model=args.model)
    report = {
        "machine": cpu_model(),
        "date": datetime.date.today().isoformat(),
        "parameters": {**vars(args), "json": str(args.json)},
        "figures": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        photos = [Image.open(path).convert("RGB") for path in sample_photo_paths()]
        paths = generate_images(Path(workdir) / "images", args.images, (width, height), photos, 0)
        uris = [str(path) for path in paths]
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            weights_ref = ray.put(weights)
            for batch in args.batch_sizes:
                for contender in args.contenders:
                    output = Path(workdir) / f"out-{contender}-{batch}"
                    figures = measure(args, spec, weights_ref, uris, output, contender, batch)
                    report["figures"].append(figures)
                    print(
                        f"  batch {batch}, {contender}: peak {figures['rss_peak_mib']:.0f} MiB",
                        flush=True,
                    )
        finally:
            shutdown_ray()
    print(
        f"\n{report['machine']}, {report['date']}: {args.images} JPEGs {width}x{height} "
        f"({width * height / 1e6:.0f} MP), {args.shards} shards at once, {args.model}, "
        f"stated budget {args.image_memory / MiB:.0f} MiB"
    )
    print(
        f"{'batch':>5}  {'contender':<10}{'budget MiB':>11}{'loaded MiB':>11}{'peak MiB':>10}"
        f"{'peak-loaded':>12}{'images/s':>10}"
    )
    for row in report["figures"]:
        budget = "-" if row["contender"] == UNBOUNDED else f"{row['image_memory_mib']:.0f}"
        print(
            f"{row['batch_size']:>5}  {row['contender']:<10}{budget:>11}"
            f"{row['rss_loaded_mib']:>11.0f}{row['rss_peak_mib']:>10.0f}"
            f"{row['peak_over_loaded_mib']:>12.0f}{row['images_per_s']:>10.2f}"
        )
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
