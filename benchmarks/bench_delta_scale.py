"""Export and the incremental delta over a Delta-table output of millions of images: peak
memory and time.

Writes a synthetic committed output of ``--rows`` images (10,000,000 by default) on local disk,
streamed shard by shard (never more than one commit batch in memory): per shard of
``--rows-per-file`` images an ``images`` and a ``detections`` Parquet file built with the
project's sink (0, 1 or 2 detections per image, about ``--detections-per-image`` on average),
named as the actors name them and committed by
:meth:`~pipeline.store.tables.ResultTables.commit_shards` in batches of ``--batch`` shards, as
the driver does, with a run record. Then, each in a fresh interpreter so its peak memory is its
own:

- ``export``: ``yolo-batch export OUTPUT --format coco --dest FILE`` (the CLI's ``main``, in
  process), every image of the output;
- ``delta``: the incremental delta as ``pipeline/run/planning.py`` computes it: the earlier
  run's committed ``images`` files from the log (``DeltaTable.file_uris``), a listing of the
  same collection with ``--new-fraction`` new objects, every ``--change-every``-th with another
  ETag and every ``--delete-every``-th gone, compared in :class:`pipeline.run.incremental.Delta`;
  the objects to process are streamed out (``Delta.objects()``) and the deleted ones written as
  tombstones, as planning does;
- ``export after delta``: the export again, now that the output holds tombstones of a later
  run: through the ``images`` and ``detections`` views (latest result per image, a window over
  every row, tombstoned images left out) instead of the plain tables.

Reported per measurement: wall time, the interpreter's RSS once its libraries are loaded
(``baseline``), its peak RSS (``VmHWM`` of the child's own address space, so nothing is
inherited from this process) and the highest RSS seen by polling ``/proc`` every 20 ms, against
a 1 GiB target.

    .venv/bin/python benchmarks/bench_delta_scale.py --rows 1000000      # ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_delta_scale.py                      # 10 M rows: ~8 min
    .venv/bin/python benchmarks/bench_delta_scale.py --rows 1000000 --keep --workdir /data/x
    .venv/bin/python benchmarks/bench_delta_scale.py --output /data/x/output   # reuse one
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import COCO_NAMES, cpu_model, json_args, write_json  # noqa: E402
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout  # noqa: E402
from pipeline.store.ledger import (  # noqa: E402
    RUN_SUCCEEDED,
    Ledger,
    RunRecord,
    new_attempt_token,
    new_run_id,
)
from pipeline.store.storage import LocalStorage  # noqa: E402
from pipeline.store.tables import DataFile, ResultTables, ShardFiles  # noqa: E402
from pipeline.worker.sink import (  # noqa: E402
    DetectionsBuffer,
    class_name_array,
    images_table,
    write_parquet,
)

SOURCE = "s3://synthetic-collection/images/"
URI_DIGITS = 9
#: Peak RSS target of each measurement.
TARGET_BYTES = 1 << 30
MIB = 1 << 20
#: Seconds between the parent's RSS samples of a child.
POLL_S = 0.02
EXPORT = "export"
DELTA = "delta"
#: The export again once the delta wrote its tombstones: through the ``images`` and
#: ``detections`` views (latest result per image, tombstoned ones left out).
EXPORT_AFTER = "export after delta"
#: Threads building and writing shards (zstd and the statistics release the GIL).
BUILD_THREADS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="images rows")
    parser.add_argument("--rows-per-file", type=int, default=10_000, help="images per shard")
    parser.add_argument("--detections-per-image", type=float, default=1.0, help="average, 0 to 2")
    parser.add_argument("--batch", type=int, default=64, help="shards per commit (the driver's)")
    parser.add_argument("--new-fraction", type=float, default=0.01)
    parser.add_argument("--change-every", type=int, default=100)
    parser.add_argument("--delete-every", type=int, default=101)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the output and the export")
    parser.add_argument(
        "--output", type=Path, default=None, help="measure an output written by an earlier --keep"
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        help="export: yolo-batch export --memory-limit (default: its own)",
    )
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--skip-delta", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def uris(start: int, stop: int) -> pa.Array:
    """``SOURCE`` + zero-padded index + ``.jpg`` for ``start..stop-1``, built in Arrow."""
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(start, stop)), pa.string()), URI_DIGITS, "0")
    return pc.binary_join_element_wise(SOURCE, digits, ".jpg", "")


def etags(start: int, stop: int) -> pa.Array:
    return pc.binary_join_element_wise(
        "e", pc.cast(pa.array(np.arange(start, stop)), pa.string()), ""
    )


# ---------------------------------------------------------------------------------- the output
def write_shard(
    layout: OutputLayout,
    run_id: str,
    shard_id: int,
    start: int,
    stop: int,
    args: argparse.Namespace,
    class_names: pa.Array,
) -> ShardFiles:
    """One shard's two Parquet files, built column-wise and written as an actor writes them."""
    n = stop - start
    rng = np.random.default_rng(shard_id)
    image_uris = uris(start, stop)
    p = min(max(args.detections_per_image / 2, 0.0), 1.0)
    per_image = rng.binomial(2, p, n)
    total = int(per_image.sum())
    x0 = rng.uniform(0, 1200, total).astype(np.float32)
    y0 = rng.uniform(0, 600, total).astype(np.float32)
    detections = DetectionsBuffer()
    detections.add(
        np.repeat(np.arange(n), per_image),
        np.stack([x0, y0, x0 + 64, y0 + 96], axis=1),
        rng.uniform(0.25, 1.0, total).astype(np.float32),
        rng.integers(0, len(class_names), total),
    )
    tables = {
        DETECTIONS_TABLE: detections.table(image_uris, class_names, run_id),
        IMAGES_TABLE: images_table(
            image_uris=image_uris,
            status=pa.repeat(pa.scalar("ok"), n),
            error=pa.nulls(n, pa.string()),
            width=np.full(n, 1280, np.int32),
            height=np.full(n, 720, np.int32),
            num_detections=per_image,
            etag=etags(start, stop),
            size_bytes=np.full(n, 250_000, np.int64),
            run_id=run_id,
            shard_id=shard_id,
        ),
    }
    token = new_attempt_token(1)
    files = {}
    for name, table in tables.items():
        uri = layout.data_file(name, run_id, shard_id, token)
        size = write_parquet(LocalStorage(), uri, table)
        files[name] = DataFile.of_table(uri, table, size)
    return ShardFiles(shard_id, files)


