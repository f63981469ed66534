"""``yolo-batch migrate`` on a real output of the earlier format, written file by file as that
version wrote it: per-shard Parquet files, commit markers ``_runs/RUN/commits/shard-NNNNNN.
TOKEN.json`` naming the visible attempt, tombstones under ``_deleted/RUN/``.

The output holds an attempt no marker names (a stray), a shard with two markers (the later
attempt wins), an error image and a tombstone. Before migrate, readers refuse it naming the
command; after, they see exactly the committed attempts' rows (the tombstoned image left out of
``images``) read from the very same files, the markers are gone, and a second migrate changes
nothing. A migrate stopped between batches or while deleting the markers leaves an output that
readers refuse, and running it again finishes the job with nothing lost. It waits for no job:
it refuses while one holds the output's lease.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.errors import OutputError
from pipeline.results.query import query
from pipeline.run.lease import Lease
from pipeline.store import migrate
from pipeline.store.layout import (
    DETECTIONS_TABLE,
    IMAGES_TABLE,
    TOMBSTONES_TABLE,
    OutputLayout,
    deleted_dir,
    shard_name,
)
from pipeline.store.ledger import Ledger, ShardCounts
from pipeline.store.schema import PARQUET_COMPRESSION, TOMBSTONE_SCHEMA
from pipeline.store.storage import LocalStorage, Storage, storage_for
from pipeline.store.tables import ResultTables
from pipeline.store.uris import join
from tests.shard_attempts import (
    DETECTIONS_PER_IMAGE,
    image_uris,
    run_record,
    shard_tables,
    write_attempt,
)

RUN = "20260101T000000Z-aaaaaa"
#: A later, incremental run that found one of RUN's images deleted.
LATER_RUN = "20260102T000000Z-bbbbbb"
IMAGES_PER_SHARD = 3
#: Shard of RUN with a stray attempt beside its committed one.
STRAY_SHARD = 0
#: Shard of RUN with two markers (a commit whose reply was lost, then run again).
TWICE_SHARD = 1
#: Shard of RUN with one error image.
ERROR_SHARD = 2
FIRST_WIDTH, SECOND_WIDTH, STRAY_WIDTH = 111, 222, 999


@dataclass
class LegacyOutput:
    """What the earlier version's readers showed of the output built here."""

    output: str
    #: (image_uri, run_id, width) of every committed image row.
    images: set[tuple] = field(default_factory=set)
    detections: int = 0
    counts: dict[str, dict[int, ShardCounts]] = field(default_factory=dict)
    #: The committed attempts' data files.
    committed_files: list[str] = field(default_factory=list)
    stray_files: list[str] = field(default_factory=list)
    tombstoned: str = ""


def write_marker(storage: Storage, output: str, run_id: str, shard_id: int, token: str, n: int):
    name = f"{shard_name(shard_id)}.{token}.json"
    body = {"shard_id": shard_id, "attempt_token": token, "num_images": n}
    storage.write_bytes(
        join(OutputLayout(output).commits_dir(run_id), name), json.dumps(body).encode()
    )


def write_shard(
    storage: Storage,
    legacy: LegacyOutput,
    run_id: str,
    shard_id: int,
    token: str,
    *,
    marker: bool = True,
    visible: bool = True,
    errors: int = 0,
    width: int = 640,
    tag: str = "",
) -> None:
    """Write one attempt's files, and its commit marker unless not ``marker``; ``visible``:
    whether the earlier version's readers showed its rows."""
    uris = image_uris(run_id, shard_id, IMAGES_PER_SHARD, tag)
    tables = shard_tables(run_id, shard_id, uris, errors=errors, width=width)
    files = write_attempt(storage, legacy.output, run_id, shard_id, token, tables)
    if marker:
        write_marker(storage, legacy.output, run_id, shard_id, token, len(uris))
    if not visible:
        legacy.stray_files += [f.uri for f in files.files.values()]
        return
    legacy.committed_files += [f.uri for f in files.files.values()]
    ok = len(uris) - errors
    legacy.images |= {(u, run_id, width if k < ok else None) for k, u in enumerate(uris)}
    legacy.detections += ok * DETECTIONS_PER_IMAGE
    legacy.counts.setdefault(run_id, {})[shard_id] = ShardCounts(
        images=len(uris), ok=ok, errors=errors, detections=ok * DETECTIONS_PER_IMAGE
    )


