"""Tests for engine/train/loss.py: target assignment (YOLOv5 and OTA), CIoU and the losses."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.train.loss import (LEVEL_BALANCE_MANY, OtaLoss, YoloLoss, bbox_ciou, build_loss, build_targets,
                               ota_assign, ota_cost, ota_match)
from models.errors import UsageError
from helpers import DEFAULT_ANCHORS_PX, STRIDES, FakeHead

HYP = {"box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0}


def level_shapes(image_size: int, num_classes: int, batch: int = 1, strides=STRIDES):
    return [(batch, 3, image_size // int(s), image_size // int(s), 5 + num_classes) for s in strides]


def target(image: int, cls: int, x_cells: float, y_cells: float, w_px: float, h_px: float,
           grid: int, image_size: int) -> list[float]:
    """A normalised target row whose centre sits at (x_cells, y_cells) on a grid of ``grid`` cells."""
    return [image, cls, x_cells / grid, y_cells / grid, w_px / image_size, h_px / image_size]


def cells_of(level_targets) -> set[tuple[int, int, int, int]]:
    return {tuple(int(v) for v in row) for row in zip(*level_targets.indices)}


# ---------------------------------------------------------------- build_targets


def test_target_matches_its_anchor_and_the_two_nearest_neighbour_cells():
    head = FakeHead()
    # 128 px input: level 0 is 16 x 16. Centre at (5.3, 7.8) cells: fraction x 0.3 (< 0.5, left neighbour),
    # fraction y 0.8 (> 0.5, lower neighbour). Size 16 x 30 px = anchor 1 of level 0.
    targets = torch.tensor([target(0, 2, 5.3, 7.8, 16, 30, grid=16, image_size=128)])
    assigned = build_targets(head, level_shapes(128, 3), targets, anchor_t=1.2)

    level0 = assigned[0]
    assert cells_of(level0) == {(0, 1, 7, 5), (0, 1, 7, 4), (0, 1, 8, 5)}
    assert len(assigned[1]) == 0 and len(assigned[2]) == 0
    assert level0.class_ids.tolist() == [2, 2, 2]
    by_cell = {(int(x), int(y)): box.tolist() for x, y, box in zip(level0.grid_x, level0.grid_y, level0.boxes)}
    assert by_cell[(5, 7)] == pytest.approx([0.3, 0.8, 2.0, 3.75], abs=1e-5)
    assert by_cell[(4, 7)] == pytest.approx([1.3, 0.8, 2.0, 3.75], abs=1e-5)
    assert by_cell[(5, 8)] == pytest.approx([0.3, -0.2, 2.0, 3.75], abs=1e-5)
    assert torch.allclose(level0.anchors, torch.tensor([[2.0, 3.75]] * 3))


def test_default_anchor_threshold_matches_the_hand_computed_anchor_set():
    head = FakeHead()
    # 16 x 30 px: every ratio to the level-0 and level-1 anchors is below 4 (worst: 119 / 30 = 3.97);
    # the level-2 anchors are all more than 4x larger (116 / 16 = 7.25).
    targets = torch.tensor([target(0, 0, 5.3, 7.8, 16, 30, grid=16, image_size=128)])
    assigned = build_targets(head, level_shapes(128, 3), targets, anchor_t=4.0)
    assert sorted(set(assigned[0].anchor_index.tolist())) == [0, 1, 2]
    assert sorted(set(assigned[1].anchor_index.tolist())) == [0, 1, 2]
    assert len(assigned[2]) == 0
    # Each matched anchor gets three cells; on level 1 (8 x 8) the centre is at (2.65, 3.9): right and lower.
    assert len(assigned[0]) == 9
    level1_cells = {(gx, gy) for _, _, gy, gx in cells_of(assigned[1])}
    assert level1_cells == {(2, 3), (3, 3), (2, 4)}


def test_target_far_from_every_anchor_shape_is_not_assigned():
    head = FakeHead()
    targets = torch.tensor([
        target(0, 0, 5.5, 5.5, 1, 1, grid=16, image_size=128),  # 1 px: 10x smaller than the smallest anchor
        target(0, 1, 5.5, 5.5, 120, 2, grid=16, image_size=128),  # 60:1 aspect ratio fits no anchor
    ])
    assigned = build_targets(head, level_shapes(128, 3), targets, anchor_t=4.0)
    assert all(len(level) == 0 for level in assigned)


def test_neighbours_outside_the_grid_are_not_added():
    head = FakeHead()
    targets = torch.tensor([
        target(0, 0, 0.2, 15.9, 16, 30, grid=16, image_size=128),  # left and below would leave the grid
        target(0, 0, 16.0, 3.2, 16, 30, grid=16, image_size=128),  # cx = 1.0: last column, upper neighbour only
    ])
    level0 = build_targets(head, level_shapes(128, 3), targets, anchor_t=1.2)[0]
    assert cells_of(level0) == {(0, 1, 15, 0), (0, 1, 3, 15), (0, 1, 2, 15)}
    assert level0.grid_x.max() <= 15 and level0.grid_y.max() <= 15 and level0.grid_x.min() >= 0
    offsets = {(int(x), int(y)): box[:2].tolist() for x, y, box in zip(level0.grid_x, level0.grid_y, level0.boxes)}
    assert offsets[(15, 3)] == pytest.approx([1.0, 0.2], abs=1e-5)


def test_build_targets_accepts_tensors_and_keeps_image_indices():
    head = FakeHead()
    predictions = [torch.zeros(shape) for shape in level_shapes(64, 3, batch=2)]
    targets = torch.tensor([target(1, 0, 2.5, 2.5, 16, 30, grid=8, image_size=64)])
    level0 = build_targets(head, predictions, targets, anchor_t=1.2)[0]
    assert cells_of(level0) == {(1, 1, 2, 2)}  # centred in the cell: no neighbour is nearer


def test_build_targets_rejects_malformed_targets():
    with pytest.raises(ValueError, match=r"\(M, 6\)"):
        build_targets(FakeHead(), level_shapes(64, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="3 prediction levels"):
        build_targets(FakeHead(), level_shapes(64, 3)[:2], torch.zeros(0, 6))


# ---------------------------------------------------------------- CIoU


def test_ciou_matches_hand_computed_values():
    # Same-shape boxes shifted by half a width: IoU 2/6, centres 1 apart, enclosing 3 x 2 (diagonal^2 13), v = 0.
    shifted = bbox_ciou(torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([[2.0, 1.0, 2.0, 2.0]]))
    assert shifted.item() == pytest.approx(1 / 3 - 1 / 13, abs=1e-6)

    # A 2x2 box inside a 4x2 box sharing the left edge: IoU 0.5, centre distance 1, diagonal^2 20, aspect term.
    v = 4 / math.pi ** 2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    alpha = v / (1 - 0.5 + v)
    expected = 0.5 - 1 / 20 - alpha * v
    aspect = bbox_ciou(torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.tensor([[2.0, 1.0, 4.0, 2.0]]))
    assert aspect.item() == pytest.approx(expected, abs=1e-6)

    same = torch.tensor([[3.0, 4.0, 2.5, 1.5]])
    assert (1 - bbox_ciou(same, same)).item() == pytest.approx(0.0, abs=1e-6)


def test_ciou_is_negative_for_far_apart_boxes():
    far = bbox_ciou(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[10.0, 0.0, 1.0, 1.0]]))
    assert far.item() < 0


def decoded_box(logits: torch.Tensor, cell=(10.0, 7.0), anchor=(1.5, 2.0)) -> torch.Tensor:
    """The loss's decoding of (tx, ty, tw, th) logits in grid units."""
    xy = logits[..., :2].sigmoid() * 2.0 - 0.5 + torch.tensor(cell)
    wh = (logits[..., 2:4].sigmoid() * 2.0) ** 2 * torch.tensor(anchor)
    return torch.cat((xy, wh), dim=-1)


