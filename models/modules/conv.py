"""Convolution building blocks: Conv (conv-BN-act), DWConv, Focus, Concat."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.modules.activation import is_activation, make_activation
from models.registry import concat_rule, register


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of a conv followed by ``bn`` in eval mode, as a single conv."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    return weight * scale.reshape(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias


def same_padding(kernel_size: int, padding: int | None = None, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 ("same" padding) unless given explicitly."""
    if padding is not None:
        return padding
    effective = dilation * (kernel_size - 1) + 1
    return effective // 2


@register
class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation. YOLOv5.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). YAML args: [out_channels, kernel_size=1, stride=1, padding=None,
    groups=1, dilation=1, act=True].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int | None = None, groups: int = 1, dilation: int = 1, act: bool | nn.Module = True):
        super().__init__()
        if not isinstance(dilation, int) or isinstance(dilation, bool) or is_activation(dilation):
            # YOLOv7 YAMLs pass act as the 6th positional argument, where YOLOv5's Conv has dilation.
            raise TypeError(f"Conv dilation must be an integer, got {dilation!r} "
                            "(set the activation with the YAML 'activation:' key or the act argument)")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              same_padding(kernel_size, padding, dilation), groups=groups, dilation=dilation,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(act)

    @classmethod
    def output_stride(cls, bound: dict) -> int:
        return bound["stride"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def input_convs(self) -> list[nn.Module]:
        return [self]

    @torch.no_grad()
    def fuse(self) -> None:
        """The ``fuse()`` contract (models/registry.py): fold the BatchNorm into the conv (eval-mode statistics); the
        BN becomes an Identity."""
        if isinstance(self.bn, nn.Identity):
            return
        weight, bias = fold_batchnorm(self.conv.weight, self.conv.bias, self.bn)
        fused = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size, self.conv.stride,
                          self.conv.padding, self.conv.dilation, self.conv.groups, bias=True).to(weight.device, weight.dtype)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv, self.bn = fused, nn.Identity()


@register
class DWConv(Conv):
    """Depth-wise Conv: groups = gcd(in, out). YOLOv5.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). YAML args: [out_channels, kernel_size=1, stride=1, dilation=1, act=True].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 dilation: int = 1, act: bool | nn.Module = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, None,
                         math.gcd(in_channels, out_channels), dilation, act)


@register
class Focus(nn.Module):
    """Space-to-depth (2x2 pixels into channels) followed by a Conv. YOLOv5 v1-v5 stem.

    (B, C_in, H, W) -> (B, C_out, H/(2s), W/(2s)). YAML args: [out_channels, kernel_size=1, stride=1, padding=None,
    groups=1, act=True].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int | None = None, groups: int = 1, act: bool | nn.Module = True):
        super().__init__()
        self.conv = Conv(in_channels * 4, out_channels, kernel_size, stride, padding, groups, act=act)

    @classmethod
    def output_stride(cls, bound: dict) -> int:
        return 2 * bound["stride"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
        return self.conv(torch.cat(patches, 1))


@register
class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels by default).

    [(B, C_i, H, W)] -> (B, sum C_i, H, W). YAML args: [dimension=1].
    """

    channel_transparent = True

    channel_rule = staticmethod(concat_rule)

    def __init__(self, dimension: int = 1):
        super().__init__()
        if dimension != 1:
            raise ValueError(f"Concat along dimension {dimension} is not supported; models concatenate channels (1)")
        self.dimension = dimension

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(inputs, self.dimension)
