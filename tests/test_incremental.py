"""Incremental runs: the delta of a listing against earlier runs, and ``run --incremental``.

- The delta on synthetic listings (DuckDB over Arrow tables, no Ray): new, changed, retried,
  unchanged and deleted objects; listing order kept; tombstones honoured; only the given
  earlier runs count; listings larger than one batch.
- End to end over the real S3-compatible server: a job over N images; then M added, K changed
  (new bytes, new ETag), D deleted: the next run processes exactly M + K, its run record
  counts them, the views show the N + M - D current images; a third run finds nothing new and
  starts no actors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from pipeline.results.query import query
from pipeline.run import incremental
from pipeline.run.incremental import Delta
from pipeline.run.plan import PlannedObject
from pipeline.store.schema import IMAGES_SCHEMA, TOMBSTONE_SCHEMA
from tests.test_pipeline_e2e import cli_env, run_args

RUN_1 = "20260101T000000Z-aaaaaa"
RUN_2 = "20260102T000000Z-bbbbbb"
RUN_3 = "20260103T000000Z-cccccc"
RUN_OTHER = "20260101T120000Z-dddddd"


def images_table(rows: list[tuple]) -> pa.Table:
    """``images`` rows from ``(uri, etag, status, error, run_id)``."""
    columns = {f.name: pa.nulls(len(rows), f.type) for f in IMAGES_SCHEMA}
    for index, name in enumerate(("image_uri", "etag", "status", "error", "run_id")):
        columns[name] = pa.array([row[index] for row in rows], pa.string())
    return pa.table(columns, schema=IMAGES_SCHEMA)


def connection(images: list[tuple], tombstones: list[tuple] = ()) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views the delta reads, over in-memory tables."""
    con = duckdb.connect()
    con.register("images_arrow", images_table(images))
    con.execute("CREATE VIEW all_images AS SELECT * FROM images_arrow")
    con.register(
        "tombstones_arrow",
        pa.table(
            {
                "image_uri": [t[0] for t in tombstones],
                "run_id": [t[1] for t in tombstones],
            },
            schema=TOMBSTONE_SCHEMA,
        ),
    )
    con.execute("CREATE VIEW tombstones AS SELECT * FROM tombstones_arrow")
    return con


def listing(*pairs) -> list[PlannedObject]:
    return [PlannedObject(uri, 1, etag) for uri, etag in pairs]


def test_delta_classifies_new_changed_unchanged_retried_and_deleted():
    earlier = [
        ("s3://b/same.jpg", "e1", "ok", None, RUN_1),
        ("s3://b/changed.jpg", "old", "ok", None, RUN_1),
        ("s3://b/gone.jpg", "e3", "ok", None, RUN_1),
        ("s3://b/broken.jpg", "e4", "error", "decode: truncated JPEG", RUN_1),
        ("s3://b/broken-changed.jpg", "e5", "error", "decode: truncated JPEG", RUN_1),
        ("s3://b/missing-then.jpg", "e6", "error", "not found", RUN_1),
        ("s3://b/denied.jpg", "e7", "error", "fetch: permission denied", RUN_1),
        # Processed twice: the later run's row is the state.
        ("s3://b/twice.jpg", "v1", "ok", None, RUN_1),
        ("s3://b/twice.jpg", "v2", "ok", None, RUN_2),
    ]
    now = listing(
        ("s3://b/z-new.jpg", "n1"),
        ("s3://b/same.jpg", "e1"),
        ("s3://b/changed.jpg", "new"),
        ("s3://b/broken.jpg", "e4"),
        ("s3://b/broken-changed.jpg", "e5b"),
        ("s3://b/missing-then.jpg", "e6"),
        ("s3://b/denied.jpg", "e7"),
        ("s3://b/twice.jpg", "v2"),
        ("s3://b/a-new.jpg", "n2"),
    )
    with Delta(connection(earlier), now, [RUN_1, RUN_2]) as delta:
        counts = delta.counts
        todo = [o.uri for o in delta.objects()]
    assert counts.as_dict() == {
        "objects_listed": 9,
        "objects_new": 2,
        "objects_changed": 2,  # changed.jpg, broken-changed.jpg (a new ETag is always retried)
        "objects_retried": 2,  # not found, fetch error; the decode error of the same bytes not
        "objects_unchanged": 3,
        "objects_deleted": 1,
    }
    assert counts.to_process == 6
    # Listing order, not sorted by URI.
    assert todo == [
        "s3://b/z-new.jpg",
        "s3://b/changed.jpg",
        "s3://b/broken-changed.jpg",
        "s3://b/missing-then.jpg",
        "s3://b/denied.jpg",
        "s3://b/a-new.jpg",
    ]


