"""YOLOv7 building blocks: MP, SP, SPPCSPC and RepConv (Wang et al., arXiv 2207.02696)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.modules.activation import make_activation
from models.modules.conv import Conv, fold_batchnorm, same_padding
from models.registry import passthrough_rule, register


@register
class MP(nn.Module):
    """Max-pool with kernel = stride = ``kernel_size``. YOLOv7.

    (B, C, H, W) -> (B, C, H/k, W/k). YAML args: [kernel_size=2].
    """

    channel_transparent = True

    channel_rule = staticmethod(passthrough_rule)

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size, kernel_size)

    @classmethod
    def output_stride(cls, bound: dict) -> int:
        return bound["kernel_size"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


@register
class SP(nn.Module):
    """Max-pool with "same" padding. YOLOv7 (the tiny SPP).

    (B, C, H, W) -> (B, C, H/s, W/s). YAML args: [kernel_size=3, stride=1].
    """

    channel_transparent = True

    channel_rule = staticmethod(passthrough_rule)

    def __init__(self, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size, stride, kernel_size // 2)

    @classmethod
    def output_stride(cls, bound: dict) -> int:
        return bound["stride"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


@register
class SPPCSPC(nn.Module):
    """CSP spatial pyramid pooling. YOLOv7.

    Branch 1: 1x1 -> 3x3 -> 1x1, concatenated with its max-pools, -> 1x1 -> 3x3; branch 2: 1x1; a 1x1 fuses both.
    Hidden width = 2 * C_out * expansion. (B, C_in, H, W) -> (B, C_out, H, W).
    YAML args: [out_channels, expansion=0.5, kernel_sizes=(5, 9, 13)].
    """

    upstream_names = {"cv1": "branch_in", "cv2": "skip", "cv3": "branch_3x3", "cv4": "branch_1x1",
                      "m": "pools", "cv5": "pool_fuse", "cv6": "pool_3x3", "cv7": "fuse"}

    def __init__(self, in_channels: int, out_channels: int, expansion: float = 0.5,
                 kernel_sizes: tuple[int, ...] | list[int] = (5, 9, 13)):
        super().__init__()
        hidden_channels = int(2 * out_channels * expansion)
        self.branch_in = Conv(in_channels, hidden_channels, 1, 1)
        self.skip = Conv(in_channels, hidden_channels, 1, 1)
        self.branch_3x3 = Conv(hidden_channels, hidden_channels, 3, 1)
        self.branch_1x1 = Conv(hidden_channels, hidden_channels, 1, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernel_sizes)
        self.pool_fuse = Conv((len(kernel_sizes) + 1) * hidden_channels, hidden_channels, 1, 1)
        self.pool_3x3 = Conv(hidden_channels, hidden_channels, 3, 1)
        self.fuse = Conv(2 * hidden_channels, out_channels, 1, 1)

    def input_convs(self) -> list[nn.Module]:
        return [self.branch_in, self.skip]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.branch_1x1(self.branch_3x3(self.branch_in(x)))
        pooled = self.pool_3x3(self.pool_fuse(torch.cat([branch] + [pool(branch) for pool in self.pools], 1)))
        return self.fuse(torch.cat((pooled, self.skip(x)), 1))


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
             groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(out_channels))


@register
class RepConv(nn.Module):
    """Re-parameterisable conv: kxk conv-BN + 1x1 conv-BN (+ identity BN when shapes allow), summed, activated.
    After ``fuse()`` it is one kxk conv with bias. RepVGG / YOLOv7.

    (B, C_in, H, W) -> (B, C_out, H/s, W/s). YAML args: [out_channels, kernel_size=3, stride=1, padding=None,
    groups=1, act=True].
    """

    upstream_names = {"rbr_dense": "dense", "rbr_1x1": "pointwise", "rbr_identity": "identity",
                      "rbr_reparam": "fused"}

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, groups: int = 1, act: bool | nn.Module = True):
        super().__init__()
        if kernel_size != 3:
            raise ValueError(f"RepConv supports kernel_size 3 (a 1x1 branch is folded into its centre), got {kernel_size}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.padding = kernel_size, stride, same_padding(kernel_size, padding)
        self.act = make_activation(act)
        self.identity = nn.BatchNorm2d(in_channels) if in_channels == out_channels and stride == 1 else None
        self.dense = _conv_bn(in_channels, out_channels, kernel_size, stride, self.padding, groups)
        self.pointwise = _conv_bn(in_channels, out_channels, 1, stride, self.padding - kernel_size // 2, groups)
        self.fused: nn.Conv2d | None = None

    @classmethod
    def output_stride(cls, bound: dict) -> int:
        return bound["stride"]

    def input_convs(self) -> list[nn.Module]:
        return [self]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    @torch.no_grad()
    def fuse(self) -> None:
        """The ``fuse()`` contract: replace the branches by one equivalent kxk conv with bias (uses the BN running
        statistics)."""
        if self.fused is not None:
            return
        weight, bias = fold_batchnorm(self.dense[0].weight, None, self.dense[1])
        weight_1x1, bias_1x1 = fold_batchnorm(self.pointwise[0].weight, None, self.pointwise[1])
        centre = self.kernel_size // 2
        weight = weight.clone()
        weight[:, :, centre, centre] += weight_1x1[:, :, 0, 0]
        bias = bias + bias_1x1
        if self.identity is not None:
            per_group = self.in_channels // self.groups
            eye = torch.zeros_like(weight)
            for channel in range(self.in_channels):
                eye[channel, channel % per_group, centre, centre] = 1.0
            weight_id, bias_id = fold_batchnorm(eye, None, self.identity)
            weight, bias = weight + weight_id, bias + bias_id
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         groups=self.groups, bias=True).to(weight.device, weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.fused = conv
        del self.dense, self.pointwise, self.identity
        self.identity = None