@pytest.mark.parametrize("height_logit", [-10.0, -15.0, -19.0, -30.0, -90.0])
def test_ciou_of_a_collapsed_predicted_box_has_finite_gradients(height_logit):
    # The first real-photo dataset diverged here: a predicted height of 1.65e-8 cell (tw, th = 0.2, -10)
    # vanished when rebuilt from corners, and atan(w / 0) gave NaN gradients for all four logits.
    logits = torch.tensor([[0.0, 0.0, 0.2, height_logit]], requires_grad=True)
    ciou = bbox_ciou(decoded_box(logits), torch.tensor([[10.4, 7.5, 1.2, 1.8]]))
    ciou.sum().backward()
    assert torch.isfinite(ciou).all() and torch.isfinite(logits.grad).all()
    # Nothing overlaps a zero-height box: CIoU is minus the centre term and the aspect term alone.
    centre_term = (0.1**2 + 0.0**2) / (1.2**2 + 1.8**2)
    assert -1.0 < ciou.item() < -centre_term
    assert logits.grad[0, 0] != 0  # the centre still learns


def test_ciou_of_ordinary_boxes_matches_the_corner_formula():
    # torchvision's corner-based CIoU agrees wherever both are well defined.
    from torchvision.ops import complete_box_iou_loss

    from engine.boxes import xywh2xyxy

    generator = torch.Generator().manual_seed(0)
    boxes1 = torch.cat((torch.rand(200, 2, generator=generator) * 8, torch.rand(200, 2, generator=generator) * 4 + 0.1), 1)
    boxes2 = torch.cat((torch.rand(200, 2, generator=generator) * 8, torch.rand(200, 2, generator=generator) * 4 + 0.1), 1)
    reference = 1.0 - complete_box_iou_loss(xywh2xyxy(boxes1), xywh2xyxy(boxes2), reduction="none", eps=1e-7)
    torch.testing.assert_close(bbox_ciou(boxes1, boxes2), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("focal_gamma", [0.0, 1.5])
def test_every_loss_term_is_finite_for_extreme_logits(focal_gamma):
    # Property: random logits of magnitude up to 30 (sigmoid saturates to 0 or 1 in float32) with targets of
    # every size give finite terms and finite gradients, in every term and on every level.
    head = FakeHead(num_classes=4)
    generator = torch.Generator().manual_seed(1)
    loss = YoloLoss(head, {**HYP, "fl_gamma": focal_gamma, "label_smoothing": 0.1}, image_size=64)
    for trial in range(20):
        scale = float(torch.empty(1).uniform_(1, 30, generator=generator))
        predictions = [((torch.rand(shape, generator=generator) * 2 - 1) * scale).requires_grad_()
                       for shape in level_shapes(64, 4, batch=2)]
        # every logit of a few cells pushed to +-30, so whole decoded boxes saturate
        with torch.no_grad():
            for level in predictions:
                level[:, :, :2] = 30.0 * torch.sign(torch.randn(level[:, :, :2].shape, generator=generator))
        count = 12
        sizes = torch.rand(count, 2, generator=generator) * 0.9 + 0.005
        targets = torch.cat((torch.randint(0, 2, (count, 1), generator=generator).float(),
                             torch.randint(0, 4, (count, 1), generator=generator).float(),
                             torch.rand(count, 2, generator=generator), sizes), 1)
        total, items = loss(predictions, targets)
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(items).all(), (trial, items)
        for level, prediction in enumerate(predictions):
            assert torch.isfinite(prediction.grad).all(), (trial, level)


# ---------------------------------------------------------------- YoloLoss


def centred_target_predictions(num_classes: int, batch: int = 2, class_logit: float = 0.0):
    """Zero logits decode to xy = 0.5 (cell centre) and wh = anchor; one target sits exactly there."""
    head = FakeHead(num_classes=num_classes)
    predictions = [torch.zeros(shape) for shape in level_shapes(64, num_classes, batch=batch)]
    for level in predictions:
        level[..., 5:] = class_logit
    targets = torch.tensor([target(0, 1, 3.5, 2.5, 16, 30, grid=8, image_size=64)])
    return head, predictions, targets


def test_loss_equals_hand_computed_value_on_a_perfect_box():
    head, predictions, targets = centred_target_predictions(num_classes=3)
    loss = YoloLoss(head, {**HYP, "anchor_t": 1.2}, image_size=64)
    total, items = loss(predictions, targets)
    # One positive (CIoU 1 -> box loss 0). BCE(0, t) = log 2 for any target, so objectness is
    # log 2 * (4 + 1 + 0.4) and the class term log 2 on the one level with a positive.
    obj_gain = 1.0 * (64 / 640) ** 2
    cls_gain = 0.5 * 3 / 80
    assert items[0].item() == pytest.approx(0.0, abs=1e-6)
    assert items[1].item() == pytest.approx(obj_gain * math.log(2) * 5.4, rel=1e-5)
    assert items[2].item() == pytest.approx(cls_gain * math.log(2), rel=1e-5)
    assert total.ndim == 0
    assert total.item() == pytest.approx(items.sum().item() * 2, rel=1e-6)  # times the batch size


def test_label_smoothing_sets_soft_class_targets():
    eps, logit, num_classes = 0.2, 2.0, 4
    head, predictions, targets = centred_target_predictions(num_classes, class_logit=logit)
    loss = YoloLoss(head, {**HYP, "anchor_t": 1.2, "label_smoothing": eps}, image_size=64)
    _, items = loss(predictions, targets)
    # BCE(l, t) = softplus(l) - t * l; targets 1 - eps/2 for the true class, eps/2 for the others.
    mean_target = ((1 - eps / 2) + (num_classes - 1) * eps / 2) / num_classes
    expected = (F.softplus(torch.tensor(logit)).item() - mean_target * logit) * 0.5 * num_classes / 80
    assert items[2].item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_down_weights_objectness():
    head, predictions, targets = centred_target_predictions(num_classes=3)
    gamma = 1.5
    loss = YoloLoss(head, {**HYP, "anchor_t": 1.2, "fl_gamma": gamma}, image_size=64)
    _, items = loss(predictions, targets)
    # Logit 0 -> p_t = 0.5 everywhere; alpha 0.25 on the single positive cell, 0.75 on the rest.
    per_level = []
    for shape, balance in zip(level_shapes(64, 3, batch=2), (4.0, 1.0, 0.4)):
        cells = shape[0] * shape[1] * shape[2] * shape[3]
        positives = 1 if shape[2] == 8 else 0
        weight = (0.25 * positives + 0.75 * (cells - positives)) / cells
        per_level.append(balance * math.log(2) * weight * 0.5 ** gamma)
    assert items[1].item() == pytest.approx(sum(per_level) * (64 / 640) ** 2, rel=1e-5)


def test_single_class_has_no_class_loss():
    head, predictions, targets = centred_target_predictions(num_classes=1)
    targets[:, 1] = 0
    _, items = YoloLoss(head, HYP, image_size=64)(predictions, targets)
    assert items[2].item() == 0.0 and items[1].item() > 0


def test_gains_follow_levels_classes_and_image_size():
    base = YoloLoss(FakeHead(num_classes=80), HYP, image_size=640)
    assert (base.box_gain, base.cls_gain, base.obj_gain) == pytest.approx((0.05, 0.5, 1.0))
    assert base.balance == [4.0, 1.0, 0.4]

    small = YoloLoss(FakeHead(num_classes=3), HYP, image_size=320)
    assert small.cls_gain == pytest.approx(0.5 * 3 / 80)
    assert small.obj_gain == pytest.approx(0.25)

    five_levels = FakeHead(num_classes=80, anchors_px=DEFAULT_ANCHORS_PX + DEFAULT_ANCHORS_PX[:2],
                           strides=[8.0, 16.0, 32.0, 64.0, 128.0])
    wide = YoloLoss(five_levels, HYP, image_size=1280)
    assert wide.balance == list(LEVEL_BALANCE_MANY)
    assert wide.box_gain == pytest.approx(0.05 * 3 / 5)
    assert wide.obj_gain == pytest.approx(4.0 * 3 / 5)


def test_box_gradient_reaches_exactly_the_assigned_cells():
    head = FakeHead(num_classes=3)
    predictions = [torch.randn(shape, requires_grad=True) for shape in level_shapes(64, 3, batch=2)]
    targets = torch.tensor([
        target(0, 0, 3.3, 2.7, 16, 30, grid=8, image_size=64),
        target(1, 2, 1.6, 6.1, 40, 60, grid=8, image_size=64),
    ])
    loss = YoloLoss(head, HYP, image_size=64)
    total, _ = loss(predictions, targets)
    total.backward()
    assigned = build_targets(head, predictions, targets, anchor_t=4.0)
    for prediction, level in zip(predictions, assigned):
        box_gradient = prediction.grad[..., :4].abs().sum(-1) > 0
        expected = torch.zeros_like(box_gradient)
        expected[level.indices] = True
        assert torch.equal(box_gradient, expected)
        assert (prediction.grad[..., 4] != 0).all()  # objectness is trained on every cell


def test_loss_rejects_wrong_shapes_and_classes():
    head = FakeHead(num_classes=3)
    loss = YoloLoss(head, HYP, image_size=64)
    good = [torch.zeros(shape) for shape in level_shapes(64, 3)]
    with pytest.raises(ValueError, match="level 1"):
        loss([good[0], torch.zeros(1, 3, 4, 4, 9), good[2]], torch.zeros(0, 6))
    with pytest.raises(ValueError, match="3 level tensors"):
        loss(good[:2], torch.zeros(0, 6))
    with pytest.raises(ValueError, match="class ids"):
        loss(good, torch.tensor([[0, 3, 0.5, 0.5, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="image indices"):
        loss(good, torch.tensor([[1, 0, 0.5, 0.5, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="label_smoothing"):
        YoloLoss(head, {"label_smoothing": 1.5})


def test_loss_without_targets_trains_objectness_only():
    head = FakeHead(num_classes=3)
    predictions = [torch.zeros(shape, requires_grad=True) for shape in level_shapes(64, 3)]
    total, items = YoloLoss(head, HYP, image_size=64)(predictions, torch.zeros(0, 6))
    assert items[0].item() == 0 and items[2].item() == 0 and items[1].item() > 0
    total.backward()
    assert predictions[0].grad[..., 4].abs().sum() > 0


def test_loss_under_autocast_is_float32_and_finite():
    head = FakeHead(num_classes=3)
    predictions = [torch.randn(shape).bfloat16() for shape in level_shapes(64, 3, batch=2)]
    targets = torch.tensor([target(1, 2, 1.6, 6.1, 40, 60, grid=8, image_size=64)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, items = YoloLoss(head, HYP, image_size=64)(predictions, targets)
    assert total.dtype == torch.float32 and torch.isfinite(items).all()


class TinyDetector(nn.Module):
    """A few convs whose outputs have the (B, na, H, W, 5 + nc) layout at strides 8, 16 and 32."""

    def __init__(self, num_classes: int, num_anchors: int = 3):
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, num_anchors
        channels = num_anchors * (5 + num_classes)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.SiLU())
        self.downs = nn.ModuleList(nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.SiLU()) for _ in range(3))
        self.outputs = nn.ModuleList(nn.Conv2d(16, channels, 1) for _ in range(3))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        levels = []
        for down, output in zip(self.downs, self.outputs):
            x = down(x)
            y = output(x)
            batch, _, height, width = y.shape
            levels.append(y.view(batch, self.num_anchors, -1, height, width).permute(0, 1, 3, 4, 2).contiguous())
        return levels


def test_loss_decreases_when_training_a_tiny_model_on_a_fixed_batch():
    torch.manual_seed(0)
    head = FakeHead(num_classes=3)
    model = TinyDetector(num_classes=3)
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([
        target(0, 0, 3.3, 2.7, 16, 30, grid=8, image_size=64),
        target(0, 2, 6.2, 5.6, 30, 20, grid=8, image_size=64),
        target(1, 1, 1.6, 6.1, 40, 60, grid=8, image_size=64),
    ])
    loss = YoloLoss(head, HYP, image_size=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        total, items = loss(model(images), targets)
        assert torch.isfinite(items).all() and (items > 0).all()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(items)
    first, last = history[0], history[-1]
    assert last.sum() < 0.75 * first.sum()  # measured about 0.5-0.55 over seeds
    assert (last < first).all()  # box and class terms learn too, not only objectness


def test_loss_on_the_real_yolov5n_model():
    from models.yolo import DetectionModel

    model = DetectionModel("yolov5n.yaml", num_classes=3)
    model.train()
    predictions = model(torch.rand(2, 3, 64, 64))
    targets = torch.tensor([
        target(0, 0, 3.3, 2.7, 16, 30, grid=8, image_size=64),
        target(1, 2, 1.6, 6.1, 40, 60, grid=8, image_size=64),
    ])
    loss = YoloLoss(model.head, HYP, image_size=64)
    total, items = loss(predictions, targets)
    assert torch.isfinite(items).all() and (items > 0).all()
    total.backward()
    assert all(p.grad is not None for p in model.head.parameters())


# ---------------------------------------------------------------- OTA (YOLOv7)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_ota_cost_by_hand():
    """IoU cost 3 * -log(IoU + 1e-8) plus the class cost: BCE of logit(sqrt(sigmoid(cls) * sigmoid(obj)))."""
    targets = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]])  # (1 image, 2 targets, 4)
    candidates = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 6.0, 5.0],
                                [20.0, 20.0, 30.0, 30.0]]])
    logits = torch.tensor([[[1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [0.5, -2.0, 3.0], [0.0, 1.0, 1.0]]])  # obj, c0, c1
    iou, cost = ota_cost(candidates, logits, targets, torch.tensor([[0, 1]]))
    expected_iou = [[1.0, 0.5, 0.3, 0.0], [0.5, 1.0, 0.6, 0.0]]
    torch.testing.assert_close(iou[0], torch.tensor(expected_iou))
    for t, true_class in enumerate((0, 1)):
        for c in range(4):
            obj, *classes = logits[0, c].tolist()
            scores = [math.sqrt(_sigmoid(x) * _sigmoid(obj)) for x in classes]
            class_cost = sum(-math.log(s) if k == true_class else -math.log(1 - s) for k, s in enumerate(scores))
            expected = class_cost + 3.0 * -math.log(expected_iou[t][c] + 1e-8)
            assert cost[0, t, c].item() == pytest.approx(expected, rel=1e-5), (t, c)


def test_ota_dynamic_k_takes_the_lowest_cost_candidates():
    # target 0: IoUs sum to 1.8 -> k = 1; target 1: 2.1 -> k = 2. Costs from IoU alone rank the candidates.
    iou = torch.tensor([[[1.0, 0.5, 0.3, 0.0], [0.5, 1.0, 0.6, 0.0]]])
    cost = -torch.log(iou + 1e-8)
    valid = torch.ones(1, 2, 4, dtype=torch.bool)
    matched, owner = ota_match(iou, cost, valid)
    assert matched[0].tolist() == [True, True, True, False]
    assert owner[0, :3].tolist() == [0, 1, 1]
    # more than 10 candidates: k comes from the best 10 IoUs only
    iou = torch.full((1, 1, 12), 0.25)
    iou[0, 0, 11] = 0.95  # 0.95 + 9 x 0.25 = 3.2 -> k = 3
    matched, _ = ota_match(iou, -torch.log(iou), torch.ones(1, 1, 12, dtype=torch.bool))
    assert int(matched.sum()) == 3 and bool(matched[0, 11])


def test_ota_contested_candidate_goes_to_the_lowest_cost_target():
    """Taken by targets 0 and 1, candidate 0 goes to the target of lowest cost for it over all the image's targets:
    here target 2, which had taken candidate 1 (YOLOv7's rule)."""
    iou = torch.full((1, 3, 3), 0.3)  # k = 1 for every target
    cost = torch.tensor([[[1.0, 5.0, 5.0], [2.0, 5.0, 5.0], [0.5, 0.1, 5.0]]])
    matched, owner = ota_match(iou, cost, torch.ones(1, 3, 3, dtype=torch.bool))
    assert matched[0].tolist() == [True, True, False]
    assert owner[0, :2].tolist() == [2, 2]
    # two targets, one candidate each: the lower cost wins it, the other target has no positive
    matched, owner = ota_match(torch.full((1, 2, 1), 0.5), torch.tensor([[[3.0], [1.0]]]),
                               torch.ones(1, 2, 1, dtype=torch.bool))
    assert matched[0].tolist() == [True] and owner[0].tolist() == [1]


def _random_predictions(batch: int, image_size: int, num_classes: int, seed: int = 0, scale: float = 1.5):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * scale for shape in level_shapes(image_size, num_classes, batch)]


def _positives(assigned, image_offset: int = 0) -> list[tuple]:
    rows = []
    for level, level_targets in enumerate(assigned):
        for i in range(len(level_targets)):
            rows.append((level, int(level_targets.image_index[i]) + image_offset, int(level_targets.anchor_index[i]),
                         int(level_targets.grid_y[i]), int(level_targets.grid_x[i]),
                         int(level_targets.class_ids[i]), *[round(v, 5) for v in level_targets.boxes[i].tolist()]))
    return sorted(rows)


def test_ota_target_without_candidates():
    """A target no anchor fits has no candidates of its own; it may still take one of its image's pool. An image
    whose only target has none gets no positives; no targets at all give empty levels."""
    head = FakeHead()
    predictions = _random_predictions(2, 128, 3)
    thin = [1, 0, 0.5, 0.5, 0.9, 0.004]  # 115 x 0.5 px: no anchor within the ratio 4
    fitting = [0, 1, 0.3, 0.3, 0.2, 0.25]
    assigned = ota_assign(head, predictions, torch.tensor([fitting, thin]))
    assert all(int(level.image_index.max()) == 0 for level in assigned if len(level))
    assert sum(len(level) for level in assigned) > 0
    assert sum(len(level) for level in ota_assign(head, predictions, torch.tensor([thin]))) == 0
    assert sum(len(level) for level in ota_assign(head, predictions, torch.zeros(0, 6))) == 0
    # the thin target shares image 0 with a fitting one: it may claim from the pool, and the loss stays finite
    both = torch.tensor([fitting, [0, 2, 0.35, 0.3, 0.9, 0.004]])
    loss, _ = OtaLoss(head, HYP, image_size=128)([p.requires_grad_() for p in predictions], both)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in predictions)


