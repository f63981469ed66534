"""S3 requests per read operation against the number of shards in an output.

Builds outputs of ``--shards`` shards (10, 100 and 1,000 by default) on a real S3-compatible
server (SeaweedFS on 127.0.0.1), written directly (no Ray, no model): per shard a small
``images`` and ``detections`` Parquet file (``--images-per-shard`` images,
``--detections-per-image`` detections each, the project's schemas and sink), named as the actors
name them (:meth:`~pipeline.store.layout.OutputLayout.data_file`) and committed to the Delta logs
by :meth:`~pipeline.store.tables.ResultTables.commit_shards` in batches of ``--batch`` shards, as
the driver does, with a run record for the ``runs`` view. Each output holds two runs: the big
one (N shards) and a later run of ``--small-shards`` shards, the one the report is about.

Then each operation runs in a fresh interpreter (as a CLI command would: nothing cached) whose
S3 endpoint is the counting proxy (:class:`infra.local.fault_proxy.FaultProxy` with no fault
rules) in front of the server; the data was written to the server directly, so the proxy sees
only the operation's requests. The proxy runs in this process and the operation in a child:
``deltalake`` holds the GIL during some of its S3 calls, which would stall a proxy thread in
the same interpreter.

- ``count detections``: ``SELECT count(*) FROM detections`` (:func:`pipeline.results.query.query`)
- ``count images``: ``SELECT count(*) FROM images``
- ``report``: :func:`pipeline.results.report.data.collect` for the small run (with its
  default 12 samples; their source images do not exist, so each is one failed GET)
- ``export coco``: :func:`pipeline.results.export.export_results` to a local file
- ``resume``: what the dispatcher does on start: ``ResultTables.create``, ``reconcile`` and
  ``committed_shards`` of the big run, and the ledger's failure marks

Requests are sorted by what they touch: ``log`` (keys and listings under ``_delta_log/``: opening
the tables), ``data`` (the runs' Parquet files), ``runs`` (run records, failure marks) and
``source`` (the report's sample images); ``LIST`` is a ``GET`` of the bucket with ``list-type``.

    .venv/bin/python benchmarks/bench_requests.py                       # ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_requests.py --shards 10 100 1000 10000    # ~12 min
    .venv/bin/python benchmarks/bench_requests.py --shards 10 100 --json requests.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    COCO_NAMES,
    cpu_model,
    json_args,
    use_server_credentials,
    write_json,
)
from infra.local.fault_proxy import FaultProxy, ProxyRequest  # noqa: E402
from infra.local.object_store import SeaweedS3Server  # noqa: E402
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout  # noqa: E402
from pipeline.store.ledger import (  # noqa: E402
    RUN_SUCCEEDED,
    Ledger,
    RunRecord,
    new_attempt_token,
    new_run_id,
)
from pipeline.store.s3 import S3Options  # noqa: E402
from pipeline.store.storage import S3Storage  # noqa: E402
from pipeline.store.tables import DataFile, ResultTables, ShardFiles  # noqa: E402
from pipeline.worker.sink import (  # noqa: E402
    DetectionsBuffer,
    class_name_array,
    images_table,
    parquet_bytes,
)

BUCKET = "requests-bench"
SOURCE = "s3://requests-bench-source/images/"
OPERATIONS = ("count detections", "count images", "report", "export coco", "resume")
#: Figures of the same operations on the output format before the Delta tables (commit markers
#: per shard, every data file opened per query), measured on a 310-shard output.
EARLIER_FORMAT = {
    "count detections": "620 HEAD + 1,242 GET (310 shards)",
    "report": "660 HEAD + 682 GET (a 10-shard run in a 310-shard output)",
    "export coco": "941 HEAD + 1,874 GET (310 shards)",
    "resume": "1 LIST + 300 GET (300 shards)",
}
CATEGORIES = ("log", "data", "runs", "source", "other")
KINDS = ("LIST", "GET", "HEAD", "PUT", "POST", "DELETE")
WRITE_THREADS = 16
#: Seconds one measured operation may take.
CHILD_TIMEOUT_S = 600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--small-shards", type=int, default=10, help="shards of the second run")
    parser.add_argument("--images-per-shard", type=int, default=10)
    parser.add_argument("--detections-per-image", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="shards per commit (the driver's)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--dump", type=Path, default=None, help="write every operation's requests to this folder"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------- the data
def shard_files(
    storage: S3Storage,
    layout: OutputLayout,
    run_id: str,
    shard_id: int,
    args: argparse.Namespace,
    class_names: pa.Array,
) -> ShardFiles:
    """Write one shard's two Parquet files as an actor does; the files as the log takes them."""
    rng = np.random.default_rng(shard_id)
    n, per = args.images_per_shard, args.detections_per_image
    uris = pa.array([f"{SOURCE}{run_id}/{shard_id:06d}/{i:04d}.jpg" for i in range(n)])
    detections = DetectionsBuffer()
    x0 = rng.uniform(0, 600, n * per).astype(np.float32)
    y0 = rng.uniform(0, 400, n * per).astype(np.float32)
    boxes = np.stack([x0, y0, x0 + 30, y0 + 40], axis=1)
    detections.add(
        np.repeat(np.arange(n), per),
        boxes,
        rng.uniform(0.25, 1.0, n * per).astype(np.float32),
        rng.integers(0, len(class_names), n * per),
    )
    tables = {
        DETECTIONS_TABLE: detections.table(uris, class_names, run_id),
        IMAGES_TABLE: images_table(
            image_uris=uris,
            status=["ok"] * n,
            error=[None] * n,
            width=[640] * n,
            height=[480] * n,
            num_detections=detections.counts(n),
            etag=[f"etag-{shard_id}-{i}" for i in range(n)],
            size_bytes=[50_000] * n,
            run_id=run_id,
            shard_id=shard_id,
        ),
    }
    token = new_attempt_token(1)
    files = {}
    for name, table in tables.items():
        uri = layout.data_file(name, run_id, shard_id, token)
        data = parquet_bytes(table)
        storage.write_bytes(uri, data)
        files[name] = DataFile.of_table(uri, table, len(data))
    return ShardFiles(shard_id, files)