def test_delta_honours_tombstones_and_only_the_earlier_runs_given():
    earlier = [
        ("s3://b/deleted-then-back.jpg", "e1", "ok", None, RUN_1),
        ("s3://b/deleted.jpg", "e2", "ok", None, RUN_1),
        ("s3://b/back-after-delete.jpg", "e3", "ok", None, RUN_1),
        ("s3://b/back-after-delete.jpg", "e3", "ok", None, RUN_3),
        ("s3://b/other-source.jpg", "e4", "ok", None, RUN_OTHER),
    ]
    tombstones = [
        ("s3://b/deleted-then-back.jpg", RUN_2),
        ("s3://b/deleted.jpg", RUN_2),
        ("s3://b/back-after-delete.jpg", RUN_2),
    ]
    now = listing(("s3://b/deleted-then-back.jpg", "e1"), ("s3://b/back-after-delete.jpg", "e3"))
    with Delta(connection(earlier, tombstones), now, [RUN_1, RUN_2, RUN_3]) as delta:
        counts = delta.counts
        todo = [o.uri for o in delta.objects()]
    # A tombstoned URI is no earlier state: it is new when it comes back, and is not deleted
    # twice; a row after the tombstone is state again. RUN_OTHER (not given) does not count.
    assert todo == ["s3://b/deleted-then-back.jpg"]
    assert counts.objects_new == 1 and counts.objects_unchanged == 1
    assert counts.objects_deleted == 0
    with Delta(connection(earlier, tombstones), now, [RUN_1, RUN_2, RUN_3, RUN_OTHER]) as delta:
        assert delta.counts.objects_deleted == 1  # other-source.jpg, once RUN_OTHER counts


