"""The YAML parser: safe argument resolution and one clear error per kind of broken config."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import yaml

from models import ConfigError, DetectionModel
from models.parse import CFG_DIR, build_layers, resolve_cfg_path

BASE = yaml.safe_load((CFG_DIR / "yolov5n.yaml").read_text())


def edited(section: str, index: int, layer: list) -> dict:
    data = copy.deepcopy(BASE)
    data[section][index] = layer
    return data


def write(tmp_path, data: dict):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_injection_string_is_refused_not_executed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("os.system", lambda *a: calls.append(a))
    data = edited("backbone", 1, [-1, 1, "Conv", ["__import__('os').system('touch pwned')", 3, 2]])
    with pytest.raises(ConfigError, match=r"broken.yaml: layer 1 \(Conv\): argument .*__import__.* is not allowed"):
        DetectionModel(write(tmp_path, data))
    assert not calls and not (tmp_path / "pwned").exists()


def test_unknown_module_names_file_layer_and_close_matches(tmp_path):
    data = edited("head", 3, [-1, 3, "VoVGSCPS", [512]])
    with pytest.raises(ConfigError, match=r"broken.yaml: layer 13 \(VoVGSCPS\): unknown module .*did you mean VoVGSCSP"):
        DetectionModel(write(tmp_path, data))


def test_wrong_argument_count(tmp_path):
    data = edited("backbone", 9, [-1, 1, "SPPF", [1024, 5, 7, 9]])
    with pytest.raises(ConfigError, match=r"layer 9 \(SPPF\): wrong arguments .*too many"):
        DetectionModel(write(tmp_path, data))


def test_wrong_argument_type(tmp_path):
    data = edited("backbone", 1, [-1, 1, "Conv", ["wide", 3, 2]])
    with pytest.raises(ConfigError, match=r"layer 1 \(Conv\):"):
        DetectionModel(write(tmp_path, data))


def test_from_pointing_forward(tmp_path):
    data = edited("head", 2, [[-1, 20], 1, "Concat", [1]])
    with pytest.raises(ConfigError, match=r"layer 12 \(Concat\): 'from' 20 points forward"):
        DetectionModel(write(tmp_path, data))


def test_from_out_of_range(tmp_path):
    data = edited("backbone", 2, [-5, 3, "C3", [128]])
    with pytest.raises(ConfigError, match=r"layer 2 \(C3\): 'from' -5 points before the first layer"):
        DetectionModel(write(tmp_path, data))


def test_head_inputs_at_wrong_strides(tmp_path):
    data = edited("head", 14, [[4, 6, 8], 1, "Detect", ["nc", "anchors"]])
    data["head"][14] = [[2, 6, 8], 1, "Detect", ["nc", "anchors"]]
    with pytest.raises(ConfigError, match=r"layer 24 \(Detect\): .*strides \[4.0, 16.0, 32.0\]"):
        DetectionModel(write(tmp_path, data))


def test_concat_of_mismatched_strides(tmp_path):
    data = edited("head", 2, [[-1, 4], 1, "Concat", [1]])
    with pytest.raises(ConfigError, match=r"layer 12 \(Concat\): inputs have different strides"):
        DetectionModel(write(tmp_path, data))


def test_repeating_a_channel_changing_module(tmp_path):
    data = edited("backbone", 1, [-1, 9, "Conv", [128, 3, 1]])
    with pytest.raises(ConfigError, match=r"layer 1 \(Conv\): cannot repeat it"):
        DetectionModel(write(tmp_path, data))


def test_activation_in_dilation_slot_is_rejected(tmp_path):
    """YOLOv7 YAMLs pass act 6th; YOLOv5's Conv has dilation there. Refuse instead of mis-building."""
    data = edited("backbone", 1, [-1, 1, "Conv", [128, 3, 2, None, 1, "nn.LeakyReLU(0.1)"]])
    with pytest.raises(ConfigError, match="dilation must be an integer"):
        DetectionModel(write(tmp_path, data))