def build_run(
    output: str, options: S3Options, num_shards: int, started: float, args: argparse.Namespace
) -> str:
    """A committed run of ``num_shards`` shards under ``output``; returns its run id."""
    storage = S3Storage(options, max_pool_connections=WRITE_THREADS)
    layout = OutputLayout(output)
    run_id = new_run_id(started)
    class_names = class_name_array(COCO_NAMES.read_text().splitlines())
    record = RunRecord(run_id, SOURCE, output, {"model": "synthetic"}, {"shard_size": 10})
    record.started_at, record.num_shards = started, num_shards
    record.num_images = num_shards * args.images_per_shard
    Ledger(storage, layout).write_run(record)
    tables = ResultTables(output, options)
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        shards = list(
            pool.map(
                lambda s: shard_files(storage, layout, run_id, s, args, class_names),
                range(num_shards),
            )
        )
    for start in range(0, num_shards, args.batch):
        tables.commit_shards(run_id, shards[start : start + args.batch])
    record.status, record.finished_at = RUN_SUCCEEDED, started + 60
    record.shards_committed = num_shards
    record.images_ok = record.num_images
    record.detections = record.num_images * args.detections_per_image
    Ledger(storage, layout).write_run(record)
    return run_id


# ---------------------------------------------------------------------------------- children
def child(operation: str, raw: str) -> dict:
    """Run one operation in this (fresh) interpreter; returns what it found, for checking."""
    spec = json.loads(raw)
    output, options = spec["output"], S3Options(endpoint_url=spec["endpoint"])
    started = time.perf_counter()
    if operation in ("count detections", "count images"):
        from pipeline.results.query import query

        table = "detections" if operation == "count detections" else "images"
        result = query(output, f"SELECT count(*) AS n FROM {table}", options)
        found = {"rows": result.column("n")[0].as_py()}
    elif operation == "report":
        from pipeline.results.report.data import collect

        data = collect(output, spec["small_run"], s3_options=options)
        found = {"images": data.images_total, "detections": data.detections_total}
    elif operation == "export coco":
        from pipeline.results.export import FORMAT_COCO, export_results

        summary = export_results(output, FORMAT_COCO, spec["dest"], s3_options=options)
        found = {"images": summary.images, "detections": summary.detections}
    elif operation == "resume":
        from pipeline.store.ledger import Ledger
        from pipeline.store.storage import S3Storage

        storage = S3Storage(options)
        tables = ResultTables(output, options)
        tables.create()
        reconciled = tables.reconcile(spec["big_run"], storage)
        committed = tables.committed_shards(spec["big_run"])
        failed = Ledger(storage, OutputLayout(output)).failures(spec["big_run"])
        found = {"reconciled": len(reconciled), "committed": len(committed), "failed": len(failed)}
    else:
        raise SystemExit(f"unknown operation {operation!r}")
    found["seconds"] = round(time.perf_counter() - started, 2)
    return found


