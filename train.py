"""Train a YOLO detector: ``python train.py --data data/shapes.yaml --cfg yolov5n-slimneck.yaml --epochs 30 --imgsz 320``.

Flags follow YOLOv5's train.py. Several GPUs (or CPU processes): ``torchrun --nproc_per_node 2 train.py ...``.
"""
from __future__ import annotations

import argparse
import sys

from engine.cli import run_command
from engine.train.precision import MEMORY_FORMATS, PRECISIONS
from engine.train.trainer import DEFAULT_HYP, ROOT, Trainer, TrainOptions


def parse_options(argv: list[str] | None = None) -> TrainOptions:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/shapes.yaml", help="dataset YAML")
    parser.add_argument("--cfg", default="", help="model YAML (path or name in cfg/), e.g. yolov5s-slimneck.yaml")
    parser.add_argument("--weights", default="", help="initial weights: our checkpoint or an official YOLOv5/v7 .pt")
    parser.add_argument("--hyp", default="", help="hyperparameter YAML (default: the file the model config names "
                        "in its hyp: key, e.g. hyp.scratch.tiny.yaml for cfg/yolov7-tiny*.yaml; else "
                        f"{DEFAULT_HYP.relative_to(ROOT)})")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16, help="total batch size over all processes")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train and val image size")
    parser.add_argument("--device", default="", help="cuda device, e.g. 0 or 0,1, or cpu")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers (per process)")
    parser.add_argument("--project", default=str(ROOT / "runs" / "train"))
    parser.add_argument("--name", default="exp")
    parser.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    parser.add_argument("--resume", nargs="?", const=True, default=False,
                        help="resume the newest run, or the given run folder / last.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD")
    parser.add_argument("--cos-lr", action="store_true", help="cosine learning-rate schedule")
    parser.add_argument("--patience", type=int, default=100, help="early stopping after this many epochs without "
                        "improvement (0 disables)")
    parser.add_argument("--save-period", type=int, default=-1, help="also save epochN.pt every N epochs")
    parser.add_argument("--freeze", nargs="+", type=int, default=[0],
                        help="freeze the first N layers (one number) or the listed layer indices")
    parser.add_argument("--cache", nargs="?", const="ram", default=None, choices=["ram", "disk"],
                        help="cache decoded images in RAM (default) or on disk")
    parser.add_argument("--single-cls", action="store_true", help="train every class as one")
    parser.add_argument("--noautoanchor", action="store_true", help="keep the YAML anchors")
    parser.add_argument("--noval", action="store_true", help="validate only after the final epoch")
    parser.add_argument("--noplots", action="store_true", help="write no plots")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="training precision: auto = fp16 AMP on CUDA, bf16 on CPUs with native bf16, else fp32")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                        help="activation/weight layout in training: auto = channels_last on CPU, NCHW on GPU")
    parser.add_argument("--rect", action="store_true", help="rectangular training batches (no mosaic, no shuffle)")
    parser.add_argument("--multi-scale", action="store_true", help="vary the image size +-50%% per batch (in "
                        "multiples of the max stride)")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP (CUDA only)")
    parser.add_argument("--image-weights", action="store_true", help="sample training images by class weights "
                        "and per-class mAP (single process)")
    parser.add_argument("--nosave", action="store_true", help="save checkpoints only after the final epoch")
    parser.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                        help="TensorBoard event files in the run folder (default: when the tensorboard package is "
                        "installed; --tensorboard requires it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    return TrainOptions(**vars(args))


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    return run_command(lambda: Trainer(options).run())


if __name__ == "__main__":
    sys.exit(main())
