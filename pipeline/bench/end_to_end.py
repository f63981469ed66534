"""The end-to-end figure: the actor's worker, :class:`pipeline.worker.ShardProcessor`, in this
process (no Ray) reading, decoding, detecting and writing Parquet."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from pipeline.bench.config import BenchConfig
from pipeline.bench.images import ImageSet
from pipeline.bench.models import BenchModel
from pipeline.bench.timing import OtherLoad
from pipeline.run.config import DEFAULT_SHARDS_PER_ACTOR
from pipeline.worker import ActorConfig, ShardProcessor, ShardResult, ShardTask

logger = logging.getLogger(__name__)

#: Run id of the end-to-end shards (their Parquet files go to a temporary folder).
BENCH_RUN_ID = "bench"
#: Timed end-to-end shards at least, however long each takes.
MIN_TIMED_SHARDS = 2


def shard_task(
    objects: Sequence, shard_size: int, output_root: Path | str, index: int
) -> ShardTask:
    """Shard ``index``: the next ``shard_size`` objects, cycling over ``objects`` in order.
    ``output_root``: a local folder, or an ``s3://`` URI as a string."""
    start = index * shard_size
    return ShardTask(
        run_id=BENCH_RUN_ID,
        shard_id=index,
        attempt=1,
        attempt_token=f"a1-{index:04d}",
        output_root=output_root if isinstance(output_root, str) else str(output_root.resolve()),
        objects=tuple(objects[(start + k) % len(objects)] for k in range(shard_size)),
    )


def effective_shard_size(requested: int, batch: int) -> int:
    """At least two batches, a whole number of them (no partial batch in a timed shard)."""
    return max(2, math.ceil(requested / batch)) * batch


def measure_e2e(
    processor: ShardProcessor,
    tasks: Callable[[int], ShardTask],
    seconds: float,
    shards_in_flight: int = DEFAULT_SHARDS_PER_ACTOR,
) -> dict:
    """One warm-up shard, then shards until ``seconds`` (at least MIN_TIMED_SHARDS), with
    ``shards_in_flight`` of them running at once as in the Ray actor (the driver's
    ``shards_per_actor``): the next loads while the model finishes one, which then writes."""
    processor.process(tasks(0))
    load = OtherLoad()
    results: list[ShardResult] = []
    submitted = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(shards_in_flight, thread_name_prefix="shard") as shards:
        running: deque[Future] = deque()
        while True:
            while len(running) < shards_in_flight and (
                submitted < MIN_TIMED_SHARDS or time.perf_counter() - started < seconds
            ):
                submitted += 1
                running.append(shards.submit(processor.process, tasks(submitted)))
            if not running:
                break
            results.append(running.popleft().result())
    wall = time.perf_counter() - started
    images = sum(r.num_images for r in results)
    total = lambda name: sum(getattr(r, name) for r in results)  # noqa: E731
    return {
        "images_per_s": images / wall,
        "images": images,
        "shards": len(results),
        "seconds": wall,
        "model_seconds": total("detect_seconds"),
        "waited_seconds": total("wait_seconds"),
        "shards_in_flight": shards_in_flight,
        "decode_cpu_seconds": total("decode_seconds"),
        "write_seconds": total("write_seconds"),
        "model_busy_fraction": total("detect_seconds") / wall,
        "errors": total("num_errors"),
        "detections_per_image": total("num_detections") / images,
        "other_cores": load.cores(),
    }


def run_e2e(
    model: BenchModel, images: ImageSet, config: BenchConfig, device: torch.device, workdir: Path
) -> list[dict]:
    """One row per (precision, batch size, decode mode), each with a fresh ShardProcessor."""
    rows = []
    for precision, batch, decode in itertools.product(
        config.precisions, config.batches, config.decode
    ):
        shard_size = effective_shard_size(config.shard_size, batch)
        output = workdir / f"out-{precision}-{batch}-{decode}"
        actor = ActorConfig(
            batch_size=batch,
            fetch_threads=config.fetch_threads,
            decode_threads=config.decode_threads,
            device=str(device),
            precision=precision,
            torch_threads=config.threads,
            decode=decode,
            compile=config.compile,
        )
        with ShardProcessor(model.spec, model.weights, actor) as processor:
            figures = measure_e2e(
                processor,
                functools.partial(shard_task, images.objects, shard_size, output),
                config.seconds,
            )
            threads = {
                "decode_resolved": getattr(processor, "decode_mode", decode),
                "torch_threads": processor.torch_threads,
                "decode_threads": config.decode_threads or processor.cpus,
            }
        if figures["errors"]:
            logger.warning("%d images failed to decode or read end to end", figures["errors"])
        row = {"precision": precision, "batch_size": batch, "decode": decode}
        rows.append({**row, "shard_size": shard_size, **threads, **figures})
        logger.info(
            "end to end %s batch %d decode %s: %.1f images/s",
            precision,
            batch,
            decode,
            figures["images_per_s"],
        )
    return rows