def measure(proxy: FaultProxy, operation: str, spec: dict) -> tuple[dict, list[ProxyRequest]]:
    """The operation's result and requests. A child that dies without a result (a native
    abort) is run again once, and the failure noted in the result."""
    failures = []
    for _ in range(2):
        proxy.reset_stats()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", operation, "--child-args", json.dumps(spec)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
        lines = proc.stdout.strip().splitlines()
        if lines and lines[-1].startswith("{"):
            found = json.loads(lines[-1])
            if proc.returncode:
                failures.append(f"exit {proc.returncode} after its result: {proc.stderr[-300:]}")
            if failures:
                found["failures"] = failures
            return found, proxy.requests()
        failures.append(f"exit {proc.returncode} without a result: {proc.stderr[-300:]}")
        print(f"  {operation}: the child failed ({failures[-1]!r}); once more", flush=True)
    raise SystemExit(f"{operation} failed twice:\n" + "\n".join(failures))


# ---------------------------------------------------------------------------------- counting
def classify(request: ProxyRequest) -> tuple[str, str]:
    """``(category, kind)`` of one request: what it touches and LIST/GET/HEAD/PUT/..."""
    params = request.params
    bucket_only = request.path.strip("/").count("/") == 0
    if request.method == "GET" and ("list-type" in params or bucket_only):
        kind, key = "LIST", params.get("prefix", "")
    else:
        kind, key = request.method, request.path.lstrip("/").partition("/")[2]
    if request.path.lstrip("/").startswith(SOURCE.removeprefix("s3://").partition("/")[0]):
        return "source", kind
    if "_delta_log" in key:
        return "log", kind
    if key.endswith(".parquet") and "/run_id=" in key:
        return "data", kind
    if "/_runs" in "/" + key:
        return "runs", kind
    return "other", kind


def log_state(server: SeaweedS3Server, prefix: str) -> dict:
    """The table's latest version, its latest checkpoint's and the commits after it (the
    commit files a reader opening the table reads), from a listing of its log."""
    commits, checkpoints = [], []
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    for page in pages:
        for item in page.get("Contents", ()):
            name = item["Key"][len(prefix) :]
            version = name.split(".", 1)[0]
            if version.isdigit():
                (checkpoints if ".checkpoint." in name else commits).append(int(version))
    version = max(commits, default=-1)
    checkpoint = max(checkpoints, default=None)
    after = sum(1 for v in commits if checkpoint is None or v > checkpoint)
    return {"version": version, "checkpoint": checkpoint, "commits_after_checkpoint": after}


