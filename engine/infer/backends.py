"""Inference backends for the files ``export.py`` writes: ONNX Runtime (``.onnx``, INT8 included), TorchScript
(``.torchscript``) and OpenVINO (an IR ``.xml`` or the folder holding it; INT8 included).

Each backend is called as ``backend(images) -> decoded (B, N, 5 + nc)`` on float (B, 3, H, W) images in [0, 1] and
reads the export's metadata (``engine.infer.export``) into the same attributes (``ExportedBackend``). onnx,
onnxruntime and openvino are optional extras; a clear ``MissingDependencyError`` says how to install them.
An ONNX or OpenVINO file is data; a TorchScript archive is a program (``torch.jit.load`` runs its code): load
only files you trust.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from models.errors import MissingDependencyError, UsageError

logger = logging.getLogger(__name__)


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
EXPORTED_SUFFIXES = (".onnx", ".torchscript", ".xml")


def decline_openvino_telemetry() -> None:
    """OpenVINO's model converter and NNCF send usage telemetry (Google Analytics) unless the user has opted out with
    ``opt_in_out --opt_out``. This project uses no network at run time, so its processes answer their consent check
    with "declined" before either is imported: nothing is sent and nothing is written to ~/intel."""
    try:
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return
    opt_in_checker.OptInChecker.check = lambda self, *args, **kwargs: opt_in_checker.ConsentCheckResult.DECLINED


def require_openvino():
    """Import ``openvino`` (telemetry declined) or raise a MissingDependencyError that says how to install it."""
    decline_openvino_telemetry()
    try:
        import openvino
    except ImportError as error:
        raise MissingDependencyError(
            f"OpenVINO export and inference need the 'openvino' package, which is not installed ({error}); "
            "install it with: pip install openvino (and nncf for --int8)") from None
    return openvino


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (JSON strings by key)."""
    onnx = require_onnx()
    return {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}


class ExportedBackend:
    """What every exported model's backend has, read from the export's metadata: ``stride`` (the largest, an int;
    ``strides`` has every level's), ``names``, ``imgsz`` ([height, width] of the export), ``model_cfg``, ``half``,
    ``int8``, ``fixed_shape`` ((B, 3, H, W) the graph requires, or None for dynamic shapes) and ``batch_size``
    (the fixed batch, or None). Subclasses load the file and implement ``run(array) -> array``."""

    kind = "exported"

    def _read_metadata(self, metadata: Mapping[str, str]) -> None:
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
        self.int8 = bool(values.get("int8", False))

    def _set_input_shape(self, shape) -> None:
        self.fixed_shape = tuple(int(s) for s in shape) if all(isinstance(s, int) and s > 0 for s in shape) else None
        self.batch_size = int(shape[0]) if isinstance(shape[0], int) and shape[0] > 0 else None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"{self.path}: expected images (B, 3, H, W), got shape {tuple(images.shape)}")
        if self.fixed_shape is not None and tuple(images.shape) != self.fixed_shape:
            raise UsageError(f"{self.path} was exported for inputs of shape {self.fixed_shape}, got "
                             f"{tuple(images.shape)}; letterbox to that size or re-export with --dynamic")
        return self.run(images).float().to(images.device)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        shape = self.fixed_shape or "dynamic"
        return (f"{type(self).__name__}({self.path}, input {shape}, {self.num_classes} classes, stride "
                f"{self.stride}{', int8' if self.int8 else ''})")


class OnnxBackend(ExportedBackend):
    """An ONNX model run by ONNX Runtime. ``threads`` sets its intra-op thread count (None: its default);
    ``spin=False`` makes idle worker threads sleep at once instead of spinning (fairer when other work shares the
    cores, e.g. in benchmarks)."""

    kind = "onnx"

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
        self._read_metadata(self.session.get_modelmeta().custom_metadata_map)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self._set_input_shape(model_input.shape)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).numpy().astype(self.input_dtype, copy=False)
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: array})[0])


class TorchScriptBackend(ExportedBackend):
    """A traced TorchScript archive (``export.py --include torchscript``). Loading it runs its code: trusted files
    only. Takes any batch and stride-multiple input size."""

    kind = "torchscript"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"TorchScript model {self.path} does not exist")
        self.device = torch.device(device)
        extra = {"metadata.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)  # "torch.jit.load is deprecated"
                self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        except RuntimeError as error:
            raise UsageError(f"{self.path}: not a TorchScript archive torch.jit.load can read ({error})") from None
        if not extra["metadata.json"]:
            raise UsageError(f"{self.path}: no metadata.json inside; export the model with export.py")
        self._read_metadata(json.loads(extra["metadata.json"]))
        self._set_input_shape((None,))

    @torch.no_grad()
    def run(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(self.device, torch.float32))


class OpenVinoBackend(ExportedBackend):
    """An OpenVINO IR (``.xml`` + ``.bin``; the path may be the folder holding one .xml), compiled for the CPU in
    float32 (``INFERENCE_PRECISION_HINT f32``: OpenVINO would otherwise pick bf16 on CPUs that have it) or, for an
    INT8 model, with its quantized ops. ``threads``: OpenVINO's inference thread count (None: its default)."""

    kind = "openvino"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        openvino = require_openvino()
        self.path = self.find_xml(path)
        self.device = torch.device(device)
        if self.device.type != "cpu":
            logger.warning("%s: OpenVINO runs on the CPU here (got --device %s)", self.path, self.device)
        core = openvino.Core()
        try:
            model = core.read_model(str(self.path))
        except RuntimeError as error:
            raise UsageError(f"{self.path}: OpenVINO cannot read this IR ({error})") from None
        stored = model.get_rt_info()["slimneck"] if model.has_rt_info(["slimneck"]) else {}
        self._read_metadata({key: value.astype(str) for key, value in stored.items()})
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self._set_input_shape([dimension.get_length() if dimension.is_static else None
                               for dimension in model.inputs[0].get_partial_shape()])

    @staticmethod
    def find_xml(path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            candidates = sorted(path.glob("*.xml"))
            if len(candidates) != 1:
                raise UsageError(f"{path}: expected one OpenVINO .xml in the folder, found {len(candidates)}")
            path = candidates[0]
        if not path.is_file():
            raise FileNotFoundError(f"OpenVINO model {path} does not exist")
        if not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"{path}: its weights file {path.with_suffix('.bin')} is missing")
        return path

    def run(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(self.compiled(array)[0].copy())


def exported_kind(path: str | Path) -> str | None:
    """'onnx', 'torchscript' or 'openvino' for a file (or OpenVINO folder) export.py writes; None otherwise."""
    path = Path(path)
    if path.is_dir():
        return "openvino" if any(path.glob("*.xml")) else None
    return {".onnx": "onnx", ".torchscript": "torchscript", ".xml": "openvino"}.get(path.suffix.lower())


def open_exported(path: str | Path, device: str | torch.device = "cpu", threads: int | None = None
                  ) -> ExportedBackend:
    """The backend for an exported model file (see ``exported_kind``)."""
    kind = exported_kind(path)
    if kind == "onnx":
        return OnnxBackend(path, device, threads=threads)
    if kind == "torchscript":
        return TorchScriptBackend(path, device)
    if kind == "openvino":
        return OpenVinoBackend(path, device, threads=threads)
    raise UsageError(f"{path}: not an exported model (.onnx, .torchscript, an OpenVINO .xml or its folder)")
