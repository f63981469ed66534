"""One run at a time per output: the lease (``OUTPUT/_lease.json``).

- The protocol on real storage (a local folder, the real S3-compatible server): a held lease
  refuses a second taker with the holder's name; an expired one is taken over, and of many
  concurrent takers of one expired lease exactly one wins; release deletes only one's own
  lease; a holder whose lease was taken over notices at its next renewal; the takeover
  marker of a taker that died midway does not block the output.
- The storage's compare-and-swap under it: a write or delete conditional on the version read
  acts only on that version; of many local writers racing from one version, one wins.
- Fencing, with real stalls: a holder whose renewal write the store receives only after its
  lease expired and was taken over (the fault proxy holds it) does not overwrite the new
  holder's lease and finds itself lost; a holder process stopped (SIGSTOP) past its expiry
  and resumed after another run took the output over has its commit refused by the fence
  before anything reaches the tables' logs, while the new holder keeps the lease; a lost
  lease stops planning before any plan file is written.
- Same host: a lease is judged by its pid only in this boot and this PID namespace (a holder
  in another container with host networking is not taken for dead), a lease of an earlier
  boot of this machine is taken over at once, one of an earlier version simply expires.
- ``yolo-batch run`` as real subprocesses: of two concurrent runs of one output exactly one
  proceeds, the other (and a ``--resume`` meanwhile) exits 1 naming the holder; a Ctrl-C'd run
  releases the lease; on S3, a live lease written by hand refuses a run.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.run.lease import (
    Lease,
    LeaseHeldError,
    LeaseLostError,
    read_lease,
    this_place,
)
from pipeline.run.planner import Planner
from pipeline.run.shard_sizing import ShardSizer
from pipeline.store.layout import LEASE_FILE, OutputLayout
from pipeline.store.listing import open_listing
from pipeline.store.s3 import S3Options
from pipeline.store.sources import open_source
from pipeline.store.storage import LocalStorage, PreconditionFailedError, S3Storage, Versioned
from pipeline.store.tables import ResultTables
from tests import lease_holder
from tests.reliability import Outcome, record
from tests.test_pipeline_e2e import QUICK_TIMEOUT_S, Input, cli_env, run_args, write_local_source
from tests.test_pipeline_faults import commits, wait_for

TTL_S = 30.0
TAKERS = 8
SLOW_SHARD_S = 2.0
#: TTL of a holder that the tests stall: short, so its lease expires soon.
STALLED_TTL_S = 2.0
#: Seconds the fault proxy holds each request of the stalled holder: well past its TTL.
STALL_S = 8.0
#: Longest wait for a stalled holder's lease to expire, or for the holder process to answer.
WAIT_S = 60.0
POLL_S = 0.1
#: Local writers racing to replace one version of a file.
CAS_WRITERS = 16
REPO = Path(__file__).resolve().parents[1]


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


def test_a_takeover_marker_left_by_a_dead_taker_does_not_block_the_output(output):
    storage, uri = output
    storage.write_bytes(f"{uri}/{LEASE_FILE}", _expired_body())
    # A taker died between creating its marker and replacing the lease.
    storage.write_bytes(f"{uri}/{LEASE_FILE}.takeover-0123456789abcdef", _expired_body("dead"))
    with Lease(storage, uri, ttl_s=TTL_S) as lease:
        assert read_lease(storage, uri).token == lease.body.token
    record(
        Outcome(
            area="scheduling",
            case="a run finds an expired lease and the takeover marker of a taker that died "
            f"midway ({type(storage).__name__})",
            trials=1,
            images=0,
            rows_lost=0,
            rows_duplicated=0,
            result="the stale marker was removed and the lease taken over",
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


def test_a_renewal_that_landed_although_it_failed_is_renewed_not_lost(output):
    """A renewal that reached the store while its reply was lost and its retry failed leaves
    our own lease at a version we never saw: the next renewal, and the release, go on from it
    (under heavy faults this used to stop a healthy run as if another run held the output)."""
    storage, uri = output
    lease = Lease(storage, uri, ttl_s=TTL_S)
    lease.acquire()
    try:
        landed = lease.body.stamped(TTL_S)
        storage.write_bytes(lease.uri, landed.to_json())  # our renewal, its reply lost
        lease.renew()
        lease.check()  # not lost
        held = read_lease(storage, uri)
        assert held is not None and held.token == lease.body.token
        assert held.renewed_at >= landed.renewed_at
        storage.write_bytes(lease.uri, lease.body.stamped(TTL_S).to_json())  # once more
    finally:
        lease.release()
    assert read_lease(storage, uri) is None  # released from the version it never saw


# --------------------------------------------------------------------------- compare-and-swap


def test_conditional_writes_act_only_on_the_version_read(output):
    storage, uri = output
    target = f"{uri}/cas.json"
    first = storage.write_if_version(target, b"one", None)
    with pytest.raises(PreconditionFailedError):
        storage.write_if_version(target, b"other", None)  # only if absent
    assert storage.read_versioned(target).version == first
    second = storage.write_if_version(target, b"two", first)
    assert second != first
    with pytest.raises(PreconditionFailedError):
        storage.write_if_version(target, b"stale", first)
    with pytest.raises(PreconditionFailedError):
        storage.delete_if_version(target, first)
    assert storage.read_versioned(target) == Versioned(b"two", second)
    storage.delete_if_version(target, second)
    assert not storage.exists(target)
    with pytest.raises(PreconditionFailedError):
        storage.delete_if_version(target, second)
    with pytest.raises(PreconditionFailedError):
        storage.write_if_version(target, b"three", second)  # gone: nothing to replace


def test_local_writers_racing_from_one_version_have_one_winner(tmp_path: Path):
    storage, target = LocalStorage(), str(tmp_path / "cas.json")
    base = storage.write_if_version(target, b"base", None)
    barrier = threading.Barrier(CAS_WRITERS)
    won: list[int] = []

    def write(k: int) -> None:
        barrier.wait()
        try:
            storage.write_if_version(target, f"writer {k}".encode(), base)
        except PreconditionFailedError:
            return
        won.append(k)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(CAS_WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1, won
    assert storage.read_bytes(target) == f"writer {won[0]}".encode()


# --------------------------------------------------------------------------- fencing


def take_when_expired(storage, uri: str) -> Lease:
    """The output's lease, taken as soon as the current holder's has expired."""
    deadline = time.monotonic() + WAIT_S
    while True:
        lease = Lease(storage, uri, ttl_s=TTL_S)
        try:
            lease.acquire()
            return lease
        except LeaseHeldError:
            assert time.monotonic() < deadline, "the stalled holder's lease never expired"
            time.sleep(POLL_S)


def test_a_stalled_renewal_write_does_not_overwrite_the_new_holder(s3_env, s3_prefix):
    """The store receives the holder's renewal write only after its lease expired and another
    run took the output over: the write must fail, not replace the new holder's lease."""
    from infra.local.fault_proxy import FaultProxy

    uri, direct = s3_prefix + "out", S3Storage()
    with FaultProxy(s3_env.endpoint_url, record=True) as proxy:
        stalled = Lease(
            S3Storage(S3Options(endpoint_url=proxy.endpoint_url)), uri, ttl_s=STALLED_TTL_S
        )
        stalled.acquire()
        proxy.set_latency(STALL_S)  # from now on, each of its requests waits this long
        proxy.reset_stats()
        deadline = time.monotonic() + WAIT_S
        while not any(r.method == "PUT" and r.path.endswith(LEASE_FILE) for r in proxy.requests()):
            assert time.monotonic() < deadline, "the holder never sent a renewal"
            time.sleep(POLL_S)
        new = take_when_expired(direct, uri)  # while the renewal write is held
        proxy.set_latency(0.0)
        try:
            stalled.release()  # waits for the held write to land
            with pytest.raises(LeaseLostError, match="now held by"):
                stalled.check()
            held = read_lease(direct, uri)
            assert held is not None and held.token == new.body.token, held
            new.renew()
            new.fence()
        finally:
            new.release()
    assert read_lease(direct, uri) is None
    record(
        Outcome(
            area="scheduling",
            case="a holder's lease renewal reaches the store after its lease expired and was "
            "taken over (S3 output)",
            trials=1,
            images=0,
            rows_lost=0,
            rows_duplicated=0,
            result="the renewal was refused (If-Match) and the holder found itself lost; the "
            "new holder kept the lease",
        )
    )


