"""Model resolution on the driver and the build on actors (``pipeline.worker.model_spec``)."""

from __future__ import annotations

import pytest

from pipeline.worker.model_spec import DetectorOptions, resolve_model
from tests.darknet_fixtures import COCO_NAMES, YOLOV4_TINY_CFG
from yolov4.errors import DarknetFormatError, WeightsIntegrityError


def test_pretrained_and_custom_models_resolve_to_the_same_weights(tiny_weights_path, monkeypatch):
    monkeypatch.setenv("YOLO_BATCH_CACHE", str(tiny_weights_path.parent))
    pretrained, weights = resolve_model()
    custom, custom_weights = resolve_model(
        cfg=str(YOLOV4_TINY_CFG), weights=str(tiny_weights_path), names=str(COCO_NAMES)
    )
    assert weights == custom_weights == tiny_weights_path.read_bytes()
    assert pretrained.weights_sha256 == custom.weights_sha256
    assert pretrained.pretrained == "yolov4-tiny" and custom.cfg_text.startswith("[net]")
    assert len(custom.class_names) == 80
    detector = custom.build_detector(custom_weights)
    assert detector.class_names[0] == "person"
    # Actors run on packed convolutions; the driver's check (which runs nothing) need not pack.
    assert detector.packed_convolutions == 21
    assert custom.build_detector(custom_weights, prepack=False).packed_convolutions == 0


def test_actors_refuse_weights_that_are_not_the_specs(tiny_weights_path, monkeypatch):
    monkeypatch.setenv("YOLO_BATCH_CACHE", str(tiny_weights_path.parent))
    spec, weights = resolve_model()
    with pytest.raises(WeightsIntegrityError, match="hash to"):
        spec.build_detector(weights[:-1] + b"\0")


def test_fingerprint_changes_with_every_inference_setting(tiny_weights_path, monkeypatch):
    monkeypatch.setenv("YOLO_BATCH_CACHE", str(tiny_weights_path.parent))
    base, _ = resolve_model()
    stricter, _ = resolve_model(options=DetectorOptions(conf_threshold=0.5))
    assert base.fingerprint() != stricter.fingerprint()
    assert base.fingerprint() == resolve_model()[0].fingerprint()


def test_mismatched_cfg_and_weights_fail_on_the_driver(tiny_weights_path, tmp_path):
    cfg = tmp_path / "three.cfg"
    cfg.write_text(YOLOV4_TINY_CFG.read_text().replace("classes=80", "classes=3"))
    with pytest.raises(DarknetFormatError):
        resolve_model(cfg=str(cfg), weights=str(tiny_weights_path))
    with pytest.raises(ValueError, match="go together"):
        resolve_model(cfg=str(YOLOV4_TINY_CFG))
