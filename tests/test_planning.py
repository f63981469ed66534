"""Streaming, checkpointed planning (``pipeline.run.planner``) and automatic shard sizes.

- The planner offers a shard to dispatch only once a written checkpoint covers it, so a
  driver killed at any moment never dispatched a shard that a resume plans again.
- A planner stopped midway (files of a killed driver's unfinished writes left beyond the
  checkpoint) resumes from its checkpoint: every object of the source in exactly one shard,
  in source order; a source that changed under the checkpoint is refused with the fix.
- Automatic shard sizes give every actor several shards (the 640-image folder of two actors
  is not one shard of 640: it is listed whole before the first cut, and cut evenly), within
  their bounds, in whole batches.
- An incremental plan stopped after some compared chunks resumes from its checkpoint: the
  objects to process planned exactly once, the counts and the tombstones those of the whole
  listing.
- Progress shows the listing (objects listed, their rate) beside the processing while both go
  on, in the line and in ``_status.json``; the ETA waits for the listing's end.
- The driver SIGKILLed mid-listing of an S3 prefix, then ``--resume``: the listing goes on
  from the checkpoint's key (the store's requests show it), and the tables hold every object
  exactly once.
"""

# The fixture imported from test_pipeline_e2e is used as a test argument (F811 there).
# ruff: noqa: F811

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from infra.local.fault_proxy import FaultProxy
from pipeline.run import incremental
from pipeline.run.incremental import DeltaListing
from pipeline.run.plan import PlanCheckpoint, read_checkpoint, read_plan_summary, read_shard
from pipeline.run.planner import Planner
from pipeline.run.progress import ProgressReporter, RunProgress, format_progress
from pipeline.run.shard_sizing import (
    MAX_SHARD_SIZE,
    MIN_SHARD_SIZE,
    TARGET_SHARDS_PER_ACTOR,
    ShardSizer,
)
from pipeline.store.layout import IMAGES_TABLE, TOMBSTONES_TABLE, OutputLayout
from pipeline.store.ledger import Ledger, ShardCounts, new_attempt_token
from pipeline.store.listing import Listing, SourceChangedError, open_listing
from pipeline.store.sources import open_source
from pipeline.store.storage import LocalStorage
from pipeline.store.tables import ResultTables
from tests.reliability import Outcome, record, tally
from tests.shard_attempts import run_record, shard_tables, write_attempt
from tests.test_pipeline_e2e import (  # noqa: F401  (fixture: reference)
    Input,
    assert_run_results,
    cli_env,
    reference,
    run_args,
)
from tests.test_pipeline_faults import wait_for
from tests.test_reliability_process import image_rows, kill_driver, run_dirs

RUN_ID = "20261206T120000Z-plan01"
#: Seconds :func:`run_to_end` waits for a planner at most.
PLAN_TIMEOUT_S = 60.0


