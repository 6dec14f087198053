"""The anchor-based YOLOv5 training loss and its target assignment.

Contract with the detection head (``head``): ``num_classes``, ``num_levels`` (nl), ``num_anchors`` (na),
``anchors`` (nl, na, 2) anchor width/height in grid units (pixels / stride) and ``stride`` (nl,).
In train mode the model returns one raw-logit tensor per level, shaped (B, na, H, W, 5 + nc) and laid out
as [tx, ty, tw, th, objectness, class...]. A prediction decodes (in grid units of its level) as
``xy = 2 * sigmoid(txy) - 0.5 + cell`` and ``wh = (2 * sigmoid(twh)) ** 2 * anchor``.

Targets are a (M, 6) tensor of [image_index, class, cx, cy, w, h] with the box normalised to the input image.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from engine.boxes import xywh2xyxy
from models.errors import UsageError
logger = logging.getLogger(__name__)

# Objectness weight of each output level, finest first. Fine levels see many more negative cells, so
# their objectness term is up-weighted to keep the levels in balance.
LEVEL_BALANCE_THREE = (4.0, 1.0, 0.4)
LEVEL_BALANCE_MANY = (4.0, 1.0, 0.25, 0.06, 0.02)

# hyp.scratch-low values, used for any loss key a hyperparameter dict leaves out.
DEFAULT_LOSS_HYP = {
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "label_smoothing": 0.0,
}

# Neighbour cells a match may also be given to: (dx, dy) relative to the cell holding the box centre.
_NEIGHBOUR_SHIFTS = ((-1, 0), (0, -1), (1, 0), (0, 1))


@dataclass
class LevelTargets:
    """The positive samples assigned to one output level.

    Every field has one row per positive sample (n rows). ``boxes`` holds the box centre as an offset from
    the assigned cell's top-left corner (-0.5 to 1.5, the range the decoded xy can reach, for YOLOv5's
    assignment; OTA may give a cell a target whose centre lies further away) and the box
    width/height in grid units; ``anchors`` is the matched anchor's width/height in grid units.
    """

    class_ids: torch.Tensor
    boxes: torch.Tensor
    image_index: torch.Tensor
    anchor_index: torch.Tensor
    grid_y: torch.Tensor
    grid_x: torch.Tensor
    anchors: torch.Tensor

    @property
    def indices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, anchor, grid_y, grid_x): index a (B, na, H, W, ...) level output with it."""
        return self.image_index, self.anchor_index, self.grid_y, self.grid_x

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])


def _grid_size(prediction: torch.Tensor | Sequence[int], level: int) -> tuple[int, int]:
    shape = tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else tuple(prediction)
    if len(shape) != 5:
        raise ValueError(
            f"level {level}: expected a (B, num_anchors, H, W, 5 + num_classes) prediction or shape, got {shape}"
        )
    return int(shape[2]), int(shape[3])


def _check_targets(targets: torch.Tensor) -> None:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of shape (M, 6), got {type(targets).__name__}")
    if targets.ndim != 2 or targets.shape[1] != 6:
        raise ValueError(
            "targets must have shape (M, 6) = [image_index, class, cx, cy, w, h], "
            f"got {tuple(targets.shape)}"
        )


