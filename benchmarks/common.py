"""Helpers shared by the benchmark scripts: machine facts, the load other processes put on a
shared machine, alternating rounds until enough were quiet, and the JSON report.

Light on purpose: nothing here imports torch or Ray at module level (``bench_pipeline.py``
starts a child process before it loads torch). The scripts put the repository root on
``sys.path`` and import this as ``benchmarks.common``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The darknet cfgs and class names the reference tests use, read here as data files.
DARKNET_DIR = REPO / "tests" / "data" / "darknet"
YOLOV4_CFG = DARKNET_DIR / "yolov4.cfg"
YOLOV4_TINY_CFG = DARKNET_DIR / "yolov4-tiny.cfg"
COCO_NAMES = DARKNET_DIR / "coco.names"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), without importing torch: ``bench_pipeline.py``
    starts its planning child before this process loads torch."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                return value
    except OSError:
        pass
    return platform.processor() or "unknown"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def json_args(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> dict:
    """The parsed options, JSON-ready (paths as strings), without the ``exclude`` ones."""
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in exclude
    }


def write_json(path: Path, results: dict) -> None:
    """Write ``results`` to ``path`` (anything JSON cannot hold as its ``str``) and say so."""
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")


def shutdown_ray() -> None:
    """Shut down the Ray this process started or joined, if it imported Ray at all."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def cfg_at_size(cfg: Path, dest: Path, side: int) -> Path:
    """Copy the darknet ``cfg`` to ``dest`` with its network input ``side`` x ``side``."""
    text = re.sub(r"^width=\d+", f"width={side}", cfg.read_text(), flags=re.M)
    dest.write_text(re.sub(r"^height=\d+", f"height={side}", text, flags=re.M))
    return dest


def another_round(args, rounds: list[dict], last_round_s: float, reserve_s: float = 0.0) -> bool:
    """``--rounds`` measured rounds (rows without a true ``warmup``), then more (up to
    ``--max-rounds``) while fewer than ``--quiet-rounds`` were quiet and ``args.deadline``
    (``time.perf_counter`` seconds) allows one more, keeping ``reserve_s`` for what follows."""
    measured = [row for row in rounds if not row.get("warmup")]
    if len(measured) < args.rounds:
        return True
    if (
        sum(row["quiet"] for row in measured) >= args.quiet_rounds
        or len(measured) >= args.max_rounds
    ):
        return False
    return time.perf_counter() + last_round_s + reserve_s <= args.deadline


class LoadMonitor:
    """Samples ``/proc`` in a thread: CPU time of this process tree vs. every other process.

    The machine may be shared, so each measurement carries the load the rest of the machine put
    on it (``foreign_cores``: average CPU cores used by processes outside this process and its
    descendants, which include the local Ray's processes and actors). Cumulative totals are
    kept as a timeline, so any interval (e.g. the pipeline's dispatch window) can be queried.
    Processes that live less than one sampling interval are missed.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.period = interval
        self.tick = os.sysconf("SC_CLK_TCK")
        self.me = os.getpid()
        self.timeline: list[tuple[float, float, float]] = []  # (t, own cpu s, foreign cpu s)
        self._last: dict[int, tuple[int, float]] = {}  # pid -> (start time, cpu s)
        self._own = self._foreign = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-monitor", daemon=True)

    def start(self) -> LoadMonitor:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def _sample(self) -> None:
        stats: dict[int, tuple[int, int, float]] = {}  # pid -> (ppid, start, cpu s)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    text = fh.read()
            except OSError:
                continue
            fields = text[text.rindex(b")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / self.tick
            stats[int(entry.name)] = (int(fields[1]), int(fields[19]), cpu)
        now = time.perf_counter()
        ours: dict[int, bool] = {self.me: True, 0: False, 1: False}

        def is_ours(pid: int) -> bool:
            chain = []
            while pid not in ours:
                chain.append(pid)
                info = stats.get(pid)
                pid = info[0] if info else 0
            verdict = ours[pid]
            for item in chain:
                ours[item] = verdict
            return verdict

        current = {}
        for pid, (_, start, cpu) in stats.items():
            current[pid] = (start, cpu)
            last = self._last.get(pid)
            if last is None or last[0] != start:
                if not self._last:
                    continue  # the first sample only sets the baseline
                last = (start, 0.0)  # new since the last sample
            delta = cpu - last[1]
            if is_ours(pid):
                self._own += delta
            else:
                self._foreign += delta
        self._last = current
        self.timeline.append((now, self._own, self._foreign))

    def recent_foreign_cores(self, seconds: float = 2.0) -> float:
        """Cores used by other processes over the last ``seconds``."""
        now = self.timeline[-1][0]
        return self.interval(now - seconds, now)["foreign_cores"]

    def wait_quiet(self, threshold: float, max_s: float, deadline: float) -> float:
        """Sleep until other processes use under ``threshold`` cores (at most ``max_s``, and
        not past ``deadline``); returns the seconds waited."""
        started = time.perf_counter()
        time.sleep(2 * self.period)
        while self.recent_foreign_cores() >= threshold:
            now = time.perf_counter()
            if now - started >= max_s or now >= deadline:
                break
            time.sleep(0.5)
        return time.perf_counter() - started

    def wait_past(self, t: float) -> None:
        """Return once a sample later than ``t`` exists (so ``interval`` can reach ``t``)."""
        while self.timeline[-1][0] < t and self._thread.is_alive():
            time.sleep(self.period / 5)

    def _at(self, t: float) -> tuple[float, float]:
        points = self.timeline
        if t <= points[0][0]:
            return points[0][1:]
        for (t0, own0, f0), (t1, own1, f1) in zip(points, points[1:]):
            if t <= t1:
                w = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
                return own0 + w * (own1 - own0), f0 + w * (f1 - f0)
        return points[-1][1:]

    def interval(self, t0: float, t1: float) -> dict:
        """CPU seconds of this tree and of the rest of the machine between two instants."""
        own0, f0 = self._at(t0)
        own1, f1 = self._at(t1)
        seconds = max(t1 - t0, 1e-9)
        return {
            "own_cpu_s": own1 - own0,
            "foreign_cpu_s": f1 - f0,
            "foreign_cores": (f1 - f0) / seconds,
        }


def process_tree(root: int) -> set[int]:
    """``root`` and every process below it, from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                text = fh.read()
        except OSError:
            continue
        ppid = int(text[text.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            tree.add(child)
            frontier.append(child)
    return tree


def use_server_credentials(server) -> None:
    """Point this process's AWS settings at the local S3 ``server`` only (nothing from a
    profile, no endpoint override left over)."""
    os.environ.update(
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_REGION=server.region,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        NO_PROXY="127.0.0.1,localhost",
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
