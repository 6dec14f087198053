"""Anchor-based detection heads: Detect (YOLOv5) and IDetect (YOLOv7, with implicit knowledge)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.registry import head_rule, register

DEFAULT_ANCHOR_BASE = 4.0  # anchor size, in strides, generated when a YAML gives only an anchor count


def anchors_from_config(anchors: list | int, strides: list[float]) -> torch.Tensor:
    """YAML anchors -> tensor (levels, anchors, 2) in pixels.

    ``anchors`` is either a list per level of flat [w0, h0, w1, h1, ...] pixel sizes, or an integer count per
    level; then a geometric series of square-ish anchors is generated for AutoAnchor to refine from the data.
    """
    if isinstance(anchors, int):
        sizes = [[stride * DEFAULT_ANCHOR_BASE * 2 ** (j / anchors) for j in range(anchors)] for stride in strides]
        return torch.tensor([[[s, s] for s in level] for level in sizes], dtype=torch.float32)
    if len(anchors) != len(strides):
        raise ValueError(f"{len(anchors)} anchor levels for {len(strides)} inputs")
    lengths = {len(level) for level in anchors}
    if len(lengths) != 1 or lengths.pop() % 2:
        raise ValueError("every anchor level needs the same, even number of values (w, h pairs)")
    return torch.tensor(anchors, dtype=torch.float32).view(len(strides), -1, 2)


@register
class Detect(nn.Module):
    """Anchor-based YOLO head: a 1x1 conv per level predicting (x, y, w, h, obj, classes) for each anchor.

    Train mode: list of (B, A, H_i, W_i, 5 + nc) raw logits. Eval mode: (decoded (B, sum A*H_i*W_i, 5 + nc), raw)
    with boxes as (cx, cy, w, h) input pixels and sigmoid scores; xy = (2 sigmoid - 0.5 + grid) * stride,
    wh = (2 sigmoid)^2 * anchor. YAML args: [num_classes, anchors]; the parser appends the input channels and strides.
    """

    channel_rule = staticmethod(head_rule)
    upstream_names = {"m": "outputs"}
    valid_strides = ((8, 16, 32), (8, 16, 32, 64))

    def __init__(self, num_classes: int, anchors: list | int, in_channels: list[int], strides: list[float]):
        super().__init__()
        if tuple(strides) not in self.valid_strides:
            raise ValueError(f"head inputs are at strides {list(strides)}; expected one of "
                             f"{' / '.join(str(list(s)) for s in self.valid_strides)}")
        self.num_classes = int(num_classes)
        self.num_outputs = self.num_classes + 5
        anchors_px = anchors_from_config(anchors, strides)
        self.num_levels, self.num_anchors = anchors_px.shape[:2]
        self.anchors_generated = isinstance(anchors, int)
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32))
        self.register_buffer("anchors", anchors_px / self.stride.view(-1, 1, 1))  # grid units
        self.outputs = nn.ModuleList(nn.Conv2d(c, self.num_outputs * self.num_anchors, 1) for c in in_channels)
        self.reset_grids()
        self.initialize_biases()

    @torch.no_grad()
    def initialize_biases(self, class_frequency: torch.Tensor | None = None) -> None:
        """Objectness prior of ~8 objects per 640x640 image; class prior 0.6/(nc - 0.99) (or the class frequencies)."""
        # Tensor arithmetic (in float64, as math.log would be) rather than .tolist(): the parser first builds each
        # layer on the meta device to check its size, where tensors have no values to read.
        for conv, stride in zip(self.output_convs(), self.stride.double()):
            bias = conv.bias.view(self.num_anchors, -1)
            bias[:, 4] += torch.log(8 / (640 / stride) ** 2)
            if class_frequency is None:
                bias[:, 5:] += math.log(0.6 / (self.num_classes - 0.99))
            else:
                bias[:, 5:] += torch.log(class_frequency / class_frequency.sum())

    def output_convs(self) -> list[nn.Conv2d]:
        return list(self.outputs)

    def level_logits(self, level: int, x: torch.Tensor) -> torch.Tensor:
        return self.outputs[level](x)

    def forward(self, inputs: list[torch.Tensor]):
        raw = []
        for level, x in enumerate(inputs):
            y = self.level_logits(level, x)
            batch, _, height, width = y.shape
            raw.append(y.view(batch, self.num_anchors, self.num_outputs, height, width).permute(0, 1, 3, 4, 2)
                       .contiguous())
        if self.training:
            return raw
        return self.decode(raw), raw

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw per-level logits -> (B, N, 5 + nc) boxes in input pixels with sigmoid scores."""
        decoded = []
        for level, y in enumerate(raw):
            batch, _, height, width, _ = y.shape
            grid, anchor_grid = self._grid(level, height, width, y.device, y.dtype)
            y = y.sigmoid()
            xy = (y[..., :2] * 2 - 0.5 + grid) * self.stride[level]
            wh = (y[..., 2:4] * 2) ** 2 * anchor_grid
            decoded.append(torch.cat((xy, wh, y[..., 4:]), -1).view(batch, -1, self.num_outputs))
        return torch.cat(decoded, 1)

    def reset_grids(self) -> None:
        """Forget the cached decode grids (one per level, for the last input size seen). Tracing for export calls
        this first, so a grid from an earlier eager run is not baked into the graph as a constant."""
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid(self, level: int, height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (level, height, width, device, dtype, self.anchors.data_ptr(), self.anchors._version)
        if key not in self._grids:
            ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                    torch.arange(width, device=device, dtype=dtype), indexing="ij")
            grid = torch.stack((xs, ys), 2).view(1, 1, height, width, 2)
            anchor_grid = (self.anchors[level] * self.stride[level]).to(dtype).view(1, self.num_anchors, 1, 1, 2)
            self._grids = {k: v for k, v in self._grids.items() if k[0] != level}
            self._grids[key] = (grid, anchor_grid)
        return self._grids[key]

    def anchors_pixels(self) -> torch.Tensor:
        """Anchors in input pixels, (levels, anchors, 2)."""
        return self.anchors * self.stride.view(-1, 1, 1)