def build_targets(
    head: Any,
    predictions: Sequence[torch.Tensor | Sequence[int]],
    targets: torch.Tensor,
    anchor_t: float = 4.0,
) -> list[LevelTargets]:
    """Assign every target box to anchors and grid cells on each output level.

    A target matches an anchor when the width ratio and the height ratio r (target / anchor) both satisfy
    max(r, 1 / r) < ``anchor_t``. Each match goes to the cell containing the box centre and to the nearer
    horizontal and the nearer vertical neighbour of that cell (the left one when the centre's fractional x is
    below 0.5, the right one when above; likewise up/down for y), provided that neighbour lies inside the
    grid. The decoded centre can reach 0.5 cell beyond its own cell, so a neighbour can predict the box too;
    that gives up to three positive cells per matched anchor. A fraction of exactly 0.5 adds no neighbour on
    that axis; a centre on the far image edge (cx or cy = 1) is assigned to the last cell.

    ``predictions`` are the per-level train-mode outputs or just their shapes (B, na, H, W, 5 + nc).
    Returns one :class:`LevelTargets` per level, on the device of ``head.anchors``.
    """
    _check_targets(targets)
    if len(predictions) != head.num_levels:
        raise ValueError(f"expected {head.num_levels} prediction levels, got {len(predictions)}")
    all_anchors = head.anchors.detach().float()
    device = all_anchors.device
    targets = targets.detach().to(device=device, dtype=torch.float32)
    image_index_all = targets[:, 0].long()
    class_all = targets[:, 1].long()

    assigned = []
    for level, prediction in enumerate(predictions):
        height, width = _grid_size(prediction, level)
        anchors = all_anchors[level]  # (na, 2)
        grid_scale = torch.tensor([width, height], device=device, dtype=torch.float32)
        centres = targets[:, 2:4] * grid_scale
        sizes = targets[:, 4:6] * grid_scale

        # (na, M, 2) width and height ratios; zero-size boxes give inf and never match.
        ratio = sizes.unsqueeze(0) / anchors.unsqueeze(1)
        worst_ratio = torch.maximum(ratio, 1.0 / ratio).amax(dim=2)
        anchor_index, target_index = torch.nonzero(worst_ratio < anchor_t, as_tuple=True)

        centre = centres[target_index]
        upper_cell = torch.tensor([width - 1, height - 1], device=device, dtype=torch.float32)
        # A centre exactly on the right/bottom image edge (cx = 1.0) belongs to the last cell.
        cell = torch.minimum(centre.floor().clamp(min=0.0), upper_cell)
        fraction = centre - cell

        cells = [cell]
        keep = [torch.ones(len(cell), dtype=torch.bool, device=device)]
        for shift_x, shift_y in _NEIGHBOUR_SHIFTS:
            shift = torch.tensor([shift_x, shift_y], device=device, dtype=torch.float32)
            neighbour = cell + shift
            axis = 0 if shift_x else 1
            nearer = fraction[:, axis] < 0.5 if shift_x + shift_y < 0 else fraction[:, axis] > 0.5
            inside = (neighbour[:, axis] >= 0) & (neighbour[:, axis] <= (width - 1 if axis == 0 else height - 1))
            cells.append(neighbour)
            keep.append(nearer & inside)
        keep_mask = torch.cat(keep)
        all_cells = torch.cat(cells)[keep_mask]
        repeated_target = target_index.repeat(len(cells))[keep_mask]
        repeated_anchor = anchor_index.repeat(len(cells))[keep_mask]

        offsets = centres[repeated_target] - all_cells
        assigned.append(
            LevelTargets(
                class_ids=class_all[repeated_target],
                boxes=torch.cat((offsets, sizes[repeated_target]), dim=1),
                image_index=image_index_all[repeated_target],
                anchor_index=repeated_anchor,
                grid_y=all_cells[:, 1].long(),
                grid_x=all_cells[:, 0].long(),
                anchors=anchors[repeated_anchor],
            )
        )
    return assigned


