"""Training precision and memory format: what auto picks, what is refused, and that channels_last training
computes what NCHW training computes (the slim-neck's layout-keeping shuffle included)."""
from __future__ import annotations

import logging

import pytest
import torch
import yaml

from engine.train import precision as precision_module
from engine.train.precision import cpu_has_native_bf16, resolve_memory_format, resolve_precision
from engine.train.trainer import Trainer
from models.errors import UsageError
from models.modules.gsconv import GSConv, channel_shuffle, shuffled_concat
from models.yolo import DetectionModel
from helpers import train_options as options

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)
    chosen = resolve_precision("auto", CPU)
    assert chosen.name == expected and not chosen.needs_grad_scaler


def test_explicit_precisions_on_cpu(monkeypatch, caplog):
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(UsageError, match="choose one of"):
        resolve_precision("int8", CPU)
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16", CPU).dtype is torch.bfloat16
    assert "emulated" in caplog.text
    assert resolve_precision("fp32", CPU).autocast().__class__.__name__ == "nullcontext"


def test_native_bf16_is_read_from_cpu_flags_without_torch_probes(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_native_bf16(flags)
    flags.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16(flags)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_memory_format_auto_is_channels_last_on_cpu():
    assert resolve_memory_format("auto", CPU) is torch.channels_last
    assert resolve_memory_format("contiguous", CPU) is torch.contiguous_format
    assert resolve_memory_format("auto", torch.device("mps")) is torch.contiguous_format
    with pytest.raises(UsageError):
        resolve_memory_format("nhwc", CPU)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_shuffled_concat_is_the_concatenation_then_shuffle(layout):
    first, second = (torch.randn(2, 6, 5, 7).contiguous(memory_format=layout) for _ in range(2))
    result = shuffled_concat(first, second)
    assert torch.equal(result, channel_shuffle(torch.cat((first, second), 1), 2))
    assert result.is_contiguous(memory_format=layout)


def _output_and_gradients(model: torch.nn.Module, images: torch.Tensor, layout) -> tuple[list, dict]:
    model = model.to(memory_format=layout)
    outputs = model(images.contiguous(memory_format=layout))
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    sum(((output - 0.1) ** 2).sum() for output in outputs).backward()
    return [output.detach() for output in outputs], {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("build", [lambda: GSConv(8, 16, 3, 1), lambda: DetectionModel("yolov5n-slimneck.yaml",
                                                                                        num_classes=3)],
                         ids=["GSConv", "yolov5n-slimneck"])


def test_channels_last_training_gives_the_nchw_outputs_and_gradients(build):
    # float64, so that only a wrong computation (not the kernels' summation order) can differ
    torch.manual_seed(0)
    reference_model = build().train().double()
    state = {key: value.clone() for key, value in reference_model.state_dict().items()}
    images = torch.rand(2, getattr(reference_model, "in_channels", 8), 64, 64, dtype=torch.float64)
    expected_outputs, expected_gradients = _output_and_gradients(reference_model, images, torch.contiguous_format)
    other = build().train().double()
    other.load_state_dict(state)
    outputs, gradients = _output_and_gradients(other, images, torch.channels_last)
    for got, want in zip(outputs, expected_outputs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    scale = max(gradient.abs().max().item() for gradient in expected_gradients.values())
    for name, want in expected_gradients.items():
        torch.testing.assert_close(gradients[name] / scale, want / scale, rtol=0, atol=1e-10, msg=name)


def test_training_stores_the_resolved_settings_and_nchw_checkpoints(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_strip_checkpoints", lambda self: None)
    trainer = Trainer(options(tiny_data, tmp_path, epochs=1, cfg="yolov5n-slimneck.yaml"))
    assert trainer.precision.name in ("fp32", "bf16") and trainer.memory_format is torch.channels_last
    summary = trainer.run()
    saved = yaml.safe_load((tmp_path / "run" / "opt.yaml").read_text())
    assert saved["precision"] == trainer.precision.name and saved["memory_format"] == "channels_last"
    checkpoint = torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=True)
    assert checkpoint["options"]["precision"] == trainer.precision.name
    for part in ("model", "ema"):
        for name, tensor in checkpoint[part].items():
            assert tensor.is_contiguous(), f"{part}[{name}] is saved in a non-NCHW layout"
            assert not tensor.is_floating_point() or tensor.dtype is torch.float32, name
    assert summary["epochs_run"] == 1


def test_bf16_training_runs_and_resume_keeps_its_precision(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_strip_checkpoints", lambda self: None)
    summary = Trainer(options(tiny_data, tmp_path, epochs=1, precision="bf16")).run()
    assert summary["epochs_run"] == 1
    checkpoint = torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=True)
    assert all(t.dtype is torch.float32 for t in checkpoint["ema"].values() if t.is_floating_point())
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    resumed = Trainer(options(tiny_data, tmp_path, resume=str(tmp_path / "run"), epochs=1))
    assert resumed.precision.name == "bf16" and resumed.options.precision == "bf16"
    overridden = Trainer(options(tiny_data, tmp_path, resume=str(tmp_path / "run"), precision="fp32"))
    assert overridden.precision.name == "fp32"
