"""non_max_suppression on hand-built predictions with known outcomes."""
import pytest
import torch

from engine.infer.nms import non_max_suppression


def make_prediction(rows: list[list[float]]) -> torch.Tensor:
    """One image; each row is [cx, cy, w, h, objectness, class probabilities...]."""
    return torch.tensor([rows], dtype=torch.float32)


# Two boxes overlapping with IoU 0.82 (20x20 shifted by 2 px), a third far away.
BOX_A = [50.0, 50.0, 20.0, 20.0]
BOX_A_SHIFTED = [52.0, 50.0, 20.0, 20.0]
BOX_FAR = [200.0, 200.0, 30.0, 10.0]


def test_converts_to_corners_and_scores_obj_times_class():
    (result,) = non_max_suppression(make_prediction([[*BOX_FAR, 0.8, 0.1, 0.5]]))
    assert result.shape == (1, 6)
    torch.testing.assert_close(result[0, :4], torch.tensor([185.0, 195.0, 215.0, 205.0]))
    assert result[0, 4].item() == pytest.approx(0.4)
    assert result[0, 5].item() == 1.0


def test_same_class_overlap_is_suppressed_other_class_kept():
    prediction = make_prediction([
        [*BOX_A, 0.9, 0.9, 0.1],          # class 0, conf 0.81
        [*BOX_A_SHIFTED, 0.8, 0.9, 0.1],  # class 0, conf 0.72: suppressed by the first
        [*BOX_A_SHIFTED, 0.9, 0.1, 0.7],  # class 1, conf 0.63: kept, NMS is per class
    ])
    (result,) = non_max_suppression(prediction)
    assert result[:, 5].tolist() == [0.0, 1.0]
    torch.testing.assert_close(result[:, 4], torch.tensor([0.81, 0.63]))


def test_agnostic_suppresses_across_classes():
    prediction = make_prediction([
        [*BOX_A, 0.9, 0.9, 0.1],
        [*BOX_A_SHIFTED, 0.9, 0.1, 0.7],
        [*BOX_FAR, 0.9, 0.1, 0.7],
    ])
    (result,) = non_max_suppression(prediction, agnostic=True)
    assert result[:, 5].tolist() == [0.0, 1.0]
    torch.testing.assert_close(result[1, :4], torch.tensor([185.0, 195.0, 215.0, 205.0]))


def test_iou_threshold_decides_suppression():
    prediction = make_prediction([[*BOX_A, 0.9, 0.9], [*BOX_A_SHIFTED, 0.8, 0.9]])
    assert len(non_max_suppression(prediction, iou_thres=0.85)[0]) == 2  # IoU 0.82 < 0.85
    assert len(non_max_suppression(prediction, iou_thres=0.80)[0]) == 1


def test_confidence_filtering_uses_objectness_then_product():
    prediction = make_prediction([
        [*BOX_A, 0.2, 1.0, 0.0],    # objectness 0.2 fails although the class probability is 1
        [*BOX_FAR, 0.5, 0.4, 0.0],  # objectness passes, class probability 0.4 too, but 0.5 * 0.4 = 0.2 fails
        [100.0, 300.0, 10.0, 10.0, 0.6, 0.5, 0.0],  # 0.3 passes
    ])
    (result,) = non_max_suppression(prediction, conf_thres=0.25)
    assert result.shape == (1, 6)
    assert result[0, 4].item() == pytest.approx(0.3)
    (low,) = non_max_suppression(prediction, conf_thres=0.1)
    assert len(low) == 3


def test_classes_filter():
    prediction = make_prediction([
        [*BOX_A, 0.9, 0.9, 0.0, 0.0],
        [*BOX_FAR, 0.9, 0.0, 0.9, 0.0],
        [100.0, 300.0, 10.0, 10.0, 0.9, 0.0, 0.0, 0.9],
    ])
    (result,) = non_max_suppression(prediction, classes=[0, 2])
    assert sorted(result[:, 5].tolist()) == [0.0, 2.0]


def test_max_det_keeps_the_most_confident_sorted():
    rows = [[40.0 * i + 20, 20.0, 10.0, 10.0, 0.3 + 0.05 * i, 1.0] for i in range(10)]  # disjoint boxes
    (result,) = non_max_suppression(make_prediction(rows), max_det=4)
    assert len(result) == 4
    torch.testing.assert_close(result[:, 4], torch.tensor([0.75, 0.70, 0.65, 0.60]))


