"""Exporting a trained detector: ONNX (the graph), TorchScript, OpenVINO IR, and INT8 OpenVINO IR quantized by
NNCF on calibration images. What export.py, compare.py and the benchmarks share.

Every format has one input ``images`` (B, 3, H, W) in [0, 1] and one output: the decoded predictions
(B, N, 5 + nc) with boxes as (cx, cy, w, h) input pixels, and carries the same metadata (``export_metadata``:
``stride``, ``names``, ``imgsz``, ``batch_size``, ``dynamic``, ``half``, ``optimized``, ``model_cfg``, and for INT8
``int8``, ``calibration_images`` and ``int8_fp32_layers``), each a JSON string: in the ONNX ``metadata_props``, in
the TorchScript archive's ``metadata.json`` extra file, in the OpenVINO model's ``rt_info`` under ``slimneck``.
``engine.infer.backends`` reads them back. The model is fused (every layer's ``fuse()``: Conv+BN, RepConv, IDetect)
and, with ``optimize``, rewritten by ``models.deploy.optimize_for_inference`` (GSConv channel shuffles folded into
conv weights).
"""
from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from engine.cli import check_imgsz
from engine.infer.backends import require_onnx
from models.deploy import optimize_for_inference
from models.errors import UsageError
from models.modules.heads import Detect
from models.weights import load_model
from models.yolo import DetectionModel

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "openvino")
DEFAULT_OPSET = 17
DEFAULT_CALIBRATION_IMAGES = 300
# Left in float by the INT8 quantization: the head's decoding (sigmoid, grid offsets, anchor scaling), whose
# outputs are pixel coordinates that 8 bits cannot hold (the ops ultralytics leaves out for YOLO heads too).
INT8_IGNORED_TYPES = ("Multiply", "Subtract", "Sigmoid", "Power")


