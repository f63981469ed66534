"""Faults of the actors and of the driver's process, and how the driver answers them, as real
``yolo-batch run`` subprocesses on a real local Ray (:mod:`pipeline.faults` injects them).

- One actor fails every shard (a device in a sticky error state) while the other works: it is
  replaced, the attempts it used up are given back, no shard fails; its replacement cannot
  load the model: the slot rests and starts a new actor later, the run goes on meanwhile.
- A shard hangs in its actor past ``--shard-deadline``: the attempt fails, the wedged actor is
  replaced, the shard's next attempt commits it.
- Every actor meets a store that refuses its process (expired credentials, through the fault
  proxy): the run stops at once with the store's one sentence, the record ``error``, no
  failed shards and no ``error`` rows; a resume with the store healed completes it.
- SIGTERM (what schedulers send) stops a run as Ctrl-C does: exit 143, the record
  ``interrupted``, the lease released; ``--resume`` completes it exactly.
- A shard marked failed and later committed by a resume's reconcile (its earlier session
  killed between its claim and its commit) loses its failure mark.
- GPU actors reserve several CPUs each by default, never more per GPU than the nodes have.

Outcomes are recorded for the Reliability table (:mod:`tests.reliability`).
"""

# The fixtures imported from other test modules are used as test arguments (F811 there).
# ruff: noqa: F811

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from infra.local.fault_proxy import READ_METHODS, FaultRule
from pipeline import faults
from pipeline.run.actors import (
    CPU_ACTOR_CPUS,
    GPU_ACTOR_CPUS_PER_GPU,
    actor_cpus,
    actor_options,
    for_cluster,
    gpu_node_cpus_per_gpu,
)
from pipeline.run.config import RunConfig
from tests.reliability import Outcome, record, tally
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    Input,
    assert_run_results,
    cli_env,
    read_run_record,
    run_args,
    write_local_source,
)
from tests.test_pipeline_faults import (  # noqa: F401  (fixtures: job, reference)
    NUM_SHARDS,
    PER_SHARD_COMMITS,
    SHARD_SIZE,
    assert_complete,
    commits,
    job,
    reference,
    wait_for,
)
from tests.test_reliability_process import claimed_not_committed, image_rows, kill_driver
from tests.test_reliability_storage import (  # noqa: F401  (fixture: proxy)
    committed_uris,
    error_rows,
    image_key,
    proxied_env,
    proxy,
    upload_job,
)

AREA = "process faults"
EXIT_ERROR, EXIT_FAILED_SHARDS, EXIT_TERMINATED = 1, 2, 143
#: Seconds each shard waits before starting (``slow_shards_s``): time to act mid-run, and
#: (with the inputs below) a run long enough for a rested slot to start again.
SLOW_SHARD_S = 1.5
BROKEN_ACTOR_SLOW_SHARD_S = 3.0
BROKEN_ACTOR_INPUTS = 16
#: The third actor start (the two first actors' replacement) fails to load the model.
FAILED_START = 2
#: A hung attempt's deadline in the deadline test; and how long it would hang without one.
SHARD_DEADLINE_S = 30
HANG_S = 3600
#: Seconds a claim of the ``detections`` log waits for its ``images`` commit: the window in
#: which the driver is killed.
CLAIM_DELAY_S = 60.0
ATTEMPT_TOKEN = re.compile(r"^a(\d+)-")


def status_of(output: Path) -> dict:
    return json.loads((output / "_status.json").read_text())


# --------------------------------------------------------------------------- a broken actor


