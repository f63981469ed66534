"""Process faults: a driver SIGKILLed again and again, actors killed repeatedly, a node lost.

Every scenario ends with the exact expected tables (one ``images`` row per input, the
reference detections for each photo, nothing else visible), checked with ``pipeline.results.query``,
and its outcome is recorded for the README's Reliability table (:mod:`tests.reliability`).

- The same run's driver is SIGKILLed five times in a row, each time at a different point:
  mid-planning, between a shard's data files and its log commit, mid-dispatch, while the
  actors start, and at a random moment; each ``--resume`` picks up where the last left off.
- Actors are SIGKILLed one after another while they process shards: each is replaced, its
  shards go again, nothing is lost or doubled.
- A worker node of a two-node Ray cluster is lost mid-shard: its shards go to the actor on
  the remaining node; the replacement actor that cannot be placed takes no work.

The ``long`` versions (``pytest -m long``) kill the driver at many random moments and kill
actors throughout a larger run.
"""

# The fixtures imported from test_pipeline_faults are used as test arguments (F811 there).
# ruff: noqa: F811

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from pipeline.results.query import query
from tests.independent_reader import assert_independent_reader_agrees
from tests.reliability import Outcome, record, tally
from tests.test_pipeline_e2e import Input, assert_run_results, cli_env, run_args, write_local_source
from tests.test_pipeline_e2e import psutil as ps
from tests.test_pipeline_faults import (  # noqa: F401  (fixtures: job, reference)
    FAULT_INPUTS,
    NUM_SHARDS,
    PER_SHARD_COMMITS,
    SHARD_SIZE,
    assert_complete,
    commits,
    job,
    reference,
    shard_files,
    wait_for,
)

#: Seconds the driver waits after each plan shard: a window to kill it mid-planning.
PLAN_SHARD_DELAY_S = 0.6
#: Seconds between a shard's data files and its log commit: a window to kill it there.
COMMIT_DELAY_S = 4.0
#: Seconds between a batch's detections claim and its images commit: the window to kill in.
CLAIM_DELAY_S = 60.0
#: Seconds each shard waits before starting: a window to kill mid-dispatch.
SLOW_SHARD_S = 1.5
#: Seed of the random kill moments in the normal suite (the long tests draw a fresh one).
KILL_SEED = 20261129
#: The random kill lands this many seconds after the driver starts, at most.
RANDOM_KILL_MAX_S = 12.0
#: Shards a dead actor's retries may need: several kills can land on the same shard.
ATTEMPTS_UNDER_ACTOR_KILLS = 6


def run_dirs(output: Path) -> list[Path]:
    return sorted(output.glob("_runs/*"))


def status_state(output: Path) -> str | None:
    try:
        return json.loads((output / "_status.json").read_text()).get("state")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def kill_driver(run) -> None:
    """SIGKILL the driver, then what it started (as a machine losing the driver would)."""
    run.signal(signal.SIGKILL)
    run.kill_tree(grace_s=0)
    assert run.proc.returncode == -signal.SIGKILL


def uncommitted_shard_with_both_files(output: Path) -> int | None:
    committed = commits(output)
    for shard_id in range(NUM_SHARDS):
        files = shard_files(output, shard_id)
        if shard_id not in committed and all(len(names) == 1 for names in files.values()):
            return shard_id
    return None


def claimed_not_committed(output: Path) -> dict[int, str]:
    """Shards whose ``detections`` file is in its log while ``images`` has none (attempt
    tokens by shard)."""
    try:
        table = DeltaTable(str(output / "detections"))
    except TableNotFoundError:
        return {}
    committed = commits(output)
    claims = {}
    for path in pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist():
        match = re.search(r"shard-(\d+)-([A-Za-z0-9_-]+)\.parquet$", path)
        if match and int(match[1]) not in committed:
            claims[int(match[1])] = match[2]
    return claims


def image_rows(output: Path, run_id: str) -> list[str]:
    table = query(str(output), f"SELECT image_uri FROM all_images WHERE run_id = '{run_id}'")
    return table.column(0).to_pylist()


# --------------------------------------------------------------------------- the driver