def write_output(output: Path, args: argparse.Namespace) -> tuple[str, dict]:
    """The committed run; returns its run id and what writing it took."""
    started = time.perf_counter()
    storage, layout = LocalStorage(), OutputLayout(str(output))
    run_id = new_run_id(time.time() - 86_400)
    class_names = class_name_array(COCO_NAMES.read_text().splitlines())
    record = RunRecord(run_id, SOURCE, str(output), {"model": "synthetic"}, {})
    record.started_at = time.time() - 86_400
    record.num_images = args.rows
    ledger = Ledger(storage, layout)
    ledger.write_run(record)
    tables = ResultTables(str(output))
    bounds = [
        (shard_id, start, min(start + args.rows_per_file, args.rows))
        for shard_id, start in enumerate(range(0, args.rows, args.rows_per_file))
    ]
    detections = 0
    with ThreadPoolExecutor(BUILD_THREADS) as pool:
        for first in range(0, len(bounds), args.batch):
            batch = list(
                pool.map(
                    lambda b: write_shard(layout, run_id, *b, args, class_names),
                    bounds[first : first + args.batch],
                )
            )
            tables.commit_shards(run_id, batch)
            detections += sum(
                json.loads(s.files[DETECTIONS_TABLE].stats)["numRecords"] for s in batch
            )
            done = min(len(bounds), first + args.batch)
            print(
                f"  {done}/{len(bounds)} shards committed ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    record.status, record.finished_at = RUN_SUCCEEDED, time.time() - 3_600
    record.num_shards = record.shards_committed = len(bounds)
    record.images_ok, record.detections = args.rows, detections
    ledger.write_run(record)
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    return run_id, {
        "seconds": round(time.perf_counter() - started, 1),
        "shards": len(bounds),
        "detections": detections,
        "bytes": size,
    }


# ---------------------------------------------------------------------------------- children
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(kind: str, raw: str) -> dict:
    """One measurement in this fresh interpreter: the libraries are imported first, so the
    baseline is the interpreter with them loaded."""
    spec = json.loads(raw)
    # What the step imports is loaded before the baseline: the CLI for the export (as the
    # command runs), the planner's modules for the delta (a driver has Ray and torch too).
    if kind.startswith("export"):
        from pipeline.cli import main as cli_main
    else:
        import duckdb

        from pipeline.run.incremental import Delta
        from pipeline.run.plan import PlannedObject
        from pipeline.store.committed import register_tables, table_files
    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    result: dict = {}
    if kind.startswith("export"):
        argv = ["export", spec["output"], "--format", "coco", "--dest", spec["dest"]]
        if spec["memory_limit"]:
            argv += ["--memory-limit", spec["memory_limit"]]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli_main(argv)
        if code:
            raise SystemExit(f"yolo-batch export exited with {code}")
        summary = re.search(r"exported (\d+) images, (\d+) detections", printed.getvalue())
        result["images"], result["detections"] = (int(n) for n in summary.groups())
        result["dest_bytes"] = os.path.getsize(spec["dest"])
    elif kind == "delta":
        rows, new = spec["rows"], spec["new"]
        change_every, delete_every = spec["change_every"], spec["delete_every"]

        def listing():
            for i in range(rows + new):
                if i < rows and i % delete_every == 0:
                    continue
                etag = f"x{i}" if i < rows and i % change_every == 0 else f"e{i}"
                yield PlannedObject(f"{SOURCE}{i:0{URI_DIGITS}d}.jpg", 250_000, etag)

        tables = ResultTables(spec["output"])
        tables.create()
        connection = duckdb.connect()
        register_tables(connection, tables)
        earlier = [spec["run_id"]]
        files = table_files(tables, IMAGES_TABLE, earlier)
        with Delta(
            connection, listing(), earlier, earlier_files=files, storage=LocalStorage()
        ) as delta:
            result["compared_s"] = round(time.perf_counter() - started, 1)
            result["counts"] = delta.counts.as_dict()
            result["tombstones"] = delta.write_tombstones(tables, spec["new_run_id"])
            result["streamed"] = sum(1 for _ in delta.objects())
        result["earlier_files"] = len(files)
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    result.update(
        seconds=round(time.perf_counter() - started, 1),
        baseline_mib=round(baseline / 1024),
        peak_mib=round(_status_kib("VmHWM") / 1024),
    )
    return result


def measure(kind: str, spec: dict) -> dict:
    """Run ``kind`` in a child, sampling its RSS from here as well."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", kind, "--child-args", json.dumps(spec)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    highest = [0]

    def poll() -> None:
        path = f"/proc/{proc.pid}/status"
        while proc.poll() is None:
            try:
                for line in Path(path).read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        highest[0] = max(highest[0], int(line.split()[1]))
            except OSError:
                return
            time.sleep(POLL_S)

    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{kind} failed ({proc.returncode}):\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["polled_peak_mib"] = round(highest[0] / 1024)
    result["under_target"] = result["peak_mib"] * MIB < TARGET_BYTES
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.child_args)))
        return 0
    report: dict = {
        "parameters": json_args(args, exclude=("child", "child_args")),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"CPU: {report['machine']['cpu']} ({report['machine']['cores']} cores)", flush=True)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-delta-scale-", dir=args.workdir))
    try:
        if args.output is not None:
            output = args.output.resolve()
            run_id = Ledger(LocalStorage(), OutputLayout(str(output))).run_ids()[0]
            rows = ResultTables(str(output)).run_files(IMAGES_TABLE, run_id)
            args.rows = int(pa.compute.sum(rows["num_records"]).as_py())
            print(f"measuring {output}: run {run_id}, {args.rows:,} images", flush=True)
        else:
            output = workdir / "output"
            print(f"writing {args.rows:,} images under {output}", flush=True)
            run_id, report["output"] = write_output(output, args)
            print(f"written: {report['output']}", flush=True)
        spec = {
            "output": str(output),
            "run_id": run_id,
            "new_run_id": new_run_id(),
            "dest": str(workdir / "coco.json"),
            "memory_limit": args.memory_limit,
            "rows": args.rows,
            "new": int(args.rows * args.new_fraction),
            "change_every": args.change_every,
            "delete_every": args.delete_every,
        }
        steps = (
            (EXPORT, args.skip_export),
            (DELTA, args.skip_delta),
            (EXPORT_AFTER, args.skip_export or args.skip_delta),
        )
        for kind, skip in steps:
            if skip:
                continue
            print(f"measuring {kind} ...", flush=True)
            report[kind] = measure(kind, spec)
            print(f"  {kind}: {report[kind]}", flush=True)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.rows:,} images rows; CPU {report['machine']['cpu']}; {report['date']}\n")
    print("| step | time (s) | baseline RSS (MiB) | peak RSS (MiB) | polled peak (MiB) | < 1 GiB |")
    print("|---|---:|---:|---:|---:|---|")
    for kind in (EXPORT, DELTA, EXPORT_AFTER):
        if kind in report:
            r = report[kind]
            print(
                f"| {kind} | {r['seconds']} | {r['baseline_mib']} | {r['peak_mib']} "
                f"| {r['polled_peak_mib']} | {'yes' if r['under_target'] else 'NO'} |"
            )
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
