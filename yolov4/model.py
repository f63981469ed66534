"""YOLOv4 and YOLOv4-tiny as explicit PyTorch modules.

Both return the raw head tensors, in cfg order, one ``[B, A * (5 + C), H / s, W / s]`` per
``[yolo]`` layer (``A = len(mask)``, channel ``a * (5 + C) + k`` with ``k`` = x, y, w, h,
objectness, classes). Decoding is :mod:`yolov4.decode`'s job.

Submodules are registered in the darknet cfg's ``[convolutional]`` order, which is the order of
the weights in a ``.weights`` file: :meth:`darknet_convs` relies on it and the cfg check and
the OpenCV reference tests prove it.
"""

from __future__ import annotations

import torch
from torch import nn

from yolov4.backbone import CSPDarknet53, CSPDarknet53Tiny, convs_in_order
from yolov4.config import ARCH_YOLOV4, ARCH_YOLOV4_TINY, ModelConfig
from yolov4.layers import CBL, SPP, DarknetConv, upsample2x


class FiveConvs(nn.Sequential):
    """The neck's 1x1 / 3x3 / 1x1 / 3x3 / 1x1 CBL stack: ``[B, in, H, W] -> [B, mid, H, W]``."""

    def __init__(self, in_channels: int, mid: int) -> None:
        super().__init__(
            CBL(in_channels, mid, 1),
            CBL(mid, 2 * mid, 3),
            CBL(2 * mid, mid, 1),
            CBL(mid, 2 * mid, 3),
            CBL(2 * mid, mid, 1),
        )


