"""Storage faults: ``yolo-batch run`` reading from and writing to S3 through a faulty network.

Every S3 request of a run (the driver's and the actors', reads and writes) goes through
:class:`~infra.local.fault_proxy.FaultProxy` in front of the real SeaweedFS server, which
injects throttling (503 SlowDown), 500s, connections reset mid-response, responses slower than
``--s3-read-timeout`` and bodies that stall half-way.

- Mixed faults on 1%, 10% and 30% of all requests: the run exits 0 with exactly one ``images``
  row per input and the reference detections; or it exits 2 with failed shards, and a
  ``--resume`` without faults completes it exactly. The proxy's counters show every kind was
  injected on both GETs (image reads) and PUTs (Parquet writes).
- Throttling that outlasts every retry on the images of two shards: exit 2, those shards
  failed, not one ``error`` row committed for their images (a transient failure must never
  become a final row); a resume with the store healed completes the run exactly.
- In-process: the shard processor retries transient image reads and never records them as
  ``error`` rows, while a missing object still is one.
- ``--s3-max-attempts`` / ``--s3-read-timeout`` reach the client; without the flag, botocore's
  own ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` are respected.
- ``-m long``: more images, rates of 30-50%, several seeds.

Each case is recorded for the README's Reliability table (:mod:`tests.reliability`).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from pathlib import Path

import pytest

from infra.local.fault_proxy import (
    FAULT_KINDS,
    READ_METHODS,
    FaultProxy,
    FaultRule,
    ProxyStats,
    mixed_faults,
)
from pipeline.results.query import query
from pipeline.store.s3 import S3Options
from pipeline.store.sources import SourceObject
from pipeline.store.storage import S3Storage, TransientStorageError
from pipeline.worker import ActorConfig, ShardProcessor, ShardTask
from pipeline.worker.model_spec import resolve_model
from tests.reliability import Outcome, record, tally
from tests.test_pipeline_e2e import (
    RUN_TIMEOUT_S,
    Input,
    assert_run_results,
    cli_env,
    reference_detections,
    run_args,
)
from yolov4.hub import CACHE_ENV_VAR

AREA = "storage faults"
NUM_IMAGES = 16
SHARD_SIZE = 4
#: The client's read timeout in these runs; ``slow`` / ``stall`` faults stay silent longer.
READ_TIMEOUT_S = 1.0
SLOW_S = 2.5
#: botocore attempts per request in the runs that must exhaust their retries.
SHORT_S3_ATTEMPTS = 2
SHORT_SHARD_ATTEMPTS = 2
#: Shards whose image reads are throttled without end in the persistent-fault test.
PERSISTENT_SHARDS = (1, 2)
EXIT_OK, EXIT_FAILED_SHARDS = 0, 2
FAILED_SHARDS_RE = re.compile(r"shards committed, (\d+) failed")
LONG_IMAGES = 32
LONG_SEEDS = (101, 202, 303)
LONG_RATES = (0.3, 0.5)


@pytest.fixture(scope="module")
def reference(tiny_weights_path: Path, sample_images: list[Path]) -> list[list[tuple]]:
    return reference_detections(tiny_weights_path.parent, sample_images)


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server.endpoint_url, seed=1, slow_s=SLOW_S) as running:
        yield running


def image_key(i: int) -> str:
    return f"photos/img-{i:03d}.jpg"


def upload_job(s3_server, s3_prefix: str, sample_images, count: int):
    """``count`` copies of the sample photos under ``PREFIX/photos/`` (straight to the store);
    returns (source, output, expected ``Input`` by URI)."""
    client = s3_server.client()
    bucket, base = s3_prefix.removeprefix("s3://").split("/", 1)
    expected = {}
    for i in range(count):
        item = Input(image_key(i), photo=i % 2)
        client.put_object(Bucket=bucket, Key=base + item.key, Body=item.data(sample_images))
        expected[f"{s3_prefix}{item.key}"] = item
    return f"{s3_prefix}photos/", f"{s3_prefix}results", expected


def proxied_env(cache: Path, s3_server, proxy: FaultProxy) -> dict[str, str]:
    env = cli_env(cache, s3=s3_server)
    env["AWS_ENDPOINT_URL"] = proxy.endpoint_url
    return env


def every_kind_once(count: int) -> list[FaultRule]:
    """Each fault kind forced once on an actor's image read and once on an actor's Parquet
    write, on top of the rates. (The first image is left out: the driver's preflight reads its
    first byte, and would take all the forced faults.)"""
    images = tuple("/" + image_key(i) for i in range(1, count))
    rules = []
    for kind in FAULT_KINDS:
        rules.append(FaultRule(kind, 0.0, methods=READ_METHODS, keys=images, first=1))
        rules.append(
            FaultRule(kind, 0.0, methods={"PUT"}, keys=("/images/", "/detections/"), first=1)
        )
    return rules


def committed_uris(output: str, run_id: str) -> list[str]:
    table = query(output, f"SELECT image_uri FROM all_images WHERE run_id = '{run_id}'")
    return table.column(0).to_pylist()


def error_rows(output: str) -> int:
    table = query(output, "SELECT count(*) FROM all_images WHERE status = 'error'")
    return table.column(0)[0].as_py()


def describe_faults(stats: ProxyStats) -> str:
    per_kind = ", ".join(
        f"{kind} {stats.injected(kind, {'GET', 'HEAD'})}/{stats.injected(kind, {'PUT'})}"
        for kind in FAULT_KINDS
    )
    requests = sum(stats.requests.values())
    return f"{stats.injected()} of {requests} requests faulted (GET/PUT: {per_kind})"


def run_until_complete(cli, args, env, proxy, output, expected, reference):
    """Run with the proxy's faults; if shards failed, heal the proxy and resume. Returns
    (run id, result text, fault stats of the faulty run, seconds)."""
    started = time.monotonic()
    first = cli.run(args, env, RUN_TIMEOUT_S)
    stats = proxy.stats()
    assert first.returncode in (EXIT_OK, EXIT_FAILED_SHARDS), first.describe()
    run_id = first.run_id
    assert error_rows(output) == 0, "a transient fault became an error row"
    if first.returncode == EXIT_OK:
        result = "completed"
    else:
        failed = FAILED_SHARDS_RE.search(first.stdout).group(1)
        proxy.set_faults()
        resumed = cli.run([*args, "--resume", run_id], env, RUN_TIMEOUT_S)
        assert resumed.returncode == EXIT_OK, resumed.describe()
        result = f"{failed} shard(s) failed; resume completed"
    assert_run_results(output, expected, reference, run_id)
    return run_id, result, stats, time.monotonic() - started


def record_outcome(case, output, run_id, expected, result, stats, *, long=False) -> None:
    lost, duplicated = tally(committed_uris(output, run_id), expected)
    record(
        Outcome(
            area=AREA,
            case=case,
            trials=stats.injected(),
            images=len(expected),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"{result}; {describe_faults(stats)}",
            long=long,
        )
    )
    assert lost == duplicated == 0


# --------------------------------------------------------------------------- mixed fault rates


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.01, 0.10, 0.30])
def test_mixed_faults_on_reads_and_writes_lose_and_double_nothing(
    cli, cache, proxy, s3_server, s3_env, s3_prefix, sample_images, reference, rate
):
    source, output, expected = upload_job(s3_server, s3_prefix, sample_images, NUM_IMAGES)
    proxy.set_faults(*mixed_faults(rate), *every_kind_once(NUM_IMAGES))
    args = run_args(
        source,
        output,
        "--shard-size",
        SHARD_SIZE,
        "--s3-read-timeout",
        READ_TIMEOUT_S,
    )
    env = proxied_env(cache, s3_server, proxy)
    run_id, result, stats, seconds = run_until_complete(
        cli, args, env, proxy, output, expected, reference
    )
    for kind in FAULT_KINDS:  # every kind met image reads and Parquet writes
        assert stats.injected(kind, {"GET"}) >= 1, (kind, stats)
        assert stats.injected(kind, {"PUT"}) >= 1, (kind, stats)
    assert stats.injected() >= 2 * len(FAULT_KINDS)
    print(f"rate {rate:.0%}: {result} in {seconds:.0f} s; {describe_faults(stats)}")
    record_outcome(
        f"{rate:.0%} of S3 requests faulted (503 SlowDown, 500, reset mid-body, slower than "
        "the read timeout, stalled body), reads and writes",
        output,
        run_id,
        expected,
        result,
        stats,
    )


# --------------------------------------------------------------------------- faults that persist


@pytest.mark.slow
def test_throttling_beyond_every_retry_fails_shards_without_error_rows_and_resume_completes(
    cli, cache, proxy, s3_server, s3_env, s3_prefix, sample_images, reference
):
    source, output, expected = upload_job(s3_server, s3_prefix, sample_images, NUM_IMAGES)
    keys = tuple(
        "/" + image_key(i)
        for shard in PERSISTENT_SHARDS
        for i in range(shard * SHARD_SIZE, (shard + 1) * SHARD_SIZE)
    )
    proxy.set_faults(FaultRule("slowdown", 1.0, methods=READ_METHODS, keys=keys))
    args = run_args(
        source,
        output,
        "--shard-size",
        SHARD_SIZE,
        "--max-attempts",
        SHORT_SHARD_ATTEMPTS,
        "--s3-max-attempts",
        SHORT_S3_ATTEMPTS,
        "--s3-read-timeout",
        READ_TIMEOUT_S,
    )
    env = proxied_env(cache, s3_server, proxy)
    # botocore's own variable, respected by the run (and the default): "adaptive" mode would
    # rate-limit the whole client under endless throttling (down to ~0.5 requests/s), taking
    # minutes here to reach the same outcome.
    env["AWS_RETRY_MODE"] = "standard"
    started = time.monotonic()
    first = cli.run(args, env, RUN_TIMEOUT_S)
    stats = proxy.stats()
    assert first.returncode == EXIT_FAILED_SHARDS, first.describe()
    run_id = first.run_id

    # Those shards failed, with the cause; the others committed; no row for a faulted image.
    client = s3_server.client()
    bucket, base = s3_prefix.removeprefix("s3://").split("/", 1)
    for shard in PERSISTENT_SHARDS:
        key = f"{base}results/_runs/{run_id}/failed/shard-{shard:06d}.json"
        marker = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert marker["attempts"] == SHORT_SHARD_ATTEMPTS, marker
        assert "SlowDown" in marker["reason"], marker
        assert "throttling or unreachable" in marker["reason"], marker
    record_key = f"{base}results/_runs/{run_id}/run.json"
    run_record = json.loads(client.get_object(Bucket=bucket, Key=record_key)["Body"].read())
    assert run_record["shards_failed"] == len(PERSISTENT_SHARDS), run_record
    faulted = {f"{s3_prefix}{key.lstrip('/')}" for key in keys}
    assert sorted(committed_uris(output, run_id)) == sorted(set(expected) - faulted)
    assert error_rows(output) == 0
    # Every try went to the faulted keys only: requests x botocore attempts x retries.
    assert stats.faults == {("slowdown", "GET"): stats.injected()}
    assert stats.injected() >= len(keys) * SHORT_SHARD_ATTEMPTS * SHORT_S3_ATTEMPTS

    proxy.set_faults()  # healed
    resumed = cli.run([*args, "--resume", run_id], env, RUN_TIMEOUT_S)
    assert resumed.returncode == EXIT_OK, resumed.describe()
    assert resumed.run_id == run_id
    assert_run_results(output, expected, reference, run_id)
    seconds = time.monotonic() - started
    print(f"persistent throttling: {describe_faults(stats)}; {seconds:.0f} s in all")
    record_outcome(
        f"every read of {len(PERSISTENT_SHARDS)} shards' images throttled (503 SlowDown) "
        "beyond all retries",
        output,
        run_id,
        expected,
        f"{len(PERSISTENT_SHARDS)} shards failed, no error rows; resume completed",
        stats,
    )


# --------------------------------------------------------------------------- in process


@pytest.fixture(scope="module")
def model(tiny_weights_path: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV_VAR, str(tiny_weights_path.parent))
        return resolve_model()


def test_the_processor_retries_transient_reads_and_never_makes_them_error_rows(
    proxy, s3_env, s3_prefix, sample_images, model
):
    spec, weights = model
    direct = S3Storage()
    uris = [f"{s3_prefix}{image_key(i)}" for i in range(4)]
    for i, uri in enumerate(uris):
        direct.write_bytes(uri, sample_images[i % 2].read_bytes())
    objects = tuple(SourceObject(uri) for uri in [*uris, f"{s3_prefix}photos/missing.jpg"])
    options = S3Options(
        endpoint_url=proxy.endpoint_url,
        read_timeout_s=READ_TIMEOUT_S,
        max_attempts=SHORT_S3_ATTEMPTS,
    )
    config = ActorConfig(batch_size=4, fetch_threads=4)
    output = s3_prefix + "out"
    with ShardProcessor(spec, weights, config, options) as processor:
        # Every kind, forced on the first reads: all retried; only the missing one is an error.
        proxy.set_faults(
            *[FaultRule(kind, 0.0, methods=READ_METHODS, first=1) for kind in FAULT_KINDS]
        )
        result = processor.process(ShardTask("run-a", 0, 1, "a1-x", output, objects))
        assert (result.num_ok, result.num_errors) == (len(uris), 1)
        assert proxy.stats().injected() == len(FAULT_KINDS)

        # A read that keeps failing: the shard attempt raises, saying why and what to do.
        proxy.set_faults(FaultRule("internal", 1.0, methods=READ_METHODS, keys=("img-002",)))
        with pytest.raises(TransientStorageError) as failed:
            processor.process(ShardTask("run-a", 0, 2, "a2-x", output, objects))
        message = str(failed.value)
        assert uris[2] in message and "InternalError" in message, message
        assert "throttling or unreachable" in message and "--resume" in message, message
        assert direct.exists(f"{output}/images/run_id=run-a/shard-000000-a1-x.parquet")
        assert not direct.exists(f"{output}/images/run_id=run-a/shard-000000-a2-x.parquet")


# --------------------------------------------------------------------------- long, randomised


@pytest.mark.long
@pytest.mark.parametrize("seed", LONG_SEEDS)
def test_long_random_fault_mixes_lose_and_double_nothing(
    cli, cache, s3_server, s3_env, s3_bucket, sample_images, reference, seed
):
    draw = random.Random(seed)
    rate = draw.uniform(*LONG_RATES)
    kinds = tuple(k for k in FAULT_KINDS if draw.random() < 0.8) or FAULT_KINDS
    s3_attempts = draw.choice((2, 3, 4))
    s3_prefix = f"s3://{s3_bucket}/long-{seed}-{uuid.uuid4().hex[:8]}/"
    source, output, expected = upload_job(s3_server, s3_prefix, sample_images, LONG_IMAGES)
    with FaultProxy(s3_server.endpoint_url, seed=seed, slow_s=SLOW_S) as proxy:
        proxy.set_faults(*mixed_faults(rate, kinds))
        args = run_args(
            source,
            output,
            "--shard-size",
            SHARD_SIZE,
            "--max-attempts",
            SHORT_SHARD_ATTEMPTS,
            "--s3-max-attempts",
            s3_attempts,
            "--s3-read-timeout",
            READ_TIMEOUT_S,
        )
        env = proxied_env(cache, s3_server, proxy)
        run_id, result, stats, seconds = run_until_complete(
            cli, args, env, proxy, output, expected, reference
        )
    print(
        f"seed {seed}: rate {rate:.0%}, kinds {','.join(kinds)}, --s3-max-attempts "
        f"{s3_attempts}: {result} in {seconds:.0f} s; {describe_faults(stats)}"
    )
    record_outcome(
        f"seed {seed}: {rate:.0%} of S3 requests faulted ({', '.join(kinds)}), "
        f"--s3-max-attempts {s3_attempts}",
        output,
        run_id,
        expected,
        result,
        stats,
        long=True,
    )


# --------------------------------------------------------------------------- settings


def test_retry_settings_respect_the_aws_configuration(monkeypatch):
    """Flags win; without them, botocore's documented variables; without those, ours."""
    from pipeline.store.s3 import DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_MODE, make_client

    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)

    def settings(options: S3Options) -> tuple:
        config = make_client(options).meta.config
        return config.retries, config.read_timeout, config.connect_timeout

    endpoint = "http://127.0.0.1:9"  # never contacted
    assert settings(S3Options(endpoint_url=endpoint)) == (
        {"total_max_attempts": DEFAULT_MAX_ATTEMPTS, "mode": DEFAULT_RETRY_MODE},
        60,
        10,
    )
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    assert settings(S3Options(endpoint_url=endpoint))[0] == {
        "total_max_attempts": 5,
        "mode": "standard",
    }
    explicit = S3Options(endpoint_url=endpoint, max_attempts=2, read_timeout_s=1.5)
    assert settings(explicit) == ({"total_max_attempts": 2, "mode": "standard"}, 1.5, 10)
    with pytest.raises(ValueError, match="--s3-max-attempts"):
        S3Options(max_attempts=0)
    with pytest.raises(ValueError, match="read timeout"):
        S3Options(read_timeout_s=0)
