"""Convolutions with their weights laid out once for oneDNN: faster eager inference on CPU.

PyTorch's CPU convolution hands its weight to oneDNN in PyTorch's plain ``[O, I, kh, kw]``
layout, and oneDNN reorders it into the blocked layout its kernels read on **every call**.
:func:`pack_convolutions` reorders each folded convolution's weight once, up front, and runs
the layer through oneDNN's fused convolution op with that packed weight; leaky ReLU runs
inside the convolution as a post-op instead of as a second pass over the output. Same
kernels, same summation order: fp32 outputs equal the plain path's (tested). Measured on 2 Zen 4
cores, yolov4-tiny at 416 in fp32: about 1.06x forward passes (``benchmarks/bench_detector.py``
reports it as "forward, weights not pre-packed").

This is what Inductor's weight freezing does for compiled CPU models, without compiling (5–20 s
per process). No library exposes it for eager models (``torch.utils.mkldnn.to_mkldnn`` needs
opaque oneDNN tensors flowing between every layer, which Mish, concatenation and slicing do not
take), so it is written here, on the two ops Inductor itself emits for frozen convolutions:
``torch.ops.mkldnn._reorder_convolution_weight`` and ``torch.ops.mkldnn._convolution_pointwise``.
They are internal to PyTorch; where they are missing or refuse a layer, the layer keeps the
plain path (:func:`packing_available`, and a logged fallback).

The packed weight is a second copy of each weight (the plain one stays, so ``state_dict``,
FLOP counts and weight export are unchanged): the model's weight memory doubles on CPU.
"""

from __future__ import annotations

import logging

import torch

from yolov4.layers import LEAKY_SLOPE, DarknetConv

logger = logging.getLogger(__name__)

#: darknet activations oneDNN runs inside the convolution, as ``(post-op name, its scalars)``.
#: Mish has no oneDNN post-op in PyTorch's op; it runs after the convolution, in place.
FUSED_ACTIVATIONS = {"leaky": ("leaky_relu", [LEAKY_SLOPE]), "linear": ("none", [])}
_NO_POST_OP = ("none", [])
#: dtypes with oneDNN convolution kernels on CPU (bf16 only where the CPU has native ones).
_PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def packing_available(dtype: torch.dtype) -> bool:
    """Whether :func:`pack_convolutions` can run convolutions of ``dtype`` on this build/CPU."""
    mkldnn = torch.backends.mkldnn
    if not (mkldnn.is_available() and mkldnn.enabled) or dtype not in _PACKABLE_DTYPES:
        return False
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_convolution_pointwise") and hasattr(ops, "_reorder_convolution_weight")):
        return False
    return dtype != torch.bfloat16 or bool(ops._is_mkldnn_bf16_supported())


class PackedConvolution:
    """One folded :class:`~yolov4.layers.DarknetConv`'s convolution (and, for leaky and
    linear layers, its activation) on a weight packed for oneDNN.

    Call it on ``[B, in_channels, H, W]`` (any memory format; the output takes the input's)
    of the layer's dtype on the CPU; returns ``[B, filters, H / stride, W / stride]``.
    ``fuses_activation`` says whether the layer's activation is already applied.

    Not an ``nn.Module``: it holds no parameters of its own (``state_dict`` and ``.to()`` see
    only the plain convolution it was packed from, which it keeps for pickling and copying).
    """

    def __init__(self, conv: torch.nn.Conv2d, activation: str) -> None:
        self.conv = conv
        self.activation = activation
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.fuses_activation = activation in FUSED_ACTIVATIONS
        self.post_op, self.post_op_scalars = FUSED_ACTIVATIONS.get(activation, _NO_POST_OP)
        with torch.no_grad():
            self.weight = torch.ops.mkldnn._reorder_convolution_weight(
                conv.weight.detach(), self.padding, self.stride, self.dilation, self.groups
            )
        self.bias = None if conv.bias is None else conv.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            self.weight,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            self.post_op,
            self.post_op_scalars,
            "",  # the post-op's algorithm: none for these
        )

    def __reduce__(self):
        # oneDNN's packed tensors cannot be pickled or deep-copied: a copy packs anew.
        return PackedConvolution, (self.conv, self.activation)


def pack_convolutions(model: torch.nn.Module) -> int:
    """Pack every folded :class:`~yolov4.layers.DarknetConv` of ``model`` (on the CPU, in an
    inference dtype :func:`packing_available` accepts), in place; returns how many.

    Layers with an unfolded batch norm keep the plain path (the packed op has no batch norm).
    Call after the model's last change of weights, dtype or device: a packed weight is a
    copy and does not follow them (:func:`unpack_convolutions` undoes it).
    """
    packed = 0
    for layer in model.modules():
        if not isinstance(layer, DarknetConv) or layer.bn is not None:
            continue
        weight = layer.conv.weight
        if weight.device.type != "cpu" or not packing_available(weight.dtype):
            continue
        try:
            layer.packed = PackedConvolution(layer.conv, layer.spec.activation)
        except RuntimeError as exc:  # an op this build of oneDNN refuses: keep the plain path
            logger.warning("convolution %s stays unpacked: %s", layer.spec, exc)
            continue
        packed += 1
    return packed


def unpack_convolutions(model: torch.nn.Module) -> None:
    """Return every layer of ``model`` to the plain convolution path."""
    for layer in model.modules():
        if isinstance(layer, DarknetConv):
            layer.packed = None
