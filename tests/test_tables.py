"""The results tables' commit protocol on real Delta logs (local and on the test S3 server).

A shard's files become visible exactly once whatever happens around the commit: a commit
repeated after a lost reply, a second attempt at a committed shard, drivers racing to commit
the same shards, a driver killed between the ``detections`` claim and the ``images`` commit.
Counts come from the log's statistics, a query for one run reads only that run's partition,
and no credential reaches a log.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipeline.results.query import query
from pipeline.store.delta_stats import MAX_STRING_STAT_CHARS, file_stats
from pipeline.store.layout import DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE
from pipeline.store.ledger import ShardCounts
from pipeline.store.s3 import S3Options
from pipeline.store.schema import TOMBSTONE_SCHEMA
from pipeline.store.storage import LocalStorage, storage_for
from pipeline.store.tables import CHECKPOINT_INTERVAL, ResultTables
from pipeline.store.uris import parse_s3
from tests.shard_attempts import write_shard

RUN = "20261201T000000Z-aaaaaa"
OTHER_RUN = "20261202T000000Z-bbbbbb"
#: Drivers racing each other in the concurrency test.
RACING_DRIVERS = 4


@pytest.fixture
def output(tmp_path: Path) -> str:
    return str(tmp_path / "out")


def rows(output: str, sql: str) -> list[tuple]:
    table = query(output, sql)
    return sorted(zip(*(c.to_pylist() for c in table.columns)))


def image_uris_per_shard(output: str, run_id: str = RUN) -> dict[int, int]:
    table = query(
        output, f"SELECT shard_id, count(*) FROM all_images WHERE run_id = '{run_id}' GROUP BY 1"
    )
    return dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))


def test_committed_shards_are_counted_from_the_log_alone(output):
    storage, tables = LocalStorage(), ResultTables(output)
    shards = [write_shard(storage, output, RUN, s, images=3 + s, errors=s % 2) for s in range(4)]
    assert tables.commit_shards(RUN, [files for files, _ in shards]) == [0, 1, 2, 3]
    expected = {files.shard_id: counts for files, counts in shards}
    assert tables.committed_shards(RUN) == expected
    # The same counts from the rows themselves.
    assert image_uris_per_shard(output) == {s: c.images for s, c in expected.items()}
    ((dets,),) = rows(output, "SELECT count(*) FROM detections")
    assert dets == sum(c.detections for c in expected.values())
    # Two commits (detections claim, images commit) per batch, not per shard.
    assert DeltaTable(str(Path(output) / IMAGES_TABLE)).version() == 1


def test_a_repeated_commit_changes_nothing(output):
    """A commit whose reply was lost is repeated with the same files: nothing doubles."""
    storage, tables = LocalStorage(), ResultTables(output)
    batch = [write_shard(storage, output, RUN, s)[0] for s in range(3)]
    tables.commit_shards(RUN, batch)
    versions = {n: tables.table(n).version() for n in (DETECTIONS_TABLE, IMAGES_TABLE)}
    # A fresh driver (nothing cached) repeats the whole batch.
    assert ResultTables(output).commit_shards(RUN, batch) == []
    assert {n: ResultTables(output).table(n).version() for n in versions} == versions
    assert image_uris_per_shard(output) == {0: 4, 1: 4, 2: 4}


def test_a_second_attempt_at_a_committed_shard_stays_out(output):
    storage, tables = LocalStorage(), ResultTables(output)
    first, _ = write_shard(storage, output, RUN, 0)
    second, _ = write_shard(storage, output, RUN, 0, attempt=2)
    tables.commit_shards(RUN, [first])
    assert tables.commit_shards(RUN, [second]) == []
    paths = tables.run_files(IMAGES_TABLE, RUN).column("path").to_pylist()
    assert paths == [first.files[IMAGES_TABLE].uri.split("/images/")[1]]
    assert image_uris_per_shard(output) == {0: 4}
    # The stray attempt's files are orphans, removed at the run's end.
    assert tables.remove_orphans(RUN, storage) == 2
    assert not os.path.exists(second.files[IMAGES_TABLE].uri)
    assert os.path.exists(first.files[IMAGES_TABLE].uri)
    assert image_uris_per_shard(output) == {0: 4}


def test_racing_drivers_commit_each_shard_exactly_once(output):
    """Drivers that each ran every shard (their own attempt tokens) commit at the same time:
    every shard is visible once, from one attempt, in both tables."""
    storage = LocalStorage()
    ResultTables(output).create()
    batches = [
        [write_shard(storage, output, RUN, s, attempt=d + 1)[0] for s in range(6)]
        for d in range(RACING_DRIVERS)
    ]
    won: list[list[int]] = [[] for _ in range(RACING_DRIVERS)]
    failures: list[BaseException] = []
    start = threading.Barrier(RACING_DRIVERS)

    def driver(k: int) -> None:
        tables = ResultTables(output)
        start.wait()
        try:
            for shard in batches[k]:
                won[k] += tables.commit_shards(RUN, [shard])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=driver, args=(k,)) for k in range(RACING_DRIVERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert sorted(s for shards in won for s in shards) == list(range(6))
    assert image_uris_per_shard(output) == {s: 4 for s in range(6)}
    # Each shard's detections come from the attempt whose images were committed.
    tables = ResultTables(output)
    for name in (DETECTIONS_TABLE, IMAGES_TABLE):
        paths = tables.run_files(name, RUN).column("path").to_pylist()
        assert len(paths) == 6, name
    tokens = {
        name: sorted(p.split("/")[-1] for p in tables.run_files(name, RUN)["path"].to_pylist())
        for name in (DETECTIONS_TABLE, IMAGES_TABLE)
    }
    assert tokens[DETECTIONS_TABLE] == tokens[IMAGES_TABLE]
    ((dets,),) = rows(output, "SELECT count(*) FROM all_detections")
    assert dets == 6 * 3 * 2


def test_a_claim_left_by_a_killed_driver_is_completed_on_resume(output):
    storage, tables = LocalStorage(), ResultTables(output)
    done, _ = write_shard(storage, output, RUN, 0)
    claimed, counts = write_shard(storage, output, RUN, 1)
    tables.commit_shards(RUN, [done])
    # The driver died after the detections commit of shard 1, before its images commit.
    tables._append(DETECTIONS_TABLE, RUN, [claimed.files[DETECTIONS_TABLE]])
    assert set(tables.committed_shards(RUN)) == {0}
    ((dets,),) = rows(output, "SELECT count(*) FROM detections")
    assert dets == 6, "the detections view shows no half-committed shard"
    assert ResultTables(output).reconcile(RUN, storage) == [1]
    assert ResultTables(output).committed_shards(RUN)[1] == counts
    assert image_uris_per_shard(output) == {0: 4, 1: 4}


def test_a_claim_whose_images_file_is_gone_is_withdrawn(output):
    storage, tables = LocalStorage(), ResultTables(output)
    claimed, _ = write_shard(storage, output, RUN, 0)
    tables.create()
    tables._append(DETECTIONS_TABLE, RUN, [claimed.files[DETECTIONS_TABLE]])
    os.unlink(claimed.files[IMAGES_TABLE].uri)
    assert tables.reconcile(RUN, storage) == []
    assert ResultTables(output).run_files(DETECTIONS_TABLE, RUN).num_rows == 0
    # The shard runs again and commits normally.
    again, _ = write_shard(storage, output, RUN, 0, attempt=2)
    assert ResultTables(output).commit_shards(RUN, [again]) == [0]


def test_a_query_of_one_run_reads_only_its_partition(output):
    storage, tables = LocalStorage(), ResultTables(output)
    tables.commit_shards(RUN, [write_shard(storage, output, RUN, 0)[0]])
    other, _ = write_shard(storage, output, OTHER_RUN, 0)
    tables.commit_shards(OTHER_RUN, [other])
    # Were the other run's files read, this would fail: they are gone.
    for data_file in other.files.values():
        os.unlink(data_file.uri)
    assert rows(output, f"SELECT count(*) FROM all_images WHERE run_id = '{RUN}'") == [(4,)]
    assert rows(output, f"SELECT count(*) FROM all_detections WHERE run_id = '{RUN}'") == [(6,)]


def test_file_statistics_match_the_data():
    long_uri = "s3://b/" + "x" * 300
    table = pa.table(
        {
            "image_uri": ["b", "a", None],
            "class_name": pa.DictionaryArray.from_arrays(
                pa.array([2, 0, 2], pa.int16()), pa.array(["car", "bus", "person"])
            ),
            "score": pa.array([0.5, 0.25, 0.75], pa.float32()),
            "long": [long_uri, "s3://a", None],
            "run_id": ["r", "r", "r"],
        }
    )
    stats = json.loads(file_stats(table, ("run_id",)))
    assert stats == {
        "numRecords": 3,
        "minValues": {"image_uri": "a", "class_name": "car", "score": 0.25, "long": "s3://a"},
        "maxValues": {
            "image_uri": "b",
            "class_name": "person",
            "score": 0.75,
            "long": long_uri[: MAX_STRING_STAT_CHARS - 1] + "y",
        },
        "nullCount": {"image_uri": 1, "class_name": 0, "score": 0, "long": 1},
    }
    assert stats["maxValues"]["long"] > long_uri


def test_a_filter_on_any_column_finds_its_rows(output):
    """delta-rs skips a file whose statistic a filter's column lacks: every column has one."""
    storage, tables = LocalStorage(), ResultTables(output)
    tables.commit_shards(RUN, [write_shard(storage, output, RUN, s)[0] for s in range(2)])
    for sql, expected in (
        ("SELECT count(*) FROM detections WHERE class_name = 'person'", 4),
        ("SELECT count(*) FROM detections WHERE class_id = 1 AND score > 0", 4),
        ("SELECT count(*) FROM images WHERE error IS NULL", 6),
        ("SELECT count(*) FROM images WHERE status = 'error'", 2),
        ("SELECT count(*) FROM images WHERE image_uri = 's3://photos/shard1/img002.jpg'", 1),
    ):
        assert rows(output, sql) == [(expected,)], sql