def test_ota_batch_equals_each_image_alone():
    """Padding the images to one batch changes nothing: each image's positives are those it gets alone."""
    head = FakeHead()
    generator = torch.Generator().manual_seed(1)
    rows = []
    for image, count in enumerate((5, 1, 9)):
        boxes = torch.rand(count, 4, generator=generator) * torch.tensor([0.8, 0.8, 0.4, 0.4]) + \
            torch.tensor([0.1, 0.1, 0.03, 0.03])
        classes = torch.randint(0, 3, (count, 1), generator=generator).float()
        rows.append(torch.cat((torch.full((count, 1), float(image)), classes, boxes), 1))
    targets = torch.cat(rows)
    predictions = _random_predictions(3, 128, 3, seed=2)
    together = _positives(ota_assign(head, predictions, targets))
    alone = []
    for image in range(3):
        mine = targets[targets[:, 0] == image].clone()
        mine[:, 0] = 0
        alone += _positives(ota_assign(head, [p[image:image + 1] for p in predictions], mine), image_offset=image)
    assert together == sorted(alone) and len(together) > 0


def test_build_loss_follows_loss_ota():
    head = FakeHead()
    predictions = _random_predictions(2, 128, 3, seed=3)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.3], [1, 2, 0.3, 0.6, 0.1, 0.1]])
    reference = YoloLoss(head, HYP, image_size=128)(predictions, targets)
    for hyp in (HYP, {**HYP, "loss_ota": 0}):
        loss = build_loss(head, hyp, image_size=128)
        assert type(loss) is YoloLoss
        total, items = loss(predictions, targets)
        assert torch.equal(total, reference[0]) and torch.equal(items, reference[1])
    assert isinstance(build_loss(head, {**HYP, "loss_ota": 1}, image_size=128), OtaLoss)
    with pytest.raises(UsageError, match="loss_ota"):
        build_loss(head, {**HYP, "loss_ota": 2})
