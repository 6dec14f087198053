"""TensorBoard curves of a training run: event files in the run folder, as YOLOv5 writes them.

The ``tensorboard`` package is optional. ``open_tensorboard(save_dir, wanted)``: ``wanted=None`` logs when the
package is installed, ``True`` requires it (MissingDependencyError when absent), ``False`` turns it off.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from models.errors import MissingDependencyError

logger = logging.getLogger(__name__)


class TensorBoardLog:
    """Per-epoch scalars (the results.csv columns, step = epoch) and images (the first training batches)."""

    def __init__(self, save_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(save_dir))

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), epoch)
        self.writer.flush()  # a killed run keeps every finished epoch's curves

    def image(self, tag: str, bgr: np.ndarray, step: int = 0) -> None:
        """An (H, W, 3) BGR uint8 image, as engine.visualize draws them."""
        self.writer.add_image(tag, np.ascontiguousarray(bgr[..., ::-1]), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(save_dir: Path, wanted: bool | None) -> TensorBoardLog | None:
    """A TensorBoardLog for ``save_dir``, or None when off or (``wanted`` None) the package is not installed."""
    if wanted is False:
        return None
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
    except ImportError:
        if wanted:
            raise MissingDependencyError("--tensorboard needs the 'tensorboard' package: pip install tensorboard "
                                         "(or train with --no-tensorboard)") from None
        logger.info("TensorBoard: not installed, no event files (pip install tensorboard to get curves)")
        return None
    log = TensorBoardLog(save_dir)
    logger.info("TensorBoard: start with 'tensorboard --logdir %s', view at http://localhost:6006/", save_dir.parent)
    return log
