"""``yolo-batch compact`` on a run of many small per-shard files: the rows stay exactly the same
while the files become few, the run's shards are still counted right (also when a compaction
stopped between the two tables), unreferenced files go once older than the retention, and it
refuses to run beside a job or on an output of an earlier version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.results.query import query
from pipeline.run.lease import Lease, LeaseHeldError
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, OutputLayout
from pipeline.store.ledger import Ledger
from pipeline.store.maintenance import COMPACT_MIN_FILES
from pipeline.store.storage import LocalStorage
from pipeline.store.tables import PARTITION_COLUMN, ResultTables
from pipeline.store.uris import join
from tests.shard_attempts import image_uris, run_record, shard_tables, write_attempt

RUN = "20260101T000000Z-aaaaaa"
#: Shards of RUN: enough small files for compaction to pay.
SHARDS = COMPACT_MIN_FILES + 4
IMAGES_PER_SHARD = 3
#: The shard with a second, uncommitted attempt (an orphan pair of files).
ORPHAN_SHARD = 5
IMAGES_SQL = "SELECT * FROM images ORDER BY image_uri"
DETECTIONS_SQL = "SELECT * FROM detections ORDER BY image_uri, class_id, score"


@pytest.fixture
def output(tmp_path: Path) -> str:
    """A run of :data:`SHARDS` committed shards (one file each per table), and an orphan
    attempt."""
    storage, output = LocalStorage(), str(tmp_path / "out")
    Ledger(storage, OutputLayout(output)).write_run(run_record(RUN, output))
    shards = []
    for shard_id in range(SHARDS):
        uris = image_uris(RUN, shard_id, IMAGES_PER_SHARD)
        tables = shard_tables(RUN, shard_id, uris, errors=shard_id % 2)
        shards.append(write_attempt(storage, output, RUN, shard_id, f"a1-{shard_id:08x}", tables))
    assert ResultTables(output).commit_shards(RUN, shards) == list(range(SHARDS))
    orphan = shard_tables(RUN, ORPHAN_SHARD, image_uris(RUN, ORPHAN_SHARD, 1, "orphan"))
    write_attempt(storage, output, RUN, ORPHAN_SHARD, "a2-0ddf11e5", orphan)
    return output


def data_files(output: str, table: str) -> set[str]:
    """The Parquet files on disk in RUN's partition of ``table``."""
    folder = Path(OutputLayout(output).table_dir(table, RUN))
    return {str(path) for path in folder.glob("*.parquet")}


def logged_files(output: str, table: str) -> set[str]:
    tables = ResultTables(output)
    return {join(tables.uri(table), p) for p in tables.run_files(table, RUN)["path"].to_pylist()}


def test_compact_keeps_every_row_in_fewer_files(output, capsys):
    images, detections = query(output, IMAGES_SQL), query(output, DETECTIONS_SQL)
    counts = ResultTables(output).committed_shards(RUN)
    assert len(counts) == SHARDS and images.num_rows == SHARDS * IMAGES_PER_SHARD
    orphans = {
        name: data_files(output, name) - logged_files(output, name)
        for name in (DETECTIONS_TABLE, IMAGES_TABLE)
    }
    assert all(len(files) == 1 for files in orphans.values())
    replaced = {name: logged_files(output, name) for name in (DETECTIONS_TABLE, IMAGES_TABLE)}
    assert all(len(files) == SHARDS for files in replaced.values())

    assert main(["compact", output]) == 0
    summary = capsys.readouterr().out
    assert f"detections {SHARDS} files into 1, images {SHARDS} files into 1" in summary, summary
    assert "0 unreferenced file(s) vacuumed" in summary, summary
    assert query(output, IMAGES_SQL).equals(images)
    assert query(output, DETECTIONS_SQL).equals(detections)
    assert ResultTables(output).committed_shards(RUN) == counts
    for name in (DETECTIONS_TABLE, IMAGES_TABLE):
        assert len(logged_files(output, name)) == 1
        # The retention (seven days) keeps the young files no log references any more.
        assert replaced[name] | orphans[name] <= data_files(output, name)

    assert main(["compact", output, "--retention-hours", "0"]) == 0
    summary = capsys.readouterr().out
    assert f"{2 * (SHARDS + 1)} unreferenced file(s) vacuumed" in summary, summary
    assert "0 run(s) compacted" in summary, summary
    for name in (DETECTIONS_TABLE, IMAGES_TABLE):
        assert data_files(output, name) == logged_files(output, name)
    assert query(output, IMAGES_SQL).equals(images)
    assert query(output, DETECTIONS_SQL).equals(detections)
    assert ResultTables(output).committed_shards(RUN) == counts


def test_shards_are_counted_right_when_compaction_stopped_between_the_tables(output):
    tables = ResultTables(output)
    counts = tables.committed_shards(RUN)
    tables.table(DETECTIONS_TABLE).optimize.compact(
        partition_filters=[(PARTITION_COLUMN, "=", RUN)]
    )
    assert len(logged_files(output, DETECTIONS_TABLE)) == 1
    assert len(logged_files(output, IMAGES_TABLE)) == SHARDS
    assert ResultTables(output).committed_shards(RUN) == counts


def test_compact_refuses_while_a_job_holds_the_output(output, capsys):
    lease = Lease(LocalStorage(), output, job="nightly")
    lease.acquire()
    try:
        lease.set_run_id(RUN)
        assert main(["compact", output, "--retention-hours", "0"]) == 1
        error = capsys.readouterr().err
        assert f"another run holds this output: run {RUN} of job nightly" in error, error
    finally:
        lease.release()
    assert len(logged_files(output, IMAGES_TABLE)) == SHARDS
    assert len(data_files(output, IMAGES_TABLE)) == SHARDS + 1


def test_a_job_is_refused_while_compact_holds_the_output(output):
    lease = Lease(LocalStorage(), output, command="compact")
    lease.acquire()
    try:
        with pytest.raises(LeaseHeldError, match=r"holds this output: `yolo-batch compact` \(pid"):
            Lease(LocalStorage(), output).acquire()
    finally:
        lease.release()


def test_compact_refuses_an_output_of_an_earlier_version(tmp_path, capsys):
    storage, output = LocalStorage(), str(tmp_path / "legacy")
    layout = OutputLayout(output)
    Ledger(storage, layout).write_run(run_record(RUN, output))
    marker = {"shard_id": 0, "attempt_token": "a1-00000000", "num_images": 1}
    storage.write_bytes(
        join(layout.commits_dir(RUN), "shard-000000.a1-00000000.json"), json.dumps(marker).encode()
    )
    assert main(["compact", output]) == 1
    assert f"`yolo-batch migrate {output}`" in capsys.readouterr().err
    assert not storage.exists(layout.lease)
