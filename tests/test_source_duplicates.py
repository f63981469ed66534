"""A source that lists a URI more than once: each URI planned and processed once.

A manifest may list a URI twice (an S3 Inventory of a versioned bucket lists each key once per
version). Planning keeps each URI's first entry and counts the others; the count reaches the
run record (``duplicates``), ``_status.json``, ``yolo-batch status`` and the line the run
prints at its end.

- The set of URIs seen is exact: equal URIs found in one batch and across batches, and URIs
  whose digests share their high 64 bits kept apart.
- A manifest planned with a stop mid-listing and a resume from the checkpoint, with
  duplicates on both sides of it: every URI in exactly one shard, in first-listing order, and
  the count that of the whole manifest. An incremental plan compares each URI once.
- A local manifest listing one image twice (once by a relative, once by an absolute path) and
  another three times, through ``yolo-batch run``: one ``images`` row per URI, ``detections``
  rows equal to ``num_detections``; after a second run of the same manifest, the export holds
  each image once with the latest run's detections.
- The same on an S3 manifest, with the driver SIGKILLed mid-planning and resumed, duplicates
  before and after the checkpoint.
"""

# The fixture imported from test_pipeline_e2e is used as a test argument (F811 there).
# ruff: noqa: F811

from __future__ import annotations

import collections
import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.results.export import export_results
from pipeline.results.query import query
from pipeline.run.incremental import DeltaListing
from pipeline.run.plan import read_checkpoint, read_plan_summary, read_shard
from pipeline.run.planner import Planner
from pipeline.run.shard_sizing import ShardSizer
from pipeline.store.layout import OutputLayout
from pipeline.store.listing import open_listing
from pipeline.store.sources import open_source
from pipeline.store.storage import LocalStorage
from pipeline.store.tables import ResultTables
from tests.reliability import Outcome, record, tally
from tests.test_pipeline_e2e import (  # noqa: F401  (fixture: reference)
    QUICK_TIMEOUT_S,
    Input,
    assert_run_results,
    cli_command,
    cli_env,
    reference,
    run_args,
    write_local_source,
)
from tests.test_pipeline_faults import wait_for
from tests.test_reliability_process import image_rows, kill_driver, run_dirs

RUN_ID = "20261206T120000Z-dupl01"
#: Seconds the planner tests wait for planning at most.
PLAN_TIMEOUT_S = 60.0
AREA = "hostile input"


def expected_uris(entries: list[str]) -> tuple[list[str], int]:
    """The URIs of ``entries`` once each, in first-listing order, and the duplicates."""
    unique = list(dict.fromkeys(entries))
    return unique, len(entries) - len(unique)


# --------------------------------------------------------------------------- the set of URIs


def test_the_uris_seen_are_exact_in_a_batch_across_batches_and_on_half_equal_digests(
    monkeypatch,
):
    from pipeline.store import seen_uris

    rng = random.Random(18)

    def check(batches: int, universe: int) -> seen_uris.SeenUris:
        seen, reference_set = seen_uris.SeenUris(), set()
        for _ in range(batches):
            batch = [f"s3://b/k{rng.randrange(universe)}.jpg" for _ in range(rng.randrange(300))]
            expected = []
            for uri in batch:
                expected.append(uri not in reference_set)
                reference_set.add(uri)
            assert seen.add(batch).tolist() == expected
        assert len(seen) == len(reference_set)
        return seen

    seen = check(batches=400, universe=30_000)
    assert seen.runs <= 16 and seen.nbytes == 16 * len(seen)  # merged runs, 16 bytes each
    # Runs with a prefix directory (as large runs have) answer the same.
    monkeypatch.setattr(seen_uris, "DIRECTORY_MIN_ENTRIES", 64)
    seen = check(batches=400, universe=30_000)
    assert 16 * len(seen) < seen.nbytes < 17 * len(seen)  # the directories: 1/4 byte each
    # Digests whose high halves collide (three values for every URI) are still told apart.
    real = seen_uris.digests
    monkeypatch.setattr(seen_uris, "digests", lambda uris: (real(uris)[0] % 3, real(uris)[1]))
    check(batches=150, universe=3_000)
    monkeypatch.setattr(seen_uris, "DIRECTORY_MIN_ENTRIES", 1 << 30)
    check(batches=150, universe=3_000)


