"""Memory and speed of dropping duplicate URIs from a manifest, against reading it without.

Writes a text manifest of ``N`` synthetic ``s3://`` URIs for each ``--sizes`` N (once, kept in
``--dir``; about 60 bytes a line), in which every ``--repeat-every``-th entry lists again a URI
of an earlier entry (picked at random, seeded): an S3 Inventory of a versioned bucket, whose
keys come back once per version. Then, in a fresh child process per measurement (so that each
peak RSS is its own), the planner's pass over it (:func:`pipeline.store.listing.open_listing`)
is iterated to the end, two ways in alternating order over ``--rounds`` rounds:

- ``read``: the manifest as if it could not repeat a URI (``may_repeat`` off): reading and
  resolving its entries, nothing remembered;
- ``dedup``: the pass a run makes, keeping each URI's first entry
  (:class:`pipeline.store.seen_uris.SeenUris`).

Reported per size and way: entries/s, seconds, peak RSS of the child and what it grew by
during the pass; and for ``dedup``, the peak RSS added over ``read`` per unique URI held (the
set's own 16 bytes each, plus the transient memory of merging runs and of a batch), the set's
bytes and runs, and the duplicates found (must equal the ones written). Each child also
reports the cores other processes used meanwhile (:class:`benchmarks.common.LoadMonitor`):
the machine may be shared.

    .venv/bin/python benchmarks/bench_dedup.py                      # 10^6 and 10^7 entries
    .venv/bin/python benchmarks/bench_dedup.py --sizes 1000000 --rounds 3 --json dedup.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import LoadMonitor, cpu_model, json_args, median, rate, write_json  # noqa: E402

MODES = ("read", "dedup")
#: Seconds a child may take before the benchmark gives up on it.
CHILD_TIMEOUT_S = 1800
#: Lines written to the manifest per write call.
WRITE_CHUNK = 100_000
SEED = 18
#: Seconds between the load monitor's samples (it scans /proc: not too often).
LOAD_SAMPLE_S = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument(
        "--repeat-every",
        type=int,
        default=10,
        help="every N-th entry lists an earlier URI again (default 10: 10%% duplicates)",
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "yolo-batch-bench-dedup",
        help="where the manifests are written and kept",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def uri(i: int) -> str:
    return f"s3://inventory-bench/photos/{i % 997:03d}/{i:010d}-camera.jpg"


def write_manifest(path: Path, size: int, repeat_every: int) -> int:
    """Write the manifest of ``size`` entries unless it exists; returns its duplicates."""
    duplicates = sum(1 for k in range(1, size) if k % repeat_every == repeat_every - 1)
    if path.exists():
        return duplicates
    rng = random.Random(SEED)
    tmp = path.with_suffix(".partial")
    unique = 0
    with open(tmp, "w") as fh:
        lines = []
        for k in range(size):
            if k and k % repeat_every == repeat_every - 1:
                lines.append(uri(rng.randrange(unique)))
            else:
                lines.append(uri(unique))
                unique += 1
            if len(lines) >= WRITE_CHUNK:
                fh.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            fh.write("\n".join(lines) + "\n")
    tmp.rename(path)
    return duplicates


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(mode: str, manifest: Path) -> dict:
    """One pass over ``manifest`` in this process; what it took."""
    from pipeline.store.listing import open_listing
    from pipeline.store.sources import open_source

    source = open_source(str(manifest))
    if mode == "read":
        source.may_repeat = False
    listing = open_listing(source)
    before = current_rss_bytes()
    monitor = LoadMonitor(interval=LOAD_SAMPLE_S).start()
    started = time.perf_counter()
    planned = sum(1 for _ in listing)
    ended = time.perf_counter()
    seconds = ended - started
    monitor.wait_past(ended)
    monitor.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seen = getattr(listing, "_seen", None)
    return {
        "mode": mode,
        "entries": listing.objects_seen,
        "planned": planned,
        "duplicates": listing.duplicates,
        "seconds": round(seconds, 3),
        "entries_per_s": round(rate(listing.objects_seen, seconds)),
        "rss_before_mib": round(before / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "rss_growth_mib": round((peak - before) / 2**20, 1),
        "set_bytes": seen.nbytes if seen is not None else 0,
        "set_runs": seen.runs if seen is not None else 0,
        "foreign_cores": round(monitor.interval(started, ended)["foreign_cores"], 2),
    }


def measure(mode: str, manifest: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--manifest", str(manifest)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.manifest)))
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    results = {
        "args": json_args(args, exclude=("child", "manifest")),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "sizes": [],
    }
    for size in args.sizes:
        manifest = args.dir / f"manifest-{size}-{args.repeat_every}.txt"
        written = write_manifest(manifest, size, args.repeat_every)
        rows = []
        for round_no in range(args.rounds):
            order = MODES if round_no % 2 == 0 else MODES[::-1]
            for mode in order:
                row = measure(mode, manifest)
                if mode == "dedup" and row["duplicates"] != written:
                    raise SystemExit(
                        f"{manifest}: {row['duplicates']} duplicates found, {written} written"
                    )
                rows.append({**row, "round": round_no})
                print(json.dumps(rows[-1]))
        results["sizes"].append(summarise(size, written, rows))
    for entry in results["sizes"]:
        print(
            f"{entry['entries']:>11,} entries ({entry['unique']:,} unique): "
            f"read {entry['read_entries_per_s']:,.0f}/s, "
            f"dedup {entry['dedup_entries_per_s']:,.0f}/s "
            f"({entry['dedup_slowdown']:.2f}x the time); peak RSS +{entry['added_mib']:,.0f} MiB "
            f"= {entry['added_bytes_per_unique']:.1f} bytes per unique URI "
            f"(set {entry['set_bytes_per_unique']:.1f}, {entry['set_runs']} runs)"
        )
    if args.json:
        write_json(args.json, results)
    return 0


def summarise(size: int, duplicates: int, rows: list[dict]) -> dict:
    by_mode = {mode: [r for r in rows if r["mode"] == mode] for mode in MODES}
    unique = size - duplicates
    read_peak = median([r["peak_rss_mib"] for r in by_mode["read"]])
    dedup_peak = median([r["peak_rss_mib"] for r in by_mode["dedup"]])
    read_s = median([r["seconds"] for r in by_mode["read"]])
    dedup_s = median([r["seconds"] for r in by_mode["dedup"]])
    added = dedup_peak - read_peak
    last = by_mode["dedup"][-1]
    return {
        "entries": size,
        "unique": unique,
        "read_entries_per_s": rate(size, read_s),
        "dedup_entries_per_s": rate(size, dedup_s),
        "dedup_slowdown": dedup_s / read_s,
        "read_peak_rss_mib": read_peak,
        "dedup_peak_rss_mib": dedup_peak,
        "added_mib": added,
        "added_bytes_per_unique": added * 2**20 / unique,
        "set_bytes_per_unique": last["set_bytes"] / unique,
        "set_runs": last["set_runs"],
        "foreign_cores": max(r["foreign_cores"] for r in rows),
        "rows": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
