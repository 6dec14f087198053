"""Which layers of a trained model lose mAP when quantized to INT8 (OpenVINO, NNCF, as ``export.py --int8``).

    python benchmarks/int8_sensitivity.py --weights runs/train/exp/weights/last.pt --data data/blocks.yaml --imgsz 96
                                          [--layers 10 13 17 20 23] [--keep 17 20] [--calibration-images 300]

Validates the fp32 model and the fully quantized one, then one INT8 model per listed layer (default: every layer of
the neck and head, i.e. after the backbone) with that layer kept in float: the mAP a layer "recovers" is what its
quantization costs. ``--keep`` also scores one model with all the given layers in float (a candidate for
``export.py --int8-fp32-layers``). Every model is scored on the --data val split with val.py's settings, but at
--imgsz (``--val-pad 0``, as compare.py). One
quantization per layer: a few seconds each for a yolov5n at 96 px on 2 cores.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from engine.evaluate.validate import validate_weights  # noqa: E402
from engine.infer.export import DEFAULT_CALIBRATION_IMAGES, calibration_images, export_onnx, export_openvino
from models.weights import load_model  # noqa: E402

logger = logging.getLogger("int8_sensitivity")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="trained .pt checkpoint")
    parser.add_argument("--data", required=True, help="dataset YAML: train images calibrate, val images score")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--layers", nargs="*", type=int, default=None, help="layers to try in float (default: the "
                        "layers after the backbone)")
    parser.add_argument("--keep", nargs="*", type=int, default=[], help="also score these layers in float together")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-pad", type=float, default=0.0, help="padding of the validation batches in strides, as "
                        "compare.py (0: scored at --imgsz, the size the model was trained at)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    logging.getLogger("nncf").setLevel(logging.ERROR)

    model, _ = load_model(options.weights)
    layers = options.layers if options.layers is not None else list(range(len(model.cfg["backbone"]),
                                                                             len(model.layers)))
    calibration = calibration_images(options.data, options.calibration_images, options.imgsz, model.size_multiple)
    workdir = Path(tempfile.mkdtemp(prefix="int8-sensitivity-"))
    onnx_path = export_onnx(model, workdir / "model.onnx", imgsz=options.imgsz, dynamic=True)

    def score(weights: Path) -> float:
        return validate_weights(weights, options.data, options.imgsz, options.batch_size,
                                pad=options.val_pad).metrics["map"]

    def int8(name: str, fp32_layers: list[int]) -> float:
        return score(export_openvino(onnx_path, workdir / name, int8_calibration=calibration,
                                     fp32_layers=fp32_layers))

    fp32, full = score(Path(options.weights)), int8("all", [])
    modules = [row[2] for row in model.cfg["backbone"] + model.cfg["head"]]
    rows = [(f"layer {layer} ({modules[layer]})", int8(f"keep{layer}", [layer])) for layer in layers]
    if options.keep:
        rows.append((f"layers {' '.join(map(str, options.keep))} together", int8("keep", options.keep)))
    print(f"{options.weights} at {options.imgsz}: mAP50-95 fp32 {fp32:.4f}, INT8 {full:.4f} ({full - fp32:+.4f})")
    print(f"{'kept in float':<36}{'INT8 mAP50-95':>15}{'recovered':>11}")
    for label, value in sorted(rows, key=lambda row: -row[1]):
        print(f"{label:<36}{value:>15.4f}{value - full:>+11.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
