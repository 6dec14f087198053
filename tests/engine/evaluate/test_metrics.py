"""Matching, AP, the DetectionMetrics accumulator, the confusion matrix and the metric plots, with known answers."""
import logging

import numpy as np
import pytest
import torch
import torchvision

from engine.evaluate import plots as metric_plots
from engine.evaluate.metrics import (CONFIDENCE_POINTS, IOU_THRESHOLDS, RECALL_POINTS, ConfusionMatrix,
                                     DetectionMetrics, ap_per_class, box_iou, compute_ap, fitness, match_predictions)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def detection(box, conf, class_id):
    return [*box, conf, class_id]


def tensor(rows, columns):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, columns)


def test_box_iou_is_torchvisions():
    assert box_iou is torchvision.ops.box_iou
    assert box_iou(tensor([[0, 0, 10, 10]], 4), tensor([[5, 0, 15, 10]], 4)).item() == pytest.approx(50 / 150)


def test_iou_thresholds():
    torch.testing.assert_close(IOU_THRESHOLDS, torch.tensor([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]))


def test_iou_07_is_true_positive_up_to_07():
    labels = tensor([[0, 0, 0, 100, 100]], 5)
    detections = tensor([detection([0, 0, 70, 100], 0.9, 0)], 6)  # IoU exactly 0.7
    correct = match_predictions(detections, labels)
    assert correct.dtype == torch.bool and correct.shape == (1, 10)
    assert correct[0].tolist() == [True] * 5 + [False] * 5


def test_class_mismatch_is_false_positive():
    labels = tensor([[1, 0, 0, 100, 100]], 5)
    detections = tensor([detection([0, 0, 100, 100], 0.9, 0)], 6)
    assert not match_predictions(detections, labels).any()


def test_duplicates_are_false_positives():
    labels = tensor([[0, 0, 0, 100, 100]], 5)
    detections = tensor([
        detection([0, 0, 100, 100], 0.9, 0),
        detection([0, 0, 100, 100], 0.8, 0),
        detection([0, 0, 100, 100], 0.7, 0),
    ], 6)
    correct = match_predictions(detections, labels)
    assert correct.sum(dim=0).tolist() == [1] * 10
    assert correct[0].all()


@pytest.mark.parametrize("match_by, winner", [("iou", 1), ("score", 0)])
def test_competing_detections_rule(match_by, winner):
    # the confident box is worse placed (IoU 0.6) than the second one (IoU 0.9)
    labels = tensor([[0, 0, 0, 100, 100]], 5)
    detections = tensor([detection([0, 0, 60, 100], 0.9, 0), detection([0, 0, 90, 100], 0.5, 0)], 6)
    correct = match_predictions(detections, labels, match_by=match_by)
    assert correct[winner, 0] and not correct[1 - winner, 0]
    # at IoU 0.65..0.9 only the well-placed box qualifies, under both rules
    assert correct[1, 3:9].all() and not correct[0, 3:].any()


@pytest.mark.parametrize("match_by", ["iou", "score"])
def test_each_label_matched_once_with_two_labels(match_by):
    labels = tensor([[0, 0, 0, 100, 100], [0, 200, 0, 300, 100]], 5)
    detections = tensor([
        detection([0, 0, 100, 100], 0.5, 0),
        detection([200, 0, 300, 100], 0.6, 0),
        detection([5, 0, 100, 100], 0.7, 0),
    ], 6)
    correct = match_predictions(detections, labels, match_by=match_by)
    assert correct[:, 0].sum() == 2
    assert correct[1, 0]


def test_match_predictions_empty_and_bad_rule():
    assert match_predictions(torch.zeros(0, 6), tensor([[0, 0, 0, 1, 1]], 5)).shape == (0, 10)
    assert not match_predictions(tensor([detection([0, 0, 1, 1], 0.5, 0)], 6), torch.zeros(0, 5)).any()
    with pytest.raises(ValueError, match="match_by"):
        match_predictions(torch.zeros(0, 6), torch.zeros(0, 5), match_by="area")
    with pytest.raises(ValueError, match=r"expected shape \(k, 6\)"):
        match_predictions(torch.zeros(2, 5), torch.zeros(0, 5))


