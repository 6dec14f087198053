"""Non-finite training steps: skipped whole, named by epoch, batch and images, and fatal after five in an epoch."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import engine.train.trainer
from engine.train.guard import MAX_NON_FINITE_STEPS, NonFiniteGuard, NonFiniteTrainingError
from engine.train.loss import YoloLoss
from engine.train.trainer import Trainer
from helpers import train_options


def options(data: Path, project: Path, **overrides):
    """The tiny run of helpers.train_options, shortened to one epoch of 4 batches of 2 images."""
    return train_options(data, project, **{"epochs": 1, "batch_size": 2, **overrides})


class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(context, value):
        return value.clone()

    @staticmethod
    def backward(context, gradient):
        return gradient * float("nan")


def faulty_loss(bad: set[tuple[int, int]], kind: str):
    """A YoloLoss whose call number (epoch, batch) in ``bad`` gives a NaN loss or a NaN gradient."""

    class FaultyLoss(YoloLoss):
        calls = 0

        def __call__(self, predictions, targets):
            total, items = super().__call__(predictions, targets)
            call, FaultyLoss.calls = FaultyLoss.calls, FaultyLoss.calls + 1
            if (0, call) in bad:
                if kind == "loss":
                    return total * float("nan"), items * float("nan")
                return _NanGradient.apply(total), items
            return total, items

    return FaultyLoss


def test_guard_counts_only_what_a_loss_scale_does_not_explain():
    guard = NonFiniteGuard(limit=2)
    guard.start_epoch(0)
    guard.add_batch(0, ("a.jpg",), torch.tensor(1.0))
    assert guard.step_is_finite(torch.tensor(3.0))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    guard.add_batch(1, ("b.jpg",), torch.tensor(1.0))
    assert not guard.step_is_finite(torch.tensor(float("inf")), scaler) and guard.skipped == 1

    class ScaledUp:  # an enabled fp16 loss scaler at its usual large scale
        def is_enabled(self):
            return True

        def get_scale(self):
            return 65536.0

    guard.add_batch(2, ("c.jpg",), torch.tensor(1.0))
    assert not guard.step_is_finite(torch.tensor(float("inf")), ScaledUp())
    assert guard.skipped == 1 and guard.overflows == 1
    guard.add_batch(3, ("d.jpg",), torch.tensor(float("nan")))  # a NaN loss is never an overflow
    with pytest.raises(NonFiniteTrainingError, match="2 optimizer steps in epoch 1 had a non-finite loss.*d.jpg"):
        guard.step_is_finite(torch.tensor(float("nan")), ScaledUp())
    guard.start_epoch(1)
    assert guard.skipped == 0


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_a_non_finite_step_is_skipped_and_named(tiny_data, tmp_path, monkeypatch, caplog, kind):
    monkeypatch.setattr(engine.train.trainer, "build_loss", faulty_loss({(0, 1)}, kind))
    monkeypatch.setattr(Trainer, "_strip_checkpoints", lambda self: None)
    seen = []
    original = torch.optim.SGD.step

    def counting_step(self, *args, **kwargs):
        seen.append([parameter.detach().clone() for parameter in self.param_groups[1]["params"][:3]])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    with caplog.at_level(logging.WARNING, logger="engine.train.guard"):
        Trainer(options(tiny_data, tmp_path)).run()
    warnings = [record.getMessage() for record in caplog.records if record.name == "engine.train.guard"]
    what = "loss" if kind == "loss" else "gradient norm"
    assert len(warnings) == 1 and f"epoch 1, batch 1: {what} is not finite" in warnings[0]
    assert ".jpg" in warnings[0] and "train_0000" in warnings[0]
    checkpoint = torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=True)
    # 4 batches; warm-up accumulates 1, 1, 2, 2 batches per step: steps after batches 0, 1 and 3 in a clean run.
    # Batch 1's step is skipped, batch 2 starts a new accumulation, so batch 3 ends it: 2 optimizer steps and
    # 2 EMA updates, and the weights stayed finite.
    assert len(seen) == 2 and checkpoint["ema_updates"] == 2
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())
    # the skipped step left the weights as they were: the step after it starts from the weights before it
    assert all(torch.isfinite(tensor).all() for tensors in seen for tensor in tensors)


def test_training_stops_with_a_clear_error_after_five_bad_steps(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(engine.train.trainer, "build_loss", faulty_loss({(0, call) for call in range(100)}, "loss"))
    with pytest.raises(NonFiniteTrainingError, match=f"{MAX_NON_FINITE_STEPS} optimizer steps in epoch 1"):
        Trainer(options(tiny_data, tmp_path, batch_size=1)).run()


def test_the_cli_reports_divergence_in_one_line(tiny_data, tmp_path, monkeypatch, caplog):
    import train

    monkeypatch.setattr(engine.train.trainer, "build_loss", faulty_loss({(0, call) for call in range(100)}, "loss"))
    code = train.main(["--data", str(tiny_data), "--cfg", "yolov5n.yaml", "--epochs", "1", "--batch-size", "1",
                       "--imgsz", "64", "--device", "cpu", "--workers", "0", "--project", str(tmp_path), "--noplots",
                       "--quiet", "--noautoanchor"])
    assert code == 2
    assert any("training diverged" in record.getMessage() for record in caplog.records if record.levelname == "ERROR")
