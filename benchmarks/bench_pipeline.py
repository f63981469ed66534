"""End-to-end efficiency of the Ray pipeline against the in-process detector, in one process.

Three measurements, each against a baseline timed in the same invocation:

1. **Pipeline efficiency** (yolov4-tiny, official weights, 416x416). N JPEGs are generated
   from the two sample photos (resized, cropped and re-encoded, so every file differs). Timed
   in alternation, round after round (the order rotating each round):

   - ``batched``: the :class:`~yolov4.detector.Detector` path in-process, sequentially:
     ``read_image`` then ``detect_batch`` per batch of 8, torch threads = 2 (warmed up first);
   - ``ShardProcessor``: the actor's worker class in-process (threaded fetch/decode overlapped
     with the model, Parquet writes), on the same shards, no Ray;
   - ``pipeline``: ``pipeline.run.driver.run`` on a local Ray (1 actor, 2 CPUs, batch 8).

   The pipeline's steady-state rate is ``images / (first shard dispatched -> last commit)``.
   Both ends are taken by wrapping, for the duration of the run, two driver-side functions:
   ``read_shard`` (called right before each shard's task is submitted; its first call is the
   first dispatch, after the actors have loaded the model) and
   ``ResultTables.commit_shards`` (its last return is the last log commit). The window
   therefore excludes Ray start, model load, planning and the final record writes, and
   includes everything a long run pays per shard: Ray task submission and results, plan
   reads, the actor's own work, the batched log commits, and the first (cold) batch of the new
   actor. A second estimator, ``inter-commit``, uses the first and last shard results to reach
   the driver (images after the first shard / time between those results); it excludes the
   cold first shard, and is cross-checked against the ``images`` files' mtimes. Also
   reported: images / total wall time of ``run()`` (first round: includes starting Ray), the
   phases of that time, and the actors' own per-shard timings (``ShardResult``, captured on
   the driver as each result arrives) to show where the steady state loses time.

2. **Orchestration overhead**: a yolov4-tiny cfg at 32x32 with random weights (negligible
   compute) on tiny random PNGs, shards of 50: shards/s and images/s of the pipeline, and
   the driver's overhead per image and per shard = (pipeline window - the same shards' time
   in an in-process ``ShardProcessor``) / count; also the time the actor's model sat idle
   during the window (waiting for input, task round trips), per shard.

3. **Planning at scale**: ``write_plan`` over a generator of 10,000,000 synthetic
   ``SourceObject`` (uri, size, etag) into a local folder, shards of 1000, in a fresh
   subprocess started before this process loads torch: time and peak RSS against a 1 GiB
   target (the largest of ``VmHWM``, RSS sampled every 10 ms, and ``ru_maxrss`` unless
   inherited from the parent; see :func:`plan_child`).

**Shared machines.** A thread samples ``/proc`` and records the CPU used by processes outside
this process tree (``foreign load``, in cores) during every measurement. A round is *quiet*
when that load stays under ``--quiet-cores`` for each contender; headline figures are medians
over quiet rounds (or over all rounds, flagged, when none was quiet). Each round first waits
up to ``--wait-quiet`` seconds for the other processes to quiet down. After ``--rounds``
rounds, more are run (up to ``--max-rounds``) until ``--quiet-rounds`` were quiet, as long as
the benchmark stays within ``--budget-s``. Per-round ratios and loads are printed.

Run from the repository root (3-6 minutes on 2 cores with the defaults)::

    .venv/bin/python benchmarks/bench_pipeline.py
    .venv/bin/python benchmarks/bench_pipeline.py --images 192 --rounds 3 --json out.json
    .venv/bin/python benchmarks/bench_pipeline.py --skip-plan --skip-overhead
    .venv/bin/python benchmarks/bench_pipeline.py --omp-wait-policy passive

``--omp-wait-policy`` sets ``OMP_WAIT_POLICY`` for this process and the Ray workers it starts
(both sides alike). ``RAY_ADDRESS`` is ignored (removed from the environment): the pipeline
always runs on a fresh local Ray started by the driver.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    YOLOV4_TINY_CFG,
    LoadMonitor,
    another_round,
    cfg_at_size,
    cpu_model,
    json_args,
    median,
    rate,
    shutdown_ray,
    write_json,
)

TARGET_EFFICIENCY = 0.85
PLAN_RSS_TARGET_MIB = 1024.0
BATCH_SIZE = 8
TORCH_THREADS = 2
ACTOR_CPUS = 2
#: Seconds kept for section 2 when deciding whether section 1 may add a round.
OVERHEAD_RESERVE_S = 60.0
#: Fetch threads of the actor (RunConfig's default), mirrored by the in-process ShardProcessor.
FETCH_THREADS = 16


# --------------------------------------------------------------------------- helpers
class Probes:
    """Wraps functions (module attributes or class methods) to record each call's times.

    ``calls[key]`` holds ``(start, end, args)`` per call, in ``time.perf_counter`` seconds;
    ``args`` only where asked for. Everything is put back by :meth:`restore`.
    """

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[float, float, tuple | None]]] = defaultdict(list)
        self._originals: list[tuple[object, str, Callable]] = []

    def wrap(self, owner: object, name: str, key: str, *, keep_args: bool = False) -> None:
        original = getattr(owner, name)
        calls = self.calls[key]

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                calls.append((start, time.perf_counter(), args if keep_args else None))

        setattr(owner, name, wrapper)
        self._originals.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()

    def total(self, key: str) -> float:
        return sum(end - start for start, end, _ in self.calls[key])

    def first_start(self, key: str) -> float | None:
        calls = self.calls[key]
        return min(start for start, _, _ in calls) if calls else None


# --------------------------------------------------------------------------- inputs
def make_jpegs(folder: Path, count: int) -> list[Path]:
    """``count`` distinct JPEGs from the two sample photos: scaled, cropped, re-encoded."""
    from PIL import Image

    from yolov4.pretrained import fetch_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    samples = [Image.open(path).convert("RGB") for path in fetch_sample_images()]
    paths = []
    for i in range(count):
        image = samples[i % len(samples)]
        scale = 0.45 + 0.55 * ((i * 7) % 11) / 10
        crop = 4 * (i % 5)
        cropped = image.crop((crop, crop, image.width - crop, image.height))
        size = (max(32, round(cropped.width * scale)), max(32, round(cropped.height * scale)))
        path = folder / f"img-{i:05d}.jpg"
        cropped.resize(size, Image.BILINEAR).save(path, quality=70 + (i * 3) % 25)
        paths.append(path)
    return paths


def make_pngs(folder: Path, count: int, side: int = 32) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        path = folder / f"tiny-{i:06d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def make_tiny_model(folder: Path, side: int = 32) -> tuple[Path, Path]:
    """A yolov4-tiny cfg at ``side`` x ``side`` and random darknet weights for it."""
    from yolov4.darknet_cfg import config_from_cfg, parse_cfg
    from yolov4.darknet_weights import save_darknet_weights
    from yolov4.random_weights import random_darknet_model

    folder.mkdir(parents=True, exist_ok=True)
    cfg = cfg_at_size(YOLOV4_TINY_CFG, folder / f"yolov4-tiny-{side}.cfg", side)
    weights = folder / f"yolov4-tiny-{side}.weights"
    model = random_darknet_model(config_from_cfg(parse_cfg(cfg)))
    save_darknet_weights(model.darknet_convs(), weights)
    return cfg, weights


def shard_tasks(source: Path, shard_size: int, output_root: Path, run_id: str) -> list:
    """The source's objects in plan order, cut into ``ShardTask`` as the driver would."""
    from pipeline.store.ledger import new_attempt_token
    from pipeline.store.sources import open_source
    from pipeline.worker import ShardTask

    objects = list(open_source(str(source)).iter_objects())
    return [
        ShardTask(
            run_id=run_id,
            shard_id=index,
            attempt=1,
            attempt_token=new_attempt_token(1),
            output_root=str(output_root),
            objects=tuple(objects[start : start + shard_size]),
        )
        for index, start in enumerate(range(0, len(objects), shard_size))
    ]