def bbox_ciou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired (cx, cy, w, h) boxes, shape (..., 4) each -> (...).

    CIoU = IoU - centre distance^2 / enclosing diagonal^2 - alpha * v, with v the aspect-ratio term
    (4 / pi^2)(atan(w2/h2) - atan(w1/h1))^2 and alpha = v / (1 - IoU + v + eps) treated as a constant.
    ``eps`` is added to the union and to the squared diagonal, as in YOLOv5.

    Computed from the centres and sizes themselves, never from corners: a collapsed predicted box
    ((2 sigmoid(t))^2 * anchor for a very negative t) has a width of 1e-16 cell or less, which vanishes
    in ``(cx + w/2) - (cx - w/2)``; a ratio w / 0 is finite in the forward pass (atan(inf)) but NaN in the
    backward pass. The heights in the aspect ratios are also held at ``eps`` or more, so ``h * h`` in the
    ratio's gradient cannot underflow to 0 for boxes from logits as low as -30 and beyond.
    """
    centre1, size1 = boxes1[..., :2], boxes1[..., 2:4]
    centre2, size2 = boxes2[..., :2], boxes2[..., 2:4]
    low1, high1 = centre1 - size1 / 2, centre1 + size1 / 2
    low2, high2 = centre2 - size2 / 2, centre2 + size2 / 2

    overlap = (torch.minimum(high1, high2) - torch.maximum(low1, low2)).clamp(min=0.0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = size1[..., 0] * size1[..., 1] + size2[..., 0] * size2[..., 1] - intersection + eps
    iou = intersection / union

    enclosing = torch.maximum(high1, high2) - torch.minimum(low1, low2)
    diagonal_squared = enclosing.pow(2).sum(-1) + eps
    centre_distance_squared = (centre2 - centre1).pow(2).sum(-1)

    aspect1 = torch.atan(size1[..., 0] / size1[..., 1].clamp(min=eps))
    aspect2 = torch.atan(size2[..., 0] / size2[..., 1].clamp(min=eps))
    v = (4.0 / math.pi**2) * (aspect2 - aspect1).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1.0 + eps))
    return iou - (centre_distance_squared / diagonal_squared + alpha * v)


def focal_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float,
    alpha: float = 0.25,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean focal loss (Lin et al. 2017) built on binary cross-entropy with logits.

    Each element's BCE is scaled by (1 - p_t)^gamma, so confidently right predictions contribute little,
    and by alpha for positives / 1 - alpha for negatives. Soft targets (IoU, smoothed labels) are allowed.
    """
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight, reduction="none")
    probability = logits.sigmoid()
    p_true = targets * probability + (1.0 - targets) * (1.0 - probability)
    alpha_factor = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    return (bce * alpha_factor * (1.0 - p_true).pow(gamma)).mean()


