"""What a refused value says, through ``pipeline.cli.main`` with real files.

- A bad setting is named by its option, with the accepted range and the value given
  (``--conf must be a number in [0, 1), got 2.0``), never by the detector's own keyword
  (``conf_threshold``); from a job spec, by its field and its option. A value the detector
  would refuse is refused by the setting already, before anything is written.
- A mistyped model name or class name is answered with the closest valid one ("did you mean
  ..."), for ``run``, ``detect`` and job specs alike.
- ``jobs validate`` reports every mistake of a spec, one line each, in one pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.run.config import RunConfig
from pipeline.worker.model_spec import DetectorOptions
from tests.test_jobs_spec import base_spec, write_spec
from yolov4.hub import CACHE_ENV_VAR

#: Words of the detector library the user never typed.
INTERNAL_NAMES = ("conf_threshold", "nms_threshold", "max_detections", "batch_size")


@pytest.fixture
def weights(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's weights cache, for the commands run here."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    return cache


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list) -> str:
    """The one error line ``yolo-batch ARGV`` prints, exiting 1."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, (code, err)
    assert lines[0].startswith("yolo-batch: error: "), err
    return lines[0].removeprefix("yolo-batch: error: ")


def run_argv(tmp_path: Path, *options) -> list:
    source = tmp_path / "photos"
    source.mkdir(exist_ok=True)
    return ["run", "--source", source, "--output", tmp_path / "out", "--no-progress", *options]


#: Options ``detect`` shares with ``run``.
INFERENCE_OPTIONS = ("--conf", "--iou", "--max-det", "--input-size")
#: (options, the error's whole text)
BAD_OPTIONS = [
    (["--conf", "2"], "--conf must be a number in [0, 1), got 2.0"),
    (["--conf", "1"], "--conf must be a number in [0, 1), got 1.0"),
    (["--iou", "0"], "--iou must be a number in (0, 1], got 0.0"),
    (["--max-det", "0"], "--max-det must be an integer of at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer of at least 1, got 0"),
    (
        ["--input-size", "500"],
        "--input-size must be a positive multiple of 32 (e.g. 320, 416, 512, 608), got 500",
    ),
    (
        ["--actor-memory", "lots"],
        "--actor-memory must be a size in bytes, or with a unit: 512MiB, 8GiB, 1TiB (binary "
        "units), got 'lots'",
    ),
]
BAD_OPTION_IDS = [" ".join(options) for options, _ in BAD_OPTIONS]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS, ids=BAD_OPTION_IDS)
def test_run_names_the_option_the_range_and_the_value(options, message, weights, tmp_path, capsys):
    line = one_line_error(capsys, run_argv(tmp_path, *options))
    assert line == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [case for case in BAD_OPTIONS if case[0][0] in INFERENCE_OPTIONS],
    ids=[" ".join(o) for o, _ in BAD_OPTIONS if o[0] in INFERENCE_OPTIONS],
)
def test_detect_names_the_option_the_range_and_the_value(
    options, message, weights, tmp_path, capsys
):
    line = one_line_error(capsys, ["detect", tmp_path / "photo.jpg", *options])
    assert line == message
    assert not any(name in line for name in INTERNAL_NAMES)


def test_a_spec_value_names_the_field_and_the_option(weights, tmp_path, capsys):
    spec = write_spec(tmp_path, {**base_spec(tmp_path / "photos", tmp_path / "out"), "conf": 1})
    line = one_line_error(capsys, ["run", spec])
    assert "`conf` must be a number in [0, 1), got 1 (an integer)" in line, line
    assert "--conf" in line and str(spec) in line
    assert not (tmp_path / "out").exists()


def test_a_config_of_unknown_origin_names_option_and_field():
    config = RunConfig(source="/in", output="/out", detector=DetectorOptions(nms_threshold=0.0))
    with pytest.raises(ValueError) as err:
        config.validate()
    assert str(err.value) == "--iou (`iou` in a job spec) must be a number in (0, 1], got 0.0"


# --------------------------------------------------------------------------- did you mean


@pytest.mark.parametrize("command", ["run", "detect"])
def test_a_mistyped_model_gets_the_closest_name(command, weights, tmp_path, capsys):
    argv = run_argv(tmp_path) if command == "run" else ["detect", tmp_path / "photo.jpg"]
    line = one_line_error(capsys, [*argv, "--model", "yolov4tiny"])
    assert line.startswith("--model 'yolov4tiny' is not a pretrained model;"), line
    assert "did you mean 'yolov4-tiny'?" in line and "yolov4, yolov4-tiny" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["run", "detect"])
def test_a_mistyped_class_gets_the_closest_name(command, weights, tmp_path, capsys):
    argv = run_argv(tmp_path) if command == "run" else ["detect", tmp_path / "photo.jpg"]
    line = one_line_error(capsys, [*argv, "--classes", "car,persn"])
    assert line.startswith("--classes: 'persn' is not a class of yolov4-tiny;"), line
    assert "did you mean 'person'?" in line
    assert not (tmp_path / "out").exists()
    line = one_line_error(capsys, [*argv, "--classes", "80"])
    assert line == "--classes: class id 80 is out of range; yolov4-tiny has the ids 0 to 79"


def test_the_weights_registry_and_specs_offer_the_closest_model(weights, tmp_path, capsys):
    line = one_line_error(capsys, ["weights", "fetch", "yolov4tiny"])
    assert "unknown pretrained model 'yolov4tiny'; did you mean 'yolov4-tiny'?" in line, line
    spec = write_spec(tmp_path, {**base_spec("/in", "/out"), "model": "yolov4tiny"})
    line = one_line_error(capsys, ["jobs", "validate", spec])
    assert "`model` must be a pretrained model name" in line
    assert "did you mean 'yolov4-tiny'?" in line


# --------------------------------------------------------------------------- jobs validate


def test_jobs_validate_reports_every_mistake_of_a_spec(tmp_path, capsys):
    bad = write_spec(
        tmp_path,
        {
            **base_spec("/in", "/out"),
            "sauce": "s3://in/",
            "conf": 2,
            "resources": {"batch_size": 0},
        },
        name="bad.yaml",
    )
    good = write_spec(tmp_path, base_spec("/in", "/out"), name="good.yaml")
    code = main(["jobs", "validate", str(bad), str(good)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    assert all(line.startswith(f"yolo-batch: error: job spec {bad}: ") for line in lines), err
    assert "unknown field `sauce`; did you mean `source`?" in lines[0]
    assert "`conf` must be a number in [0, 1), got 2 (an integer)" in lines[1]
    assert "--conf" in lines[1]
    assert "`resources.batch_size` must be an integer of at least 1, got 0" in lines[2]
    assert "--batch-size" in lines[2]
    assert out.strip().startswith(f"{good}: ok: job test-job, /in -> /out")


def test_a_run_of_a_spec_with_several_mistakes_names_them_all_on_one_line(
    weights, tmp_path, capsys
):
    spec = write_spec(tmp_path, {**base_spec("/in", tmp_path / "out"), "iou": 0, "max_det": 0})
    line = one_line_error(capsys, ["run", spec])
    assert "`iou` must be a number in (0, 1]" in line and "`max_det` must be an integer" in line
    assert not (tmp_path / "out").exists()