# --------------------------------------------------------------------------- contenders
def time_batched(detector, paths: list[Path]) -> dict:
    """Sequential ``read_image`` + ``detect_batch`` per batch; decode and detect timed apart."""
    import torch

    from yolov4.imageio import read_image

    decode_s = detect_s = 0.0
    started = time.perf_counter()
    for start in range(0, len(paths), BATCH_SIZE):
        t0 = time.perf_counter()
        images = [
            torch.from_numpy(read_image(p)).permute(2, 0, 1)
            for p in paths[start : start + BATCH_SIZE]
        ]
        t1 = time.perf_counter()
        detector.detect_batch(images).to("cpu")
        detect_s += time.perf_counter() - t1
        decode_s += t1 - t0
    ended = time.perf_counter()
    return {
        "t0": started,
        "t1": ended,
        "seconds": ended - started,
        "images": len(paths),
        "images_per_s": rate(len(paths), ended - started),
        "decode_s": decode_s,
        "detect_s": detect_s,
    }


def make_processor(spec, weights):
    """A ShardProcessor configured as the driver configures its actor (1 actor, 2 CPUs)."""
    from pipeline.worker import ActorConfig, ShardProcessor

    config = ActorConfig(
        batch_size=BATCH_SIZE, fetch_threads=FETCH_THREADS, torch_threads=TORCH_THREADS
    )
    return ShardProcessor(spec, weights, config, cpus=ACTOR_CPUS)


def time_processor(processor, tasks: list) -> dict:
    results = []
    started = time.perf_counter()
    for task in tasks:
        results.append(processor.process(task))
    ended = time.perf_counter()
    images = sum(r.num_images for r in results)
    errors = sum(r.num_errors for r in results)
    if errors:
        raise RuntimeError(f"in-process ShardProcessor: {errors} image errors")
    return {
        "t0": started,
        "t1": ended,
        "seconds": ended - started,
        "images": images,
        "shards": len(tasks),
        "images_per_s": rate(images, ended - started),
        **_actor_sums(results),
    }


