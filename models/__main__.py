"""Print a model's layer table and size: ``python -m models --cfg yolov5s-slimneck.yaml [--imgsz 640] [--fuse] [--json]``."""
from __future__ import annotations

import argparse
import json
import sys

from models.registry import ConfigError
from models.yolo import DetectionModel, model_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description="Build a model YAML and report its size.")
    parser.add_argument("--cfg", default="yolov5s.yaml", help="model YAML: a path or a name in cfg/")
    parser.add_argument("--nc", type=int, default=None, help="override the number of classes")
    parser.add_argument("--imgsz", type=int, default=640, help="image size for the GFLOPs count")
    parser.add_argument("--fuse", action="store_true", help="fuse Conv+BN, RepConv and IDetect first (deploy form)")
    parser.add_argument("--json", action="store_true", help='print {"layers", "params", "gflops"} on one line')
    options = parser.parse_args(argv)
    try:
        model = DetectionModel(options.cfg, num_classes=options.nc)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if options.fuse:
        model.fuse()
    if options.json:
        info = model.info(options.imgsz)
        print(json.dumps({"layers": len(model.records), "params": info["params"], "gflops": round(info["gflops"], 3)}))
    else:
        print(model_summary(model, options.imgsz))
    return 0


if __name__ == "__main__":
    sys.exit(main())
