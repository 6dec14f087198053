"""For tests that need a trained model in about a minute: the recipe with augmentation off, so a yolov5n fits a few
dozen images (and is scored on those same images) in a couple of hundred optimizer steps."""
from __future__ import annotations

from pathlib import Path

import yaml

from engine.train.trainer import DEFAULT_HYP

AUGMENTATION_OFF = dict.fromkeys(("mosaic", "scale", "translate", "fliplr", "hsv_h", "hsv_s", "hsv_v"), 0.0)


def write_fitting_hyp(path: Path, **overrides: float) -> Path:
    """The default hyperparameters with every augmentation this recipe uses set to 0, plus ``overrides``."""
    path.write_text(yaml.safe_dump({**yaml.safe_load(DEFAULT_HYP.read_text()), **AUGMENTATION_OFF, **overrides}))
    return path
