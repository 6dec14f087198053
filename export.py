"""Export a detector: ONNX, TorchScript, OpenVINO IR, and INT8 OpenVINO IR.

    python export.py --weights best.pt --include onnx torchscript openvino [--imgsz 640] [--batch-size 1]
                     [--dynamic] [--simplify] [--half] [--opset 17] [--device cpu] [--optimize/--no-optimize]
    python export.py --weights best.pt --include openvino --int8 --data my.yaml [--calibration-images 300]
    python export.py --cfg yolov5s-slimneck.yaml --include onnx      # a randomly initialised model (benchmarks)

Writes ``best.onnx``, ``best.torchscript`` and ``best_openvino_model/best.xml`` (+ ``.bin``); with ``--int8``,
``best_int8_openvino_model/``. The formats, their shared input/output and metadata: ``engine/infer/export.py``. Each
export is run once on random images and its largest difference from the PyTorch model is logged (INT8: only
that it runs; its accuracy cost is measured with val.py, see README "Export and deployment").
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from engine.cli import run_command
from engine.infer.backends import require_onnx
from engine.infer.export import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_OPSET, FORMATS, calibration_images,
                                 compare_with_pytorch, export_onnx, export_openvino, export_torchscript, image_shape,
                                 load_for_export)
from models.errors import MissingDependencyError, UsageError

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a detector to ONNX, TorchScript or OpenVINO (fp32, INT8).")
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
    parser.add_argument("--int8", action="store_true", help="also write an INT8 OpenVINO IR, quantized by NNCF on "
                        "--data images (needs openvino and nncf)")
    parser.add_argument("--data", help="dataset YAML whose train images calibrate --int8")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help="number of calibration images for --int8")
    parser.add_argument("--int8-fp32-layers", nargs="*", type=int, default=[],
                        help="with --int8: model layers (YAML indices) kept in float, e.g. the ones "
                        "benchmarks/int8_sensitivity.py finds sensitive")
    parser.add_argument("--output", help="ONNX output path (default: the weights or cfg name with .onnx); the "
                        "other formats are named after it")
    return parser.parse_args(argv)


def default_output(weights: str | None, cfg: str | None) -> Path:
    if weights:
        return Path(weights).with_suffix(".onnx")
    return Path(Path(cfg).stem + ".onnx")


def export(options: argparse.Namespace) -> list[Path]:
    """The command line's work: every --include format (and --int8), each checked against PyTorch."""
    formats = [name.lower() for name in options.include]
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise UsageError(f"--include {' '.join(unknown)} is not supported; supported formats: {', '.join(FORMATS)}")
    if options.int8 and not options.data:
        raise UsageError("--int8 needs --data (a dataset YAML whose train images calibrate the quantization)")
    device = torch.device(options.device if options.device != "cuda" else "cuda:0")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {options.device}: CUDA is not available on this machine; use --device cpu")
    if "openvino" in formats or options.int8 or "onnx" in formats:
        require_onnx()  # OpenVINO IR is converted from the ONNX graph
    model = load_for_export(options.weights, options.cfg, options.nc, str(device))
    onnx_path = Path(options.output) if options.output else default_output(options.weights, options.cfg)
    written = []
    if "onnx" in formats or "openvino" in formats or options.int8:
        written.append(export_onnx(model, onnx_path, options.imgsz, options.batch_size, options.dynamic,
                                   options.half, options.opset, options.optimize, options.simplify, device))
    if "torchscript" in formats:
        written.append(export_torchscript(model, onnx_path.with_suffix(".torchscript"), options.imgsz,
                                          options.batch_size, options.optimize, device))
    if "openvino" in formats:
        written.append(export_openvino(onnx_path, onnx_path.parent / f"{onnx_path.stem}_openvino_model"))
    if options.int8:
        height, width = image_shape(options.imgsz, model.size_multiple)
        if height != width:
            raise UsageError("--int8 calibrates on square letterboxed images: give one --imgsz")
        images = calibration_images(options.data, options.calibration_images, height, int(model.stride.max()))
        written.append(export_openvino(onnx_path, onnx_path.parent / f"{onnx_path.stem}_int8_openvino_model",
                                       int8_calibration=images, fp32_layers=options.int8_fp32_layers))
    if "onnx" not in formats:
        written = [path for path in written if path != onnx_path]
    for path in written:
        _check_against_pytorch(model, path, options)
    return written


def _check_against_pytorch(model, path: Path, options: argparse.Namespace) -> None:
    """Run the export once on random images and log its largest difference from the PyTorch model."""
    if options.half:
        logger.info("%s: float16 model, the comparison with PyTorch runs in float32 only; skipped", path)
        return
    height, width = image_shape(options.imgsz, model.size_multiple)
    images = torch.rand(options.batch_size, model.in_channels, height, width,
                        generator=torch.Generator().manual_seed(0))
    try:
        difference = compare_with_pytorch(model, path, images)
    except MissingDependencyError as error:
        logger.warning("%s: not checked: %s", path, error)
        return
    size = sum(file.stat().st_size for file in ([path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]))
    int8 = "int8" in path.parent.name
    logger.info("exported %s (%.1f MB): max abs difference from PyTorch %.3g (decoded outputs, pixels and scores)%s",
                path, size / 1e6, difference, "; INT8 is judged by its mAP (val.py), not by this number" if int8 else "")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for unusable input or a missing optional package)."""
    options = parse_args(argv)
    return run_command(lambda: export(options))


if __name__ == "__main__":
    sys.exit(main())
