"""Optimizer with YOLOv5's three parameter groups, learning-rate schedules and warm-up."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from models.errors import UsageError

NOMINAL_BATCH_SIZE = 64
WARMUP_MIN_ITERATIONS = 100  # YOLOv5's floor; a hyp file may set its own (``warmup_min_iterations``, YOLOv7: 1000)


MAX_GRAD_NORM = 10.0  # YOLOv5 clips the gradient norm here; a hyp file may set ``max_grad_norm`` (0: no clipping)


def max_grad_norm(hyp: dict) -> float:
    """The gradient-norm clip of an optimizer step: ``max_grad_norm`` from the hyp (YOLOv5's 10 when absent; 0 turns
    clipping off, as in YOLOv7, returned as inf)."""
    value = hyp.get("max_grad_norm", MAX_GRAD_NORM)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise UsageError(f"hyp['max_grad_norm'] must be a non-negative number (0: no clipping), got {value!r}")
    return float(value) if value > 0 else math.inf


def warmup_iterations(hyp: dict, batches: int) -> int:
    """Length of the warm-up in iterations: ``warmup_epochs`` epochs, but at least the floor."""
    floor = hyp.get("warmup_min_iterations", WARMUP_MIN_ITERATIONS)
    if not isinstance(floor, int) or isinstance(floor, bool) or floor < 0:
        raise UsageError(f"hyp['warmup_min_iterations'] must be a non-negative integer, got {floor!r}")
    return max(round(hyp["warmup_epochs"] * batches), floor)


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937,
                    weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """Groups: 0 = biases (no decay), 1 = conv/linear weights (decay), 2 = normalisation weights and the
    parameters of modules that set ``no_weight_decay = True`` (YOLOv7's implicit offsets and scales; no decay).

    Decaying BatchNorm scales or biases only shrinks them towards zero for no regularisation benefit.
    """
    biases, weights, norm_weights = [], [], []
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            if parameter_name == "bias":
                biases.append(parameter)
            elif isinstance(module, norm_types) or getattr(module, "no_weight_decay", False):
                norm_weights.append(parameter)
            else:
                weights.append(parameter)
    if name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise UsageError(f"unknown optimizer {name!r}; choose SGD, Adam or AdamW")
    optimizer.add_param_group({"params": weights, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    return optimizer


def lr_lambda(epochs: int, lrf: float, cosine: bool = False):
    """Multiplier of lr0 at a (fractional) epoch: linear from 1 to lrf, or a cosine from 1 to lrf."""
    if cosine:
        return lambda epoch: ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda epoch: (1 - epoch / epochs) * (1.0 - lrf) + lrf


def build_scheduler(optimizer: torch.optim.Optimizer, schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch scheduler stepped once at the end of every epoch, with YOLOv5's timing.

    YOLOv5 steps its scheduler one epoch late (its first step repeats epoch 0's value), so after warm-up
    epoch ``e`` trains at ``lr0 * schedule(e - 1)`` and the last epoch at ``schedule(epochs - 2)``, not
    ``schedule(epochs - 1)``. The difference is largest where the line approaches lrf: in a 60-epoch run
    the last epoch's lr is 1.6x higher. We keep that timing so runs compare with YOLOv5's (a 60-epoch
    parity run showed the engines' logged lr one epoch apart). Warm-up still targets ``schedule(epoch)``.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda epoch: schedule(max(epoch - 1, 0)))


def apply_warmup(optimizer: torch.optim.Optimizer, iteration: int, warmup_iterations: int, epoch: int,
                 schedule, hyp: dict) -> None:
    """Warm-up of YOLOv5: bias lr falls from warmup_bias_lr to the scheduled lr, other groups rise from 0;
    SGD momentum rises from warmup_momentum to momentum."""
    points = [0, warmup_iterations]
    for index, group in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if index == 0 else 0.0
        group["lr"] = float(np.interp(iteration, points, [start, group["initial_lr"] * schedule(epoch)]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(iteration, points, [hyp["warmup_momentum"], hyp["momentum"]]))
