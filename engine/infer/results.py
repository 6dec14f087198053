"""What detect.py and val.py write about detections: YOLO-format label rows and a one-line summary."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from engine.boxes import xyxy2xywhn


def yolo_label_lines(detections: torch.Tensor | np.ndarray, image_shape: tuple[int, int],
                     save_conf: bool = False) -> list[str]:
    """YOLO-format rows ``class cx cy w h [conf]`` (normalised to ``image_shape`` = (height, width)).

    ``detections`` is (n, 6) [x1, y1, x2, y2, conf, cls] in pixels of that image.
    """
    if isinstance(detections, torch.Tensor):
        detections = detections.detach().cpu().numpy()
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 6)
    height, width = image_shape[:2]
    boxes = xyxy2xywhn(detections[:, :4].copy(), width, height, clip=True)
    lines = []
    for box, conf, class_id in zip(boxes, detections[:, 4], detections[:, 5]):
        values = [f"{int(class_id)}", *(f"{value:.6f}" for value in box)]
        if save_conf:
            values.append(f"{conf:.5f}")
        lines.append(" ".join(values))
    return lines


def write_yolo_labels(path: str | Path, detections: torch.Tensor | np.ndarray, image_shape: tuple[int, int],
                      save_conf: bool = False) -> Path | None:
    """Write :func:`yolo_label_lines` to ``path``; nothing is written for an image without detections
    (a missing label file means "no objects" in the YOLO format), and None is returned then."""
    lines = yolo_label_lines(detections, image_shape, save_conf)
    if not lines:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def describe_detections(detections: torch.Tensor, names: Sequence[str]) -> str:
    """``2 rectangles, 1 ring`` (class order), or ``(no detections)``."""
    if len(detections) == 0:
        return "(no detections)"
    class_ids, counts = torch.unique(detections[:, 5].detach().cpu().long(), return_counts=True)
    parts = []
    for class_id, count in zip(class_ids.tolist(), counts.tolist()):
        name = names[class_id] if 0 <= class_id < len(names) else str(class_id)
        parts.append(f"{count} {name}{'s' if count > 1 else ''}")
    return ", ".join(parts)
