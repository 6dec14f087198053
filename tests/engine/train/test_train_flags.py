"""train.py's YOLOv5 flags: --rect, --multi-scale, --sync-bn, --image-weights, --nosave, and TensorBoard logging.
Each test checks that the flag changes what it should (batch shapes, sampled images, checkpoints written)."""
from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from engine.data.augment import MULTI_SCALE_RANGE, multi_scale
from engine.data.loader import WeightedEpochSampler, class_weights, image_weights
from engine.train.tensorboard import open_tensorboard
from engine.train.trainer import Trainer, TrainOptions
from models.errors import MissingDependencyError, UsageError
from helpers import train_options

# (width, height, labels [class, cx, cy, w, h]): landscape, portrait and square images; class 2 is rare and
# two images are backgrounds
IMAGES = [(64, 32, [[0, 0.3, 0.5, 0.2, 0.4]]), (96, 48, [[0, 0.5, 0.5, 0.3, 0.3], [1, 0.2, 0.3, 0.1, 0.2]]),
          (32, 64, [[1, 0.5, 0.4, 0.5, 0.2]]), (48, 96, [[0, 0.4, 0.6, 0.3, 0.2]]), (64, 64, [[2, 0.5, 0.5, 0.4, 0.4]]),
          (64, 48, [[0, 0.6, 0.6, 0.2, 0.2]]), (40, 80, []), (80, 40, [[1, 0.5, 0.5, 0.2, 0.5]]),
          (64, 64, []), (72, 36, [[0, 0.5, 0.5, 0.5, 0.5], [0, 0.2, 0.2, 0.1, 0.1]])]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for index, (width, height, labels) in enumerate(IMAGES):
            image_path = root / "images" / split / f"{index:02d}.jpg"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(image_path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
            label_path = root / "labels" / split / f"{index:02d}.txt"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.write_text("".join(" ".join(f"{v:g}" for v in row) + "\n" for row in labels))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a, b, c]\n")
    return root / "data.yaml"


def options(data: Path, project: Path, **overrides) -> TrainOptions:
    """helpers.train_options for one epoch of batch 2, seed 1, without TensorBoard."""
    return train_options(data, project, **{"epochs": 1, "batch_size": 2, "seed": 1, "tensorboard": False, **overrides})


def record_inputs(trainer: Trainer) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    trainer.model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape))
                                            if module.training else None)
    return shapes


def test_rect_batches_keep_the_aspect_ratio(mixed_data, tmp_path):
    trainer = Trainer(options(mixed_data, tmp_path, rect=True))
    train_loader, train_set, _ = trainer._dataloaders()
    assert train_set.rect and not train_set.mosaic
    seen = []
    for batch, (images, _, paths, _) in enumerate(train_loader):
        assert tuple(images.shape[2:]) == tuple(train_set.batch_shapes[batch])
        seen.append(tuple(images.shape[2:]))
        assert max(images.shape[2:]) == 64
        for path in paths:  # each image, resized to long side 64 with its own aspect ratio, fits the batch shape
            width, height, _ = IMAGES[int(Path(path).stem)]
            gain = 64 / max(width, height)
            assert round(height * gain) <= images.shape[2] and round(width * gain) <= images.shape[3]
    assert any(h < w for h, w in seen) and any(h > w for h, w in seen)
    shapes = record_inputs(trainer)
    trainer.run()
    assert sorted(shape[2:] for shape in shapes) == sorted(seen)  # trained on those shapes, not squares
    default = Trainer(options(mixed_data, tmp_path))
    assert not default._dataloaders()[1].rect


def test_multi_scale_sizes_vary_and_stay_stride_multiples(mixed_data, tmp_path):
    trainer = Trainer(options(mixed_data, tmp_path, multi_scale=True, epochs=3))
    shapes = record_inputs(trainer)
    trainer.run()
    sides = {shape[2:] for shape in shapes}
    assert len(sides) >= 2
    low, high = 64 * MULTI_SCALE_RANGE[0], 64 * MULTI_SCALE_RANGE[1]
    assert all(side % 32 == 0 and low <= side <= high for pair in sides for side in pair)
    plain = Trainer(options(mixed_data, tmp_path))
    plain_shapes = record_inputs(plain)
    plain.run()
    assert {shape[2:] for shape in plain_shapes} == {(64, 64)}


