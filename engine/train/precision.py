"""Training precision and memory format: what ``--precision`` and ``--memory-format`` mean on each device.

``auto`` picks, per device:

| device | precision | memory format |
|---|---|---|
| CUDA | fp16 autocast + GradScaler (YOLOv5's AMP) | contiguous (NCHW), as YOLOv5; not yet measured here |
| CPU with native bf16 (AVX512-BF16 or AMX-BF16) | bf16 autocast | channels_last |
| other CPUs | fp32 | channels_last |
| MPS | fp32 | contiguous (NCHW) |

Autocast changes only the dtype of the activations inside the forward pass: the weights, the optimizer state, the
EMA, validation and checkpoints stay fp32 (the loss runs in fp32 too, see ``engine.train.loss``). A CPU without native
bf16 runs bf16 in emulation, several times slower than fp32 (measured: 8x on an AVX2 EPYC), so ``auto`` never
picks it there and an explicit ``--precision bf16`` warns. channels_last (NHWC) was faster than NCHW for every
model measured on the CPUs here (benchmarks/README.md, "Training step time"). On CUDA the layouts have not been
timed yet, so ``auto`` keeps YOLOv5's NCHW there.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from models.errors import UsageError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16), as PyTorch's cpuinfo or, in a
    PyTorch without those probes, the kernel's ``cpuinfo`` flags report it. Never a guess from the CPU's name."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(probe) for probe in probes):
        return any(probe() for probe in probes)
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    return any(flag in flags for flag in _NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class Precision:
    """A resolved training precision on one device type: ``fp32``, ``bf16`` or ``fp16``."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context for the forward pass (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``--precision`` for ``device``: ``auto`` as in the module table; an explicit choice the device cannot run
    raises ``UsageError`` (fp16 needs CUDA; bf16 needs a CUDA GPU that supports it, or any CPU)."""
    if requested not in PRECISIONS:
        raise UsageError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    kind = device.type
    if requested == "auto":
        if kind == "cuda":
            name = "fp16"
        elif kind == "cpu" and cpu_has_native_bf16():
            name = "bf16"
        else:
            name = "fp32"
        return Precision(name, kind)
    if requested == "fp16" and kind != "cuda":
        raise UsageError(f"--precision fp16 needs a CUDA device (this run is on {kind}); use bf16 or fp32")
    if requested == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bf16; "
                             "use fp16 or fp32")
        if kind == "mps":
            raise UsageError("--precision bf16 is not supported on MPS; use fp32")
        if kind == "cpu" and not cpu_has_native_bf16():
            logger.warning("--precision bf16: this CPU has no native bf16 (AVX512-BF16 / AMX); bf16 runs "
                           "emulated and is several times slower than fp32")
    return Precision(requested, kind)


def resolve_memory_format(requested: str, device: torch.device) -> torch.memory_format:
    """``--memory-format`` for ``device``: ``auto`` is channels_last on the CPU, NCHW elsewhere."""
    if requested not in MEMORY_FORMATS:
        raise UsageError(f"--memory-format {requested!r}: choose one of {', '.join(MEMORY_FORMATS)}")
    if requested == "channels_last" or (requested == "auto" and device.type == "cpu"):
        return torch.channels_last
    return torch.contiguous_format


def memory_format_name(memory_format: torch.memory_format) -> str:
    """The ``--memory-format`` value of a resolved memory format: 'channels_last' or 'contiguous'."""
    return "channels_last" if memory_format is torch.channels_last else "contiguous"


def describe(precision: Precision, memory_format: torch.memory_format) -> str:
    """One line for the training log, e.g. 'precision bf16 (autocast), memory format channels_last'."""
    how = {"fp32": "no autocast", "bf16": "autocast", "fp16": "autocast + GradScaler"}[precision.name]
    return f"precision {precision.name} ({how}), memory format {memory_format_name(memory_format)}"