def _actor_sums(results: list) -> dict:
    """Sums over ShardResults (the actor's own timings; decode/fetch summed over threads)."""
    return {
        "shard_s": sum(r.seconds for r in results),
        "detect_s": sum(r.detect_seconds for r in results),
        "wait_s": sum(r.wait_seconds for r in results),
        "decode_thread_s": sum(r.decode_seconds for r in results),
        "fetch_thread_s": sum(r.fetch_seconds for r in results),
        "write_s": sum(r.write_seconds for r in results),
        "queued_s": sum(r.queued_seconds for r in results),
    }


def run_pipeline(source: Path, output: Path, *, shard_size: int, model) -> dict:
    """``driver.run`` with probes on the driver-side steps; see the module docstring."""
    from pipeline.run import dispatch, driver, fleet
    from pipeline.run.config import RunConfig
    from pipeline.store.ledger import RunRecord
    from pipeline.store.tables import ResultTables

    probes = Probes()
    probes.wrap(driver, "resolve_model", "resolve_model")
    probes.wrap(driver, "plan_run", "plan")  # starts the planner, which lists on meanwhile
    probes.wrap(dispatch, "init_ray", "ray_init")
    probes.wrap(fleet.ActorFleet, "launch", "launch")
    probes.wrap(dispatch, "read_shard", "read_shard")
    probes.wrap(ResultTables, "commit_shards", "commit")
    # ``shard_counts(result)`` is evaluated as each shard's result reaches the driver: it sees
    # every ShardResult, in arrival order.
    probes.wrap(dispatch, "shard_counts", "result", keep_args=True)
    config = RunConfig(
        source=str(source),
        output=str(output),
        model=model,
        shard_size=shard_size,
        batch_size=BATCH_SIZE,
        actors=1,
        cpus_per_actor=ACTOR_CPUS,
        gpus_per_actor=0,  # the CPU path, as the in-process baselines measure
        fetch_threads=FETCH_THREADS,
    )
    started = time.perf_counter()
    try:
        outcome = driver.run(config, reporter_stream=io.StringIO(), bar=False)
    finally:
        probes.restore()
    ended = time.perf_counter()
    p = outcome.progress
    if outcome.exit_code != 0 or p.images_error or p.images_done != p.images_total:
        raise RuntimeError(
            f"pipeline run {outcome.run_id} ended with code {outcome.exit_code}: "
            f"{p.images_done}/{p.images_total} images, {p.images_error} errors, "
            f"failed shards {p.failed_shards}"
        )
    results = [args[0] for _, _, args in probes.calls["result"]]
    arrivals = sorted(end for _, end, _ in probes.calls["result"])
    commits = sorted(end for _, end, _ in probes.calls["commit"])
    first_dispatch = probes.first_start("read_shard")
    window = commits[-1] - first_dispatch
    images = p.images_done
    after_first = images - results[0].num_images  # shard_counts runs in arrival order
    phases = {
        "resolve_model": probes.total("resolve_model"),
        "plan": probes.total("plan"),
        "ray_init": probes.total("ray_init"),
        # Actors start asynchronously: from the first launch to the first shard dispatched.
        "start_actors": first_dispatch - probes.first_start("launch"),
        "dispatch_window": window,
    }
    phases["other"] = (ended - started) - sum(phases.values())
    run_dir = output / "_runs" / outcome.run_id
    mtimes = sorted(
        f.stat().st_mtime for f in (output / "images" / f"run_id={outcome.run_id}").glob("*")
    )
    record = RunRecord.from_json((run_dir / "run.json").read_bytes())
    return {
        "t0": started,
        "t1": ended,
        "w0": first_dispatch,
        "w1": commits[-1],
        "images": images,
        "shards": len(results),
        "total_s": ended - started,
        "window_s": window,
        "steady_images_per_s": rate(images, window),
        "total_images_per_s": rate(images, ended - started),
        "intercommit_s": arrivals[-1] - arrivals[0],
        "intercommit_images_per_s": rate(after_first, arrivals[-1] - arrivals[0]),
        "marker_span_s": (mtimes[-1] - mtimes[0]) if len(mtimes) > 1 else None,
        "record_images_per_s": record.images_per_second,
        "phases": phases,
        "actor": _actor_sums(results),
        "driver": {
            "read_shard_s": probes.total("read_shard"),
            "commit_s": probes.total("commit"),
        },
    }


def with_load(monitor: LoadMonitor, result: dict) -> dict:
    """Add the machine load during the measurement (and during the pipeline's window)."""
    monitor.wait_past(result["t1"])
    result["load"] = monitor.interval(result["t0"], result["t1"])
    if "w0" in result:
        result["window_load"] = monitor.interval(result["w0"], result["w1"])
    return result


def steady_load(result: dict) -> dict:
    return result.get("window_load") or result["load"]


# --------------------------------------------------------------------------- sections
def _quiet_count(rounds: list[dict]) -> str:
    return f"{sum(row['quiet'] for row in rounds)} of {len(rounds)} rounds"


def begin_round(args, rounds: list[dict], monitor: LoadMonitor) -> float:
    """Say when a round is an extra one, wait for other processes to quiet down (up to
    ``--wait-quiet``); returns the seconds waited."""
    if len(rounds) >= args.rounds:
        print(f"    (extra round: {_quiet_count(rounds)} quiet so far)", flush=True)
    waited = monitor.wait_quiet(args.quiet_cores, args.wait_quiet, args.deadline)
    if waited > 1:
        print(f"    (waited {waited:.0f} s for other processes to quiet down)", flush=True)
    return waited


