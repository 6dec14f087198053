"""Exponential moving average of model weights (YOLOv5 recipe): validation and checkpoints use the average."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from engine.torch_utils import unwrap


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * model`` for floating-point parameters and buffers, with the decay ramped up
    as ``d = decay * (1 - exp(-updates / tau))`` so early, fast-changing weights are not over-averaged."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(unwrap(model)).eval()
        for parameter in self.ema.parameters():
            parameter.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay()
        source = unwrap(model).state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(source[name].detach(), alpha=1 - decay)