def build_legacy_output(storage: Storage, output: str) -> LegacyOutput:
    """Two runs of the earlier version: RUN (three shards: a stray attempt, two markers, an
    error) and LATER_RUN (one shard, and a tombstone of one of RUN's images)."""
    legacy = LegacyOutput(output)
    ledger = Ledger(storage, OutputLayout(output))
    for run_id in (RUN, LATER_RUN):
        ledger.write_run(run_record(run_id, output))
    write_shard(storage, legacy, RUN, STRAY_SHARD, "a1-00000000")
    write_shard(
        storage,
        legacy,
        RUN,
        STRAY_SHARD,
        "a2-5712a75a",
        marker=False,
        visible=False,
        width=STRAY_WIDTH,
        tag="stray",
    )
    # Both attempts of TWICE_SHARD were committed; readers showed the later one only.
    write_shard(storage, legacy, RUN, TWICE_SHARD, "a1-11111111", visible=False, width=FIRST_WIDTH)
    write_shard(storage, legacy, RUN, TWICE_SHARD, "a2-22222222", width=SECOND_WIDTH)
    write_shard(storage, legacy, RUN, ERROR_SHARD, "a1-33333333", errors=1)
    write_shard(storage, legacy, LATER_RUN, 0, "a1-44444444", tag="new")
    legacy.tombstoned = image_uris(RUN, STRAY_SHARD, IMAGES_PER_SHARD)[1]
    tombstones = pa.table(
        {"image_uri": [legacy.tombstoned], "run_id": [LATER_RUN]}, schema=TOMBSTONE_SCHEMA
    )
    sink = pa.BufferOutputStream()
    pq.write_table(tombstones, sink, compression=PARQUET_COMPRESSION)
    storage.write_bytes(
        join(deleted_dir(output, LATER_RUN), "part-000000.parquet"), sink.getvalue().to_pybytes()
    )
    return legacy


def fingerprints(storage: Storage, uris: list[str]) -> dict[str, tuple]:
    """Each file's sha256, and locally its modification time (ns)."""
    out = {}
    for uri in uris:
        mtime = os.stat(uri).st_mtime_ns if isinstance(storage, LocalStorage) else None
        out[uri] = (hashlib.sha256(storage.read_bytes(uri)).hexdigest(), mtime)
    return out


def image_rows(output: str, view: str = "all_images") -> set[tuple]:
    table = query(output, f"SELECT image_uri, run_id, width FROM {view}")
    return set(zip(*(column.to_pylist() for column in table.columns)))


def table_versions(output: str) -> dict[str, int]:
    tables = ResultTables(output)
    return {
        name: tables.table(name).version()
        for name in (DETECTIONS_TABLE, IMAGES_TABLE, TOMBSTONES_TABLE)
    }


def legacy_leftovers(storage: Storage, output: str) -> list[str]:
    """Markers, tombstone files and the migration mark still in the output."""
    layout = OutputLayout(output)
    left = [
        info.uri
        for run_id in (RUN, LATER_RUN)
        for info in storage.list(layout.commits_dir(run_id) + "/")
    ]
    left += [info.uri for info in storage.list(deleted_dir(output) + "/")]
    return left + [layout.migration] * storage.exists(layout.migration)


def assert_converted(storage: Storage, legacy: LegacyOutput) -> None:
    """Readers see exactly what the earlier version's readers saw."""
    output = legacy.output
    assert image_rows(output) == legacy.images
    assert legacy.tombstoned in {row[0] for row in legacy.images}
    assert image_rows(output, "images") == {r for r in legacy.images if r[0] != legacy.tombstoned}
    assert query(output, "SELECT count(*) AS n FROM all_detections")["n"][0].as_py() == (
        legacy.detections
    )
    tombstones = query(output, "SELECT image_uri, run_id FROM tombstones").to_pylist()
    assert tombstones == [{"image_uri": legacy.tombstoned, "run_id": LATER_RUN}]
    tables = ResultTables(output)
    for run_id, counts in legacy.counts.items():
        assert tables.committed_shards(run_id) == counts
    logged = {
        join(tables.uri(name), path)
        for name in (DETECTIONS_TABLE, IMAGES_TABLE)
        for run_id in (RUN, LATER_RUN)
        for path in tables.run_files(name, run_id)["path"].to_pylist()
    }
    assert logged == set(legacy.committed_files)
    assert legacy_leftovers(storage, output) == []


@pytest.fixture
def legacy(tmp_path: Path) -> LegacyOutput:
    return build_legacy_output(LocalStorage(), str(tmp_path / "out"))


def test_migrate_converts_an_earlier_output_in_place(legacy, capsys):
    storage, output = LocalStorage(), legacy.output
    assert main(["query", output, "SELECT count(*) FROM images"]) == 1
    assert f"yolo-batch migrate {output}" in capsys.readouterr().err
    before = fingerprints(storage, legacy.committed_files + legacy.stray_files)

    assert main(["migrate", output]) == 0
    summary = capsys.readouterr().out
    assert f"migrated {output}: 2 run(s), 4 shard(s) (8 data files" in summary, summary
    assert "1 tombstone(s)" in summary and "5 commit marker(s)" in summary, summary

    assert_converted(storage, legacy)
    # Not one data file was rewritten (nor the stray attempts touched).
    assert fingerprints(storage, legacy.committed_files + legacy.stray_files) == before

    versions = table_versions(output)
    assert main(["migrate", output]) == 0
    assert "already current" in capsys.readouterr().out
    assert table_versions(output) == versions
    assert_converted(storage, legacy)


