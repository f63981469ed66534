"""The pipeline against "the obvious Ray Data script" for the same job, side by side.

Customers compare yolo-batch with the straightforward Ray Data batch-inference script. This
benchmark runs both on the same JPEGs, on the same machine, on the same local Ray, in
alternation, and reports images/s of each and the ratio ours / peer.

**The peer** is written as a user following Ray Data's batch-inference guide would::

    ray.data.read_binary_files(folder, include_paths=True)
        .map_batches(PeerPredictor, batch_size=8, compute=ActorPoolStrategy(size=1), num_cpus=1)
        .write_parquet(out_dir)

``PeerPredictor`` (a callable class, one per actor) holds the same
:class:`~yolov4.detector.Detector` (``Detector.from_pretrained(model, input_size=...)``),
decodes each image's bytes with :func:`yolov4.imageio.decode_image`, runs
``detector.detect_batch`` on the batch and returns one row per image: path, width, height,
boxes, scores and class ids. (``compute=ActorPoolStrategy(size=n)`` is what
``concurrency=n`` meant before Ray 2.51 deprecated it.) It is configured fairly:

- **Torch threads**: the constructor calls ``torch.set_num_threads`` with the same count as
  our actor uses (``--cpus`` / ``--peer-actors``, so 2 by default). Ray sets
  ``OMP_NUM_THREADS`` in each worker to its ``num_cpus`` (1 here), which would leave the
  peer's model one thread where ours has two.
- **Logical CPUs**: the peer's actors ask for ``--cpus - 1`` CPUs between them. Ray Data's
  read and write tasks each ask for one CPU; were the actors to hold every CPU, the reads
  would never be scheduled and the job would hang (it does, measured). Physically both
  contenders run on the same cores: ours runs its decode threads, the peer its read tasks,
  beside the model's threads.
- **OpenMP wait policy**: our driver starts CPU actors with ``OMP_WAIT_POLICY=PASSIVE``
  (unless the environment sets it); the peer's actors get the same through their
  ``runtime_env`` (``--peer-plain-env`` leaves it out, as a plain script would).

**Ours** is ``pipeline.run.driver.run`` on the same local folder, with the driver's default actor
layout (one single-CPU actor per CPU) or ``--ours-actors N`` actors of ``--cpus / N`` CPUs, shards
of ``--shard-size`` (48: every actor gets work on a few hundred images), batch
``--batch-size``, the default shard size unless ``--shard-size``, output to a fresh temporary
folder.

**Timing.** One local Ray (``ray.init(num_cpus=--cpus)``) serves both contenders; our driver
joins it. Each job is timed from submission to its output on disk: the peer from building
the dataset to ``write_parquet`` returning, ours the whole ``driver.run`` (model check,
planning, actor start, all shards committed, run record written). Both therefore include
their actors' start and model load, every round. The first round of each contender is a
warm-up and is discarded (Ray's worker pool, the page cache, lazy imports). Then
``--rounds`` measured rounds, the order swapping each round (peer first, then ours first, and
so on). Between jobs the benchmark waits, untimed, until every CPU of the local Ray is
free again, so neither contender waits for the other's actors to go. Headline figures:
medians over rounds of images/s of each contender and of the per-round ratio ours / peer.

**Same job.** After the rounds, the detections of the last round of each contender are
compared image by image: same width and height, same number of detections, and boxes within
``BOX_TOLERANCE_PX`` and scores within ``SCORE_TOLERANCE`` once matched by class and box. If
our actor decodes JPEGs at a reduced scale (a faster path that changes detections slightly),
they are compared within the tolerance :mod:`yolov4.compare` states for it instead.

**Shared machines.** A thread samples ``/proc`` (see ``benchmarks.common.LoadMonitor``) and
records the cores used by processes outside this process tree during each job. A round is
*quiet* when that stays under ``--quiet-cores`` for both contenders; headline figures are
medians over quiet rounds when there are any, else over all rounds, flagged. Each round first
waits up to ``--wait-quiet`` seconds for the machine to quiet down, and extra rounds run (up to
``--max-rounds``, within ``--budget-s``) until ``--quiet-rounds`` were quiet.

Run from the repository root (about 3 minutes on a quiet 2-core machine with the defaults, 5 on
a busy one)::

    .venv/bin/python benchmarks/bench_peer.py
    .venv/bin/python benchmarks/bench_peer.py --images 200 --rounds 5 --json peer.json
    .venv/bin/python benchmarks/bench_peer.py --peer-actors 2      # two 1-thread peer actors

``RAY_ADDRESS`` is ignored (removed from the environment): both contenders run on a local Ray
started here.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    LoadMonitor,
    another_round,
    cpu_model,
    json_args,
    median,
    shutdown_ray,
    write_json,
)

DEFAULT_IMAGES = 288
DEFAULT_ROUNDS = 3
DEFAULT_MODEL = "yolov4-tiny"
DEFAULT_INPUT_SIZE = 416
DEFAULT_BATCH_SIZE = 8
DEFAULT_CPUS = 2
#: Our shards: small enough that each of our actors gets several of the benchmark's images.
DEFAULT_OURS_SHARD_SIZE = 48
#: Rounds run first and discarded (both contenders), to warm Ray, the page cache and imports.
WARMUP_ROUNDS = 1
#: Logical CPUs left to Ray Data's read and write tasks (each asks for 1 CPU by default).
PEER_TASK_CPUS = 1
#: Our driver's default for CPU actors; the peer's actors get the same unless --peer-plain-env.
OMP_WAIT_POLICY = "PASSIVE"
#: Same detections: boxes within this many pixels and scores within this, matched by class.
BOX_TOLERANCE_PX = 1e-3
SCORE_TOLERANCE = 1e-4
#: Longest untimed wait for the local Ray's CPUs to be free again between jobs.
IDLE_WAIT_S = 60.0
IDLE_POLL_S = 0.1
#: Image variations: up to this many pixels cropped off each side, JPEG quality in this range.
MAX_CROP_PX = 40
JPEG_QUALITY_MIN = 75
JPEG_QUALITY_MAX = 95
PEER = "peer"
OURS = "ours"
LABELS = {PEER: "Ray Data peer", OURS: "yolo-batch pipeline"}


# --------------------------------------------------------------------------- inputs
def make_images(folder: Path, count: int, photos: list[Path] | None = None) -> list[Path]:
    """``count`` distinct JPEGs from the two sample photos (bus.jpg 810x1080, zidane.jpg
    1280x720): alternately mirrored, a few pixels cropped off each side, re-encoded at varying
    quality; close to the photos' own sizes."""
    from PIL import Image, ImageOps

    from yolov4.pretrained import fetch_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.open(p).convert("RGB") for p in (photos or fetch_sample_images())]
    paths = []
    quality_span = JPEG_QUALITY_MAX - JPEG_QUALITY_MIN + 1
    for i in range(count):
        photo = sources[i % len(sources)]
        variant = i // len(sources)
        if variant % 2:
            photo = ImageOps.mirror(photo)
        left, top, right, bottom = ((variant * k) % (MAX_CROP_PX + 1) for k in (7, 13, 5, 11))
        image = photo.crop((left, top, photo.width - right, photo.height - bottom))
        path = folder / f"img-{i:05d}.jpg"
        image.save(path, quality=JPEG_QUALITY_MIN + (variant * 5) % quality_span)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- the peer
