"""``yolo-batch detect`` end to end through ``pipeline.cli.main`` with the real weights."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main
from tests.darknet_fixtures import COCO_NAMES, YOLOV4_TINY_CFG


@pytest.fixture()
def model_args(tiny_weights_path):
    return [
        "--cfg",
        str(YOLOV4_TINY_CFG),
        "--weights",
        str(tiny_weights_path),
        "--names",
        str(COCO_NAMES),
    ]


def test_table_and_annotated_images(tmp_path, capsys, sample_images, model_args):
    out = tmp_path / "annotated"
    code = main(["detect", *map(str, sample_images), *model_args, "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "bus.jpg (810x1080): 6 objects" in text
    assert "skateboard" in text and "zidane.jpg (1280x720)" in text
    written = sorted(p.name for p in out.iterdir())
    assert written == ["bus.jpg", "zidane.jpg"]
    original = np.asarray(Image.open(sample_images[0]).convert("RGB"))
    annotated = np.asarray(Image.open(out / "bus.jpg").convert("RGB"))
    assert annotated.shape == original.shape
    # Boxes were drawn: many pixels changed well beyond JPEG re-encoding noise.
    changed = np.abs(annotated.astype(int) - original.astype(int)).max(axis=2) > 80
    assert changed.mean() > 0.005


def test_json_output_matches_thresholds_and_class_filter(capsys, sample_images, model_args):
    code = main(
        [
            "detect",
            str(sample_images[0]),
            *model_args,
            "--json",
            "--conf",
            "0.5",
            "--classes",
            "person",
        ]
    )
    assert code == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["width"] == 810 and record["height"] == 1080
    assert [d["class_name"] for d in record["detections"]] == ["person"] * 3
    assert all(d["score"] > 0.5 for d in record["detections"])
    x0, y0, x1, y1 = record["detections"][0]["box"]
    assert 0 <= x0 < x1 <= 810 and 0 <= y0 < y1 <= 1080


def test_bad_images_are_reported_and_the_rest_processed(
    tmp_path, capsys, sample_images, model_args
):
    fake = tmp_path / "page.jpg"
    fake.write_text("<!DOCTYPE html><html>not an image</html>")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    code = main(["detect", str(fake), str(empty), str(missing), str(sample_images[1]), *model_args])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{fake}: decode: not a recognised image format" in captured.err
    assert f"{empty}: decode: empty file" in captured.err
    assert f"file not found: {missing}" in captured.err
    assert "zidane.jpg (1280x720)" in captured.out


def test_usage_errors_exit_1(capsys, tmp_path):
    assert main(["detect"]) == 1
    assert "no images given" in capsys.readouterr().err
    assert main(["detect", "x.jpg", "--model", "yolov9"]) == 1
    assert "yolov9" in capsys.readouterr().err
    assert (
        main(
            [
                "detect",
                "x.jpg",
                "--size",
                "300",
                "--cfg",
                str(YOLOV4_TINY_CFG),
                "--weights",
                str(tmp_path / "none.weights"),
            ]
        )
        == 1
    )
    assert main(["no-such-command"]) == 1
    assert main(["detect", "x.jpg", "--cfg", str(YOLOV4_TINY_CFG)]) == 1
    assert "--cfg and --weights go together" in capsys.readouterr().err


def test_out_never_writes_over_an_input(tmp_path, capsys, sample_images, model_args):
    photos = tmp_path / "photos"
    photos.mkdir()
    bus = photos / "bus.jpg"
    shutil.copyfile(sample_images[0], bus)
    original = bus.read_bytes()
    (tmp_path / "link").symlink_to(photos, target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(bus, elsewhere / "bus.jpg")  # the same file under another name: a hard link
    same_folder = [
        str(photos),  # the input's own folder
        str(tmp_path / "link"),  # through a symbolic link
        str(photos / ".." / "photos"),  # through ..
        str(elsewhere),  # a folder holding a hard link to the input
    ]
    for out in same_folder:
        code = main(["detect", str(bus), *model_args, "--out", out])
        captured = capsys.readouterr()
        assert code == 1, out
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("yolo-batch: error: --out"), captured.err
        assert f"over the input {bus}" in lines[0] and "give --out a folder" in lines[0]
        assert captured.out == ""  # refused before detecting
        assert bus.read_bytes() == original
    assert sorted(p.name for p in photos.iterdir()) == ["bus.jpg"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["bus.jpg"]


def test_out_says_where_the_annotated_copies_went(tmp_path, capsys, sample_images, model_args):
    out = tmp_path / "annotated"
    assert main(["detect", *map(str, sample_images), *model_args, "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote 2 annotated images to {out}"
    again = main(["detect", str(sample_images[0]), *model_args, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert again == 0 and len(json.loads(captured.out)) == 1  # stdout stays JSON
    assert captured.err.strip() == f"wrote 1 annotated image to {out}"


def test_devices_not_here_are_one_sentence(capsys, sample_images, model_args):
    """No traceback for a device this machine or this PyTorch build lacks: ``cuda`` on a CPU
    build, a CUDA index beyond the GPUs, a device type the detector does not run on."""
    unusable = {
        "mps": "mps devices are not supported",
        "npu0": "is not a device",
        f"cuda:{torch.cuda.device_count()}": "CUDA",  # one past the last GPU, or no CUDA
    }
    if not torch.cuda.is_available():
        unusable["cuda"] = "CUDA is not available here"
    for device, reason in unusable.items():
        code = main(["detect", str(sample_images[0]), *model_args, "--device", device])
        captured = capsys.readouterr()
        assert code == 1, device
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("yolo-batch: error: --device "), lines[0]
        assert device in lines[0] and reason in lines[0] and "cpu" in lines[0], lines[0]
        assert captured.out == ""