@pytest.mark.slow
def test_an_actor_failing_every_shard_is_replaced_and_a_slot_that_cannot_start_rests(
    cli, cache, tmp_path, sample_images, reference
):
    inputs = [Input(f"p/photo {i}.jpg", photo=i % 2) for i in range(BROKEN_ACTOR_INPUTS)]
    source, output, claims = tmp_path / "photos", tmp_path / "results", tmp_path / "claims"
    claims.mkdir()
    expected = write_local_source(source, inputs, sample_images)
    faults = {
        "claims_dir": str(claims),
        "sticky_actor": True,
        "fail_actor_starts": [FAILED_START],
        "slow_shards_s": BROKEN_ACTOR_SLOW_SHARD_S,
    }
    args = run_args(
        source, output, "--shard-size", 1, *PER_SHARD_COMMITS, "--actors", 2,
        "--cpus-per-actor", 1,
    )  # fmt: skip
    result = cli.run(args, cli_env(cache, faults=faults))

    # No shard ran out of attempts: the broken actor's failures were not the shards'.
    assert result.returncode == 0, result.describe()
    run_id = result.run_id
    run_record = read_run_record(output, run_id)
    assert (run_record["status"], run_record["shards_failed"]) == ("succeeded", 0), run_record
    assert run_record["shards_committed"] == BROKEN_ACTOR_INPUTS
    assert not list(output.glob(f"_runs/{run_id}/failed/*"))
    assert_run_results(str(output), expected, reference, run_id)
    # The broken actor was replaced; the replacement failed to load the model; the slot
    # rested and started another actor later, while the run went on.
    assert "shard attempts in a row while other actors finished theirs" in result.stderr
    assert "failed to load the model" in result.stderr
    assert "trying a new actor in" in result.stderr
    starts = sorted(p.name for p in claims.glob("actor-start-*"))
    assert f"actor-start-{FAILED_START + 1}" in starts, starts
    status = status_of(output)
    assert status["actor_restarts"] >= 2, status
    lost, duplicated = tally(image_rows(output, run_id), expected)
    assert (lost, duplicated) == (0, 0)
    record(
        Outcome(
            area=AREA,
            case="one actor fails every shard (a sticky device error) while another works; "
            "its replacement cannot load the model",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result="broken actor replaced, no shard out of attempts; the slot rested and "
            "started again; completed",
        )
    )


# --------------------------------------------------------------------------- a wedged actor


@pytest.mark.slow
def test_a_shard_hung_past_its_deadline_fails_the_attempt_and_replaces_the_actor(
    cli, cache, tmp_path, job, reference
):
    source, output, expected = job
    claims = tmp_path / "claims"
    claims.mkdir()
    hung = 1
    faults = {"claims_dir": str(claims), "hang_shards": [hung], "hang_s": HANG_S}
    args = run_args(
        source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS, "--actors", 2,
        "--shard-deadline", SHARD_DEADLINE_S,
    )  # fmt: skip
    result = cli.run(args, cli_env(cache, faults=faults))

    assert result.returncode == 0, result.describe()
    assert (claims / f"hang-shard-{hung}").exists()  # the first attempt did hang
    assert_complete(output, expected, reference, result.run_id)
    assert "seems wedged" in result.stderr
    # The hung attempt counted; the one after it was committed.
    tokens = commits(output)
    assert int(ATTEMPT_TOKEN.match(tokens[hung])[1]) == 2, tokens
    status = status_of(output)
    assert status["actor_restarts"] >= 1 and status["shard_retries"] >= 1, status
    lost, duplicated = tally(image_rows(output, result.run_id), expected)
    assert (lost, duplicated) == (0, 0)
    record(
        Outcome(
            area=AREA,
            case="a shard hangs in its actor past --shard-deadline",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result="attempt failed, wedged actor replaced, shard retried; completed",
        )
    )


# --------------------------------------------------------------------------- a refusing store


