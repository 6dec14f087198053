"""A harder generated dataset: synthetic shapes on cluttered backgrounds, in YOLO format (tests, benchmarks).

Six classes (``CLASS_NAMES``) of filled shapes, 12 to 160 px across, rotated, stretched and shaded,
drawn over gradient/noise/stripe backgrounds with distractor lines, curves and blobs, partly hiding
each other, under sensor noise, blur and JPEG compression. Every object keeps at least
``MIN_VISIBLE_FRACTION`` of its area visible and its box is the tight box of its visible pixels, so
the labels are exact; the difficulty (small objects, occlusion, look-alike clutter, ellipse vs ring,
star vs cross) is enough for mAP50-95 to tell a good model from a weak one.

Everything is drawn with OpenCV from a numpy generator seeded per image (``data/synthetic.py``: the same
arguments give byte-identical files). ``python -m data.shapes --out DIR --train N --val M`` writes ``DIR/images/{train,val}``,
``DIR/labels/{train,val}`` and ``DIR/data.yaml``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data import synthetic

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "star", "cross", "ring")
MIN_OBJECT_SIZE = 12
MAX_OBJECT_SIZE = 160
MIN_VISIBLE_FRACTION = 0.5
MAX_OBJECTS = 10
_SUBPIXEL_BITS = 4  # OpenCV drawing "shift": coordinates carry 4 fractional bits
_SUBPIXEL = 1 << _SUBPIXEL_BITS


@dataclass
class ShapesSample:
    """One rendered image with its ground truth.

    ``boxes`` are pixel corners ``x1, y1, x2, y2`` with exclusive ``x2``/``y2`` (the tight box of the
    visible pixels); ``instance_map`` holds ``k + 1`` where object ``k`` is visible and 0 elsewhere;
    ``colors`` is each object's base fill colour (BGR, before shading and noise);
    ``visible_fractions`` the share of each object's drawn area that stays visible.
    """

    image: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    instance_map: np.ndarray
    colors: np.ndarray
    visible_fractions: np.ndarray


def render_sample(rng: np.random.Generator, image_size: int = 320) -> ShapesSample:
    """Draw one image (BGR uint8, ``image_size`` square, before JPEG) and its exact labels."""
    canvas = _background(rng, image_size)
    for _ in range(rng.integers(1, 7)):
        _draw_clutter(canvas, rng, image_size)

    instance_map = np.zeros((image_size, image_size), np.int16)
    full_areas: list[int] = []
    visible_areas: list[int] = []
    classes: list[int] = []
    colors: list[np.ndarray] = []
    patches: list[tuple[int, int, int]] = []
    num_objects = 0 if rng.random() < 0.03 else int(rng.integers(1, MAX_OBJECTS + 1))
    for _ in range(num_objects):
        placed = _place_object(canvas, instance_map, full_areas, visible_areas, rng, image_size)
        if placed is not None:
            classes.append(placed[0])
            colors.append(placed[1])
            patches.append(placed[2])

    # A few thin distractor lines drawn over everything; they hide object pixels too.
    for _ in range(rng.integers(0, 3)):
        start, end = (tuple(int(value) for value in point)
                      for point in rng.uniform(0, image_size, (2, 2)) * _SUBPIXEL)
        thickness = int(rng.integers(1, 3))
        cv2.line(canvas, start, end, _random_color(rng).tolist(), thickness, cv2.LINE_8, _SUBPIXEL_BITS)
        cv2.line(instance_map, start, end, 0, thickness, cv2.LINE_8, _SUBPIXEL_BITS)

    # Uniform sensor noise (cheaper to draw than Gaussian): standard deviation 2 to 10 levels.
    canvas += (rng.random(canvas.shape, dtype=np.float32) - 0.5) * (math.sqrt(12) * rng.uniform(2.0, 10.0))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), 0)

    boxes, visible_fractions = [], []
    for object_id, (left, top, patch) in enumerate(patches, 1):
        # An object never leaves the patch it was drawn in, so its pixels are searched only there.
        ys, xs = np.nonzero(instance_map[top:top + patch, left:left + patch] == object_id)
        boxes.append([left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1])
        visible_fractions.append(len(xs) / full_areas[object_id - 1])
    return ShapesSample(image, np.array(classes, np.int64), np.array(boxes, np.float32).reshape(-1, 4),
                        instance_map, np.array(colors, np.float32).reshape(-1, 3),
                        np.array(visible_fractions, np.float32))


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 BGR background: gradient, smooth noise, stripes or a plain colour, plus texture."""
    first, second = _random_color(rng), _random_color(rng)
    kind = rng.integers(0, 4)
    coordinate = np.arange(size, dtype=np.float32) / size
    xs, ys = coordinate[None, :], coordinate[:, None]
    if kind == 0:
        angle = rng.uniform(0, 2 * math.pi)
        mix = xs * math.cos(angle) + ys * math.sin(angle)
        mix = (mix - mix.min()) / max(float(np.ptp(mix)), 1e-6)
    elif kind == 1:
        cells = int(rng.integers(3, 12))
        mix = cv2.resize(rng.random((cells, cells), dtype=np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC).clip(0, 1)
    elif kind == 2:
        angle = rng.uniform(0, math.pi)
        frequency = rng.uniform(3, 20)
        mix = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * (xs * math.cos(angle) + ys * math.sin(angle)))
        mix *= rng.uniform(0.2, 0.6)  # stripes stay low-contrast so they read as texture
    else:
        mix = np.zeros((size, size), np.float32)
    fine = cv2.resize(rng.standard_normal((size // 4, size // 4), dtype=np.float32), (size, size),
                      interpolation=cv2.INTER_LINEAR) * rng.uniform(0, 18)
    # Built plane by plane: numpy broadcasting over a trailing axis of 3 is several times slower.
    return cv2.merge([first[channel] + mix * (second[channel] - first[channel]) + fine for channel in range(3)])


def _draw_clutter(canvas: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """Distractors that are not objects: straight lines, curves and irregular blobs."""
    color = _random_color(rng).tolist()
    kind = rng.integers(0, 3)
    if kind == 0:
        start, end = (tuple(int(value) for value in point)
                      for point in rng.uniform(-0.1 * size, 1.1 * size, (2, 2)) * _SUBPIXEL)
        cv2.line(canvas, start, end, color, int(rng.integers(1, 5)), cv2.LINE_8, _SUBPIXEL_BITS)
    elif kind == 1:
        start = rng.uniform(0, size, 2)
        steps = np.cumsum(rng.normal(0, size / 12, (8, 2)), 0)
        curve = (np.vstack([start, start + steps]) * _SUBPIXEL).astype(np.int32)
        cv2.polylines(canvas, [curve], False, color, int(rng.integers(1, 4)), cv2.LINE_8, _SUBPIXEL_BITS)
    else:
        # A lumpy closed outline: a circle whose radius wobbles with a few low harmonics.
        radius = rng.uniform(6, 50)
        center = rng.uniform(0, size, 2)
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        # Gentle low harmonics: lumpy, but no lobes that would read as a star or a cross.
        wobble = sum(rng.uniform(0.02, amplitude) * np.sin(harmonic * angles + rng.uniform(0, 2 * math.pi))
                     for harmonic, amplitude in ((2, 0.2), (3, 0.12), (5, 0.05)))
        outline = center + (radius * (1 + wobble))[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)
        cv2.fillPoly(canvas, [(outline * _SUBPIXEL).astype(np.int32)], color, cv2.LINE_8, _SUBPIXEL_BITS)


def _shape_mask(class_id: int, extent: float, rng: np.random.Generator) -> np.ndarray:
    """A binary mask patch of one shape ``extent`` px across (before rotation), centred in the patch."""
    patch = int(math.ceil(extent * 1.5)) + 4
    mask = np.zeros((patch, patch), np.uint8)
    center = np.array([patch / 2, patch / 2])
    name = CLASS_NAMES[class_id]
    angle = rng.uniform(0, 360)
    if name in ("rectangle", "ellipse", "ring") and rng.random() < 0.6:
        # Mostly upright, as such objects usually are: gives elongated boxes, not only squarish ones.
        angle = float(rng.choice([0.0, 90.0])) + rng.uniform(-10, 10)

    def fill(points: np.ndarray) -> None:
        cv2.fillPoly(mask, [(points * _SUBPIXEL).astype(np.int32)], 255, cv2.LINE_8, _SUBPIXEL_BITS)

    def polar(radii: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
        theta = np.radians(angles_deg + angle)
        return center + np.stack([radii * np.cos(theta), radii * np.sin(theta)], 1)

    def ellipse(axes: tuple[float, float], value: int) -> None:
        cv2.ellipse(mask, tuple((center * _SUBPIXEL).astype(int)), tuple(int(axis * _SUBPIXEL) for axis in axes),
                    angle, 0, 360, value, -1, cv2.LINE_8, _SUBPIXEL_BITS)

    if name == "rectangle":
        fill(cv2.boxPoints(((*center,), (extent, extent * rng.uniform(0.3, 1.0)), angle)))
    elif name == "ellipse":
        ellipse((extent / 2, extent / 2 * rng.uniform(0.35, 1.0)), 255)
    elif name == "triangle":
        corners = np.array([0, 120, 240]) + rng.uniform(-20, 20, 3)
        fill(polar(extent / 2 * rng.uniform(0.85, 1.0, 3), corners))
    elif name == "star":
        points = int(rng.choice([5, 6]))
        radii = np.tile([extent / 2, extent / 2 * rng.uniform(0.38, 0.5)], points)
        fill(polar(radii, np.arange(2 * points) * 180 / points))
    elif name == "cross":
        half, arm = extent / 2, extent / 2 * rng.uniform(0.25, 0.4)
        outline = np.array([[arm, half], [arm, arm], [half, arm], [half, -arm], [arm, -arm], [arm, -half],
                            [-arm, -half], [-arm, -arm], [-half, -arm], [-half, arm], [-arm, arm], [-arm, half]])
        theta = math.radians(angle)
        rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        fill(center + outline @ rotation.T)
    else:  # ring
        outer = (extent / 2, extent / 2 * rng.uniform(0.55, 1.0))
        hole = rng.uniform(0.45, 0.7)
        ellipse(outer, 255)
        ellipse((outer[0] * hole, outer[1] * hole), 0)
    return mask


def _place_object(canvas: np.ndarray, instance_map: np.ndarray, full_areas: list[int],
                  visible_areas: list[int], rng: np.random.Generator,
                  size: int) -> tuple[int, np.ndarray, tuple[int, int, int]] | None:
    """Draw one object where it hides no earlier object below ``MIN_VISIBLE_FRACTION``.

    Returns (class, base colour, (left, top, patch side)), or None when no position fits.
    ``full_areas`` and ``visible_areas`` (pixels per earlier object) are updated in place.
    """
    class_id = int(rng.integers(0, len(CLASS_NAMES)))
    extent = float(np.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(MAX_OBJECT_SIZE))))
    mask = _shape_mask(class_id, extent, rng) > 0
    patch = mask.shape[0]
    area = int(mask.sum())
    if area < 16:
        return None
    for _ in range(20):
        left, top = (int(value) for value in rng.integers(0, size - patch + 1, 2))
        region = instance_map[top:top + patch, left:left + patch]
        hidden = np.bincount(region[mask], minlength=len(full_areas) + 1)[1:]
        if all(visible_areas[k] - hidden[k] >= MIN_VISIBLE_FRACTION * full_areas[k]
               for k in np.nonzero(hidden)[0]):
            break
    else:
        return None

    pixels = canvas[top:top + patch, left:left + patch]
    under = pixels[mask].mean(0)
    color = synthetic.contrasting_color(rng, under, min_distance=80, tries=10, dark=30.0, bright=225.0)

    style = rng.integers(0, 3)
    fill = np.broadcast_to(color, pixels.shape).copy()
    if style == 1:  # shading across the object
        ramp = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.3), patch, dtype=np.float32)
        fill *= (ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None])
    elif style == 2:  # speckled texture
        fill += rng.standard_normal(pixels.shape, dtype=np.float32) * 14
    pixels[mask] = np.clip(fill[mask], 0, 255)
    region[mask] = len(full_areas) + 1
    for k in np.nonzero(hidden)[0]:
        visible_areas[k] -= int(hidden[k])
    full_areas.append(area)
    visible_areas.append(area)
    return class_id, color, (left, top, patch)


def generate_dataset(out_dir: str | Path, num_train: int = 400, num_val: int = 100, image_size: int = 320,
                     seed: int = 0) -> Path:
    """Write the shapes dataset to ``out_dir`` (images/, labels/, data.yaml) and return ``out_dir``."""
    # The largest shape, rotated, needs a patch of about 1.5 x MAX_OBJECT_SIZE.
    if not isinstance(image_size, int) or image_size < 256:
        raise ValueError(f"image_size must be an integer of at least 256, got {image_size!r}")

    def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample = render_sample(rng, size)
        return sample.image, sample.classes, sample.boxes

    return synthetic.write_dataset(out_dir, render, CLASS_NAMES, num_train, num_val, image_size, seed, "shapes")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data.shapes --out DIR --train N --val M [--size S] [--seed K]``."""
    synthetic.main(generate_dataset, "Generate the synthetic shapes dataset in YOLO format.", argv, 400, 100, 320)


if __name__ == "__main__":
    main()
