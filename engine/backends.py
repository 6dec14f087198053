"""Inference backends other than the PyTorch model itself: ONNX Runtime for models written by ``export.py``.

onnx and onnxruntime are optional extras; a clear ``MissingDependencyError`` says how to install them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from models.errors import UsageError

logger = logging.getLogger(__name__)


class MissingDependencyError(ImportError):
    """An optional package (onnx, onnxruntime) that the requested action needs is not installed."""


def require_onnx():
    """Import ``onnx`` or raise a MissingDependencyError that says how to install it."""
    try:
        import onnx
    except ImportError as error:
        raise MissingDependencyError(
            f"ONNX export needs the 'onnx' package, which is not installed ({error}); "
            "install the optional extras with: pip install onnx onnxruntime (both are in requirements-dev.txt)"
        ) from None
    return onnx


def require_onnxruntime():
    """Import ``onnxruntime`` or raise a MissingDependencyError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingDependencyError(
            f"running an ONNX model needs the 'onnxruntime' package, which is not installed ({error}); "
            "install it with: pip install onnxruntime (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


REQUIRED_METADATA = ("stride", "names", "imgsz")


class OnnxBackend:
    """An exported detector run by ONNX Runtime: ``backend(images) -> decoded (B, N, 5 + nc)``.

    ``images`` is a float tensor (B, 3, H, W) in [0, 1]; the output is a float32 tensor on the images' device.
    Read from the model's metadata: ``stride`` (the largest stride, an int; ``strides`` has every level's),
    ``names``, ``imgsz`` ([height, width] of the export), ``batch_size``, ``fixed_shape`` ((B, 3, H, W) the
    graph requires, or None when it was exported with dynamic shapes), ``half`` and ``model_cfg``.
    ``threads`` sets ONNX Runtime's intra-op thread count (None: its default); ``spin=False`` makes idle worker
    threads sleep at once instead of spinning (fairer when other work shares the cores, e.g. in benchmarks).
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
                 spin: bool = True):
        runtime = require_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        self.device = torch.device(device)
        options = runtime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = runtime.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in available:
                providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
            else:
                logger.warning("%s: onnxruntime has no CUDA provider here (install onnxruntime-gpu); running on CPU",
                               self.path)
        try:
            self.session = runtime.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # onnxruntime's exception types derive from Exception directly
            if not type(error).__module__.startswith("onnxruntime"):
                raise
            raise UsageError(f"{self.path}: ONNX Runtime cannot load this model: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in REQUIRED_METADATA if key not in metadata]
        if missing:
            raise UsageError(f"{self.path}: metadata {missing} missing; export the model with export.py")
        try:
            values = {key: json.loads(text) for key, text in metadata.items()}
        except json.JSONDecodeError as error:
            raise UsageError(f"{self.path}: metadata is not JSON ({error}); export the model with export.py") from None
        self.metadata = values
        self.strides = [int(s) for s in values["stride"]]
        self.stride = max(self.strides)
        self.names = list(values["names"])
        self.imgsz = [int(s) for s in values["imgsz"]]
        self.model_cfg = values.get("model_cfg")
        self.half = bool(values.get("half", False))
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        shape = model_input.shape
        self.fixed_shape = tuple(int(s) for s in shape) if all(isinstance(s, int) for s in shape) else None
        self.batch_size = int(shape[0]) if isinstance(shape[0], int) else None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"{self.path}: expected images (B, 3, H, W), got shape {tuple(images.shape)}")
        if self.fixed_shape is not None and tuple(images.shape) != self.fixed_shape:
            raise UsageError(f"{self.path} was exported for inputs of shape {self.fixed_shape}, got "
                             f"{tuple(images.shape)}; letterbox to that size or re-export with --dynamic")
        array = images.detach().to("cpu", torch.float32).numpy().astype(self.input_dtype, copy=False)
        output = self.session.run([self.output_name], {self.input_name: array})[0]
        return torch.from_numpy(output).float().to(images.device)

    def __repr__(self) -> str:
        shape = self.fixed_shape or "dynamic"
        return f"OnnxBackend({self.path}, input {shape}, {self.num_classes} classes, stride {self.stride})"
