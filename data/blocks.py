"""The main job's dataset: a few large upright shapes on smooth backgrounds, learnable in minutes on a CPU.

``compare.py``'s question ("does the slim neck help?") needs models that have learned something, and a 2-core CPU
trains a nano model on only some tens of thousands of images in the time a demo may take. This set is made for
that: three classes (``CLASS_NAMES``) of axis-aligned shapes (a filled rectangle, an elliptical ring inscribed in
its box, an isosceles triangle with its base on any side of its box), one to ``MAX_OBJECTS`` per image, each
``MIN_EXTENT`` to ``MAX_EXTENT`` of the image side long and ``MIN_ASPECT`` to 1 as wide, their boxes never
overlapping, in a colour that stands out from the blurred colour noise under it. Boxes are the tight boxes of
the drawn pixels. It stays a detection task with several classes and boxes of varied size and aspect, and far
from saturated at mAP50-95 after a short schedule. ``data/shapes.py`` (clutter, occlusion, six classes, 12-160 px)
and ``data/photo_objects.py`` (small marks on photographs) are the harder sets.

Deterministic per image like every generated set (``data/synthetic.py``).
``python -m data.blocks --out DIR --train N --val M [--size S]`` writes the YOLO files and ``DIR/data.yaml``.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from data import synthetic

CLASS_NAMES = ("rectangle", "ring", "triangle")
MIN_EXTENT = 0.2  # object size as a fraction of the image side
MAX_EXTENT = 0.45
MIN_ASPECT = 0.5  # short side / long side
MAX_OBJECTS = 8
RING_HOLE = (0.45, 0.6)  # a ring's hole, as a fraction of its outer size
_SUBPIXEL_BITS = 2  # OpenCV drawing "shift": coordinates carry 2 fractional bits
_SUBPIXEL = 1 << _SUBPIXEL_BITS
MIN_IMAGE_SIZE = 64
MIN_CONTRAST = 90.0  # Euclidean BGR distance between an object's colour and the mean background under it


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise: a few random colour cells, upsampled and blurred, plus faint fine noise (float32 BGR)."""
    cells = int(rng.integers(2, 6))
    coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    canvas = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    canvas = cv2.GaussianBlur(canvas, (0, 0), size / 16)
    return canvas + rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(0, 6)


def block_mask(class_id: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """The boolean mask of one upright shape filling a ``height`` x ``width`` box: the box itself (rectangle), the
    ring between its inscribed ellipse and a smaller concentric one, or an isosceles triangle with its base on one of
    the box's sides (all four occur)."""
    mask = np.zeros((height, width), np.uint8)
    name = CLASS_NAMES[class_id]
    if name == "rectangle":
        mask[:] = 1
    elif name == "ring":
        center = ((width - 1) * _SUBPIXEL // 2, (height - 1) * _SUBPIXEL // 2)
        axes = ((width - 1) * _SUBPIXEL // 2, (height - 1) * _SUBPIXEL // 2)
        hole = rng.uniform(*RING_HOLE)
        cv2.ellipse(mask, center, axes, 0, 0, 360, 1, -1, cv2.LINE_8, _SUBPIXEL_BITS)
        cv2.ellipse(mask, center, tuple(int(axis * hole) for axis in axes), 0, 0, 360, 0, -1, cv2.LINE_8,
                    _SUBPIXEL_BITS)
    else:
        corners = np.array([[0, height - 1], [width - 1, height - 1], [(width - 1) / 2, 0]])  # base at the bottom
        side = int(rng.integers(0, 4))
        if side == 1:  # base at the top
            corners[:, 1] = height - 1 - corners[:, 1]
        elif side >= 2:  # base on the left or right side: the triangle of the transposed box
            corners = np.array([[0, 0], [0, height - 1], [width - 1, (height - 1) / 2]])
            if side == 3:
                corners[:, 0] = width - 1 - corners[:, 0]
        cv2.fillPoly(mask, [(corners * _SUBPIXEL).round().astype(np.int32)], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return mask > 0


def render(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (BGR uint8, ``image_size`` square), its class ids and its pixel boxes (exclusive x2/y2)."""
    image, classes, boxes, _ = render_with_map(rng, image_size)
    return image, classes, boxes


def render_with_map(rng: np.random.Generator,
                    image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``render``'s image, classes and boxes, and the instance map (``k + 1`` on object ``k``'s pixels, else 0)."""
    canvas = _background(rng, image_size)
    occupied = np.zeros((image_size, image_size), np.int16)
    boxed = np.zeros((image_size, image_size), bool)
    classes, boxes = [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        class_id = int(rng.integers(0, len(CLASS_NAMES)))
        long_side = rng.uniform(MIN_EXTENT, MAX_EXTENT) * image_size
        short_side = long_side * rng.uniform(MIN_ASPECT, 1.0)
        width, height = (max(int(round(side)), 4) for side in
                         ((long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)))
        mask = block_mask(class_id, width, height, rng)
        ys, xs = np.nonzero(mask)
        mask = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]  # the tight box of the drawn pixels
        height, width = mask.shape
        for _ in range(20):
            top, left = int(rng.integers(0, image_size - height + 1)), int(rng.integers(0, image_size - width + 1))
            # Boxes never overlap, and a margin of 2 px keeps them apart: every box holds one object's pixels.
            if not boxed[max(top - 2, 0):top + height + 2, max(left - 2, 0):left + width + 2].any():
                break
        else:
            continue
        pixels = canvas[top:top + height, left:left + width]
        under = pixels[mask].mean(0)
        pixels[mask] = synthetic.contrasting_color(rng, under, MIN_CONTRAST, tries=20, dark=20.0, bright=235.0)
        classes.append(class_id)
        occupied[top:top + height, left:left + width][mask] = len(classes)
        boxed[top:top + height, left:left + width] = True
        boxes.append([left, top, left + width, top + height])
    canvas += (rng.random(canvas.shape, dtype=np.float32) - 0.5) * (math.sqrt(12) * rng.uniform(1.0, 5.0))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return image, np.array(classes, np.int64), np.array(boxes, np.float32).reshape(-1, 4), occupied


def generate_dataset(out_dir: str | Path, num_train: int = 800, num_val: int = 200, image_size: int = 96,
                     seed: int = 0) -> Path:
    """Write the blocks dataset to ``out_dir`` (images/, labels/, data.yaml) and return ``out_dir``."""
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer of at least {MIN_IMAGE_SIZE}, got {image_size!r}")
    return synthetic.write_dataset(out_dir, render, CLASS_NAMES, num_train, num_val, image_size, seed, "blocks")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data.blocks --out DIR --train N --val M [--size S] [--seed K]``."""
    synthetic.main(generate_dataset, "Generate the blocks dataset (the main job's) in YOLO format.", argv, 800, 200,
                   96)


if __name__ == "__main__":
    main()
