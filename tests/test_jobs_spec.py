"""Job specs (``jobs/*.yaml``) and ``yolo-batch run SPEC``.

- The documented examples validate, through ``yolo-batch jobs validate``.
- A typo, a wrong type, an out-of-range threshold and a credential each stop ``yolo-batch run
  SPEC`` before anything is written (the output folder is not created, the S3 prefix stays
  empty), with one line naming the field and the fix, never repeating a secret.
- Options given on the command line override the spec's fields; absent ones leave them.
- One real run of a spec on the sample photos, with a spec field overridden, gives the
  detector's own detections.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.cli.run_cmd import config_from_args
from pipeline.results.query import query
from pipeline.run.config import RunConfig
from pipeline.run.jobspec import JobSpecError, load_spec
from tests.test_pipeline_e2e import (
    QUICK_TIMEOUT_S,
    Input,
    assert_one_line_error,
    assert_run_results,
    cli_env,
    reference_detections,
    write_local_source,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "jobs").glob("*.yaml"))
#: Shaped like AWS's documented example keys; a spec holding them must be refused.
FAKE_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
FAKE_SECRET_KEY = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY12"


@pytest.fixture(scope="module")
def reference(cache: Path, sample_images: list[Path]) -> list[list[tuple]]:
    return reference_detections(cache, sample_images)


def write_spec(folder: Path, data: dict, name: str = "job.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_spec(source, output) -> dict:
    return {"name": "test-job", "source": str(source), "output": str(output)}


def test_there_is_one_example_per_use_and_each_validates(cli, cache):
    assert [p.name for p in EXAMPLES] == ["nightly-s3.yaml", "oneoff-local.yaml"]
    result = cli.run(["jobs", "validate", *EXAMPLES], cli_env(cache), QUICK_TIMEOUT_S)
    assert result.returncode == 0, result.describe()
    assert result.stdout.count(": ok: job ") == 2, result.describe()
    nightly, oneoff = (load_spec(p) for p in EXAMPLES)
    assert nightly.source.startswith("s3://") and nightly.output.startswith("s3://")
    assert nightly.schedule and nightly.schedule.timezone and nightly.incremental
    assert oneoff.schedule is None and not oneoff.source.startswith("s3://")
    config = nightly.run_config()
    assert (config.job_name, config.incremental) == (nightly.name, True)
    assert config.actors == 4 and config.gpus_per_actor == 1 and config.batch_size == 16
    assert config.detector.classes and "person" in config.detector.classes


#: (the spec's change, phrases its error must hold, a value it must not repeat)
BAD_SPECS = {
    "typo": (
        {"resources": {"batch_sise": 8}},
        ["`resources.batch_sise`", "did you mean `resources.batch_size`?"],
        None,
    ),
    "wrong type": (
        {"resources": {"batch_size": "eight"}},
        ["`resources.batch_size` must be an integer of at least 1", "'eight'", "fix it"],
        None,
    ),
    "out of range": (
        {"conf": 1.5},
        ["`conf` must be a number in [0, 1)", "1.5", "fix it", "--conf"],
        None,
    ),
    "credential key": (
        {"s3": {"region": "us-east-1", "aws_secret_access_key": FAKE_SECRET_KEY}},
        ["`s3.aws_secret_access_key` looks like a credential", "environment", "identity"],
        FAKE_SECRET_KEY,
    ),
    "credential value": (
        {"description": f"uses {FAKE_ACCESS_KEY_ID}"},
        ["`description` looks like a credential", "environment"],
        FAKE_ACCESS_KEY_ID,
    ),
    "URI with a password": (
        {"s3": {"endpoint_url": "https://user:hunter2@minio.example.com"}},
        ["`s3.endpoint_url` looks like a credential", "environment"],
        "hunter2",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_stops_the_run_before_anything_is_written(
    case, cli, cache, tmp_path, sample_images
):
    change, phrases, secret = BAD_SPECS[case]
    source, output = tmp_path / "photos", tmp_path / "results"
    write_local_source(source, [Input("bus.jpg", photo=0)], sample_images)
    spec = write_spec(tmp_path, {**base_spec(source, output), **change})
    result = cli.run(["run", spec, "--no-progress"], cli_env(cache), QUICK_TIMEOUT_S)
    line = assert_one_line_error(result, str(spec), *phrases)
    assert not output.exists(), "a refused spec wrote to its output"
    if secret:
        assert secret not in result.stderr + result.stdout and secret not in line


def test_a_bad_spec_writes_nothing_to_an_s3_output(cli, cache, tmp_path, s3_server, s3_prefix):
    output = s3_prefix + "results/"
    spec = write_spec(tmp_path, {**base_spec(s3_prefix + "photos/", output), "iou": -0.1})
    env = cli_env(cache, s3=s3_server)
    result = cli.run(["run", spec, "--no-progress"], env, QUICK_TIMEOUT_S)
    assert_one_line_error(result, "`iou` must be a number in (0, 1]")
    bucket, prefix = s3_prefix.removeprefix("s3://").split("/", 1)
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    assert listing.get("KeyCount", 0) == 0, listing.get("Contents")


@pytest.mark.parametrize(
    "change,phrases",
    [
        ({"sauce": "x"}, ["unknown field `sauce`", "did you mean `source`?"]),
        ({"model": "yolov5"}, ["`model` must be a pretrained model name", "yolov4-tiny"]),
        ({"model": {"cfg": "a.cfg"}}, ["`model.weights` is missing"]),
        ({"model": {"name": "yolov4", "weights": "w"}}, ["both a pretrained name"]),
        ({"input_size": 500}, ["`input_size` must be a positive multiple of 32"]),
        ({"nms": "soft"}, ["`nms` must be one of diou, iou"]),
        ({"incremental": "yes"}, ["`incremental` must be true or false"]),
        ({"compile": "on"}, ["`compile` must be true or false"]),
        ({"resources": {"gpus_per_actor": -1}}, ["`resources.gpus_per_actor`"]),
        ({"resources": 4}, ["`resources` must be a mapping"]),
        ({"schedule": {"cron": "0 25 * * *"}}, ["`schedule.cron` must be a five-field"]),
        ({"schedule": {"cron": "0 0 2 * * *"}}, ["`schedule.cron` must be a five-field"]),
        ({"schedule": {"cron": "@daily", "timezone": "Mars/Olympus"}}, ["schedule.timezone"]),
        ({"schedule": {"timezone": "UTC"}}, ["`schedule.cron` is missing"]),
        ({"name": "Nightly_Job"}, ["`name` must be lower-case letters"]),
        ({"classes": []}, ["`classes` must be a list of class names or ids"]),
        ({"s3": {"endpoint_url": "minio:9000"}}, ["`s3.endpoint_url` must be an http://"]),
        ({"output": None}, ["`output` is missing"]),
        ({"password": "x"}, ["`password` looks like a credential"]),
        ({"s3": {"token": "x"}}, ["`s3.token` looks like a credential"]),
    ],
)
def test_each_mistake_names_its_field(change, phrases, tmp_path):
    spec = write_spec(tmp_path, {**base_spec("photos", "results"), **change})
    with pytest.raises(JobSpecError) as caught:
        load_spec(spec)
    message = str(caught.value)
    assert message.startswith(f"job spec {spec}: ")
    for phrase in phrases:
        assert phrase in message, (phrase, message)


def test_yaml_mistakes_are_reported_with_their_line(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: a\nsource: x\nsource: y\noutput: z\n")
    with pytest.raises(JobSpecError, match=r"`source` is given twice \(line 3\)"):
        load_spec(spec)
    spec.write_text("name: a\nsource: [x\n")
    with pytest.raises(JobSpecError, match="not valid YAML at line"):
        load_spec(spec)
    spec.write_text("- a\n- b\n")
    with pytest.raises(JobSpecError, match="a YAML mapping"):
        load_spec(spec)


def test_ordinary_values_are_not_taken_for_credentials(tmp_path):
    data = {
        **base_spec("s3://bucket/a/b@2x/", "/data/OUT/2024/cams/Batch01/abcdefghij0123456789"),
        "model": {"cfg": "s3://models/Yolo4Custom/v2/cfg", "weights": "s3://m/w", "names": "n"},
        "description": "the 40-character folder /srv/Photos2024AAAAbbbbCCCCdddd0123456 is ok",
    }
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.output.endswith("0123456789") and spec.model.weights == "s3://m/w"


def parse_run(*argv) -> RunConfig:
    return config_from_args(build_parser().parse_args(["run", *map(str, argv)]))


def test_options_given_override_the_spec_and_absent_ones_do_not(tmp_path):
    data = {
        **base_spec("s3://in/photos/", "s3://out/results/"),
        "model": "yolov4",
        "conf": 0.6,
        "iou": 0.3,
        "max_det": 50,
        "classes": ["person", 2],
        "compile": True,
        "resources": {"actors": 3, "gpus_per_actor": 0.5, "batch_size": 4, "shard_size": 7},
        "s3": {"region": "eu-west-1"},
    }
    spec_path = write_spec(tmp_path, data)
    from_spec = load_spec(spec_path).run_config()
    assert parse_run(spec_path) == from_spec
    assert (from_spec.job_name, from_spec.incremental) == ("test-job", True)
    assert from_spec.detector.classes == ("person", "2")
    assert from_spec.compile is True
    config = parse_run(
        spec_path, "--conf", "0.25", "--batch-size", "2", "--output", "s3://elsewhere/r/",
        "--no-incremental", "--gpus-per-actor", "0", "--cfg", "c.cfg", "--weights", "w.weights",
        "--no-compile",
    )  # fmt: skip
    assert config.detector.conf_threshold == 0.25 and config.batch_size == 2
    assert config.output == "s3://elsewhere/r/" and config.incremental is False
    assert config.gpus_per_actor == 0.0 and config.compile is False
    assert (config.model.name, config.model.cfg) == (None, "c.cfg")
    # The rest is the spec's, not the parser's defaults.
    assert config.detector.nms_threshold == 0.3 and config.detector.max_detections == 50
    assert (config.actors, config.shard_size, config.s3.region) == (3, 7, "eu-west-1")
    assert config.source == "s3://in/photos/" and config.job_name == "test-job"
    # Plain runs are unchanged: the built-in defaults, not incremental unless asked.
    plain = parse_run("--source", "a", "--output", "b")
    assert plain == RunConfig(source="a", output="b")
    assert parse_run("--source", "a", "--output", "b", "--incremental").incremental is True


def test_a_plain_run_without_source_says_what_to_give(cli, cache, tmp_path):
    result = cli.run(["run", "--output", tmp_path / "out"], cli_env(cache), QUICK_TIMEOUT_S)
    assert_one_line_error(result, "--source missing", "job spec")


@pytest.mark.slow
def test_run_spec_on_the_sample_photos_with_an_override(
    cli, cache, tmp_path, sample_images, reference
):
    source = tmp_path / "photos"
    expected = write_local_source(
        source, [Input("bus.jpg", photo=0), Input("zidane.jpg", photo=1)], sample_images
    )
    data = {
        **base_spec(source, tmp_path / "spec-output"),
        "model": "yolov4-tiny",
        "conf": 0.9,  # overridden below: the results must be the detector's at 0.25
        "resources": {"actors": 1, "batch_size": 2, "shard_size": 1},
        "incremental": False,
    }
    spec = write_spec(tmp_path, data)
    output = tmp_path / "override-output"
    result = cli.run(
        ["run", spec, "--output", output, "--conf", "0.25", "--no-progress"], cli_env(cache)
    )
    assert result.returncode == 0, result.describe()
    assert not (tmp_path / "spec-output").exists(), "--output did not override the spec"
    assert_run_results(str(output), expected, reference, result.run_id)
    shards = query(str(output), "SELECT count(DISTINCT shard_id) FROM images").column(0)
    assert shards[0].as_py() == 2, "the spec's shard_size (1) was not used"