class ImplicitAdd(nn.Module):
    """A learned per-channel offset added to the input (YOLOv7 ImplicitA, init N(0, 0.02))."""

    upstream_names = {"implicit": "implicit"}
    no_weight_decay = True  # YOLOv7 trains the implicit parameters without weight decay

    def __init__(self, channels: int):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1).normal_(0.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.implicit


class ImplicitMultiply(nn.Module):
    """A learned per-channel scale applied to the input (YOLOv7 ImplicitM, init N(1, 0.02))."""

    no_weight_decay = True

    def __init__(self, channels: int):
        super().__init__()
        self.implicit = nn.Parameter(torch.empty(1, channels, 1, 1).normal_(1.0, 0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.implicit


@register
class IDetect(Detect):
    """Detect with YOLOv7's implicit knowledge: out = M * conv(x + A) per level; ``fuse()`` merges A and M
    into the conv for deployment. YOLOv7.

    Same shapes and YAML args as Detect.
    """

    upstream_names = {"m": "outputs", "ia": "implicit_add", "im": "implicit_mul"}

    def __init__(self, num_classes: int, anchors: list | int, in_channels: list[int], strides: list[float]):
        super().__init__(num_classes, anchors, in_channels, strides)
        self.implicit_add = nn.ModuleList(ImplicitAdd(c) for c in in_channels)
        self.implicit_mul = nn.ModuleList(ImplicitMultiply(self.num_outputs * self.num_anchors) for _ in in_channels)
        self.implicit_folded = False

    def level_logits(self, level: int, x: torch.Tensor) -> torch.Tensor:
        if self.implicit_folded:
            return self.outputs[level](x)
        return self.implicit_mul[level](self.outputs[level](self.implicit_add[level](x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """The ``fuse()`` contract: conv(x + a) * m == conv'(x) with W' = m W and b' = m (b + W a)."""
        if self.implicit_folded:
            return
        for conv, add, mul in zip(self.outputs, self.implicit_add, self.implicit_mul):
            weight = conv.weight[:, :, 0, 0]
            conv.bias.add_(weight @ add.implicit.view(-1))
            scale = mul.implicit.view(-1)
            conv.bias.mul_(scale)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
        del self.implicit_add, self.implicit_mul
        self.implicit_folded = True
