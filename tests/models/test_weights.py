"""Checkpoints: our plain format (atomic save, weights_only load) and safe import of official YOLOv5/YOLOv7 files.

The official files are imitated: classes named ``models.yolo.Model``, ``models.common.C3`` ... are created with
``type(...)`` and registered in ``sys.modules`` only while ``torch.save`` pickles them, so the file references the
same globals as a real YOLOv5/YOLOv7 checkpoint. Their trees hold our model's weights under the upstream names,
derived here from the ``upstream_names`` class attributes and anchored by hard-coded upstream key spot checks.
"""
from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import copy
import datetime
import logging
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path, PosixPath

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from models import DetectionModel
from models.convert import main as convert_main
from models.modules.heads import ImplicitAdd, ImplicitMultiply
from models.parse import CFG_DIR
from models.unpickle import (
    RestrictedUnpickler,
    UnsafeCheckpointError,
    _open_archive,
)
from models.upstream import (
    read_upstream_checkpoint,
    upstream_key_map,
    upstream_model_config,
)
from models.weights import (
    FORMAT_NAME,
    CheckpointError,
    build_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
    transfer_state_dict,
)
from helpers import REPO

IMAGE = 64

# Upstream class names where ours differ, and the upstream module each class lives in.
UPSTREAM_CLASS = {ImplicitAdd: "ImplicitA", ImplicitMultiply: "ImplicitM"}
UPSTREAM_YOLO_MODULE = {"Detect", "IDetect", "Model", "DetectionModel"}


def randomized(model: DetectionModel, seed: int = 0) -> DetectionModel:
    """Random BN statistics and fp16-representable weights, so the fp16 upstream copy holds exactly our values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("bn.weight") or name.endswith(".1.weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("implicit"):
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model.eval()


def outputs(model: DetectionModel) -> torch.Tensor:
    image = torch.rand(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(image)[0]


class FakeUpstream:
    """Classes whose ``__module__``/``__qualname__`` say ``models.yolo.X`` / ``models.common.X`` (``package``
    before those: ``yolov7.`` as the pip packaging of YOLOv7 pickles them)."""

    def __init__(self, package: str = ""):
        self.classes: dict[str, type] = {}
        self.modules = (f"{package}models.yolo", f"{package}models.common")

    def cls(self, name: str) -> type:
        if name not in self.classes:
            module = self.modules[0] if name in UPSTREAM_YOLO_MODULE else self.modules[1]
            self.classes[name] = type(name, (), {"__module__": module, "__qualname__": name})
        return self.classes[name]

    def convert(self, module: nn.Module, half: bool = True):
        """Our module -> the object the upstream code would have pickled (children renamed, fp16 tensors)."""
        names = getattr(type(module), "upstream_names", {})
        to_upstream = {ours: upstream for upstream, ours in names.items()}
        state = dict(module.__dict__)
        state["_modules"] = collections.OrderedDict(
            (to_upstream.get(n, n), None if c is None else self.convert(c, half)) for n, c in module._modules.items())
        state["_parameters"] = collections.OrderedDict(
            (to_upstream.get(n, n), None if p is None else nn.Parameter(p.detach().half() if half else p.detach(),
                                                                         requires_grad=p.requires_grad))
            for n, p in module._parameters.items())
        state["_buffers"] = collections.OrderedDict(
            (to_upstream.get(n, n), None if b is None else (b.half() if half and b.is_floating_point() else b))
            for n, b in module._buffers.items())
        if type(module).__module__.startswith("models."):
            obj = self.cls(UPSTREAM_CLASS.get(type(module), type(module).__name__))()
            obj.__dict__.update(state)
            if "stride" in state["_buffers"]:  # upstream heads keep stride as a plain attribute
                obj.stride = state["_buffers"].pop("stride").float()
                obj.__dict__.pop("_grids", None)
            return obj
        obj = copy.copy(module)
        obj.__dict__.update(state)
        return obj

    def model(self, model: DetectionModel, upstream_yaml: dict, class_name: str = "Model", half: bool = True):
        layers = nn.Sequential()
        layers.__dict__["_modules"] = collections.OrderedDict(
            (str(i), self.convert(layer, half)) for i, layer in enumerate(model.layers))
        root = self.cls(class_name)()
        root.__dict__.update(nn.Module().__dict__)
        root.__dict__.update(_modules=collections.OrderedDict(model=layers), yaml=upstream_yaml,
                             names=list(model.names), stride=model.stride.clone(), yaml_file="from-yaml.yaml")
        return root

    @contextlib.contextmanager
    def importable(self):
        """Make ``models.yolo`` / ``models.common`` resolve to the fake classes while pickling; restore after."""
        parents = {module.rsplit(".", depth)[0] for module in self.modules for depth in (1, 2)
                   if module.count(".") >= depth}  # a package prefix needs its packages importable too
        saved = {name: sys.modules.get(name) for name in (*sorted(parents - set(sys.modules)), *self.modules)}
        for name in saved:
            fake = types.ModuleType(name)
            for cls in self.classes.values():
                if cls.__module__ == name:
                    setattr(fake, cls.__qualname__, cls)
            sys.modules[name] = fake
        try:
            yield
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module

    def save(self, payload, path: Path) -> Path:
        with self.importable():
            torch.save(payload, path)
        return path


def yolov5n_upstream_yaml() -> dict:
    data = yaml.safe_load((CFG_DIR / "yolov5n.yaml").read_text())
    data["ch"] = 3
    return data


def yolov7_tiny_upstream_yaml() -> dict:
    """The official form: the activation as each Conv's 6th argument, no model-wide key."""
    data = yaml.safe_load((CFG_DIR / "yolov7-tiny.yaml").read_text())
    activation = data.pop("activation")
    for section in ("backbone", "head"):
        for line in data[section]:
            if line[2] == "Conv":
                args = line[3]
                line[3] = (args + [1, 1, None, 1][len(args) - 1:])[:3] + [None, 1, activation]
    return data


