"""The training engine: a real (tiny) run, exact resume after an interruption, checkpoints, DDP with gloo."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.train.trainer import Trainer, TrainingInterrupted, TrainOptions
from models.yolo import DetectionModel
from helpers import REPO as ROOT
from helpers import train_options as options


def test_train_writes_yolov5_outputs(tiny_data, tmp_path):
    summary = Trainer(options(tiny_data, tmp_path, noplots=False, noautoanchor=False)).run()
    run = Path(summary["save_dir"])
    assert run == tmp_path / "run"
    for name in ("weights/last.pt", "weights/best.pt", "results.csv", "results.png", "opt.yaml", "hyp.yaml",
                 "labels.jpg", "train_batch0.jpg", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"train/box_loss", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/obj_loss", "x/lr0"} <= set(rows[0])
    model_keys = DetectionModel("yolov5n.yaml", num_classes=6).state_dict().keys()
    for name in ("last.pt", "best.pt"):  # a finished run keeps only the EMA weights, as YOLOv5 does
        checkpoint = torch.load(run / "weights" / name, map_location="cpu", weights_only=True)
        assert checkpoint["ema"] is None and checkpoint["optimizer"] is None and checkpoint["scheduler"] is None
        assert checkpoint["extra"]["stripped"] and set(checkpoint["model"]) == set(model_keys)
        assert checkpoint["names"] == ["rectangle", "ellipse", "triangle", "star", "cross", "ring"]
    assert torch.load(run / "weights" / "last.pt", weights_only=True)["epoch"] == 1
    # a second run with the same name goes to run2 (YOLOv5's exp, exp2, ...)
    second = Trainer(options(tiny_data, tmp_path, epochs=1))
    assert second.save_dir == tmp_path / "run2"


def test_resume_after_interruption_continues_exactly(tiny_data, tmp_path, monkeypatch):
    # compare the complete training state at the end (stripping it from finished runs is tested above)
    monkeypatch.setattr(Trainer, "_strip_checkpoints", lambda self: None)
    reference = Trainer(options(tiny_data, tmp_path / "a", epochs=3))
    reference.run()
    expected = torch.load(tmp_path / "a" / "run" / "weights" / "last.pt", weights_only=True)

    original = Trainer._seed_epoch

    def interrupt_in_second_epoch(self, loader, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, loader, epoch)

    monkeypatch.setattr(Trainer, "_seed_epoch", interrupt_in_second_epoch)
    with pytest.raises(TrainingInterrupted):
        Trainer(options(tiny_data, tmp_path / "b", epochs=3)).run()
    saved = torch.load(tmp_path / "b" / "run" / "weights" / "last.pt", weights_only=True)
    assert saved["epoch"] == 0 and saved["extra"]["interrupted_in_epoch"] == 1
    monkeypatch.setattr(Trainer, "_seed_epoch", original)

    resumed = Trainer(TrainOptions(resume=str(tmp_path / "b" / "run"), workers=0))
    assert resumed.save_dir == tmp_path / "b" / "run" and resumed.options.epochs == 3
    resumed.run()
    final = torch.load(tmp_path / "b" / "run" / "weights" / "last.pt", weights_only=True)
    assert final["epoch"] == 2
    assert final["scheduler"]["last_epoch"] == expected["scheduler"]["last_epoch"] == 3
    assert final["ema_updates"] == expected["ema_updates"]
    for key in ("model", "ema"):
        for name, value in expected[key].items():
            assert torch.allclose(final[key][name], value, atol=1e-5), f"{key}.{name} differs after resume"
    steps = [s["step"] for s in final["optimizer"]["state"].values() if "step" in s]
    assert steps == [s["step"] for s in expected["optimizer"]["state"].values() if "step" in s]


def test_resume_of_a_finished_run_is_refused(tiny_data, tmp_path):
    Trainer(options(tiny_data, tmp_path, epochs=1)).run()
    with pytest.raises(ValueError, match="already finished"):
        Trainer(TrainOptions(resume=str(tmp_path / "run"), workers=0)).run()


def test_freeze_keeps_backbone_weights(tiny_data, tmp_path):
    trainer = Trainer(options(tiny_data, tmp_path, epochs=1, freeze=[10]))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("layers.0.")}
    trainer.run()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith("weight") and "bn" not in k)
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if n.startswith("layers.9."))
    assert all(p.requires_grad for n, p in trainer.model.named_parameters() if n.startswith("layers.10."))


def test_train_cli_on_a_slimneck_config(tiny_data, tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--cfg", "yolov7-tiny-slimneck.yaml", "--data", str(tiny_data),
                             "--epochs", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                             "--project", str(tmp_path), "--name", "cli", "--noplots", "--quiet"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "cli" / "weights" / "best.pt").is_file()
    assert "1 epochs completed" in result.stderr


def test_train_cli_reports_missing_config(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--cfg", "yolov5q.yaml", "--epochs", "1", "--project",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "yolov5q.yaml" in result.stderr and "not found" in result.stderr


@pytest.mark.slow
def test_two_process_gloo_ddp_run(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "train.py", "--cfg", "yolov5n.yaml", "--data", str(tiny_data), "--epochs", "1", "--imgsz", "64",
               "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(tmp_path), "--name", "ddp",
               "--noplots", "--quiet"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP: rank 0/2, backend gloo" in result.stderr and "DDP: rank 1/2, backend gloo" in result.stderr
    assert sorted(p.name for p in (tmp_path / "ddp" / "weights").iterdir()) == ["best.pt", "last.pt"]
    assert not (tmp_path / "ddp2").exists()  # rank 1 made no run folder of its own


def test_weights_with_another_cfg_keep_the_pretrained_backbone(tiny_data, tmp_path):
    Trainer(options(tiny_data, tmp_path, epochs=1, name="base")).run()
    best = tmp_path / "base" / "weights" / "best.pt"
    source = torch.load(best, weights_only=True)["model"]  # the EMA weights, after stripping
    trainer = Trainer(options(tiny_data, tmp_path, cfg="yolov5n-slimneck.yaml", weights=str(best), name="slim"))
    state = trainer.model.state_dict()
    backbone = [k for k in source if k.startswith(tuple(f"layers.{i}." for i in range(10)))]
    assert backbone and all(torch.equal(state[k], source[k]) for k in backbone)
    # the new neck was built: layer 10 is a GSConv, whose depth-wise "cheap" conv yolov5n has no counterpart for
    assert trainer.model.records[10].module_name == "GSConv" and "layers.10.cheap.conv.weight" not in source
    assert state["layers.10.cheap.conv.weight"].abs().sum() > 0


def test_lr_schedule_has_yolov5_timing():
    """After warm-up, epoch e trains at lr0 * lf(e - 1) (YOLOv5 steps its scheduler one epoch late)."""
    from engine.train.optim import build_scheduler, lr_lambda

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = build_scheduler(optimizer, lr_lambda(epochs=10, lrf=0.01))
    per_epoch = []
    for _ in range(10):
        per_epoch.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # lf(e) = (1 - e / 10) * 0.99 + 0.01: 1, 1, 0.901, ..., lf(8) = 0.208 in the last epoch
    expected = [0.01, 0.01, 0.00901, 0.00802, 0.00703, 0.00604, 0.00505, 0.00406, 0.00307, 0.00208]
    assert per_epoch == pytest.approx(expected, abs=1e-9)


def test_a_trainer_waiting_for_data_says_it_is_input_bound(tiny_data, tmp_path, monkeypatch, caplog):
    import time

    from engine.data.dataset import YoloDataset

    load = YoloDataset.__getitem__

    def slow_load(self, index):
        time.sleep(0.1)  # far slower than a yolov5n step on 4 images of 64 px
        return load(self, index)

    monkeypatch.setattr(YoloDataset, "__getitem__", slow_load)
    with caplog.at_level("WARNING", logger="engine.train.trainer"):
        summary = Trainer(options(tiny_data, tmp_path, noval=True)).run()
    messages = [record.getMessage() for record in caplog.records if "Input-bound" in record.getMessage()]
    assert len(messages) == 1 and "(--workers 0)" in messages[0]  # said once per run, not every epoch
    assert summary["input_wait_fraction"] > 0.2


def test_warmup_floor_comes_from_the_hyp():
    from engine.train.optim import warmup_iterations
    from models.errors import UsageError

    assert warmup_iterations({"warmup_epochs": 3.0}, batches=10) == 100  # YOLOv5's floor
    assert warmup_iterations({"warmup_epochs": 3.0}, batches=50) == 150
    assert warmup_iterations({"warmup_epochs": 3.0, "warmup_min_iterations": 1000}, batches=50) == 1000  # YOLOv7
    with pytest.raises(UsageError, match="warmup_min_iterations"):
        warmup_iterations({"warmup_epochs": 3.0, "warmup_min_iterations": 0.5}, batches=50)


def test_gradient_clip_comes_from_the_hyp():
    import math

    from engine.train.optim import max_grad_norm
    from models.errors import UsageError

    assert max_grad_norm({}) == 10.0 and max_grad_norm({"max_grad_norm": 3}) == 3.0  # YOLOv5's default
    assert max_grad_norm({"max_grad_norm": 0}) == math.inf  # YOLOv7: no clipping
    with pytest.raises(UsageError, match="max_grad_norm"):
        max_grad_norm({"max_grad_norm": -1})


def test_yolov7_implicit_parameters_train_without_weight_decay():
    from engine.train.optim import build_optimizer

    model = DetectionModel("yolov7-tiny.yaml", num_classes=3)
    optimizer = build_optimizer(model, weight_decay=5e-4)
    implicit = {id(p) for name, p in model.named_parameters() if name.endswith(".implicit")}
    groups = [{id(p) for p in group["params"]} for group in optimizer.param_groups]
    assert len(implicit) == 6 and implicit <= groups[2] and not implicit & groups[1]
    assert optimizer.param_groups[2]["weight_decay"] == 0.0


@pytest.mark.parametrize("cfg, hyp_file, loss", [("yolov7-tiny-slimneck.yaml", "hyp.scratch.tiny.yaml", "OtaLoss"),
                                                 ("yolov5n.yaml", "hyp.scratch-low.yaml", "YoloLoss")])


def test_without_hyp_the_config_names_its_recipe(tiny_data, tmp_path, caplog, cfg, hyp_file, loss):
    """No --hyp: YOLOv7 configs train with YOLOv7's file (OTA loss, 1000-iteration warm-up floor), the rest with
    scratch-low; the file is logged and written to opt.yaml; validation losses stay YOLOv5's."""
    import logging

    import yaml

    with caplog.at_level(logging.INFO, logger="engine.train.trainer"):
        trainer = Trainer(options(tiny_data, tmp_path, cfg=cfg, hyp=""))
    assert Path(trainer.options.hyp).name == hyp_file
    assert any(hyp_file in record.getMessage() and "Hyperparameters" in record.getMessage()
               for record in caplog.records)
    assert Path(yaml.safe_load((trainer.save_dir / "opt.yaml").read_text())["hyp"]).name == hyp_file
    state = trainer._training_state(batches=4)
    assert type(state.loss_fn).__name__ == loss and type(state.val_loss_fn).__name__ == "YoloLoss"
    assert state.warmup_iterations == (1000 if loss == "OtaLoss" else 100)
    assert state.max_grad_norm == (float("inf") if loss == "OtaLoss" else 10.0)