def test_checkpoints_keep_opening_the_table_bounded(output):
    storage, tables = LocalStorage(), ResultTables(output)
    for shard_id in range(CHECKPOINT_INTERVAL + 1):
        tables.commit_shards(RUN, [write_shard(storage, output, RUN, shard_id, images=1)[0]])
    log = Path(output) / IMAGES_TABLE / "_delta_log"
    assert (log / "_last_checkpoint").exists()
    assert list(log.glob("*.checkpoint.parquet"))
    assert len(ResultTables(output).committed_shards(RUN)) == CHECKPOINT_INTERVAL + 1


def test_tombstones_of_a_run_are_replaced_not_added(output):
    tables = ResultTables(output)

    def tombstones(uris):
        table = pa.table({"image_uri": uris, "run_id": [RUN] * len(uris)}, TOMBSTONE_SCHEMA)
        return pa.RecordBatchReader.from_batches(TOMBSTONE_SCHEMA, table.to_batches())

    tables.replace_tombstones(RUN, tombstones(["s3://b/x.jpg", "s3://b/y.jpg"]))
    tables.replace_tombstones(RUN, tombstones(["s3://b/y.jpg"]))
    assert rows(output, "SELECT image_uri, run_id FROM tombstones") == [("s3://b/y.jpg", RUN)]
    assert tables.run_files(TOMBSTONES_TABLE, RUN).num_rows == 1


def test_on_s3_commits_work_and_no_credential_reaches_a_log(s3_env, s3_prefix):
    output = s3_prefix.rstrip("/")
    options = S3Options(endpoint_url=s3_env.endpoint_url)
    storage, tables = storage_for(output, options), ResultTables(output, options)
    batch = [write_shard(storage, output, RUN, s)[0] for s in range(3)]
    assert tables.commit_shards(RUN, batch) == [0, 1, 2]
    assert ResultTables(output, options).commit_shards(RUN, batch) == []
    assert ResultTables(output, options).committed_shards(RUN) == {
        s: ShardCounts(images=4, ok=3, errors=1, detections=6) for s in range(3)
    }
    assert rows(output, "SELECT count(*) FROM images") == [(12,)]
    client = boto3.client("s3", endpoint_url=s3_env.endpoint_url)
    location = parse_s3(s3_prefix)
    listed = client.list_objects_v2(Bucket=location.bucket, Prefix=location.key)["Contents"]
    logs = [item["Key"] for item in listed if "/_delta_log/" in item["Key"]]
    assert logs
    for key in logs:
        body = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
        assert s3_env.access_key.encode() not in body, key
        assert s3_env.secret_key.encode() not in body, key