def test_hand_computed_101_point_ap():
    # 3 ground-truth boxes; ranked detections TP FP TP FP FP TP
    tp = np.array([1, 0, 1, 0, 0, 1], dtype=bool)[:, None]
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    result = ap_per_class(tp, conf, np.zeros(6), np.zeros(3))
    # precision 1, 1/2, 2/3, 1/2, 2/5, 1/2 at recall 1/3, 1/3, 2/3, 2/3, 2/3, 1; envelope 1, 2/3, 2/3, 1/2, 1/2, 1/2.
    # recall points 0.00..0.33 (34) -> 1; 0.34..0.66 (33) -> 2/3; 0.67..1.00 (34) -> 1/2
    expected = (34 * 1.0 + 33 * 2 / 3 + 34 * 0.5) / 101
    assert result.ap[0, 0] == pytest.approx(expected, abs=1e-12)
    assert result.pr_curve.shape == (1, 101)
    assert result.pr_curve[0, 0] == 1.0 and result.pr_curve[0, 50] == pytest.approx(2 / 3)
    assert result.pr_curve[0, 100] == 0.5


def test_compute_ap_unreached_recall_counts_zero():
    ap, interpolated = compute_ap(np.array([0.5]), np.array([1.0]))  # one TP out of two boxes
    assert ap == pytest.approx(51 / 101)
    assert interpolated[51:].sum() == 0
    assert compute_ap(np.array([]), np.array([]))[0] == 0.0


def test_ap_per_class_ignores_classes_absent_from_ground_truth():
    tp = np.ones((3, 10), dtype=bool)
    tp[2] = False
    result = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 2]), np.array([0, 1]))
    assert result.classes.tolist() == [0, 1]
    np.testing.assert_allclose(result.ap, 1.0)


def test_precision_recall_at_best_f1_confidence():
    # 2 boxes; TP at 0.9 and 0.8, FP at 0.3: every threshold in (0.3, 0.8] gives P = R = 1
    tp = np.array([[True], [True], [False]])
    result = ap_per_class(tp, np.array([0.9, 0.8, 0.3]), np.zeros(3), np.zeros(2))
    assert result.precision[0] == 1.0 and result.recall[0] == 1.0 and result.f1[0] == pytest.approx(1.0)
    assert 0.3 < result.best_confidence <= 0.8
    # the curves are step functions of the threshold: everything is kept at 0, only the TP at 0.85
    assert result.precision_curve[0, 0] == pytest.approx(2 / 3) and result.recall_curve[0, 0] == 1.0
    at_085 = np.searchsorted(CONFIDENCE_POINTS, 0.85)
    assert result.precision_curve[0, at_085] == 1.0 and result.recall_curve[0, at_085] == 0.5
    assert result.precision_curve[0, -1] == 1.0 and result.recall_curve[0, -1] == 0.0


def make_boxes(generator, count, size=640):
    corners = torch.rand(count, 2, generator=generator) * (size - 100)
    sizes = torch.rand(count, 2, generator=generator) * 80 + 10
    return torch.cat([corners, corners + sizes], dim=1)


def test_perfect_predictions_give_map_one():
    generator = torch.Generator().manual_seed(1)
    metrics = DetectionMetrics(3, ["a", "b", "c"])
    for _ in range(2):  # two batches of 4 images
        labels_batch, detections_batch = [], []
        for _ in range(4):
            boxes = make_boxes(generator, 5)
            classes = torch.randint(0, 3, (5, 1), generator=generator).float()
            labels_batch.append(torch.cat([classes, boxes], dim=1))
            detections_batch.append(torch.cat([boxes, torch.rand(5, 1, generator=generator), classes], dim=1))
        metrics.update(detections_batch, labels_batch)
    result = metrics.compute()
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert result["precision"] == pytest.approx(1.0) and result["recall"] == pytest.approx(1.0)
    assert result["fitness"] == pytest.approx(1.0)
    assert result["images"] == 8 and result["instances"] == 40
    assert sum(c["instances"] for c in result["per_class"]) == 40


def test_class_missing_from_ground_truth_is_not_averaged():
    metrics = DetectionMetrics(3, {0: "cat", 1: "dog", 2: "bird"})
    labels = tensor([[0, 0, 0, 50, 50], [1, 100, 100, 150, 150]], 5)
    detections = tensor([
        detection([0, 0, 50, 50], 0.9, 0),
        detection([300, 300, 350, 350], 0.95, 2),  # class 2 has no ground truth anywhere
    ], 6)
    metrics.update([detections], [labels])
    result = metrics.compute()
    # class 0 perfect, class 1 found nothing (AP 0, still averaged), class 2 absent from the mean
    assert [c["name"] for c in result["per_class"]] == ["cat", "dog"]
    assert result["map50"] == pytest.approx(0.5) and result["map"] == pytest.approx(0.5)
    assert result["fitness"] == pytest.approx(0.5)


