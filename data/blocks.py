"""The main job's dataset: a few large filled shapes on smooth backgrounds, learnable in minutes on a CPU.

``compare.py``'s question ("does the slim neck help?") needs models that have learned something, and a 2-core CPU
trains a nano model for only a few thousand images in the time a demo may take. This set is made for that: three
classes (``CLASS_NAMES``: the rectangle, ellipse and triangle masks of ``data/shapes.py``), one to
``MAX_OBJECTS`` objects per image, each ``MIN_EXTENT`` to ``MAX_EXTENT`` of the image side across and never
overlapping another, in a colour that stands out from the blurred-noise background under it. Boxes are the
tight boxes of the drawn pixels. Still a detection task with several classes and varied box shapes (stretched
and rotated rectangles and ellipses), and still not trivial at mAP50-95: the boxes of small, rotated shapes must be
placed to the pixel. ``data/shapes.py`` (clutter, occlusion, six classes, 12-160 px) and ``data/photo_objects.py``
(small marks on photographs) are the harder sets.

Deterministic per image like every generated set (``data/synthetic.py``).
``python -m data.blocks --out DIR --train N --val M [--size S]`` writes the YOLO files and ``DIR/data.yaml``.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from data import shapes, synthetic

CLASS_NAMES = ("rectangle", "ellipse", "triangle")
MIN_EXTENT = 0.12  # object size as a fraction of the image side
MAX_EXTENT = 0.32
MAX_OBJECTS = 8
MIN_IMAGE_SIZE = 64
MIN_CONTRAST = 90.0  # Euclidean BGR distance between an object's colour and the mean background under it


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise: a few random colour cells, upsampled and blurred, plus faint fine noise (float32 BGR)."""
    cells = int(rng.integers(2, 6))
    coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    canvas = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    canvas = cv2.GaussianBlur(canvas, (0, 0), size / 16)
    return canvas + rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(0, 6)


def render(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (BGR uint8, ``image_size`` square), its class ids and its pixel boxes (exclusive x2/y2)."""
    canvas = _background(rng, image_size)
    occupied = np.zeros((image_size, image_size), bool)
    classes, boxes = [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        class_id = int(rng.integers(0, len(CLASS_NAMES)))
        extent = rng.uniform(MIN_EXTENT, MAX_EXTENT) * image_size
        mask = shapes.shape_mask(CLASS_NAMES[class_id], extent, rng) > 0
        ys, xs = np.nonzero(mask)
        mask = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]  # the tight box of the drawn pixels
        height, width = mask.shape
        if height >= image_size or width >= image_size:
            continue
        for _ in range(20):
            top, left = int(rng.integers(0, image_size - height + 1)), int(rng.integers(0, image_size - width + 1))
            # A margin of 2 px keeps neighbours apart, so every box holds exactly one object's pixels.
            if not occupied[max(top - 2, 0):top + height + 2, max(left - 2, 0):left + width + 2].any():
                break
        else:
            continue
        pixels = canvas[top:top + height, left:left + width]
        under = pixels[mask].mean(0)
        color = rng.uniform(0, 255, 3).astype(np.float32)
        for _ in range(20):
            if np.linalg.norm(color - under) >= MIN_CONTRAST:
                break
            color = rng.uniform(0, 255, 3).astype(np.float32)
        else:
            color = np.where(under > 127, 20.0, 235.0).astype(np.float32)
        pixels[mask] = color
        occupied[top:top + height, left:left + width] |= mask
        classes.append(class_id)
        boxes.append([left, top, left + width, top + height])
    canvas += (rng.random(canvas.shape, dtype=np.float32) - 0.5) * (math.sqrt(12) * rng.uniform(1.0, 5.0))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return image, np.array(classes, np.int64), np.array(boxes, np.float32).reshape(-1, 4)


def generate_dataset(out_dir: str | Path, num_train: int = 800, num_val: int = 200, image_size: int = 128,
                     seed: int = 0) -> Path:
    """Write the blocks dataset to ``out_dir`` (images/, labels/, data.yaml) and return ``out_dir``."""
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer of at least {MIN_IMAGE_SIZE}, got {image_size!r}")
    return synthetic.write_dataset(out_dir, render, CLASS_NAMES, num_train, num_val, image_size, seed, "blocks")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data.blocks --out DIR --train N --val M [--size S] [--seed K]``."""
    synthetic.main(generate_dataset, "Generate the blocks dataset (the main job's) in YOLO format.", argv, 800, 200,
                   128)


if __name__ == "__main__":
    main()