@pytest.mark.slow
def test_every_actor_refused_by_the_store_stops_the_run_with_its_sentence(
    cli, cache, proxy, s3_server, s3_env, s3_prefix, sample_images, reference
):
    count = NUM_SHARDS * SHARD_SIZE
    source, output, expected = upload_job(s3_server, s3_prefix, sample_images, count)
    # Every image read but the first (the driver's preflight reads that one): every shard
    # meets expired credentials.
    images = tuple("/" + image_key(i) for i in range(1, count))
    proxy.set_faults(FaultRule("expired", 1.0, methods=READ_METHODS, keys=images))
    args = run_args(source, output, "--shard-size", SHARD_SIZE, "--actors", 2)
    env = proxied_env(cache, s3_server, proxy)
    first = cli.run(args, env)

    assert first.returncode == EXIT_ERROR, first.describe()
    assert "yolo-batch: error: " in first.stderr
    assert "credentials have expired" in first.stderr.split("yolo-batch: error: ")[-1]
    assert "Traceback" not in first.stderr
    client = s3_server.client()
    bucket, base = s3_prefix.removeprefix("s3://").split("/", 1)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{base}results/_runs/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    (record_key,) = [k for k in keys if k.endswith("/run.json")]
    run_record = json.loads(client.get_object(Bucket=bucket, Key=record_key)["Body"].read())
    assert run_record["status"] == "error", run_record
    assert "credentials have expired" in run_record["message"], run_record
    assert not [k for k in keys if "/failed/" in k], keys  # no shard used up its attempts
    assert error_rows(output) == 0  # the store's refusal is no image's fault

    proxy.set_faults()  # fresh credentials
    resumed = cli.run([*args, "--resume"], env)
    assert resumed.returncode == 0, resumed.describe()
    run_id = resumed.run_id
    assert run_id == run_record["run_id"]
    assert_run_results(output, expected, reference, run_id)
    lost, duplicated = tally(committed_uris(output, run_id), expected)
    assert (lost, duplicated) == (0, 0)
    record(
        Outcome(
            area=AREA,
            case="every actor refused by the store (expired credentials on every image read)",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result="run stopped at once with the store's sentence, no failed shards, no "
            "error rows; resume completed",
        )
    )


# --------------------------------------------------------------------------- SIGTERM


@pytest.mark.slow
def test_sigterm_stops_the_run_as_ctrl_c_and_resume_completes(cli, cache, job, reference):
    source, output, expected = job
    args = run_args(source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS)
    run = cli.start(args, cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S}))
    wait_for(lambda: commits(output), run, "a first commit")
    run.signal(signal.SIGTERM)
    result = run.wait(QUICK_TIMEOUT_S)

    assert result.returncode == EXIT_TERMINATED, result.describe()
    run_id = result.run_id
    assert f"run {run_id}: interrupted;" in result.stdout
    assert "Traceback" not in result.stderr
    run_record = read_run_record(output, run_id)
    assert run_record["status"] == "interrupted", run_record
    assert "SIGTERM" in run_record["message"] and "--resume" in run_record["message"]
    assert run_record["finished_at"] is not None
    stopped_at = len(commits(output))
    assert 1 <= stopped_at < NUM_SHARDS
    assert run_record["shards_committed"] == stopped_at
    assert status_of(output)["state"] == "interrupted"
    assert not (output / "_lease.json").exists()  # released, not left to expire

    resumed = cli.run([*args, "--resume"], cli_env(cache))
    assert resumed.returncode == 0, resumed.describe()
    assert resumed.run_id == run_id
    assert_complete(output, expected, reference, run_id)
    lost, duplicated = tally(image_rows(output, run_id), expected)
    assert (lost, duplicated) == (0, 0)
    record(
        Outcome(
            area=AREA,
            case="SIGTERM to the driver mid-run (as Kubernetes sends)",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result="exit 143, record interrupted, lease released; resume completed",
        )
    )


# --------------------------------------------------------------------------- failure marks


@pytest.mark.slow
def test_a_failure_mark_goes_once_a_resume_commits_the_shard_by_reconciling(
    cli, cache, job, reference
):
    source, output, expected = job
    failing = 1
    args = run_args(
        source, output, "--shard-size", SHARD_SIZE, *PER_SHARD_COMMITS, "--max-attempts", 1
    )
    first = cli.run(args, cli_env(cache, faults={"fail_shards": [failing]}))
    assert first.returncode == EXIT_FAILED_SHARDS, first.describe()
    run_id = first.run_id
    marker = output / "_runs" / run_id / "failed" / f"shard-{failing:06d}.json"
    assert marker.exists()

    # The retry is claimed in the detections log, and the driver dies before its images
    # commit: the next resume commits it from the claim (reconcile), without running it.
    run = cli.start([*args, "--resume"], cli_env(cache, faults={"claim_delay_s": CLAIM_DELAY_S}))
    claims = wait_for(lambda: claimed_not_committed(output), run, "a claim without a commit")
    assert failing in claims, claims
    kill_driver(run)

    final = cli.run([*args, "--resume"], cli_env(cache))
    assert final.returncode == 0, final.describe()
    assert commits(output)[failing] == claims[failing]  # committed from the claim
    assert_complete(output, expected, reference, run_id)
    assert not marker.exists(), "a committed shard is still marked failed"
    status = cli.run(["status", output], cli_env(cache), QUICK_TIMEOUT_S)
    assert f"{NUM_SHARDS} of {NUM_SHARDS} committed, 0 failed" in status.stdout, status.describe()
    assert "failed     shard" not in status.stdout
    lost, duplicated = tally(image_rows(output, run_id), expected)
    assert (lost, duplicated) == (0, 0)
    record(
        Outcome(
            area=AREA,
            case="a shard marked failed, retried, the driver SIGKILLed between its claim and "
            "its commit",
            trials=1,
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result="resume committed it from the claim and removed its failure mark",
        )
    )