class PeerPredictor:
    """The peer's ``map_batches`` class: one per actor, holding one detector.

    ``torch_threads``: set here, because Ray sets ``OMP_NUM_THREADS`` to the actor's
    ``num_cpus`` (see the module docstring); ``None`` leaves Ray's setting, as the script is
    usually written.
    """

    def __init__(self, model: str, input_size: int, torch_threads: int | None) -> None:
        import torch

        from yolov4.detector import Detector
        from yolov4.imageio import decode_image

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.torch = torch
        self.decode_image = decode_image
        self.detector = Detector.from_pretrained(model, input_size=input_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, object]:
        torch = self.torch
        images = [self.decode_image(data) for data in batch["bytes"]]
        tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images]
        found = self.detector.detect_batch(tensors).to("cpu")
        index = found.image_index.numpy()
        boxes = found.boxes.to(torch.float32).numpy()
        scores = found.scores.to(torch.float32).numpy()
        class_ids = found.class_ids.numpy().astype(np.int64)
        rows = [index == k for k in range(len(images))]
        return {
            "path": batch["path"],
            "width": np.array([image.shape[1] for image in images], dtype=np.int32),
            "height": np.array([image.shape[0] for image in images], dtype=np.int32),
            "boxes": [boxes[r] for r in rows],
            "scores": [scores[r] for r in rows],
            "class_ids": [class_ids[r] for r in rows],
        }


