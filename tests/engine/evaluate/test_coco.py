"""COCO export and pycocotools evaluation, and agreement of DetectionMetrics with COCOeval."""
import logging
import sys

import numpy as np
import pytest
import torch

from engine.boxes import xywhn2xyxy
from engine.evaluate.coco import (assign_image_ids, evaluate_coco, load_json, predictions_to_coco, save_json,
                                  yolo_to_coco_gt)
from engine.evaluate.metrics import DetectionMetrics

NAMES = ["car", "person", "sign"]


def test_image_ids_numeric_stems_and_mixed():
    assert assign_image_ids(["a/007.jpg", "b/12.png", "3.jpg"]) == {"007": 7, "12": 12, "3": 3}
    # non-numeric stems are numbered after the largest numeric id, in list order
    assert assign_image_ids(["x.jpg", "5.jpg", "y.jpg"]) == {"x": 6, "5": 5, "y": 7}
    assert assign_image_ids(["x.jpg", "y.jpg"]) == {"x": 0, "y": 1}


def test_image_ids_reject_collisions():
    with pytest.raises(ValueError, match=r"a/img\.jpg and b/img\.png share 'img'"):
        assign_image_ids(["a/img.jpg", "b/img.png"])
    with pytest.raises(ValueError, match="would both get COCO image id 7"):
        assign_image_ids(["007.jpg", "7.png"])


def test_ground_truth_conversion():
    labels = [np.array([[1, 0.5, 0.5, 0.2, 0.4], [0, 0.1, 0.2, 0.2, 0.2]]), np.zeros((0, 5))]
    gt, ids = yolo_to_coco_gt(["d/42.jpg", "d/street.jpg"], labels, [(100, 200), (50, 60)], NAMES)
    assert ids == {"42": 42, "street": 43}
    assert gt["images"] == [
        {"id": 42, "file_name": "42.jpg", "height": 100, "width": 200},
        {"id": 43, "file_name": "street.jpg", "height": 50, "width": 60},
    ]
    first, second = gt["annotations"]
    assert first["id"] == 1 and second["id"] == 2  # COCOeval needs ids > 0
    assert first["image_id"] == 42 and first["category_id"] == 1 and first["iscrowd"] == 0
    np.testing.assert_allclose(first["bbox"], [80.0, 30.0, 40.0, 40.0])
    assert first["area"] == pytest.approx(1600.0)
    np.testing.assert_allclose(second["bbox"], [0.0, 10.0, 40.0, 20.0], atol=1e-9)
    assert gt["categories"] == [{"id": 0, "name": "car"}, {"id": 1, "name": "person"}, {"id": 2, "name": "sign"}]


def test_ground_truth_conversion_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"bad\.jpg has class ids \[3\.0\]"):
        yolo_to_coco_gt(["bad.jpg"], [np.array([[3, 0.5, 0.5, 0.1, 0.1]])], [(10, 10)], NAMES)
    with pytest.raises(ValueError, match=r"labels of bad\.jpg have shape \(1, 4\)"):
        yolo_to_coco_gt(["bad.jpg"], [np.array([[0, 0.5, 0.5, 0.1]])], [(10, 10)], NAMES)
    with pytest.raises(ValueError, match="invalid shape"):
        yolo_to_coco_gt(["bad.jpg"], [np.zeros((0, 5))], [(0, 10)], NAMES)
    with pytest.raises(ValueError, match="must correspond"):
        yolo_to_coco_gt(["a.jpg", "b.jpg"], [np.zeros((0, 5))], [(10, 10)], NAMES)


def test_predictions_to_coco_records():
    detections = torch.tensor([[10.12345, 20.0, 50.0, 80.5, 0.9876543, 2.0]])
    records = predictions_to_coco([detections, torch.zeros(0, 6)], [7, 8])
    assert records == [{"image_id": 7, "category_id": 2, "bbox": [10.123, 20.0, 39.877, 60.5], "score": 0.98765}]
    with pytest.raises(ValueError, match=r"image 3 have shape \(1, 5\)"):
        predictions_to_coco([np.zeros((1, 5))], [3])


