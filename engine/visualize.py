"""Pictures of data and predictions: label statistics, annotated batch mosaics, box drawing.

Matplotlib is used through its object API with the Agg canvas (no pyplot, no display, no global
backend switch); boxes and text are drawn with OpenCV's built-in Hershey font, so nothing is downloaded.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.boxes import xywh2xyxy

# 20 well-separated colours (RGB hex), cycled by class id.
_PALETTE_HEX = ("FF3838", "2C99A8", "FF9D97", "3DDB86", "FF701F", "1A9334", "FFB21D", "00D4BB", "CFD231",
                "48F90A", "92CC17", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF",
                "FF95C8", "FF37C7")


def class_color(class_id: int, bgr: bool = True) -> tuple[int, int, int]:
    """A stable colour for a class id (BGR for OpenCV by default)."""
    value = _PALETTE_HEX[int(class_id) % len(_PALETTE_HEX)]
    rgb = tuple(int(value[offset:offset + 2], 16) for offset in (0, 2, 4))
    return rgb[::-1] if bgr else rgb


def draw_boxes(image_bgr: np.ndarray, boxes_xyxy: np.ndarray | torch.Tensor, labels_text: Sequence[str] | None = None,
               colors: Sequence[tuple[int, int, int]] | None = None, line_thickness: int | None = None) -> np.ndarray:
    """Draw pixel ``xyxy`` boxes with optional captions onto ``image_bgr`` in place and return it.

    ``colors`` gives one BGR colour per box (default: a single palette colour); ``line_thickness``
    defaults to about 0.3 % of the image size (at least 1 px). Captions sit above the box, or inside it
    when the box touches the top edge.
    """
    boxes = boxes_xyxy.detach().cpu().numpy() if isinstance(boxes_xyxy, torch.Tensor) else np.asarray(boxes_xyxy)
    boxes = boxes.reshape(-1, 4)
    height, width = image_bgr.shape[:2]
    thickness = line_thickness or max(round(0.003 * (height + width) / 2), 1)
    font_scale = max(thickness / 3, 0.35)
    font_thickness = max(thickness - 1, 1)
    for index, box in enumerate(boxes):
        color = tuple(int(channel) for channel in colors[index]) if colors is not None else class_color(0)
        x1, y1, x2, y2 = (int(round(float(value))) for value in box)
        cv2.rectangle(image_bgr, (x1, y1), (x2, y2), color, thickness, cv2.LINE_8)
        text = labels_text[index] if labels_text is not None else ""
        if not text:
            continue
        (text_width, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                                                              font_thickness)
        above = y1 - text_height - baseline - 2 >= 0
        top = y1 - text_height - baseline - 2 if above else y1
        cv2.rectangle(image_bgr, (x1, top), (x1 + text_width + 2, top + text_height + baseline + 2), color, -1)
        text_color = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
        cv2.putText(image_bgr, text, (x1 + 1, top + text_height + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    text_color, font_thickness, cv2.LINE_AA)
    return image_bgr


def _to_numpy(value) -> np.ndarray:
    return value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, np.float32)


def plot_batch(imgs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, paths: Sequence[str] | None,
               save_path: str | Path, names: Sequence[str] | None = None,
               predictions: torch.Tensor | np.ndarray | None = None, max_images: int = 16,
               max_size: int = 1920, conf_threshold: float = 0.25) -> np.ndarray:
    """Save a grid of a batch with its labels (solid caption) and optional predictions; return it (BGR).

    ``imgs`` is (B, 3, H, W) RGB, uint8 or float in [0, 1]; ``targets`` (N, 6) ``[image_index, class,
    cx, cy, w, h]`` normalised; ``predictions`` (N, 7) ``[image_index, x1, y1, x2, y2, conf, class]`` in
    pixels of the batch images, drawn when ``conf >= conf_threshold``. The grid is shrunk to at most
    ``max_size`` pixels a side.
    """
    floating = imgs.is_floating_point() if isinstance(imgs, torch.Tensor) else np.issubdtype(np.asarray(imgs).dtype,
                                                                                             np.floating)
    images = _to_numpy(imgs)
    if floating and images.max(initial=0) <= 1.0:
        images = images * 255
    images = images[:max_images].clip(0, 255).astype(np.uint8)
    batch, _, height, width = images.shape
    columns = math.ceil(math.sqrt(batch))
    rows = math.ceil(batch / columns)
    scale = min(1.0, max_size / max(rows * height, columns * width))
    tile_height, tile_width = max(int(height * scale), 1), max(int(width * scale), 1)
    grid = np.full((rows * tile_height, columns * tile_width, 3), 255, np.uint8)
    target_rows = _to_numpy(targets).reshape(-1, 6)
    prediction_rows = _to_numpy(predictions).reshape(-1, 7) if predictions is not None else np.zeros((0, 7))

    for index in range(batch):
        tile = cv2.cvtColor(np.ascontiguousarray(images[index].transpose(1, 2, 0)), cv2.COLOR_RGB2BGR)
        if scale != 1.0:
            tile = cv2.resize(tile, (tile_width, tile_height), interpolation=cv2.INTER_AREA)
        own = target_rows[target_rows[:, 0] == index]
        boxes = xywh2xyxy(own[:, 2:6]) * [tile_width, tile_height, tile_width, tile_height]
        classes = own[:, 1].astype(int)
        draw_boxes(tile, boxes, [_class_name(names, cls) for cls in classes],
                   [class_color(cls) for cls in classes], line_thickness=1)
        guesses = prediction_rows[(prediction_rows[:, 0] == index) & (prediction_rows[:, 5] >= conf_threshold)]
        if len(guesses):
            guess_classes = guesses[:, 6].astype(int)
            draw_boxes(tile, guesses[:, 1:5] * scale,
                       [f"{_class_name(names, cls)} {conf:.2f}" for cls, conf in zip(guess_classes, guesses[:, 5])],
                       [tuple(255 - channel for channel in class_color(cls)) for cls in guess_classes],
                       line_thickness=1)
        if paths is not None and index < len(paths):
            cv2.putText(tile, Path(paths[index]).name[:40], (3, tile_height - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)
        row, column = divmod(index, columns)
        grid[row * tile_height:(row + 1) * tile_height, column * tile_width:(column + 1) * tile_width] = tile
        cv2.rectangle(grid, (column * tile_width, row * tile_height),
                      ((column + 1) * tile_width - 1, (row + 1) * tile_height - 1), (255, 255, 255), 1)
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(save_path), grid):
        raise OSError(f"could not write {save_path} (unsupported extension or unwritable folder)")
    return grid


def _class_name(names: Sequence[str] | None, class_id: int) -> str:
    if names is not None and 0 <= class_id < len(names):
        return str(names[class_id])
    return str(class_id)


def plot_labels(labels_list: Sequence[np.ndarray], names: Sequence[str], save_path: str | Path) -> None:
    """Save a 2x2 figure of label statistics: instances per class, box centres, box sizes, box outlines.

    ``labels_list`` holds one (n, 5) ``[class, cx, cy, w, h]`` normalised array per image (``ds.labels``).
    """
    labels = np.concatenate([np.asarray(item, np.float32).reshape(-1, 5) for item in labels_list], 0) \
        if len(labels_list) else np.zeros((0, 5), np.float32)
    classes = labels[:, 0].astype(int)
    figure = Figure(figsize=(10, 9), tight_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)

    counts = np.bincount(classes, minlength=len(names)) if len(classes) else np.zeros(len(names), int)
    bar_colors = [np.array(class_color(index, bgr=False)) / 255 for index in range(len(counts))]
    axes[0, 0].bar(range(len(counts)), counts, color=bar_colors)
    axes[0, 0].set_xticks(range(len(counts)))
    axes[0, 0].set_xticklabels([_class_name(names, index) for index in range(len(counts))], rotation=90,
                               fontsize=8 if len(counts) < 30 else 5)
    axes[0, 0].set_ylabel("instances")
    axes[0, 0].set_title(f"{len(labels)} boxes in {len(labels_list)} images")

    for axis, (x_column, y_column, x_label, y_label) in zip(
            (axes[0, 1], axes[1, 0]), ((1, 2, "centre x", "centre y"), (3, 4, "width", "height"))):
        axis.hist2d(labels[:, x_column], labels[:, y_column], bins=50, range=[[0, 1], [0, 1]], cmap="Blues")
        axis.set_xlabel(x_label)
        axis.set_ylabel(y_label)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
    axes[0, 1].invert_yaxis()  # image coordinates: y grows downwards

    # Up to 1000 boxes drawn centred, to show the spread of shapes and sizes at a glance.
    canvas = np.full((500, 500, 3), 255, np.uint8)
    shown = labels[:1000]
    centred = np.concatenate([np.full((len(shown), 2), 0.5, np.float32), shown[:, 3:5]], 1)
    for class_id, box in zip(shown[:, 0].astype(int), xywh2xyxy(centred) * 500):
        x1, y1, x2, y2 = (int(round(float(value))) for value in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), class_color(class_id, bgr=False), 1)
    axes[1, 1].imshow(canvas)
    axes[1, 1].set_title("box sizes (centred)")
    axes[1, 1].axis("off")

    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(save_path, dpi=150)