class YoloLoss:
    """The YOLOv5 loss: CIoU box loss, IoU-targeted objectness BCE and class BCE.

    The hyperparameter gains (``box``, ``obj``, ``cls`` from ``hyp``) are adapted to the model here and
    nowhere else: all three by 3 / nl, the class gain also by nc / 80 and the objectness gain by
    (image_size / 640)^2. Optional keys: ``cls_pw`` / ``obj_pw`` (BCE positive weights), ``anchor_t``,
    ``fl_gamma`` (focal loss when > 0) and ``label_smoothing``. Missing keys take the hyp.scratch-low values.
    """

    def __init__(self, head: Any, hyp: dict, image_size: int = 640) -> None:
        for name in ("num_classes", "num_levels", "num_anchors", "anchors", "stride"):
            if not hasattr(head, name):
                raise AttributeError(f"YoloLoss needs a detection head with '{name}'; {type(head).__name__} has none")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        settings = {**DEFAULT_LOSS_HYP, **{key: hyp[key] for key in DEFAULT_LOSS_HYP if key in hyp}}
        for key, value in settings.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise UsageError(f"hyp['{key}'] must be a non-negative number, got {value!r}")
        if not 0.0 <= settings["label_smoothing"] < 1.0:
            raise UsageError(f"hyp['label_smoothing'] must be in [0, 1), got {settings['label_smoothing']}")
        if settings["anchor_t"] <= 1.0:
            raise UsageError(f"hyp['anchor_t'] must be greater than 1, got {settings['anchor_t']}")

        self.head = head
        self.num_classes = int(head.num_classes)
        self.num_levels = int(head.num_levels)
        if self.num_levels == 3:
            self.balance = list(LEVEL_BALANCE_THREE)
        elif 1 <= self.num_levels <= len(LEVEL_BALANCE_MANY):
            self.balance = list(LEVEL_BALANCE_MANY[: self.num_levels])
        else:
            raise ValueError(f"YoloLoss supports 1 to {len(LEVEL_BALANCE_MANY)} levels, the head has {self.num_levels}")

        level_scale = 3.0 / self.num_levels
        self.box_gain = settings["box"] * level_scale
        self.cls_gain = settings["cls"] * self.num_classes / 80.0 * level_scale
        self.obj_gain = settings["obj"] * (image_size / 640.0) ** 2 * level_scale
        self.anchor_t = float(settings["anchor_t"])
        self.focal_gamma = float(settings["fl_gamma"])
        self.cls_pos_weight = float(settings["cls_pw"])
        self.obj_pos_weight = float(settings["obj_pw"])
        smoothing = float(settings["label_smoothing"])
        self.positive_label = 1.0 - 0.5 * smoothing
        self.negative_label = 0.5 * smoothing

    def _bce(self, logits: torch.Tensor, targets: torch.Tensor, pos_weight: float) -> torch.Tensor:
        weight = torch.tensor([pos_weight], device=logits.device, dtype=logits.dtype)
        if self.focal_gamma > 0:
            return focal_bce_with_logits(logits, targets, self.focal_gamma, pos_weight=weight)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)

    def _check_predictions(self, predictions: Sequence[torch.Tensor]) -> None:
        if not isinstance(predictions, (list, tuple)) or len(predictions) != self.num_levels:
            length = len(predictions) if isinstance(predictions, (list, tuple)) else "?"
            raise ValueError(
                f"expected the train-mode output: a list of {self.num_levels} level tensors, got "
                f"{type(predictions).__name__} of length {length} (an eval-mode model returns (decoded, raw); "
                "pass raw, or call model.train())"
            )
        expected_channels = 5 + self.num_classes
        for level, prediction in enumerate(predictions):
            shape = tuple(prediction.shape)
            if len(shape) != 5 or shape[1] != self.head.num_anchors or shape[4] != expected_channels:
                raise ValueError(
                    f"level {level}: expected shape (B, {self.head.num_anchors}, H, W, {expected_channels}), "
                    f"got {shape}"
                )

    def assign(self, predictions: Sequence[torch.Tensor], targets: torch.Tensor) -> list[LevelTargets]:
        """The positive samples of each level: YOLOv5's anchor-ratio and neighbour-cell rule (``build_targets``).
        A subclass with another assignment overrides this; the loss terms on the positives stay the same."""
        return build_targets(self.head, predictions, targets, self.anchor_t)

    def __call__(
        self, predictions: Sequence[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of one batch.

        Returns (total * batch_size, [box, obj, cls] detached). The batch-size factor keeps the gradient
        magnitude per image constant when the trainer accumulates to a nominal batch.
        """
        self._check_predictions(predictions)
        _check_targets(targets)
        if len(targets):
            class_ids, image_ids = targets[:, 1], targets[:, 0]
            if class_ids.min() < 0 or class_ids.max() >= self.num_classes:
                raise ValueError(
                    f"target class ids must lie in [0, {self.num_classes}), got {class_ids.min().item():g} "
                    f"to {class_ids.max().item():g}"
                )
            if image_ids.min() < 0 or image_ids.max() >= predictions[0].shape[0]:
                raise ValueError(
                    f"target image indices must lie in [0, {predictions[0].shape[0]}) for this batch, "
                    f"got {image_ids.min().item():g} to {image_ids.max().item():g}"
                )
        device = predictions[0].device
        batch_size = predictions[0].shape[0]
        # Autocast off: the log-sigmoid and atan terms lose too much in half precision.
        with torch.autocast(device_type=device.type, enabled=False):
            assigned = self.assign(predictions, targets)
            box_loss = torch.zeros((), device=device)
            obj_loss = torch.zeros((), device=device)
            cls_loss = torch.zeros((), device=device)
            for level, (prediction, level_targets) in enumerate(zip(predictions, assigned)):
                prediction = prediction.float()
                objectness_target = torch.zeros(prediction.shape[:4], device=device)
                if len(level_targets):
                    image_index, anchor_index, grid_y, grid_x = (index.to(device) for index in level_targets.indices)
                    matched = prediction[image_index, anchor_index, grid_y, grid_x]
                    predicted_xy = matched[:, 0:2].sigmoid() * 2.0 - 0.5
                    predicted_wh = (matched[:, 2:4].sigmoid() * 2.0) ** 2 * level_targets.anchors.to(device)
                    predicted_box = torch.cat((predicted_xy, predicted_wh), dim=1)
                    ciou = bbox_ciou(predicted_box, level_targets.boxes.to(device))
                    box_loss = box_loss + (1.0 - ciou).mean()

                    # gr = 1: the objectness target is the box quality itself, not 1.
                    objectness_target[image_index, anchor_index, grid_y, grid_x] = ciou.detach().clamp(min=0.0)

                    if self.num_classes > 1:
                        class_target = torch.full_like(matched[:, 5:], self.negative_label)
                        rows = torch.arange(len(level_targets), device=device)
                        class_target[rows, level_targets.class_ids.to(device)] = self.positive_label
                        cls_loss = cls_loss + self._bce(matched[:, 5:], class_target, self.cls_pos_weight)

                obj_loss = obj_loss + self.balance[level] * self._bce(
                    prediction[..., 4], objectness_target, self.obj_pos_weight
                )

            box_loss = box_loss * self.box_gain
            obj_loss = obj_loss * self.obj_gain
            cls_loss = cls_loss * self.cls_gain
            total = (box_loss + obj_loss + cls_loss) * batch_size
        return total, torch.stack((box_loss, obj_loss, cls_loss)).detach()


# ---------------------------------------------------------------------------------------------- OTA (YOLOv7)
OTA_TOP_IOUS = 10  # a target's dynamic k is the sum of its best this-many candidate IoUs (at least 1)
OTA_IOU_COST_WEIGHT = 3.0
OTA_IOU_COST_EPS = 1e-8  # IoU cost = -log(IoU + eps)


def _pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of corner boxes: (B, T, 4) x (B, C, 4) -> (B, T, C); intersection over
    area1 + area2 - intersection, no epsilon (the formula of ``torchvision.ops.box_iou``, per image)."""
    low = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    high = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    intersection = (high - low).clamp(min=0).prod(-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).prod(-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).prod(-1)
    return intersection / (area1[:, :, None] + area2[:, None, :] - intersection)


def ota_cost(predicted_boxes: torch.Tensor, predicted_logits: torch.Tensor, target_boxes: torch.Tensor,
             target_classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and matching cost of every (target, candidate) pair of each image.

    ``predicted_boxes`` (B, C, 4) and ``target_boxes`` (B, T, 4) are corner boxes in pixels;
    ``predicted_logits`` (B, C, 1 + nc) the candidates' raw objectness and class logits; ``target_classes``
    (B, T) long. Returns (iou, cost), both (B, T, C), with
    cost = class cost + 3 * -log(IoU + 1e-8). The class cost is the binary cross-entropy, summed over the
    classes, of logit(sqrt(sigmoid(class) * sigmoid(objectness))) against the target's one-hot class; it is
    computed as sum_c softplus(x_c) - x_target, which equals that sum, without a (T, C, nc) tensor.
    """
    iou = _pairwise_iou(target_boxes, predicted_boxes)
    score = (predicted_logits[..., 1:].sigmoid() * predicted_logits[..., :1].sigmoid()).sqrt()
    logit = torch.log(score) - torch.log1p(-score)  # (B, C, nc)
    every_class = F.softplus(logit).sum(-1)  # (B, C)
    index = target_classes[:, None, :].expand(-1, logit.shape[1], -1)  # (B, C, T)
    true_class = logit.gather(2, index).transpose(1, 2)  # (B, T, C)
    class_cost = every_class[:, None, :] - true_class
    return iou, class_cost + OTA_IOU_COST_WEIGHT * -torch.log(iou + OTA_IOU_COST_EPS)


def ota_match(iou: torch.Tensor, cost: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """YOLOv7's simOTA matching of each image's targets (rows) to its candidates (columns).

    ``valid`` (B, T, C) marks the real (target, candidate) pairs of the padded batch. Each target gets a
    dynamic k = max(1, int(sum of its top-min(10, candidates) IoUs)) and takes its k lowest-cost candidates; a
    candidate taken by several targets goes to the target of lowest cost for it (over all the image's targets).
    Equal costs (the same prediction is a candidate of two targets, so its column appears twice) go to the
    earlier column: a stable sort, where upstream's ``topk`` leaves the order of ties unspecified.
    Returns (matched, target_slot), both (B, C): whether the candidate is a positive, and its target's row.
    """
    cost = cost.masked_fill(~valid, math.inf)
    iou = iou.masked_fill(~valid, 0.0)
    top = min(OTA_TOP_IOUS, iou.shape[2])
    dynamic_k = iou.topk(top, dim=2).values.sum(2).int().clamp(min=1)  # (B, T)
    lowest_cost, lowest = (part[..., :top] for part in cost.sort(dim=2, stable=True))  # (B, T, top)
    rank = torch.arange(top, device=cost.device)
    taken = (rank < dynamic_k[..., None]) & torch.isfinite(lowest_cost)
    matching = torch.zeros_like(valid)
    matching.scatter_(2, lowest, taken)  # rows whose picks are all masked scatter False only
    claimed = matching.sum(1)  # (B, C): how many targets took each candidate
    best_target = cost.argmin(1)  # (B, C)
    contested = claimed > 1
    one_hot = F.one_hot(best_target, cost.shape[1]).transpose(1, 2).bool()  # (B, T, C)
    matching = torch.where(contested[:, None, :], one_hot, matching)
    return matching.any(1), matching.to(torch.uint8).argmax(1)


def _slots(image_index: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, int]:
    """Each row's position among the rows of its image (in row order), and the most rows of one image."""
    counts = torch.bincount(image_index, minlength=batch_size)
    order = torch.argsort(image_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(image_index)
    slot[order] = torch.arange(len(image_index), device=image_index.device) - starts[image_index[order]]
    return slot, int(counts.max()) if len(counts) else 0


def ota_assign(head: Any, predictions: Sequence[torch.Tensor], targets: torch.Tensor,
               anchor_t: float = 4.0) -> list[LevelTargets]:
    """YOLOv7's OTA assignment (``ComputeLossOTA``): the positives of each level.

    The candidates are YOLOv5's positives (``build_targets``: anchor-ratio rule, the box's cell and its two
    nearer neighbours, on every level), pooled per image over all levels. Every target of an image may then
    take any of that image's candidates: the candidates' predicted boxes are decoded to pixels, costed against
    the targets (``ota_cost``) and matched (``ota_match``). The images are processed together, padded to the
    largest number of targets and candidates of one image. Runs without gradients: only the choice of the
    positives comes from here; the loss is computed on them as for YOLOv5.
    """
    candidates = build_targets(head, predictions, targets, anchor_t)
    device = predictions[0].device
    counts = [len(level) for level in candidates]
    if sum(counts) == 0:
        return candidates
    with torch.no_grad():
        targets = targets.detach().to(device=device, dtype=torch.float32)
        batch_size = predictions[0].shape[0]
        strides = head.stride.to(device=device, dtype=torch.float32)
        image_height = predictions[0].shape[2] * strides[0]
        image_width = predictions[0].shape[3] * strides[0]
        level = torch.cat([torch.full((n,), index, device=device) for index, n in enumerate(counts)])
        image = torch.cat([c.image_index for c in candidates]).to(device)
        cells = torch.cat([torch.stack((c.grid_x, c.grid_y), 1) for c in candidates]).to(device).float()
        anchors = torch.cat([c.anchors for c in candidates]).to(device)
        rows = torch.cat([prediction[tuple(i.to(device) for i in c.indices)].detach().float()
                          for prediction, c in zip(predictions, candidates)])
        stride = strides[level][:, None]
        centre = (rows[:, :2].sigmoid() * 2.0 - 0.5 + cells) * stride
        size = (rows[:, 2:4].sigmoid() * 2.0) ** 2 * anchors * stride
        predicted = xywh2xyxy(torch.cat((centre, size), 1))

        target_image = targets[:, 0].long()
        scale = torch.stack((image_width, image_height)).to(device)
        target_corners = xywh2xyxy(torch.cat((targets[:, 2:4] * scale, targets[:, 4:6] * scale), 1))

        candidate_slot, most_candidates = _slots(image, batch_size)
        target_slot, most_targets = _slots(target_image, batch_size)
        def per_image(values, rows_image, slot, most, fill=0):  # (N, ...) rows -> (B, most, ...), padded
            dense = values.new_full((batch_size, most, *values.shape[1:]), fill)
            dense[rows_image, slot] = values
            return dense

        dense_boxes = per_image(predicted, image, candidate_slot, most_candidates)
        dense_logits = per_image(rows[:, 4:], image, candidate_slot, most_candidates)
        candidate_index = per_image(torch.arange(len(image), device=device), image, candidate_slot, most_candidates, -1)
        dense_targets = per_image(target_corners, target_image, target_slot, most_targets)
        dense_classes = per_image(targets[:, 1].long(), target_image, target_slot, most_targets)
        target_index = per_image(torch.arange(len(targets), device=device), target_image, target_slot, most_targets,
                                 -1)
        valid = (target_index >= 0)[:, :, None] & (candidate_index >= 0)[:, None, :]

        iou, cost = ota_cost(dense_boxes, dense_logits, dense_targets, dense_classes)
        matched, matched_slot = ota_match(iou, cost, valid)
        positive = candidate_index[matched]  # candidate rows that are positives
        owner = target_index.gather(1, matched_slot)[matched]  # their targets' rows

        assigned = []
        for index, level_candidates in enumerate(candidates):
            here = level[positive] == index
            rows_here, owners = positive[here] - sum(counts[:index]), owner[here]
            height, width = _grid_size(predictions[index], index)
            grid_scale = torch.tensor([width, height], device=device, dtype=torch.float32)
            cell = cells[positive[here]]
            assigned.append(LevelTargets(
                class_ids=targets[owners, 1].long(),
                boxes=torch.cat((targets[owners, 2:4] * grid_scale - cell, targets[owners, 4:6] * grid_scale), 1),
                image_index=level_candidates.image_index[rows_here],
                anchor_index=level_candidates.anchor_index[rows_here],
                grid_y=level_candidates.grid_y[rows_here],
                grid_x=level_candidates.grid_x[rows_here],
                anchors=level_candidates.anchors[rows_here]))
    return assigned


class OtaLoss(YoloLoss):
    """YOLOv7's training loss (``loss_ota: 1``): YOLOv5's loss terms and gains on the positives of the OTA
    assignment (``ota_assign``). Validation losses stay YOLOv5's, as in upstream YOLOv7."""

    def assign(self, predictions: Sequence[torch.Tensor], targets: torch.Tensor) -> list[LevelTargets]:
        return ota_assign(self.head, predictions, targets, self.anchor_t)


def build_loss(head: Any, hyp: dict, image_size: int = 640) -> YoloLoss:
    """The training loss the hyperparameters ask for: ``loss_ota: 1`` the OTA loss (YOLOv7), absent or 0 the
    YOLOv5 loss."""
    choice = hyp.get("loss_ota", 0)
    if choice not in (0, 1):
        raise UsageError(f"hyp['loss_ota'] must be 0 (YOLOv5 loss) or 1 (OTA, YOLOv7), got {choice!r}")
    return (OtaLoss if choice else YoloLoss)(head, hyp, image_size=image_size)
