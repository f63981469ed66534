"""Recovery of ``yolo-batch run`` from faults, as real subprocesses on a real local Ray.

- An actor process SIGKILLed in the middle of a shard: replaced, the shard retried; the run
  completes with every image exactly once.
- The driver SIGKILLed after some shards committed: ``--resume`` completes the run without
  touching the committed shards.
- A shard that always fails (``YOLO_BATCH_FAULTS``): exit 2, the others committed, ``status``
  names it; ``--resume`` without the fault retries only that shard.
- Ctrl-C (SIGINT to the driver): exit 130, run record ``interrupted``; ``--resume`` completes.

Each test checks the final tables exactly (one ``images`` row per input, the reference
detections for each photo, nothing in ``all_*`` beyond them) with ``pipeline.results.query``.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipeline.results.query import query
from tests.independent_reader import assert_independent_reader_agrees
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    Input,
    assert_run_results,
    cli_env,
    expected_detection_count,
    read_run_record,
    reference_detections,
    run_args,
    tree,
    write_local_source,
)

SHARD_SIZE = 2
#: Commit each shard as it finishes (not in batches), so a test can act between commits.
PER_SHARD_COMMITS = ("--commit-interval", "0")
#: Seconds each shard waits before starting (``slow_shards_s``): time to act mid-run.
SLOW_SHARD_S = 1.5
#: Seconds to wait for a run to reach the state a test acts in.
POLL_TIMEOUT_S = 180
POLL_INTERVAL_S = 0.05

#: Eight inputs, four shards of two: copies of the photos, one undecodable file.
FAULT_INPUTS = (
    Input("a/bus 1.jpg", photo=0),
    Input("a/zidane 1.jpg", photo=1),
    Input("b/bus 2.jpg", photo=0),
    Input("b/truncated.jpg", error="decode: "),
    Input("c/zidane 2.jpg", photo=1),
    Input("c/bus 3.jpg", photo=0),
    Input("d/zidane 3.jpg", photo=1),
    Input("d/bus 4.jpg", photo=0),
)
NUM_SHARDS = 4


@pytest.fixture(scope="module")
def reference(tiny_weights_path: Path, sample_images: list[Path]) -> list[list[tuple]]:
    return reference_detections(tiny_weights_path.parent, sample_images)


@pytest.fixture
def job(tmp_path: Path, sample_images: list[Path]):
    """A source folder of :data:`FAULT_INPUTS`, an output folder, and the expected rows."""
    source, output = tmp_path / "photos", tmp_path / "results"
    expected = write_local_source(source, FAULT_INPUTS, sample_images)
    return source, output, expected


def commits(output: Path) -> dict[int, str]:
    """Committed shards under ``output`` by shard id, with the attempt token of the file the
    ``images`` Delta log holds (any run; the tests make one run each). Read with a plain
    ``deltalake`` reader, as any engine would; a shard in the log twice fails the test."""
    try:
        table = DeltaTable(str(output / "images"))
    except TableNotFoundError:
        return {}
    found = {}
    for path in pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist():
        match = re.search(r"shard-(\d+)-([A-Za-z0-9_-]+)\.parquet$", path)
        assert match, f"not a shard file in the log: {path}"
        shard_id = int(match[1])
        assert shard_id not in found, f"shard {shard_id} is in the log twice"
        found[shard_id] = match[2]
    return found


def wait_for(predicate, proc, what: str):
    """Poll ``predicate()`` until truthy; fail if the run ends or time runs out first."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.proc.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{proc.result().describe()}")
        time.sleep(POLL_INTERVAL_S)
    pytest.fail(f"no {what} within {POLL_TIMEOUT_S} s")


def shard_files(output: Path, shard_id: int) -> dict[str, list[str]]:
    """The data files of one shard, by table (any attempt, committed or not)."""
    return {
        table: sorted(
            str(p.relative_to(output))
            for p in output.glob(f"{table}/run_id=*/shard-{shard_id:06d}-*.parquet")
        )
        for table in ("images", "detections")
    }


