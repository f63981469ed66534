"""Liveness and misfiled failures: reads that hang, and a store that refuses the process itself.

Real SeaweedFS behind :class:`~infra.local.fault_proxy.FaultProxy`, real local files and FIFOs,
the real :class:`~pipeline.worker.ShardProcessor`; the end-to-end cases run ``yolo-batch run``
on a real local Ray.

- A store that refuses the credentials or the clock (``ExpiredToken``,
  ``RequestTimeTooSkewed``, ``InvalidAccessKeyId``, no credentials at all) is never an image's
  ``error`` row: the shard attempt fails with :class:`NodeFaultError`, whose message names the
  cause and the fix; a refusal that passes (credentials refreshed) costs only retries. (A run
  where every actor meets it stops with that sentence: ``tests/test_actor_faults.py``.)
- A read that never ends (a FIFO named ``.jpg``, an S3 body that drips a byte at a time) costs
  its shard attempt after ``--image-timeout``, and on the last attempt becomes the image's
  ``error`` row (``fetch: timed out after N s``); an unrelated shard queued behind it on the
  same model finishes; an actor whose read threads are mostly stuck reports itself unhealthy.

Each case is recorded for the Reliability table (:mod:`tests.reliability`).
"""

# ruff: noqa: F811  (pytest fixtures imported from other test modules)
from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from infra.local.fault_proxy import DRIP, EXPIRED, READ_METHODS, SKEWED, FaultProxy, FaultRule
from pipeline.results.query import query
from pipeline.store.s3 import S3Options
from pipeline.store.sources import SourceObject
from pipeline.store.storage import NodeFaultError, S3Storage
from pipeline.worker import ActorConfig, ShardProcessor, ShardTask
from pipeline.worker.deadlines import ImageDeadlineError
from pipeline.worker.tasks import ActorUnhealthyError
from tests.reliability import Outcome, record, tally
from tests.test_pipeline_e2e import RUN_TIMEOUT_S, run_args
from tests.test_reliability_storage import (  # noqa: F401  (fixtures: model, proxy)
    model,
    proxied_env,
    proxy,
    upload_job,
)

#: An image's deadline in these tests; a dripping body would take hours.
IMAGE_TIMEOUT_S = 2.0
#: Seconds a test waits for a shard that must not hang before calling it hung.
LIVENESS_BOUND_S = 120.0
EXIT_OK = 0
NUM_IMAGES = 8
SHARD_SIZE = 2


def upload(s3_prefix: str, sample_images, count: int) -> list[str]:
    """``count`` copies of the sample photos under ``PREFIX/photos/``; their URIs."""
    storage = S3Storage()
    uris = []
    for i in range(count):
        uri = f"{s3_prefix}photos/img-{i:03d}.jpg"
        storage.write_bytes(uri, sample_images[i % 2].read_bytes())
        uris.append(uri)
    return uris


def processor_for(spec, weights, proxy: FaultProxy, **config) -> ShardProcessor:
    options = S3Options(endpoint_url=proxy.endpoint_url, read_timeout_s=5.0, max_attempts=2)
    return ShardProcessor(spec, weights, ActorConfig(**config), options)


def run_in_thread(processor: ShardProcessor, task: ShardTask) -> dict:
    """Start ``processor.process(task)`` in a thread; the dict gets ``result`` or ``error``."""
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = processor.process(task)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    outcome["thread"] = threading.Thread(target=work, daemon=True)
    outcome["thread"].start()
    return outcome


def error_rows_of(result) -> list[dict]:
    """The ``error`` rows of a shard attempt's ``images`` file: ``image_uri`` and ``error``."""
    uri = result.files["images"].uri
    storage = S3Storage() if uri.startswith("s3://") else None
    data = storage.read_bytes(uri) if storage else Path(uri).read_bytes()
    table = pq.read_table(io.BytesIO(data), columns=["image_uri", "status", "error"])
    return [
        {"image_uri": row["image_uri"], "error": row["error"]}
        for row in table.to_pylist()
        if row["status"] == "error"
    ]


