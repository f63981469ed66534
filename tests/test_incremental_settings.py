"""Incremental runs and model settings: an image processed with other settings is processed
again.

- The delta (DuckDB, no Ray): the ``ok`` rows of an earlier run with other model settings are
  ``changed``; its error rows follow the usual rules (a ``decode`` error of the same bytes is
  not retried, a ``not found`` is); a run with the same settings later makes them current.
- :func:`~pipeline.run.incremental.outdated_runs` on run records: which earlier runs used other
  settings (a threshold, the class names), and old records missing a newer setting.
- End to end, a job spec over a local folder on a local Ray: a run, then the same spec with
  ``--conf 0.6`` processes every image again and the views show only detections of at least
  0.6, then the same again finds nothing new.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.results.query import query
from pipeline.run.incremental import Delta, outdated_runs
from pipeline.store.ledger import RunRecord
from pipeline.worker.model_spec import DetectorOptions, ModelSpec
from tests.test_incremental import RUN_1, RUN_2, RUN_3, connection, listing
from tests.test_pipeline_e2e import Input, cli_env, read_run_record, write_local_source

#: The threshold of the second run: above darknet's default of 0.25.
STRICT_CONF = 0.6
#: Images of the end-to-end source (the two sample photos, alternately).
N = 4


def test_delta_processes_again_the_ok_images_of_runs_with_other_settings():
    earlier = [
        ("s3://b/ok.jpg", "e1", "ok", None, RUN_1),
        ("s3://b/broken.jpg", "e2", "error", "decode: truncated image data", RUN_1),
        ("s3://b/missing.jpg", "e3", "error", "not found", RUN_1),
        ("s3://b/redone.jpg", "e4", "ok", None, RUN_1),
        ("s3://b/redone.jpg", "e4", "ok", None, RUN_2),  # since processed with today's settings
        ("s3://b/gone.jpg", "e5", "ok", None, RUN_1),
    ]
    now = listing(
        ("s3://b/ok.jpg", "e1"),
        ("s3://b/broken.jpg", "e2"),
        ("s3://b/missing.jpg", "e3"),
        ("s3://b/redone.jpg", "e4"),
        ("s3://b/new.jpg", "n1"),
    )
    with Delta(connection(earlier), now, [RUN_1, RUN_2], outdated_runs=[RUN_1]) as delta:
        counts = delta.counts.as_dict()
        todo = [o.uri for o in delta.objects()]
    assert todo == ["s3://b/ok.jpg", "s3://b/missing.jpg", "s3://b/new.jpg"]
    assert counts == {
        "objects_listed": 5,
        "objects_new": 1,
        "objects_changed": 1,  # ok.jpg: detected with other settings
        "objects_retried": 1,  # missing.jpg, as with the same settings
        "objects_unchanged": 2,  # broken.jpg (the same bytes fail the same), redone.jpg
        "objects_deleted": 1,
    }
    # With the settings of every earlier run, nothing is processed again.
    with Delta(connection(earlier), now[:4], [RUN_1, RUN_2]) as delta:
        assert [o.uri for o in delta.objects()] == ["s3://b/missing.jpg"]


def _record(run_id: str, spec: ModelSpec) -> RunRecord:
    """A run record as a run with ``spec`` writes it (its model through JSON)."""
    model = json.loads(json.dumps(spec.fingerprint()))
    return RunRecord(run_id=run_id, source="/src", output="/out", model=model, config={})


def test_outdated_runs_are_those_with_other_model_settings(caplog):
    base = ModelSpec("custom", "ab" * 32, cfg_text="[net]", class_names=("cat", "dog"))
    filtered = ModelSpec(
        "custom",
        "ab" * 32,
        cfg_text="[net]",
        class_names=("cat", "dog"),
        options=DetectorOptions(conf_threshold=STRICT_CONF, classes=("cat",)),
    )
    renamed = ModelSpec("custom", "ab" * 32, cfg_text="[net]", class_names=("kitty", "dog"))
    # A record written before the class names were part of the fingerprint.
    old = _record(RUN_3, base)
    del old.model["names_sha256"]
    earlier = [_record(RUN_1, base), _record(RUN_2, renamed), old]
    with caplog.at_level("INFO", logger="pipeline.run.incremental"):
        assert outdated_runs(earlier, filtered.fingerprint()) == [RUN_1, RUN_2, RUN_3]
    assert f"conf_threshold: 0.25 -> {STRICT_CONF}" in caplog.text
    assert outdated_runs(earlier, base.fingerprint()) == [RUN_2]
    assert outdated_runs([_record(RUN_1, filtered)], filtered.fingerprint()) == []


@pytest.mark.slow
def test_a_job_run_with_a_new_conf_processes_every_image_again(
    cli, cache, sample_images, tmp_path: Path
):
    source, output = tmp_path / "photos", tmp_path / "results"
    inputs = [Input(f"img-{i}.jpg", photo=i % 2) for i in range(N)]
    expected = write_local_source(source, inputs, sample_images)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        yaml.safe_dump(  # a job spec's runs are incremental unless it says otherwise
            {
                "name": "conf-change",
                "source": str(source),
                "output": str(output),
                "resources": {"actors": 1, "shard_size": 2},
            }
        )
    )
    env = cli_env(cache)
    args = ["run", str(spec), "--no-progress"]

    first = cli.run(args, env)
    assert first.returncode == 0, first.describe()
    scores = query(str(output), "SELECT score FROM detections").column(0).to_pylist()
    assert min(scores) < STRICT_CONF  # the positive control: the new threshold drops some

    second = cli.run([*args, "--conf", str(STRICT_CONF)], env)
    assert second.returncode == 0, second.describe()
    assert f"{N}/{N} images" in second.stdout, second.stdout
    record = read_run_record(output, second.run_id)
    assert (record["num_images"], record["images_ok"]) == (N, N), record
    assert (record["objects_changed"], record["objects_unchanged"]) == (N, 0), record
    images = query(str(output), "SELECT image_uri, run_id FROM images").to_pylist()
    assert {row["image_uri"] for row in images} == set(expected)
    assert {row["run_id"] for row in images} == {second.run_id}
    latest = query(str(output), "SELECT score, run_id FROM detections").to_pylist()
    assert latest, "the photos have detections above the new threshold too"
    assert all(row["score"] >= STRICT_CONF for row in latest), latest
    assert {row["run_id"] for row in latest} == {second.run_id}

    third = cli.run([*args, "--conf", str(STRICT_CONF)], env)
    assert third.returncode == 0, third.describe()
    assert "nothing new or changed" in third.stdout.splitlines()[-1], third.describe()
    record = read_run_record(output, third.run_id)
    assert (record["num_images"], record["objects_unchanged"]) == (0, N), record