def test_multi_scale_function():
    rng = random.Random(0)
    sizes = set()
    for _ in range(50):
        images = torch.rand(2, 3, 64, 128)
        resized = multi_scale(images, rng, imgsz=128, stride=32)
        height, width = resized.shape[2:]
        assert height % 32 == 0 and width % 32 == 0 and 64 <= width <= 192
        assert height == max(32, int(np.ceil(width / 2 / 32)) * 32)  # the 1:2 batch stays about 1:2
        sizes.add(width)
    assert sizes == {64, 96, 128, 160, 192}
    same = random.Random(5), random.Random(5)
    assert torch.equal(multi_scale(torch.ones(1, 3, 64, 64), same[0], 64, 32),
                       multi_scale(torch.ones(1, 3, 64, 64), same[1], 64, 32))


def test_sync_bn_converts_under_ddp_on_cuda_and_is_ignored_elsewhere(mixed_data, tmp_path, caplog):
    trainer = Trainer(options(mixed_data, tmp_path, sync_bn=True))
    keys = set(trainer.model.state_dict())
    with caplog.at_level("WARNING"):
        trainer._convert_sync_batchnorm()
    assert "--sync-bn ignored" in caplog.text
    assert not any(isinstance(module, nn.SyncBatchNorm) for module in trainer.model.modules())
    # the DDP-on-CUDA branch, without a GPU: only the module swap is exercised
    trainer.world_size, trainer.device = 2, torch.device("cuda")
    trainer._convert_sync_batchnorm()
    trainer.device = torch.device("cpu")
    synced = [module for module in trainer.model.modules() if isinstance(module, nn.SyncBatchNorm)]
    assert synced and not any(type(module) is nn.BatchNorm2d for module in trainer.model.modules())
    assert set(trainer.model.state_dict()) == keys  # checkpoints keep their keys
    state = trainer._training_state(batches=5)
    no_decay = {id(p) for group in state.optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert all(id(module.weight) in no_decay for module in synced)
    trainer.model.train()
    trainer.model(torch.rand(2, 3, 64, 64))  # without a process group SyncBatchNorm works as BatchNorm


def test_image_weights_formula_and_sampler():
    labels = [np.array([[0, 0.5, 0.5, 0.1, 0.1]] * 3), np.array([[1, 0.5, 0.5, 0.1, 0.1]]), np.zeros((0, 5))]
    weights = class_weights(labels, 3)  # counts 3, 1, absent (1): 1/3, 1, 1 normalised
    np.testing.assert_allclose(weights, np.array([1 / 3, 1, 1]) / (7 / 3))
    per_image = image_weights(labels, 3)
    np.testing.assert_allclose(per_image, [3 * 3 * weights[0], 3 * weights[1], 0])
    with_maps = image_weights(labels, 3, class_maps=np.array([0.5, 0.0, 0.0]))
    np.testing.assert_allclose(with_maps, [3 * 3 * weights[0] * 0.25 / 3, 3 * weights[1] / 3, 0])

    generator = torch.Generator().manual_seed(0)
    sampler = WeightedEpochSampler(3, generator)
    sampler.set_weights(np.array([1.0, 3.0, 0.0]))
    drawn = np.bincount([index for _ in range(400) for index in sampler], minlength=3)
    assert drawn[2] == 0 and 2.5 < drawn[1] / drawn[0] < 3.5
    with pytest.raises(ValueError, match="not all 0"):
        sampler.set_weights(np.zeros(3))


def test_image_weights_draws_rare_classes_more_often(mixed_data, tmp_path, monkeypatch):
    seen: list[list[str]] = []
    original = Trainer._train_step

    def record(self, model, state, images, targets, paths, epoch, batch):
        seen[-1].extend(Path(path).stem for path in paths)
        return original(self, model, state, images, targets, paths, epoch, batch)

    monkeypatch.setattr(Trainer, "_train_step", record)
    counts = {}
    for flag in (False, True):
        seen.append([])
        Trainer(options(mixed_data, tmp_path, image_weights=flag, epochs=4, noval=True, name=str(flag))).run()
        counts[flag] = {stem: seen[-1].count(stem) for stem in set(seen[-1])}
    assert all(counts[False][f"{index:02d}"] == 4 for index in range(len(IMAGES)))  # each image once per epoch
    assert "06" not in counts[True] and "08" not in counts[True]  # backgrounds weigh 0
    assert counts[True]["04"] > 4  # the one image of the rare class 2, more than once per epoch
    assert sum(counts[True].values()) == 4 * len(IMAGES)
    with pytest.raises(UsageError, match="--image-weights and --rect"):
        Trainer(options(mixed_data, tmp_path, image_weights=True, rect=True))


def test_nosave_writes_the_same_checkpoints_only_at_the_end(mixed_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_strip_checkpoints", lambda self: None)
    writes: list[tuple[str, int]] = []
    original = Trainer._save

    def record(self, checkpoint, path):
        writes.append((path.name, checkpoint["epoch"]))
        original(self, checkpoint, path)

    monkeypatch.setattr(Trainer, "_save", record)
    Trainer(options(mixed_data, tmp_path, epochs=3, save_period=1, name="normal")).run()
    normal_writes, writes[:] = list(writes), []
    Trainer(options(mixed_data, tmp_path, epochs=3, save_period=1, name="nosave", nosave=True)).run()
    assert [name for name, _ in writes] in (["best.pt", "last.pt"], ["last.pt", "best.pt"])
    assert {name for name, _ in normal_writes} == {"best.pt", "last.pt", "epoch1.pt", "epoch2.pt", "epoch3.pt"}
    best_epoch = max(epoch for name, epoch in normal_writes if name == "best.pt")
    assert dict(writes)["best.pt"] == best_epoch and dict(writes)["last.pt"] == 2
    for name in ("best.pt", "last.pt"):
        normal = torch.load(tmp_path / "normal" / "weights" / name, weights_only=True)
        nosave = torch.load(tmp_path / "nosave" / "weights" / name, weights_only=True)
        for key in ("model", "ema"):
            assert all(torch.equal(normal[key][k], nosave[key][k]) for k in normal[key]), (name, key)
    assert sorted(path.name for path in (tmp_path / "nosave" / "weights").iterdir()) == ["best.pt", "last.pt"]


def test_tensorboard_events_hold_the_results_and_batches(mixed_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = Trainer(options(mixed_data, tmp_path, epochs=2, tensorboard=True, noplots=False)).run()
    run = Path(summary["save_dir"])
    events = list(run.glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    rows = list(csv.DictReader((run / "results.csv").open()))
    tags = accumulator.Tags()
    assert set(rows[0]) - {"epoch"} <= set(tags["scalars"])
    for tag in ("train/box_loss", "metrics/mAP_0.5:0.95", "val/cls_loss", "x/lr0"):
        values = accumulator.Scalars(tag)
        assert [event.step for event in values] == [0, 1]
        np.testing.assert_allclose([event.value for event in values], [float(row[tag]) for row in rows],
                                   rtol=1e-5, atol=1e-7)
    assert "train_batch0" in tags["images"]


def test_tensorboard_off_or_missing(mixed_data, tmp_path, monkeypatch):
    summary = Trainer(options(mixed_data, tmp_path, tensorboard=False)).run()
    assert not list(Path(summary["save_dir"]).glob("events.out.tfevents.*"))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match="pip install tensorboard"):
        open_tensorboard(tmp_path, True)
    assert open_tensorboard(tmp_path, None) is None
