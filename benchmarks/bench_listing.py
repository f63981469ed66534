"""Listing a large S3 prefix when every request costs a round trip: sequential against parallel.

Starts a SeaweedFS server on 127.0.0.1 (:class:`infra.local.object_store.SeaweedS3Server`) over a
persistent ``--data-dir``, so the objects outlive the invocation, and makes sure it holds
``--objects`` tiny objects (a few bytes each, ``.jpg`` names) under
``s3://listing-bench/{names}-{objects}/``: ``--names sequential`` keys are
``images/{i:07d}.jpg``, ``--names hashed`` keys the hex MD5 of ``i`` plus ``.jpg`` (spread
evenly over the key space). They are written once, straight to the server, by a pool of
``--put-threads`` boto3 ``put_object`` calls; a marker object outside the prefix
(``_bench-listing/{names}-{objects}.json``, written last) records that the set is complete, and
later invocations find it and skip the population.

Then every listing goes through the fault proxy (:class:`infra.local.fault_proxy.FaultProxy`,
no fault rules) with ``latency_s = --latency-ms / 1000``: each request held that long before it
is forwarded, as a remote store's round trip. The proxy runs in a child process, so its threads
do not take the GIL from the listing being timed (``--proxy-in-process`` to compare). Contenders,
in alternating order over ``--rounds`` rounds (reversed every other round), each with a fresh
:class:`~pipeline.store.storage.S3Storage` whose client is made before the clock starts:

- ``sequential``: :meth:`S3Storage.list(prefix) <pipeline.store.storage.S3Storage.list>`, one
  ``ListObjectsV2`` page of 1,000 keys after the other (today's listing);
- ``listers=N`` for each N of ``--listers``: :class:`pipeline.store.s3_listing.S3Listing`
  ``(storage, prefix, listers=N)``, iterated to the end and closed.

Each listing must return every key exactly once. Reported per contender: keys/s (median over
rounds), seconds, ``ListObjectsV2`` requests the proxy saw (and, for ``S3Listing``, what its
``.requests`` says), this process's CPU per 1,000 keys, and the ratio to the sequential listing
(median of the per-round ratios, each against the sequential listing of the same round). Each
round first waits up to ``--wait-quiet`` s for other processes to use under ``--quiet-cores``
cores (:class:`benchmarks.common.LoadMonitor`); the cores they used during each listing are
reported. An untimed listing straight from the server (no proxy) warms its caches first.

    .venv/bin/python benchmarks/bench_listing.py                  # first run populates 100,000
    .venv/bin/python benchmarks/bench_listing.py --latency-ms 30 --json listing.json
    .venv/bin/python benchmarks/bench_listing.py --objects 10000 --names hashed --listers 1 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    LoadMonitor,
    cpu_model,
    json_args,
    median,
    rate,
    use_server_credentials,
    write_json,
)
from infra.local.fault_proxy import FaultProxy, ProxyRequest  # noqa: E402
from infra.local.object_store import SeaweedS3Server  # noqa: E402
from pipeline.store.s3 import S3Options  # noqa: E402
from pipeline.store.storage import S3Storage  # noqa: E402

BUCKET = "listing-bench"
MARKER_PREFIX = "_bench-listing/"
SEQUENTIAL = "sequential"
NAMING = ("sequential", "hashed")
#: Seconds between progress lines while populating.
PROGRESS_S = 10.0
#: Seconds the proxy child gets to start and to stop.
PROXY_START_S = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench-listing-store",
        help="the server's data, kept between invocations (default: %(default)s)",
    )
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--names", choices=NAMING, default="sequential", help="key naming")
    parser.add_argument("--put-threads", type=int, default=8, help="PUTs in flight (population)")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="per request, at the proxy")
    parser.add_argument("--listers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quiet-cores", type=float, default=0.15)
    parser.add_argument("--wait-quiet", type=float, default=10.0, help="max s, before each round")
    parser.add_argument(
        "--proxy-in-process", action="store_true", help="run the proxy in this process"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.objects < 1 or args.put_threads < 1 or args.rounds < 1 or min(args.listers) < 1:
        parser.error("--objects, --put-threads, --rounds and --listers must be at least 1")
    return args


# ---------------------------------------------------------------------------------- the objects
def object_key(i: int, names: str) -> str:
    """The ``i``-th key under the set's prefix."""
    if names == "hashed":
        return hashlib.md5(str(i).encode()).hexdigest() + ".jpg"
    return f"images/{i:07d}.jpg"