def test_iou_07_detection_in_map():
    metrics = DetectionMetrics(1)
    metrics.update([tensor([detection([0, 0, 70, 100], 0.9, 0)], 6)], [tensor([[0, 0, 0, 100, 100]], 5)])
    result = metrics.compute()
    assert result["map50"] == pytest.approx(1.0)
    assert result["map"] == pytest.approx(0.5)  # TP at 5 of 10 thresholds


def test_images_without_detections_or_labels():
    metrics = DetectionMetrics(2)
    metrics.update([torch.zeros(0, 6), tensor([detection([0, 0, 10, 10], 0.5, 1)], 6)],
                   [tensor([[0, 0, 0, 10, 10]], 5), torch.zeros(0, 5)])
    result = metrics.compute()
    assert result["map"] == 0.0 and result["images"] == 2 and result["instances"] == 1
    assert result["per_class"][0]["images"] == 1


def test_no_labels_at_all_warns(caplog):
    metrics = DetectionMetrics(2)
    metrics.update([tensor([detection([0, 0, 10, 10], 0.5, 1)], 6)], [torch.zeros(0, 5)])
    with caplog.at_level(logging.WARNING):
        result = metrics.compute()
    assert result["map"] == 0.0 and result["per_class"] == []
    assert "no ground-truth labels" in caplog.text


def test_update_rejects_bad_input():
    metrics = DetectionMetrics(2)
    with pytest.raises(ValueError, match="1 detection tensors for 2 label tensors"):
        metrics.update([torch.zeros(0, 6)], [torch.zeros(0, 5), torch.zeros(0, 5)])
    with pytest.raises(ValueError, match=r"labels of image 0 has class ids \[5.0\]"):
        metrics.update([torch.zeros(0, 6)], [tensor([[5, 0, 0, 1, 1]], 5)])
    with pytest.raises(ValueError, match=r"labels of image 0: expected shape \(k, 5\)"):
        metrics.update([torch.zeros(0, 6)], [torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="2 class names"):
        DetectionMetrics(3, ["a", "b"])


def test_reset_and_accumulation_across_batches():
    metrics = DetectionMetrics(1)
    labels = tensor([[0, 0, 0, 10, 10]], 5)
    metrics.update([tensor([detection([0, 0, 10, 10], 0.9, 0)], 6)], [labels])
    assert metrics.compute()["map"] == pytest.approx(1.0)
    metrics.update([torch.zeros(0, 6)], [labels])  # a second image whose box is missed
    assert metrics.compute()["map50"] == pytest.approx(51 / 101)
    metrics.reset()
    metrics.update([torch.zeros(0, 6)], [labels])
    assert metrics.compute()["map"] == 0.0 and metrics.images_seen == 1


def test_summary_table_layout():
    metrics = DetectionMetrics(2, ["person", "car"])
    metrics.update([tensor([detection([0, 0, 10, 10], 0.9, 0)], 6)],
                   [tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], 5)])
    short = metrics.summary_table().splitlines()
    assert short[0].split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert short[1].split() == ["all", "1", "2", "0.5", "0.5", "0.5", "0.5"]
    assert len(short) == 2
    verbose = metrics.summary_table(verbose=True).splitlines()
    assert verbose[2].split() == ["person", "1", "1", "1", "1", "1", "1"]
    assert verbose[3].split() == ["car", "1", "1", "0", "0", "0", "0"]
    assert all(len(line) == len(verbose[0]) for line in verbose)


def test_fitness_forms():
    assert fitness({"map50": 0.6, "map": 0.4}) == pytest.approx(0.42)
    assert fitness([0.9, 0.8, 0.6, 0.4]) == pytest.approx(0.42)
    np.testing.assert_allclose(fitness(np.array([[0, 0, 0.6, 0.4], [0, 0, 1.0, 1.0]])), [0.42, 1.0])
    with pytest.raises(KeyError, match="map50"):
        fitness({"map": 0.4})
    with pytest.raises(ValueError, match="expected a mapping or an array"):
        fitness([0.6, 0.4])