def assert_complete(output: Path, expected, reference, run_id: str) -> None:
    """The run record says succeeded with every shard committed, once each, and the tables
    hold exactly the expected rows."""
    record = read_run_record(output, run_id)
    num_errors = sum(item.error is not None for item in expected.values())
    assert record["status"] == "succeeded", record
    assert (record["num_shards"], record["num_images"]) == (NUM_SHARDS, len(expected))
    assert (record["shards_committed"], record["shards_failed"]) == (NUM_SHARDS, 0)
    assert (record["images_ok"], record["images_error"]) == (
        len(expected) - num_errors,
        num_errors,
    )
    assert record["detections"] == expected_detection_count(expected, reference)
    assert sorted(commits(output)) == list(range(NUM_SHARDS))
    assert_run_results(str(output), expected, reference, run_id)


# --------------------------------------------------------------------------- a dead actor


@pytest.mark.slow
def test_actor_killed_mid_shard_is_replaced_and_nothing_is_lost_or_doubled(
    cli, cache, job, reference
):
    source, output, expected = job
    env = cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S})
    run = cli.start(
        run_args(source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS, "--actors", "1"),
        env,
    )

    # Once a shard has written its files, the one actor holds the next ones: two shards are
    # queued on it, each waiting SLOW_SHARD_S before it starts. (Its process title is no guide
    # to that: with shards running in threads of their own, one shard's end resets the title
    # Ray set at the other's start.) Its commit may wait for the batch.
    wait_for(lambda: list(output.glob("images/run_id=*/shard-*.parquet")), run, "a first shard")

    def actor_process():
        for proc in run.descendants():
            try:
                title = " ".join(proc.cmdline())
            except Exception:  # gone meanwhile
                continue
            if "DetectorActor" in title:
                return proc
        return None

    actor = wait_for(actor_process, run, "the actor's process")
    committed_before = set(commits(output))
    actor.kill()
    assert len(committed_before) < NUM_SHARDS  # the kill did land mid-run

    result = run.wait()
    assert result.returncode == 0, result.describe()
    assert_complete(output, expected, reference, result.run_id)
    status = json.loads((output / "_status.json").read_text())
    assert status["actor_restarts"] == 1, status
    assert status["shard_retries"] >= 1, status
    # The shard(s) the dead actor held went again: the log holds a second attempt's files.
    tokens = commits(output)
    assert any(token.startswith("a2-") for token in tokens.values()), tokens
    assert all(tokens[s].startswith("a1-") for s in committed_before), tokens
    # An engine outside yolo-batch, reading the Delta tables, sees the same rows: not the
    # killed attempt's.
    assert_independent_reader_agrees(output)


# --------------------------------------------------------------------------- a dead driver


@pytest.mark.slow
def test_driver_killed_then_resume_skips_the_committed_shards(cli, cache, job, reference):
    source, output, expected = job
    args = run_args(source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS)
    run = cli.start(args, cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S}))
    wait_for(lambda: len(commits(output)) >= 2, run, "two commits")
    run.signal(signal.SIGKILL)
    run.kill_tree(grace_s=0)  # and the Ray processes it started, before we look
    assert run.proc.returncode == -signal.SIGKILL

    (run_dir,) = output.glob("_runs/*")
    run_id = run_dir.name
    assert read_run_record(output, run_id)["status"] == "running"  # nobody could record more
    committed = commits(output)
    assert 2 <= len(committed) < NUM_SHARDS, sorted(committed)
    files = {s: shard_files(output, s) for s in committed}
    for shard_id, by_table in files.items():
        assert all(len(names) == 1 for names in by_table.values()), (shard_id, by_table)
    data_before = {k: v for k, v in tree(output).items() if k.endswith(".parquet")}

    resumed = cli.run([*args, "--resume"], cli_env(cache))
    assert resumed.returncode == 0, resumed.describe()
    assert resumed.run_id == run_id
    assert read_run_record(output, run_id)["resumed"] == 1
    assert_complete(output, expected, reference, run_id)

    # Committed shards were not processed again: same attempt, same single file per table.
    after = commits(output)
    for shard_id, token in committed.items():
        assert after[shard_id] == token
        assert shard_files(output, shard_id) == files[shard_id]
    data_after = tree(output)
    for by_table in files.values():
        for (name,) in by_table.values():
            assert data_after[name] == data_before[name], name  # not rewritten


# --------------------------------------------------------------------------- a failing shard