def make_folder(root: Path, count: int) -> list[str]:
    """``count`` empty ``.jpg`` files in a few nested folders; their paths in listing order."""
    for i in range(count):
        path = root / f"d{i // 50:02d}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return [str(root / f"d{i // 50:02d}" / f"{i:05d}.jpg") for i in range(count)]


def planner_for(output: Path, source: Path, *, sizer: ShardSizer, start=None, **kwargs) -> Planner:
    storage, layout = LocalStorage(), OutputLayout(str(output))
    resume = start.listing if start is not None else None
    return Planner(
        open_listing(open_source(str(source)), resume),
        storage=storage,
        layout=layout,
        run_id=RUN_ID,
        source=str(source),
        sizer=sizer,
        start=start,
        **kwargs,
    )


def run_to_end(planner: Planner) -> list[int]:
    taken: list[int] = []
    deadline = time.monotonic() + PLAN_TIMEOUT_S
    while not planner.finished:
        assert time.monotonic() < deadline, "planning did not finish"
        planner.wait(0.2)
        taken.extend(planner.take())
    taken.extend(planner.take())
    return taken


def planned_uris(output: Path, num_shards: int) -> list[str]:
    storage, layout = LocalStorage(), OutputLayout(str(output))
    return [
        obj.uri for s in range(num_shards) for obj in read_shard(storage, layout, RUN_ID, s)
    ]


def fixed(size: int) -> ShardSizer:
    return ShardSizer(fixed=size, batch_size=1, actors=1)


# --------------------------------------------------------------------------- the planner


def test_shards_are_offered_only_once_a_written_checkpoint_covers_them(tmp_path):
    uris = make_folder(tmp_path / "src", 230)
    output = tmp_path / "out"
    planner = planner_for(output, tmp_path / "src", sizer=fixed(10)).start()
    storage, layout = LocalStorage(), OutputLayout(str(output))
    offered: list[int] = []
    deadline = time.monotonic() + PLAN_TIMEOUT_S
    while not planner.finished and time.monotonic() < deadline:
        planner.wait(0.05)
        ids = planner.take()
        if ids:
            checkpoint = read_checkpoint(storage, layout, RUN_ID)
            assert checkpoint is not None and checkpoint.shards > max(ids)
            offered.extend(ids)
    offered.extend(planner.take())
    summary = read_plan_summary(storage, layout, RUN_ID)
    assert (summary.num_shards, summary.num_images, summary.shard_size) == (23, 230, 10)
    assert offered == list(range(23))
    assert planned_uris(output, 23) == uris


def test_a_stopped_planner_resumes_from_its_checkpoint_with_every_object_once(tmp_path):
    uris = make_folder(tmp_path / "src", 347)
    output = tmp_path / "out"
    storage, layout = LocalStorage(), OutputLayout(str(output))
    # A window of 3 untaken shards holds the listing back: it is mid-listing when stopped.
    first = planner_for(output, tmp_path / "src", sizer=fixed(9), window=3).start()
    taken: list[int] = []
    while len(taken) < 3:
        first.wait(0.2)
        taken.extend(first.take())
    first.stop()
    checkpoint = read_checkpoint(storage, layout, RUN_ID)
    assert 3 <= checkpoint.shards < 347 // 9, checkpoint
    assert read_plan_summary(storage, layout, RUN_ID) is None
    # A killed driver may leave plan files past the checkpoint: they are planned again.
    for junk in range(checkpoint.shards, checkpoint.shards + 3):
        Path(layout.plan_shard(RUN_ID, junk)).write_bytes(b"half written")

    second = planner_for(output, tmp_path / "src", sizer=fixed(9), start=checkpoint).start()
    resumed = run_to_end(second)
    summary = read_plan_summary(storage, layout, RUN_ID)
    assert summary.num_images == 347
    assert resumed == list(range(summary.num_shards))  # earlier shards offered again first
    assert planned_uris(output, summary.num_shards) == uris


def test_a_source_that_changed_under_the_checkpoint_is_refused(tmp_path):
    make_folder(tmp_path / "src", 120)
    output = tmp_path / "out"
    first = planner_for(output, tmp_path / "src", sizer=fixed(10), window=2).start()
    while not first.take():
        first.wait(0.2)
    first.stop()
    checkpoint = read_checkpoint(LocalStorage(), OutputLayout(str(output)), RUN_ID)
    assert checkpoint.listing["position"] >= 10
    (tmp_path / "src" / "d00" / "00003.jpg").unlink()
    second = planner_for(output, tmp_path / "src", sizer=fixed(10), start=checkpoint).start()
    with pytest.raises(SourceChangedError, match="start a new run"):
        run_to_end(second)


class _FailingListing(Listing):
    def __iter__(self):
        from pipeline.store.sources import SourceObject

        for i in range(25):
            self.objects_seen += 1
            yield SourceObject(f"/x/{i}.jpg")
        raise OSError("the listing broke")

    def checkpoint(self) -> dict:
        return {"kind": "test", "position": self.objects_seen}


def test_a_listing_error_reaches_the_dispatcher(tmp_path):
    planner = Planner(
        _FailingListing(),
        storage=LocalStorage(),
        layout=OutputLayout(str(tmp_path)),
        run_id=RUN_ID,
        source="/x",
        sizer=fixed(10),
    ).start()
    with pytest.raises(OSError, match="the listing broke"):
        run_to_end(planner)


# --------------------------------------------------------------------------- shard sizes


def test_automatic_shard_sizes_have_bounds_and_whole_batches():
    sizer = ShardSizer(fixed=None, batch_size=1, actors=4)
    assert sizer.size(1) == MIN_SHARD_SIZE
    assert sizer.size(10**9) == MAX_SHARD_SIZE
    assert sizer.size(4 * TARGET_SHARDS_PER_ACTOR * 100) == 100
    assert ShardSizer(fixed=None, batch_size=12, actors=1).size(100) == 36  # 32 -> 3 batches
    assert ShardSizer(fixed=7, batch_size=12, actors=64).size(10**9) == 7


def test_the_640_image_folder_gives_each_of_two_actors_several_shards(tmp_path):
    uris = make_folder(tmp_path / "src", 640)
    output = tmp_path / "out"
    sizer = ShardSizer(fixed=None, batch_size=8, actors=2)
    planner = planner_for(output, tmp_path / "src", sizer=sizer).start()
    run_to_end(planner)
    summary = planner.summary
    sizes = [
        len(read_shard(LocalStorage(), OutputLayout(str(output)), RUN_ID, s))
        for s in range(summary.num_shards)
    ]
    # Listed whole before the first cut (a folder lists fast): even shards from the count.
    assert sizes == [640 // (2 * TARGET_SHARDS_PER_ACTOR)] * (2 * TARGET_SHARDS_PER_ACTOR)
    assert planned_uris(output, summary.num_shards) == uris


# --------------------------------------------------------------------------- a killed driver

#: Objects of the S3 job, shards of SHARD_SIZE, and the pause after each plan shard that
#: keeps the driver mid-listing long enough to kill it there.
S3_JOB_IMAGES = 48
S3_SHARD_SIZE = 4
PLAN_SHARD_DELAY_S = 0.5


def list_requests(proxy: FaultProxy, bucket: str, key_prefix: str) -> list[dict]:
    """The ListObjectsV2 requests of ``key_prefix`` the proxy saw (their parameters)."""
    out = []
    for request in proxy.requests():
        params = request.params
        if (
            request.method == "GET"
            and request.path.strip("/") == bucket
            and params.get("list-type") == "2"
            and params.get("prefix", "").startswith(key_prefix)
        ):
            out.append(params)
    return out


@pytest.mark.slow
def test_driver_killed_mid_listing_resumes_the_listing_from_its_checkpoint(
    cli, cache, s3_server, s3_env, s3_prefix, sample_images, reference, tmp_path
):
    client = s3_server.client()
    bucket, base = s3_prefix.removeprefix("s3://").split("/", 1)
    expected = {}
    for i in range(S3_JOB_IMAGES):
        item = Input(f"photos/img-{i:03d}.jpg", photo=i % 2)
        client.put_object(Bucket=bucket, Key=base + item.key, Body=item.data(sample_images))
        expected[f"{s3_prefix}{item.key}"] = item
    source, output = f"{s3_prefix}photos/", tmp_path / "results"
    args = run_args(source, output, "--shard-size", str(S3_SHARD_SIZE), "--actors", "1")
    with FaultProxy(s3_server.endpoint_url, record=True) as proxy:
        env = cli_env(cache, s3=s3_server, faults={"plan_shard_delay_s": PLAN_SHARD_DELAY_S})
        env["AWS_ENDPOINT_URL"] = proxy.endpoint_url
        run = cli.start(args, env)

        def checkpointed_shards() -> int:
            found = list(output.glob("_runs/*/plan-checkpoint.json"))
            return json.loads(found[0].read_text())["shards"] if found else 0

        wait_for(lambda: checkpointed_shards() >= 3, run, "a checkpoint of three shards")
        kill_driver(run)
        (run_dir,) = run_dirs(output)
        assert not (run_dir / "plan.json").exists(), "the kill landed after planning finished"
        checkpoint = json.loads((run_dir / "plan-checkpoint.json").read_text())
        (resume_range,) = checkpoint["listing"]["ranges"]["ranges"]
        resume_after = resume_range[0]
        assert resume_after.startswith(f"{base}photos/img-"), checkpoint

        proxy.reset_stats()
        env.pop("YOLO_BATCH_FAULTS")
        final = cli.run([*args, "--resume"], env)
        assert final.returncode == 0, final.describe()
        requests = list_requests(proxy, bucket, f"{base}photos/")
    # The run's own listing starts after the checkpoint's key; the one request without a
    # start is the preflight's check that the source can be read (one page).
    resumed = [p for p in requests if "start-after" in p]
    assert resumed and all(p["start-after"] >= resume_after for p in resumed), requests
    assert len(requests) - len(resumed) == 1, requests
    assert min(urllib.parse.unquote(p["start-after"]) for p in resumed) == resume_after

    run_id = run_dir.name
    assert_run_results(str(output), expected, reference, run_id)
    lost, duplicated = tally(image_rows(output, run_id), expected)
    run_record = json.loads((run_dir / "run.json").read_text())
    assert (run_record["num_images"], run_record["status"]) == (S3_JOB_IMAGES, "succeeded")
    status = json.loads((output / "_status.json").read_text())
    assert (status["listing_done"], status["objects_listed"]) == (True, S3_JOB_IMAGES)
    record(
        Outcome(
            area="process faults",
            case="driver SIGKILLed mid-listing of an S3 prefix, then resumed",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=(
                f"listing resumed after {checkpoint['shards']} checkpointed shards, from the "
                "checkpoint's key; completed"
            ),
        )
    )


# --------------------------------------------------------------------------- incremental


EARLIER_RUN = "20261205T120000Z-early1"
#: Of the 300 listed files: 0-199 were processed before (every tenth since changed), 200-299
#: are new; five URIs processed before are gone.
LISTED, PROCESSED_BEFORE, CHANGE_EVERY, GONE = 300, 200, 10, 5


def commit_earlier_run(output: Path, source: Path, uris: list[str]) -> set[str]:
    """An earlier committed run of ``source`` over its first files (some with an older ETag)
    and a few that are gone; returns the URIs it processed that are gone now."""
    storage = LocalStorage()
    etags = {info.uri: info.etag for info in storage.list(str(source))}
    gone = [str(source / f"gone-{k}.jpg") for k in range(GONE)]
    earlier = uris[:PROCESSED_BEFORE] + gone
    tables = shard_tables(EARLIER_RUN, 0, earlier, errors=0)
    tables[IMAGES_TABLE] = tables[IMAGES_TABLE].set_column(
        tables[IMAGES_TABLE].schema.get_field_index("etag"),
        "etag",
        pa.array(
            [
                "older" if i % CHANGE_EVERY == 0 else etags.get(uri, "x")
                for i, uri in enumerate(earlier)
            ],
            pa.string(),
        ),
    )
    files = write_attempt(storage, str(output), EARLIER_RUN, 0, new_attempt_token(1), tables)
    results = ResultTables(str(output))
    results.create()
    results.commit_shards(EARLIER_RUN, [files])
    record = run_record(EARLIER_RUN, str(output))
    record.source = str(source)
    Ledger(storage, OutputLayout(str(output))).write_run(record)
    return set(gone)


def delta_planner(output: Path, source: Path, *, start=None, window=1 << 30) -> Planner:
    storage, layout = LocalStorage(), OutputLayout(str(output))
    listing = DeltaListing(
        open_listing(open_source(str(source)), start.listing if start else None),
        ResultTables(str(output)),
        [EARLIER_RUN],
        run_id=RUN_ID,
        storage=storage,
        layout=layout,
        resume=start.extra if start else None,
    )
    return Planner(
        listing,
        storage=storage,
        layout=layout,
        run_id=RUN_ID,
        source=str(source),
        sizer=fixed(7),
        start=start,
        window=window,
        extra=listing.counts_state,
    )


def test_an_incremental_plan_resumed_mid_listing_plans_the_delta_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(incremental, "FIRST_CHUNK_OBJECTS", 20)
    monkeypatch.setattr(incremental, "MAX_CHUNK_OBJECTS", 40)
    source, output = tmp_path / "src", tmp_path / "out"
    uris = make_folder(source, LISTED)
    gone = commit_earlier_run(output, source, uris)
    storage, layout = LocalStorage(), OutputLayout(str(output))

    first = delta_planner(output, source, window=4).start()
    deadline = time.monotonic() + PLAN_TIMEOUT_S
    while (read_checkpoint(storage, layout, RUN_ID) or PlanCheckpoint()).extra.get(
        "chunks", 0
    ) < 2:
        assert time.monotonic() < deadline, "no checkpoint after two chunks"
        first.wait(0.1)
        first.take()
    first.stop()
    checkpoint = read_checkpoint(storage, layout, RUN_ID)
    assert not checkpoint.extra["done"] and checkpoint.objects_listed < LISTED, checkpoint

    second = delta_planner(output, source, start=checkpoint)
    run_to_end(second.start())
    counts = second.listing.counts
    assert (counts.objects_listed, counts.objects_new, counts.objects_changed) == (
        LISTED,
        LISTED - PROCESSED_BEFORE,
        PROCESSED_BEFORE // CHANGE_EVERY,
    )
    assert (counts.objects_unchanged, counts.objects_deleted) == (
        PROCESSED_BEFORE - PROCESSED_BEFORE // CHANGE_EVERY,
        GONE,
    )
    wanted = [
        uri for i, uri in enumerate(uris) if i >= PROCESSED_BEFORE or i % CHANGE_EVERY == 0
    ]
    assert planned_uris(output, second.summary.num_shards) == wanted  # each once, in order
    tombstones = DeltaTable(str(output / TOMBSTONES_TABLE)).to_pyarrow_table().to_pylist()
    assert {row["image_uri"] for row in tombstones if row["run_id"] == RUN_ID} == gone


# --------------------------------------------------------------------------- progress


def test_progress_shows_the_listing_beside_the_processing_while_both_go_on(tmp_path):
    progress = RunProgress("r1", state="running", images_total=4_000, shards_total=40)
    progress.objects_listed, progress.objects_listed_per_second = 12_345, 2_500.0
    counts = ShardCounts(images=100, ok=99, errors=1, detections=7)
    progress.add_committed(counts, this_session=True)
    line = format_progress(progress)
    assert line.startswith("listing 12,345 objects 2,500/s | running: 100/4,000+ images"), line
    assert "shards 1/40+" in line and "ETA --" in line, line
    storage = LocalStorage()
    ProgressReporter(progress, storage=storage, status_uri=str(tmp_path / "s.json")).tick(
        force=True
    )
    status = json.loads((tmp_path / "s.json").read_text())
    assert (status["objects_listed"], status["listing_done"]) == (12_345, False)
    assert status["objects_listed_per_second"] == 2_500.0 and status["eta_seconds"] is None

    progress.listing_done = True
    line = format_progress(progress)
    assert line.startswith("running: 100/4,000 images") and "shards 1/40 " in line, line
    assert "ETA --" not in line, line