@dataclass(frozen=True)
class PeerSettings:
    actors: int
    actor_cpus: float
    torch_threads: int | None
    plain_env: bool = False


def peer_settings(
    cpus: int, actors: int = 1, *, plain_env: bool = False, as_written: bool = False
) -> PeerSettings:
    """The peer's actor pool on ``cpus`` logical CPUs (see the module docstring).

    ``as_written``: the script as the guide writes it, with Ray's thread and OpenMP settings
    (one torch thread per actor CPU, OpenMP threads spinning)."""
    if cpus <= PEER_TASK_CPUS:
        raise ValueError(f"the peer needs more than {PEER_TASK_CPUS} CPU(s), got {cpus}")
    return PeerSettings(
        actors=actors,
        actor_cpus=(cpus - PEER_TASK_CPUS) / actors,
        torch_threads=None if as_written else max(1, cpus // actors),
        plain_env=plain_env or as_written,
    )


def configure_ray_data() -> None:
    """No progress bars or per-execution banners in the benchmark's output."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def run_peer(
    folder: Path,
    output: Path,
    *,
    model: str,
    input_size: int,
    batch_size: int,
    settings: PeerSettings,
) -> dict:
    """The Ray Data job, timed from building the dataset to ``write_parquet`` returning."""
    import ray
    import ray.data

    module = sys.modules[__name__]
    if __name__ != "__main__":  # loaded by path (the tests): workers could not import it
        ray.cloudpickle.register_pickle_by_value(module)
    remote_args: dict = {"num_cpus": settings.actor_cpus}
    if not settings.plain_env and "OMP_WAIT_POLICY" not in os.environ:
        remote_args["runtime_env"] = {"env_vars": {"OMP_WAIT_POLICY": OMP_WAIT_POLICY}}
    started = time.perf_counter()
    dataset = ray.data.read_binary_files(str(folder), include_paths=True).map_batches(
        PeerPredictor,
        fn_constructor_kwargs={
            "model": model,
            "input_size": input_size,
            "torch_threads": settings.torch_threads,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=settings.actors),
        **remote_args,
    )
    dataset.write_parquet(str(output))
    ended = time.perf_counter()
    return {"t0": started, "t1": ended, "seconds": ended - started}


# --------------------------------------------------------------------------- ours
def run_ours(
    folder: Path,
    output: Path,
    *,
    model: str,
    input_size: int,
    batch_size: int,
    cpus: int,
    shard_size: int | None = None,
    actors: int | None = None,
) -> dict:
    """``pipeline.run.driver.run`` timed end to end: the driver's default actor layout, or
    ``actors`` actors sharing the ``cpus``."""
    from pipeline.run import driver
    from pipeline.run.config import ModelChoice, RunConfig
    from pipeline.worker.model_spec import DetectorOptions

    extra = {"shard_size": shard_size} if shard_size else {}
    config = RunConfig(
        source=str(folder),
        output=str(output),
        model=ModelChoice(model),
        detector=DetectorOptions(input_size=input_size),
        batch_size=batch_size,
        actors=actors,
        cpus_per_actor=cpus / actors if actors else None,
        gpus_per_actor=0,  # the CPU, as the peer (Ray Data) gets
        **extra,
    )
    started = time.perf_counter()
    outcome = driver.run(config, reporter_stream=io.StringIO(), bar=False)
    ended = time.perf_counter()
    p = outcome.progress
    if outcome.exit_code != 0 or p.images_error or p.images_done != p.images_total:
        raise RuntimeError(
            f"pipeline run {outcome.run_id} ended with code {outcome.exit_code}: "
            f"{p.images_done}/{p.images_total} images, {p.images_error} errors"
        )
    return {"t0": started, "t1": ended, "seconds": ended - started, "shards": p.shards_total}


def wait_for_idle_ray(cpus: float, timeout: float = IDLE_WAIT_S) -> float:
    """Wait until every CPU of the local Ray is free (the last job's actors gone)."""
    import ray

    started = time.perf_counter()
    while ray.available_resources().get("CPU", 0.0) < cpus:
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"Ray CPUs still held {timeout:.0f} s after the last job")
        time.sleep(IDLE_POLL_S)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ImageResult:
    """One image's detections: ``boxes`` ``[n, 4]`` (x_min, y_min, x_max, y_max) in pixels."""

    width: int
    height: int
    class_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


def read_peer(output: Path) -> dict[str, ImageResult]:
    """The peer's Parquet rows, by file name."""
    import pyarrow.parquet as pq
    import ray.data  # noqa: F401  (registers Ray's tensor extension types with Arrow)

    table = pq.read_table(str(output))
    out = {}
    for row in table.to_pylist():
        out[Path(row["path"]).name] = ImageResult(
            width=int(row["width"]),
            height=int(row["height"]),
            class_ids=np.asarray(row["class_ids"], dtype=np.int64).reshape(-1),
            scores=np.asarray(row["scores"], dtype=np.float32).reshape(-1),
            boxes=np.asarray(row["boxes"], dtype=np.float32).reshape(-1, 4),
        )
    return out


def read_ours(output: Path) -> dict[str, ImageResult]:
    """The pipeline's committed ``images`` and ``detections`` tables, by file name."""
    from pipeline.results.query import query

    images = query(str(output), "SELECT image_uri, width, height FROM images").to_pylist()
    detections = query(
        str(output),
        "SELECT image_uri, class_id, score, x_min, y_min, x_max, y_max FROM detections "
        "ORDER BY image_uri",
    ).to_pydict()
    uris = np.asarray(detections["image_uri"], dtype=object)
    class_ids = np.asarray(detections["class_id"], dtype=np.int64)
    scores = np.asarray(detections["score"], dtype=np.float32)
    boxes = np.stack(
        [np.asarray(detections[k], dtype=np.float32) for k in ("x_min", "y_min", "x_max", "y_max")],
        axis=1,
    ).reshape(-1, 4)
    out = {}
    for row in images:
        mine = uris == row["image_uri"]
        out[Path(row["image_uri"]).name] = ImageResult(
            width=int(row["width"]),
            height=int(row["height"]),
            class_ids=class_ids[mine],
            scores=scores[mine],
            boxes=boxes[mine],
        )
    return out


def _matched_differences(a: ImageResult, b: ImageResult) -> tuple[float, float, int]:
    """Greedy match of ``a``'s detections to ``b``'s of the same class by closest box:
    ``(largest box difference in px, largest score difference, unmatched count)``."""
    used = np.zeros(len(b.scores), dtype=bool)
    box_diff = score_diff = 0.0
    unmatched = 0
    for i in np.argsort(-a.scores, kind="stable"):
        candidates = np.flatnonzero((b.class_ids == a.class_ids[i]) & ~used)
        if not len(candidates):
            unmatched += 1
            continue
        diffs = np.abs(b.boxes[candidates] - a.boxes[i]).max(axis=1)
        j = candidates[int(np.argmin(diffs))]
        used[j] = True
        box_diff = max(box_diff, float(diffs.min()))
        score_diff = max(score_diff, float(abs(b.scores[j] - a.scores[i])))
    return box_diff, score_diff, unmatched + int((~used).sum())


def _detections(result: ImageResult) -> list:
    from yolov4.detector import Detection

    return [
        Detection(*map(float, box), float(score), int(cls), str(int(cls)))
        for box, score, cls in zip(result.boxes, result.scores, result.class_ids)
    ]


def reduced_decode_tolerance():
    """The tolerance :mod:`yolov4.compare` states for reduced-scale JPEG decoding (or, where it
    states none, the one for fp16)."""
    from yolov4 import compare

    return getattr(compare, "DRAFT_TOLERANCE", None) or compare.PRECISION_TOLERANCES["fp16"]


def compare_results(ours: dict[str, ImageResult], peer: dict[str, ImageResult]) -> dict:
    """Image by image: sizes, detection counts, and boxes/scores once matched.

    ``verdict``: ``identical`` (every image within ``BOX_TOLERANCE_PX`` / ``SCORE_TOLERANCE``),
    ``within tolerance`` (every image within :func:`reduced_decode_tolerance`) or
    ``DIFFERENT``; ``differing`` lists up to a few images that are not identical, with why.
    """
    from yolov4.compare import mismatches

    tolerance = reduced_decode_tolerance()
    names = sorted(set(ours) | set(peer))
    missing = [n for n in names if n not in ours or n not in peer]
    identical = within = same_count = 0
    max_box = max_score = 0.0
    differing: list[str] = []
    for name in names:
        if name in missing:
            differing.append(f"{name}: only in {'ours' if name in ours else 'the peer'}")
            continue
        a, b = ours[name], peer[name]
        sizes_equal = (a.width, a.height) == (b.width, b.height)
        box_diff, score_diff, unmatched = _matched_differences(a, b)
        same_count += len(a.scores) == len(b.scores)
        if len(a.scores) == len(b.scores) and not unmatched:
            max_box, max_score = max(max_box, box_diff), max(max_score, score_diff)
        exact = (
            sizes_equal
            and len(a.scores) == len(b.scores)
            and not unmatched
            and box_diff <= BOX_TOLERANCE_PX
            and score_diff <= SCORE_TOLERANCE
        )
        problems = [] if exact else mismatches(_detections(a), _detections(b), tolerance)
        if not sizes_equal:
            problems.insert(0, f"size {a.width}x{a.height} vs {b.width}x{b.height}")
        identical += exact
        within += not problems
        if not exact:
            differing.append(
                f"{name}: {len(a.scores)} vs {len(b.scores)} detections, box diff "
                f"{box_diff:.4f} px, score diff {score_diff:.6f}"
                + (f"; {'; '.join(problems[:2])}" if problems else "")
            )
    if identical == len(names):
        verdict = "identical"
    elif within == len(names) - len(missing) and not missing:
        verdict = "within tolerance"
    else:
        verdict = "DIFFERENT"
    return {
        "verdict": verdict,
        "images": len(names),
        "missing": len(missing),
        "identical_images": identical,
        "within_tolerance_images": within,
        "same_count_images": same_count,
        "max_box_diff_px": max_box,
        "max_score_diff": max_score,
        "tolerance": {"score_tol": tolerance.score_tol, "min_iou": tolerance.min_iou},
        "differing": differing[:10],
    }


# --------------------------------------------------------------------------- rounds
def run_rounds(args, folder: Path, work: Path, monitor: LoadMonitor) -> list[dict]:
    settings = peer_settings(
        args.cpus,
        args.peer_actors,
        plain_env=args.peer_plain_env,
        as_written=args.peer_as_written,
    )
    common = dict(model=args.model, input_size=args.input_size, batch_size=args.batch_size)
    rounds: list[dict] = []
    last_round_s = 0.0
    while len(rounds) < WARMUP_ROUNDS or another_round(args, rounds, last_round_s):
        index = len(rounds)
        warmup = index < WARMUP_ROUNDS
        waited = (
            0.0 if warmup else monitor.wait_quiet(args.quiet_cores, args.wait_quiet, float("inf"))
        )
        round_started = time.perf_counter()
        order = [PEER, OURS] if index % 2 == 0 else [OURS, PEER]
        row: dict = {"round": index, "warmup": warmup, "order": order, "waited_s": waited}
        for name in order:
            wait_for_idle_ray(args.cpus)
            output = work / f"{name}-out-{index}"
            if name == PEER:
                result = run_peer(folder, output, settings=settings, **common)
            else:
                result = run_ours(
                    folder,
                    output,
                    cpus=args.cpus,
                    shard_size=args.shard_size,
                    actors=args.ours_actors,
                    **common,
                )
            monitor.wait_past(result["t1"])
            load = monitor.interval(result["t0"], result["t1"])
            result.update(
                images=args.images,
                images_per_s=args.images / result["seconds"],
                foreign_cores=load["foreign_cores"],
                cpu_ms_per_image=1e3 * load["own_cpu_s"] / args.images,
                output=str(output),
            )
            row[name] = result
            print(
                f"  round {index + 1}{' (warm-up)' if warmup else ''}: {LABELS[name]:<20} "
                f"{result['images_per_s']:6.2f} img/s ({result['seconds']:5.1f} s), other "
                f"processes {result['foreign_cores']:.2f} cores",
                flush=True,
            )
        row["ratio"] = row[OURS]["images_per_s"] / row[PEER]["images_per_s"]
        row["foreign_cores_max"] = max(row[PEER]["foreign_cores"], row[OURS]["foreign_cores"])
        row["quiet"] = row["foreign_cores_max"] < args.quiet_cores
        # Keep only the latest outputs of each contender, for the comparison.
        for earlier in rounds:
            for name in (PEER, OURS):
                shutil.rmtree(earlier[name]["output"], ignore_errors=True)
        rounds.append(row)
        last_round_s = time.perf_counter() - round_started
    return rounds


def summarize(rounds: list[dict]) -> dict:
    measured = [r for r in rounds if not r["warmup"]]
    quiet = [r for r in measured if r["quiet"]]
    selected = quiet or measured
    if quiet:
        note = f"medians of the {len(quiet)} quiet round(s) of {len(measured)}"
    else:
        note = f"medians of {len(measured)} rounds, NONE QUIET: the machine was busy"
    out: dict = {"note": note, "rounds_used": [r["round"] for r in selected]}
    for name in (PEER, OURS):
        out[name] = {
            key: median([r[name][key] for r in selected])
            for key in ("images_per_s", "seconds", "cpu_ms_per_image", "foreign_cores")
        }
    out["ratio"] = median([r["ratio"] for r in selected])
    out["ratio_of_medians"] = out[OURS]["images_per_s"] / out[PEER]["images_per_s"]
    out["ratio_spread"] = (
        min(r["ratio"] for r in selected),
        max(r["ratio"] for r in selected),
    )
    return out


def _layout(actors: int | None) -> str:
    return f"{actors} actor(s)" if actors else "one actor per CPU"


def report(results: dict) -> None:
    summary, same = results["summary"], results["comparison"]
    args = results["args"]
    settings = results["peer_settings"]
    print()
    print(
        f"CPU: {results['cpu']} ({results['machine_cpus']} CPUs); python {results['python']}, "
        f"torch {results['torch']}, ray {results['ray']}, pandas {results['pandas']}"
    )
    print(
        f"{args['images']} JPEGs ({results['mean_file_kib']:.0f} KiB mean), {args['model']} at "
        f"{args['input_size']}, batch {args['batch_size']}, Ray with {args['cpus']} CPUs; "
        f"{summary['note']}"
    )
    print(
        f"peer: {settings['actors']} actor(s) x {settings['actor_cpus']:g} CPU(s), "
        f"{settings['torch_threads'] or 'Ray-set'} torch thread(s) each, OMP_WAIT_POLICY "
        f"{'as the environment has it' if settings['plain_env'] else OMP_WAIT_POLICY}; ours: "
        f"{_layout(args.get('ours_actors'))} sharing {args['cpus']} CPUs, "
        f"shard size {args['shard_size'] or 'default'}"
    )
    header = f"{'contender':<22}{'img/s':>8}{'s/job':>8}{'CPU ms/img':>12}{'other load':>12}"
    print(header)
    print("-" * len(header))
    for name in (PEER, OURS):
        s = summary[name]
        print(
            f"{LABELS[name]:<22}{s['images_per_s']:>8.2f}{s['seconds']:>8.1f}"
            f"{s['cpu_ms_per_image']:>12.0f}{s['foreign_cores']:>12.2f}"
        )
    low, high = summary["ratio_spread"]
    per_round = " ".join(
        f"{r['ratio']:.3f}{'*' if r['quiet'] else ''}" for r in results["rounds"] if not r["warmup"]
    )
    print(
        f"ratio ours / peer: x{summary['ratio']:.3f} (median of per-round ratios; "
        f"{low:.3f}-{high:.3f}; ratio of medians x{summary['ratio_of_medians']:.3f})"
    )
    print(f"  per round (* = quiet): {per_round}")
    print(
        f"same detections: {same['verdict']}: {same['identical_images']}/{same['images']} images "
        f"identical, {same['same_count_images']} with equal counts, max box diff "
        f"{same['max_box_diff_px']:.4f} px, max score diff {same['max_score_diff']:.6f}"
    )
    for line in same["differing"][:5]:
        print(f"  {line}")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="JPEGs to generate")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="measured rounds")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pretrained model name")
    parser.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--cpus", type=int, default=DEFAULT_CPUS, help="CPUs of the local Ray")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_OURS_SHARD_SIZE,
        help=f"our shard size ({DEFAULT_OURS_SHARD_SIZE})",
    )
    parser.add_argument(
        "--ours-actors",
        type=int,
        help="our actors, sharing --cpus (default: the driver's, one per CPU)",
    )
    parser.add_argument(
        "--peer-actors",
        type=int,
        default=1,
        help="actors of the peer's pool (torch threads each: --cpus / this)",
    )
    parser.add_argument(
        "--peer-as-written",
        action="store_true",
        help="the peer as the guide writes it: Ray's torch threads (1 per actor CPU) and OpenMP "
        "settings",
    )
    parser.add_argument(
        "--peer-plain-env",
        action="store_true",
        help=f"do not give the peer's actors OMP_WAIT_POLICY={OMP_WAIT_POLICY} (ours get it)",
    )
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.15,
        help="a round is quiet if other processes used fewer cores than this",
    )
    parser.add_argument("--quiet-rounds", type=int, default=2, help="extra rounds until this many")
    parser.add_argument("--max-rounds", type=int, default=5, help="measured rounds at most")
    parser.add_argument(
        "--wait-quiet", type=float, default=10.0, help="seconds to wait for quiet before a round"
    )
    parser.add_argument(
        "--budget-s", type=float, default=270.0, help="no extra round would end after this"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    for name in ("images", "rounds", "batch_size", "peer_actors"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.cpus <= PEER_TASK_CPUS:
        parser.error(f"--cpus must be more than {PEER_TASK_CPUS}: the peer's tasks need one")
    args.max_rounds = max(args.max_rounds, args.rounds)

    os.environ.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    args.deadline = started + args.budget_s
    work = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    monitor = LoadMonitor().start()
    try:
        import pandas
        import ray
        import torch

        from pipeline.worker.model_spec import resolve_model

        resolve_model(model=args.model)  # the weights in the cache before anything is timed
        folder = work / "jpegs"
        paths = make_images(folder, args.images)
        mean_kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(f"{len(paths)} JPEGs ({mean_kib:.0f} KiB mean) in a temporary folder", flush=True)
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
        configure_ray_data()
        rounds = run_rounds(args, folder, work, monitor)
        last = rounds[-1]
        comparison = compare_results(
            read_ours(Path(last[OURS]["output"])), read_peer(Path(last[PEER]["output"]))
        )
        settings = peer_settings(
            args.cpus,
            args.peer_actors,
            plain_env=args.peer_plain_env,
            as_written=args.peer_as_written,
        )
        results = {
            "cpu": cpu_model(),
            "machine_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "pandas": pandas.__version__,
            "args": json_args(args, exclude=("deadline",)),
            "peer_settings": asdict(settings),
            "mean_file_kib": mean_kib,
            "rounds": rounds,
            "summary": summarize(rounds),
            "comparison": comparison,
        }
    finally:
        monitor.stop()
        shutdown_ray()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.perf_counter() - started
    report(results)
    print(f"\nbenchmark took {results['seconds']:.0f} s")
    if args.json:
        write_json(args.json, results)
    return 0 if comparison["verdict"] != "DIFFERENT" else 1


if __name__ == "__main__":
    sys.exit(main())