# --------------------------------------------------------------------------- node faults


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        (EXPIRED, "the credentials have expired"),
        (SKEWED, "clock is too far from the store's"),
    ],
)
def test_a_store_refusing_the_process_fails_the_attempt_not_the_images(
    proxy, s3_env, s3_prefix, sample_images, model, kind, cause
):
    uris = upload(s3_prefix, sample_images, 3)
    objects = tuple(SourceObject(uri) for uri in uris)
    proxy.set_faults(FaultRule(kind, 1.0, methods=READ_METHODS))
    processor = processor_for(*model, proxy, batch_size=2, fetch_threads=2)
    with processor, pytest.raises(NodeFaultError) as failed:
        processor.process(ShardTask("run-n", 0, 1, "a1-n", s3_prefix + "out", objects))
    message = str(failed.value)
    assert cause in message and "every node" in message and "--resume" in message, message
    assert not S3Storage().exists(f"{s3_prefix}out/images/run_id=run-n/shard-000000-a1-n.parquet")


def test_wrong_keys_and_missing_credentials_fail_the_attempt_not_the_images(
    s3_env, s3_prefix, sample_images, model, monkeypatch, tmp_path
):
    spec, weights = model
    uris = upload(s3_prefix, sample_images, 2)
    objects = tuple(SourceObject(uri) for uri in uris)
    config = ActorConfig(batch_size=2, fetch_threads=2)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN000000000")
    processor = ShardProcessor(spec, weights, config)
    with processor, pytest.raises(NodeFaultError, match="does not know this access key id"):
        processor.process(ShardTask("run-k", 0, 1, "a1-k", s3_prefix + "out", objects))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    processor = ShardProcessor(spec, weights, config)
    with processor, pytest.raises(NodeFaultError, match="no usable credentials"):
        processor.process(ShardTask("run-k", 0, 2, "a2-k", s3_prefix + "out", objects))


# --------------------------------------------------------------------------- hung reads


def test_a_fifo_named_jpg_is_an_error_row_at_once(model, sample_images, tmp_path):
    spec, weights = model
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(sample_images[0].read_bytes())
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: forever
    objects = (SourceObject(str(fifo)), SourceObject(str(photo)))
    with ShardProcessor(spec, weights, ActorConfig(batch_size=2, fetch_threads=2)) as processor:
        outcome = run_in_thread(
            processor, ShardTask("run-f", 0, 1, "a1-f", str(tmp_path / "out"), objects)
        )
        outcome["thread"].join(LIVENESS_BOUND_S)
        assert not outcome["thread"].is_alive(), "the shard hung on the FIFO"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert (result.num_ok, result.num_errors) == (1, 1)
    assert error_rows_of(result) == [
        {"image_uri": str(fifo), "error": "fetch: not a regular file (a FIFO, socket or device)"}
    ]
    record(
        Outcome(
            area="hostile input",
            case="a FIFO named .jpg (a read that would block forever)",
            trials=1,
            images=2,
            rows_lost=0,
            rows_duplicated=0,
            result="error row at once: fetch: not a regular file (a FIFO, socket or device)",
        )
    )


def test_a_dripping_body_fails_the_attempt_then_is_an_error_row_and_spares_the_next_shard(
    proxy, s3_env, s3_prefix, sample_images, model
):
    uris = upload(s3_prefix, sample_images, 4)
    hung = uris[1]
    proxy.set_faults(FaultRule(DRIP, 1.0, methods={"GET"}, keys=("img-001",)))
    output = s3_prefix + "out"
    hanging = tuple(SourceObject(uri) for uri in uris[:2])
    unrelated = tuple(SourceObject(uri) for uri in uris[2:])
    with processor_for(
        *model, proxy, batch_size=2, fetch_threads=4, image_timeout_s=IMAGE_TIMEOUT_S
    ) as processor:
        # Not the last attempt: the attempt fails, naming the image and the deadline; the
        # shard queued behind it on the model finishes meanwhile.
        first = run_in_thread(processor, ShardTask("run-d", 0, 1, "a1-d", output, hanging))
        second = run_in_thread(processor, ShardTask("run-d", 1, 1, "a1-e", output, unrelated))
        for outcome in (first, second):
            outcome["thread"].join(LIVENESS_BOUND_S)
            assert not outcome["thread"].is_alive(), "a shard hung behind the dripping read"
        assert isinstance(first.get("error"), ImageDeadlineError), first
        message = str(first["error"])
        assert hung in message and f"timed out after {IMAGE_TIMEOUT_S:g} s" in message, message
        assert second["result"].num_ok == len(unrelated), second

        # The last attempt: the image that hangs every time is an error row; the rest are ok.
        last = run_in_thread(
            processor,
            ShardTask("run-d", 0, 3, "a3-d", output, hanging, final_attempt=True),
        )
        last["thread"].join(LIVENESS_BOUND_S)
        assert not last["thread"].is_alive()
        result = last["result"]
        assert (result.num_ok, result.num_errors) == (1, 1)
        assert error_rows_of(result) == [
            {"image_uri": hung, "error": f"fetch: timed out after {IMAGE_TIMEOUT_S:g} s"}
        ]
    record(
        Outcome(
            area="storage faults",
            case="an S3 body that drips a byte every 0.2 s (never trips the read timeout), "
            "in-process",
            trials=2,
            images=len(uris),
            rows_lost=0,
            rows_duplicated=0,
            result=f"attempt failed after {IMAGE_TIMEOUT_S:g} s, the shard queued behind it "
            "finished; on the last attempt an error row (fetch: timed out after N s)",
        )
    )