@pytest.mark.slow
def test_driver_killed_five_times_at_different_points_converges(cli, cache, job, reference):
    source, output, expected = job
    args = run_args(source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS)
    rng = random.Random(KILL_SEED)
    kills: list[str] = []

    # 1. Mid-planning: some plan shards written, the plan not complete.
    run = cli.start(args, cli_env(cache, faults={"plan_shard_delay_s": PLAN_SHARD_DELAY_S}))
    wait_for(lambda: list(output.glob("_runs/*/plan/shard-*.parquet")), run, "a first plan shard")
    kill_driver(run)
    (run_dir,) = run_dirs(output)
    run_id = run_dir.name
    assert not (run_dir / "plan.json").exists(), "the kill landed after planning finished"
    kills.append("mid-planning")

    # 2. Between a shard's data files and its log commit.
    run = cli.start(
        [*args, "--resume"],
        cli_env(cache, faults={"commit_delay_s": COMMIT_DELAY_S}),
    )
    orphan = wait_for(
        lambda: uncommitted_shard_with_both_files(output), run, "data files not in the log"
    )
    kill_driver(run)
    assert orphan not in commits(output), "the kill landed after the commit"
    orphan_files = shard_files(output, orphan)
    kills.append("between data files and log commit")

    # 3. Mid-dispatch: after one more shard committed, with others in flight.
    before = len(commits(output))
    run = cli.start([*args, "--resume"], cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S}))
    wait_for(lambda: len(commits(output)) > before, run, "another commit")
    kill_driver(run)
    assert len(commits(output)) < NUM_SHARDS, "the run finished before the kill"
    kills.append("mid-dispatch")

    # 4. While the actors start (the model loading, nothing dispatched yet).
    run = cli.start([*args, "--resume"], cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S}))
    wait_for(lambda: status_state(output) == "starting actors", run, "actors starting")
    kill_driver(run)
    kills.append("while actors start")

    # 5. At a random moment.
    delay = rng.uniform(0.5, RANDOM_KILL_MAX_S)
    run = cli.start([*args, "--resume"], cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S}))
    time.sleep(delay)
    if run.proc.poll() is None:
        kill_driver(run)
        kills.append(f"random ({delay:.1f} s after start)")

    final = cli.run([*args, "--resume"], cli_env(cache))
    assert final.returncode == 0, final.describe()
    assert final.run_id == run_id
    assert run_dirs(output) == [run_dir]  # every resume continued the same run
    assert_complete(output, expected, reference, run_id)
    # The orphaned attempt was never committed: the log holds a later attempt, the tables
    # (checked above) hold its rows once, and the orphan's files were deleted at the end.
    token = commits(output)[orphan]
    assert token not in str(orphan_files), (token, orphan_files)
    for name in (*orphan_files["images"], *orphan_files["detections"]):
        assert not (output / name).exists(), name

    lost, duplicated = tally(image_rows(output, run_id), expected)
    assert (lost, duplicated) == (0, 0)
    assert_independent_reader_agrees(output)
    record(
        Outcome(
            area="process faults",
            case="driver SIGKILLed 5 times on one run: " + ", ".join(kills),
            trials=len(kills),
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"each --resume continued; run {len(kills) + 1} completed exactly",
        )
    )


@pytest.mark.slow
def test_driver_killed_between_claim_and_commit_is_completed_on_resume(cli, cache, job, reference):
    """The driver dies after a batch's ``detections`` commit and before its ``images``
    commit: the views never show the half-committed shards, and ``--resume`` commits them
    from the same attempt's files instead of running them again."""
    source, output, expected = job
    args = run_args(source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS)
    run = cli.start(args, cli_env(cache, faults={"claim_delay_s": CLAIM_DELAY_S}))
    claims = wait_for(lambda: claimed_not_committed(output), run, "a claim without a commit")
    kill_driver(run)
    (run_dir,) = run_dirs(output)
    run_id = run_dir.name
    # Half a shard never shows: the detections view holds exactly the committed images'.
    row = query(
        str(output),
        "SELECT (SELECT count(*) FROM detections) AS shown, "
        "(SELECT coalesce(sum(num_detections), 0) FROM images) AS counted, "
        "(SELECT count(*) FROM all_detections) AS logged",
    ).to_pylist()[0]
    assert row["shown"] == row["counted"] < row["logged"], row

    final = cli.run([*args, "--resume"], cli_env(cache))
    assert final.returncode == 0, final.describe()
    assert_complete(output, expected, reference, run_id)
    committed = commits(output)
    for shard_id, token in claims.items():
        assert committed[shard_id] == token, "the claimed attempt was run again"
    lost, duplicated = tally(image_rows(output, run_id), expected)
    assert (lost, duplicated) == (0, 0)
    assert_independent_reader_agrees(output)
    record(
        Outcome(
            area="process faults",
            case="driver SIGKILLed between a batch's detections and images log commits",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"--resume committed the {len(claims)} claimed shard(s) without rerunning",
        )
    )


# --------------------------------------------------------------------------- actors


def busy_actor_among(procs):
    """The first of ``procs`` that is an actor inside ``process_shard``, or None."""
    for proc in procs:
        try:
            if "DetectorActor.process_shard" in " ".join(proc.cmdline()):
                return proc
        except ps.Error:  # gone meanwhile
            continue
    return None


