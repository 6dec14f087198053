"""Data-loading throughput: training-augmented images per second at several sizes and worker counts.

    python -m benchmarks.dataloader_speed [--data data/shapes.yaml] [--imgsz 320 640] [--workers 0 1 2]

(run from the repository root).

Uses the training split with the scratch-low augmentation (mosaic, affine, HSV, flips). The first
batch of each run (worker start-up, first decode) is timed separately and excluded from the rate, as
are the batches the workers prefetch meanwhile. Wall-clock figures: run on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import yaml

from engine.data.config import load_data_config
from engine.data.loader import create_dataloader

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger(__name__)


def measure(files: list[Path], hyp: dict, imgsz: int, workers: int, batch_size: int, batches: int,
            num_classes: int) -> tuple[float, float]:
    """Return (seconds to the first batch, images per second over ``batches`` steady-state batches).

    Workers prefetch two batches each while the first one is made, so those are drained before the
    clock starts; otherwise the rate would count work done before it.
    """
    loader, _ = create_dataloader(files, imgsz, batch_size, 32, hyp=hyp, augment=True, workers=workers,
                                  shuffle=True, seed=0, num_classes=num_classes)
    num_workers = loader.num_workers

    def endless():
        while True:
            yield from loader

    stream = endless()
    start = time.perf_counter()
    next(stream)
    first_batch = time.perf_counter() - start
    for _ in range(2 * num_workers):
        next(stream)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += len(next(stream)[0])
    return first_batch, images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Print a table of data-loading speed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "shapes.yaml")
    parser.add_argument("--hyp", type=Path, default=REPO / "data" / "hyps" / "hyp.scratch-low.yaml")
    parser.add_argument("--imgsz", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    config = load_data_config(args.data)
    with open(args.hyp, encoding="utf-8") as file:
        hyp = yaml.safe_load(file)
    print(f"{args.data.name}: {len(config['train'])} training images, batch {args.batch_size}, "
          f"{args.batches} timed batches per row")
    print(f"{'imgsz':>6} {'workers':>8} {'first batch s':>14} {'images/s':>9}")
    for imgsz in args.imgsz:
        for workers in args.workers:
            first_batch, rate = measure(config["train"], hyp, imgsz, workers, args.batch_size, args.batches,
                                        config["nc"])
            print(f"{imgsz:>6} {workers:>8} {first_batch:>14.2f} {rate:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