def make_fixture(seed: int, duplicate_rate: float, num_images: int = 30, num_classes: int = 3):
    """Random ground truth and predictions: jittered boxes (some with a wrong class), misses, false
    positives and, with ``duplicate_rate``, second detections of the same box with an unrelated score."""
    rng = np.random.default_rng(seed)
    files, labels, shapes, detections = [], [], [], []
    for index in range(num_images):
        height, width = int(rng.integers(300, 700)), int(rng.integers(300, 700))
        count = int(rng.integers(0, 12))
        sizes = rng.uniform(0.03, 0.4, (count, 2))
        centres = rng.uniform(sizes / 2, 1 - sizes / 2)
        image_labels = np.concatenate([rng.integers(0, num_classes, (count, 1)), centres, sizes], axis=1)
        corners = xywhn2xyxy(image_labels[:, 1:], width, height)
        rows = []
        for class_id, box in zip(image_labels[:, 0], corners):
            if rng.random() < 0.15:
                continue  # missed
            scale = np.tile(box[2:] - box[:2], 2)
            predicted_class = class_id if rng.random() > 0.1 else rng.integers(0, num_classes)
            rows.append([*(box + rng.normal(0, 0.08, 4) * scale), rng.uniform(0.05, 1), predicted_class])
            if rng.random() < duplicate_rate:
                rows.append([*(box + rng.normal(0, 0.1, 4) * scale), rng.uniform(0.01, 1), predicted_class])
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
            rows.append([x, y, x + rng.uniform(10, 150), y + rng.uniform(10, 150), rng.uniform(0.01, 0.9),
                         rng.integers(0, num_classes)])
        image_detections = np.array(rows, dtype=np.float64).reshape(-1, 6)
        image_detections[:, [0, 2]] = image_detections[:, [0, 2]].clip(0, width)
        image_detections[:, [1, 3]] = image_detections[:, [1, 3]].clip(0, height)
        assert len(image_detections) <= 100  # COCOeval keeps at most 100 per image and class
        files.append(f"{index:03d}.jpg" if index % 3 else f"frame_{index}.jpg")
        labels.append(image_labels)
        shapes.append((height, width))
        detections.append(image_detections)
    return files, labels, shapes, detections


def ours_and_coco(fixture, match_by: str = "score"):
    files, labels, shapes, detections = fixture
    gt, ids = yolo_to_coco_gt(files, labels, shapes, NAMES)
    image_ids = [ids[file.split(".")[0]] for file in files]
    coco = evaluate_coco(gt, predictions_to_coco(detections, image_ids))
    metrics = DetectionMetrics(len(NAMES), NAMES, match_by=match_by)
    for image_labels, (height, width), image_detections in zip(labels, shapes, detections):
        boxes = xywhn2xyxy(image_labels[:, 1:], width, height)
        pixel_labels = torch.tensor(np.concatenate([image_labels[:, :1], boxes], axis=1), dtype=torch.float32)
        metrics.update([torch.tensor(image_detections, dtype=torch.float32)], [pixel_labels])
    return metrics.compute(), coco


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocotools(seed):
    ours, coco = ours_and_coco(make_fixture(seed, duplicate_rate=0.0))
    assert 0.1 < coco["map"] < 0.9  # a fixture that is neither trivial nor hopeless
    assert ours["map"] == pytest.approx(coco["map"], abs=0.005)
    assert ours["map50"] == pytest.approx(coco["map50"], abs=0.005)


@pytest.mark.parametrize("seed", [0, 1])
def test_duplicates_coco_rule_agrees_yolov5_rule_is_lower(seed):
    """With competing detections the matching rule matters: COCOeval gives the box to the most confident
    detection, YOLOv5's rule to the best-placed one. The default (match_by="score") reproduces COCOeval, as
    the trainer and val.py report it; the "iou" rule ranks some true positives below false positives here,
    so its AP is lower."""
    fixture = make_fixture(seed, duplicate_rate=0.3)
    by_score, coco = ours_and_coco(fixture, match_by=DetectionMetrics(1).match_by)
    assert by_score["map"] == pytest.approx(coco["map"], abs=0.005)
    assert by_score["map50"] == pytest.approx(coco["map50"], abs=0.005)
    by_iou, _ = ours_and_coco(fixture, match_by="iou")
    assert by_iou["map50"] < coco["map50"] - 0.005


