"""Floating-point work of one forward pass, counted the way darknet prints it ("BFLOPS").

darknet counts the convolutions only, two FLOPs per multiply-add:
``2 * k_h * k_w * c_in * c_out * h_out * w_out / groups`` per layer, summed. By that count
yolov4 at 608x608 is 128.46 GFLOP per image and yolov4-tiny at 416x416 6.91 (darknet's own
figures; this module gives 128.39 and 6.91: darknet also counts its pooling and shortcut
layers, a few hundredths of a percent). Bias additions, batch norm, activations, resizing,
decode and NMS are left out.

The count runs the model on PyTorch's ``meta`` device: output shapes only, no memory, no
arithmetic, so it costs milliseconds even for yolov4 at large input sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from yolov4.config import ModelConfig
from yolov4.model import build_model

#: FLOPs per multiply-add (darknet's convention, and the usual one for TFLOP/s figures).
FLOPS_PER_MAC = 2
#: Images of the meta forward; the count is per image.
_PROBE_BATCH = 1


def conv_flops(conv: nn.Conv2d, output_hw: tuple[int, int]) -> int:
    """FLOPs of one convolution for one image whose output map is ``(h_out, w_out)``."""
    k_h, k_w = conv.kernel_size
    h_out, w_out = output_hw
    macs = k_h * k_w * conv.in_channels * conv.out_channels * h_out * w_out // conv.groups
    return FLOPS_PER_MAC * macs


def model_flops(config: ModelConfig, input_size: tuple[int, int] | int | None = None) -> int:
    """Convolution FLOPs of one image through the model ``config`` describes.

    ``input_size``: network input ``(width, height)`` or one int (square); default the
    config's. Returns FLOPs per image (2 per multiply-add), e.g. 128,389,482,496 for yolov4
    at 608x608.
    """
    if input_size is not None:
        config = config.with_input_size(input_size)
    width, height = config.input_size
    with torch.device("meta"):
        model = build_model(config)
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += conv_flops(module, (output.shape[-2], output.shape[-1]))

    handles = [
        module.register_forward_hook(count)
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.inference_mode():
            model(torch.empty((_PROBE_BATCH, 3, height, width), device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return total // _PROBE_BATCH
