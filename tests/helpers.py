"""Test helpers shared by several test files (import as ``from helpers import ...``; tests/conftest.py's folder is
on sys.path): the repository root and config list, models with non-trivial BatchNorm statistics, a confident
untrained checkpoint, a stand-in detection head, the comparison of two backends' detections, the settings of a
tiny training run, and random per-image detection matches for the comparison statistics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.train.trainer import TrainOptions
from models.parse import CFG_DIR
from models.yolo import DetectionModel

REPO = Path(__file__).resolve().parents[1]  # the repository root
CONFIGS = sorted(p.name for p in CFG_DIR.glob("*.yaml"))
LARGE = ("yolov5m", "yolov5l", "yolov5x", "yolov7.yaml", "yolov7-slimneck", "yolov7-gsconv")  # seconds each on 2 cores
# Every config, the large ones marked slow.
CONFIG_CASES = [pytest.param(c, marks=pytest.mark.slow) if c.startswith(LARGE) else c for c in CONFIGS]

# YOLOv5's P3-P5 anchors in pixels, and their strides.
DEFAULT_ANCHORS_PX = [
    [[10, 13], [16, 30], [33, 23]],
    [[30, 61], [62, 45], [59, 119]],
    [[116, 90], [156, 198], [373, 326]],
]
STRIDES = [8.0, 16.0, 32.0]


@torch.no_grad()
def randomize_batchnorm(module: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine values (uses the global torch seed), so a wrong fold
    or channel permutation changes the output. Returns ``module``."""
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):
            child.running_mean.uniform_(-0.5, 0.5)
            child.running_var.uniform_(0.5, 2.0)
            child.weight.uniform_(0.5, 1.5)
            child.bias.uniform_(-0.3, 0.3)
    return module


def randomized_model(cfg, num_classes: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> DetectionModel:
    """An eval DetectionModel built from ``cfg`` with :func:`randomize_batchnorm` statistics."""
    torch.manual_seed(seed)
    model = DetectionModel(cfg, num_classes=num_classes).to(dtype).eval()
    return randomize_batchnorm(model)


@torch.no_grad()
def confident_model(names: list[str], seed: int = 0) -> DetectionModel:
    """An untrained yolov5n whose objectness bias is pushed up by 6, so it detects something at low thresholds."""
    torch.manual_seed(seed)
    model = DetectionModel("yolov5n.yaml", num_classes=len(names), names=names)
    for conv in model.head.outputs:
        conv.bias.view(model.head.num_anchors, -1)[:, 4] += 6.0
    return model


class FakeHead(nn.Module):
    """The attributes of the Detect head that the loss and AutoAnchor read, with anchors stored in grid units."""

    def __init__(self, num_classes: int = 3, anchors_px=DEFAULT_ANCHORS_PX, strides=STRIDES):
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32))
        pixels = torch.tensor(anchors_px, dtype=torch.float32)
        self.register_buffer("anchors", pixels / self.stride.view(-1, 1, 1))
        self.num_levels, self.num_anchors = pixels.shape[:2]


def assert_detections_close(expected: np.ndarray, actual: np.ndarray, min_matched: float = 0.95) -> None:
    """Two backends' detections (n, 6) of one image: nearly all pair up with the same class, box (0.05 px) and
    score (1e-3); the few left are borderline ones whose threshold or NMS decision float rounding flipped."""
    expected, actual = np.asarray(expected).reshape(-1, 6), np.asarray(actual).reshape(-1, 6)
    assert abs(len(expected) - len(actual)) <= max(1, 0.05 * len(expected))
    if len(expected) == 0:
        return
    difference = np.abs(expected[:, None, :5] - actual[None, :, :5])
    same = (difference[..., :4].max(-1) < 0.05) & (difference[..., 4] < 1e-3) & \
        (expected[:, None, 5] == actual[None, :, 5])
    assert same.any(1).mean() >= min_matched


def train_options(data: Path, project: Path, **overrides) -> TrainOptions:
    """A tiny CPU training run (yolov5n, 2 epochs of batch 4 at 64 px, no plots or AutoAnchor) on ``data``, written to
    ``project/run``; keyword arguments override any setting."""
    base = dict(data=str(data), cfg="yolov5n.yaml", epochs=2, batch_size=4, imgsz=64, device="cpu", workers=0,
                project=str(project), name="run", seed=3, noplots=True, quiet=True, noautoanchor=True)
    base.update(overrides)
    return TrainOptions(**base)


def random_stats(rng: np.random.Generator, images: int = 40, classes: int = 3, quality: float = 0.5):
    """Per-image (tp, conf, pred class, label classes) with distinct confidences; higher quality = more hits."""
    stats = []
    for _ in range(images):
        labels = rng.integers(0, classes, rng.integers(0, 6))
        count = int(rng.integers(0, 8))
        conf = rng.random(count)
        hit = rng.random(count) < quality * conf  # confident detections are more often right
        tp = np.stack([hit & (rng.random(count) < 1 - 0.08 * j) for j in range(10)], 1)
        stats.append((tp, conf, rng.integers(0, classes, count), labels))
    return stats
