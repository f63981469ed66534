"""``yolo-batch bench`` / ``python -m pipeline.bench`` and the FLOP count, on CPU.

Tiny inputs (a 128x128 network, a few 160x120 JPEGs, fractions of a second per figure) keep
these fast; no test asserts anything about speed, only that every figure is there, positive
and consistent with the others.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.bench import command as bench_command
from pipeline.bench.end_to_end import MIN_TIMED_SHARDS, effective_shard_size
from pipeline.bench.models import RANDOM_CANDIDATES_PER_IMAGE
from pipeline.bench.runner import SCHEMA
from pipeline.bench.timing import MIN_TIMED_CALLS
from pipeline.cli import main as cli_main
from yolov4.config import DEFAULT_CONFIGS
from yolov4.flops import model_flops
from yolov4.pretrained import get_pretrained

REPO = Path(__file__).resolve().parents[1]
#: Options that keep a run to seconds on a 2-core CPU.
SMALL = [
    "--size", "128", "--images", "4", "--image-size", "160x120", "--seconds", "0.3",
    "--shard-size", "4", "--threads", "2", "--decode-threads", "2",
]  # fmt: skip
RELATIVE_TOLERANCE = 1e-9


@contextlib.contextmanager
def bench_environment(cache: Path):
    """The fixtures' weights cache as the CLI's; torch's thread count put back afterwards (the
    benchmark sets it for the whole process, as an actor does)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_BATCH_CACHE", str(cache))
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def run_cli(argv: list[str], cache: Path, *, entry=cli_main) -> tuple[int, str, str]:
    """Run ``yolo-batch`` (or the ``main`` of ``python -m pipeline.bench``) in process: exit
    code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with bench_environment(cache), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = entry(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def full_run(cache: Path, sample_images, tmp_path_factory) -> tuple[int, str, dict]:
    """One run of every stage (yolov4-tiny, official weights): exit code, stdout, JSON."""
    path = tmp_path_factory.mktemp("bench") / "report.json"
    argv = ["bench", *SMALL, "--batch-size", "2,4", "--decode", "cpu", "--json", str(path)]
    code, out, _ = run_cli(argv, cache)
    return code, out, json.loads(path.read_text()) if path.exists() else {}


def test_cli_prints_every_table(full_run):
    code, out, _ = full_run
    assert code == 0
    for heading in ("yolo-batch bench: yolov4-tiny at 128x128", "decode, one core", "model only"):
        assert heading in out
    assert "end to end" in out and "e2e/model" in out
    assert "note: on CPU the decode threads compete with the model" in out


def test_json_has_every_figure_and_parameter(full_run):
    _, _, report = full_run
    assert report["schema"] == SCHEMA
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["device_name"] and machine["torch"]
    parameters = report["parameters"]
    for name in (
        "model", "size", "batch_sizes", "precisions", "device", "decode", "threads",
        "decode_threads", "seconds", "only", "images", "image_size", "shard_size", "check",
        "random_weights",
    ):  # fmt: skip
        assert name in parameters
    assert parameters["batch_sizes"] == [2, 4] and parameters["model"] == "yolov4-tiny"
    model = report["model"]
    assert model["weights"] == "pretrained" and model["arch"] == "yolov4-tiny"
    assert (model["input_width"], model["input_height"]) == (128, 128)
    assert report["images"]["count"] == 4 and report["images"]["mean_width"] == 160
    assert set(report["decode"]) >= {"full"}
    for figures in report["decode"].values():
        assert figures["images_per_s_per_core"] > 0 and figures["ms_per_image"] > 0
    assert [(r["precision"], r["batch_size"]) for r in report["model_only"]] == [
        ("fp32", 2),
        ("fp32", 4),
    ]
    for row in report["model_only"]:
        for name in ("images_per_s", "ms_per_batch", "tflops", "seconds"):
            assert row[name] > 0, name
        assert row["calls"] >= MIN_TIMED_CALLS
    for row in report["e2e"]:
        assert row["decode"] == "cpu" and row["errors"] == 0
        assert row["shard_size"] % row["batch_size"] == 0
        for name in ("images_per_s", "seconds", "model_seconds", "model_busy_fraction"):
            assert row[name] > 0, name
        assert row["shards"] >= MIN_TIMED_SHARDS
    for row in [*report["decode"].values(), *report["model_only"], *report["e2e"]]:
        assert row["other_cores"] is None or row["other_cores"] >= 0
    assert "check" not in report  # fp32 only: nothing to compare


def test_ratios_are_consistent_with_the_figures(full_run):
    _, _, report = full_run
    model = {(r["precision"], r["batch_size"]): r for r in report["model_only"]}
    threads = report["decode_threads"]
    for row in report["model_only"]:
        for name, decode in report["decode"].items():
            expected = decode["images_per_s_per_core"] * threads / row["images_per_s"]
            assert math.isclose(row["decode_headroom"][name], expected, rel_tol=RELATIVE_TOLERANCE)
        expected_tflops = row["images_per_s"] * report["model"]["flops_per_image"] / 1e12
        assert math.isclose(row["tflops"], expected_tflops, rel_tol=RELATIVE_TOLERANCE)
    assert len(report["e2e"]) == 2
    for row in report["e2e"]:
        reference = model[(row["precision"], row["batch_size"])]
        assert row["model_images_per_s"] == reference["images_per_s"]
        expected = row["images_per_s"] / reference["images_per_s"]
        assert math.isclose(row["e2e_over_model"], expected, rel_tol=RELATIVE_TOLERANCE)
        assert math.isclose(
            row["images_per_s"], row["images"] / row["seconds"], rel_tol=RELATIVE_TOLERANCE
        )


def test_random_weights_for_yolov4_at_a_small_size(cache, sample_images, tmp_path):
    path = tmp_path / "yolov4.json"
    argv = [
        *SMALL, "--model", "yolov4", "--random-weights", "--size", "64", "--only", "model",
        "--batch-size", "1", "--seconds", "0.1", "--json", str(path),
    ]  # fmt: skip
    code, out, err = run_cli(argv, cache, entry=bench_command.main)
    assert code == 0, err
    assert "yolov4 at 64x64" in out and "random weights" in out
    report = json.loads(path.read_text())
    assert report["model"]["weights"] == "random" and report["model"]["arch"] == "yolov4"
    (row,) = report["model_only"]
    assert row["images_per_s"] > 0
    # Objectness biased so that a realistic handful of boxes pass, not thousands.
    assert row["detections_per_image"] < 10 * RANDOM_CANDIDATES_PER_IMAGE
    assert "decode" not in report and "e2e" not in report


def test_bf16_check_passes_on_cpu(cache, sample_images):
    argv = [
        "bench", *SMALL, "--size", "416", "--precision", "bf16", "--check", "--only",
        "decode", "--seconds", "0.05",
    ]  # fmt: skip
    code, out, err = run_cli(argv, cache)
    assert code == 0, err
    assert "fidelity bf16 vs fp32 on the sample photos" in out
    assert out.count(": PASS") == 1 and "FAIL" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(cache):
    code, out, err = run_cli(["bench", "--device", "cuda", *SMALL], cache)
    assert code == 1 and out == ""
    assert "CUDA is not available" in err and "--device cpu" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--precision", "fp8"], "unknown fp8"),
        (["--only", "model,speed"], "unknown speed"),
        (["--model", "yolov4", "--cfg", "x.cfg", "--weights", "x.weights"], "not both"),
        (["--size", "100"], "multiples of 32"),
        (["--cfg", "x.cfg", "--weights", "x.weights", "--random-weights"], "not both"),
        (["--batch-size", "0"], "at least 1"),
    ],
)
def test_bad_options_are_one_line_errors(cache, argv, message):
    code, _, err = run_cli(["bench", *argv], cache)
    assert code == 1 and message in err


@pytest.mark.parametrize("model, size", [("yolov4", 608), ("yolov4-tiny", 416)])
def test_flops_match_darknet(model, size):
    """darknet prints 128.46 and 6.91 "BFLOPS" (2 FLOPs per multiply-add); within 1 %."""
    entry = get_pretrained(model)
    darknet_gflops = entry.metrics["bflops"]
    gflops = model_flops(DEFAULT_CONFIGS[entry.arch], size) / 1e9
    assert gflops == pytest.approx(darknet_gflops, rel=0.01)


def test_flops_scale_with_the_input_area():
    config = DEFAULT_CONFIGS["yolov4-tiny"]
    assert model_flops(config, 832) == pytest.approx(4 * model_flops(config, 416), rel=1e-6)
    assert model_flops(config) == model_flops(config, 416)


def test_effective_shard_size_is_whole_batches():
    assert effective_shard_size(64, 8) == 64
    assert effective_shard_size(64, 48) == 96
    assert effective_shard_size(4, 16) == 32


def test_bench_module_does_not_import_ray():
    code = (
        "import sys; import pipeline.bench, pipeline.cli.bench_cmd; "
        "print(sorted(m for m in ('ray', 'duckdb') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
