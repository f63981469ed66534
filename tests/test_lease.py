"""One run at a time per output: the lease (``OUTPUT/_lease.json``).

- The protocol on real storage (a local folder, the real S3-compatible server): a held lease
  refuses a second taker with the holder's name; an expired one is taken over, and of many
  concurrent takers of one expired lease exactly one wins; release deletes only one's own
  lease; a holder whose lease was taken over notices at its next renewal.
- ``yolo-batch run`` as real subprocesses: of two concurrent runs of one output exactly one
  proceeds, the other (and a ``--resume`` meanwhile) exits 1 naming the holder; a Ctrl-C'd run
  releases the lease; on S3, a live lease written by hand refuses a run.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.run.lease import Lease, LeaseHeldError, LeaseLostError, read_lease
from pipeline.store.layout import LEASE_FILE
from pipeline.store.storage import LocalStorage, S3Storage
from tests.reliability import Outcome, record
from tests.test_pipeline_e2e import QUICK_TIMEOUT_S, Input, cli_env, run_args, write_local_source
from tests.test_pipeline_faults import commits, wait_for

TTL_S = 30.0
TAKERS = 8
SLOW_SHARD_S = 2.0


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path: Path):
    """``(storage, output URI)`` on a local folder or the test S3 server."""
    if request.param == "local":
        return LocalStorage(), str(tmp_path / "out")
    request.getfixturevalue("s3_env")
    return S3Storage(), request.getfixturevalue("s3_prefix") + "out"


def _expired_body(token: str = "0123456789abcdef") -> bytes:
    now = time.time()
    return json.dumps(
        {
            "token": token,
            "host": "gone-host",
            "pid": 4242,
            "run_id": "20260101T000000Z-abcdef",
            "job": "nightly",
            "acquired_at": now - 600,
            "renewed_at": now - 300,
            "expires_at": now - 1,
        }
    ).encode()


def test_held_lease_refuses_a_second_taker_and_release_frees_it(output):
    storage, uri = output
    first = Lease(storage, uri, job="nightly", ttl_s=TTL_S)
    first.acquire()
    first.set_run_id("20260101T000000Z-abcdef")
    try:
        with pytest.raises(LeaseHeldError) as held:
            Lease(storage, uri, ttl_s=TTL_S).acquire()
        message = str(held.value)
        assert "run 20260101T000000Z-abcdef of job nightly" in message
        assert "UTC" in message and "\n" not in message
        first.check()
    finally:
        first.release()
    assert read_lease(storage, uri) is None
    with Lease(storage, uri, ttl_s=TTL_S) as second:
        assert read_lease(storage, uri).token == second.body.token


def test_expired_lease_has_exactly_one_taker(output):
    storage, uri = output
    storage.write_bytes(f"{uri}/{LEASE_FILE}", _expired_body())
    barrier = threading.Barrier(TAKERS)
    won: list[Lease] = []
    refused: list[str] = []

    def take() -> None:
        lease = Lease(storage, uri, ttl_s=TTL_S)
        barrier.wait()
        try:
            lease.acquire()
        except LeaseHeldError as exc:
            refused.append(str(exc))
        else:
            won.append(lease)

    threads = [threading.Thread(target=take) for _ in range(TAKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(won) == 1, refused
        assert len(refused) == TAKERS - 1
        assert read_lease(storage, uri).token == won[0].body.token
    finally:
        for lease in won:
            lease.release()
    record(
        Outcome(
            area="scheduling",
            case=f"{TAKERS} runs take over one expired lease at once ({type(storage).__name__})",
            trials=TAKERS,
            images=0,
            rows_lost=0,
            rows_duplicated=0,
            result="exactly one took it; the others were refused naming the winner",
        )
    )


def test_holder_notices_its_lease_was_taken_over(tmp_path: Path):
    storage, uri = LocalStorage(), str(tmp_path / "out")
    lease = Lease(storage, uri, ttl_s=TTL_S)
    lease.acquire()
    try:
        storage.write_bytes(f"{uri}/{LEASE_FILE}", _expired_body("feedfacefeedface"))
        lease.renew()
        with pytest.raises(LeaseLostError, match="resume this run"):
            lease.check()
    finally:
        lease.release()
    # Release leaves the other run's lease alone.
    assert read_lease(storage, uri).token == "feedfacefeedface"


# --------------------------------------------------------------------------- the CLI


def test_concurrent_runs_of_one_output_one_proceeds_and_ctrl_c_releases(
    cli, cache, tmp_path: Path, sample_images
):
    inputs = [Input(f"img-{i}.jpg", photo=i % 2) for i in range(4)]
    source, output = tmp_path / "src", tmp_path / "out"
    write_local_source(source, inputs, sample_images)
    args = run_args(source, output, "--shard-size", "1", "--commit-interval", "0")
    first = cli.start(args, cli_env(cache, faults={"slow_shards_s": SLOW_SHARD_S}))
    lease_path = output / LEASE_FILE

    def named_lease():
        return lease_path.exists() and json.loads(lease_path.read_text()).get("run_id")

    wait_for(named_lease, first, "the first run's lease")
    holder = json.loads(lease_path.read_text())["run_id"]
    runs_before = sorted(p.name for p in (output / "_runs").iterdir())

    second = cli.run(args, cli_env(cache), timeout=QUICK_TIMEOUT_S)
    assert second.returncode == 1, second.describe()
    (line,) = second.stderr.strip().splitlines()
    assert f"another run holds this output: run {holder}" in line
    assert "until" in line and "UTC" in line
    resumed = cli.run([*args, "--resume"], cli_env(cache), timeout=QUICK_TIMEOUT_S)
    assert resumed.returncode == 1, resumed.describe()
    assert f"run {holder}" in resumed.stderr
    # The refused runs wrote nothing: no run record of theirs, the holder's status intact.
    assert sorted(p.name for p in (output / "_runs").iterdir()) == runs_before
    status = cli.run(["status", output], cli_env(cache), timeout=QUICK_TIMEOUT_S)
    assert f"lease      held by run {holder} (pid {first.pid} on " in status.stdout, status.stdout

    wait_for(lambda: commits(output), first, "a first commit")
    first.signal(signal.SIGINT)
    interrupted = first.wait(QUICK_TIMEOUT_S)
    assert interrupted.returncode == 130, interrupted.describe()
    assert not lease_path.exists(), "an interrupted run keeps its lease"
    record(
        Outcome(
            area="scheduling",
            case="a second run (and a --resume) starts while a run holds the output",
            trials=2,
            images=len(inputs),
            rows_lost=0,
            rows_duplicated=0,
            result="refused with exit 1 naming the holder; the holder went on",
        )
    )
    record(
        Outcome(
            area="scheduling",
            case="Ctrl-C of the run holding the output's lease",
            trials=1,
            images=len(inputs),
            rows_lost=0,
            rows_duplicated=0,
            result="exit 130; lease released",
        )
    )


def test_live_lease_on_s3_refuses_a_run(cli, cache, s3_server, s3_prefix, sample_images):
    client = s3_server.client()
    bucket, _, base = s3_prefix[len("s3://") :].partition("/")
    client.put_object(Bucket=bucket, Key=f"{base}src/a.jpg", Body=sample_images[0].read_bytes())
    body = json.loads(_expired_body())
    body["expires_at"] = time.time() + 3600
    client.put_object(Bucket=bucket, Key=f"{base}out/{LEASE_FILE}", Body=json.dumps(body))
    result = cli.run(
        run_args(f"{s3_prefix}src/", f"{s3_prefix}out/"),
        cli_env(cache, s3=s3_server),
        timeout=QUICK_TIMEOUT_S,
    )
    assert result.returncode == 1, result.describe()
    assert "run 20260101T000000Z-abcdef of job nightly (pid 4242 on gone-host)" in result.stderr
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{base}out/_runs/")
    assert listed.get("KeyCount", 0) == 0  # refused before writing a run record
    record(
        Outcome(
            area="scheduling",
            case="a run starts while another holds the output's lease (S3 output)",
            trials=1,
            images=1,
            rows_lost=0,
            rows_duplicated=0,
            result="refused with exit 1 naming the holder and its expiry",
        )
    )


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path: Path):
    storage, uri = LocalStorage(), str(tmp_path / "out")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    body = json.loads(_expired_body())
    body.update(host=socket.gethostname(), pid=gone.pid, expires_at=time.time() + 3600)
    storage.write_bytes(f"{uri}/{LEASE_FILE}", json.dumps(body).encode())
    with Lease(storage, uri, ttl_s=TTL_S) as lease:
        assert read_lease(storage, uri).token == lease.body.token


def test_a_create_whose_reply_was_lost_is_recognised_as_ours(s3_env, s3_prefix):
    """The proxy lets the lease PUT through, then resets the connection: the client retries
    it, meets its own object (412) and must still hold the lease, not report itself."""
    from infra.local.fault_proxy import RESET, WRITE_METHODS, FaultProxy, FaultRule
    from pipeline.store.s3 import S3Options

    with FaultProxy(s3_env.endpoint_url, seed=7) as proxy:
        proxy.set_faults(FaultRule(RESET, 0.0, methods=WRITE_METHODS, keys=("_lease",), first=1))
        storage = S3Storage(S3Options(endpoint_url=proxy.endpoint_url))
        lease = Lease(storage, s3_prefix + "out", ttl_s=30)
        lease.acquire()
        try:
            assert proxy.stats().injected(RESET) == 1
            held = read_lease(storage, s3_prefix + "out")
            assert held is not None and held.token == lease.body.token
        finally:
            lease.release()
    assert read_lease(S3Storage(), s3_prefix + "out") is None