pytestmark = pytest.mark.torch_threads(1)  # tiny models: see tests/conftest.py


@pytest.fixture(scope="module")
def yolov5n() -> DetectionModel:
    return randomized(DetectionModel("yolov5n.yaml"))


@pytest.fixture(scope="module")
def yolov7_tiny() -> DetectionModel:
    return randomized(DetectionModel("yolov7-tiny.yaml"), seed=3)


def upstream_payload(root, **extra) -> dict:
    return {"epoch": -1, "best_fitness": np.array([0.4242]), "model": root, "ema": None, "updates": None,
            "optimizer": None, "date": datetime.datetime(2022, 11, 22, 12, 0).isoformat(), **extra}


@pytest.fixture(scope="module")
def yolov5n_file(tmp_path_factory, yolov5n) -> Path:
    fake = FakeUpstream()
    root = fake.model(yolov5n, yolov5n_upstream_yaml(), "DetectionModel")
    options = argparse.Namespace(weights=PosixPath("yolov5n.pt"), hyp={"lr0": 0.01}, epochs=300)
    path = tmp_path_factory.mktemp("upstream") / "yolov5n.pt"
    return fake.save(upstream_payload(root, opt=options, git={"remote": "x", "when": datetime.datetime(2022, 1, 1)}),
                     path)


def yolov7_tiny_upstream_file(folder: Path, model: DetectionModel, package: str = "") -> Path:
    fake = FakeUpstream(package=package)
    root = fake.model(model, yolov7_tiny_upstream_yaml())
    root.names = dict(enumerate(model.names))  # newer upstream code stores names as {index: name}
    head = root._modules["model"]._modules["77"]
    anchor_pixels = head._buffers["anchors"].float() * head.stride.view(-1, 1, 1)
    head._buffers["anchor_grid"] = anchor_pixels.view(3, 1, -1, 1, 1, 2)  # YOLOv7 keeps this derived buffer
    path = folder / "yolov7-tiny.pt"
    return fake.save(upstream_payload(root, training_results=None), path)


@pytest.fixture(scope="module")
def yolov7_tiny_file(tmp_path_factory, yolov7_tiny) -> Path:
    """An official YOLOv7 file: its classes pickled as models.yolo.* / models.common.*."""
    return yolov7_tiny_upstream_file(tmp_path_factory.mktemp("upstream"), yolov7_tiny)


