"""Test-time augmentation (YOLOv5's recipe): the image as is, flipped left-right at 0.83 scale, and at 0.67 scale,
the predictions merged before NMS."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.data.augment import PAD_COLOR

TTA_SCALES = (1.0, 0.83, 0.67)
TTA_FLIPS = (False, True, False)
_TTA_PAD_VALUE = PAD_COLOR[0] / 255  # the letterbox gray, so padded borders look like any other padding


def scale_image(images: torch.Tensor, ratio: float, grid: int) -> torch.Tensor:
    """Resize (B, 3, H, W) by ``ratio`` and pad right/bottom with the letterbox gray to a ``grid`` multiple.

    Padding only at the right and bottom keeps pixel coordinates of the scaled image = original x ``ratio``.
    """
    if ratio == 1.0:
        return images
    height, width = images.shape[-2:]
    new_height, new_width = round(height * ratio), round(width * ratio)
    resized = F.interpolate(images, size=(new_height, new_width), mode="bilinear", align_corners=False)
    padded_height, padded_width = math.ceil(new_height / grid) * grid, math.ceil(new_width / grid) * grid
    return F.pad(resized, (0, padded_width - new_width, 0, padded_height - new_height), value=_TTA_PAD_VALUE)


def augmented_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: predictions of the original, a flipped 0.83x and a 0.67x copy, merged for NMS.

    ``model`` is a DetectionModel in eval mode (it returns (decoded, raw)). Boxes of the scaled passes are
    mapped back to the input's pixels. As in YOLOv5, the full-size pass drops its coarsest level (large
    objects are better seen at the smaller scales) and the smallest pass drops its finest level.
    """
    width = images.shape[-1]
    grid = model.size_multiple
    merged = []
    last = len(TTA_SCALES) - 1
    for index, (ratio, flip) in enumerate(zip(TTA_SCALES, TTA_FLIPS)):
        view = images.flip(-1) if flip else images
        decoded, raw = model(scale_image(view, ratio, grid))
        decoded = decoded.clone()
        decoded[..., :4] /= ratio
        if flip:
            decoded[..., 0] = width - decoded[..., 0]
        level_sizes = [level.shape[1] * level.shape[2] * level.shape[3] for level in raw]
        if index == 0 and len(level_sizes) > 1:
            decoded = decoded[:, :decoded.shape[1] - level_sizes[-1]]
        elif index == last and len(level_sizes) > 1:
            decoded = decoded[:, level_sizes[0]:]
        merged.append(decoded)
    return torch.cat(merged, 1)


def tta_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(images: torch.Tensor) -> torch.Tensor:
        return augmented_forward(model, images)

    return forward