def test_compact_after_migrate_vacuums_the_attempts_no_marker_named(legacy, capsys):
    storage, output = LocalStorage(), legacy.output
    assert main(["migrate", output]) == 0
    assert main(["compact", output, "--retention-hours", "0"]) == 0
    assert f"{len(legacy.stray_files)} unreferenced file(s) vacuumed" in capsys.readouterr().out
    assert not any(storage.exists(uri) for uri in legacy.stray_files)
    assert_converted(storage, legacy)


def test_a_migrate_stopped_between_batches_is_refused_then_finished(legacy, monkeypatch, capsys):
    storage, output = LocalStorage(), legacy.output
    commit = ResultTables.commit_shards
    calls = []

    def stop_at_the_second_batch(self, run_id, shards):
        calls.append(run_id)
        if len(calls) == 2:
            raise OSError("killed")
        return commit(self, run_id, shards)

    monkeypatch.setattr(ResultTables, "commit_shards", stop_at_the_second_batch)
    with pytest.raises(OSError, match="killed"):
        migrate.migrate_output(ResultTables(output), storage, batch_shards=1)
    monkeypatch.undo()
    # One shard is in the logs and the images table exists: readers still refuse.
    assert ResultTables(output).exists(IMAGES_TABLE)
    with pytest.raises(OutputError, match=f"run `yolo-batch migrate {output}` again"):
        query(output, "SELECT * FROM images")

    assert main(["migrate", output]) == 0
    assert "1 converted before" in capsys.readouterr().out
    assert_converted(storage, legacy)


class FailingDeletes(LocalStorage):
    """Local storage whose deletes fail after the first ``allowed``."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.lock = threading.Lock()

    def delete(self, uri: str) -> None:
        with self.lock:
            if self.allowed == 0:
                raise OSError("killed")
            self.allowed -= 1
        super().delete(uri)


@pytest.mark.parametrize(
    ("deletes", "left"),
    [
        (2, 5),  # three of five markers, the tombstone file and the migration mark
        (6, 1),  # every marker and the tombstone file gone; the migration mark left
    ],
)
def test_a_migrate_stopped_while_deleting_keeps_every_row(legacy, capsys, deletes, left):
    storage, output = LocalStorage(), legacy.output
    with pytest.raises(OSError, match="killed"):
        migrate.migrate_output(ResultTables(output), FailingDeletes(deletes), batch_shards=2)
    leftovers = legacy_leftovers(storage, output)
    assert len(leftovers) == left and OutputLayout(output).migration in leftovers, leftovers
    with pytest.raises(OutputError, match="migrate"):
        query(output, "SELECT * FROM images")

    assert main(["migrate", output]) == 0
    capsys.readouterr()
    assert_converted(storage, legacy)


def test_migrate_waits_for_no_job_it_refuses_while_one_holds_the_lease(legacy, capsys):
    storage, output = LocalStorage(), legacy.output
    lease = Lease(storage, output, job="nightly")
    lease.acquire()
    try:
        lease.set_run_id(LATER_RUN)
        assert main(["migrate", output]) == 1
        error = capsys.readouterr().err
        assert f"another run holds this output: run {LATER_RUN} of job nightly" in error
    finally:
        lease.release()
    assert not storage.exists(OutputLayout(output).migration)
    assert len(legacy_leftovers(storage, output)) == 6  # five markers and a tombstone file


def test_a_marker_whose_file_is_gone_stops_migrate_saying_what_to_do(legacy, capsys):
    storage, output = LocalStorage(), legacy.output
    gone = OutputLayout(output).data_file(IMAGES_TABLE, RUN, ERROR_SHARD, "a1-33333333")
    storage.delete(gone)
    assert main(["migrate", output]) == 1
    error = capsys.readouterr().err
    assert gone in error and "restore the file, or delete the marker" in error


def test_a_path_without_results_is_refused_and_left_as_it_was(tmp_path, capsys):
    assert main(["migrate", str(tmp_path / "empty")]) == 1
    assert "no runs under" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_migrate_on_s3(s3_env, s3_prefix, capsys):
    output = s3_prefix.rstrip("/")
    storage = storage_for(output)
    legacy = build_legacy_output(storage, output)
    before = fingerprints(storage, legacy.committed_files)
    assert main(["query", output, "SELECT 1"]) == 1
    assert "yolo-batch migrate" in capsys.readouterr().err

    assert main(["migrate", output, "--endpoint-url", s3_env.endpoint_url]) == 0
    assert "4 shard(s)" in capsys.readouterr().out
    assert_converted(storage, legacy)
    assert fingerprints(storage, legacy.committed_files) == before
