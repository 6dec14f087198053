"""A second generated dataset, unlike the built-in shapes: small pen-drawn marks on real photographs.

The engine must not be checked only on the data it was tuned on (the first real-photo dataset it met made it
diverge in epoch 1). This one differs from ``data/shapes.py`` in every way that matters to a detector:

- backgrounds are random crops of real photographs (the ones bundled with scikit-image, and matplotlib's
  sample photograph), flipped, rescaled and with brightness/contrast jitter, so the clutter is natural
  texture, edges and faces rather than drawn lines;
- objects are ten classes of thin, wobbly pen strokes (``CLASS_NAMES``), not filled shapes: their pixels are
  mostly background, and the class lives in the stroke layout;
- objects are small (``MIN_OBJECT_SIZE`` to ``MAX_OBJECT_SIZE`` px at 320) and many per image (up to
  ``MAX_OBJECTS``), never overlapping, so every box is the tight box of the stroke's drawn pixels.

Deterministic per image like every generated set (``data/synthetic.py``), given the same photographs: the
photo list is fixed and sorted, and a missing photograph is an error that says what to install.
``python -m data.photo_objects --out DIR --train N --val M`` writes the YOLO files and ``DIR/data.yaml``.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from data import synthetic

CLASS_NAMES = ("arrow", "check", "spiral", "zigzag", "smiley", "hash", "bolt", "bullseye", "heart", "house")
MIN_OBJECT_SIZE = 10
MAX_OBJECT_SIZE = 48
MAX_OBJECTS = 14
MIN_IMAGE_SIZE = 128

# Photographs (not drawings, charts or microscope slides of flat colour) bundled with the packages.
SKIMAGE_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
                  "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                  "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)


def _skimage_data_dir() -> Path | None:
    # Only the package's location is needed, not the package: importing skimage would pull its dependencies.
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
    """The background photographs as BGR uint8 arrays, in a fixed order (loaded once per process)."""
    import matplotlib

    skimage_dir = _skimage_data_dir()
    if skimage_dir is None:
        raise FileNotFoundError("data/photo_objects.py draws on the photographs bundled with scikit-image; "
                                "install it: pip install scikit-image (it is in requirements-dev.txt)")
    paths = [skimage_dir / name for name in SKIMAGE_PHOTOS]
    paths += [Path(matplotlib.get_data_path()) / "sample_data" / name for name in MATPLOTLIB_PHOTOS]
    photos = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if image is None:
            raise FileNotFoundError(f"data/photo_objects.py: background photograph {path} is missing or unreadable "
                                    "(reinstall scikit-image / matplotlib)")
        photos.append(image)
    return tuple(photos)


def _stroke_paths(class_id: int, rng: np.random.Generator) -> list[tuple[np.ndarray, bool]]:
    """The pen strokes of one mark in a unit frame ([-1, 1] on both axes): (points (N, 2), closed) each."""
    name = CLASS_NAMES[class_id]

    def arc(radius: float, start: float, stop: float, count: int = 24, centre=(0.0, 0.0)) -> np.ndarray:
        angles = np.linspace(start, stop, count)
        return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)

    line = lambda *points: np.array(points, np.float64)  # noqa: E731
    if name == "arrow":
        head = rng.uniform(0.35, 0.55)
        return [(line((-1, 0), (1, 0)), False), (line((1 - head, -head), (1, 0), (1 - head, head)), False)]
    if name == "check":
        return [(line((-1, 0), (-0.35, 0.75), (1, -0.85)), False)]
    if name == "spiral":
        turns = rng.uniform(1.6, 2.4)
        t = np.linspace(0.05, 1.0, 60)
        angles = t * turns * 2 * math.pi
        return [(np.stack([t * np.cos(angles), t * np.sin(angles)], 1), False)]
    if name == "zigzag":
        teeth = int(rng.integers(3, 5))
        xs = np.linspace(-1, 1, 2 * teeth + 1)
        ys = np.where(np.arange(len(xs)) % 2 == 0, -0.45, 0.45)
        return [(np.stack([xs, ys], 1), False)]
    if name == "smiley":
        return [(arc(1.0, 0, 2 * math.pi, 40), True), (arc(0.55, 0.25 * math.pi, 0.75 * math.pi, 12), False),
                (arc(0.09, 0, 2 * math.pi, 8, (-0.35, -0.3)), True), (arc(0.09, 0, 2 * math.pi, 8, (0.35, -0.3)), True)]
    if name == "hash":
        return [(line((-0.35, -1), (-0.35, 1)), False), (line((0.35, -1), (0.35, 1)), False),
                (line((-1, -0.35), (1, -0.35)), False), (line((-1, 0.35), (1, 0.35)), False)]
    if name == "bolt":
        return [(line((0.35, -1), (-0.45, 0.1), (0.25, 0.05), (-0.35, 1)), False)]
    if name == "bullseye":
        return [(arc(1.0, 0, 2 * math.pi, 40), True), (arc(0.5, 0, 2 * math.pi, 24), True),
                (arc(0.08, 0, 2 * math.pi, 8), True)]
    if name == "heart":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        xs = np.sin(t) ** 3
        ys = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 16
        return [(np.stack([xs, ys + 0.1], 1), True)]
    # house: a square with a pointed roof and a door
    return [(line((-0.75, -0.1), (0, -1), (0.75, -0.1), (0.75, 1), (-0.75, 1)), True),
            (line((-0.2, 1), (-0.2, 0.45), (0.2, 0.45), (0.2, 1)), False)]


def _mark_mask(class_id: int, extent: float, rng: np.random.Generator) -> np.ndarray:
    """A binary patch holding one pen-drawn mark ``extent`` px across: stretched, rotated, wobbling."""
    thickness = max(1, int(round(extent * rng.uniform(0.05, 0.1))))
    patch = int(math.ceil(extent * 1.45)) + 2 * thickness + 2
    mask = np.zeros((patch, patch), np.uint8)
    angle = rng.uniform(-math.pi, math.pi) if rng.random() < 0.5 else rng.normal(0, 0.25)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    stretch = rng.uniform(0.75, 1.25, 2) * extent / 2
    for points, closed in _stroke_paths(class_id, rng):
        points = points + rng.normal(0, 0.035, points.shape)  # an unsteady hand
        pixels = (points * stretch) @ rotation.T + patch / 2
        cv2.polylines(mask, [np.round(pixels * 16).astype(np.int32)], closed, 255, thickness, cv2.LINE_8, 4)
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of a random photograph, flipped, resized and re-lit; float32 BGR."""
    photos = load_photos()
    photo = photos[int(rng.integers(len(photos)))]
    height, width = photo.shape[:2]
    side = int(min(height, width) * rng.uniform(0.35, 1.0))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = photo[top:top + side, left:left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = cv2.resize(np.ascontiguousarray(crop), (size, size),
                      interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
    return crop.astype(np.float32) * rng.uniform(0.7, 1.2) + rng.uniform(-25, 25)


def draw_marks(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The noise-free image (float32 BGR), class ids, boxes (x1 y1 x2 y2, exclusive ends) and the pen's pixels."""
    canvas = _background(rng, image_size)
    occupied = np.zeros((image_size, image_size), bool)
    pen = np.zeros((image_size, image_size), bool)
    scale = image_size / 320
    classes, boxes = [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        class_id = int(rng.integers(len(CLASS_NAMES)))
        extent = scale * float(np.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(MAX_OBJECT_SIZE))))
        mask = _mark_mask(class_id, extent, rng) > 0
        patch = mask.shape[0]
        if patch >= image_size:
            continue
        # Marks never touch: a one-pixel margin keeps every box the tight box of its own stroke.
        margin = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        for _ in range(15):
            left, top = (int(value) for value in rng.integers(0, image_size - patch + 1, 2))
            if not occupied[top:top + patch, left:left + patch][margin].any():
                break
        else:
            continue
        occupied[top:top + patch, left:left + patch] |= margin
        pen[top:top + patch, left:left + patch] |= mask
        pixels = canvas[top:top + patch, left:left + patch]
        under = pixels[mask].mean(0)
        color = rng.uniform(0, 255, 3)
        if np.linalg.norm(color - under) < 90:  # keep the pen visible on this part of the photograph
            color = np.where(under > 127, rng.uniform(0, 50, 3), rng.uniform(205, 255, 3))
        pixels[mask] = color
        ys, xs = np.nonzero(mask)
        classes.append(class_id)
        boxes.append([left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1])
    return canvas, np.array(classes, np.int64), np.array(boxes, np.float32).reshape(-1, 4), pen


def render(rng: np.random.Generator, image_size: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one image (BGR uint8, ``image_size`` square, before JPEG): (image, classes, boxes x1 y1 x2 y2)."""
    canvas, classes, boxes, _ = draw_marks(rng, image_size)
    canvas += rng.normal(0, rng.uniform(1.0, 6.0), canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    return image, classes, boxes


def generate_dataset(out_dir: str | Path, num_train: int = 800, num_val: int = 200, image_size: int = 320,
                     seed: int = 0) -> Path:
    """Write the photo-objects dataset to ``out_dir`` (images/, labels/, data.yaml) and return ``out_dir``."""
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer of at least {MIN_IMAGE_SIZE}, got {image_size!r}")
    load_photos()  # a missing photograph fails here, before any file is written
    return synthetic.write_dataset(out_dir, render, CLASS_NAMES, num_train, num_val, image_size, seed,
                                   "photo_objects")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data.photo_objects --out DIR --train N --val M [--size S] [--seed K]``."""
    synthetic.main(generate_dataset, "Generate the photo-objects dataset (marks on real photographs) in YOLO "
                   "format.", argv, 800, 200, 320)


if __name__ == "__main__":
    main()
