"""Deploy rewrites (models/deploy.py): outputs unchanged, shuffles really folded, the input model untouched."""
from __future__ import annotations

import copy

import pytest
import torch

from models.deploy import (DirectDecodeDetect, MergedGSBottleneck, MergedInputCSP, UnshuffledGSConv, apply_rewrites,
                           count_channel_shuffles, fold_channel_shuffles, optimize_for_inference, rewrites_for)
from models.modules.gsconv import GSConv
from models.yolo import DetectionModel
from helpers import CONFIG_CASES as CASES, randomized_model


def decoded(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)[0]


@pytest.mark.parametrize("cfg", CASES)
def test_optimized_equals_unfused(cfg):
    model = randomized_model(cfg, dtype=torch.float64)
    images = torch.rand(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference, reference_raw = model(images)
    fused = copy.deepcopy(model).fuse()
    shuffles = count_channel_shuffles(fused)
    weights = {key: value.clone() for key, value in fused.state_dict().items()}

    optimized, changes = apply_rewrites(fused)
    folded_only, report = fold_channel_shuffles(fused)

    assert optimized is not fused
    for candidate in (optimized, folded_only):
        with torch.no_grad():
            output, raw = candidate(images)
        assert torch.allclose(output, reference, atol=1e-4, rtol=0), (output - reference).abs().max()
        assert [r.shape for r in raw] == [r.shape for r in reference_raw]
        assert all(torch.allclose(a, b, atol=1e-4, rtol=0) for a, b in zip(raw, reference_raw))
    # Every shuffle of the shipped configs reaches convs that can absorb it.
    assert count_channel_shuffles(optimized) == count_channel_shuffles(folded_only) == 0
    assert changes["fold_shuffles"] == report.folded == shuffles
    assert sum(isinstance(m, UnshuffledGSConv) for m in folded_only.modules()) == shuffles
    assert shuffles > 0 if "gsconv" in cfg or "slimneck" in cfg else shuffles == 0
    # The fused input model (and so any checkpoint made from it) is untouched.
    assert count_channel_shuffles(fused) == shuffles
    after = fused.state_dict()
    assert weights.keys() == after.keys() and all(torch.equal(weights[k], after[k]) for k in weights)


def test_dropping_the_shuffle_without_permuting_the_weights_changes_the_output():
    """The equality test above can fail: removing the shuffles alone gives different predictions."""
    model = randomized_model("yolov5n-slimneck.yaml", dtype=torch.float64).fuse()
    images = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    reference = decoded(model, images)
    broken = copy.deepcopy(model)
    for parent in list(broken.modules()):
        for name, child in parent.named_children():
            if isinstance(child, GSConv):
                setattr(parent, name, UnshuffledGSConv(child))
    assert count_channel_shuffles(broken) == 0
    assert (decoded(broken, images) - reference).abs().max() > 1e-2


# Layers whose consumers cannot absorb a permutation, and some that can, in one small model.
MIXED = {
    "nc": 3, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": 3,
    "backbone": [
        [-1, 1, "Conv", [16, 3, 2]],            # 0  /2
        [-1, 1, "GSConv", [32, 3, 2]],          # 1  /4  -> a depth-wise conv: kept
        [-1, 1, "DWConv", [32, 3, 1]],          # 2
        [-1, 1, "GSConv", [32, 3, 2]],          # 3  /8  -> a residual Bottleneck: kept
        [-1, 1, "Bottleneck", [32]],            # 4  P3
        [-1, 1, "GSConv", [64, 3, 2]],          # 5  /16 -> a top-level GSBottleneckC (depth-wise shortcut): kept
        [-1, 1, "GSBottleneckC", [64]],         # 6      inner shuffle folded, outer kept
        [-1, 1, "GSBottleneck", [64]],          # 7  P4  both folded (consumers: Detect, VoVGSCSPC)
        [-1, 1, "VoVGSCSPC", [64]],             # 8      all folded inside
        [-1, 1, "GSConv", [128, 3, 2]],         # 9  /32 -> a grouped GSConv and a Concat: kept
        [-1, 1, "GSConv", [128, 3, 1, 2]],      # 10     groups 2 -> Concat -> VoVGSCSP: folded
        [[-1, 9], 1, "Concat", [1]],            # 11
        [-1, 2, "VoVGSCSP", [128, True, 2]],    # 12 P5  grouped bottlenecks: the first one keeps its outer shuffle
        [-1, 1, "GSConv", [64, 1, 1]],          # 13     -> Upsample -> MaxPool2d -> GSConvns: folded
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],  # 14
        [-1, 1, "nn.MaxPool2d", [2, 2]],        # 15
        [-1, 1, "GSConvns", [128, 1, 1]],       # 16
        [[-1, 12], 1, "Concat", [1]],           # 17
        [-1, 1, "Conv", [128, 1, 1]],           # 18
        [-1, 2, "VoVGSCSP", [128]],             # 19 two merged bottlenecks, the last writes into the CSP buffer
    ],
    "head": [[[4, 7, 19], 1, "Detect", ["nc", "anchors"]]],
}


