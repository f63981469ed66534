"""Building blocks named as in the YOLOv4 paper and darknet cfgs.

- ``CBM``: convolution + batch norm + Mish (the CSPDarknet53 backbone).
- ``CBL``: convolution + batch norm + leaky ReLU(0.1) (the neck, the heads, YOLOv4-tiny).
- ``ResUnit``: two convolutions with an identity shortcut (darknet ``[shortcut] from=-3``).
- ``SPP``: stride-1 max pools of 5, 9 and 13 concatenated with their input.

Every convolution that darknet stores in a ``.weights`` file is a :class:`DarknetConv`, so
weight I/O, conv+BN folding and the cfg architecture check can walk them uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: darknet's batch-norm epsilon: ``(x - mean) / sqrt(var + 1e-5)``. (OpenCV's importer uses 1e-6.)
DARKNET_BN_EPS = 1e-5
#: darknet's leaky ReLU slope.
LEAKY_SLOPE = 0.1
#: Activations darknet cfgs use for the layers this project models.
ACTIVATIONS = ("mish", "leaky", "linear")


@dataclass(frozen=True)
class ConvSpec:
    """What a darknet ``[convolutional]`` section says about one layer.

    Used to check a cfg against a model, layer by layer, before loading weights.
    """

    in_channels: int
    filters: int
    size: int
    stride: int
    batch_normalize: bool
    activation: str


class Mish(nn.Module):
    """``x * tanh(softplus(x))`` (darknet's ``mish``); uses PyTorch's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mish(x)


def _activation(name: str) -> nn.Module:
    if name == "mish":
        return Mish()
    if name == "leaky":
        return nn.LeakyReLU(LEAKY_SLOPE)
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"unsupported activation {name!r}; expected one of {ACTIVATIONS}")


class DarknetConv(nn.Module):
    """One darknet ``[convolutional]`` layer: conv, optional batch norm, activation.

    Padding is ``size // 2`` (darknet's ``pad=1``). With batch norm the convolution has no
    bias (darknet stores the BN beta as the layer's "biases"); without it the conv has one.
    After :meth:`fuse_bn` the batch norm is folded into the conv's weight and bias.

    Shapes: ``[B, in_channels, H, W] -> [B, filters, H / stride, W / stride]``.
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        size: int,
        stride: int = 1,
        activation: str = "leaky",
        batch_normalize: bool = True,
    ) -> None:
        super().__init__()
        self.spec = ConvSpec(in_channels, filters, size, stride, batch_normalize, activation)
        self.conv = nn.Conv2d(
            in_channels, filters, size, stride, padding=size // 2, bias=not batch_normalize
        )
        self.bn = nn.BatchNorm2d(filters, eps=DARKNET_BN_EPS) if batch_normalize else None
        self.act = _activation(activation)
        #: The convolution on a weight packed for oneDNN (CPU inference), when
        #: :func:`yolov4.onednn.pack_convolutions` set it; ``None``: the plain path.
        self.packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            x = self.packed(x)
            return x if self.packed.fuses_activation else self.act(x)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fuse_bn(self) -> None:
        """Fold batch norm (in eval mode) into the convolution, in place.

        ``w' = w * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``.
        """
        if self.bn is None:
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        self.conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
        self.bn = None

    @property
    def is_fused(self) -> bool:
        return self.spec.batch_normalize and self.bn is None


def CBM(in_channels: int, filters: int, size: int, stride: int = 1) -> DarknetConv:  # noqa: N802
    """Conv + BN + Mish."""
    return DarknetConv(in_channels, filters, size, stride, activation="mish")


def CBL(in_channels: int, filters: int, size: int, stride: int = 1) -> DarknetConv:  # noqa: N802
    """Conv + BN + leaky ReLU(0.1)."""
    return DarknetConv(in_channels, filters, size, stride, activation="leaky")


class ResUnit(nn.Module):
    """``x + conv3x3(conv1x1(x))``: darknet's two convs followed by ``[shortcut] from=-3``.

    Shapes: ``[B, C, H, W] -> [B, C, H, W]``.
    """

    def __init__(self, channels: int, hidden: int, activation: str = "mish") -> None:
        super().__init__()
        self.conv1 = DarknetConv(channels, hidden, 1, activation=activation)
        self.conv2 = DarknetConv(hidden, channels, 3, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


#: SPP pool sizes, in the order their outputs are concatenated (cfg ``route -1,-3,-5,-6``).
SPP_POOL_SIZES = (13, 9, 5)


class SPP(nn.Module):
    """Spatial pyramid pooling: ``cat[maxpool13(x), maxpool9(x), maxpool5(x), x]``.

    Stride-1 pools with ``size // 2`` padding (PyTorch pads max pools with -inf, as darknet).
    Shapes: ``[B, C, H, W] -> [B, 4C, H, W]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [F.max_pool2d(x, k, stride=1, padding=k // 2) for k in SPP_POOL_SIZES]
        return torch.cat([*pooled, x], dim=1)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """darknet ``[upsample] stride=2``: nearest neighbour, ``[B,C,H,W] -> [B,C,2H,2W]``."""
    return F.interpolate(x, scale_factor=2, mode="nearest")
