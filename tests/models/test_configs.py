"""Tests generated from cfg/*.yaml: every shipped config builds, runs, and has the published size."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from models.parse import CFG_DIR
from models.slimneck import slimneck_yaml
from models.yolo import DetectionModel, count_gflops, count_parameters
from helpers import CONFIGS, randomize_batchnorm, REPO


# Published sizes at nc=80 (model cards, the slim-neck paper): exact parameters, GFLOPs at 640 with tolerance.
PUBLISHED_PARAMS = {"yolov5n.yaml": 1_872_157, "yolov5s.yaml": 7_235_389, "yolov5m.yaml": 21_190_557,
                    "yolov5l.yaml": 46_563_709, "yolov5x.yaml": 86_749_405}
PUBLISHED_FUSED_PARAMS = {"yolov7.yaml": (36_905_341, 0.0), "yolov7-tiny.yaml": (6.22e6, 0.01),
                          "yolov7-gsconv.yaml": (35.99e6, 0.01), "yolov7-tiny-gsconv.yaml": (5.72e6, 0.01),
                          "yolov5s-slimneck.yaml": (6.40e6, 0.01)}
PUBLISHED_GFLOPS = {"yolov5n.yaml": (4.5, 0.02), "yolov5s.yaml": (16.5, 0.02), "yolov5m.yaml": (49.0, 0.02),
                    "yolov5l.yaml": (109.1, 0.02), "yolov5x.yaml": (205.7, 0.02), "yolov7.yaml": (104.7, 0.02),
                    "yolov7-tiny.yaml": (13.8, 0.01), "yolov7-gsconv.yaml": (102.6, 0.01),
                    "yolov7-tiny-gsconv.yaml": (12.6, 0.01), "yolov5s-slimneck.yaml": (15.1, 0.01),
                    "yolov5n-slimneck.yaml": (4.1, 0.02)}
SLIMNECK_PAIRS = [(c.replace("-slimneck", ""), c) for c in CONFIGS if "-slimneck" in c]


def gflops_at_640(model: DetectionModel) -> float:
    # Every layer's FLOPs scale with the image area at stride-32 multiples, so 320 x 4 is exact and 4x faster.
    return count_gflops(model, 320) * 4


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name: str) -> DetectionModel:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = DetectionModel(name)
        return cache[name]
    return get


@pytest.mark.parametrize("cfg", CONFIGS)
def test_config_builds_and_runs(cfg):
    model = DetectionModel(cfg, num_classes=3)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    images = torch.rand(2, 3, 64, 96)
    model.train()
    raw = model(images)
    assert [tuple(level.shape) for level in raw] == [(2, model.head.num_anchors, 64 // s, 96 // s, 8) for s in (8, 16, 32)]
    model.eval()
    with torch.no_grad():
        decoded, raw_eval = model(images)
    assert decoded.shape == (2, sum(3 * (64 // s) * (96 // s) for s in (8, 16, 32)), 8)
    assert torch.isfinite(decoded).all()
    assert ((decoded[..., 4:] >= 0) & (decoded[..., 4:] <= 1)).all()


@pytest.mark.parametrize("cfg", CONFIGS)
def test_fused_equals_unfused(cfg):
    torch.manual_seed(0)
    model = DetectionModel(cfg, num_classes=3).double().eval()
    randomize_batchnorm(model)  # so folding is really exercised
    images = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        before = model(images)[0]
        model.fuse()
        after = model(images)[0]
    assert model.is_fused()
    assert torch.allclose(before, after, atol=1e-4, rtol=0), (before - after).abs().max()


@pytest.mark.parametrize("cfg", sorted(PUBLISHED_PARAMS))
def test_published_parameter_count(cfg, built):
    assert count_parameters(built(cfg)) == PUBLISHED_PARAMS[cfg]


@pytest.mark.parametrize("cfg", sorted(PUBLISHED_FUSED_PARAMS))
def test_published_fused_parameter_count(cfg, built):
    import copy
    expected, tolerance = PUBLISHED_FUSED_PARAMS[cfg]
    fused = copy.deepcopy(built(cfg)).fuse()
    assert count_parameters(fused) == pytest.approx(expected, rel=tolerance)


@pytest.mark.parametrize("cfg", sorted(PUBLISHED_GFLOPS))
def test_published_gflops(cfg, built):
    expected, tolerance = PUBLISHED_GFLOPS[cfg]
    assert gflops_at_640(built(cfg)) == pytest.approx(expected, rel=tolerance)


def test_gflops_scale_exactly_with_area(built):
    model = built("yolov5n.yaml")
    assert count_gflops(model, 640) == pytest.approx(count_gflops(model, 320) * 4, rel=1e-9)


@pytest.mark.parametrize("baseline, slim", SLIMNECK_PAIRS)
def test_slimneck_is_smaller_than_its_baseline(baseline, slim, built):
    assert count_parameters(built(slim)) < count_parameters(built(baseline))
    assert gflops_at_640(built(slim)) < gflops_at_640(built(baseline))


def test_yolov5s_slimneck_budget(built):
    model = built("yolov5s-slimneck.yaml")
    assert count_parameters(model) <= 6.45e6
    assert gflops_at_640(model) <= 15.2


@pytest.mark.parametrize("size", list("nsmlx"))
def test_shipped_slimneck_equals_the_generator(size):
    shipped = (CFG_DIR / f"yolov5{size}-slimneck.yaml").read_text()
    assert shipped == slimneck_yaml(CFG_DIR / f"yolov5{size}.yaml")


def test_slimneck_generator_touches_only_the_neck():
    import yaml
    base = yaml.safe_load((CFG_DIR / "yolov5m.yaml").read_text())
    slim = yaml.safe_load(slimneck_yaml(CFG_DIR / "yolov5m.yaml"))
    assert slim["backbone"] == base["backbone"]
    modules = [layer[2] for layer in slim["head"]]
    assert "Conv" not in modules and "C3" not in modules
    assert modules.count("GSConv") == 4 and modules.count("VoVGSCSP") == 4 and modules[-1] == "Detect"


def test_model_cli_json():
    result = subprocess.run([sys.executable, "-m", "models", "--cfg", "yolov5n-slimneck.yaml", "--imgsz", "320",
                             "--json"], capture_output=True, text=True, check=True, cwd=REPO)
    report = json.loads(result.stdout)
    assert report["params"] == count_parameters(DetectionModel("yolov5n-slimneck.yaml"))
    assert report["layers"] == 25 and report["gflops"] == pytest.approx(4.145 / 4, rel=0.01)


def test_model_cli_table_names_every_layer():
    result = subprocess.run([sys.executable, "-m", "models", "--cfg", "yolov7-tiny-slimneck.yaml", "--fuse"],
                            capture_output=True, text=True, check=True, cwd=REPO)
    assert "VoVGSCSP" in result.stdout and "IDetect" in result.stdout
    assert "58 layers" in result.stdout