def test_confusion_matrix_hand_built():
    matrix = ConfusionMatrix(num_classes=3, conf=0.25, iou_thres=0.45)
    labels = tensor([
        [0, 0, 0, 100, 100],      # found as class 0
        [1, 200, 0, 300, 100],    # found but called class 0
        [2, 400, 0, 500, 100],    # missed
    ], 5)
    detections = tensor([
        detection([0, 0, 100, 100], 0.9, 0),
        detection([2, 0, 100, 100], 0.8, 0),       # duplicate of the first: background FP
        detection([200, 0, 300, 100], 0.7, 0),
        detection([600, 600, 650, 650], 0.6, 2),   # nothing there: background FP
        detection([400, 0, 500, 100], 0.1, 2),     # below conf: ignored, so box 3 stays missed
    ], 6)
    matrix.update(detections, labels)
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = 1  # predicted 0, true 0
    expected[0, 1] = 1  # predicted 0, true 1
    expected[3, 2] = 1  # missed class 2
    expected[0, 3] = 1  # duplicate class-0 detection
    expected[2, 3] = 1  # class-2 detection on background
    np.testing.assert_array_equal(matrix.matrix, expected)

    matrix.update(None, tensor([[1, 0, 0, 10, 10]], 5))
    assert matrix.matrix[3, 1] == 1
    with pytest.raises(ValueError, match="class ids outside"):
        matrix.update(None, tensor([[3, 0, 0, 10, 10]], 5))


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_confusion_matrix_plot(tmp_path):
    matrix = ConfusionMatrix(num_classes=2)
    matrix.update(tensor([detection([0, 0, 10, 10], 0.9, 1)], 6), tensor([[0, 0, 0, 10, 10]], 5))
    for normalize in (True, False):
        path = metric_plots.plot_confusion_matrix(matrix.matrix, matrix.class_names(["a", "b"]),
                                                  tmp_path / str(normalize) / "confusion_matrix.png",
                                                  normalize=normalize)
        assert path.name == "confusion_matrix.png"
        assert_png(path)
    with pytest.raises(ValueError, match="does not fit 3 names"):
        metric_plots.plot_confusion_matrix(matrix.matrix, ["a", "b", "c"], tmp_path / "bad.png")


def test_detection_curve_plots(tmp_path):
    generator = torch.Generator().manual_seed(3)
    metrics = DetectionMetrics(2, ["a", "b"])
    boxes = make_boxes(generator, 6)
    classes = torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0], [1.0]])
    jitter = torch.randn(6, 4, generator=generator) * 4
    detections = torch.cat([boxes + jitter, torch.rand(6, 1, generator=generator), classes], dim=1)
    metrics.update([detections], [torch.cat([classes, boxes], dim=1)])
    paths = metric_plots.plot_detection_curves(metrics.curves(), metrics.names, tmp_path)
    assert [p.name for p in paths] == ["PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"]
    for path in paths:
        assert_png(path)
    many = metric_plots.plot_pr_curve(RECALL_POINTS, np.random.default_rng(0).random((25, 101)), np.zeros(25),
                                      [str(i) for i in range(25)], tmp_path / "many.png")
    assert_png(many)


def test_results_csv_plot(tmp_path):
    csv_path = tmp_path / "results.csv"
    header = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision",
              "metrics/recall", "metrics/mAP50", "metrics/mAP50-95", "val/box_loss", "val/obj_loss", "val/cls_loss"]
    lines = [",".join(f"{name:>20}" for name in header)]
    for epoch in range(4):
        lines.append(",".join([str(epoch)] + [f"{0.1 * (epoch + 1) + i * 0.01:.5f}" for i in range(len(header) - 1)]))
    csv_path.write_text("\n".join(lines) + "\n")
    path = metric_plots.plot_results_csv(csv_path)
    assert path == tmp_path / "results.png"
    assert_png(path)


def test_results_csv_errors_name_the_line(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("epoch,metrics/mAP50\n0,0.1\n1,oops\n")
    with pytest.raises(ValueError, match=r"line 3, column 'metrics/mAP50': 'oops' is not a number"):
        metric_plots.plot_results_csv(csv_path)
    csv_path.write_text("epoch,metrics/mAP50\n0,0.1,7\n")
    with pytest.raises(ValueError, match="line 2 has 3 fields"):
        metric_plots.plot_results_csv(csv_path)
    csv_path.write_text("epoch,metrics/mAP50\n")
    with pytest.raises(ValueError, match="at least one row"):
        metric_plots.plot_results_csv(csv_path)
    with pytest.raises(FileNotFoundError):
        metric_plots.plot_results_csv(tmp_path / "missing.csv")