def test_delta_streams_listings_larger_than_one_batch(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(incremental, "LISTING_BATCH_ROWS", 7)
    monkeypatch.setattr(incremental, "RESULT_BATCH_ROWS", 5)
    total = 100
    earlier = [(f"s3://b/{i:04d}.jpg", f"e{i}", "ok", None, RUN_1) for i in range(0, total, 2)]

    def objects():
        for i in reversed(range(total)):
            yield PlannedObject(f"s3://b/{i:04d}.jpg", i, f"e{i}" if i % 4 else "x")

    with Delta(connection(earlier), objects(), [RUN_1], workdir=str(tmp_path)) as delta:
        counts = delta.counts
        todo = list(delta.objects())
    assert counts.objects_listed == total
    assert counts.objects_new == total // 2
    assert counts.objects_changed == total // 4
    assert [o.uri for o in todo] == [
        f"s3://b/{i:04d}.jpg" for i in reversed(range(total)) if i % 2 or i % 4 == 0
    ]
    assert {o.size for o in todo if o.uri == "s3://b/0099.jpg"} == {99}
    assert list(tmp_path.iterdir()) == []  # the temporary listing is gone


# --------------------------------------------------------------------------- end to end

N, M, K, D = 6, 2, 2, 1


def _record(client, bucket: str, output_key: str, run_id: str) -> dict:
    body = client.get_object(Bucket=bucket, Key=f"{output_key}_runs/{run_id}/run.json")["Body"]
    return json.loads(body.read())


def test_incremental_run_processes_only_new_and_changed_images_on_s3(
    cli, cache, s3_env, s3_server, s3_prefix, sample_images
):
    client = s3_server.client()
    bucket, _, base = s3_prefix[len("s3://") :].partition("/")
    photos = [p.read_bytes() for p in sample_images]

    def put(name: str, photo: int) -> None:
        client.put_object(Bucket=bucket, Key=f"{base}src/{name}", Body=photos[photo])

    for i in range(N):
        put(f"img-{i}.jpg", i % 2)
    source, output = f"{s3_prefix}src/", f"{s3_prefix}out/"
    env = cli_env(cache, s3=s3_server)
    args = ["-v", *run_args(source, output, "--incremental", "--shard-size", "4")]

    first = cli.run(args, env)
    assert first.returncode == 0, first.describe()
    record = _record(client, bucket, f"{base}out/", first.run_id)
    assert (record["objects_new"], record["num_images"]) == (N, N), record
    assert "_lease.json" not in _keys(client, bucket, f"{base}out/")  # released

    added = [f"new-{i}.jpg" for i in range(M)]
    changed = [f"img-{i}.jpg" for i in range(K)]
    deleted = [f"img-{N - 1 - i}.jpg" for i in range(D)]
    for name in added:
        put(name, 0)
    for i, name in enumerate(changed):
        put(name, (i + 1) % 2)  # the other photo: new bytes, new ETag
    for name in deleted:
        client.delete_object(Bucket=bucket, Key=f"{base}src/{name}")

    second = cli.run(args, env)
    assert second.returncode == 0, second.describe()
    assert "actor 0 ready" in second.stderr  # the positive control of the third run's check
    record = _record(client, bucket, f"{base}out/", second.run_id)
    assert record["incremental"] is True
    assert {k: record[k] for k in record if k.startswith("objects_")} == {
        "objects_listed": N + M - D,
        "objects_new": M,
        "objects_changed": K,
        "objects_retried": 0,
        "objects_unchanged": N - K - D,
        "objects_deleted": D,
    }
    assert record["num_images"] == record["images_ok"] == M + K
    assert f"{M} new, {K} changed, 0 retried, {D} deleted" in second.stdout
    processed = query(
        output, f"SELECT image_uri FROM all_images WHERE run_id = '{second.run_id}'"
    ).column(0)
    assert sorted(processed.to_pylist()) == sorted(f"{source}{n}" for n in added + changed)
    current = {f"{source}img-{i}.jpg" for i in range(N)} | {f"{source}{n}" for n in added}
    current -= {f"{source}{n}" for n in deleted}
    assert len(current) == N + M - D
    shown = query(output, "SELECT image_uri, run_id FROM images").to_pylist()
    assert {row["image_uri"] for row in shown} == current
    latest = {row["image_uri"]: row["run_id"] for row in shown}
    assert all(latest[f"{source}{n}"] == second.run_id for n in added + changed)
    gone = query(
        output, f"SELECT count(*) FROM detections WHERE image_uri = '{source}{deleted[0]}'"
    ).column(0)[0]
    assert gone.as_py() == 0
    tomb = query(output, "SELECT image_uri, run_id FROM tombstones").to_pylist()
    assert tomb == [{"image_uri": f"{source}{deleted[0]}", "run_id": second.run_id}]
    status = cli.run(["status", output], env)
    assert status.returncode == 0, status.describe()
    assert (
        f"delta      {N + M - D:,} listed: {M} new, {K} changed, 0 retried, "
        f"{N - K - D} unchanged, {D} deleted"
    ) in status.stdout, status.stdout

    # Nothing new: no plan shards, no Ray, no actors; an expired lease left by a killed driver
    # is taken over on the way.
    expired = {
        "token": "deadbeef",
        "host": "elsewhere",
        "pid": 1,
        "run_id": first.run_id,
        "job": None,
        "acquired_at": time.time() - 600,
        "renewed_at": time.time() - 300,
        "expires_at": time.time() - 180,
    }
    client.put_object(
        Bucket=bucket, Key=f"{base}out/_lease.json", Body=json.dumps(expired).encode()
    )
    started = time.monotonic()
    third = cli.run(args, env)
    took = time.monotonic() - started
    assert third.returncode == 0, third.describe()
    assert "nothing new or changed" in third.stdout.splitlines()[-1]
    assert "actor 0 ready" not in third.stderr, third.stderr
    assert "taking it over" in third.stderr
    record = _record(client, bucket, f"{base}out/", third.run_id)
    assert record["status"] == "succeeded"
    assert (record["num_shards"], record["num_images"], record["shards_committed"]) == (0, 0, 0)
    assert record["objects_unchanged"] == N + M - D
    assert record["objects_deleted"] == 0  # already recorded by the second run
    assert "nothing new or changed" in record["message"]
    assert "_lease.json" not in _keys(client, bucket, f"{base}out/")
    assert query(output, "SELECT count(*) FROM images").column(0)[0].as_py() == N + M - D
    # The listing kept for a resume is gone once the plan is complete.
    kept = client.list_objects_v2(Bucket=bucket, Prefix=f"{base}out/_runs/{third.run_id}/listing/")
    assert kept["KeyCount"] == 0, kept.get("Contents")
    print(f"nothing-new run took {took:.1f} s")


def _keys(client, bucket: str, prefix: str) -> set[str]:
    """Keys directly under ``prefix`` (relative)."""
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
    return {item["Key"][len(prefix) :] for item in listed.get("Contents", ())}


@pytest.mark.parametrize("where", ["local files", "s3 files", "local path with glob chars"])
def test_delta_reads_committed_files_itself_with_the_same_answer(where, tmp_path, request):
    """The driver hands the delta the committed files (DuckDB reads local ones itself; S3
    ones are copied first): the answer must equal the one over the ``all_images`` view."""
    import pyarrow.parquet as pq

    from pipeline.store.storage import LocalStorage, S3Storage

    earlier = [
        ("s3://b/same.jpg", "e1", "ok", None, RUN_1),
        ("s3://b/changed.jpg", "old", "ok", None, RUN_1),
        ("s3://b/gone.jpg", "e3", "ok", None, RUN_1),
        ("s3://b/missing-then.jpg", "e6", "error", "not found", RUN_1),
        ("s3://b/twice.jpg", "v1", "ok", None, RUN_1),
        ("s3://b/twice.jpg", "v2", "ok", None, RUN_2),
    ]
    now = listing(
        ("s3://b/new.jpg", "n1"),
        ("s3://b/same.jpg", "e1"),
        ("s3://b/changed.jpg", "new"),
        ("s3://b/missing-then.jpg", "e6"),
        ("s3://b/twice.jpg", "v1"),
    )
    with Delta(connection(earlier), now, [RUN_1, RUN_2]) as delta:
        expected = (delta.counts.as_dict(), [o.uri for o in delta.objects()])

    folder = tmp_path / ("glob [x]" if "glob" in where else "out")
    folder.mkdir()
    paths = []
    for run in (RUN_1, RUN_2):  # as the images table lays them out: TABLE/run_id=RUN/FILE
        path = folder / "images" / f"run_id={run}" / "shard-000000-a1-0123abcd.parquet"
        path.parent.mkdir(parents=True)
        rows = [r for r in earlier if r[4] == run]
        names = ("image_uri", "etag", "status", "error", "run_id")
        pq.write_table(pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}), path)
        paths.append(str(path))
    storage = LocalStorage()
    if where == "s3 files":
        request.getfixturevalue("s3_env")
        prefix = request.getfixturevalue("s3_prefix")
        storage = S3Storage()
        uris = []
        for path in paths:
            uri = f"{prefix}images/{Path(path).parent.name}/{Path(path).name}"
            storage.write_bytes(uri, Path(path).read_bytes())
            uris.append(uri)
        paths = uris
    with Delta(connection([]), now, [RUN_1, RUN_2], earlier_files=paths, storage=storage) as delta:
        got = (delta.counts.as_dict(), [o.uri for o in delta.objects()])
    assert got == expected
    assert expected[0]["objects_deleted"] == 1 and expected[0]["objects_changed"] == 2
