"""Image and box augmentations of the YOLOv5 training recipe, driven by a hyperparameter dict.

All functions work on OpenCV images (H, W, 3) uint8 BGR and on boxes as float arrays (n, 5) of
``[class, x1, y1, x2, y2]`` in pixels of that image. Randomness comes from Python's ``random`` and
numpy's global generator, which the dataset seeds per item (``YoloDataset.set_augment_seed``).

Implemented: letterbox, 4-image mosaic, random affine/perspective with box transform and the
degenerate-box filter, HSV jitter, flips (done in the dataset), mixup, and (on whole batches, in the trainer)
``--multi-scale``'s random batch size. Not implemented: ``copy_paste``
(it needs segment labels, which this pipeline does not keep); a non-zero value is reported and ignored.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml

from models.errors import UsageError

PAD_VALUE = 114
PAD_COLOR = (PAD_VALUE, PAD_VALUE, PAD_VALUE)

# The augmentation keys of a hyperparameter dict; defaults come from data/hyps/hyp.scratch-low.yaml.
AUGMENT_KEYS = ("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective",
                "flipud", "fliplr", "mosaic", "mixup", "copy_paste")
DEFAULT_HYP_FILE = Path(__file__).resolve().parents[2] / "data" / "hyps" / "hyp.scratch-low.yaml"


def augmentation_hyp(hyp: dict | None) -> dict:
    """Return the augmentation settings: ``hyp`` laid over the scratch-low defaults.

    Keys that are missing from ``hyp`` take the default; keys that are present must be numbers.
    """
    with open(DEFAULT_HYP_FILE, encoding="utf-8") as file:
        defaults = yaml.safe_load(file)
    merged = {key: float(defaults[key]) for key in AUGMENT_KEYS}
    for key in AUGMENT_KEYS:
        if hyp is not None and key in hyp:
            value = hyp[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"hyperparameter {key!r} must be a finite number, got {value!r}")
            merged[key] = float(value)
    return merged


def letterbox(image: np.ndarray, new_shape: int | tuple[int, int] = 640,
              color: tuple[int, int, int] = PAD_COLOR, auto: bool = False, scaleup: bool = True,
              stride: int = 32) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize ``image`` keeping its aspect ratio and pad it to ``new_shape`` (h, w) with ``color``.

    ``auto`` pads only up to the next multiple of ``stride`` (the smallest valid network input) instead
    of the full ``new_shape``; ``scaleup=False`` never enlarges (validation keeps small images sharp).
    Returns ``(image, (gain_h, gain_w), (pad_x, pad_y))``: a pixel x of the input lands at
    ``x * gain_w + pad_x``. The gain is uniform (both entries equal), and the last two entries form the
    ``ratio_pad`` that ``engine.boxes.scale_boxes`` takes to map boxes back.
    """
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    height, width = image.shape[:2]
    gain = min(new_shape[0] / height, new_shape[1] / width)
    if not scaleup:
        gain = min(gain, 1.0)
    resized_width, resized_height = max(round(width * gain), 1), max(round(height * gain), 1)
    if auto:
        out_height = math.ceil(resized_height / stride) * stride
        out_width = math.ceil(resized_width / stride) * stride
    else:
        out_height, out_width = new_shape
    if (resized_width, resized_height) != (width, height):
        image = cv2.resize(image, (resized_width, resized_height), interpolation=cv2.INTER_LINEAR)
    pad_x = (out_width - resized_width) // 2
    pad_y = (out_height - resized_height) // 2
    image = cv2.copyMakeBorder(image, pad_y, out_height - resized_height - pad_y,
                               pad_x, out_width - resized_width - pad_x,
                               cv2.BORDER_CONSTANT, value=color)
    return image, (gain, gain), (pad_x, pad_y)