def busy_actor(run):
    """An actor process of ``run`` inside ``process_shard``, or None."""
    return busy_actor_among(run.descendants())


def kill_actors(run, output: Path, kills: int) -> list[int]:
    """SIGKILL ``kills`` actors one after another, each while it holds a shard."""
    killed: list[int] = []
    for _ in range(kills):
        actor = wait_for(
            lambda: (a := busy_actor(run)) and a.pid not in killed and a, run, "a busy actor"
        )
        killed.append(actor.pid)
        actor.kill()
    return killed


@pytest.mark.slow
def test_actors_killed_repeatedly_are_replaced_and_nothing_is_lost(cli, cache, job, reference):
    source, output, expected = job
    kills = 3
    args = run_args(
        source,
        output,
        "--shard-size",
        SHARD_SIZE,
        *PER_SHARD_COMMITS,
        "--max-attempts",
        ATTEMPTS_UNDER_ACTOR_KILLS,
    )
    run = cli.start(args, cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S}))
    killed = kill_actors(run, output, kills)
    assert len(set(killed)) == kills
    assert len(commits(output)) < NUM_SHARDS, "the run finished before the last kill"

    result = run.wait()
    assert result.returncode == 0, result.describe()
    run_id = result.run_id
    assert_complete(output, expected, reference, run_id)
    status = json.loads((output / "_status.json").read_text())
    assert status["actor_restarts"] == kills, status
    lost, duplicated = tally(image_rows(output, run_id), expected)
    assert (lost, duplicated) == (0, 0)
    record(
        Outcome(
            area="process faults",
            case=f"actor SIGKILLed mid-shard, {kills} times in one run",
            trials=kills,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"{kills} replacements, {status['shard_retries']} shard retries; completed",
        )
    )


# --------------------------------------------------------------------------- a lost node