@pytest.fixture(scope="module")
def yolov7_tiny_pip_file(tmp_path_factory, yolov7_tiny) -> Path:
    """The same from the pip packaging of YOLOv7 (yolov7detect, ../shared/peer7): classes under yolov7.models.*."""
    return yolov7_tiny_upstream_file(tmp_path_factory.mktemp("upstream-pip"), yolov7_tiny, package="yolov7.")


# ---------------------------------------------------------------------------------------------------- upstream import


def test_upstream_zip_holds_upstream_globals_and_keys(yolov5n_file, yolov7_tiny_file):
    """The fakes look like the real files: upstream class globals and upstream tensor names."""
    with zipfile.ZipFile(yolov5n_file) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    for name in (b"models.yolo\nDetectionModel", b"models.common\nC3", b"models.yolo\nDetect",
                 b"torch.nn.modules.conv\nConv2d", b"torch._utils\n_rebuild_parameter", b"torch\nHalfStorage"):
        assert b"c" + name + b"\n" in pickled, name  # the GLOBAL opcode: c<module>\n<name>\n
    upstream = read_upstream_checkpoint(yolov5n_file)
    for key in ("model.0.conv.weight", "model.2.m.0.cv1.conv.weight", "model.2.cv3.bn.running_var",
                "model.9.cv2.bn.num_batches_tracked", "model.6.m.2.cv2.conv.weight", "model.24.m.2.bias",
                "model.24.anchors"):
        assert key in upstream.state_dict, key
    assert upstream.state_dict["model.0.conv.weight"].dtype == torch.float32
    assert upstream.family == "yolov5" and upstream.epoch == -1 and upstream.best_fitness == pytest.approx(0.4242)
    assert upstream.stride == [8.0, 16.0, 32.0] and len(upstream.names) == 80
    tiny = read_upstream_checkpoint(yolov7_tiny_file)
    assert tiny.family == "yolov7"
    for key in ("model.77.ia.0.implicit", "model.77.im.2.implicit", "model.77.m.0.weight", "model.77.anchor_grid"):
        assert key in tiny.state_dict, key


def test_key_map_is_generic_and_matches_upstream_names(yolov5n, yolov7_tiny):
    mapping = upstream_key_map(yolov5n)
    assert mapping["layers.13.blocks.0.reduce.conv.weight"] == "model.13.m.0.cv1.conv.weight"
    assert mapping["layers.13.main_in.bn.running_mean"] == "model.13.cv1.bn.running_mean"
    assert mapping["layers.9.fuse.conv.weight"] == "model.9.cv2.conv.weight"
    assert mapping["layers.24.outputs.1.weight"] == "model.24.m.1.weight"
    assert mapping["layers.24.anchors"] == "model.24.anchors"
    tiny = upstream_key_map(yolov7_tiny)
    assert tiny["layers.77.implicit_add.0.implicit"] == "model.77.ia.0.implicit"
    assert tiny["layers.77.implicit_mul.1.implicit"] == "model.77.im.1.implicit"


@pytest.mark.parametrize("which", ["yolov5n", "yolov7_tiny", "yolov7_tiny_pip"])
def test_upstream_import_reproduces_outputs(request, which):
    model = request.getfixturevalue(which.removesuffix("_pip"))
    path = request.getfixturevalue(f"{which}_file")
    if which.endswith("_pip"):
        with zipfile.ZipFile(path) as archive:
            pickled = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        assert b"cyolov7.models.yolo\nIDetect\n" in pickled and b"cmodels.yolo" not in pickled
    loaded, info = load_model(path)
    assert not loaded.training
    assert info["strict"] and info["transferred"] == info["total"] == len(model.state_dict())
    assert info["source"] == ("yolov7" if which.startswith("yolov7_tiny") else "yolov5")
    assert info["names"] == model.names and info["best_fitness"] == pytest.approx(0.4242)
    difference = (outputs(loaded) - outputs(model)).abs().max().item()
    assert difference < 1e-4, difference
    torch.testing.assert_close(loaded.head.anchors, model.head.anchors)
    if which.startswith("yolov7_tiny"):
        assert isinstance(loaded.layers[0].act, nn.LeakyReLU) and loaded.layers[0].act.negative_slope == 0.1
        assert loaded.cfg["activation"] == "nn.LeakyReLU(0.1)"