class SPPBlock(nn.Module):
    """Three CBLs, SPP, three CBLs on the stride-32 features.

    Shapes: ``[B, 1024, h, w] -> [B, 512, h, w]``.
    """

    def __init__(self, in_channels: int = 1024, mid: int = 512) -> None:
        super().__init__()
        self.pre = nn.Sequential(
            CBL(in_channels, mid, 1), CBL(mid, 2 * mid, 3), CBL(2 * mid, mid, 1)
        )
        self.spp = SPP()
        self.post = nn.Sequential(CBL(4 * mid, mid, 1), CBL(mid, 2 * mid, 3), CBL(2 * mid, mid, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.spp(self.pre(x)))


class TopDown(nn.Module):
    """PANet's top-down step: upsample the deeper map and merge a backbone lateral.

    ``cat[lateral(backbone), upsample(reduce(deep))]`` (cfg ``route -1,-3``) then five convs.
    Shapes: deep ``[B, deep_ch, h, w]``, lateral ``[B, lateral_ch, 2h, 2w]`` ->
    ``[B, out, 2h, 2w]``.
    """

    def __init__(self, deep_channels: int, lateral_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = CBL(deep_channels, out_channels, 1)
        self.lateral = CBL(lateral_channels, out_channels, 1)
        self.convs = FiveConvs(2 * out_channels, out_channels)

    def forward(self, deep: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        up = upsample2x(self.reduce(deep))
        return self.convs(torch.cat([self.lateral(lateral), up], dim=1))


class BottomUp(nn.Module):
    """PANet's bottom-up step: a stride-2 CBL, ``cat[down, same_scale]``, five convs.

    Shapes: fine ``[B, in, 2h, 2w]``, same_scale ``[B, out, h, w]`` -> ``[B, out, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.down = CBL(in_channels, out_channels, 3, stride=2)
        self.convs = FiveConvs(2 * out_channels, out_channels)

    def forward(self, fine: torch.Tensor, same_scale: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.down(fine), same_scale], dim=1))


class YOLOHead(nn.Module):
    """A 3x3 CBL then the 1x1 linear prediction conv (with bias, no BN).

    Shapes: ``[B, in, h, w] -> [B, len(mask) * (5 + C), h, w]``.
    """

    def __init__(self, in_channels: int, mid: int, out_channels: int) -> None:
        super().__init__()
        self.conv = CBL(in_channels, mid, 3)
        self.pred = DarknetConv(mid, out_channels, 1, activation="linear", batch_normalize=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.conv(x))


class _DarknetModel(nn.Module):
    """Shared behaviour: the config, darknet conv order, conv+BN folding."""

    config: ModelConfig

    def darknet_convs(self) -> list[DarknetConv]:
        """Every conv layer in darknet cfg (and ``.weights``) order."""
        return convs_in_order(self)

    def fuse(self) -> _DarknetModel:
        """Fold every batch norm into its conv (inference only); returns ``self``."""
        self.eval()
        for conv in self.darknet_convs():
            conv.fuse_bn()
        return self

    @property
    def is_fused(self) -> bool:
        return any(conv.is_fused for conv in self.darknet_convs())

    def num_parameters(self) -> int:
        """darknet's parameter count: conv weights, biases and BN gammas (not running stats)."""
        return sum(p.numel() for p in self.parameters())


class YOLOv4(_DarknetModel):
    """YOLOv4: CSPDarknet53 backbone, SPP + PANet neck, heads at strides 8, 16, 32.

    Input ``[B, 3, H, W]`` float RGB in ``[0, 1]``, H and W multiples of 32. Output: three raw
    head tensors ``[B, A * (5 + C), H / s, W / s]`` for s = 8, 16, 32 (cfg order).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != ARCH_YOLOV4:
            raise ValueError(f"YOLOv4 needs a {ARCH_YOLOV4} config, got {config.arch}")
        self.config = config
        head_s8, head_s16, head_s32 = (config.head_channels(h) for h in config.heads)
        # Registration order == darknet cfg order; see the module docstring.
        self.backbone = CSPDarknet53()
        self.spp_block = SPPBlock(1024, 512)
        self.top_down_s16 = TopDown(512, 512, 256)
        self.top_down_s8 = TopDown(256, 256, 128)
        self.head_s8 = YOLOHead(128, 256, head_s8)
        self.bottom_up_s16 = BottomUp(128, 256)
        self.head_s16 = YOLOHead(256, 512, head_s16)
        self.bottom_up_s32 = BottomUp(256, 512)
        self.head_s32 = YOLOHead(512, 1024, head_s32)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3, c4, c5 = self.backbone(x)
        p5 = self.spp_block(c5)
        n4 = self.top_down_s16(p5, c4)
        n3 = self.top_down_s8(n4, c3)
        out_s8 = self.head_s8(n3)
        m4 = self.bottom_up_s16(n3, n4)
        out_s16 = self.head_s16(m4)
        m5 = self.bottom_up_s32(m4, p5)
        out_s32 = self.head_s32(m5)
        return [out_s8, out_s16, out_s32]


class YOLOv4Tiny(_DarknetModel):
    """YOLOv4-tiny: CSP-tiny backbone, heads at strides 32 then 16 (cfg order).

    Input ``[B, 3, H, W]`` float RGB in ``[0, 1]``, H and W multiples of 32. Output: two raw
    head tensors ``[B, A * (5 + C), H / 32, W / 32]`` and ``[B, A * (5 + C), H / 16, W / 16]``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != ARCH_YOLOV4_TINY:
            raise ValueError(f"YOLOv4Tiny needs a {ARCH_YOLOV4_TINY} config, got {config.arch}")
        self.config = config
        head_s32, head_s16 = (config.head_channels(h) for h in config.heads)
        self.backbone = CSPDarknet53Tiny()
        self.neck_conv = CBL(512, 256, 1)
        self.head_s32 = YOLOHead(256, 512, head_s32)
        self.reduce_s16 = CBL(256, 128, 1)
        self.head_s16 = YOLOHead(128 + 256, 256, head_s16)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        route_s16, c5 = self.backbone(x)
        p5 = self.neck_conv(c5)
        out_s32 = self.head_s32(p5)
        up = upsample2x(self.reduce_s16(p5))
        out_s16 = self.head_s16(torch.cat([up, route_s16], dim=1))
        return [out_s32, out_s16]


MODEL_CLASSES = {ARCH_YOLOV4: YOLOv4, ARCH_YOLOV4_TINY: YOLOv4Tiny}


def build_model(config: ModelConfig) -> YOLOv4 | YOLOv4Tiny:
    """The model for ``config.arch``, randomly initialised, in eval mode."""
    return MODEL_CLASSES[config.arch](config).eval()