def set_prefix(args: argparse.Namespace) -> str:
    return f"{args.names}-{args.objects}/"


def marker_key(args: argparse.Namespace) -> str:
    return f"{MARKER_PREFIX}{args.names}-{args.objects}.json"


def read_marker(client, args: argparse.Namespace) -> dict | None:
    try:
        body = client.get_object(Bucket=BUCKET, Key=marker_key(args))["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


def populate(server: SeaweedS3Server, args: argparse.Namespace) -> dict:
    """Write the set unless its marker says it is complete; what was done, and how fast."""
    client = server.client(max_pool_connections=args.put_threads)
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", ())}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
    marker = read_marker(client, args)
    if marker is not None and marker.get("count") == args.objects:
        print(
            f"s3://{BUCKET}/{set_prefix(args)}: {args.objects:,} objects already there "
            f"(populated {marker.get('date')}, {marker.get('puts_per_s', float('nan')):.0f} "
            "PUTs/s); population skipped",
            flush=True,
        )
        return {"skipped": True, "marker": marker}

    prefix = set_prefix(args)
    done = 0
    lock = threading.Lock()
    print(
        f"populating s3://{BUCKET}/{prefix} with {args.objects:,} objects, "
        f"{args.put_threads} PUTs in flight",
        flush=True,
    )

    def put_every(start: int) -> None:
        nonlocal done
        for i in range(start, args.objects, args.put_threads):
            client.put_object(Bucket=BUCKET, Key=prefix + object_key(i, args.names), Body=b"%d" % i)
            with lock:
                done += 1

    started = time.perf_counter()
    next_report = started + PROGRESS_S
    with ThreadPoolExecutor(args.put_threads, thread_name_prefix="put") as pool:
        futures = [pool.submit(put_every, start) for start in range(args.put_threads)]
        while not all(f.done() for f in futures):
            time.sleep(0.2)
            if time.perf_counter() >= next_report:
                next_report += PROGRESS_S
                elapsed = time.perf_counter() - started
                print(f"  {done:,} PUTs in {elapsed:.0f} s ({done / elapsed:.0f}/s)", flush=True)
        for future in futures:
            future.result()
    seconds = time.perf_counter() - started
    marker = {
        "count": args.objects,
        "names": args.names,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": round(seconds, 1),
        "puts_per_s": round(rate(args.objects, seconds), 1),
        "put_threads": args.put_threads,
    }
    client.put_object(Bucket=BUCKET, Key=marker_key(args), Body=json.dumps(marker).encode())
    print(
        f"populated {args.objects:,} objects in {seconds:.1f} s "
        f"({marker['puts_per_s']:.0f} PUTs/s)",
        flush=True,
    )
    return {"skipped": False, "marker": marker}


# ---------------------------------------------------------------------------------- the proxy
def _proxy_child(conn, upstream: str, latency_s: float) -> None:
    """The proxy's process: serves until told to stop; ``take`` answers the requests seen
    since the last ``take`` and forgets them."""
    with FaultProxy(upstream, latency_s=latency_s, record=True) as proxy:
        conn.send(proxy.endpoint_url)
        while (command := conn.recv()) != "stop":
            if command == "take":
                taken = proxy.requests()
                proxy.reset_stats()
                conn.send(taken)
    conn.send("stopped")


class ProxyProcess:
    """A recording :class:`FaultProxy` in a child process (``spawn``: this one has threads)."""

    def __init__(self, upstream: str, latency_s: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_proxy_child, args=(child_conn, upstream, latency_s), daemon=True
        )
        self._process.start()
        if not self._conn.poll(PROXY_START_S):
            self._process.kill()
            raise RuntimeError("the proxy process did not start")
        self.endpoint_url: str = self._conn.recv()

    def take_requests(self) -> list[ProxyRequest]:
        self._conn.send("take")
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send("stop")
        if self._conn.poll(PROXY_START_S):
            self._conn.recv()
        self._process.join(PROXY_START_S)
        if self._process.is_alive():
            self._process.kill()


class InProcessProxy:
    """The same interface, the proxy's threads in this process."""

    def __init__(self, upstream: str, latency_s: float) -> None:
        self._proxy = FaultProxy(upstream, latency_s=latency_s, record=True).start()
        self.endpoint_url = self._proxy.endpoint_url

    def take_requests(self) -> list[ProxyRequest]:
        taken = self._proxy.requests()
        self._proxy.reset_stats()
        return taken

    def close(self) -> None:
        self._proxy.stop()


def is_listing(request: ProxyRequest) -> bool:
    """A ``ListObjectsV2``: a ``GET`` of the bucket with ``list-type``."""
    return (
        request.method == "GET"
        and request.path.strip("/") == BUCKET
        and "list-type" in request.params
    )


# ---------------------------------------------------------------------------------- listing
def s3_listing_class():
    """:class:`pipeline.store.s3_listing.S3Listing`, or ``None`` where it does not exist yet."""
    try:
        from pipeline.store.s3_listing import S3Listing
    except ImportError as exc:
        print(f"pipeline.store.s3_listing.S3Listing not importable ({exc})", flush=True)
        return None
    return S3Listing


def list_once(contender: str, storage: S3Storage, prefix_uri: str, listing_class) -> dict:
    """One listing, timed: the URIs (in the order listed), seconds, this process's CPU
    seconds and the requests the lister counted (``None`` for the sequential one)."""
    _ = storage.client  # made before the clock starts
    cpu0, t0 = time.process_time(), time.perf_counter()
    counters = {}
    if contender == SEQUENTIAL:
        uris = [info.uri for info in storage.list(prefix_uri)]
    else:
        listing = listing_class(storage, prefix_uri, listers=int(contender.split("=")[1]))
        try:
            uris = [info.uri for info in listing]
        finally:
            listing.close()
        counters = {
            name: getattr(listing, name, None)
            for name in ("requests", "ranges_started", "max_concurrent")
        }
    seconds = time.perf_counter() - t0
    return {
        "uris": uris,
        "seconds": seconds,
        "cpu_s": time.process_time() - cpu0,
        "counted_requests": counters.get("requests"),
        "ranges_started": counters.get("ranges_started"),
        "max_concurrent": counters.get("max_concurrent"),
    }


def measure(args, server, proxy, monitor: LoadMonitor, expected: set[str], listing_class):
    """``--rounds`` rounds of every contender through ``proxy``; the rows, one per listing."""
    prefix_uri = f"s3://{BUCKET}/{set_prefix(args)}"
    contenders = [SEQUENTIAL]
    if listing_class is not None:
        contenders += [f"listers={n}" for n in args.listers]
    options = S3Options(endpoint_url=proxy.endpoint_url, region=server.region)
    pool = max([16, *args.listers])
    rows = []
    for round_index in range(args.rounds):
        waited = monitor.wait_quiet(args.quiet_cores, args.wait_quiet, float("inf"))
        order = contenders if round_index % 2 == 0 else contenders[::-1]
        for contender in order:
            storage = S3Storage(options, max_pool_connections=pool)
            proxy.take_requests()  # only this listing's requests are counted
            t0 = time.perf_counter()
            found = list_once(contender, storage, prefix_uri, listing_class)
            t1 = time.perf_counter()
            monitor.wait_past(t1)
            requests = proxy.take_requests()
            uris = found.pop("uris")
            correct = len(uris) == len(expected) and set(uris) == expected
            load = monitor.interval(t0, t1)
            row = {
                "round": round_index + 1,
                "contender": contender,
                "keys": len(uris),
                "correct": correct,
                **found,
                "keys_per_s": rate(len(uris), found["seconds"]),
                "list_requests": sum(map(is_listing, requests)),
                "other_requests": sum(not is_listing(r) for r in requests),
                "cpu_ms_per_1000_keys": 1e6 * found["cpu_s"] / max(len(uris), 1),
                "foreign_cores": load["foreign_cores"],
                "waited_quiet_s": waited,
            }
            rows.append(row)
            counted = row["counted_requests"]
            print(
                f"  round {row['round']}, {contender:>11}: {row['keys']:,} keys in "
                f"{row['seconds']:.2f} s = {row['keys_per_s']:,.0f} keys/s, "
                f"{row['list_requests']} LIST"
                + (
                    f" (lister: {counted} requests, {row['ranges_started']} ranges, "
                    f"{row['max_concurrent']} at once)"
                    if counted is not None
                    else ""
                )
                + f", {row['cpu_ms_per_1000_keys']:.0f} CPU ms/1000 keys, other processes "
                f"{row['foreign_cores']:.2f} cores" + ("" if correct else "  WRONG KEYS"),
                flush=True,
            )
    return contenders, rows


def summarise(contenders: list[str], rows: list[dict]) -> dict:
    sequential = {r["round"]: r["keys_per_s"] for r in rows if r["contender"] == SEQUENTIAL}
    summary = {}
    for contender in contenders:
        mine = [r for r in rows if r["contender"] == contender]
        ratios = [r["keys_per_s"] / sequential[r["round"]] for r in mine]
        summary[contender] = {
            "keys_per_s": median([r["keys_per_s"] for r in mine]),
            "seconds": median([r["seconds"] for r in mine]),
            "list_requests": median([r["list_requests"] for r in mine]),
            "counted_requests": mine[0]["counted_requests"],
            "ranges_started": median([r["ranges_started"] or 0 for r in mine]),
            "cpu_ms_per_1000_keys": median([r["cpu_ms_per_1000_keys"] for r in mine]),
            "foreign_cores_max": max(r["foreign_cores"] for r in mine),
            "ratio_to_sequential": median(ratios),
            "ratios": ratios,
            "all_correct": all(r["correct"] for r in mine),
        }
    return summary


def print_table(report: dict) -> None:
    machine = report["machine"]
    print(
        f"\n{report['objects']:,} objects ({report['names']} names), {report['latency_ms']:g} ms "
        f"per request at the proxy; {report['rounds']} rounds, medians; "
        f"CPU {machine['cpu']} ({machine['cores']} cores); {report['date']}\n"
    )
    print(
        "| listing | keys/s | s | LIST requests | CPU ms / 1000 keys | vs sequential "
        "| other processes (max cores) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for contender, row in report["summary"].items():
        name = "`S3Storage.list`" if contender == SEQUENTIAL else f"`S3Listing` {contender}"
        print(
            f"| {name} | {row['keys_per_s']:,.0f} | {row['seconds']:.2f} "
            f"| {row['list_requests']:,.0f} | {row['cpu_ms_per_1000_keys']:.0f} "
            f"| {row['ratio_to_sequential']:.2f}x | {row['foreign_cores_max']:.2f} |"
            + ("" if row["all_correct"] else " WRONG KEYS")
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict = {
        "parameters": json_args(args),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
        "objects": args.objects,
        "names": args.names,
        "latency_ms": args.latency_ms,
        "rounds": args.rounds,
    }
    print(f"CPU: {report['machine']['cpu']} ({report['machine']['cores']} cores)", flush=True)
    monitor = LoadMonitor().start()
    try:
        with SeaweedS3Server(args.data_dir) as server:
            use_server_credentials(server)
            report["population"] = populate(server, args)

            prefix_uri = f"s3://{BUCKET}/{set_prefix(args)}"
            expected = {prefix_uri + object_key(i, args.names) for i in range(args.objects)}
            direct = S3Storage(S3Options(endpoint_url=server.endpoint_url, region=server.region))
            warm = list_once(SEQUENTIAL, direct, prefix_uri, None)
            if set(warm["uris"]) != expected:
                raise SystemExit(
                    f"{prefix_uri} holds {len(warm['uris']):,} keys, not the {args.objects:,} "
                    f"expected: delete {marker_key(args)} (or --data-dir) and run again"
                )
            report["direct_sequential"] = {
                "seconds": warm["seconds"],
                "keys_per_s": rate(len(warm["uris"]), warm["seconds"]),
            }
            print(
                f"warm-up, straight from the server (no proxy): {len(warm['uris']):,} keys in "
                f"{warm['seconds']:.2f} s ({report['direct_sequential']['keys_per_s']:,.0f} "
                "keys/s)",
                flush=True,
            )
            del warm

            listing_class = s3_listing_class()
            make_proxy = InProcessProxy if args.proxy_in_process else ProxyProcess
            proxy = make_proxy(server.endpoint_url, args.latency_ms / 1000)
            try:
                contenders, rows = measure(args, server, proxy, monitor, expected, listing_class)
            finally:
                proxy.close()
    finally:
        monitor.stop()
    report["rows"] = rows
    report["summary"] = summarise(contenders, rows)
    print_table(report)
    if args.json:
        write_json(args.json, report)
    return 0 if all(row["all_correct"] for row in report["summary"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
