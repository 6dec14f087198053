"""Export a detector to ONNX.

    python export.py --weights best.pt --include onnx [--imgsz 640] [--batch-size 1] [--dynamic] [--simplify]
                     [--half] [--opset 17] [--device cpu] [--optimize/--no-optimize]
    python export.py --cfg yolov5s-slimneck.yaml --include onnx      # a randomly initialised model (benchmarks)

The model is fused (Conv+BN, RepConv, IDetect) and, unless ``--no-optimize``, rewritten by
``models.deploy.optimize_for_inference(target="onnx")`` (GSConv channel shuffles folded into conv weights). The
graph has one input ``images`` (B, 3, H, W) in [0, 1] and one output ``output``: the decoded predictions
(B, N, 5 + nc) with boxes as (cx, cy, w, h) input pixels. ``stride``, ``names``, ``imgsz``, ``batch_size``,
``dynamic``, ``half``, ``optimized`` and ``model_cfg`` are stored as JSON strings in the model's
``metadata_props`` (read back by ``engine.backends.OnnxBackend``). The file is checked with ``onnx.checker`` and
ONNX Runtime's output is compared with the PyTorch model's.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from engine.backends import MissingDependencyError, require_onnx, require_onnxruntime
from engine.cli import run_command
from models.deploy import optimize_for_inference
from models.errors import UsageError
from models.modules.heads import Detect
from models.weights import load_model
from models.yolo import DetectionModel

logger = logging.getLogger(__name__)

FORMATS = ("onnx",)
DEFAULT_OPSET = 17


class DecodedOutput(nn.Module):
    """Wraps a DetectionModel so the exported graph has one output: the decoded predictions (B, N, 5 + nc)."""

    def __init__(self, model: DetectionModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


def prepare_model(model: DetectionModel, optimize: bool = True) -> DetectionModel:
    """A fused eval copy of ``model`` (the input is untouched), with the deploy rewrites when ``optimize``."""
    model = copy.deepcopy(model).eval()
    if not model.is_fused():
        model.fuse()
    if optimize:
        model = optimize_for_inference(model, inplace=True, target="onnx")
    return model


def image_shape(imgsz: list[int] | tuple[int, ...] | int, stride: int) -> tuple[int, int]:
    """``--imgsz`` (one value for square, or height width) -> (height, width), each a multiple of ``stride``."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if len(sizes) not in (1, 2) or any(not isinstance(s, int) or s < 1 for s in sizes):
        raise UsageError(f"--imgsz takes one or two positive integers (height width), got {imgsz!r}")
    height, width = sizes * 2 if len(sizes) == 1 else sizes
    for name, value in (("height", height), ("width", width)):
        if value % stride:
            raise UsageError(f"--imgsz {name} {value} is not a multiple of the model's max stride {stride}")
    return height, width


def export_metadata(model: DetectionModel, shape: tuple[int, int], batch_size: int, dynamic: bool, half: bool,
                    optimized: bool) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: every value a JSON string."""
    values = {"stride": [int(s) for s in model.stride.tolist()], "names": list(model.names), "imgsz": list(shape),
              "batch_size": batch_size, "dynamic": dynamic, "half": half, "optimized": optimized,
              "model_cfg": model.cfg}
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
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if opset < 11:
        raise UsageError(f"--opset {opset} is too old; use 11 or newer (17 is the default)")
    prepared = prepare_model(model, optimize).to(device)
    prepared = prepared.half() if half else prepared.float()
    for module in prepared.modules():
        if isinstance(module, Detect):
            # A grid cached by an earlier eager run would be traced as a constant of that image size.
            module._grids = {}
    shape = image_shape(imgsz, int(prepared.stride.max()))
    dummy = torch.zeros(batch_size, prepared.in_channels, *shape, device=device,
                        dtype=torch.float16 if half else torch.float32)
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
    """Max absolute difference between ONNX Runtime's decoded output and the PyTorch model's (fused, without the
    deploy rewrites, so the rewrites are checked too) on ``images``, in float32 on CPU."""
    from engine.backends import OnnxBackend

    backend = OnnxBackend(path, "cpu")
    reference = prepare_model(model, optimize=False).cpu().float()(images.cpu().float())[0]
    output = backend(images.cpu())
    return float((output.float() - reference).abs().max())


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a detector to ONNX.")
    parser.add_argument("--weights", help="checkpoint .pt (ours, or an official YOLOv5/YOLOv7 file)")
    parser.add_argument("--cfg", help="model YAML; alone: export a randomly initialised model")
    parser.add_argument("--nc", type=int, default=None, help="number of classes (with --cfg)")
    parser.add_argument("--include", nargs="+", default=["onnx"], help=f"formats to export: {', '.join(FORMATS)}")
    parser.add_argument("--imgsz", nargs="+", type=int, default=[640], help="image size: one value, or height width")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of the exported input")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument("--simplify", action="store_true", help="simplify the graph (needs onnxslim or onnxsim)")
    parser.add_argument("--half", action="store_true", help="float16 export (CUDA --device only)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=True,
                        help="apply the deploy rewrites of models/deploy.py (default: on)")
    parser.add_argument("--output", help="output path (default: the weights or cfg name with .onnx)")
    return parser.parse_args(argv)


def default_output(weights: str | None, cfg: str | None) -> Path:
    if weights:
        return Path(weights).with_suffix(".onnx")
    return Path(Path(cfg).stem + ".onnx")


def export(options: argparse.Namespace) -> Path:
    """The command line's work: export, then compare ONNX Runtime with PyTorch when onnxruntime is installed."""
    unknown = [f for f in options.include if f.lower() not in FORMATS]
    if unknown:
        raise UsageError(f"--include {' '.join(unknown)} is not supported; supported formats: {', '.join(FORMATS)}")
    device = torch.device(options.device if options.device != "cuda" else "cuda:0")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {options.device}: CUDA is not available on this machine; use --device cpu")
    require_onnx()
    model = load_for_export(options.weights, options.cfg, options.nc, str(device))
    output = Path(options.output) if options.output else default_output(options.weights, options.cfg)
    path = export_onnx(model, output, options.imgsz, options.batch_size, options.dynamic, options.half,
                       options.opset, options.optimize, options.simplify, device)
    if options.half:
        logger.info("float16 model: the ONNX Runtime comparison runs in float32 only; skipped")
    else:
        try:
            require_onnxruntime()
        except MissingDependencyError as error:
            logger.warning("skipped the ONNX Runtime check: %s", error)
        else:
            height, width = image_shape(options.imgsz, int(model.stride.max()))
            images = torch.rand(options.batch_size, model.in_channels, height, width,
                                generator=torch.Generator().manual_seed(0))
            difference = compare_with_pytorch(model, path, images)
            logger.info("ONNX Runtime vs PyTorch: max abs difference %.3g (decoded outputs, pixels and scores)",
                        difference)
    logger.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for unusable input or a missing onnx package)."""
    options = parse_args(argv)
    return run_command(lambda: export(options))


if __name__ == "__main__":
    sys.exit(main())