def _read_line(proc: subprocess.Popen) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], WAIT_S)
    assert ready, "the lease holder process did not answer"
    return proc.stdout.readline()


def test_a_stopped_holder_resumed_after_a_takeover_commits_nothing(output):
    storage, uri = output
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.lease_holder", uri, str(STALLED_TTL_S)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _read_line(proc)
        assert ready, f"the lease holder process failed (exit {proc.wait()})"
        stalled_token = json.loads(ready)["token"]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            new = take_when_expired(storage, uri)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate("commit\n", timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        assert proc.returncode == 0, out
        outcome = json.loads(out.strip().splitlines()[-1])
        assert "refused" in outcome, outcome
        assert "now held by" in outcome["refused"] or "renewed in time" in outcome["refused"]
        assert ResultTables(uri).committed_shards(lease_holder.RUN_ID) == {}
        held = read_lease(storage, uri)
        assert held is not None and held.token == new.body.token != stalled_token
        new.fence()
    finally:
        new.release()
    record(
        Outcome(
            area="scheduling",
            case="a driver stopped (SIGSTOP) past its lease's expiry, resumed after another "
            f"run took the output over, commits a finished shard ({type(storage).__name__})",
            trials=1,
            images=4,
            rows_lost=0,
            rows_duplicated=0,
            result="the fence refused the commit: nothing reached the log; the new holder kept "
            "the lease",
        )
    )


def test_a_lost_lease_stops_planning_before_any_plan_file(tmp_path: Path):
    storage, output = LocalStorage(), tmp_path / "out"
    source = tmp_path / "src"
    source.mkdir()
    for k in range(8):
        (source / f"{k}.jpg").write_bytes(b"")
    lease = Lease(storage, str(output), ttl_s=TTL_S)
    lease.acquire()
    try:
        storage.write_bytes(f"{output}/{LEASE_FILE}", _expired_body("feedfacefeedface"))
        lease.renew()  # finds the lease taken over
        planner = Planner(
            open_listing(open_source(str(source)), None),
            storage=storage,
            layout=OutputLayout(str(output)),
            run_id=lease_holder.RUN_ID,
            source=str(source),
            sizer=ShardSizer(fixed=2, batch_size=1, actors=1),
            fence=lease.fence,
        ).start()
        with pytest.raises(LeaseLostError):
            deadline = time.monotonic() + WAIT_S
            while not planner.finished:
                assert time.monotonic() < deadline, "planning neither finished nor failed"
                planner.wait(POLL_S)
                planner.take()
        planner.stop()
    finally:
        lease.release()
    runs = output / "_runs"
    assert not runs.exists() or not any(p.is_file() for p in runs.rglob("*")), list(runs.rglob("*"))


# --------------------------------------------------------------------------- same host


def _here_body(**changes) -> bytes:
    """A live lease (expiring in an hour) of a holder on this host, in this boot and PID
    namespace, with ``changes``."""
    place = this_place()
    body = json.loads(_expired_body())
    body.update(
        host=place.host,
        boot_id=place.boot_id,
        machine_id=place.machine_id,
        pid_namespace=place.pid_namespace,
        expires_at=time.time() + 3600,
    )
    body.update(changes)
    return json.dumps(body).encode()


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


SAME_HOST_CASES = {
    "its process is gone (same boot and PID namespace)": ({}, True),
    "its pid is not in our PID namespace (a container with host networking)": (
        {"pid_namespace": "pid:[1]"},
        False,
    ),
    "it was written by an earlier version (no boot id or PID namespace)": (
        {"boot_id": None, "machine_id": None, "pid_namespace": None},
        False,
    ),
    "another machine has the same host name (another machine and boot id)": (
        {"boot_id": "another-boot", "machine_id": "another-machine"},
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(SAME_HOST_CASES))
def test_a_same_host_lease_is_judged_by_pid_only_in_our_boot_and_pid_namespace(
    case: str, tmp_path: Path
):
    place = this_place()
    if not (place.boot_id and place.pid_namespace and place.machine_id):
        pytest.skip("this system tells no boot id, machine id or PID namespace")
    changes, taken = SAME_HOST_CASES[case]
    storage, uri = LocalStorage(), str(tmp_path / "out")
    storage.write_bytes(f"{uri}/{LEASE_FILE}", _here_body(pid=_dead_pid(), **changes))
    lease = Lease(storage, uri, ttl_s=TTL_S)
    if taken:
        with lease:
            assert read_lease(storage, uri).token == lease.body.token
    else:
        with pytest.raises(LeaseHeldError, match="run 20260101T000000Z-abcdef"):
            lease.acquire()
        assert read_lease(storage, uri).token == "0123456789abcdef"
    record(
        Outcome(
            area="scheduling",
            case=f"a live-looking lease of this host whose pid is not running here: {case}",
            trials=1,
            images=0,
            rows_lost=0,
            rows_duplicated=0,
            result="taken over at once" if taken else "not taken over: it simply expires",
        )
    )


def test_a_lease_of_an_earlier_boot_of_this_machine_is_taken_over_at_once(tmp_path: Path):
    place = this_place()
    if not (place.boot_id and place.machine_id):
        pytest.skip("this system tells no boot id or machine id")
    storage, uri = LocalStorage(), str(tmp_path / "out")
    # Its pid is running now (ours), but in another boot it named another process.
    body = _here_body(pid=os.getpid(), boot_id="an-earlier-boot", pid_namespace="pid:[1]")
    storage.write_bytes(f"{uri}/{LEASE_FILE}", body)
    with Lease(storage, uri, ttl_s=TTL_S) as lease:
        assert read_lease(storage, uri).token == lease.body.token
    record(
        Outcome(
            area="scheduling",
            case="a live-looking lease of an earlier boot of this machine (it rebooted)",
            trials=1,
            images=0,
            rows_lost=0,
            rows_duplicated=0,
            result="taken over at once",
        )
    )
