"""Augmentation geometry: letterbox round trips, mosaic/affine/flip boxes that match the pixels."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from engine.boxes import scale_boxes, xywhn2xyxy
from engine.data.augment import (augment_hsv, augmentation_hyp, box_candidates, letterbox, mixup, mosaic4,
                                 random_perspective)
from engine.data.dataset import YoloDataset

BACKGROUND = (60, 60, 60)
# One pure colour per source image (BGR), far from the background and from the gray 114 padding.
COLORS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]
# Per image: (width, height, list of boxes x1, y1, x2, y2 in pixels).
LAYOUTS = [(320, 240, [(40, 50, 200, 170)]),
           (200, 300, [(10, 20, 90, 280)]),
           (320, 320, [(150, 150, 310, 300), (20, 30, 60, 90)]),
           (256, 160, [(100, 10, 250, 150)])]


def colour_region_box(image_bgr: np.ndarray, color: tuple[int, int, int]) -> list[np.ndarray]:
    """Bounding boxes (xyxy, exclusive end) of the connected regions close to ``color``."""
    distance = np.linalg.norm(image_bgr.astype(np.float32) - np.array(color, np.float32), axis=2)
    mask = (distance < 90).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [np.array([x, y, x + w, y + h], np.float32) for x, y, w, h, area in stats[1:count] if area >= 4]


@pytest.fixture()
def coloured_dataset(tmp_path):
    """Four plain images, each with filled boxes of its own unique colour; the class id = colour index."""
    image_dir, label_dir = tmp_path / "images", tmp_path / "labels"
    image_dir.mkdir()
    label_dir.mkdir()
    for index, (width, height, boxes) in enumerate(LAYOUTS):
        image = np.full((height, width, 3), BACKGROUND, np.uint8)
        rows = []
        for x1, y1, x2, y2 in boxes:
            image[y1:y2, x1:x2] = COLORS[index]
            rows.append(f"{index} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} "
                        f"{(x2 - x1) / width} {(y2 - y1) / height}\n")
        cv2.imwrite(str(image_dir / f"{index}.png"), image)
        (label_dir / f"{index}.txt").write_text("".join(rows))
    return image_dir


@pytest.mark.parametrize("mosaic", [1.0, 0.0])
def test_augmented_boxes_tightly_cover_their_coloured_regions(coloured_dataset, mosaic):
    hyp = {"mosaic": mosaic, "mixup": 0.0, "degrees": 0.0, "shear": 0.0, "perspective": 0.0,
           "translate": 0.2, "scale": 0.5, "fliplr": 0.5, "flipud": 0.5,
           "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
    dataset = YoloDataset(coloured_dataset, imgsz=256, batch_size=4, augment=True, hyp=hyp, num_classes=4)
    random.seed(0)
    np.random.seed(0)
    checked = 0
    for trial in range(24):
        image_rgb, targets, _, shapes = dataset[trial % len(dataset)]
        assert tuple(image_rgb.shape) == (3, 256, 256)
        assert (shapes is None) == (mosaic == 1.0)
        image_bgr = image_rgb.numpy().transpose(1, 2, 0)[..., ::-1]
        boxes = xywhn2xyxy(targets[:, 2:].numpy(), 256, 256)
        for class_id, box in zip(targets[:, 1].long().tolist(), boxes):
            regions = colour_region_box(image_bgr, COLORS[class_id])
            assert regions, f"trial {trial}: a class-{class_id} label but no class-{class_id} pixels"
            error = min(np.abs(region - box).max() for region in regions)
            assert error <= 3.0, f"trial {trial}: label box {box} is {error:.1f} px off the coloured region"
            checked += 1
    assert checked >= 24  # the check above ran on many boxes, not on empty label sets


def test_letterbox_round_trips_coordinates_through_scale_boxes():
    original = np.full((300, 500, 3), BACKGROUND, np.uint8)
    box = np.array([[120.0, 40.0, 380.0, 220.0]])
    original[40:220, 120:380] = COLORS[0]
    image, ratio, pad = letterbox(original, 320)
    assert image.shape == (320, 320, 3)
    assert ratio == pytest.approx((0.64, 0.64))
    assert pad == (0, 64)  # 300 x 0.64 = 192 rows, 128 rows of padding split evenly
    assert (image[:64] == 114).all() and (image[-64:] == 114).all()

    forward = box * ratio[0] + [pad[0], pad[1], pad[0], pad[1]]
    pixel_regions = colour_region_box(image, COLORS[0])
    assert len(pixel_regions) == 1 and np.abs(pixel_regions[0] - forward[0]).max() <= 1.0

    back = scale_boxes(forward.copy(), image.shape[:2], original.shape[:2], ratio_pad=(ratio, pad))
    np.testing.assert_allclose(back, box, atol=1e-6)
    recomputed = scale_boxes(forward.copy(), image.shape[:2], original.shape[:2])
    np.testing.assert_allclose(recomputed, box, atol=1.0)


def test_letterbox_auto_pads_to_a_stride_multiple_and_scaleup_false_keeps_small_images():
    small = np.zeros((100, 150, 3), np.uint8)
    image, ratio, pad = letterbox(small, 320, auto=True, stride=32)
    assert image.shape[0] % 32 == 0 and image.shape[1] % 32 == 0
    assert image.shape[:2] == (224, 320) and ratio[0] == pytest.approx(320 / 150)
    kept, ratio, pad = letterbox(small, 320, scaleup=False)
    assert ratio == (1.0, 1.0) and kept.shape == (320, 320, 3) and pad == (85, 110)


def test_rotation_keeps_objects_inside_their_transformed_boxes():
    random.seed(3)
    image = np.full((200, 200, 3), BACKGROUND, np.uint8)
    image[60:140, 80:120] = COLORS[1]
    boxes = np.array([[1, 80, 60, 120, 140]], np.float32)
    warped, new_boxes = random_perspective(image, boxes, degrees=30, translate=0.0, scale=0.0, shear=5)
    region = colour_region_box(warped, COLORS[1])[0]
    x1, y1, x2, y2 = new_boxes[0, 1:]
    # The corners' enclosing box contains the rotated region (never cuts it).
    assert x1 <= region[0] + 1 and y1 <= region[1] + 1 and x2 >= region[2] - 1 and y2 >= region[3] - 1


def test_box_candidates_drops_tiny_sliver_and_mostly_cut_boxes():
    before = np.array([[0, 0, 100, 100]] * 3 + [[0, 0, 400, 3.5]] * 2, np.float32)
    after = np.array([[0, 0, 80, 90],      # kept
                      [0, 0, 2, 50],       # 2 px wide: too thin
                      [0, 0, 20, 30],      # 6 % of the area left
                      [0, 0, 400, 3.5],    # aspect ratio 114: a sliver (YOLOv5's limit is 100)
                      [0, 0, 340, 3.5]],   # aspect ratio 97: kept
                     np.float32)
    assert box_candidates(before, after).tolist() == [True, False, False, False, True]


def test_mosaic4_places_images_around_the_centre_and_moves_boxes():
    images = [np.full((100, 80, 3), value, np.uint8) for value in (10, 20, 30, 40)]
    boxes = [np.array([[k, 0, 0, 80, 100]], np.float32) for k in range(4)]
    canvas, moved = mosaic4(images, boxes, size=128, center=(128, 128))
    assert canvas.shape == (256, 256, 3)
    assert canvas[127, 127, 0] == 10 and canvas[127, 128, 0] == 20
    assert canvas[128, 127, 0] == 30 and canvas[128, 128, 0] == 40
    assert canvas[0, 0, 0] == 114  # outside the four images: padding
    np.testing.assert_allclose(moved[:, 1:], [[48, 28, 128, 128], [128, 28, 208, 128],
                                              [48, 128, 128, 228], [128, 128, 208, 228]])


def test_hsv_mixup_and_hyp_defaults():
    np.random.seed(0)
    image = np.random.randint(0, 255, (32, 32, 3), np.uint8)
    untouched = image.copy()
    augment_hsv(image, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(image, untouched)
    augment_hsv(image, 0.015, 0.7, 0.4)
    assert image.shape == (32, 32, 3) and not np.array_equal(image, untouched)

    blended, boxes = mixup(np.zeros((8, 8, 3), np.uint8), np.ones((2, 5), np.float32),
                           np.full((8, 8, 3), 200, np.uint8), np.zeros((1, 5), np.float32))
    assert len(boxes) == 3 and 60 < blended.mean() < 140

    merged = augmentation_hyp({"mosaic": 0.5, "lr0": 0.1})
    assert merged["mosaic"] == 0.5 and merged["fliplr"] == 0.5 and "lr0" not in merged
    with pytest.raises(ValueError, match="scale"):
        augmentation_hyp({"scale": "big"})
