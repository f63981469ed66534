"""The library's ``Detector`` refuses, in one sentence, a device it cannot use here, before any
work (the commands' own checks: test_cli_detect.py, test_cli_bench.py)."""

from __future__ import annotations

import pytest
import torch

from tests.darknet_fixtures import COCO_NAMES, YOLOV4_TINY_CFG
from yolov4.detector import Detector
from yolov4.devices import DeviceError, check_device


def test_detector_refuses_a_device_it_cannot_use(tiny_weights_path):
    for device in ("mps", f"cuda:{torch.cuda.device_count()}"):
        with pytest.raises(DeviceError, match=f"^device {device}|^device '{device}'"):
            Detector.from_darknet(YOLOV4_TINY_CFG, tiny_weights_path, COCO_NAMES, device=device)
    assert check_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert check_device("cuda") == torch.device("cuda", 0)