def test_upstream_fused_deploy_weights_load_into_a_fused_model(tmp_path, yolov5n):
    fused = copy.deepcopy(yolov5n).fuse()
    fake = FakeUpstream()
    root = fake.model(fused, yolov5n_upstream_yaml(), half=False)
    path = fake.save(upstream_payload(root), tmp_path / "fused.pt")
    loaded, info = load_model(path)
    assert info["fused"] and loaded.is_fused()
    assert (outputs(loaded) - outputs(yolov5n)).abs().max().item() < 1e-3


def test_transfer_into_slimneck_moves_the_backbone(yolov5n, yolov5n_file, caplog):
    with caplog.at_level(logging.INFO, logger="models.weights"):
        model, info = load_model(yolov5n_file, cfg="yolov5n-slimneck.yaml")
    source, target = yolov5n.state_dict(), model.state_dict()
    backbone = [key for key in source if int(key.split(".")[1]) <= 9]
    assert all(torch.equal(target[key], source[key]) for key in backbone)
    # beyond the backbone: C3 -> VoVGSCSP keeps main_in/skip/fuse (same names and shapes) and the Detect head
    matching = [key for key in target if key in source and source[key].shape == target[key].shape]
    assert all(torch.equal(target[key], source[key]) for key in matching)
    assert {key.split(".")[1] for key in matching} == {str(i) for i in range(10)} | {"13", "17", "20", "23", "24"}
    assert info["transferred"] == len(matching) == len(backbone) + 4 * 3 * 6 + 8 and info["total"] == len(target)
    assert not info["strict"] and model.cfg["head"][0][2] == "GSConv"
    assert f"transferred {info['transferred']}/{info['total']} tensors from {yolov5n_file}" in caplog.text


def test_transfer_with_new_class_count_skips_only_the_output_convs(yolov5n, yolov5n_file):
    model, info = load_model(yolov5n_file, num_classes=3)
    assert model.num_classes == 3 and model.names == ["class0", "class1", "class2"]
    assert info["transferred"] == info["total"] - 6  # 3 output convs x (weight, bias)
    torch.testing.assert_close(model.head.anchors, yolov5n.head.anchors)


def test_yolov7_conv_activation_rewrite():
    data = upstream_model_config(yolov7_tiny_upstream_yaml())
    assert data["activation"] == "nn.LeakyReLU(0.1)" and data["backbone"][0][3] == [32, 3, 2, None, 1]
    mixed = yolov7_tiny_upstream_yaml()
    mixed["backbone"][1][3][5] = "nn.SiLU()"
    with pytest.raises(ValueError, match=r"Convs pass different activations .*our parser sets one"):
        upstream_model_config(mixed)
    partial = yolov7_tiny_upstream_yaml()
    partial["backbone"][1][3] = [64, 3, 2]
    with pytest.raises(ValueError, match=r"default activation at layers \[1\]"):
        upstream_model_config(partial)
    old_v5 = {"backbone": [[-1, 1, "Conv", [16, 3, 1, None, 1, False]]], "head": []}
    assert upstream_model_config(old_v5)["backbone"][0][3] == [16, 3, 1, None, 1, 1, False]


def test_activation_mismatch_is_caught(tmp_path, yolov5n):
    """An older YOLOv5 whose Conv hard-coded Hardswish: the YAML cannot say so, the records can."""
    fake = FakeUpstream()
    variant = copy.deepcopy(yolov5n)
    variant.layers[0].act = nn.Hardswish()
    path = fake.save(upstream_payload(fake.model(variant, yolov5n_upstream_yaml())), tmp_path / "hardswish.pt")
    with pytest.raises(CheckpointError, match=r"activations differ.*layers.0.act: checkpoint Hardswish, rebuilt SiLU"):
        load_model(path)
    model, info = load_model(path, cfg="yolov5n.yaml")  # an explicit cfg: a transfer, the caller's activations
    assert info["transferred"] == info["total"] and isinstance(model.layers[0].act, nn.SiLU)