#: Seconds between the GCS's health checks of a node, and the misses that declare it dead.
#: Ray's defaults take ~30 s to notice a lost node; the test cluster notices in ~3 s.
HEALTH_CHECK_PERIOD_MS = 1000
HEALTH_CHECK_FAILURES = 3


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A Ray head (1 CPU) and one worker node (1 CPU) on this machine, token auth on.

    The token is the user's default one (``~/.ray/auth_token``, made if missing with Ray's
    own ``ray get-auth-token --generate``), which every process here reads.
    """
    from ray._raylet import Config
    from ray.cluster_utils import Cluster

    ray_cli = Path(sys.executable).with_name("ray")
    subprocess.run([str(ray_cli), "get-auth-token", "--generate"], check=True, capture_output=True)
    # Ray reads its auth mode once per process: refresh it after setting it, as Ray does.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    Config.initialize("")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "_system_config": {
                "health_check_period_ms": HEALTH_CHECK_PERIOD_MS,
                "health_check_failure_threshold": HEALTH_CHECK_FAILURES,
            },
        },
    )
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_worker_node_lost_mid_run_completes_on_the_remaining_node(
    cli, cache, tmp_path, sample_images, reference, two_node_cluster
):
    cluster, worker = two_node_cluster
    # Each actor runs its two queued shards at once: enough shards that the worker's actor
    # still has some after the first commit.
    inputs = [Input(f"n/photo {i}.jpg", photo=i % 2) for i in range(16)]
    source, output = tmp_path / "photos", tmp_path / "results"
    expected = write_local_source(source, inputs, sample_images)
    args = run_args(
        source,
        output,
        "--shard-size",
        2,
        *PER_SHARD_COMMITS,
        "--actors",
        2,
        "--cpus-per-actor",
        1,
        "--address",
        cluster.address,
    )
    env = cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S})
    # Joining a cluster by address needs the mode and the token, as Ray documents.
    env["RAY_AUTH_MODE"] = "token"
    run = cli.start(args, env)

    def busy_on_worker():
        actor = busy_actor_on(worker)
        return actor if actor and commits(output) else None

    wait_for(busy_on_worker, run, "a busy actor on the worker node with a shard committed")
    cluster.remove_node(worker, allow_graceful=False)

    result = run.wait()
    assert result.returncode == 0, result.describe()
    run_id = result.run_id
    status = json.loads((output / "_status.json").read_text())
    assert status["actor_restarts"] >= 1, status
    lost, duplicated = tally(image_rows(output, run_id), expected)
    assert (lost, duplicated) == (0, 0)
    assert_run_results(str(output), expected, reference, run_id)
    record(
        Outcome(
            area="process faults",
            case="worker node lost mid-shard (2-node Ray cluster)",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result="shards moved to the remaining node; completed",
        )
    )


def busy_actor_on(node):
    """An actor process of the Ray node ``node`` inside ``process_shard``, or None."""
    try:
        raylet = ps.Process(node.all_processes["raylet"][0].process.pid)
        return busy_actor_among(raylet.children(recursive=True))
    except (ps.NoSuchProcess, KeyError, IndexError):
        return None


# --------------------------------------------------------------------------- long, randomised

#: Driver kills in the long test, each at a random moment of a random resume.
LONG_DRIVER_KILLS = 15
#: Actor kills in the long test, at random moments of one larger run.
LONG_ACTOR_KILLS = 8
LONG_INPUTS = 24
#: Enough shards that a run outlasts LONG_ACTOR_KILLS kills with progress between them (with
#: 24 inputs the other actor's commits could finish the run after six).
LONG_ACTOR_KILL_INPUTS = 48


def commits_of(output: Path) -> list[int]:
    return list(commits(output))


def long_job(tmp_path: Path, sample_images, count: int = LONG_INPUTS) -> tuple[Path, Path, dict]:
    inputs = [Input(f"long/{i // 6}/photo {i}.jpg", photo=i % 2) for i in range(count)]
    source, output = tmp_path / "photos", tmp_path / "results"
    return source, output, write_local_source(source, inputs, sample_images)


@pytest.mark.long
def test_long_driver_killed_at_many_random_moments(cli, cache, tmp_path, sample_images, reference):
    source, output, expected = long_job(tmp_path, sample_images)
    seed = int(time.time())
    rng = random.Random(seed)
    args = run_args(source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS)
    windows = {
        "plan_shard_delay_s": PLAN_SHARD_DELAY_S,
        "commit_delay_s": COMMIT_DELAY_S,
        "slow_shards_s": SLOW_SHARD_S,
    }
    landed = 0
    for attempt in range(LONG_DRIVER_KILLS):
        faults = {name: value for name, value in windows.items() if rng.random() < 0.5}
        resume = ["--resume"] if run_dirs(output) else []
        run = cli.start([*args, *resume], cli_env(cache, faults=faults))
        time.sleep(rng.uniform(0.5, RANDOM_KILL_MAX_S))
        if run.proc.poll() is None:
            kill_driver(run)
            landed += 1
        elif run.proc.returncode != 0:
            pytest.fail(f"resume {attempt} failed (seed {seed}):\n{run.result().describe()}")
    final = cli.run([*args, "--resume"], cli_env(cache))
    assert final.returncode == 0, f"seed {seed}\n{final.describe()}"
    (run_dir,) = run_dirs(output)
    lost, duplicated = tally(image_rows(output, run_dir.name), expected)
    assert (lost, duplicated) == (0, 0), seed
    assert_run_results(str(output), expected, reference, run_dir.name)
    record(
        Outcome(
            area="process faults",
            case=f"driver SIGKILLed at random moments of {LONG_DRIVER_KILLS} resumes",
            trials=landed,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"{landed} kills landed (seed {seed}); final resume completed exactly",
            long=True,
        )
    )


@pytest.mark.long
def test_long_actors_killed_throughout_a_run(cli, cache, tmp_path, sample_images, reference):
    source, output, expected = long_job(tmp_path, sample_images, LONG_ACTOR_KILL_INPUTS)
    seed = int(time.time())
    rng = random.Random(seed)
    args = run_args(
        source,
        output,
        "--shard-size",
        SHARD_SIZE,
        *PER_SHARD_COMMITS,
        "--max-attempts",
        LONG_ACTOR_KILLS + 2,
    )
    run = cli.start(args, cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S / 2}))
    killed = 0
    for _ in range(LONG_ACTOR_KILLS):
        # Progress between kills: deaths in a row with no shard finished are a crash loop,
        # which the driver rightly gives up on (MAX_ACTOR_REPLACEMENTS).
        done = len(commits_of(output))
        wait_for(lambda n=done: len(commits_of(output)) > n or not n, run, "progress")
        actor = wait_for(lambda: busy_actor(run), run, "a busy actor")
        time.sleep(rng.uniform(0.0, SLOW_SHARD_S))
        try:
            actor.kill()
            killed += 1
        except ps.NoSuchProcess:
            pass
    result = run.wait()
    assert result.returncode == 0, f"seed {seed}\n{result.describe()}"
    lost, duplicated = tally(image_rows(output, result.run_id), expected)
    assert (lost, duplicated) == (0, 0), seed
    assert_run_results(str(output), expected, reference, result.run_id)
    status = json.loads((output / "_status.json").read_text())
    record(
        Outcome(
            area="process faults",
            case=f"actors SIGKILLed at random moments, {LONG_ACTOR_KILLS} times in one run",
            trials=killed,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"{status['actor_restarts']} replacements, {status['shard_retries']} shard "
            f"retries (seed {seed}); completed exactly",
            long=True,
        )
    )