def dump(path: Path, requests: list[ProxyRequest]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{classify(r)[0]:7}{r.method:7}{r.path}?{r.query}" for r in requests]
    path.write_text("\n".join(lines) + "\n")


def tally(requests: list[ProxyRequest]) -> dict:
    counts: dict[str, collections.Counter] = {c: collections.Counter() for c in CATEGORIES}
    for request in requests:
        category, kind = classify(request)
        counts[category][kind] += 1
    return {
        "total": len(requests),
        **{c: dict(counts[c]) for c in CATEGORIES},
        **{f"{c}_total": sum(counts[c].values()) for c in CATEGORIES},
    }


def methods(counter: dict) -> str:
    return " + ".join(f"{counter[k]:,} {k}" for k in KINDS if counter.get(k)) or "0"


def print_tables(rows: list[dict]) -> None:
    for operation in OPERATIONS:
        print(f"\n#### {operation}\n")
        if operation in EARLIER_FORMAT:
            print(f"Earlier format (commit markers): {EARLIER_FORMAT[operation]}.\n")
        print("| shards (big + small run) | data files | log version (commits after checkpoint) "
              "| total | log (opening the tables) | data files read | run records | other "
              "| time (s) |")  # fmt: skip
        print("|---|---:|---|---:|---|---|---|---|---:|")
        for row in rows:
            m = row["operations"][operation]
            other = {**m["other"], **{f"src {k}": v for k, v in m["source"].items()}}
            other_text = " + ".join(f"{v} {k}" for k, v in other.items()) or "0"
            log = row["images_log"]
            print(
                f"| {row['big_shards']:,} + {row['small_shards']} | {row['data_files']:,} "
                f"| {log['version']} ({log['commits_after_checkpoint']}) | {m['total']:,} "
                f"| {methods(m['log'])} | {methods(m['data'])} "
                f"| {methods(m['runs'])} | {other_text} | {m['found']['seconds']} |"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.child_args)))
        return 0
    report: dict = {
        "parameters": json_args(args, exclude=("child", "child_args", "dump")),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "earlier_format": EARLIER_FORMAT,
        "rows": [],
    }
    print(f"CPU: {report['machine']['cpu']} ({report['machine']['cores']} cores)", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="bench-requests-") as workdir,
        SeaweedS3Server(Path(workdir) / "store") as server,
        FaultProxy(server.endpoint_url, record=True) as proxy,
    ):
        use_server_credentials(server)
        server.client().create_bucket(Bucket=BUCKET)
        direct = S3Options(endpoint_url=server.endpoint_url, region=server.region)
        for big in args.shards:
            output = f"s3://{BUCKET}/out-{big}"
            started = time.perf_counter()
            big_run = build_run(output, direct, big, time.time() - 7200, args)
            small_run = build_run(output, direct, args.small_shards, time.time() - 60, args)
            built = time.perf_counter() - started
            log = log_state(server, f"out-{big}/images/_delta_log/")
            print(
                f"\n{big} + {args.small_shards} shards written and committed in {built:.1f} s "
                f"(images log: version {log['version']}, checkpoint {log['checkpoint']}, "
                f"{log['commits_after_checkpoint']} commits after it)",
                flush=True,
            )
            spec = {
                "output": output,
                "endpoint": proxy.endpoint_url,
                "big_run": big_run,
                "small_run": small_run,
                "dest": str(Path(workdir) / f"coco-{big}.json"),
            }
            row = {
                "big_shards": big,
                "small_shards": args.small_shards,
                "data_files": 2 * (big + args.small_shards),
                "images_log": log,
                "build_s": round(built, 1),
                "operations": {},
            }
            for operation in OPERATIONS:
                found, requests = measure(proxy, operation, spec)
                if args.dump:
                    dump(args.dump / f"{big}-{operation.replace(' ', '-')}.txt", requests)
                row["operations"][operation] = {**tally(requests), "found": found}
                counted = row["operations"][operation]
                print(
                    f"  {operation}: {counted['total']} requests (log "
                    f"{methods(counted['log'])}; data {methods(counted['data'])}) {found}",
                    flush=True,
                )
            report["rows"].append(row)
    print_tables(report["rows"])
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