class DecodedOutput(nn.Module):
    """Wraps a DetectionModel so the exported graph has one output: the decoded predictions (B, N, 5 + nc)."""

    def __init__(self, model: DetectionModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


def prepare_model(model: DetectionModel, optimize: bool = True, target: str = "onnx") -> DetectionModel:
    """A fused eval copy of ``model`` (the input is untouched), with the deploy rewrites for ``target`` ('onnx' for
    exported graphs, 'pytorch' for TorchScript) when ``optimize``."""
    model = copy.deepcopy(model).eval()
    if not model.is_fused():
        model.fuse()
    if optimize:
        model = optimize_for_inference(model, inplace=True, target=target)
    return model


def image_shape(imgsz: list[int] | tuple[int, ...] | int, multiple: int) -> tuple[int, int]:
    """``--imgsz`` (one value for square, or height width) -> (height, width), each rounded up to ``multiple``."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if len(sizes) not in (1, 2):
        raise UsageError(f"--imgsz takes one or two positive integers (height width), got {imgsz!r}")
    height, width = sizes * 2 if len(sizes) == 1 else sizes
    return check_imgsz(height, multiple), check_imgsz(width, multiple)


def export_metadata(model: DetectionModel, shape: tuple[int, int], batch_size: int, dynamic: bool, half: bool,
                    optimized: bool, **extra) -> dict[str, str]:
    """The metadata of an exported model (the module docstring): every value a JSON string."""
    values = {"stride": [int(s) for s in model.stride.tolist()], "names": list(model.names), "imgsz": list(shape),
              "batch_size": batch_size, "dynamic": dynamic, "half": half, "optimized": optimized,
              "model_cfg": model.cfg, **extra}
    return {key: json.dumps(value, default=str) for key, value in values.items()}


def export_onnx(model: DetectionModel, path: str | Path, imgsz: list[int] | int = 640, batch_size: int = 1,
                dynamic: bool = False, half: bool = False, opset: int = DEFAULT_OPSET, optimize: bool = True,
                simplify: bool = False, device: str | torch.device = "cpu") -> Path:
    """Write ``model`` as ONNX to ``path`` (see the module docstring) and return the path.

    ``model`` is any DetectionModel (fused or not, it is copied); ``half`` needs a CUDA ``device``.
    """
    onnx = require_onnx()
    device = torch.device(device)
    if half and device.type != "cuda":
        raise UsageError(f"--half (float16 export) needs a CUDA --device; got {device}. Export in float32 on CPU")
    if opset < 11:
        raise UsageError(f"--opset {opset} is too old; use 11 or newer (17 is the default)")
    prepared, dummy = _traceable(model, imgsz, batch_size, optimize, device, half)
    shape = tuple(dummy.shape[2:])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}}
    wrapper = DecodedOutput(prepared).eval()  # export restores the wrapper's mode, so it must be eval already
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, which needs onnxscript.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["output"], do_constant_folding=True,
                          dynamic_axes=dynamic_axes if dynamic else None)
    proto = onnx.load(str(path))
    if simplify:
        proto = simplify_onnx(proto)
    for key, value in export_metadata(prepared, shape, batch_size, dynamic, half, optimize).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    described = ("dynamic (batch, height, width)" if dynamic
                 else f"{batch_size}x{prepared.in_channels}x{shape[0]}x{shape[1]}")
    logger.info("ONNX %s: opset %d, input %s, %s", path, opset, described, "float16" if half else "float32")
    return path


def _traceable(model: DetectionModel, imgsz: list[int] | int, batch_size: int, optimize: bool,
               device: torch.device, half: bool = False, target: str = "onnx") -> tuple[DetectionModel, torch.Tensor]:
    """The fused (and rewritten) eval copy of ``model`` on ``device`` and a zero input of the export shape."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    prepared = prepare_model(model, optimize, target).to(device)
    prepared = prepared.half() if half else prepared.float()
    for module in prepared.modules():
        if isinstance(module, Detect):
            module.reset_grids()
    shape = image_shape(imgsz, prepared.size_multiple)
    dummy = torch.zeros(batch_size, prepared.in_channels, *shape, device=device,
                        dtype=torch.float16 if half else torch.float32)
    return prepared, dummy


def export_torchscript(model: DetectionModel, path: str | Path, imgsz: list[int] | int = 640, batch_size: int = 1,
                       optimize: bool = True, device: str | torch.device = "cpu") -> Path:
    """Trace ``model`` (fused, with every PyTorch deploy rewrite when ``optimize``) to a TorchScript archive with the
    metadata in its ``metadata.json`` extra file. A traced graph takes any batch and stride-multiple size: the head
    computes its grids from the input shape."""
    prepared, dummy = _traceable(model, imgsz, batch_size, optimize, torch.device(device), target="pytorch")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(DecodedOutput(prepared).eval(), dummy, strict=False)
    metadata = export_metadata(prepared, tuple(dummy.shape[2:]), batch_size, True, False, optimize)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # "torch.jit.save is deprecated"
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(metadata)})
    logger.info("TorchScript %s: traced at %s", path, "x".join(str(side) for side in dummy.shape))
    return path


def export_openvino(onnx_path: str | Path, folder: str | Path, int8_calibration: torch.Tensor | None = None,
                    fp32_layers: Sequence[int] = ()) -> Path:
    """Convert an ONNX file written by ``export_onnx`` to OpenVINO IR in ``folder`` (``<stem>.xml`` + ``.bin``),
    weights kept in float32, the ONNX metadata copied to the model's rt_info. With ``int8_calibration``
    ((N, 3, H, W) float images in [0, 1]) the model is quantized to INT8 by NNCF (post-training, static, the
    ``mixed`` preset: symmetric weights per channel, asymmetric activations), the head's decoding left in float
    (``INT8_IGNORED_TYPES``), and so are the model layers (YAML indices) in ``fp32_layers``: the way to keep a layer
    that quantizes badly in float (``benchmarks/int8_sensitivity.py`` finds them). Returns the .xml path."""
    from engine.infer.backends import read_onnx_metadata, require_openvino

    openvino = require_openvino()
    onnx_path, folder = Path(onnx_path), Path(folder)
    model = openvino.convert_model(str(onnx_path))
    metadata = read_onnx_metadata(onnx_path)
    if int8_calibration is not None:
        model = _quantize_int8(model, int8_calibration, fp32_layers)
        metadata.update(int8="true", calibration_images=str(len(int8_calibration)),
                        int8_fp32_layers=json.dumps([int(layer) for layer in fp32_layers]))
    for key, value in metadata.items():
        model.set_rt_info(value, ["slimneck", key])
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{onnx_path.stem}.xml"
    openvino.save_model(model, str(xml), compress_to_fp16=False)
    logger.info("OpenVINO IR %s (%s)", xml, "INT8, NNCF" if int8_calibration is not None else "float32")
    return xml