def test_mismatched_upstream_tensors_are_named(tmp_path, yolov5n):
    fake = FakeUpstream()
    root = fake.model(yolov5n, yolov5n_upstream_yaml())
    root._modules["model"]._modules["2"]._buffers["extra_scale"] = torch.ones(3)
    del root._modules["model"]._modules["24"]._modules["m"]._modules["1"]._parameters["bias"]
    path = fake.save(upstream_payload(root), tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"missing: model.24.m.1.bias \(our layers.24.outputs.1.bias\).*"
                                              r"unexpected: model.2.extra_scale"):
        load_model(path)


def test_unknown_upstream_module_falls_back_to_the_target_cfg(tmp_path, yolov5n, caplog):
    fake = FakeUpstream()
    upstream_yaml = yolov5n_upstream_yaml()
    upstream_yaml["backbone"][9][2] = "SPPFast"  # a module slimneck-yolo does not implement
    path = fake.save(upstream_payload(fake.model(yolov5n, upstream_yaml)), tmp_path / "custom.pt")
    with pytest.raises(CheckpointError, match=r"custom.pt: cannot rebuild .*unknown module 'SPPFast'"):
        load_model(path)
    with caplog.at_level(logging.WARNING, logger="models.weights"):
        model, info = load_model(path, cfg="yolov5n.yaml")
    assert "matching tensor names through the target model" in caplog.text
    assert info["transferred"] == info["total"] - 1  # all but the head stride, which upstream does not store
    assert torch.equal(outputs(model), outputs(yolov5n))


def test_bare_state_dict_needs_a_cfg(tmp_path, yolov5n):
    path = tmp_path / "state.pt"
    torch.save(yolov5n.state_dict(), path)
    with pytest.raises(CheckpointError, match="bare state_dict has no model YAML"):
        load_model(path)
    model, info = load_model(path, cfg="yolov5n.yaml")
    assert info["source"] == "state_dict" and info["transferred"] == info["total"]
    assert torch.equal(outputs(model), outputs(yolov5n))


def test_ema_is_preferred_when_present(tmp_path, yolov5n):
    fake = FakeUpstream()
    other = randomized(copy.deepcopy(yolov5n), seed=9)
    payload = upstream_payload(fake.model(other, yolov5n_upstream_yaml()),
                               ema=fake.model(yolov5n, yolov5n_upstream_yaml()))
    path = fake.save(payload, tmp_path / "last.pt")
    with_ema, info = load_model(path)
    without, info_model = load_model(path, use_ema=False)
    assert info["used_ema"] and not info_model["used_ema"]
    assert torch.equal(outputs(with_ema), outputs(yolov5n)) and torch.equal(outputs(without), outputs(other))


# --------------------------------------------------------------------------------------------------------- safety


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvaluatesText:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload, refused", [(RunsShell, "posix.system"), (EvaluatesText, "builtins.eval")])
@pytest.mark.parametrize("with_model, protocol", [(False, 2), (True, 2), (True, 4)])
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, yolov5n, payload, refused, with_model, protocol):
    marker = tmp_path / "pwned"
    fake = FakeUpstream()
    content = {"model": fake.model(yolov5n, yolov5n_upstream_yaml()) if with_model else None,
               "extra": payload(marker)}
    path = tmp_path / "evil.pt"
    with fake.importable():  # protocol 4 names globals with STACK_GLOBAL instead of GLOBAL
        torch.save(content, path, pickle_protocol=protocol)
    for loader in (load_model, load_checkpoint, read_upstream_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=refused):
            loader(path)
    # the unpickler itself refuses at the point of use too (not only the static scan that runs first)
    with _open_archive(path) as archive, pytest.raises(UnsafeCheckpointError, match=refused):
        RestrictedUnpickler(archive).load()
    assert not marker.exists()