def test_max_nms_caps_candidates_before_nms():
    rows = [[40.0 * i + 20, 20.0, 10.0, 10.0, 0.3 + 0.05 * i, 1.0] for i in range(10)]
    (result,) = non_max_suppression(make_prediction(rows), max_nms=3)
    torch.testing.assert_close(result[:, 4], torch.tensor([0.75, 0.70, 0.65]))


def test_max_wh_drops_oversized_and_nan_boxes():
    prediction = make_prediction([
        [*BOX_A, 0.9, 0.9],
        [400.0, 400.0, 9000.0, 50.0, 0.9, 0.9],
        [300.0, 300.0, float("nan"), 50.0, 0.9, 0.9],
    ])
    (result,) = non_max_suppression(prediction, max_wh=7680)
    assert len(result) == 1
    assert torch.isfinite(result).all()


def test_multi_label_gives_one_row_per_class_above_threshold():
    prediction = make_prediction([[*BOX_A, 0.9, 0.8, 0.6, 0.1]])
    (single,) = non_max_suppression(prediction, conf_thres=0.25)
    assert single[:, 5].tolist() == [0.0]
    (multi,) = non_max_suppression(prediction, conf_thres=0.25, multi_label=True)
    assert multi.shape == (2, 6)
    assert multi[:, 5].tolist() == [0.0, 1.0]  # class 2 scores 0.09 < 0.25
    torch.testing.assert_close(multi[:, 4], torch.tensor([0.72, 0.54]))
    torch.testing.assert_close(multi[0, :4], multi[1, :4])


def test_empty_inputs():
    assert non_max_suppression(torch.zeros(0, 10, 7)) == []
    result = non_max_suppression(torch.zeros(3, 0, 7))
    assert len(result) == 3 and all(r.shape == (0, 6) for r in result)
    below = non_max_suppression(make_prediction([[*BOX_A, 0.01, 0.5]]), conf_thres=0.25, multi_label=True)
    assert below[0].shape == (0, 6)


def test_batch_images_are_independent():
    prediction = torch.cat([
        make_prediction([[*BOX_A, 0.9, 0.9], [*BOX_FAR, 0.1, 0.9]]),
        make_prediction([[*BOX_A, 0.1, 0.9], [*BOX_FAR, 0.9, 0.9]]),
    ])
    first, second = non_max_suppression(prediction)
    torch.testing.assert_close(first[:, :4], torch.tensor([[40.0, 40.0, 60.0, 60.0]]))
    torch.testing.assert_close(second[:, :4], torch.tensor([[185.0, 195.0, 215.0, 205.0]]))


def test_half_precision_input():
    prediction = make_prediction([[*BOX_A, 0.9, 0.9], [*BOX_A_SHIFTED, 0.8, 0.9]]).half()
    (result,) = non_max_suppression(prediction)
    assert result.dtype == torch.float32 and len(result) == 1


@pytest.mark.parametrize("bad", [torch.zeros(10, 7), torch.zeros(1, 10, 5)])
def test_bad_shapes_are_rejected(bad):
    with pytest.raises(ValueError, match="expected a tensor"):
        non_max_suppression(bad)


def test_bad_thresholds_are_rejected():
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(torch.zeros(1, 1, 6), conf_thres=1.5)
    with pytest.raises(ValueError, match="iou_thres"):
        non_max_suppression(torch.zeros(1, 1, 6), iou_thres=-0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(2, 500, 2, generator=generator) * 600
    sizes = torch.rand(2, 500, 2, generator=generator) * 100 + 5
    scores = torch.rand(2, 500, 5, generator=generator)
    prediction = torch.cat([centres, sizes, scores], dim=2)
    for multi_label in (False, True):
        cpu = non_max_suppression(prediction, conf_thres=0.1, multi_label=multi_label)
        cuda = non_max_suppression(prediction.cuda(), conf_thres=0.1, multi_label=multi_label)
        for expected, actual in zip(cpu, cuda):
            assert actual.device.type == "cuda"
            torch.testing.assert_close(actual.cpu(), expected)
