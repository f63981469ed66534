"""Incremental runs at scale: time and peak memory of the delta (listing vs committed results).

Builds a synthetic committed output of N images (the pipeline's own sink and Delta commits,
shards of ``--shard-size``), then, in a fresh interpreter, compares a synthetic listing of the same
collection with 1% of the objects new, 1% changed (another ETag) and 1% deleted against it, and
streams the objects to process, as ``yolo-batch run --incremental`` does. Reports the delta
time, the rows streamed, and the peak RSS above the interpreter's baseline (libraries loaded).

    .venv/bin/python benchmarks/bench_incremental.py --images 1000000 3000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.run.commits import COMMIT_BATCH_SHARDS  # noqa: E402
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout  # noqa: E402
from pipeline.store.ledger import (  # noqa: E402
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

SOURCE = "s3://synthetic/images/"
#: Every CHANGE_EVERY-th object has another ETag now, every DELETE_EVERY-th is gone, and
#: NEW_FRACTION of the collection is new.
CHANGE_EVERY = 100
DELETE_EVERY = 101
NEW_FRACTION = 0.01


def uri(i: int) -> str:
    return f"{SOURCE}{i:09d}.jpg"


def write_output(root: Path, num_images: int, shard_size: int) -> str:
    """A committed run of ``num_images`` ok images with ETags ``e{i}``; returns its run id."""
    storage, layout = LocalStorage(), OutputLayout(str(root))
    ledger = Ledger(storage, layout)
    tables = ResultTables(str(root))
    pending: list[ShardFiles] = []
    run_id = new_run_id(time.time() - 3600)
    ledger.write_run(RunRecord(run_id, SOURCE, str(root), {"model": "synthetic"}, {}))
    for shard_id, start in enumerate(range(0, num_images, shard_size)):
        n = min(shard_size, num_images - start)
        ids = range(start, start + n)
        uris = pa.array([uri(i) for i in ids])
        token = new_attempt_token(1)
        no_detections = DetectionsBuffer().table(uris, class_name_array(["object"]), run_id)
        table = images_table(
            image_uris=uris,
            status=["ok"] * n,
            error=[None] * n,
            width=[640] * n,
            height=[480] * n,
            num_detections=[0] * n,
            etag=[f"e{i}" for i in ids],
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument(
        "--memory-limit", default="", help="DuckDB memory limit for the delta (default: ours)"
    )
    parser.add_argument(
        "--arrow-scan",
        action="store_true",
        help="compare through the all_images view (an Arrow scan) instead of the files",
    )
    args = parser.parse_args()
    rows = []
    for num_images in args.images:
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
