"""Convolutions with their weights laid out once for oneDNN: faster eager inference on CPU.

PyTorch's CPU convolution hands its weight to oneDNN in PyTorch's plain ``[O, I, kh, kw]``
layout, and oneDNN reorders it into the blocked layout its kernels read on **every call**.
:func:`pack_convolutions` reorders each folded convolution's weight once, up front, and runs
the layer through oneDNN's fused convolution op with that packed weight; leaky ReLU runs
inside the convolution as a post-op instead of as a second pass over the output. The same
kernels: fp32 outputs equal the plain path's up to float rounding (tested). What it saves is
the per-call weight reorder and the activation's separate pass; docs/performance.md has the
measured gain.

This is what Inductor's weight freezing does for compiled CPU models, without paying a
compilation in every process. No library exposes it for eager models
(``torch.utils.mkldnn.to_mkldnn`` needs opaque oneDNN tensors flowing between every layer,
which Mish, concatenation and slicing do not take), so it is written here, on the two ops
Inductor itself emits for frozen convolutions:
``torch.ops.mkldnn._reorder_convolution_weight`` and ``torch.ops.mkldnn._convolution_pointwise``.
They are internal to PyTorch; where they are missing, refuse a layer or compute anything else
than the plain path on a small check image, the model keeps the plain path
(:func:`packing_available`, and a logged fallback).

The packed weight is a second copy of each weight (the plain one stays, so ``state_dict``,
FLOP counts and weight export are unchanged): the model's weight memory doubles on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from yolov4.config import INPUT_SIZE_MULTIPLE
from yolov4.layers import LEAKY_SLOPE, DarknetConv

logger = logging.getLogger(__name__)

#: darknet activations oneDNN runs inside the convolution, as ``(post-op name, its scalars)``.
#: Mish has no oneDNN post-op in PyTorch's op; it runs after the convolution, in place.
FUSED_ACTIVATIONS = {"leaky": ("leaky_relu", [LEAKY_SLOPE]), "linear": ("none", [])}
_NO_POST_OP = ("none", [])
#: dtypes with oneDNN convolution kernels on CPU (bf16 only where the CPU has native ones).
_PACKABLE_DTYPES = (torch.float32, torch.bfloat16)
#: Largest difference allowed between the packed and the plain path's outputs on the check
#: image, relative to the outputs' largest magnitude, by dtype. fp32: room for float rounding
#: only (a packed layout can change the summation order). bf16: room for bf16 rounding, which
#: the fused path applies at another point (leaky ReLU inside the convolution runs before the
#: rounding to bf16 instead of after it). Anything beyond these means the packed path is wrong,
#: and the plain one is kept.
AGREEMENT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.05}
#: Side of the one image :func:`pack_convolutions` runs to find each layer's input shape and
#: to check the packed model: the smallest input these models take (their largest stride).
PROBE_SIZE = INPUT_SIZE_MULTIPLE


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
    ``input_shape``: the ``[B, in_channels, H, W]`` it will mostly see. oneDNN picks the
    weight's layout for it; any shape gives the same outputs, but a layout chosen for another
    scale of input gets reordered again on every call, which can make the packed path slower
    than the plain one: pass the shape.
    ``fuses_activation`` says whether the layer's activation is already applied.

    Not an ``nn.Module``: it holds no parameters of its own (``state_dict`` and ``.to()`` see
    only the plain convolution it was packed from, which it keeps for pickling and copying).
    """

    def __init__(
        self, conv: torch.nn.Conv2d, activation: str, input_shape: Sequence[int] | None = None
    ) -> None:
        self.conv = conv
        self.activation = activation
        self.input_shape = None if input_shape is None else list(input_shape)
        self.padding = list(conv.padding)
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.fuses_activation = activation in FUSED_ACTIVATIONS
        self.post_op, self.post_op_scalars = FUSED_ACTIVATIONS.get(activation, _NO_POST_OP)
        with torch.no_grad():
            self.weight = torch.ops.mkldnn._reorder_convolution_weight(
                conv.weight.detach(),
                self.padding,
                self.stride,
                self.dilation,
                self.groups,
                self.input_shape,
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
        return PackedConvolution, (self.conv, self.activation, self.input_shape)


def pack_convolutions(
    model: torch.nn.Module,
    batch_shape: Sequence[int],
    memory_format: torch.memory_format = torch.channels_last,
) -> int:
    """Pack every folded :class:`~yolov4.layers.DarknetConv` of ``model`` (on the CPU, in an
    inference dtype :func:`packing_available` accepts), in place; returns how many.

    ``batch_shape``: ``[B, 3, h, w]`` of the model's calls (``h``, ``w`` multiples of 32), each
    layer's weight is packed for its input at that size. The layers' input shapes come from one
    forward pass on a single :data:`PROBE_SIZE` image, scaled up (every map of these models is
    the input divided by a power of two); a second pass checks the packed model against the
    first: should this build of oneDNN refuse a packed layer or compute anything else (beyond
    :data:`AGREEMENT_TOLERANCE`), the model is left unpacked, with a warning, and 0 returned.
    Both passes together cost milliseconds. Layers with an unfolded batch norm keep the plain
    path (the packed op has no batch norm). Call after the model's last change of weights,
    dtype or device: a packed weight is a copy and does not follow them
    (:func:`unpack_convolutions` undoes it).
    """
    calls, _, height, width = batch_shape
    if height % PROBE_SIZE or width % PROBE_SIZE:
        raise ValueError(f"batch height and width must be multiples of {PROBE_SIZE}: {batch_shape}")
    layers = [
        layer
        for layer in model.modules()
        if isinstance(layer, DarknetConv)
        and layer.bn is None
        and layer.conv.weight.device.type == "cpu"
        and packing_available(layer.conv.weight.dtype)
    ]
    if not layers:
        return 0
    dtype = layers[0].conv.weight.dtype
    pixels = torch.Generator().manual_seed(0)
    probe = torch.rand((1, 3, PROBE_SIZE, PROBE_SIZE), generator=pixels).to(dtype)
    probe = probe.contiguous(memory_format=memory_format)
    shapes: dict[DarknetConv, list[int]] = {}

    def record(layer: DarknetConv, inputs: tuple) -> None:
        _, channels, probe_h, probe_w = inputs[0].shape
        scale_h, scale_w = height // PROBE_SIZE, width // PROBE_SIZE
        shapes[layer] = [calls, channels, probe_h * scale_h, probe_w * scale_w]

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        expected = _outputs(model, probe)
    finally:
        for hook in hooks:
            hook.remove()
    try:
        for layer in layers:
            layer.packed = PackedConvolution(layer.conv, layer.spec.activation, shapes[layer])
        found = _outputs(model, probe)
    except RuntimeError as exc:  # an op this build of oneDNN refuses
        problem = f"fails ({_first_line(exc)})"
    else:
        worst = max(_relative_difference(a, b) for a, b in zip(found, expected))
        problem = (
            None
            if worst <= AGREEMENT_TOLERANCE[dtype]
            else f"differs from the plain path by {worst:.3g} of the outputs' range"
        )
    if problem is not None:
        unpack_convolutions(model)
        logger.warning(
            "convolution weights left unpacked (about 6%% slower on CPU): the packed path %s",
            problem,
        )
        return 0
    return len(layers)


def _outputs(model: torch.nn.Module, batch: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        outputs = model(batch)
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def _relative_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |found - expected|`` over ``max(max |expected|, 1)`` (NaN if either has one)."""
    found, expected = found.float(), expected.float()
    scale = max(float(expected.abs().max()), 1.0)
    return float((found - expected).abs().max()) / scale


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def unpack_convolutions(model: torch.nn.Module) -> None:
    """Return every layer of ``model`` to the plain convolution path."""
    for layer in model.modules():
        if isinstance(layer, DarknetConv):
            layer.packed = None