# --------------------------------------------------------------------------- GPU actors' CPUs


def node(cpus: float, gpus: float = 0.0, alive: bool = True) -> dict:
    """A node as ``ray.nodes()`` describes it."""
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"Alive": alive, "Resources": resources}


def test_gpu_actors_reserve_several_cpus_but_no_more_per_gpu_than_the_nodes_have():
    gpu = RunConfig(source="s", output="o", gpus_per_actor=1.0)
    half = RunConfig(source="s", output="o", gpus_per_actor=0.5)
    # Unknown cluster: the named default per GPU, scaled by the GPUs an actor holds.
    assert actor_cpus(gpu) == GPU_ACTOR_CPUS_PER_GPU > 1
    assert actor_cpus(half) == GPU_ACTOR_CPUS_PER_GPU * 0.5
    # Bounded by the fewest CPUs per GPU of the GPU nodes, and at least one.
    assert actor_cpus(gpu, cpus_per_gpu=2.0) == 2
    assert actor_cpus(gpu, cpus_per_gpu=16.0) == GPU_ACTOR_CPUS_PER_GPU
    assert actor_cpus(half, cpus_per_gpu=1.0) == 1
    # --cpus-per-actor wins; CPU actors keep theirs.
    assert actor_cpus(RunConfig(source="s", output="o", gpus_per_actor=1.0, cpus_per_actor=8)) == 8
    assert actor_cpus(RunConfig(source="s", output="o")) == CPU_ACTOR_CPUS

    # The nodes: a CPU-only head does not count, nor a dead node; the tightest GPU node does.
    nodes = [node(64), node(16, 4), node(24, 8), node(2, 8, alive=False)]
    assert gpu_node_cpus_per_gpu(nodes) == 3.0
    assert gpu_node_cpus_per_gpu([node(64)]) is None
    fixed = for_cluster(gpu, nodes)
    assert fixed.cpus_per_actor == 3
    assert actor_options(fixed)["num_cpus"] == 3  # every actor, replacements included
    assert actor_options(for_cluster(gpu, [node(64, 2)]))["num_cpus"] == GPU_ACTOR_CPUS_PER_GPU
    cpu = RunConfig(source="s", output="o", gpus_per_actor=0)
    assert for_cluster(cpu, nodes).cpus_per_actor is None


# --------------------------------------------------------------------------- the injector


def test_a_sticky_claim_is_owned_by_every_thread_of_the_claiming_process_alone(tmp_path):
    """The sticky actor's claim: the threads of the process that made it all own it (none of
    them reads it half-written and takes its process for another), and no other process
    does. An actor running two shards at once otherwise got one of them through and passed
    for healthy."""
    threads, claims = 8, 100
    for number in range(claims):
        claim = tmp_path / f"sticky-{number}"
        start = threading.Barrier(threads)

        def owns(_, claim=claim, start=start) -> bool:
            start.wait()
            return faults._owns(claim)

        with ThreadPoolExecutor(threads) as pool:
            owned = list(pool.map(owns, range(threads)))
        assert owned == [True] * threads, f"claim {number}: {owned}"
    other = subprocess.run(
        [sys.executable, "-c", "import pathlib, sys; from pipeline import faults; "
         f"print(faults._owns(pathlib.Path({str(claim)!r})))"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert other.stdout.strip() == "False"
