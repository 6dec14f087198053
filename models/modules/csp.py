"""YOLOv5 CSP blocks and spatial pyramid pooling: Bottleneck, C3, SPP, SPPF."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.modules.conv import Conv
from models.registry import register, repeated_block_rule


@register
class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 expand, with a residual add when shapes allow. YOLOv5.

    (B, C_in, H, W) -> (B, C_out, H, W). YAML args: [out_channels, shortcut=True, groups=1, expansion=0.5].
    """

    upstream_names = {"cv1": "reduce", "cv2": "expand"}

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True, groups: int = 1,
                 expansion: float = 0.5):
        super().__init__()
        if shortcut and in_channels != out_channels:
            raise ValueError(f"Bottleneck shortcut needs in_channels == out_channels, got {in_channels} -> "
                             f"{out_channels}; pass shortcut=False")
        hidden_channels = int(out_channels * expansion)
        self.reduce = Conv(in_channels, hidden_channels, 1, 1)
        self.expand = Conv(hidden_channels, out_channels, 3, 1, groups=groups)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.reduce(x))
        return x + y if self.shortcut else y


class CSPBlock(nn.Module):
    """The cross-stage-partial layout that C3 and VoV-GSCSP share (not a YAML layer itself): two 1x1 branches of
    out*expansion channels, ``num_repeats`` blocks of the class's ``bottleneck`` on one of them, and a 1x1 conv that
    fuses the concatenation. ``shortcut`` and ``groups`` go to every bottleneck. (B, C_in, H, W) -> (B, C_out, H, W).
    """

    channel_rule = staticmethod(repeated_block_rule)
    bottleneck: type[nn.Module]

    def __init__(self, in_channels: int, out_channels: int, num_repeats: int = 1, shortcut: bool = True,
                 groups: int = 1, expansion: float = 0.5):
        super().__init__()
        hidden_channels = int(out_channels * expansion)
        self.main_in = Conv(in_channels, hidden_channels, 1, 1)
        self.skip = Conv(in_channels, hidden_channels, 1, 1)
        self.fuse = Conv(2 * hidden_channels, out_channels, 1)
        self.blocks = nn.Sequential(*(self.bottleneck(hidden_channels, hidden_channels, shortcut=shortcut,
                                                      groups=groups, expansion=1.0)
                                      for _ in range(num_repeats)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat((self.blocks(self.main_in(x)), self.skip(x)), 1))

    def input_convs(self) -> list[nn.Module]:
        return [self.main_in, self.skip]


@register
class C3(CSPBlock):
    """CSP bottleneck with 3 convolutions: a CSPBlock of Bottlenecks. YOLOv5.

    (B, C_in, H, W) -> (B, C_out, H, W). YAML args: [out_channels, shortcut=True, groups=1, expansion=0.5]; the
    parser inserts the depth-scaled repeat count.
    """

    upstream_names = {"cv1": "main_in", "cv2": "skip", "cv3": "fuse", "m": "blocks"}
    bottleneck = Bottleneck


@register
class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools. YOLOv3/v5.

    (B, C_in, H, W) -> (B, C_out, H, W). YAML args: [out_channels, kernel_sizes=(5, 9, 13)].
    """

    upstream_names = {"cv1": "reduce", "cv2": "fuse", "m": "pools"}

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: tuple[int, ...] | list[int] = (5, 9, 13)):
        super().__init__()
        hidden_channels = in_channels // 2
        self.reduce = Conv(in_channels, hidden_channels, 1, 1)
        self.fuse = Conv(hidden_channels * (len(kernel_sizes) + 1), out_channels, 1, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernel_sizes)

    def input_convs(self) -> list[nn.Module]:
        return [self.reduce]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        return self.fuse(torch.cat([x] + [pool(x) for pool in self.pools], 1))


@register
class SPPF(nn.Module):
    """Fast SPP: one max-pool applied three times in series (same result as SPP(k, 2k-1, 3k-2)). YOLOv5.

    (B, C_in, H, W) -> (B, C_out, H, W). YAML args: [out_channels, kernel_size=5].
    """

    upstream_names = {"cv1": "reduce", "cv2": "fuse", "m": "pool"}

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        super().__init__()
        hidden_channels = in_channels // 2
        self.reduce = Conv(in_channels, hidden_channels, 1, 1)
        self.fuse = Conv(hidden_channels * 4, out_channels, 1, 1)
        self.pool = nn.MaxPool2d(kernel_size, 1, kernel_size // 2)

    def input_convs(self) -> list[nn.Module]:
        return [self.reduce]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        pooled1 = self.pool(x)
        pooled2 = self.pool(pooled1)
        return self.fuse(torch.cat((x, pooled1, pooled2, self.pool(pooled2)), 1))