@pytest.mark.slow
def test_failing_shard_exits_2_and_resume_retries_only_it(cli, cache, job, reference):
    source, output, expected = job
    failing = 1
    args = run_args(
        source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS, "--max-attempts", 2
    )
    first = cli.run(args, cli_env(cache, faults={"fail_shards": [failing]}))
    assert first.returncode == 2, first.describe()
    run_id = first.run_id
    assert f"run {run_id}: failed_shards;" in first.stdout
    assert f"--resume {run_id}" in first.stderr  # how to retry
    assert sorted(commits(output)) == [s for s in range(NUM_SHARDS) if s != failing]
    failed_marker = output / "_runs" / run_id / "failed" / f"shard-{failing:06d}.json"
    reason = json.loads(failed_marker.read_text())
    assert reason["attempts"] == 2 and "injected failure" in reason["reason"], reason
    record = read_run_record(output, run_id)
    assert (record["status"], record["shards_committed"], record["shards_failed"]) == (
        "failed_shards",
        NUM_SHARDS - 1,
        1,
    )
    # The failed shard's images are simply not there yet; the others are.
    plan = output / "_runs" / run_id / "plan" / f"shard-{failing:06d}.parquet"
    failing_uris = set(pq.read_table(plan).column("uri").to_pylist())
    assert len(failing_uris) == SHARD_SIZE and failing_uris <= set(expected)
    shown = query(str(output), "SELECT image_uri FROM images").column(0).to_pylist()
    assert sorted(shown) == sorted(set(expected) - failing_uris)

    status = cli.run(["status", output], cli_env(cache), QUICK_TIMEOUT_S)
    assert status.returncode == 0, status.describe()
    assert f"run        {run_id}  (failed_shards)" in status.stdout
    assert f"failed     shard {failing}: " in status.stdout
    assert "injected failure" in status.stdout
    assert f"{NUM_SHARDS - 1} of {NUM_SHARDS} committed, 1 failed" in status.stdout

    before = tree(output)
    resumed = cli.run([*args, "--resume", run_id], cli_env(cache))
    assert resumed.returncode == 0, resumed.describe()
    assert resumed.run_id == run_id
    assert_complete(output, expected, reference, run_id)
    after = tree(output)
    # Only the failing shard ran: the other shards' files are untouched; the new files are
    # that shard's two data files (and the logs' new commits); its failure mark is gone.
    bookkeeping = {"_status.json", f"_runs/{run_id}/run.json"}
    changed = {k for k in before.keys() & after.keys() if before[k] != after[k]}
    assert {k for k in changed if "/_delta_log/" not in k} <= bookkeeping, changed
    added = sorted(k for k in after.keys() - before.keys() if "/_delta_log/" not in k)
    shard = f"shard-{failing:06d}"
    assert len(added) == 2 and all(shard in name for name in added), added
    assert any("images/_delta_log/" in k for k in after.keys() - before.keys())
    assert sorted(before.keys() - after.keys()) == [f"_runs/{run_id}/failed/{shard}.json"]
    status = cli.run(["status", output], cli_env(cache), QUICK_TIMEOUT_S)
    assert f"run        {run_id}  (succeeded)" in status.stdout, status.describe()
    assert f"{NUM_SHARDS} of {NUM_SHARDS} committed, 0 failed" in status.stdout


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_exits_130_and_resume_completes(cli, cache, job, reference):
    source, output, expected = job
    args = run_args(source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS)
    run = cli.start(args, cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S}))
    wait_for(lambda: commits(output), run, "a first commit")
    run.signal(signal.SIGINT)
    result = run.wait(QUICK_TIMEOUT_S)
    assert result.returncode == 130, result.describe()
    run_id = result.run_id
    assert f"run {run_id}: interrupted;" in result.stdout
    assert "Traceback" not in result.stderr
    record = read_run_record(output, run_id)
    assert record["status"] == "interrupted", record
    assert "--resume" in record["message"]
    assert record["finished_at"] is not None
    interrupted_at = len(commits(output))
    assert 1 <= interrupted_at < NUM_SHARDS
    assert record["shards_committed"] == interrupted_at
    assert json.loads((output / "_status.json").read_text())["state"] == "interrupted"

    resumed = cli.run([*args, "--resume"], cli_env(cache))
    assert resumed.returncode == 0, resumed.describe()
    assert resumed.run_id == run_id
    assert read_run_record(output, run_id)["resumed"] == 1
    assert_complete(output, expected, reference, run_id)