def mosaic4(images: list[np.ndarray], boxes: list[np.ndarray], size: int,
            center: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tile four images around a random centre of a (2·size, 2·size) canvas filled with gray 114.

    Image 0 ends at the centre from the top-left, 1 from the top-right, 2 from the bottom-left and
    3 from the bottom-right; parts that fall off the canvas are cut. ``boxes[k]`` holds
    ``[class, x1, y1, x2, y2]`` in pixels of ``images[k]``. Returns the canvas and all boxes moved onto
    it and clipped to it (boxes cut down to nothing are removed later by ``random_perspective``).
    """
    if len(images) != 4 or len(boxes) != 4:
        raise ValueError(f"mosaic4 needs 4 images and 4 box arrays, got {len(images)} and {len(boxes)}")
    canvas_size = 2 * size
    if center is None:
        # The centre stays in the middle half so every quadrant keeps a visible share.
        center = (random.randint(size // 2, 3 * size // 2), random.randint(size // 2, 3 * size // 2))
    center_x, center_y = center
    canvas = np.full((canvas_size, canvas_size, images[0].shape[2]), PAD_VALUE, dtype=np.uint8)
    placed = []
    for position, (image, image_boxes) in enumerate(zip(images, boxes)):
        height, width = image.shape[:2]
        left = center_x - width if position in (0, 2) else center_x
        top = center_y - height if position in (0, 1) else center_y
        # Intersection of the image rectangle with the canvas, in canvas coordinates.
        x1, y1 = max(left, 0), max(top, 0)
        x2, y2 = min(left + width, canvas_size), min(top + height, canvas_size)
        if x2 > x1 and y2 > y1:
            canvas[y1:y2, x1:x2] = image[y1 - top:y2 - top, x1 - left:x2 - left]
        moved = np.array(image_boxes, dtype=np.float32).reshape(-1, 5).copy()
        moved[:, [1, 3]] += left
        moved[:, [2, 4]] += top
        placed.append(moved)
    all_boxes = np.concatenate(placed, 0)
    all_boxes[:, 1:] = all_boxes[:, 1:].clip(0, canvas_size)
    return canvas, all_boxes


def box_candidates(before: np.ndarray, after: np.ndarray, min_size: float = 2.0, max_aspect: float = 100.0,
                   min_area_ratio: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Boolean mask of boxes worth keeping after a geometric augmentation.

    ``before`` and ``after`` are (n, 4) xyxy pixel boxes; ``before`` must already be scaled by the
    augmentation's zoom so areas compare. A box survives when both sides exceed ``min_size`` px, it keeps
    more than ``min_area_ratio`` of its area (it was not mostly cut off), and its aspect ratio is below
    ``max_aspect`` (not a sliver).
    """
    width_before, height_before = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    width_after, height_after = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(width_after / (height_after + eps), height_after / (width_after + eps))
    area_ratio = width_after * height_after / (width_before * height_before + eps)
    return ((width_after > min_size) & (height_after > min_size)
            & (area_ratio > min_area_ratio) & (aspect < max_aspect))


def random_perspective(image: np.ndarray, boxes: np.ndarray, degrees: float = 0.0, translate: float = 0.1,
                       scale: float = 0.5, shear: float = 0.0, perspective: float = 0.0,
                       border: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, zoom, shear, translation and perspective of an image and its boxes.

    The output is ``image`` grown by ``2 * border`` = (border_y, border_x) on each axis (the mosaic passes
    a negative border of half the target size to crop its 2x canvas back to 1x). Every box's four
    corners are transformed, the box becomes their enclosing rectangle, is clipped to the output and
    dropped when ``box_candidates`` rejects it. ``boxes`` is (n, 5) ``[class, x1, y1, x2, y2]`` pixels.
    """
    out_height = image.shape[0] + 2 * border[0]
    out_width = image.shape[1] + 2 * border[1]

    # Built right to left: move the input centre to the origin, apply perspective, rotate and zoom
    # about it, shear, then move it to a random point near the output centre.
    center = np.eye(3)
    center[0, 2] = -image.shape[1] / 2
    center[1, 2] = -image.shape[0] / 2
    projective = np.eye(3)
    projective[2, 0] = random.uniform(-perspective, perspective)
    projective[2, 1] = random.uniform(-perspective, perspective)
    zoom = random.uniform(1 - scale, 1 + scale)
    rotation = np.eye(3)
    rotation[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=random.uniform(-degrees, degrees), scale=zoom)
    shearing = np.eye(3)
    shearing[0, 1] = math.tan(math.radians(random.uniform(-shear, shear)))
    shearing[1, 0] = math.tan(math.radians(random.uniform(-shear, shear)))
    translation = np.eye(3)
    translation[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_width
    translation[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * out_height
    matrix = translation @ shearing @ rotation @ projective @ center

    if border != (0, 0) or not np.allclose(matrix, np.eye(3)):
        if perspective:
            image = cv2.warpPerspective(image, matrix, dsize=(out_width, out_height), borderValue=PAD_COLOR)
        else:
            image = cv2.warpAffine(image, matrix[:2], dsize=(out_width, out_height), borderValue=PAD_COLOR)

    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    if len(boxes) == 0:
        return image, boxes
    corners = np.ones((len(boxes) * 4, 3))
    corners[:, :2] = boxes[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(-1, 2)  # (x1y1, x2y2, x1y2, x2y1) per box
    corners = corners @ matrix.T
    corners = corners[:, :2] / corners[:, 2:3] if perspective else corners[:, :2]
    corners = corners.reshape(-1, 8)
    xs, ys = corners[:, [0, 2, 4, 6]], corners[:, [1, 3, 5, 7]]
    transformed = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1)
    transformed[:, [0, 2]] = transformed[:, [0, 2]].clip(0, out_width)
    transformed[:, [1, 3]] = transformed[:, [1, 3]].clip(0, out_height)
    keep = box_candidates(boxes[:, 1:5] * zoom, transformed)
    result = np.concatenate([boxes[keep, :1], transformed[keep]], 1).astype(np.float32)
    return image, result


def augment_hsv(image: np.ndarray, hue_gain: float = 0.5, saturation_gain: float = 0.5,
                value_gain: float = 0.5) -> None:
    """Jitter hue, saturation and value of a BGR uint8 image in place by random factors 1 ± gain."""
    if not (hue_gain or saturation_gain or value_gain):
        return
    factors = np.random.uniform(-1, 1, 3) * [hue_gain, saturation_gain, value_gain] + 1
    hue, saturation, value = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    levels = np.arange(256, dtype=np.float32)
    # OpenCV's 8-bit hue spans 0..179, so hue wraps around instead of saturating.
    hue_table = ((levels * factors[0]) % 180).astype(np.uint8)
    saturation_table = np.clip(levels * factors[1], 0, 255).astype(np.uint8)
    value_table = np.clip(levels * factors[2], 0, 255).astype(np.uint8)
    shifted = cv2.merge((cv2.LUT(hue, hue_table), cv2.LUT(saturation, saturation_table),
                         cv2.LUT(value, value_table)))
    image[...] = cv2.cvtColor(shifted, cv2.COLOR_HSV2BGR)


def mixup(image: np.ndarray, boxes: np.ndarray, other_image: np.ndarray,
          other_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-sized images with a Beta(32, 32) weight (close to 0.5) and keep both box sets."""
    weight = np.random.beta(32.0, 32.0)
    blended = (image.astype(np.float32) * weight + other_image.astype(np.float32) * (1 - weight))
    return blended.round().astype(np.uint8), np.concatenate([boxes, other_boxes], 0)


MULTI_SCALE_RANGE = (0.5, 1.5)  # --multi-scale: a batch's long side is drawn from [0.5, 1.5] x imgsz (YOLOv5)


def multi_scale(images: torch.Tensor, rng: random.Random, imgsz: int, stride: int) -> torch.Tensor:
    """Resize a (B, 3, H, W) float batch so its long side is a random multiple of ``stride`` in
    ``MULTI_SCALE_RANGE`` x ``imgsz`` (bilinear; both sides rounded up to stride multiples, so rectangular
    batches keep their aspect ratio). Normalised labels need no change."""
    low, high = int(imgsz * MULTI_SCALE_RANGE[0]), int(imgsz * MULTI_SCALE_RANGE[1])
    size = max(rng.randrange(low, high + stride) // stride * stride, stride)
    factor = size / max(images.shape[2:])
    if factor == 1:
        return images
    shape = [math.ceil(side * factor / stride) * stride for side in images.shape[2:]]
    return F.interpolate(images, size=shape, mode="bilinear", align_corners=False)