def test_bad_files_get_clear_errors(tmp_path, yolov5n):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_checkpoint(yolov5n))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for loader in (load_model, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"truncated\.pt: .*truncated"):
            loader(truncated)
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy .*non-zip"):
        load_model(legacy)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint"):
        load_checkpoint(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": [1, 2, 3]}, other)
    with pytest.raises(CheckpointError, match=f"not a {FORMAT_NAME}"):
        load_checkpoint(other)


def test_load_checkpoint_points_upstream_files_to_load_model(yolov5n_file):
    with pytest.raises(CheckpointError, match=r"official YOLOv5/YOLOv7 checkpoint.*python -m models.convert"):
        load_checkpoint(yolov5n_file)


# ---------------------------------------------------------------------------------------------------- our format


def test_our_checkpoint_round_trips_with_weights_only(tmp_path, yolov5n):
    model = copy.deepcopy(yolov5n).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model(torch.rand(1, 3, IMAGE, IMAGE))[0].sum().backward()
    optimizer.step()
    model.eval()
    ema = copy.deepcopy(yolov5n)
    payload = build_checkpoint(model, ema_state=ema, ema_updates=7, optimizer=optimizer.state_dict(), epoch=3,
                               best_fitness=np.float64(0.5), hyp={"lr0": 0.01},
                               options={"save_dir": Path("runs/train/exp"), "imgsz": 64, "rect": False},
                               extra={"tags": ("a", "b")})
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, payload)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT_NAME and raw["version"] == 1
    assert raw["options"]["save_dir"] == "runs/train/exp" and raw["best_fitness"] == 0.5
    assert raw["model_cfg"]["yaml_file"] == "yolov5n.yaml" and raw["model_cfg"]["ch"] == 3
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 3 and checkpoint["ema_updates"] == 7 and checkpoint["names"] == yolov5n.names
    assert all(t.dtype in (torch.float32, torch.int64) for t in checkpoint["model"].values())
    fresh = torch.optim.SGD(copy.deepcopy(yolov5n).parameters(), lr=0.01, momentum=0.9)
    fresh.load_state_dict(checkpoint["optimizer"])

    from_ema, info = load_model(path)
    assert info["source"] == "slimneck" and info["used_ema"] and info["epoch"] == 3 and info["strict"]
    assert torch.equal(outputs(from_ema), outputs(yolov5n))
    from_model, info = load_model(path, use_ema=False)
    assert not info["used_ema"] and torch.equal(outputs(from_model), outputs(model))
    fused, info = load_model(path, fuse=True)
    assert fused.is_fused() and (outputs(fused) - outputs(yolov5n)).abs().max().item() < 1e-3


def test_our_checkpoint_transfers_to_another_cfg(tmp_path, yolov5n):
    path = tmp_path / "best.pt"
    save_checkpoint(path, build_checkpoint(yolov5n))
    model, info = load_model(path, cfg="yolov5n-slimneck.yaml", num_classes=80)
    backbone = [key for key in yolov5n.state_dict() if int(key.split(".")[1]) <= 9]
    assert info["transferred"] >= len(backbone) and info["total"] == len(model.state_dict())
    transferred, total = transfer_state_dict(DetectionModel("yolov5n.yaml"), yolov5n.state_dict())
    assert transferred == total


def test_plain_types_only(tmp_path, yolov5n):
    with pytest.raises(TypeError, match=r"\['options'\]\['device'\]: a torch.device cannot go into a checkpoint"):
        save_checkpoint(tmp_path / "x.pt", build_checkpoint(yolov5n, options={"device": torch.device("cpu")}))
    with pytest.raises(TypeError, match="unknown field"):
        build_checkpoint(yolov5n, learning_rate=0.1)
    assert not list(tmp_path.iterdir())


def test_save_checkpoint_is_atomic(tmp_path, yolov5n, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, build_checkpoint(yolov5n, epoch=1))
    before = path.read_bytes()
    real_save = torch.save

    def crash_midway(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, build_checkpoint(yolov5n, epoch=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_convert_cli_writes_our_format(tmp_path, yolov7_tiny_file, capsys):
    output = tmp_path / "tiny.pt"
    result = subprocess.run([sys.executable, "-m", "models.convert", str(yolov7_tiny_file), "-o", str(output)],
                            cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    checkpoint = load_checkpoint(output)
    assert checkpoint["model_cfg"]["activation"] == "nn.LeakyReLU(0.1)" and checkpoint["extra"]["source"] == "yolov7"
    original, _ = load_model(yolov7_tiny_file)
    converted, info = load_model(output)
    assert info["source"] == "slimneck" and torch.equal(outputs(converted), outputs(original))
    assert convert_main([str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt does not exist" in capsys.readouterr().err