def test_shuffles_that_reach_a_non_absorbing_consumer_are_kept():
    model = randomized_model(copy.deepcopy(MIXED), dtype=torch.float64)
    images = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    reference = decoded(model, images)
    fused = model.fuse()
    optimized, report = fold_channel_shuffles(fused)
    assert torch.allclose(decoded(optimized, images), reference, atol=1e-4, rtol=0)
    kept = sorted(name for name, m in optimized.named_modules() if isinstance(m, GSConv))
    assert kept == sorted(["layers.1", "layers.3", "layers.5", "layers.6.main.1", "layers.9",
                           "layers.12.blocks.0.main.1"])
    assert report.shuffles_before == count_channel_shuffles(fused)
    assert report.shuffles_after == len(kept) == len(report.kept)
    assert report.folded == report.shuffles_before - len(kept)
    # The other rewrites skip what they cannot handle (grouped or depth-wise convs, kept shuffles).
    optimized, changes = apply_rewrites(fused)
    assert torch.allclose(decoded(optimized, images), reference, atol=1e-4, rtol=0)
    # Layers 8, 12 and 19 merge their input convs; only layer 19's bottlenecks (dense shortcut, shuffles folded,
    # groups 1) merge theirs.
    assert changes["merge_csp"] == 3 + 2


def test_rewrites_need_a_fused_eval_model():
    model = DetectionModel("yolov5n-slimneck.yaml", num_classes=2)
    with pytest.raises(ValueError, match="eval"):
        optimize_for_inference(model)
    with pytest.raises(ValueError, match="fused"):
        optimize_for_inference(model.eval())


def test_apply_rewrites_reports_changes_and_rejects_unknown_names():
    fused = DetectionModel("yolov5n-slimneck.yaml", num_classes=2).eval().fuse()
    model, changes = apply_rewrites(fused)
    # 12 shuffles; 4 C3 + 4 VoV-GSCSP blocks and the 4 GSBottlenecks inside the latter; 1 head.
    assert changes == {"fold_shuffles": 12, "merge_csp": 12, "direct_decode": 1}
    assert isinstance(model.head, DirectDecodeDetect) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert sum(isinstance(m, MergedInputCSP) for m in model.modules()) == 8
    assert sum(isinstance(m, MergedGSBottleneck) for m in model.modules()) == 4
    assert rewrites_for("onnx") == ["fold_shuffles"]
    for_onnx = optimize_for_inference(fused, target="onnx")
    assert not any(isinstance(m, (MergedInputCSP, DirectDecodeDetect)) for m in for_onnx.modules())
    with pytest.raises(ValueError, match="unknown deploy target"):
        optimize_for_inference(fused, target="tensorrt")
    same, changes = apply_rewrites(fused, ["fold_shuffles"], inplace=True)
    assert same is fused and count_channel_shuffles(fused) == 0
    with pytest.raises(ValueError, match="unknown deploy rewrite"):
        apply_rewrites(fused, ["no_such_rewrite"])


def test_optimized_model_runs_in_float32_channels_last():
    fused = DetectionModel("yolov5n-slimneck.yaml", num_classes=2).eval().fuse()
    images = torch.rand(1, 3, 64, 64)
    reference = decoded(fused, images)
    optimized = optimize_for_inference(fused).to(memory_format=torch.channels_last)
    output = decoded(optimized, images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(output, reference, atol=1e-3, rtol=1e-4)