def test_perfect_predictions_score_one():
    files, labels, shapes, _ = make_fixture(5, duplicate_rate=0.0, num_images=5)
    gt, ids = yolo_to_coco_gt(files, labels, shapes, NAMES)
    perfect = [
        np.concatenate([xywhn2xyxy(lab[:, 1:], w, h), np.full((len(lab), 1), 0.9), lab[:, :1]], axis=1)
        for lab, (h, w) in zip(labels, shapes)
    ]
    result = evaluate_coco(gt, predictions_to_coco(perfect, [ids[f.split(".")[0]] for f in files]))
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert len(result["stats"]) == 12


def test_json_round_trip(tmp_path, caplog, capsys):
    files, labels, shapes, detections = make_fixture(7, duplicate_rate=0.0, num_images=6)
    gt, ids = yolo_to_coco_gt(files, labels, shapes, NAMES)
    predictions = predictions_to_coco(detections, [ids[f.split(".")[0]] for f in files])
    gt_path = save_json(gt, tmp_path / "nested" / "gt.json")
    predictions_path = save_json(predictions, tmp_path / "predictions.json")

    loaded_gt, loaded_predictions = load_json(gt_path), load_json(predictions_path)
    # files frame_0, 001, 002, frame_3, 004, 005: numeric stems keep their value, the others follow
    assert [image["id"] for image in loaded_gt["images"]] == [6, 1, 2, 7, 4, 5]
    assert all(isinstance(record["image_id"], int) for record in loaded_predictions)
    assert loaded_predictions[0]["bbox"] == predictions[0]["bbox"]
    x, y, w, h = loaded_predictions[0]["bbox"]
    first = detections[0][0]
    np.testing.assert_allclose([x, y, x + w, y + h], first[:4], atol=2e-3)

    with caplog.at_level(logging.INFO, logger="engine.evaluate.coco"):
        from_files = evaluate_coco(gt_path, predictions_path)
    from_objects = evaluate_coco(gt, predictions)
    assert from_files == from_objects
    assert "Average Precision" in caplog.text  # pycocotools' summary went to the log ...
    assert "Average Precision" not in capsys.readouterr().out  # ... not to stdout
    # the caller's objects were not modified by pycocotools
    assert set(predictions[0]) == {"image_id", "category_id", "bbox", "score"}
    assert "ignore" not in gt["annotations"][0]


def test_evaluate_coco_errors(tmp_path, caplog):
    gt, _ = yolo_to_coco_gt(["1.jpg"], [np.array([[0, 0.5, 0.5, 0.2, 0.2]])], [(100, 100)], NAMES)
    record = {"image_id": 99, "category_id": 0, "bbox": [40, 40, 20, 20], "score": 0.9}
    with pytest.raises(ValueError, match=r"image ids absent from ground-truth dict: \[99\]"):
        evaluate_coco(gt, [record])
    with pytest.raises(ValueError, match=r"record 0 lacks \['score'\]"):
        evaluate_coco(gt, [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1]}])
    with caplog.at_level(logging.WARNING):
        assert evaluate_coco(gt, [])["map"] == 0.0
    assert "no predictions" in caplog.text

    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  1,\n  oops]}')
    with pytest.raises(ValueError, match=r"broken\.json: line 3, column 3: invalid JSON"):
        evaluate_coco(broken, [record])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_coco(tmp_path / "missing.json", [record])
    with pytest.raises(ValueError, match="no 'annotations' list"):
        evaluate_coco({"images": []}, [record])


def test_missing_pycocotools_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install 'pycocotools"):
        evaluate_coco({"images": [], "annotations": [], "categories": []}, [])
