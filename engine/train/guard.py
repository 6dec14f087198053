"""Catching non-finite training steps: skip them, say which batch and images, stop when training has diverged."""
from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger(__name__)

MAX_NON_FINITE_STEPS = 5  # per epoch; more means the run has diverged, not that one batch was unlucky
_FILES_SHOWN = 4


class NonFiniteTrainingError(RuntimeError):
    """Training stopped: too many optimizer steps in one epoch had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Decides, per optimizer step, whether the gathered gradients may be applied.

    The trainer reports each batch's loss (``add_batch``) and, at the step, the gradient norm after unscaling
    (``step_is_finite``). A step is skipped when a loss of its batches or its gradient norm is not finite: a
    warning names the epoch, the batches and their image files, and after ``limit`` skipped steps in one epoch
    training stops with ``NonFiniteTrainingError``. One mechanism for fp32, bf16 and fp16 AMP: with a loss
    scaler whose scale is above 1, an infinite gradient with finite losses is the scale overflowing fp16, not the
    model diverging; that step is skipped too (the scaler's ``update`` lowers the scale) but not counted.
    """

    def __init__(self, limit: int = MAX_NON_FINITE_STEPS):
        self.limit = limit
        self.epoch = 0
        self.skipped = 0  # counted skips in the current epoch
        self.overflows = 0  # loss-scale overflows in the current epoch
        self._batches: list[tuple[int, tuple, bool]] = []  # (batch index, image files, loss finite) since the last step

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.skipped, self.overflows = epoch, 0, 0
        self._batches = []

    def add_batch(self, batch: int, paths: tuple, loss: torch.Tensor) -> None:
        self._batches.append((batch, tuple(paths), bool(torch.isfinite(loss.detach()).all())))

    def step_is_finite(self, gradient_norm: torch.Tensor | float, scaler: torch.amp.GradScaler | None = None) -> bool:
        """True when the step over the batches added since the last call may be applied."""
        batches, self._batches = self._batches, []
        losses_finite = all(finite for _, _, finite in batches)
        gradient_finite = math.isfinite(float(gradient_norm))
        if losses_finite and gradient_finite:
            return True
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        if losses_finite and scale > 1.0:
            self.overflows += 1
            logger.debug("epoch %d: gradient overflow at loss scale %g; step skipped, scale lowered",
                         self.epoch + 1, scale)
            return False
        self.skipped += 1
        bad = [(index, paths) for index, paths, finite in batches if not finite] or [(i, p) for i, p, _ in batches]
        what = "loss" if not losses_finite else "gradient norm"
        files = [path for _, paths in bad for path in paths]
        shown = ", ".join(files[:_FILES_SHOWN]) + (f" and {len(files) - _FILES_SHOWN} more" if len(files) > _FILES_SHOWN
                                                   else "")
        logger.warning("epoch %d, batch %s: %s is not finite; optimizer step skipped (%d of at most %d this epoch). "
                       "Images: %s", self.epoch + 1, ", ".join(str(index) for index, _ in bad), what, self.skipped,
                       self.limit, shown)
        if self.skipped >= self.limit:
            raise NonFiniteTrainingError(
                f"training diverged: {self.skipped} optimizer steps in epoch {self.epoch + 1} had a non-finite "
                f"{what} (last: batch {bad[-1][0]}, images {shown}). The weights of the last completed epoch are in "
                "last.pt; try a lower lr0, a smaller --batch-size or check those images and labels")
        return False
