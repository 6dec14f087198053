"""Tests for engine/train/autoanchor.py: fitness metrics, k-means + evolution, and the anchor checks on a head."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.train.autoanchor import (_FitnessOfAnchors, anchor_fitness_metrics, check_anchor_order, check_anchors,
                                     dataset_box_sizes, kmean_anchors)
from helpers import DEFAULT_ANCHORS_PX, FakeHead


def synthetic_dataset(box_sizes_px: np.ndarray, image_size: int = 640, seed: int = 0, boxes_per_image: int = 4):
    """Square images of ``image_size`` holding the given pixel box sizes as normalised labels."""
    rng = np.random.default_rng(seed)
    labels = []
    for start in range(0, len(box_sizes_px), boxes_per_image):
        sizes = box_sizes_px[start:start + boxes_per_image] / image_size
        centres = rng.uniform(0.3, 0.7, size=(len(sizes), 2))
        classes = np.zeros((len(sizes), 1))
        labels.append(np.concatenate([classes, centres, sizes], axis=1))
    return SimpleNamespace(labels=labels, image_sizes=np.full((len(labels), 2), image_size))


def sizes_around(anchors_px: np.ndarray, count: int, spread: float = 0.15, seed: int = 0) -> np.ndarray:
    """Box sizes scattered (log-normally, +-15 %) around the given anchors."""
    rng = np.random.default_rng(seed)
    chosen = anchors_px[rng.integers(len(anchors_px), size=count)]
    return chosen * np.exp(rng.normal(0.0, spread, size=chosen.shape))


def test_fitness_metrics_on_a_hand_computed_case():
    # Ratios to the single 10 x 10 anchor: 1, 1/3 (inside 1/4) and 1/5 (outside).
    recall, above = anchor_fitness_metrics(np.array([[10.0, 10.0]]), np.array([[10, 10], [30, 30], [50, 50]]), 4.0)
    assert recall == pytest.approx(2 / 3)
    assert above == pytest.approx(2 / 3)
    # A box needs both sides within the threshold: 10 x 50 fails on its height.
    recall, _ = anchor_fitness_metrics(np.array([[10.0, 10.0]]), np.array([[10, 50]]), 4.0)
    assert recall == 0.0


def test_well_fitting_anchors_have_full_recall():
    anchors = np.array(DEFAULT_ANCHORS_PX, dtype=np.float64).reshape(-1, 2)
    recall, above = anchor_fitness_metrics(anchors, sizes_around(anchors, 500), 4.0)
    assert recall == pytest.approx(1.0)
    assert above > 1.0


def test_kmean_anchors_fit_clustered_sizes_and_sort_by_area():
    centres = np.array([[20, 20], [60, 30], [30, 90], [150, 200]], dtype=np.float64)
    sizes = sizes_around(centres, 2000, spread=0.1)
    anchors = kmean_anchors(sizes, num_anchors=4, thr=4.0, generations=300, seed=0)
    assert anchors.shape == (4, 2) and anchors.dtype == np.float32
    areas = anchors.prod(axis=1)
    assert (np.diff(areas) >= 0).all()
    # Each fitted anchor lies within 25 % of one true cluster centre.
    for centre in centres:
        closest = np.abs(np.log(anchors / centre)).max(axis=1).min()
        assert closest < np.log(1.25)
    recall, _ = anchor_fitness_metrics(anchors, sizes, 4.0)
    assert recall == pytest.approx(1.0)
    assert np.array_equal(anchors, kmean_anchors(sizes, num_anchors=4, thr=4.0, generations=300, seed=0))


def test_evolution_improves_on_plain_kmeans():
    rng = np.random.default_rng(3)
    sizes = np.exp(rng.normal(np.log(60), 0.9, size=(3000, 2)))
    fitness = _FitnessOfAnchors(sizes, 4.0)
    no_evolution = kmean_anchors(sizes, 9, generations=0, seed=0)
    evolved = kmean_anchors(sizes, 9, generations=500, seed=0)
    assert fitness(evolved) > fitness(no_evolution)


def test_kmean_anchors_rejects_too_few_boxes():
    with pytest.raises(ValueError, match="at least 9 label boxes"):
        kmean_anchors(np.array([[10.0, 10.0], [1.0, 1.0]]), num_anchors=9)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        kmean_anchors(np.zeros((5, 3)))


def test_dataset_box_sizes_scale_the_long_side_to_image_size():
    labels = [np.array([[0, 0.5, 0.5, 0.1, 0.2]]), np.array([[1, 0.5, 0.5, 0.5, 0.5]])]
    dataset = SimpleNamespace(labels=labels, image_sizes=np.array([[1000, 500], [320, 640]]))
    sizes = dataset_box_sizes(dataset, image_size=640)
    # Image 0 becomes 640 x 320: the box is 64 x 64 before the 0.9-1.1 jitter (one factor per image).
    assert sizes[0, 0] == pytest.approx(sizes[0, 1])
    assert 64 * 0.9 <= sizes[0, 0] <= 64 * 1.1
    # Image 1 becomes 320 x 640: the box is 160 x 320.
    assert sizes[1, 1] / sizes[1, 0] == pytest.approx(2.0)
    assert 320 * 0.9 <= sizes[1, 1] <= 320 * 1.1
    assert np.array_equal(sizes, dataset_box_sizes(dataset, image_size=640))


def test_dataset_box_sizes_reports_bad_labels():
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        dataset_box_sizes(SimpleNamespace(labels=[np.zeros((1, 5)), np.zeros((2, 4))], image_sizes=[[10, 10]] * 2))
    with pytest.raises(ValueError, match="2 entries"):
        dataset_box_sizes(SimpleNamespace(labels=[np.zeros((1, 5))] * 2, image_sizes=[[10, 10]]))


def test_check_anchors_leaves_good_anchors_untouched(caplog):
    head = FakeHead()
    before = head.anchors.clone()
    pixels = np.array(DEFAULT_ANCHORS_PX, dtype=np.float64).reshape(-1, 2)
    dataset = synthetic_dataset(sizes_around(pixels, 600))
    with caplog.at_level(logging.INFO, logger="engine.train.autoanchor"):
        changed = check_anchors(dataset, head, thr=4.0, image_size=640)
    assert changed is False
    assert torch.equal(head.anchors, before)
    assert "good fit" in caplog.text and "best possible recall" in caplog.text


def test_check_anchors_replaces_badly_scaled_anchors_in_place():
    head = FakeHead()
    with torch.no_grad():
        head.anchors.fill_(0.5)  # 4-16 px squares, far too small for the boxes below
    buffer, dtype = head.anchors.data_ptr(), head.anchors.dtype
    true_sizes = np.array([[90, 60], [140, 150], [200, 110], [260, 300], [380, 240], [500, 520]], dtype=np.float64)
    dataset = synthetic_dataset(sizes_around(true_sizes, 900))
    sizes = dataset_box_sizes(dataset, image_size=640)
    old_recall, _ = anchor_fitness_metrics((head.anchors * head.stride.view(-1, 1, 1)).view(-1, 2), sizes, 4.0)
    assert old_recall < 0.5

    assert check_anchors(dataset, head, thr=4.0, image_size=640) is True
    assert head.anchors.data_ptr() == buffer and head.anchors.dtype == dtype
    new_pixels = (head.anchors * head.stride.view(-1, 1, 1)).view(-1, 2)
    new_recall, _ = anchor_fitness_metrics(new_pixels, sizes, 4.0)
    assert new_recall > 0.98
    areas = new_pixels.prod(dim=1)
    assert (areas[1:] >= areas[:-1]).all()  # smallest anchors on the finest level


def test_check_anchors_without_labels_changes_nothing():
    head = FakeHead()
    before = head.anchors.clone()
    dataset = SimpleNamespace(labels=[np.zeros((0, 5))], image_sizes=np.array([[640, 480]]))
    assert check_anchors(dataset, head) is False
    assert torch.equal(head.anchors, before)


def test_check_anchor_order_flips_a_reversed_set():
    correct = FakeHead()
    reversed_head = FakeHead(anchors_px=DEFAULT_ANCHORS_PX[::-1])
    assert check_anchor_order(reversed_head) is True
    assert torch.allclose(reversed_head.anchors, correct.anchors)
    assert check_anchor_order(correct) is False
    assert torch.allclose(correct.anchors, FakeHead().anchors)


def test_check_anchors_updates_the_real_detect_head_and_its_decoding():
    from models.yolo import DetectionModel

    model = DetectionModel("yolov5n.yaml", num_classes=3)
    head = model.head
    model.eval()
    image = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        before = model(image)[0]
    old_pixels = head.anchors_pixels().clone()
    # Thin boxes (10:1) fit none of the default anchors.
    true_sizes = np.array([[20, 200], [200, 20], [40, 400], [400, 40], [60, 600], [600, 60]], dtype=np.float64)
    dataset = synthetic_dataset(sizes_around(true_sizes, 600))
    assert check_anchors(dataset, head, thr=4.0, image_size=640) is True
    with torch.no_grad():
        after = model(image)[0]
    # Same weights and input: decoded sizes change exactly by new anchor / old anchor, per level and anchor,
    # so the head's eval decoding must have picked up the new buffer.
    ratio = head.anchors_pixels() / old_pixels
    cells = [(64 // int(stride)) ** 2 for stride in head.stride.tolist()]
    expected = torch.cat([r.view(1, -1, 1, 2).expand(1, -1, n, 2).reshape(1, -1, 2) for r, n in zip(ratio, cells)], 1)
    assert torch.allclose(after[..., 2:4] / before[..., 2:4], expected, rtol=1e-4)
