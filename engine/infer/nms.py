"""Post-processing of raw detector output: confidence filtering and non-maximum suppression."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torchvision

from engine.boxes import xywh2xyxy

logger = logging.getLogger(__name__)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"non_max_suppression: {name}={value} is outside [0, 1]")


def non_max_suppression(
    prediction: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
    max_wh: float = 7680,
) -> list[torch.Tensor]:
    """Filter and suppress the Detect head's eval output, one result per image.

    ``prediction`` is (B, N, 5 + nc): [cx, cy, w, h] in input pixels, the objectness probability and
    nc class probabilities (all already passed through a sigmoid). A candidate must first have
    objectness above ``conf_thres``; its score for a class is objectness * class probability, which
    must also exceed ``conf_thres``. With ``multi_label`` every (box, class) pair above the threshold
    becomes its own candidate (used for mAP when nc > 1); otherwise each box keeps only its best class.
    ``classes`` keeps only the listed class indices. Suppression is per class
    (``torchvision.ops.batched_nms``) unless ``agnostic``, where boxes of any class suppress each other.
    At most ``max_nms`` highest-scoring candidates enter NMS and at most ``max_det`` survive. Boxes wider
    or taller than ``max_wh`` pixels (a diverged prediction, or NaN) are dropped before NMS.

    Returns a list of B float tensors (n, 6) = [x1, y1, x2, y2, conf, cls], sorted by descending conf,
    on the device of ``prediction``.
    """
    if not isinstance(prediction, torch.Tensor) or prediction.ndim != 3 or prediction.shape[-1] < 6:
        shape = tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else type(prediction).__name__
        raise ValueError(
            f"non_max_suppression: expected a tensor (B, N, 5 + num_classes) with num_classes >= 1, got {shape}"
        )
    _check_fraction("conf_thres", conf_thres)
    _check_fraction("iou_thres", iou_thres)
    if max_det < 1 or max_nms < 1:
        raise ValueError(f"non_max_suppression: max_det={max_det} and max_nms={max_nms} must be >= 1")

    device = prediction.device
    class_filter = None
    if classes is not None:
        class_filter = torch.as_tensor(list(classes), device=device, dtype=torch.float32)

    output = []
    for image_prediction in prediction:
        # float32 so that half-precision model output works with every NMS kernel and metrics get one dtype
        candidates = image_prediction.float()
        keep_candidate = (candidates[:, 4] > conf_thres) & (candidates[:, 2:4] <= max_wh).all(dim=1)
        candidates = candidates[keep_candidate]

        boxes = xywh2xyxy(candidates[:, :4])
        scores = candidates[:, 5:] * candidates[:, 4:5]
        if multi_label:
            box_index, class_index = (scores > conf_thres).nonzero(as_tuple=True)
            detections = torch.cat(
                (boxes[box_index], scores[box_index, class_index, None], class_index[:, None].float()), dim=1
            )
        else:
            best_score, best_class = scores.max(dim=1, keepdim=True)
            detections = torch.cat((boxes, best_score, best_class.float()), dim=1)
            detections = detections[best_score[:, 0] > conf_thres]

        if class_filter is not None:
            detections = detections[(detections[:, 5:6] == class_filter).any(dim=1)]

        if len(detections) > max_nms:
            detections = detections[detections[:, 4].topk(max_nms).indices]

        if agnostic:
            keep = torchvision.ops.nms(detections[:, :4], detections[:, 4], iou_thres)
        else:
            keep = torchvision.ops.batched_nms(detections[:, :4], detections[:, 4], detections[:, 5], iou_thres)
        output.append(detections[keep[:max_det]])
    return output