def section_efficiency(args, work: Path, monitor: LoadMonitor) -> dict:
    import torch

    from pipeline.run.config import ModelChoice
    from pipeline.worker.model_spec import resolve_model

    torch.set_num_threads(TORCH_THREADS)
    folder = work / "jpegs"
    paths = make_jpegs(folder, args.images)
    mean_kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
    print(f"[1] {len(paths)} JPEGs ({mean_kib:.0f} KiB mean), shards of {args.shard_size}")
    spec, weights = resolve_model(model="yolov4-tiny")
    detector = spec.build_detector(weights)  # the actor's own construction path
    warm = [torch.from_numpy(img).permute(2, 0, 1) for img in _decode(paths[:BATCH_SIZE])]
    detector.detect_batch(warm)
    processor = make_processor(spec, weights)
    processor.detector.detect_batch(warm)

    contenders = ["batched", "processor", "pipeline"]
    rounds: list[dict] = []
    reserve = 0.0 if args.skip_overhead else OVERHEAD_RESERVE_S
    last_round_s = 0.0
    while another_round(args, rounds, last_round_s, reserve):
        r = len(rounds)
        waited = begin_round(args, rounds, monitor)
        round_started = time.perf_counter()
        order = contenders[r % 3 :] + contenders[: r % 3]
        row: dict = {"order": order, "waited_s": waited}
        for name in order:
            if name == "batched":
                result = time_batched(detector, paths)
            elif name == "processor":
                tasks = shard_tasks(folder, args.shard_size, work / f"proc-out-{r}", "bench")
                result = time_processor(processor, tasks)
            else:
                out = work / f"pipe-out-{r}"
                model = ModelChoice("yolov4-tiny")
                result = run_pipeline(folder, out, shard_size=args.shard_size, model=model)
                shutil.rmtree(out, ignore_errors=True)
            row[name] = with_load(monitor, result)
            print(f"    round {r + 1}: {name:9s} {_short(result)}", flush=True)
        base = row["batched"]
        pipe = row["pipeline"]
        row["ratio_steady"] = pipe["steady_images_per_s"] / base["images_per_s"]
        row["ratio_intercommit"] = pipe["intercommit_images_per_s"] / base["images_per_s"]
        row["ratio_total"] = pipe["total_images_per_s"] / base["images_per_s"]
        row["ratio_processor"] = row["processor"]["images_per_s"] / base["images_per_s"]
        # CPU seconds per image of this process tree: the batched path vs the pipeline's window.
        base_cpu = base["load"]["own_cpu_s"] / base["images"]
        pipe_cpu = pipe["window_load"]["own_cpu_s"] / pipe["images"]
        row["cpu_ms_per_image"] = {"batched": 1e3 * base_cpu, "pipeline_window": 1e3 * pipe_cpu}
        row["ratio_cpu"] = base_cpu / pipe_cpu if pipe_cpu > 0 else float("nan")
        row["foreign_cores_max"] = max(
            base["load"]["foreign_cores"],
            row["processor"]["load"]["foreign_cores"],
            pipe["window_load"]["foreign_cores"],
        )
        row["quiet"] = row["foreign_cores_max"] < args.quiet_cores
        row.update(_split_costs(base, pipe))
        rounds.append(row)
        last_round_s = time.perf_counter() - round_started
    processor.close()
    return {
        "images": len(paths),
        "shard_size": args.shard_size,
        "mean_file_kib": mean_kib,
        "rounds": rounds,
    }


def _split_costs(base: dict, pipe: dict) -> dict:
    """The pipeline's window split, from the model's side, into per-image and per-shard costs
    (ms).

    The model runs one batch at a time however many shards are in flight (the actor's
    ``ModelTurns``), so its busy time, the shards' ``detect_seconds`` summed, never overlaps
    itself: per image, that busy time over the images; per shard, the rest of the window (the
    model idle: waiting for a shard's first images, for Ray between shards, the cold first
    batch) over the shards. Per-shard wall times are not summed: with two shards in flight
    they overlap. The steady-state ratio for a long run with shards of S images is projected
    as ``baseline / (per_image + per_shard / S)``.
    """
    actor, shards, n = pipe["actor"], pipe["shards"], pipe["images"]
    idle = max(pipe["window_s"] - actor["detect_s"], 0.0)
    per_image = actor["detect_s"] / n
    per_shard = idle / shards
    baseline = base["seconds"] / base["images"]
    return {
        "cost_ms": {
            "baseline_per_image": 1e3 * baseline,
            "per_image": 1e3 * per_image,
            "per_shard": 1e3 * per_shard,
        },
        "projected_ratio_1000": baseline / (per_image + per_shard / 1000),
    }


def _decode(paths: list[Path]) -> list:
    from yolov4.imageio import read_image

    return [read_image(p) for p in paths]


def _short(result: dict) -> str:
    load = steady_load(result)["foreign_cores"] if "load" in result else float("nan")
    if "steady_images_per_s" in result:
        text = (
            f"steady {result['steady_images_per_s']:.2f} img/s, "
            f"total {result['total_images_per_s']:.2f} img/s ({result['total_s']:.1f} s)"
        )
    else:
        text = f"{result['images_per_s']:.2f} img/s ({result['seconds']:.1f} s)"
    return f"{text}; other processes {load:.2f} cores"


