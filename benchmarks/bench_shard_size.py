"""Automatic shard sizing of ``yolo-batch run`` against hand-picked ``--shard-size`` values.

Without ``--shard-size`` the run sizes its shards from the objects listed so far and the
actor count (:mod:`pipeline.run.shard_sizing`). This script runs the CLI exactly as a user
would, as a subprocess (``python -m pipeline.cli -v run --source DIR --output OUT
--no-progress``, each run into a fresh output folder; ``-v`` only adds the INFO log lines the
script reads the actors' ready times from), on one folder of ``--images`` JPEGs made from the
two sample photos, with the default model (pretrained yolov4-tiny, from the weights cache:
``$YOLO_BATCH_CACHE`` or ``~/.cache/yolo-batch``, fetched once before any timing).

1. **Default sizing against hand-picked sizes**: the default flags against the same command
   with ``--shard-size N`` for each N of ``--sizes``, alternating within each of ``--rounds``
   rounds (forward order in even rounds, reversed in odd ones, rotated by the round pair).
   Reported per contender: median wall time and images/s, shard count and sizes,
   ``tail_seconds`` of ``OUT/_status.json`` (from the moment the first actor ran out of
   shards to the end of dispatch) and the dispatch window (first actor ready, from the log,
   to the last commit of shards in the ``images`` table's log, its file's mtime; the run's
   closing compaction, an ``OPTIMIZE`` commit, is left out). The headline is
   (default's speed) / (best hand-picked size's speed) = best median wall time / default's
   median wall time (target >= 0.9); the median of the same ratio within each round and the
   ratio over dispatch windows alone (no Ray start, no model load) are printed beside it.
2. **Four actors**: ``--actors 4`` (default sizing) and ``--actors 4 --shard-size
   IMAGES/4`` (one shard per actor, the worst balanced case), alternated over the rounds:
   wall time, shard count, ``tail_seconds`` and the tail as a fraction of the dispatch
   window, and how many actors became ready (``--actors 4`` on a 2-CPU machine starts only
   two one-CPU actors; ``--four-cpus-per-actor 0.5`` fits four).

Every run's ``_status.json``, ``run.json`` (``OUT/_runs/*/run.json``) and plan shard sizes go
into ``--json``. A thread samples ``/proc`` (:class:`benchmarks.common.LoadMonitor`): each run
records the cores other processes used meanwhile, and before each run the script waits up to
``--wait-quiet`` seconds for them to quiet down. On a shared machine compare only figures of
one invocation (medians and ratios), never absolute times across invocations.

Run from the repository root (about 15 minutes on 2 busy cores with the defaults)::

    .venv/bin/python benchmarks/bench_shard_size.py
    .venv/bin/python benchmarks/bench_shard_size.py --json shard-size.json
    .venv/bin/python benchmarks/bench_shard_size.py --skip-sizes --four-cpus-per-actor 0.5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_pipeline import make_jpegs  # noqa: E402
from benchmarks.common import (  # noqa: E402
    LoadMonitor,
    cpu_model,
    json_args,
    median,
    rate,
    write_json,
)

TARGET_RATIO = 0.9
DEFAULT = "default"
#: The fleet's INFO line when an actor has loaded the model (``-v``), with its log time.
READY_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO pipeline\.run\.fleet: actor (\d+) ready"
)


class RunFailedError(RuntimeError):
    def __init__(self, command: list[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"exit code {returncode}: {' '.join(command)}")
        self.command, self.returncode, self.stdout, self.stderr = (
            command,
            returncode,
            stdout,
            stderr,
        )

    @property
    def before_run(self) -> bool:
        """The CLI stopped before the run began (no log line of ``pipeline.run``): an import
        error, say, while the code is being changed."""
        return "INFO pipeline.run." not in self.stderr


# --------------------------------------------------------------------------- one run
def _log_time(match: re.Match) -> float:
    """The epoch seconds of a log line's ``asctime`` (the child's local time, as here)."""
    stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    return stamp.timestamp() + int(match.group(2)) / 1000


def _plan_sizes(run_dir: Path) -> list[int]:
    import pyarrow.parquet as pq

    return [pq.ParquetFile(path).metadata.num_rows for path in sorted((run_dir / "plan").glob("*"))]


def _commit_times(log: Path) -> list[float]:
    """mtimes of the Delta log's commits of shards: not the compaction a succeeded run ends
    with (``OPTIMIZE``), which comes after dispatch."""
    times = []
    for path in log.glob("*.json"):
        actions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        if info.get("operation") != "OPTIMIZE":
            times.append(path.stat().st_mtime)
    return times


def sizes_text(sizes: list[int]) -> str:
    """Shard sizes in plan order, runs of one size collapsed: ``16x2, 24, 40x15``."""
    parts: list[str] = []
    for size in sizes:
        if parts and parts[-1][0] == size:
            parts[-1][1] += 1
        else:
            parts.append([size, 1])
    return ", ".join(f"{s}x{n}" if n > 1 else f"{s}" for s, n in parts)


def cli_run(source: Path, output: Path, extra: list[str], monitor: LoadMonitor, timeout: float):
    """One ``yolo-batch run`` in a subprocess; its timings and records."""
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "-v",
        "run",
        "--source",
        str(source),
        "--output",
        str(output),
        "--no-progress",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    wall0, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    t1 = time.perf_counter()
    if proc.returncode != 0:
        raise RunFailedError(command, proc.returncode, proc.stdout, proc.stderr)
    monitor.wait_past(t1)
    status = json.loads((output / "_status.json").read_text())
    (run_dir,) = (output / "_runs").iterdir()
    record = json.loads((run_dir / "run.json").read_text())
    ready = sorted(_log_time(m) for m in map(READY_LINE.match, proc.stderr.splitlines()) if m)
    commits = _commit_times(output / "images" / "_delta_log")
    sizes = _plan_sizes(run_dir)
    images = status["images_done"]
    wall = t1 - t0
    dispatch = max(commits) - ready[0] if ready and commits else float("nan")
    tail = status.get("tail_seconds")
    if (
        status.get("state") != "succeeded"
        or status["images_error"]
        or images != status["images_total"]
        or images != sum(sizes)
    ):
        raise RuntimeError(f"run did not process every image: {status}")
    return {
        "command": command[2:],
        "seconds": wall,
        "images": images,
        "images_per_s": rate(images, wall),
        "shards": status["shards_total"],
        "shard_sizes": sizes,
        "tail_s": tail,
        "dispatch_s": dispatch,
        "dispatch_images_per_s": rate(images, dispatch),
        "tail_fraction": tail / dispatch if tail is not None and dispatch > 0 else None,
        "startup_s": ready[0] - wall0 if ready else None,
        "actors_ready": len(ready),
        "load": monitor.interval(t0, t1),
        "status": status,
        "run_record": record,
        # The CLI's own log lines (Ray's worker output left out), for a second look.
        "log": [line for line in proc.stderr.splitlines() if " pipeline." in line][-40:],
    }


def run_with_retry(args, source, output, extra, monitor, failures: list) -> dict | None:
    """:func:`cli_run`; a failure is printed verbatim and recorded. One that happened before
    the run began (an import error while the code is being changed) is tried again once,
    after ``--retry-wait`` seconds."""
    for attempt in (1, 2):
        shutil.rmtree(output, ignore_errors=True)
        try:
            return cli_run(source, output, extra, monitor, args.run_timeout)
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            stderr = getattr(exc, "stderr", None) or ""
            stderr = stderr if isinstance(stderr, str) else stderr.decode(errors="replace")
            print(f"    FAILED ({exc}); stderr:\n{stderr[-6000:]}", flush=True)
            failures.append(
                {"extra": extra, "attempt": attempt, "error": str(exc), "stderr": stderr}
            )
            retry = isinstance(exc, RunFailedError) and exc.before_run and attempt == 1
            if not retry:
                return None
            print(f"    retrying once in {args.retry_wait:.0f} s", flush=True)
            time.sleep(args.retry_wait)
        finally:
            if not args.keep:
                shutil.rmtree(output, ignore_errors=True)
    return None


# --------------------------------------------------------------------------- sections
def contender_args(name: str, base: list[str]) -> list[str]:
    return list(base) if name == DEFAULT else [*base, "--shard-size", name.split("=")[1]]


def round_order(names: list[str], r: int) -> list[str]:
    """Forward in even rounds, reversed in odd ones, rotated by one every two rounds."""
    shift = (r // 2) % len(names)
    order = names[shift:] + names[:shift]
    return order if r % 2 == 0 else order[::-1]


def alternate(args, names, base, source, work, monitor, tag, failures) -> list[dict]:
    rows = []
    for r in range(args.rounds):
        row: dict = {"round": r + 1, "order": round_order(names, r), "runs": {}}
        for name in row["order"]:
            waited = monitor.wait_quiet(args.quiet_cores, args.wait_quiet, float("inf"))
            extra = contender_args(name, base)
            result = run_with_retry(
                args, source, work / f"out-{tag}-{r}-{name}", extra, monitor, failures
            )
            if result is None:
                continue
            result["waited_s"] = waited
            row["runs"][name] = result
            print(
                f"    round {r + 1}: {name:<16s} {result['seconds']:6.1f} s "
                f"({result['images_per_s']:5.1f} img/s), {result['shards']:3d} shards, "
                f"tail {_num(result['tail_s'], '.2f')} s, dispatch {result['dispatch_s']:.1f} s, "
                f"{result['actors_ready']} actors ready, other processes "
                f"{result['load']['foreign_cores']:.2f} cores",
                flush=True,
            )
        rows.append(row)
    return rows


def summarize(rows: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        runs = [row["runs"][name] for row in rows if name in row["runs"]]
        if not runs:
            continue
        tails = [r["tail_s"] for r in runs if r["tail_s"] is not None]
        fractions = [r["tail_fraction"] for r in runs if r["tail_fraction"] is not None]
        out[name] = {
            "runs": len(runs),
            "seconds": median([r["seconds"] for r in runs]),
            "images_per_s": median([r["images_per_s"] for r in runs]),
            "dispatch_s": median([r["dispatch_s"] for r in runs]),
            "startup_s": median([r["startup_s"] for r in runs if r["startup_s"] is not None]),
            "tail_s": median(tails) if tails else None,
            "tail_fraction": median(fractions) if fractions else None,
            "shards": sorted(Counter(r["shards"] for r in runs)),
            "shard_sizes": sizes_text(runs[0]["shard_sizes"]),
            "actors_ready": sorted(Counter(r["actors_ready"] for r in runs)),
            "foreign_cores": median([r["load"]["foreign_cores"] for r in runs]),
            "per_round_s": [r["seconds"] for r in runs],
        }
    return out


def section_sizes(args, source, work, monitor, failures) -> dict:
    names = [DEFAULT, *(f"--shard-size={n}" for n in args.sizes)]
    print(f"[1] {args.images} images, default sizing against --shard-size {args.sizes}")
    rows = alternate(args, names, [], source, work, monitor, "sizes", failures)
    summary = summarize(rows, names)
    result: dict = {"rounds": rows, "summary": summary}
    picked = [n for n in names[1:] if n in summary]
    if DEFAULT in summary and picked:
        best = min(picked, key=lambda n: summary[n]["seconds"])
        per_round = [
            row["runs"][best]["seconds"] / row["runs"][DEFAULT]["seconds"]
            for row in rows
            if best in row["runs"] and DEFAULT in row["runs"]
        ]
        result.update(
            best=best,
            ratio=summary[best]["seconds"] / summary[DEFAULT]["seconds"],
            ratio_per_round_median=median(per_round),
            ratio_per_round=per_round,
            ratio_dispatch=summary[best]["dispatch_s"] / summary[DEFAULT]["dispatch_s"],
        )
    return result


def section_four(args, source, work, monitor, failures) -> dict:
    base = ["--actors", str(args.four_actors)]
    if args.four_cpus_per_actor is not None:
        base += ["--cpus-per-actor", str(args.four_cpus_per_actor)]
    balanced = max(1, args.images // args.four_actors)
    names = [DEFAULT, f"--shard-size={balanced}"]
    print(f"[2] {' '.join(base)}: default sizing against --shard-size {balanced}")
    rows = alternate(args, names, base, source, work, monitor, "four", failures)
    return {
        "flags": base,
        "balanced_size": balanced,
        "rounds": rows,
        "summary": summarize(rows, names),
    }


# --------------------------------------------------------------------------- report
def _num(value, fmt: str, suffix: str = "") -> str:
    return "-" if value is None or value != value else f"{format(value, fmt)}{suffix}"


def _table(summary: dict, title: str) -> list[str]:
    lines = [
        f"{title}",
        "| contender | wall s (median) | img/s | shards | shard sizes (plan order) | dispatch s"
        " | tail s | tail / dispatch | actors ready | startup s | other cores | wall s per round |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['seconds']:.1f} | {s['images_per_s']:.1f} | "
            f"{'/'.join(map(str, s['shards']))} | {s['shard_sizes']} | {s['dispatch_s']:.1f} | "
            f"{_num(s['tail_s'], '.2f')} | {_num(s['tail_fraction'], '.0%')} | "
            f"{'/'.join(map(str, s['actors_ready']))} | {_num(s['startup_s'], '.1f')} | "
            f"{s['foreign_cores']:.2f} | {', '.join(f'{x:.1f}' for x in s['per_round_s'])} |"
        )
    return lines


def report(results: dict) -> str:
    lines = [
        f"CPU: {results['cpu']} ({results['cpus']} cores), {results['date']}, "
        f"python {results['python']}; {results['images']} images, yolov4-tiny (default model), "
        f"{results['args']['rounds']} rounds",
        "",
    ]
    sizes = results.get("sizes")
    if sizes:
        lines += _table(sizes["summary"], "1. default sizing against hand-picked --shard-size")
        if "ratio" in sizes:
            ok = "meets" if sizes["ratio"] >= TARGET_RATIO else "BELOW"
            lines += [
                "",
                f"default speed / best hand-picked ({sizes['best']}) speed: "
                f"{sizes['ratio']:.2f} (medians of wall time; {ok} the {TARGET_RATIO} target); "
                f"per-round median {sizes['ratio_per_round_median']:.2f} "
                f"({', '.join(f'{x:.2f}' for x in sizes['ratio_per_round'])}); "
                f"dispatch windows only {sizes['ratio_dispatch']:.2f}",
            ]
        lines.append("")
    four = results.get("four")
    if four:
        lines += _table(four["summary"], f"2. {' '.join(four['flags'])}")
        lines.append("")
    if results["failures"]:
        lines.append(f"{len(results['failures'])} failed run(s): see above / --json")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def ensure_model() -> None:
    """The default model's weights in the cache the CLI reads, before any timing."""
    from yolov4.hub import cache_dir, fetch
    from yolov4.pretrained import Pretrained

    path = fetch(Pretrained.YOLOV4_TINY_COCO.value.weights)
    print(f"weights: {path} (cache {cache_dir()})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=640, help="JPEGs in the source folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 640])
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds per section")
    parser.add_argument("--four-actors", type=int, default=4, help="section 2's --actors")
    parser.add_argument(
        "--four-cpus-per-actor",
        type=float,
        help="section 2's --cpus-per-actor (default: the CLI's, 1)",
    )
    parser.add_argument("--skip-sizes", action="store_true", help="skip section 1")
    parser.add_argument("--skip-four", action="store_true", help="skip section 2")
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the untimed first run (16 images) that warms the page cache",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for other processes to calm down",
    )
    parser.add_argument(
        "--quiet-cores", type=float, default=0.15, help="'calm': other processes under this"
    )
    parser.add_argument("--run-timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument(
        "--retry-wait",
        type=float,
        default=120.0,
        help="a run that failed before it began (import error) is retried once after this",
    )
    parser.add_argument("--workdir", type=Path, help="folder for images and outputs")
    parser.add_argument("--json", type=Path, help="write every figure and record here")
    parser.add_argument("--keep", action="store_true", help="keep the images and outputs")
    args = parser.parse_args(argv)
    if args.images < 1 or args.rounds < 1 or args.four_actors < 1:
        parser.error("--images, --rounds and --four-actors must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="bench-shard-size-", dir=args.workdir))
    started = time.perf_counter()
    results: dict = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "images": args.images,
        "args": json_args(args),
        "failures": [],
    }
    monitor = LoadMonitor().start()
    try:
        ensure_model()
        source = work / "images"
        make_jpegs(source, args.images)
        print(f"{args.images} JPEGs in {source}", flush=True)
        if args.warmup:
            warm = work / "warm-images"
            make_jpegs(warm, 16)
            result = run_with_retry(
                args, warm, work / "out-warmup", [], monitor, results["failures"]
            )
            if result is not None:
                print(f"warm-up run: {result['seconds']:.1f} s (not counted)", flush=True)
        if not args.skip_sizes:
            results["sizes"] = section_sizes(args, source, work, monitor, results["failures"])
        if not args.skip_four:
            results["four"] = section_four(args, source, work, monitor, results["failures"])
    finally:
        monitor.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.perf_counter() - started
    results["table"] = report(results)
    print("\n" + results["table"])
    print(f"\nbenchmark took {results['seconds']:.0f} s")
    if args.json:
        write_json(args.json, results)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
