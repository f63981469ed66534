"""``yolo-batch status OUTPUT [--run RUN_ID]``: progress and outcome of a run."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import asdict

from pipeline.cli.s3_options import add_s3_arguments, s3_options
from pipeline.results.query import no_runs_error
from pipeline.run.lease import read_lease
from pipeline.store.committed import open_tables
from pipeline.store.layout import OutputLayout
from pipeline.store.ledger import Ledger
from pipeline.store.s3 import S3Options
from pipeline.store.sources import skipped_summary
from pipeline.store.storage import storage_for
from pipeline.store.uris import normalize

#: A running run whose status file is older than this is reported as possibly dead.
STALE_AFTER_S = 120.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="progress and outcome of the latest (or a given) run"
    )
    parser.add_argument("output", help="the run's output (s3://bucket/prefix or folder)")
    parser.add_argument("--run", help="a run id (default: the latest)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_s3_arguments(parser)
    parser.set_defaults(func=run)


def collect_status(output: str, run_id: str | None, s3: S3Options) -> dict:
    """The run record, with the live status file's counters when it is the latest run."""
    output = normalize(output)
    storage = storage_for(output, s3)
    layout = OutputLayout(output)
    ledger = Ledger(storage, layout)
    run_id = run_id or ledger.latest_run_id()
    if run_id is None:
        raise no_runs_error(output)
    record = json.loads(ledger.read_run(run_id).to_json())
    try:
        live = json.loads(storage.read_bytes(layout.status))
    except FileNotFoundError:
        live = {}
    if live.get("run_id") == run_id:
        record["live"] = live
    # The log's view of the run (its statistics only): right even when the record is stale.
    committed = open_tables(output, s3).committed_shards(run_id)
    record["log"] = {
        "shards_committed": len(committed),
        "images": sum(c.images for c in committed.values()),
        "images_error": sum(c.errors for c in committed.values()),
        "detections": sum(c.detections for c in committed.values()),
    }
    failures = ledger.failures(run_id)
    record["failed_shards"] = {str(k): v.get("reason") for k, v in sorted(failures.items())}
    lease = read_lease(storage, output)
    record["lease"] = asdict(lease) if lease else None
    return record


def run(args: argparse.Namespace) -> int:
    status = collect_status(args.output, args.run, s3_options(args))
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    live = status.get("live", {})
    log = status["log"]
    total = status.get("num_images") or live.get("images_total") or 0
    done = live.get("images_done", log["images"])
    print(f"run        {status['run_id']}  ({status['status']})")
    print(f"source     {status['source']}")
    print(
        f"model      {status['model'].get('model')}  sha256 {status['model'].get('weights_sha256')}"
    )
    started, finished = _when(status.get("started_at")), _when(status.get("finished_at"))
    errors = live.get("images_error", log["images_error"])
    print(f"started    {started}   finished {finished}")
    listing = live.get("listing_done") is False and status["status"] == "running"
    if listing:
        print(
            f"listing    {live.get('objects_listed', 0):,} objects listed so far "
            f"({live.get('objects_listed_per_second') or 0:,.0f}/s); shards are planned and "
            "processed as the listing goes on"
        )
    planned = "+ planned so far" if listing else ""
    print(f"images     {done:,} of {total:,}{planned} done; errors {errors:,}")
    duplicates = max(status.get("duplicates") or 0, live.get("duplicates") or 0)
    if duplicates:
        print(
            f"duplicates {duplicates:,} URIs listed again in the source were skipped (the "
            "first listing of each is processed)"
        )
    skipped = status.get("skipped_by_extension") or {}
    if skipped:
        print(f"skipped    {skipped_summary(skipped)}; add them with --extensions")
    print(f"detections {live.get('detections', log['detections']):,}")
    print(
        f"shards     {live.get('shards_committed', log['shards_committed'])} of "
        f"{status.get('num_shards') or live.get('shards_total', 0)} committed, "
        f"{len(status['failed_shards'])} failed"
    )
    if live.get("images_per_second") is not None:
        print(f"speed      {live['images_per_second']:.2f} images/s")
    if status.get("incremental"):
        print(
            f"delta      {status.get('objects_listed') or 0:,} listed: "
            + ", ".join(
                f"{status.get('objects_' + kind) or 0:,} {kind}"
                for kind in ("new", "changed", "retried", "unchanged", "deleted")
            )
        )
    lease = status.get("lease")
    if lease:
        holder = f"run {lease['run_id']}" if lease.get("run_id") else "a starting run"
        if lease.get("command"):
            holder = f"yolo-batch {lease['command']}"
        print(
            f"lease      held by {holder} (pid {lease['pid']} on {lease['host']}) until "
            f"{_when(lease['expires_at'])}"
        )
    for shard_id, reason in status["failed_shards"].items():
        print(f"failed     shard {shard_id}: {reason}")
    quiet_for = time.time() - live.get("updated_at", time.time())
    if status["status"] == "running" and quiet_for > STALE_AFTER_S:
        print(
            f"warning    no progress for {quiet_for:.0f} s: the driver may have stopped; "
            f"continue with yolo-batch run --output {shlex.quote(args.output)} "
            f"--resume {status['run_id']}"
        )
    if status.get("message"):
        print(f"note       {status['message']}")
    return 0


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