def section_overhead(args, work: Path, monitor: LoadMonitor) -> dict:
    import torch

    from pipeline.run.config import ModelChoice
    from pipeline.worker.model_spec import resolve_model

    torch.set_num_threads(TORCH_THREADS)
    folder = work / "pngs"
    make_pngs(folder, args.tiny_images)
    cfg, weights_path = make_tiny_model(work / "tiny-model")
    print(
        f"[2] {args.tiny_images} 32x32 PNGs, yolov4-tiny at 32x32 (random weights), "
        f"shards of {args.tiny_shard_size}"
    )
    spec, weights = resolve_model(cfg=str(cfg), weights=str(weights_path))
    processor = make_processor(spec, weights)
    warm = shard_tasks(folder, args.tiny_shard_size, work / "tiny-warm", "bench")[:1]
    time_processor(processor, warm)
    model = ModelChoice(cfg=str(cfg), weights=str(weights_path))
    rounds: list[dict] = []
    last_round_s = 0.0
    while another_round(args, rounds, last_round_s, 0.0):
        r = len(rounds)
        waited = begin_round(args, rounds, monitor)
        round_started = time.perf_counter()
        order = ["processor", "pipeline"] if r % 2 == 0 else ["pipeline", "processor"]
        row: dict = {"order": order, "waited_s": waited}
        for name in order:
            if name == "processor":
                out = work / f"tiny-proc-{r}"
                tasks = shard_tasks(folder, args.tiny_shard_size, out, "bench")
                result = time_processor(processor, tasks)
            else:
                out = work / f"tiny-pipe-{r}"
                result = run_pipeline(folder, out, shard_size=args.tiny_shard_size, model=model)
            shutil.rmtree(out, ignore_errors=True)
            row[name] = with_load(monitor, result)
            print(f"    round {r + 1}: {name:9s} {_short(result)}", flush=True)
        pipe, proc = row["pipeline"], row["processor"]
        images, shards = pipe["images"], pipe["shards"]
        extra = pipe["window_s"] - proc["seconds"]
        row["shards_per_s_steady"] = rate(shards, pipe["window_s"])
        row["shards_per_s_total"] = rate(shards, pipe["total_s"])
        row["overhead_us_per_image_steady"] = 1e6 * extra / images
        row["overhead_ms_per_shard_steady"] = 1e3 * extra / shards
        row["overhead_us_per_image_total"] = 1e6 * (pipe["total_s"] - proc["seconds"]) / images
        row["processor_us_per_image"] = 1e6 * proc["seconds"] / images
        extra_cpu = pipe["window_load"]["own_cpu_s"] - proc["load"]["own_cpu_s"]
        row["overhead_cpu_ms_per_shard_steady"] = 1e3 * extra_cpu / shards
        row["foreign_cores_max"] = max(
            proc["load"]["foreign_cores"], pipe["window_load"]["foreign_cores"]
        )
        row["quiet"] = row["foreign_cores_max"] < args.quiet_cores
        idle = max(pipe["window_s"] - pipe["actor"]["detect_s"], 0.0)
        row["model_idle_ms_per_shard"] = 1e3 * idle / shards
        rounds.append(row)
        last_round_s = time.perf_counter() - round_started
    processor.close()
    return {"images": args.tiny_images, "shard_size": args.tiny_shard_size, "rounds": rounds}


