"""Random darknet weights for models whose trained weights are not at hand (tests, benchmarks).

:func:`random_darknet_model` builds a model for a :class:`~yolov4.config.ModelConfig` and fills
it with random values that keep every activation of order one, as trained weights do: no
overflow in half precision, no denormals on CPU, moderate box sizes. With
``candidates_per_image`` the prediction biases are also set so that a realistic number of boxes
pass the default score threshold (raw random outputs would pass thousands, and NMS would
dominate any timing). Write the result with :func:`yolov4.darknet_weights.save_darknet_weights`
or :func:`yolov4.darknet_weights.darknet_weights_bytes`.
"""

from __future__ import annotations

import math

import torch

from yolov4.config import ModelConfig
from yolov4.model import YOLOv4, YOLOv4Tiny, build_model
from yolov4.postprocess import DEFAULT_CONF_THRESHOLD

#: Conv weights ~ N(0, gain / fan_in): He initialisation before batch norm, smaller for the
#: prediction convs (no batch norm) so that ``exp(tw)`` stays moderate.
BATCH_NORM_CONV_GAIN = 2.0
PREDICTION_CONV_GAIN = 0.5
PREDICTION_BIAS_STD = 0.1
#: Batch-norm scale ~ U(low, low + span), shift ~ N(0, std): not the identity, so that code
#: folding batch norm into the convolutions is exercised.
BN_SCALE_LOW = 0.3
BN_SCALE_SPAN = 0.4
BN_SHIFT_STD = 0.2
#: Batch-norm running variances at least this, far from zero (OpenCV's epsilon, 1e-6,
#: differs from darknet's, 1e-5).
MIN_BN_VARIANCE = 0.5
#: The running statistics' momentum a model is left with (PyTorch's default).
BN_MOMENTUM = 0.1
#: Without calibration images: this many uniform random images of this side.
RANDOM_CALIBRATION_IMAGES = 2
RANDOM_CALIBRATION_SIDE = 256
#: With ``candidates_per_image``: class logits, one class "on" per anchor, the anchors'
#: classes spread over the class list by an odd step.
CLASS_LOGIT_OFF = -8.0
CLASS_LOGIT_ON = 8.0
CLASS_STEP = 11
#: How far above the score threshold the ``candidates_per_image``-th best box lands (logit).
THRESHOLD_MARGIN = 1e-3


@torch.no_grad()
def random_darknet_model(
    config: ModelConfig,
    *,
    seed: int = 0,
    calibration: torch.Tensor | None = None,
    candidates_per_image: int | None = None,
    device: torch.device | str = "cpu",
) -> YOLOv4 | YOLOv4Tiny:
    """A model for ``config`` with random weights, in eval mode on ``device``, not fused.

    Conv weights ~ N(0, gain / fan_in) and the prediction convs' biases ~ N(0, 0.1), batch-norm
    scales and shifts random, all from ``seed`` (the same seed and arguments give the same
    weights). The batch-norm running statistics come from one training-mode forward on
    ``calibration`` (``[n, 3, h, w]`` float in [0, 1]; default two uniform random 256x256
    images drawn from ``seed``), so that every batch-norm output is of unit scale; running
    variances are floored at 0.5.

    ``candidates_per_image``: shift the objectness biases so that about this many boxes per
    calibration image pass :data:`yolov4.postprocess.DEFAULT_CONF_THRESHOLD`, each for one
    class (one class per anchor); ``None`` leaves the random biases.
    """
    generator = torch.Generator().manual_seed(seed)
    model = build_model(config)
    for conv in model.darknet_convs():
        weight = conv.conv.weight
        gain = PREDICTION_CONV_GAIN if conv.bn is None else BATCH_NORM_CONV_GAIN
        weight.copy_(
            torch.randn(weight.shape, generator=generator) * math.sqrt(gain / weight[0].numel())
        )
        if conv.bn is None:
            bias = conv.conv.bias
            bias.copy_(torch.randn(bias.shape, generator=generator) * PREDICTION_BIAS_STD)
            continue
        filters = conv.spec.filters
        conv.bn.weight.copy_(
            BN_SCALE_LOW + BN_SCALE_SPAN * torch.rand(filters, generator=generator)
        )
        conv.bn.bias.copy_(torch.randn(filters, generator=generator) * BN_SHIFT_STD)
        conv.bn.momentum = 1.0  # running statistics := the calibration batch's
    if calibration is None:
        side = RANDOM_CALIBRATION_SIDE
        calibration = torch.rand((RANDOM_CALIBRATION_IMAGES, 3, side, side), generator=generator)
    model.to(device)
    batch = calibration.to(device, torch.float32)
    model.train()
    model(batch)
    model.eval()
    for conv in model.darknet_convs():
        if conv.bn is not None:
            conv.bn.momentum = BN_MOMENTUM
            conv.bn.running_var.clamp_(min=MIN_BN_VARIANCE)
    if candidates_per_image is not None:
        _calibrate_heads(model, config, batch, candidates_per_image)
    return model


def _calibrate_heads(
    model: YOLOv4 | YOLOv4Tiny, config: ModelConfig, batch: torch.Tensor, candidates_per_image: int
) -> None:
    """Shift the objectness biases so that ``candidates_per_image`` rows per image of ``batch``
    pass the default score threshold; one class per anchor."""
    attrs = 5 + config.num_classes
    images = batch.shape[0]
    objectness = torch.cat(
        [
            out.view(images, len(head.mask), attrs, -1)[:, :, 4].flatten()
            for out, head in zip(model(batch), config.heads)
        ]
    )
    wanted = min(candidates_per_image * images, objectness.numel())
    kth = objectness.topk(wanted).values[-1]
    threshold_logit = math.log(DEFAULT_CONF_THRESHOLD / (1 - DEFAULT_CONF_THRESHOLD))
    shift = threshold_logit - float(kth) + THRESHOLD_MARGIN
    predictions = [conv for conv in model.darknet_convs() if conv.bn is None]
    anchor = 0
    for conv, head in zip(predictions, config.heads):
        bias = conv.conv.bias.view(len(head.mask), attrs)
        bias[:, 4] += shift
        bias[:, 5:] = CLASS_LOGIT_OFF
        for slot in range(len(head.mask)):
            bias[slot, 5 + (anchor * CLASS_STEP) % config.num_classes] = CLASS_LOGIT_ON
            anchor += 1
