"""Backbones: CSPDarknet53 (YOLOv4) and the CSP-tiny backbone of YOLOv4-tiny.

Module registration order follows the darknet cfg's ``[convolutional]`` order, which is the
order weights are stored in a ``.weights`` file; ``darknet_convs()`` on the models relies on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from yolov4.layers import CBL, CBM, DarknetConv, ResUnit


class CSPStage(nn.Module):
    """One CSPDarknet53 stage ("CSPX" in the paper's figure).

    ``downsample`` (3x3 stride 2) then two 1x1 branches: ``split_conv`` is carried across
    unchanged, ``main_conv`` goes through ``num_blocks`` residual units and ``post_conv``;
    the two are concatenated ``[main, split]`` (cfg ``route -1,-N``) and fused by a 1x1.

    The first stage keeps full width in its branches (64 channels, bottleneck 32); later
    stages halve it.

    Shapes: ``[B, in_channels, H, W] -> [B, out_channels, H/2, W/2]``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, first: bool) -> None:
        super().__init__()
        branch = out_channels if first else out_channels // 2
        hidden = out_channels // 2 if first else branch
        self.downsample = CBM(in_channels, out_channels, 3, stride=2)
        self.split_conv = CBM(out_channels, branch, 1)
        self.main_conv = CBM(out_channels, branch, 1)
        self.blocks = nn.Sequential(*(ResUnit(branch, hidden) for _ in range(num_blocks)))
        self.post_conv = CBM(branch, branch, 1)
        self.fuse_conv = CBM(2 * branch, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        split = self.split_conv(x)
        main = self.post_conv(self.blocks(self.main_conv(x)))
        return self.fuse_conv(torch.cat([main, split], dim=1))


#: (out_channels, residual units) per CSPDarknet53 stage; strides 2, 4, 8, 16, 32.
CSPDARKNET53_STAGES = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


class CSPDarknet53(nn.Module):
    """YOLOv4's backbone: a 3x3 CBM stem and five CSP stages.

    Input ``[B, 3, H, W]`` (H, W multiples of 32). Returns the stride 8, 16 and 32 features:
    ``[B, 256, H/8, W/8]``, ``[B, 512, H/16, W/16]``, ``[B, 1024, H/32, W/32]``.
    """

    out_channels = (256, 512, 1024)

    def __init__(self) -> None:
        super().__init__()
        self.stem = CBM(3, 32, 3)
        stages = []
        in_channels = 32
        for index, (channels, blocks) in enumerate(CSPDARKNET53_STAGES):
            stages.append(CSPStage(in_channels, channels, blocks, first=index == 0))
            in_channels = channels
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[2], features[3], features[4]


class TinyCSPBlock(nn.Module):
    """YOLOv4-tiny's CSP block, wired exactly as the cfg's routes.

    ``conv_in`` (3x3); its second channel half (``route groups=2 group_id=1``) goes through two
    3x3 convs whose outputs are concatenated ``[second, first]`` (``route -1,-2``) and fused by
    a 1x1 (``conv_fuse``); the block output is ``maxpool2x2(cat[conv_in, conv_fuse])``
    (``route -6,-1``). ``conv_fuse``'s output is also returned: the last block's feeds the
    stride-16 head.

    Shapes: ``[B, C_in, H, W] -> ([B, 2C, H/2, W/2], [B, C, H, W])`` with ``C = channels``.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv_in = CBL(in_channels, channels, 3)
        self.conv_a = CBL(half, half, 3)
        self.conv_b = CBL(half, half, 3)
        self.conv_fuse = CBL(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv_in(x)
        half = x[:, x.shape[1] // 2 :]
        a = self.conv_a(half)
        b = self.conv_b(a)
        fused = self.conv_fuse(torch.cat([b, a], dim=1))
        # darknet's 2x2 stride-2 maxpool pads right/bottom only; for even sizes that is none.
        return F.max_pool2d(torch.cat([x, fused], dim=1), 2, 2), fused


class CSPDarknet53Tiny(nn.Module):
    """YOLOv4-tiny's backbone: two stride-2 CBLs, three tiny CSP blocks, a 3x3 CBL.

    Input ``[B, 3, H, W]`` (H, W multiples of 32). Returns ``([B, 256, H/16, W/16],
    [B, 512, H/32, W/32])``: the last CSP block's fused features and the final conv's output.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem1 = CBL(3, 32, 3, stride=2)
        self.stem2 = CBL(32, 64, 3, stride=2)
        self.block1 = TinyCSPBlock(64, 64)
        self.block2 = TinyCSPBlock(128, 128)
        self.block3 = TinyCSPBlock(256, 256)
        self.conv_out = CBL(512, 512, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem2(self.stem1(x))
        x, _ = self.block1(x)
        x, _ = self.block2(x)
        x, route_s16 = self.block3(x)
        return route_s16, self.conv_out(x)


def convs_in_order(module: nn.Module) -> list[DarknetConv]:
    """Every :class:`DarknetConv` under ``module`` in registration order."""
    return [m for m in module.modules() if isinstance(m, DarknetConv)]