def section_plan(args, work: Path) -> dict:
    out = work / "plan-out"
    print(f"[3] write_plan over {args.plan_objects:,} objects, in a subprocess", flush=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--plan-child",
        str(args.plan_objects),
        str(args.plan_shard_size),
        str(out),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"planning subprocess failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    result["target_mib"] = PLAN_RSS_TARGET_MIB
    print(f"    {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    return result


def plan_child(objects: int, shard_size: int, output: str) -> None:
    """Runs in a fresh interpreter: plan ``objects`` synthetic objects, print one JSON line.

    Peak RSS is the largest of three readings, as each can miss the peak alone: ``VmHWM``
    (the kernel updates it lazily, so memory returned by ``madvise`` can escape it), RSS
    sampled every 10 ms in a thread, and ``ru_maxrss``, unless this process inherited its
    parent's larger peak (Linux carries ``ru_maxrss`` over fork + exec).
    """
    inherited = _maxrss_mib() > _proc_status_mib("VmHWM") + 4
    from pipeline.run.plan import read_plan_summary, read_shard
    from pipeline.run.planner import write_plan
    from pipeline.store.layout import OutputLayout
    from pipeline.store.sources import SourceObject
    from pipeline.store.storage import LocalStorage

    def uri(i: int) -> str:
        return f"s3://bench-bucket/images/{i // 10_000:05d}/{i:010d}.jpg"

    def generate():
        for i in range(objects):
            yield SourceObject(uri(i), 50_000 + (i * 7919) % 450_000, f"{i * 2654435761:032x}")

    # The generator's own cost (formatting URIs, building objects) is inside the measured
    # time, as a real listing's would be; it is estimated apart on a sample.
    sample = min(objects, 1_000_000)
    started = time.perf_counter()
    for _ in itertools.islice(generate(), sample):
        pass
    generator_s = (time.perf_counter() - started) * objects / sample

    storage, layout, run_id = LocalStorage(), OutputLayout(output), "bench-plan"
    rss_before = _proc_status_mib("VmRSS")
    sampler = RssSampler().start()
    started = time.perf_counter()
    summary = write_plan(
        generate(),
        storage=storage,
        layout=layout,
        run_id=run_id,
        source="s3://bench-bucket/images/",
        shard_size=shard_size,
    )
    seconds = time.perf_counter() - started
    sampled = sampler.stop()
    hwm, rss_after, maxrss = _proc_status_mib("VmHWM"), _proc_status_mib("VmRSS"), _maxrss_mib()
    peak = max(hwm, sampled, 0.0 if inherited else maxrss)
    check = read_plan_summary(storage, layout, run_id)
    last = read_shard(storage, layout, run_id, summary.num_shards - 1)
    if check != summary or summary.num_images != objects or last[-1].uri != uri(objects - 1):
        raise RuntimeError("the plan read back does not match what was planned")
    sizes = [f.stat().st_size for f in Path(layout.plan_dir(run_id)).iterdir()]
    result = {
        "objects": summary.num_images,
        "shards": summary.num_shards,
        "shard_size": shard_size,
        "seconds": seconds,
        "objects_per_s": rate(summary.num_images, seconds),
        "generator_s_estimate": generator_s,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        "growth_mib": peak - rss_before,
        "rss_after_mib": rss_after,
        "vmhwm_mib": hwm,
        "sampled_peak_mib": sampled,
        "ru_maxrss_mib": maxrss,
        "ru_maxrss_inherited": inherited,
        "plan_files": len(sizes),
        "plan_mib": sum(sizes) / 2**20,
    }
    print(json.dumps(result))


class RssSampler:
    """The largest resident set size of this process seen by a thread polling ``statm``."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._read()
        return self.peak * self.page / 2**20

    def _read(self) -> None:
        with open("/proc/self/statm") as fh:
            self.peak = max(self.peak, int(fh.read().split()[1]))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._read()


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _proc_status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


# --------------------------------------------------------------------------- report
def _get(row: dict, keys: tuple[str, ...]):
    for key in keys:
        row = row[key]
    return row


def med(rounds: list[dict], *keys: str) -> float:
    return median([_get(row, keys) for row in rounds])


def report(results: dict) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []

    def add(name: str, value: str = "", note: str = "") -> None:
        rows.append((name, value, note))

    eff = results.get("efficiency")
    if eff:
        _report_efficiency(eff, add)
    over = results.get("overhead")
    if over:
        _report_overhead(over, add)
    plan = results.get("plan")
    if plan:
        ok = plan["peak_rss_mib"] < plan["target_mib"]
        add(
            "3. planning at scale",
            "",
            f"{plan['objects']:,} objects, shards of "
            f"{plan['shard_size']}, local output, fresh subprocess",
        )
        add(
            "  write_plan time",
            f"{plan['seconds']:.1f} s",
            f"{plan['objects_per_s'] / 1e6:.2f} M objects/s; {plan['plan_files']:,} files, "
            f"{plan['plan_mib']:.0f} MiB; of which ~{plan['generator_s_estimate']:.1f} s in the "
            "synthetic generator itself",
        )
        add(
            "  peak RSS",
            f"{plan['peak_rss_mib']:.0f} MiB",
            f"{'under' if ok else 'OVER'} the {plan['target_mib']:.0f} MiB target; "
            f"{plan['rss_before_mib']:.0f} MiB before planning (imports), "
            f"+{plan['growth_mib']:.0f} MiB while planning",
        )
        add(
            "    readings, MiB",
            "",
            f"VmHWM {plan['vmhwm_mib']:.0f}, sampled every 10 ms {plan['sampled_peak_mib']:.0f}, "
            f"ru_maxrss {plan['ru_maxrss_mib']:.0f}"
            + (" (inherited from the parent: ignored)" if plan["ru_maxrss_inherited"] else ""),
        )
    width = max(len(name) for name, _, _ in rows) + 2
    vwidth = max(len(value) for _, value, _ in rows) + 2
    print()
    print(
        f"CPU: {results['cpu']} ({results['cpus']} CPUs); python {results['python']}, "
        f"torch {results.get('torch')}, ray {results.get('ray')}, "
        f"OMP_WAIT_POLICY {results['omp_wait_policy'] or 'unset'}"
    )
    for name, value, note in rows:
        print(f"{name:<{width}}{value:>{vwidth}}  {note}".rstrip())
    return rows


def _select(rounds: list[dict]) -> tuple[list[dict], str]:
    """The quiet rounds if any (with a note saying so), else all of them, flagged."""
    quiet = [row for row in rounds if row["quiet"]]
    if quiet:
        return quiet, f"medians of the {len(quiet)} quiet round(s) of {len(rounds)}"
    return rounds, f"medians of {len(rounds)} rounds, NONE QUIET: the machine was busy"


def _round_list(rounds: list[dict], key: str, fmt: str = "{:.3f}") -> str:
    """Per-round values, quiet rounds marked with ``*``."""
    return " ".join(fmt.format(row[key]) + ("*" if row["quiet"] else "") for row in rounds)


def _report_efficiency(eff: dict, add: Callable) -> None:
    r = eff["rounds"]
    sel, note = _select(r)
    n = eff["images"]
    add(
        "1. pipeline efficiency",
        "",
        f"{n} JPEGs ({eff['mean_file_kib']:.0f} KiB mean), shards of {eff['shard_size']}, "
        f"batch {BATCH_SIZE}, 1 actor x {ACTOR_CPUS} CPUs; {note} (ratios: medians of the "
        "per-round ratios)",
    )
    add("  batched Detector (baseline)", f"{med(sel, 'batched', 'images_per_s'):.2f} img/s")
    add(
        "  ShardProcessor in-process",
        f"{med(sel, 'processor', 'images_per_s'):.2f} img/s",
        f"x{med(sel, 'ratio_processor'):.3f} of baseline (same shards, no Ray)",
    )
    add(
        "  pipeline steady (dispatch->last commit)",
        f"{med(sel, 'pipeline', 'steady_images_per_s'):.2f} img/s",
        f"x{med(sel, 'ratio_steady'):.3f} of baseline (target >= {TARGET_EFFICIENCY})",
    )
    add(
        "    per round (* = quiet)",
        "",
        f"ratios {_round_list(r, 'ratio_steady')}; other processes' load, cores "
        + _round_list(r, "foreign_cores_max", "{:.2f}"),
    )
    add(
        "  pipeline inter-commit",
        f"{med(sel, 'pipeline', 'intercommit_images_per_s'):.2f} img/s",
        f"x{med(sel, 'ratio_intercommit'):.3f} (first->last shard result: no cold first shard)",
    )
    add(
        "  projected, shards of 1000",
        f"x{med(sel, 'projected_ratio_1000'):.3f}",
        "baseline / (per-image + per-shard / 1000), from the split below",
    )
    add(
        "  CPU cost ratio (baseline/pipeline)",
        f"x{med(sel, 'ratio_cpu'):.3f}",
        f"CPU ms/img of all own processes: baseline {med(sel, 'cpu_ms_per_image', 'batched'):.0f},"
        f" pipeline window {med(sel, 'cpu_ms_per_image', 'pipeline_window'):.0f}",
    )
    first = r[0]["pipeline"]
    add(
        "  pipeline total wall, Ray cold",
        f"{first['total_images_per_s']:.2f} img/s",
        f"x{r[0]['ratio_total']:.3f}; run() {first['total_s']:.1f} s incl. Ray start (round 1"
        f"{'' if r[0]['quiet'] else ', not quiet'})",
    )
    warm = [row for row in r[1:] if row["quiet"]] or r[1:]
    if warm:
        add(
            "  pipeline total wall, Ray up",
            f"{med(warm, 'pipeline', 'total_images_per_s'):.2f} img/s",
            f"x{med(warm, 'ratio_total'):.3f}; run() {med(warm, 'pipeline', 'total_s'):.1f} s",
        )
    add(
        "  run record images_per_second",
        f"{med(sel, 'pipeline', 'record_images_per_s'):.2f}",
        "as the tool reports it (from run start: incl. planning and actor start)",
    )
    add("  phases of run(), s", "", "cold: " + _phases(first["phases"]))
    if warm:
        phases = {k: med(warm, "pipeline", "phases", k) for k in first["phases"]}
        add("", "", "Ray up: " + _phases(phases))
    per = 1000 / n
    b_dec, b_det = med(sel, "batched", "decode_s") * per, med(sel, "batched", "detect_s") * per
    add("  where the time goes, ms/img")
    add("    baseline", f"{b_dec + b_det:.1f}", f"decode {b_dec:.1f} + detect {b_det:.1f}, serial")
    for label, keys in (
        ("ShardProcessor", ("processor",)),
        ("pipeline actor", ("pipeline", "actor")),
    ):
        src = [_get(row, keys) for row in sel]

        def m(key: str, src=src) -> float:
            return median([s[key] for s in src]) * per

        add(
            f"    {label}, model busy",
            f"{m('detect_s'):.1f}",
            f"summed over shards (overlapping, 2 in flight): shard wall {m('shard_s'):.1f}, "
            f"queued for the model {m('queued_s'):.1f}, waiting for decodes {m('wait_s'):.1f}, "
            f"Parquet write {m('write_s'):.1f}; decode threads {m('decode_thread_s'):.1f}",
        )
    add(
        "    pipeline window",
        f"{1e3 * med(sel, 'pipeline', 'window_s') / n:.1f}",
        f"= model busy {med(sel, 'cost_ms', 'per_image'):.1f} per image + model idle "
        f"{med(sel, 'cost_ms', 'per_shard'):.1f} per shard",
    )
    add(
        "    driver-side steps, per run",
        f"{1e3 * med(sel, 'pipeline', 'driver', 'read_shard_s'):.0f} ms",
        f"read_shard (plan reads); log commits "
        f"{1e3 * med(sel, 'pipeline', 'driver', 'commit_s'):.0f} ms",
    )
    spans = [row["pipeline"]["marker_span_s"] for row in sel if row["pipeline"]["marker_span_s"]]
    add(
        "  first->last shard result, probes",
        f"{med(sel, 'pipeline', 'intercommit_s'):.2f} s",
        f"from the images files' mtimes: {median(spans):.2f} s" if spans else "",
    )


def _phases(phases: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in phases.items())


def _report_overhead(over: dict, add: Callable) -> None:
    r = over["rounds"]
    sel, note = _select(r)
    add(
        "2. orchestration overhead",
        "",
        f"{over['images']:,} 32x32 PNGs, shards of {over['shard_size']}, yolov4-tiny @32 "
        f"(random weights); {note}",
    )
    add(
        "  ShardProcessor in-process",
        f"{med(sel, 'processor', 'images_per_s'):.0f} img/s",
        f"{med(sel, 'processor_us_per_image'):.0f} us/img (the model's fixed cost per batch)",
    )
    add(
        "  pipeline steady",
        f"{med(sel, 'pipeline', 'steady_images_per_s'):.0f} img/s",
        f"{med(sel, 'shards_per_s_steady'):.2f} shards/s",
    )
    add(
        "  pipeline total wall",
        f"{med(sel, 'pipeline', 'total_images_per_s'):.0f} img/s",
        f"{med(sel, 'shards_per_s_total'):.2f} shards/s; run() "
        f"{med(sel, 'pipeline', 'total_s'):.1f} s",
    )
    add(
        "  driver overhead, steady",
        f"{med(sel, 'overhead_us_per_image_steady'):.0f} us/img",
        f"{med(sel, 'overhead_ms_per_shard_steady'):.1f} ms/shard: window - in-process time",
    )
    add(
        "    per round (* = quiet)",
        "",
        f"ms/shard {_round_list(r, 'overhead_ms_per_shard_steady', '{:.1f}')}; other "
        "processes' load, cores " + _round_list(r, "foreign_cores_max", "{:.2f}"),
    )
    add(
        "    model idle",
        f"{med(sel, 'model_idle_ms_per_shard'):.1f} ms/shard",
        "window - the model's busy time: waiting for input, Ray between shards",
    )
    add(
        "    extra CPU, all processes",
        f"{med(sel, 'overhead_cpu_ms_per_shard_steady'):.1f} ms/shard",
        "pipeline window CPU - in-process CPU (10 ms ticks: noisy)",
    )
    add(
        "  driver overhead, total wall",
        f"{med(sel, 'overhead_us_per_image_total'):.0f} us/img",
        "run() - in-process time: model check, plan, actor start, records",
    )
    add(
        "  phases of run(), s",
        "",
        _phases({k: med(sel, "pipeline", "phases", k) for k in r[0]["pipeline"]["phases"]}),
    )


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96, help="JPEGs for section 1")
    parser.add_argument("--shard-size", type=int, default=16, help="section 1 shard size")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds per section")
    parser.add_argument(
        "--quiet-rounds",
        type=int,
        default=2,
        help="add rounds (up to --max-rounds, within --budget-s) until this many were quiet",
    )
    parser.add_argument("--max-rounds", type=int, default=6)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=15.0,
        help="before each round, wait up to this many seconds for other processes to calm down",
    )
    parser.add_argument(
        "--budget-s", type=float, default=330.0, help="no extra round would end after this"
    )
    parser.add_argument("--tiny-images", type=int, default=2000, help="PNGs for section 2")
    parser.add_argument("--tiny-shard-size", type=int, default=50, help="section 2 shard size")
    parser.add_argument("--plan-objects", type=int, default=10_000_000)
    parser.add_argument("--plan-shard-size", type=int, default=1000)
    parser.add_argument("--skip-plan", action="store_true", help="skip section 3")
    parser.add_argument("--skip-overhead", action="store_true", help="skip section 2")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.15,
        help="a round is 'quiet' if other processes used fewer cores than this",
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active"),
        help="set OMP_WAIT_POLICY for this process and the Ray workers it starts (default: "
        "leave the environment alone)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--plan-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plan_child:
        plan_child(int(args.plan_child[0]), int(args.plan_child[1]), args.plan_child[2])
        return 0
    for name in ("images", "rounds", "shard_size", "tiny_images", "tiny_shard_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    os.environ.pop("RAY_ADDRESS", None)
    if args.omp_wait_policy:  # before torch loads; Ray workers inherit this environment
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    started = time.perf_counter()
    args.deadline = started + args.budget_s
    results: dict = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "args": json_args(args, exclude=("plan_child", "deadline")),
    }
    monitor = LoadMonitor().start()
    try:
        if not args.skip_plan:  # first, while this process is still small
            results["plan"] = section_plan(args, work)
        import ray
        import torch

        results["torch"], results["ray"] = torch.__version__, ray.__version__
        results["efficiency"] = section_efficiency(args, work, monitor)
        if not args.skip_overhead:
            results["overhead"] = section_overhead(args, work, monitor)
    finally:
        monitor.stop()
        shutdown_ray()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.perf_counter() - started
    results["table"] = report(results)
    print(f"\nbenchmark took {results['seconds']:.0f} s")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
