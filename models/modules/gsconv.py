"""GSConv and the slim-neck blocks (Li et al., "Slim-neck by GSConv", JRTIP 2024, arXiv 2206.02424).

GSConv mixes a dense convolution with a cheap depth-wise one and shuffles the two halves together, so a neck
gets most of the representational power of a standard conv for about half the cost. VoV-GSCSP is a one-shot
aggregation CSP block built from GSConv bottlenecks.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.modules.conv import Conv
from models.modules.csp import CSPBlock
from models.registry import register


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave ``groups`` equal channel groups: [a0..an, b0..bn] -> [a0, b0, a1, b1, ...].

    Written as view -> transpose -> reshape so it exports to ONNX as one Reshape/Transpose pair.
    """
    batch, channels, height, width = x.shape
    return (x.view(batch, groups, channels // groups, height, width)
            .transpose(1, 2)
            .reshape(batch, channels, height, width))


def shuffled_concat(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``channel_shuffle(torch.cat((first, second), 1), 2)`` in one copy that keeps the memory format.

    On NCHW tensors it is exactly that concatenation and shuffle (the form ONNX export and the deploy rewrites
    know). On channels_last tensors the two halves are interleaved along the innermost (channel) axis in one
    stack: the output stays channels_last. (The NCHW shuffle's reshape returns an NCHW copy, and every
    channels_last consumer downstream then converts it back, forward and backward; in channels_last training
    that cost the slim-neck more than its FLOP savings.)
    """
    if first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
        batch, channels, height, width = first.shape
        stacked = torch.stack((first.permute(0, 2, 3, 1), second.permute(0, 2, 3, 1)), dim=-1)
        return stacked.view(batch, height, width, 2 * channels).permute(0, 3, 1, 2)
    return channel_shuffle(torch.cat((first, second), 1), 2)


def shuffle_permutation(channels: int, groups: int = 2) -> torch.Tensor:
    """The channel order ``channel_shuffle`` produces: output channel i reads input channel perm[i]."""
    return torch.arange(channels).view(groups, channels // groups).t().reshape(-1)


class _GSConvBase(nn.Module):
    """The two convolutions shared by GSConv and GSConvns: a dense conv to half the output, then a 5x5
    depth-wise conv on that half."""

    upstream_names = {"cv1": "primary", "cv2": "cheap"}

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                 act: bool | nn.Module):
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"{type(self).__name__} needs an even out_channels, got {out_channels}")
        half = out_channels // 2
        self.primary = Conv(in_channels, half, kernel_size, stride, None, groups, act=act)
        self.cheap = Conv(half, half, 5, 1, None, half, act=act)

    @classmethod
    def output_stride(cls, bound: dict) -> int:
        return bound["stride"]

    def input_convs(self) -> list[nn.Module]:
        return [self.primary]

    def halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense half and the cheap (depth-wise) half computed from it."""
        dense = self.primary(x)
        return dense, self.cheap(dense)


@register
class GSConv(_GSConvBase):
    """GSConv: dense conv to C_out/2, depth-wise 5x5 on it, concatenate, 2-group channel shuffle. Slim-neck.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). YAML args: [out_channels, kernel_size=1, stride=1, groups=1, act=True].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 act: bool | nn.Module = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shuffled_concat(*self.halves(x))


@register
class GSConvns(_GSConvBase):
    """GSConv whose fixed shuffle is replaced by a learned 1x1 conv + ReLU (export-friendly). Slim-neck.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). YAML args: [out_channels, kernel_size=1, stride=1, groups=1, act=True].
    """

    upstream_names = {**_GSConvBase.upstream_names, "shuf": "mix"}

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 act: bool | nn.Module = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, act)
        self.mix = nn.Conv2d(out_channels, out_channels, 1, 1, 0, bias=False)
        self.mix_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix_act(self.mix(torch.cat(self.halves(x), 1)))


@register
class GSBottleneck(nn.Module):
    """GSConv 1x1 -> GSConv kxk (no activation), plus a 1x1 conv shortcut. Slim-neck.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). YAML args: [out_channels, kernel_size=3, stride=1, expansion=0.5,
    shortcut=True]; with shortcut=False the shortcut branch is absent.
    """

    upstream_names = {"conv_lighting": "main", "shortcut": "shortcut"}

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 expansion: float = 0.5, shortcut: bool = True, groups: int = 1):
        super().__init__()
        hidden_channels = int(out_channels * expansion)
        self.main = nn.Sequential(GSConv(in_channels, hidden_channels, 1, stride, groups),
                                  GSConv(hidden_channels, out_channels, kernel_size, 1, act=False))
        self.shortcut = self.make_shortcut(in_channels, out_channels, stride) if shortcut else None

    @staticmethod
    def make_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
        return Conv(in_channels, out_channels, 1, stride, act=False)

    @classmethod
    def output_stride(cls, bound: dict) -> int:
        return bound["stride"]

    def input_convs(self) -> list[nn.Module]:
        return self.main[0].input_convs() + ([] if self.shortcut is None else [self.shortcut])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        return y + self.shortcut(x) if self.shortcut is not None else y


@register
class GSBottleneckC(GSBottleneck):
    """GSBottleneck with a cheap depth-wise 3x3 shortcut (groups = gcd(C_in, C_out)). Slim-neck.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). YAML args: [out_channels, kernel_size=3, stride=1, expansion=0.5,
    shortcut=True].
    """

    @staticmethod
    def make_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
        return Conv(in_channels, out_channels, 3, stride, None, math.gcd(in_channels, out_channels), act=False)


@register
class VoVGSCSP(CSPBlock):
    """VoV-GSCSP: a CSPBlock whose main branch is ``num_repeats`` GSBottlenecks. Slim-neck.

    (B, C_in, H, W) -> (B, C_out, H, W). YAML args: [out_channels, shortcut=True, groups=1, expansion=0.5]; the
    parser inserts the depth-scaled repeat count. ``shortcut`` and ``groups`` go to every GSBottleneck (its
    shortcut branch and the groups of its first GSConv), as C3 passes them to its Bottlenecks.
    """

    upstream_names = {"cv1": "main_in", "cv2": "skip", "cv3": "fuse", "gsb": "blocks"}
    bottleneck = GSBottleneck


@register
class VoVGSCSPC(VoVGSCSP):
    """VoV-GSCSP built from GSBottleneckC blocks (cheaper shortcut). Slim-neck.

    (B, C_in, H, W) -> (B, C_out, H, W). YAML args: [out_channels, shortcut=True, groups=1, expansion=0.5].
    """

    bottleneck = GSBottleneckC