def test_unknown_activation(tmp_path):
    data = copy.deepcopy(BASE)
    data["activation"] = "nn.Swoosh()"
    with pytest.raises(ConfigError, match="unknown activation"):
        DetectionModel(write(tmp_path, data))


def test_invalid_yaml_and_missing_sections(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("backbone: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        DetectionModel(path)
    data = copy.deepcopy(BASE)
    del data["head"]
    with pytest.raises(ConfigError, match="missing or invalid 'head'"):
        DetectionModel(write(tmp_path, data))


def test_missing_config_lists_available():
    with pytest.raises(FileNotFoundError, match="yolov5s-slimneck.yaml"):
        resolve_cfg_path("yolov5q.yaml")


def test_bare_names_resolve_in_cfg():
    assert resolve_cfg_path("yolov5s-slimneck") == CFG_DIR / "yolov5s-slimneck.yaml"
    assert resolve_cfg_path("yolov5s-slimneck.yaml") == CFG_DIR / "yolov5s-slimneck.yaml"


def test_yolov5_style_names_and_dict_input():
    data = copy.deepcopy(BASE)
    data["head"][1] = [-1, 1, "torch.nn.Upsample", [None, 2, "nearest"]]
    model = DetectionModel(data, num_classes=2)
    assert model.num_classes == 2 and model.cfg["nc"] == 2
    assert isinstance(model.layers[11], nn.Upsample)


def test_integer_anchor_count_generates_anchors():
    data = copy.deepcopy(BASE)
    data["anchors"] = 2
    model = DetectionModel(data)
    assert model.head.anchors.shape == (3, 2, 2) and model.head.anchors_generated
    assert (model.head.anchors_pixels()[1:] > model.head.anchors_pixels()[:-1]).all()


def test_model_activation_does_not_leak_into_other_models():
    tiny = DetectionModel("yolov7-tiny.yaml")
    v5 = DetectionModel("yolov5n.yaml")
    assert isinstance(tiny.layers[0].act, nn.LeakyReLU) and tiny.layers[0].act.negative_slope == 0.1
    assert isinstance(v5.layers[0].act, nn.SiLU)


def test_detect_bias_initialisation():
    model = DetectionModel("yolov5n.yaml", num_classes=3)
    for conv, stride in zip(model.head.outputs, (8, 16, 32)):
        bias = conv.bias.detach().view(3, -1)
        assert torch.allclose(bias[:, 4], torch.full((3,), torch.log(torch.tensor(8 / (640 / stride) ** 2)).item()),
                              atol=0.2)
        assert torch.allclose(bias[:, 5:].mean(), torch.log(torch.tensor(0.6 / (3 - 0.99))), atol=0.2)


def test_detect_decoding_formula():
    model = DetectionModel("yolov5n.yaml", num_classes=1).eval()
    head = model.head
    raw = [torch.zeros(1, 3, 4, 4, 6) for _ in range(3)]
    decoded = head.decode(raw)
    # sigmoid(0) = 0.5: xy = (1 - 0.5 + grid) * stride, wh = 1 * anchor
    first = decoded[0, 0]
    assert first[:2].tolist() == [0.5 * 8, 0.5 * 8]
    assert first[2:4].tolist() == pytest.approx(head.anchors_pixels()[0, 0].tolist())
    cell = decoded[0, 1 * 4 + 2]  # level 0, anchor 0, row 1, column 2
    assert cell[:2].tolist() == [(2 + 0.5) * 8, (1 + 0.5) * 8]


def test_records_describe_layers():
    _, records, data = build_layers("yolov5n-slimneck.yaml")
    assert records[13].module_name == "VoVGSCSP" and records[13].repeats == 3
    assert records[17].stride == 8 and records[20].stride == 16 and records[23].stride == 32
    assert records[24].sources == [17, 20, 23] and data["nc"] == 80
