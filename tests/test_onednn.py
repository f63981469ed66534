"""Convolutions on weights packed once for oneDNN (``yolov4.onednn``, the CPU default) against
PyTorch's plain convolution path: the same outputs, layer by layer choices, and copies.

The packed path is also what every other CPU test of the detector runs, including the
agreement with OpenCV's darknet importer (``test_reference_opencv.py``).
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from tests.darknet_fixtures import COCO_NAMES, YOLOV4_CFG, YOLOV4_TINY_CFG
from yolov4.darknet_cfg import config_from_cfg, parse_cfg
from yolov4.detector import Detector
from yolov4.imageio import read_image
from yolov4.layers import DarknetConv
from yolov4.model import build_model
from yolov4.onednn import (
    PackedConvolution,
    pack_convolutions,
    packing_available,
    unpack_convolutions,
)
from yolov4.preprocess import prepare_batch

#: yolov4-tiny's darknet convolutions, all leaky or linear.
TINY_CONVS = 21
#: yolov4's: 72 Mish (backbone), 35 leaky (neck, heads), 3 linear (predictions).
YOLOV4_CONVS, YOLOV4_MISH_CONVS = 110, 72


def tiny(weights_path, **options) -> Detector:
    return Detector.from_darknet(YOLOV4_TINY_CFG, weights_path, COCO_NAMES, **options)


@pytest.fixture(scope="module")
def packed(tiny_weights_path) -> Detector:
    return tiny(tiny_weights_path)


@pytest.fixture(scope="module")
def plain(tiny_weights_path) -> Detector:
    return tiny(tiny_weights_path, prepack=False)


@pytest.fixture(scope="module")
def images(sample_images) -> list[torch.Tensor]:
    """bus, zidane, bus: with 2 images per model call on CPU, a full call and a partial one."""
    photos = [torch.from_numpy(np.ascontiguousarray(read_image(p))) for p in sample_images]
    photos = [photo.permute(2, 0, 1) for photo in photos]
    return [photos[0], photos[1], photos[0]]


def assert_heads_equal(found: list[torch.Tensor], expected: list[torch.Tensor], rel: float):
    """Equal within ``rel`` of each head's largest magnitude (float rounding: a packed weight
    layout may sum in another order, depending on the thread count)."""
    assert len(found) == len(expected)
    for a, b in zip(found, expected):
        assert a.shape == b.shape
        assert b.abs().max() > 1.0  # real activations, not a trivially equal pair
        torch.testing.assert_close(a, b, atol=rel * float(b.abs().max()), rtol=0)


def test_packing_is_available_on_this_cpu():
    """The CPU builds this project installs have the oneDNN ops; if an upgrade drops them the
    detector silently falls back to the ~6 % slower plain path, so say it here."""
    assert packing_available(torch.float32)
    assert not packing_available(torch.float16)  # no fast fp16 CPU kernels: not packed


def test_tiny_packed_equals_the_plain_path(packed, plain, images):
    assert packed.packed_convolutions == TINY_CONVS and plain.packed_convolutions == 0
    layers = packed.model.darknet_convs()
    assert all(isinstance(layer.packed, PackedConvolution) for layer in layers)
    assert all(layer.packed.fuses_activation for layer in layers)  # leaky / linear: fused
    # Packed for the shape of the detector's model calls: 2 images of 416x416 on CPU.
    assert packed.micro_batch == 2
    assert layers[0].packed.input_shape == [2, 3, 416, 416]
    assert layers[-1].packed.input_shape[:1] == [2] and layers[-1].packed.input_shape[2:] == [
        26,
        26,
    ]
    batch, _ = prepare_batch(images, packed.input_size)
    assert_heads_equal(packed.forward_raw(batch), plain.forward_raw(batch), rel=1e-5)
    found = packed.per_image(packed.detect_batch(images))
    expected = plain.per_image(plain.detect_batch(images))
    assert all(found) and len(found) == len(expected)
    for on_image, expected_on_image in zip(found, expected):
        assert len(on_image) == len(expected_on_image)
        for a, b in zip(on_image, expected_on_image):
            assert a.class_id == b.class_id
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert a.box == pytest.approx(b.box, abs=1e-2)


def test_packed_for_each_layers_input_at_the_detectors_size(tiny_weights_path):
    """Each layer is packed for its own input at the detector's (here non-square) size, found
    from a small probe image scaled up: the shapes a real call gives those layers."""
    detector = tiny(tiny_weights_path, input_size=(320, 192), micro_batch=3)
    seen = {}

    def record(layer, inputs) -> None:
        seen[layer] = list(inputs[0].shape)

    layers = detector.model.darknet_convs()
    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    detector.forward_raw(torch.rand(3, 3, 192, 320))
    for hook in hooks:
        hook.remove()
    assert [layer.packed.input_shape for layer in layers] == [seen[layer] for layer in layers]
    assert layers[0].packed.input_shape == [3, 3, 192, 320]
    with pytest.raises(ValueError, match="multiples of 32"):
        pack_convolutions(detector.model, (1, 3, 200, 320))


def test_packed_in_either_memory_format(tiny_weights_path, plain, images):
    nchw = tiny(tiny_weights_path, channels_last=False)
    assert nchw.packed_convolutions == TINY_CONVS
    batch, _ = prepare_batch(images, plain.input_size)
    assert_heads_equal(nchw.forward_raw(batch), plain.forward_raw(batch), rel=1e-4)


def yolov4_with_unit_scale_weights(input_size: int) -> torch.nn.Module:
    """yolov4 with random weights whose activations stay of order one (not trained, but every
    layer does real work), batch norm statistics from one training-mode pass."""
    model = build_model(config_from_cfg(parse_cfg(YOLOV4_CFG)).with_input_size(input_size))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in model.darknet_convs():
            weight = conv.conv.weight
            weight.copy_(torch.randn(weight.shape, generator=generator))
            weight.mul_(math.sqrt(2 / weight[0].numel()))
            if conv.bn is not None:
                conv.bn.momentum = 1.0
        model.train()
        model(torch.rand(2, 3, input_size, input_size, generator=generator))
    return model.eval()


def test_yolov4_mish_layers_packed_unfused(images):
    """Mish has no oneDNN post-op: those layers run the packed convolution, then Mish."""
    model = yolov4_with_unit_scale_weights(160)
    plain = Detector(copy.deepcopy(model), prepack=False)
    packed = Detector(model)
    assert packed.packed_convolutions == YOLOV4_CONVS
    layers = packed.model.darknet_convs()
    unfused = [layer for layer in layers if not layer.packed.fuses_activation]
    assert len(unfused) == YOLOV4_MISH_CONVS
    assert {layer.spec.activation for layer in unfused} == {"mish"}
    batch, _ = prepare_batch(images, packed.input_size)
    assert_heads_equal(packed.forward_raw(batch), plain.forward_raw(batch), rel=5e-4)


def test_layers_with_batch_norm_stay_plain(tiny_weights_path, plain, images):
    """``fuse=False``: a packed convolution has no batch norm, so only the two prediction
    convolutions (no batch norm in the cfg) are packed, and the outputs still agree."""
    unfused = tiny(tiny_weights_path, fuse=False)
    packed_layers = [layer for layer in unfused.model.darknet_convs() if layer.packed]
    assert unfused.packed_convolutions == len(packed_layers) == 2
    assert all(not layer.spec.batch_normalize for layer in packed_layers)
    batch, _ = prepare_batch(images, plain.input_size)
    assert_heads_equal(unfused.forward_raw(batch), plain.forward_raw(batch), rel=1e-4)


def test_copies_pack_anew(packed, plain, images):
    """oneDNN's packed tensors cannot be pickled: a copied or unpickled model packs its own
    weights anew and gives the same outputs."""
    batch, _ = prepare_batch(images[:2], packed.input_size)
    batch = batch.contiguous(memory_format=torch.channels_last)
    expected = plain.forward_raw(batch)
    original = packed.model.darknet_convs()
    for model in (copy.deepcopy(packed.model), pickle.loads(pickle.dumps(packed.model))):
        layers = model.darknet_convs()
        assert all(isinstance(layer.packed, PackedConvolution) for layer in layers)
        for layer, before in zip(layers, original):
            assert layer.packed.conv is layer.conv  # packed from the copy's own weights
            assert layer.packed.weight is not before.packed.weight
        with torch.inference_mode():
            heads = [head.contiguous() for head in model(batch)]
        assert_heads_equal(heads, expected, rel=1e-5)


def test_where_packing_does_not_apply(tiny_weights_path):
    opted_out = tiny(tiny_weights_path, prepack=False)
    half = tiny(tiny_weights_path, precision="fp16")
    compiled = tiny(tiny_weights_path, compile=True)  # Inductor packs the weights itself
    assert opted_out.packed_convolutions == half.packed_convolutions == 0
    assert compiled.packed_convolutions == 0
    assert all(layer.packed is None for layer in compiled.model.darknet_convs())


def test_unpack_returns_to_the_plain_path(tiny_weights_path, plain, images):
    detector = tiny(tiny_weights_path)
    unpack_convolutions(detector.model)
    assert all(layer.packed is None for layer in detector.model.darknet_convs())
    first = detector.model.darknet_convs()[0]
    assert isinstance(first, DarknetConv)
    batch, _ = prepare_batch(images[:1], plain.input_size)
    assert_heads_equal(detector.forward_raw(batch), plain.forward_raw(batch), rel=0)


def refuses(self, x):
    raise RuntimeError("could not create a primitive")  # what oneDNN says when it refuses


def computes_something_else(self, x):
    return torch.zeros_like(self.conv(x))


@pytest.mark.parametrize(
    "broken, problem",
    [(refuses, "fails"), (computes_something_else, "differs from the plain path")],
)
def test_a_packed_path_that_fails_its_check_is_not_used(
    tiny_weights_path, plain, images, monkeypatch, caplog, broken, problem
):
    """Each detector checks its packed model against the plain one on a batch of random pixels
    when it is built; a build of oneDNN that refuses the packed op, or computes anything else,
    leaves the model on the plain path, with a warning, instead of failing or misdetecting."""
    monkeypatch.setattr(PackedConvolution, "__call__", broken)
    with caplog.at_level("WARNING", logger="yolov4.onednn"):
        detector = tiny(tiny_weights_path)
    assert detector.packed_convolutions == 0
    assert all(layer.packed is None for layer in detector.model.darknet_convs())
    assert (
        f"convolution weights left unpacked (about 6% slower on CPU): the packed path {problem}"
        in caplog.text
    )
    batch, _ = prepare_batch(images[:1], plain.input_size)
    assert_heads_equal(detector.forward_raw(batch), plain.forward_raw(batch), rel=0)
