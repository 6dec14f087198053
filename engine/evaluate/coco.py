"""COCO-format export and evaluation: YOLO labels -> COCO ground truth, detections -> COCO results, COCOeval.

Ids follow the convention of YOLOv5's ``--save-json`` so that JSON files of both engines can be scored by
the same ground truth: an image whose file stem is a number gets that number as its id, ``category_id`` is
the 0-based class index (or, for a dataset converted from COCO, the original category id its YAML lists in
``category_ids``, so the predictions can be scored against the original annotation file) and ``bbox`` is
[x_top_left, y_top_left, width, height] in original-image pixels.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from engine.boxes import xywhn2xyxy, xyxy2xywh
from engine.data.config import check_category_ids
from models.errors import UsageError

logger = logging.getLogger(__name__)

__all__ = [
    "assign_image_ids",
    "dataset_to_coco_gt",
    "evaluate_coco",
    "load_json",
    "predictions_to_coco",
    "save_json",
    "yolo_to_coco_gt",
]


def assign_image_ids(image_files: Sequence[str | Path]) -> dict[str, int]:
    """Map each image's file stem to a COCO image id.

    A stem made of digits keeps its integer value (``007.jpg`` -> 7, as YOLOv5 does); other stems get
    consecutive ids after the largest numeric one, in list order. Two images with the same stem, or two
    numeric stems with the same value, raise ValueError naming both files.
    """
    stems = [Path(file).stem for file in image_files]
    seen: dict[str, Path] = {}
    for file, stem in zip(image_files, stems):
        if stem in seen:
            raise ValueError(f"image stems must be unique for COCO ids: {seen[stem]} and {file} share '{stem}'")
        seen[stem] = Path(file)

    numeric = {stem: int(stem) for stem in stems if stem.isdigit()}
    by_value: dict[int, str] = {}
    for stem, value in numeric.items():
        if value in by_value:
            raise ValueError(
                f"images {seen[by_value[value]]} and {seen[stem]} would both get COCO image id {value}"
            )
        by_value[value] = stem

    next_id = max(numeric.values(), default=-1) + 1
    ids = {}
    for stem in stems:
        if stem in numeric:
            ids[stem] = numeric[stem]
        else:
            ids[stem] = next_id
            next_id += 1
    return ids


def yolo_to_coco_gt(
    image_files: Sequence[str | Path],
    labels: Sequence[np.ndarray],
    image_shapes: Sequence[tuple[int, int]],
    names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> tuple[dict, dict[str, int]]:
    """Build a COCO ground-truth dict from a YOLO split.

    ``labels[i]`` is image i's (n, 5) array [cls, cx, cy, w, h] normalised to the original image,
    ``image_shapes[i]`` its original (height, width), ``names`` the class names, ``category_ids`` the category
    id of each class (default 0..nc-1). Returns (ground truth dict, stem -> image id mapping from
    :func:`assign_image_ids`).
    """
    if not len(image_files) == len(labels) == len(image_shapes):
        raise ValueError(
            f"yolo_to_coco_gt: {len(image_files)} images, {len(labels)} label arrays and "
            f"{len(image_shapes)} shapes must correspond"
        )
    category_ids = check_category_ids(category_ids, len(names))
    ids = assign_image_ids(image_files)
    images, annotations = [], []
    for file, image_labels, shape in zip(image_files, labels, image_shapes):
        file = Path(file)
        height, width = int(shape[0]), int(shape[1])
        if height <= 0 or width <= 0:
            raise ValueError(f"yolo_to_coco_gt: {file} has invalid shape (height, width) = {tuple(shape)}")
        image_id = ids[file.stem]
        images.append({"id": image_id, "file_name": file.name, "height": height, "width": width})

        image_labels = np.asarray(image_labels, dtype=np.float64)
        if image_labels.size == 0:
            image_labels = np.zeros((0, 5))
        elif image_labels.ndim != 2 or image_labels.shape[1] != 5:
            raise ValueError(f"yolo_to_coco_gt: labels of {file} have shape {image_labels.shape}, expected (n, 5)")
        classes = image_labels[:, 0]
        bad = (classes < 0) | (classes >= len(names)) | (classes != np.round(classes))
        if bad.any():
            raise ValueError(
                f"yolo_to_coco_gt: {file} has class ids {classes[bad].tolist()} outside 0..{len(names) - 1}"
            )
        corners = xywhn2xyxy(image_labels[:, 1:5], width, height)
        for class_id, (x1, y1, x2, y2) in zip(classes.astype(int), corners):
            box_width, box_height = x2 - x1, y2 - y1
            annotations.append({
                "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched", so ids start at 1
                "image_id": image_id,
                "category_id": category_ids[class_id],
                "bbox": [float(x1), float(y1), float(box_width), float(box_height)],
                "area": float(box_width * box_height),
                "iscrowd": 0,
            })
    categories = [{"id": category_ids[index], "name": str(name)} for index, name in enumerate(names)]
    ground_truth = {
        "info": {"description": "slimneck-yolo ground truth converted from YOLO labels"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return ground_truth, ids


def dataset_to_coco_gt(dataset, names: Sequence[str], category_ids: Sequence[int] | None = None
                       ) -> tuple[dict, dict[str, int]]:
    """The COCO ground truth of a scanned ``YoloDataset`` (its checked labels and original image sizes):
    what val.py --save-json scores against and ``python -m data.convert yolo2coco`` writes."""
    sizes = [(int(height), int(width)) for width, height in dataset.image_sizes]
    return yolo_to_coco_gt(dataset.image_files, dataset.labels, sizes, names, category_ids)


def predictions_to_coco(
    detections_per_image: Sequence[torch.Tensor | np.ndarray], image_ids: Sequence[int],
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """COCO result records from per-image detections (n, 6) [x1, y1, x2, y2, conf, cls] in original pixels.

    ``category_ids[c]`` is the category id written for class c (default c). Coordinates are rounded to 3
    decimals and scores to 5, as in YOLOv5's JSON.
    """
    if len(detections_per_image) != len(image_ids):
        raise ValueError(
            f"predictions_to_coco: {len(detections_per_image)} detection arrays for {len(image_ids)} image ids"
        )
    records = []
    for detections, image_id in zip(detections_per_image, image_ids):
        if isinstance(detections, torch.Tensor):
            detections = detections.detach().cpu().numpy()
        detections = np.asarray(detections, dtype=np.float64)
        if detections.size == 0:
            continue
        if detections.ndim != 2 or detections.shape[1] != 6:
            raise ValueError(
                f"predictions_to_coco: detections of image {image_id} have shape {detections.shape}, expected (n, 6)"
            )
        boxes = xyxy2xywh(detections[:, :4])
        boxes[:, :2] -= boxes[:, 2:] / 2  # centre -> top-left corner
        for box, score, class_id in zip(boxes, detections[:, 4], detections[:, 5]):
            records.append({
                "image_id": int(image_id),
                "category_id": int(class_id) if category_ids is None else int(category_ids[int(class_id)]),
                "bbox": [round(float(value), 3) for value in box],
                "score": round(float(score), 5),
            })
    return records


def save_json(data: dict | list, path: str | Path) -> Path:
    """Write ``data`` as JSON (creating parent folders); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as file:
        json.dump(data, file)
    return path