def test_an_actor_whose_read_threads_are_stuck_reports_itself_unhealthy(
    proxy, s3_env, s3_prefix, sample_images, model
):
    uris = upload(s3_prefix, sample_images, 4)
    proxy.set_faults(FaultRule(DRIP, 1.0, methods={"GET"}, keys=("img-000", "img-001")))
    objects = tuple(SourceObject(uri) for uri in uris)
    with processor_for(
        *model, proxy, batch_size=2, fetch_threads=2, image_timeout_s=IMAGE_TIMEOUT_S
    ) as processor:
        task = ShardTask("run-u", 0, 3, "a3-u", s3_prefix + "out", objects, final_attempt=True)
        with pytest.raises(ActorUnhealthyError, match="fetch threads are stuck"):
            processor.process(task)


# --------------------------------------------------------------------------- end to end


def image_rows(output: str) -> list[dict]:
    try:
        return query(output, "SELECT image_uri, status, error FROM all_images").to_pylist()
    except Exception:  # noqa: BLE001 - no table yet: no rows
        return []


@pytest.mark.slow
def test_credentials_that_expire_for_a_while_cost_retries_not_rows(
    cli, cache, proxy, s3_server, s3_env, s3_prefix, sample_images
):
    source, output, expected = upload_job(s3_server, s3_prefix, sample_images, NUM_IMAGES)
    uris = list(expected)
    keys = tuple(f"img-{i:03d}" for i in range(1, NUM_IMAGES))
    proxy.set_faults(FaultRule(EXPIRED, 0.0, methods={"GET"}, keys=keys, first=3))
    env = proxied_env(cache, s3_server, proxy)
    result = cli.run(run_args(source, output, "--shard-size", SHARD_SIZE), env, RUN_TIMEOUT_S)
    assert result.returncode == EXIT_OK, result.describe()
    rows = image_rows(output)
    lost, duplicated = tally([row["image_uri"] for row in rows], uris)
    errors = [row for row in rows if row["status"] != "ok"]
    record(
        Outcome(
            area="storage faults",
            case="ExpiredToken on 3 image reads, then credentials good again",
            trials=proxy.stats().injected(),
            images=len(uris),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"completed; {len(errors)} error rows",
        )
    )
    assert errors == [] and lost == duplicated == 0, rows


@pytest.mark.slow
def test_an_image_that_hangs_every_time_ends_as_an_error_row_and_the_run_completes(
    cli, cache, proxy, s3_server, s3_env, s3_prefix, sample_images
):
    source, output, expected = upload_job(s3_server, s3_prefix, sample_images, NUM_IMAGES)
    uris = list(expected)
    hung = uris[3]
    proxy.set_faults(FaultRule(DRIP, 1.0, methods={"GET"}, keys=("img-003",)))
    env = proxied_env(cache, s3_server, proxy)
    args = run_args(
        source,
        output,
        "--shard-size",
        SHARD_SIZE,
        "--image-timeout",
        IMAGE_TIMEOUT_S,
        "--max-attempts",
        2,
    )
    result = cli.run(args, env, RUN_TIMEOUT_S)
    assert result.returncode == EXIT_OK, result.describe()
    rows = image_rows(output)
    lost, duplicated = tally([row["image_uri"] for row in rows], uris)
    errors = {row["image_uri"]: row["error"] for row in rows if row["status"] == "error"}
    record(
        Outcome(
            area="storage faults",
            case="one image's S3 body drips a byte every 0.2 s on every read (never trips the "
            "read timeout)",
            trials=2,
            images=len(uris),
            rows_lost=lost,
            rows_duplicated=duplicated,
            result=f"its shard's first attempt failed after --image-timeout "
            f"{IMAGE_TIMEOUT_S:g} s; the last one made it an error row "
            "(fetch: timed out after N s); completed",
        )
    )
    assert errors == {hung: f"fetch: timed out after {IMAGE_TIMEOUT_S:g} s"}, errors
    assert lost == duplicated == 0