# --------------------------------------------------------------------------- planning


def planner_for(output: Path, manifest: Path, *, start=None, window=1 << 30) -> Planner:
    resume = start.listing if start is not None else None
    return Planner(
        open_listing(open_source(str(manifest)), resume),
        storage=LocalStorage(),
        layout=OutputLayout(str(output)),
        run_id=RUN_ID,
        source=str(manifest),
        sizer=ShardSizer(fixed=5, batch_size=1, actors=1),
        start=start,
        window=window,
    )


def run_to_end(planner: Planner) -> None:
    deadline = time.monotonic() + PLAN_TIMEOUT_S
    while not planner.finished:
        assert time.monotonic() < deadline, "planning did not finish"
        planner.wait(0.2)
        planner.take()


def test_a_manifest_resumed_mid_planning_plans_each_uri_once_with_duplicates_on_both_sides(
    tmp_path,
):
    # 120 URIs; the first ten listed again right away (before any checkpoint), the first
    # ten a third time and ten of the middle again at the end (after it).
    uris = [f"{tmp_path}/img/{i:04d}.jpg" for i in range(120)]
    entries = uris[:10] + uris[:10] + uris[10:] + uris[:10] + uris[50:60]
    manifest, output = tmp_path / "manifest.txt", tmp_path / "out"
    manifest.write_text("".join(f"{entry}\n" for entry in entries))
    storage, layout = LocalStorage(), OutputLayout(str(output))

    first = planner_for(output, manifest, window=3).start()  # 3 untaken shards hold it back
    deadline = time.monotonic() + PLAN_TIMEOUT_S
    taken = 0
    while taken < 6:
        assert time.monotonic() < deadline, "no six shards planned"
        first.wait(0.2)
        taken += len(first.take())
    first.stop()
    checkpoint = read_checkpoint(storage, layout, RUN_ID)
    position = checkpoint.listing["position"]
    assert 20 < position < 130, checkpoint  # past the first duplicates, before the last ones
    assert read_plan_summary(storage, layout, RUN_ID) is None

    second = planner_for(output, manifest, start=checkpoint)
    run_to_end(second.start())
    summary = read_plan_summary(storage, layout, RUN_ID)
    planned = [
        obj.uri for s in range(summary.num_shards) for obj in read_shard(storage, layout, RUN_ID, s)
    ]
    unique, duplicates = expected_uris(entries)
    assert planned == unique
    assert (summary.num_images, summary.duplicates) == (len(unique), duplicates) == (120, 30)
    assert checkpoint.duplicates == 10  # as of the checkpoint: the first ten listed again


def test_an_incremental_plan_compares_each_uri_of_a_manifest_once(tmp_path):
    uris = [f"{tmp_path}/img/{i:03d}.jpg" for i in range(40)]
    entries = uris + uris[::3] + uris[:5]
    manifest, output = tmp_path / "manifest.txt", tmp_path / "out"
    manifest.write_text("".join(f"{entry}\n" for entry in entries))
    storage, layout = LocalStorage(), OutputLayout(str(output))
    listing = DeltaListing(
        open_listing(open_source(str(manifest))),
        ResultTables(str(output)),
        [],
        run_id=RUN_ID,
        storage=storage,
        layout=layout,
    )
    planner = Planner(
        listing,
        storage=storage,
        layout=layout,
        run_id=RUN_ID,
        source=str(manifest),
        sizer=ShardSizer(fixed=7, batch_size=1, actors=1),
        extra=listing.counts_state,
    )
    run_to_end(planner.start())
    summary = planner.summary
    planned = [
        obj.uri for s in range(summary.num_shards) for obj in read_shard(storage, layout, RUN_ID, s)
    ]
    assert planned == uris
    assert (listing.counts.objects_listed, listing.counts.objects_new) == (40, 40)
    assert summary.duplicates == len(entries) - len(uris) == 19


