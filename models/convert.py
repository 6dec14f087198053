"""Convert a checkpoint (an official YOLOv5/YOLOv7 ``.pt``, or one of ours) into our plain-data format.

    python -m models.convert yolov5s.pt -o yolov5s-ours.pt
    python -m models.convert yolov5s.pt --cfg yolov5s-slimneck.yaml -o slimneck-init.pt   # transfer what matches

The official file is read without running its code (see ``models/upstream.py``); the output loads with
``torch.load(weights_only=True)`` and needs no upstream code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models.registry import ConfigError
from models.weights import CheckpointError, build_checkpoint, load_model, save_checkpoint

logger = logging.getLogger(__name__)


def convert(source: str | Path, output: str | Path, cfg: str | None = None, num_classes: int | None = None,
            use_ema: bool = True) -> dict:
    """Load ``source`` (any supported checkpoint), write it to ``output`` in our format; returns the load info."""
    model, info = load_model(source, cfg=cfg, num_classes=num_classes, use_ema=use_ema)
    best_fitness = info.get("best_fitness")
    payload = build_checkpoint(
        model, epoch=-1, best_fitness=float(best_fitness) if best_fitness is not None else 0.0,
        options={"weights": str(source), "cfg": cfg, "nc": num_classes},
        extra={"converted_from": Path(source).name, "source": info["source"], "source_epoch": info["epoch"],
               "used_ema": info["used_ema"], "transferred": info["transferred"], "total": info["total"]})
    save_checkpoint(output, payload)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="checkpoint to convert (official YOLOv5/YOLOv7 .pt or ours)")
    parser.add_argument("-o", "--output", help="output path (default: <input stem>-converted.pt next to the input)")
    parser.add_argument("--cfg", help="build this model YAML instead and transfer the tensors that match")
    parser.add_argument("--nc", type=int, help="number of classes of the output model")
    parser.add_argument("--no-ema", action="store_true", help="take 'model' even when the file has 'ema' weights")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = Path(options.weights)
    output = Path(options.output) if options.output else source.with_name(f"{source.stem}-converted.pt")
    if output.resolve() == source.resolve():
        print(f"error: output {output} would overwrite the input", file=sys.stderr)
        return 2
    try:
        info = convert(source, output, options.cfg, options.nc, not options.no_ema)
    except (CheckpointError, ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logger.info("%s (%s, %d classes, %d/%d tensors) -> %s", source, info["source"], len(info["names"]),
                info["transferred"], info["total"], output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
