"""Validate a dataset without training: ``python -m data.check my.yaml``.

Loads the YAML, resolves every split, scans each image and label file (building or reusing the label
cache) and prints one summary line per split. Exit status: 0 when every file is usable; 1 when images
were skipped (corrupt images, bad label files, unknown classes) or, with ``--strict``, when labels
were repaired (duplicates, clipped or zero-area boxes); 2 when the dataset cannot be loaded at all.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.data.config import DatasetError, load_data_config
from engine.data.dataset import YoloDataset
from engine.visualize import plot_labels

logger = logging.getLogger(__name__)

SKIP_COUNTERS = ("corrupt", "bad_labels", "unknown_class")
REPAIR_COUNTERS = ("duplicates", "degenerate", "clipped")


def check_dataset(yaml_file: str | Path, imgsz: int = 640, strict: bool = False,
                  plots_dir: Path | None = None) -> int:
    """Scan every split of a dataset YAML, log a summary per split and return the exit status."""
    try:
        config = load_data_config(yaml_file)
    except DatasetError as error:
        logger.error("%s", error)
        return 2
    logger.info("%s: %d classes %s, root %s", config["yaml_file"], config["nc"], config["names"], config["path"])
    status = 0
    for split in ("train", "val", "test"):
        if config[split] is None:
            continue
        try:
            dataset = YoloDataset(config[split], imgsz=imgsz, augment=False, prefix=f"{split}: ",
                                  num_classes=config["nc"])
        except DatasetError as error:
            logger.error("%s", error)
            status = 2
            continue
        if any(dataset.summary[key] for key in SKIP_COUNTERS):
            status = max(status, 1)
        if strict and any(dataset.summary[key] for key in REPAIR_COUNTERS):
            status = max(status, 1)
        if plots_dir is not None:
            save_path = Path(plots_dir) / f"labels_{split}.png"
            plot_labels(dataset.labels, config["names"], save_path)
            logger.info("%s: label statistics saved to %s", split, save_path)
    verdict = {0: "OK", 1: "usable, with problems (see the warnings above)", 2: "NOT usable"}[status]
    logger.info("%s: %s", config["yaml_file"].name, verdict)
    return status


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Check a YOLO dataset YAML: splits, images and labels.")
    parser.add_argument("data", type=Path, help="dataset YAML, e.g. data/shapes.yaml")
    parser.add_argument("--imgsz", type=int, default=640, help="image size the dataset is checked for")
    parser.add_argument("--strict", action="store_true", help="also fail on repaired labels")
    parser.add_argument("--plots", type=Path, default=None, help="folder for label statistics plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return check_dataset(args.data, imgsz=args.imgsz, strict=args.strict, plots_dir=args.plots)


if __name__ == "__main__":
    sys.exit(main())