def test_folders_pay_nothing_for_duplicates(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    listing = open_listing(open_source(str(tmp_path / "a")))
    assert [obj.uri for obj in listing] == [str(tmp_path / "a" / "x.jpg")]
    assert listing._seen is None and listing.duplicates == 0


# --------------------------------------------------------------------------- real runs


def coco_export(output: str, dest: Path, s3=None) -> dict:
    export_results(str(output), "coco", str(dest), s3_options=s3)
    return json.loads(dest.read_text())


def assert_export_holds_each_image_once(coco: dict, output: str, images: dict) -> None:
    """The COCO export has each image of ``images`` once, with as many boxes as its latest
    ``images`` row's ``num_detections``."""
    names = [image["file_name"] for image in coco["images"]]
    assert sorted(names) == sorted(images), "an image missing or exported twice"
    boxes = collections.Counter(a["image_id"] for a in coco["annotations"])
    latest = {
        row["image_uri"]: row["num_detections"]
        for row in query(output, "SELECT image_uri, num_detections FROM images").to_pylist()
    }
    for image in coco["images"]:
        assert boxes[image["id"]] == latest[image["file_name"]] > 0, image["file_name"]


def status_text(output, env) -> str:
    shown = subprocess.run(
        [*cli_command(), "status", str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_S,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


@pytest.mark.slow
def test_a_local_manifest_listing_uris_twice_and_three_times_processes_each_once(
    cli, cache, sample_images, reference, tmp_path
):
    source, output = tmp_path / "photos", tmp_path / "results"
    inputs = (Input("bus.jpg", photo=0), Input("zidane.jpg", photo=1), Input("b2.jpg", photo=0))
    expected = write_local_source(source, inputs, sample_images)
    bus, zidane, other = (str(source / item.key) for item in inputs)
    # bus twice (relative, then absolute path: one URI), zidane three times.
    manifest = tmp_path / "photos" / "manifest.txt"
    manifest.write_text(f"bus.jpg\n{zidane}\n{bus}\nzidane.jpg\n{other}\n./zidane.jpg\n")
    args = run_args(manifest, output, "--shard-size", "2", "--actors", "1")

    first = cli.run(args, cli_env(cache), QUICK_TIMEOUT_S)
    assert first.returncode == 0, first.describe()
    run_id = first.run_id
    images, detections = assert_run_results(str(output), expected, reference, run_id)
    per_image = collections.Counter(row["image_uri"] for row in detections)
    assert {row["image_uri"]: row["num_detections"] for row in images} == dict(per_image)
    assert "3/3 images" in first.stdout, first.stdout
    assert "3 duplicate URIs in the source were skipped" in first.stdout, first.stdout
    run_record = json.loads((output / "_runs" / run_id / "run.json").read_text())
    assert (run_record["duplicates"], run_record["num_images"]) == (3, 3)
    assert json.loads((output / "_status.json").read_text())["duplicates"] == 3
    runs = query(str(output), f"SELECT duplicates FROM runs WHERE run_id = '{run_id}'")
    assert runs.column(0).to_pylist() == [3]
    assert "3 URIs listed again in the source were skipped" in status_text(output, cli_env(cache))
    lost, duplicated = tally(image_rows(output, run_id), expected)

    # A second run of the same manifest: the export holds each image once, its latest result.
    second = cli.run(args, cli_env(cache), QUICK_TIMEOUT_S)
    assert second.returncode == 0, second.describe()
    assert sorted(image_rows(output, second.run_id)) == sorted(expected)
    coco = coco_export(str(output), tmp_path / "coco.json")
    assert_export_holds_each_image_once(coco, str(output), expected)
    record(
        Outcome(
            area=AREA,
            case="local manifest listing a URI twice (relative and absolute) and one three times",
            trials=2,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result="each URI processed once, 3 duplicates reported; export after a second "
            "run holds each image once",
        )
    )


#: The S3 job: unique images, shards of two, and the pause after each plan shard that keeps
#: the driver mid-planning long enough to kill it there.
S3_UNIQUE = 16
S3_SHARD_SIZE = 2
PLAN_SHARD_DELAY_S = 0.5


@pytest.mark.slow
def test_an_s3_manifest_with_duplicates_resumed_after_a_kill_mid_planning_processes_each_once(
    cli, cache, s3_server, s3_env, s3_prefix, sample_images, reference, tmp_path
):
    client = s3_server.client()
    bucket, base = s3_prefix.removeprefix("s3://").split("/", 1)
    expected, uris = {}, []
    for i in range(S3_UNIQUE):
        item = Input(f"photos/img-{i:02d}.jpg", photo=i % 2)
        client.put_object(Bucket=bucket, Key=base + item.key, Body=item.data(sample_images))
        uris.append(f"{s3_prefix}{item.key}")
        expected[uris[-1]] = item
    # img-00 twice before the checkpoint and a third time after it; img-03 after it.
    entries = [uris[0], uris[1], uris[0], *uris[2:], uris[3], uris[0]]
    late = len(entries) - 2  # entries before the late duplicates
    client.put_object(
        Bucket=bucket,
        Key=f"{base}lists/inventory.txt",
        Body="".join(f"{entry}\n" for entry in entries).encode(),
    )
    manifest, output = f"{s3_prefix}lists/inventory.txt", tmp_path / "results"
    args = run_args(manifest, output, "--shard-size", str(S3_SHARD_SIZE), "--actors", "1")
    env = cli_env(cache, s3=s3_server, faults={"plan_shard_delay_s": PLAN_SHARD_DELAY_S})
    run = cli.start(args, env)

    def checkpoint() -> dict | None:
        found = list(output.glob("_runs/*/plan-checkpoint.json"))
        return json.loads(found[0].read_text()) if found else None

    wait_for(lambda: (checkpoint() or {}).get("shards", 0) >= 3, run, "3 checkpointed shards")
    kill_driver(run)
    (run_dir,) = run_dirs(output)
    killed_at = checkpoint()
    assert not (run_dir / "plan.json").exists(), "the kill landed after planning finished"
    assert killed_at["listing"]["position"] < late, killed_at  # before the late duplicates

    env.pop("YOLO_BATCH_FAULTS")
    final = cli.run([*args, "--resume"], env, QUICK_TIMEOUT_S)
    assert final.returncode == 0, final.describe()
    run_id = run_dir.name
    images, detections = assert_run_results(str(output), expected, reference, run_id)
    per_image = collections.Counter(row["image_uri"] for row in detections)
    assert {row["image_uri"]: row["num_detections"] for row in images} == dict(per_image)
    assert "3 duplicate URIs in the source were skipped" in final.stdout, final.stdout
    run_record = json.loads((run_dir / "run.json").read_text())
    assert (run_record["duplicates"], run_record["num_images"]) == (3, S3_UNIQUE)
    assert killed_at["duplicates"] == 1  # img-00's second listing, before the kill
    assert json.loads((output / "_status.json").read_text())["duplicates"] == 3
    coco = coco_export(str(output), tmp_path / "coco.json")
    assert_export_holds_each_image_once(coco, str(output), expected)
    lost, duplicated = tally(image_rows(output, run_id), expected)
    record(
        Outcome(
            area=AREA,
            case="S3 manifest listing URIs twice and three times, driver SIGKILLed "
            "mid-planning between duplicates, then resumed",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"resumed after {killed_at['shards']} checkpointed shards; each URI "
            "processed once, 3 duplicates reported",
        )
    )