def load_json(path: str | Path) -> dict | list:
    """Read a JSON file with an error that names the file and the position of a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON file not found: {path}")
    try:
        with path.open() as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: line {error.lineno}, column {error.colno}: invalid JSON ({error.msg})") from error


def _log_captured(text: str) -> None:
    for line in text.splitlines():
        if line.strip():
            logger.info(line)


def evaluate_coco(ground_truth: dict | str | Path, predictions: list[dict] | str | Path) -> dict:
    """Score COCO bbox results against a COCO ground truth with pycocotools' COCOeval.

    Either argument may be a path to a JSON file or the already loaded object. pycocotools' console
    output is captured and forwarded to this module's logger at INFO level. Returns ``map`` (AP at IoU
    0.50:0.95, all areas, maxDets 100), ``map50``, ``map75`` and ``stats`` (the 12 COCO summary numbers).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("evaluate_coco needs pycocotools: pip install 'pycocotools>=2.0.7'") from error

    gt_source = str(ground_truth) if isinstance(ground_truth, (str, Path)) else "ground-truth dict"
    if isinstance(ground_truth, (str, Path)):
        ground_truth = load_json(ground_truth)
    if isinstance(predictions, (str, Path)):
        predictions = load_json(predictions)
    for key in ("images", "annotations", "categories"):
        if not isinstance(ground_truth, dict) or key not in ground_truth:
            raise ValueError(f"evaluate_coco: {gt_source} is not a COCO ground truth (no '{key}' list)")
    if not isinstance(predictions, list):
        raise ValueError(f"evaluate_coco: predictions must be a list of records, got {type(predictions).__name__}")
    if not predictions:
        logger.warning("evaluate_coco: no predictions, COCO mAP is 0")
        return {"map": 0.0, "map50": 0.0, "map75": 0.0, "stats": [0.0] * 12}
    for index, record in enumerate(predictions):
        missing = {"image_id", "category_id", "bbox", "score"} - set(record)
        if missing:
            raise ValueError(f"evaluate_coco: prediction record {index} lacks {sorted(missing)}")
    known_images = {image["id"] for image in ground_truth["images"]}
    unknown = sorted({record["image_id"] for record in predictions} - known_images, key=str)
    if unknown:
        raise ValueError(
            f"evaluate_coco: predictions refer to image ids absent from {gt_source}: {unknown[:10]}"
            + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else "")
        )

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        coco_gt = COCO()
        # COCOeval adds keys to the ground-truth annotations and loadRes to the records: work on copies
        coco_gt.dataset = copy.deepcopy(ground_truth)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(predictions))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    _log_captured(captured.getvalue())
    stats = [float(value) for value in evaluator.stats]
    # COCOeval reports -1 when no ground truth box exists at all
    return {"map": max(stats[0], 0.0), "map50": max(stats[1], 0.0), "map75": max(stats[2], 0.0), "stats": stats}
