"""What every generated dataset shares: per-image seeding, the YOLO files, data.yaml and the command line.

A generator module supplies ``render(rng, image_size) -> (image, classes, boxes)`` (BGR uint8 image, class ids,
pixel corners ``x1, y1, x2, y2`` with exclusive ``x2``/``y2``) and its class names; ``write_dataset`` does the
rest. Image ``i`` of a split is drawn from a numpy generator seeded with ``(seed, split, i)``, so the same
arguments give byte-identical files and a split does not change when another split's size does.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1}

Renderer = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def contrasting_color(rng: np.random.Generator, under: np.ndarray, min_distance: float, tries: int, dark: float,
                      bright: float) -> np.ndarray:
    """A random BGR colour (float32) at least ``min_distance`` (Euclidean) from ``under``, the mean colour it is
    drawn over: up to ``tries`` draws are checked; failing that, ``dark`` where ``under`` is bright and ``bright``
    where it is dark, per channel."""
    color = rng.uniform(0, 255, 3).astype(np.float32)
    for _ in range(tries):
        if np.linalg.norm(color - under) >= min_distance:
            return color
        color = rng.uniform(0, 255, 3).astype(np.float32)
    return np.where(under > 127, dark, bright).astype(np.float32)


def write_sample(image: np.ndarray, classes: np.ndarray, boxes: np.ndarray, image_path: Path, label_path: Path,
                 jpeg_quality: int) -> None:
    """Write one image as a JPEG and its YOLO label file (``class cx cy w h``, normalised, 6 decimals)."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise OSError(f"JPEG encoding failed for {image_path}")
    image_path.write_bytes(encoded.tobytes())
    height, width = image.shape[:2]
    rows = []
    for class_id, (x1, y1, x2, y2) in zip(classes, boxes):
        rows.append(f"{class_id} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                    f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n")
    label_path.write_text("".join(rows), encoding="utf-8")


def write_dataset(out_dir: str | Path, render: Renderer, class_names: Sequence[str], num_train: int,
                  num_val: int, image_size: int, seed: int, writer: str) -> Path:
    """Render ``num_train`` + ``num_val`` images into ``out_dir`` (images/, labels/, data.yaml); return it.

    ``writer`` names the generator module in data.yaml's header comment and the progress bar.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    out_dir = Path(out_dir)
    jobs = []
    for split, count in (("train", num_train), ("val", num_val)):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(split, index) for index in range(count)]

    def write_one(job: tuple[str, int]) -> None:
        split, index = job
        rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
        image, classes, boxes = render(rng, image_size)
        stem = f"{split}_{index:05d}"
        write_sample(image, classes, boxes, out_dir / "images" / split / f"{stem}.jpg",
                     out_dir / "labels" / split / f"{stem}.txt", jpeg_quality=int(rng.integers(70, 96)))

    # Each image has its own generator, so threads change the speed, never the output.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for _ in tqdm(pool.map(write_one, jobs), total=len(jobs), desc=f"generating {writer}", disable=None,
                      leave=False):
            pass
    (out_dir / "data.yaml").write_text(
        f"# Written by data/{writer}.py; paths are relative to this file.\n"
        f"path: .\ntrain: images/train\nval: images/val\nnames: [{', '.join(class_names)}]\n", encoding="utf-8")
    logger.info("wrote %d train and %d val images to %s", num_train, num_val, out_dir)
    return out_dir


def main(generate: Callable[..., Path], description: str, argv: list[str] | None, num_train: int, num_val: int,
         image_size: int) -> None:
    """The command line of a generator module: ``--out DIR --train N --val M [--size S] [--seed K]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--train", type=int, default=num_train, help="number of training images")
    parser.add_argument("--val", type=int, default=num_val, help="number of validation images")
    parser.add_argument("--size", type=int, default=image_size, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        generate(args.out, args.train, args.val, args.size, args.seed)
    except ValueError as error:
        parser.error(str(error))