def _quantize_int8(model, calibration: torch.Tensor, fp32_layers: Sequence[int] = ()):
    try:
        import nncf
    except ImportError:
        from models.errors import MissingDependencyError

        raise MissingDependencyError("--int8 needs the 'nncf' package: pip install nncf (with openvino)") from None
    samples = [image[None].numpy() for image in calibration.float()]
    # ONNX node names carry the module path: /model/layers.<index>/...
    patterns = [rf".*/model/layers\.{int(layer)}/.*" for layer in fp32_layers]
    ignored = nncf.IgnoredScope(types=list(INT8_IGNORED_TYPES), patterns=patterns, validate=False)
    return nncf.quantize(model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                         subset_size=len(samples), ignored_scope=ignored)


def calibration_images(data_yaml: str | Path, count: int, imgsz: int, stride: int, split: str = "train") -> torch.Tensor:
    """``count`` images of a dataset split (evenly spread over it), letterboxed square to ``imgsz`` as val.py feeds
    them (no augmentation): (N, 3, imgsz, imgsz) float in [0, 1], for INT8 calibration."""
    from engine.data.config import DatasetError, load_data_config
    from engine.data.dataset import YoloDataset

    config = load_data_config(data_yaml)
    files = config.get(split)
    if not files:
        raise DatasetError(f"{config['yaml_file']}: no '{split}' split to calibrate on")
    dataset = YoloDataset(files, imgsz=imgsz, stride=stride, augment=False, prefix="calibration: ",
                          num_classes=config["nc"])
    picks = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().unique()
    logger.info("INT8 calibration on %d %s images of %s", len(picks), split, config["yaml_file"])
    return torch.stack([dataset[int(index)][0] for index in picks]).float() / 255


def simplify_onnx(proto):
    """Simplify with onnxslim, else onnx-simplifier; without either, log how to get one and return ``proto``."""
    try:
        import onnxslim
    except ImportError:
        onnxslim = None
    if onnxslim is not None:
        return onnxslim.slim(proto)
    try:
        import onnxsim
    except ImportError:
        logger.warning("--simplify needs onnxslim or onnxsim (pip install onnxslim); exporting without simplifying")
        return proto
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        logger.warning("onnxsim could not validate the simplified model; keeping the original graph")
        return proto
    return simplified


@torch.no_grad()
def compare_with_pytorch(model: DetectionModel, path: str | Path, images: torch.Tensor) -> float:
    """Max absolute difference between an exported model's decoded output (any format ``engine.infer.backends`` opens)
    and the PyTorch model's (fused, without the deploy rewrites, so the rewrites are checked too) on ``images``, in
    float32 on CPU."""
    from engine.infer.backends import open_exported

    backend = open_exported(path, "cpu")
    reference = prepare_model(model, optimize=False).cpu().float()(images.cpu().float())[0]
    return float((backend(images.cpu()) - reference).abs().max())


def load_for_export(weights: str | None, cfg: str | None, num_classes: int | None, device: str) -> DetectionModel:
    """A model from ``--weights`` (via models.weights) or, without weights, a randomly initialised ``--cfg``."""
    if weights:
        model, _ = load_model(weights, cfg=cfg, num_classes=num_classes, device=device, use_ema=True, fuse=False)
        return model
    if not cfg:
        raise UsageError("give --weights (a checkpoint) or --cfg (a model YAML, exported randomly initialised)")
    logger.warning("no --weights: exporting a randomly initialised %s (fine for benchmarks, useless for detection)",
                   cfg)
    return DetectionModel(cfg, num_classes=num_classes).to(device)
