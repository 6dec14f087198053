"""Validate a detector on a dataset split: ``python val.py --data data/shapes.yaml --weights best.pt --imgsz 320``.

Flags follow YOLOv5's val.py. ``--weights`` takes our checkpoints, official YOLOv5/YOLOv7 .pt files or an exported
.onnx model; several .pt files are evaluated as an ensemble (``--task speed`` times each one instead).
The numbers come from ``engine.evaluate.validate.evaluate``, the loop the trainer validates with.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from engine.cli import add_inference_arguments, add_output_arguments, increment_path, run_command
from engine.data.config import DatasetError, load_data_config
from engine.data.loader import create_dataloader
from engine.evaluate.coco import dataset_to_coco_gt, evaluate_coco, predictions_to_coco, save_json
from engine.evaluate.validate import RECT_PAD, evaluate, log_speed, save_plots
from engine.infer.detector import Detector, load_detector
from engine.infer.results import write_yolo_labels
from models.errors import UsageError

logger = logging.getLogger("val")
ROOT = Path(__file__).resolve().parent
TASKS = ("val", "test", "speed")
PLOTTED_BATCHES = 3


@dataclasses.dataclass(frozen=True)
class ValOptions:
    """The settings of one validation run: :func:`run`'s keyword arguments but ``weights``."""

    data: str | Path
    batch_size: int
    imgsz: int
    conf_thres: float
    iou_thres: float
    max_det: int
    task: str
    device: str
    workers: int
    single_cls: bool
    augment: bool
    verbose: bool
    save_txt: bool
    save_conf: bool
    save_json: bool
    project: str | Path
    name: str
    exist_ok: bool
    half: bool
    noplots: bool
    progress: bool
    pad: float


def run(data: str | Path = ROOT / "data" / "shapes.yaml", weights: str | Path | list[str | Path] = "",
        batch_size: int = 32, imgsz: int = 640, conf_thres: float = 0.001, iou_thres: float = 0.6,
        max_det: int = 300, task: str = "val", device: str = "", workers: int = 8, single_cls: bool = False,
        augment: bool = False, verbose: bool = False, save_txt: bool = False, save_conf: bool = False,
        save_json: bool = False, project: str | Path = ROOT / "runs" / "val", name: str = "exp",
        exist_ok: bool = False, half: bool = False, noplots: bool = False, progress: bool = True,
        pad: float = RECT_PAD) -> dict:
    """Validate ``weights`` on the ``task`` split of ``data``; the keyword arguments mirror the command line.

    Returns the metrics of ``engine.evaluate.validate.evaluate`` (precision, recall, map50, map, fitness, images,
    instances, per_class) plus ``speed_ms``, ``shape``, ``input_sizes`` (the (height, width) of the batches the model
    really ran on: rectangular batches padded by ``pad`` strides), ``save_dir``, ``weights`` and, with ``save_json``,
    ``coco`` (pycocotools' map, map50, map75, stats) and ``predictions_json``. ``task="speed"`` measures
    latency only (conf 0.25, IoU 0.45, no run folder, no files) and returns ``speed_ms`` per weights file: one
    dict for one file, ``{"results": [...]}`` for several.
    """
    if task not in TASKS:
        raise UsageError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    weights_list = [weights] if isinstance(weights, (str, Path)) else list(weights)
    if not weights_list or any(str(item) == "" for item in weights_list):
        raise UsageError("--weights: give a .pt checkpoint or an .onnx model")
    options = ValOptions(data, batch_size, imgsz, conf_thres, iou_thres, max_det, task, device, workers, single_cls,
                         augment, verbose, save_txt, save_conf, save_json, project, name, exist_ok, half, noplots,
                         progress, pad)
    if task != "speed":
        return _validate(weights_list, options)
    # Latency at the detection operating point; nothing but the speed is reported.
    options = dataclasses.replace(options, conf_thres=0.25, iou_thres=0.45, save_txt=False, save_json=False,
                                  noplots=True)
    results = [_validate([item], options) for item in weights_list]
    return results[0] if len(results) == 1 else {"results": results}


def _validate(weights: list[str | Path], options: ValOptions) -> dict:
    data_config = load_data_config(options.data)
    split = "val" if options.task == "speed" else options.task
    files = data_config[split]
    if files is None:
        raise DatasetError(f"{data_config['yaml_file']}: no '{split}' split (add '{split}:' to the YAML "
                           "or use --task val)")
    detector = load_detector(weights, options.device, options.half, options.imgsz, options.augment)
    names = ["item"] if options.single_cls else data_config["names"]
    if not options.single_cls and detector.num_classes != data_config["nc"]:
        raise UsageError(f"{weights[0]} predicts {detector.num_classes} classes but {data_config['yaml_file']} has "
                         f"{data_config['nc']}; validate on the dataset the model was trained on, or pass "
                         "--single-cls to score every class as one")

    batch_size = _batch_size(detector, options.batch_size)
    # Rectangular batches (less padding) unless the model takes one fixed shape; speed runs use square ones.
    rect = detector.fixed_shape is None and options.task != "speed"
    loader, dataset = create_dataloader(files, detector.imgsz, batch_size, detector.stride, rect=rect,
                                        pad=options.pad if rect else 0.0, workers=options.workers,
                                        single_cls=options.single_cls, prefix=f"{split}: ",
                                        num_classes=data_config["nc"])

    save_dir = None
    if options.task != "speed":
        save_dir = increment_path(Path(options.project) / options.name, options.exist_ok)
        save_dir.mkdir(parents=True, exist_ok=True)
    plots = not options.noplots
    outputs = _Outputs(save_dir, names, options.save_txt, options.save_conf, plots)
    if options.save_json:
        outputs.category_ids = None if options.single_cls else data_config["category_ids"]
        ground_truth, outputs.image_ids = dataset_to_coco_gt(dataset, names, outputs.category_ids)

    input_sizes = (sorted({(int(height), int(width)) for height, width in dataset.batch_shapes}) if rect
                   else [tuple(detector.fixed_shape or (detector.imgsz, detector.imgsz))])
    if options.task != "speed" and any(max(size) > detector.imgsz for size in input_sizes):
        logger.info("Scored at %s: rectangular batches padded by %g strides (--pad 0 keeps --imgsz %d)",
                    ", ".join(f"{height}x{width}" for height, width in input_sizes), options.pad, detector.imgsz)
    detector.warmup(loader.batch_size, tuple(int(side) for side in dataset.batch_shapes[0]) if rect else None)
    result = evaluate(detector, loader, len(names), names, detector.device, conf_thres=options.conf_thres,
                      iou_thres=options.iou_thres, max_det=options.max_det, single_cls=options.single_cls,
                      half=detector.half, confusion=plots,
                      on_image=outputs.on_image if (options.save_txt or options.save_json) else None,
                      progress=options.progress, desc=Path(weights[0]).name,
                      on_batch=outputs.on_batch if plots else None)
    shape = (loader.batch_size, 3, detector.imgsz, detector.imgsz)
    summary = {"weights": [str(item) for item in weights], "save_dir": str(save_dir) if save_dir else None,
               "speed_ms": result.speed_ms, "shape": shape, "imgsz": detector.imgsz, "input_sizes": input_sizes}
    if options.task == "speed":
        logger.info("%s: %d images. %s", weights[0], result.metrics["images"], log_speed(result.speed_ms, shape))
        return {**summary, "images": result.metrics["images"]}

    table = result.detection_metrics.summary_table(verbose=options.verbose and len(names) > 1)
    logger.info("%s\n%s", table, log_speed(result.speed_ms, shape))
    summary.update(result.metrics)
    if plots:
        save_plots(result, save_dir, names)
    if options.save_txt:
        logger.info("%d label files written to %s", outputs.label_files, save_dir / "labels")
    if options.save_json:
        summary.update(_coco_evaluation(ground_truth, outputs, save_dir, Path(weights[0]).stem, result.metrics))
    logger.info("Results saved to %s", save_dir)
    return summary


def _batch_size(detector: Detector, requested: int) -> int:
    if requested < 1:
        raise UsageError(f"--batch-size must be at least 1, got {requested}")
    if detector.fixed_batch is not None and detector.fixed_batch != requested:
        logger.warning("%s was exported with batch size %d; using --batch-size %d", detector.label,
                       detector.fixed_batch, detector.fixed_batch)
        return detector.fixed_batch
    return requested


class _Outputs:
    """Per-image and per-batch side outputs of a validation run: label files, COCO records, batch images."""

    def __init__(self, save_dir: Path | None, names: list[str], save_txt: bool, save_conf: bool, plots: bool):
        self.save_dir, self.names = save_dir, names
        self.save_txt, self.save_conf, self.plots = save_txt, save_conf, plots
        self.image_ids: dict[str, int] | None = None
        self.category_ids: list[int] | None = None  # the dataset's COCO category id of each class, if it has them
        self.coco_detections: list[torch.Tensor] = []
        self.coco_image_ids: list[int] = []
        self.label_files = 0

    def on_image(self, path: str, shape: tuple[int, int], detections: torch.Tensor) -> None:
        stem = Path(path).stem
        if self.save_txt and write_yolo_labels(self.save_dir / "labels" / f"{stem}.txt", detections, shape,
                                               self.save_conf):
            self.label_files += 1
        if self.image_ids is not None:
            self.coco_detections.append(detections)
            self.coco_image_ids.append(self.image_ids[stem])

    def on_batch(self, index: int, images: torch.Tensor, targets: torch.Tensor, paths: tuple,
                 detections: list[torch.Tensor]) -> None:
        if index >= PLOTTED_BATCHES:
            return
        from engine.visualize import plot_batch

        rows = [torch.cat((torch.full((len(dets), 1), float(image)), dets[:, :6].float().cpu()), 1)
                for image, dets in enumerate(detections)]
        predictions = torch.cat(rows) if rows else torch.zeros((0, 7))
        plot_batch(images, targets, paths, self.save_dir / f"val_batch{index}_labels.jpg", self.names)
        plot_batch(images, torch.zeros((0, 6)), paths, self.save_dir / f"val_batch{index}_pred.jpg", self.names,
                   predictions=predictions)


def _coco_evaluation(ground_truth: dict, outputs: _Outputs, save_dir: Path, stem: str, metrics: dict) -> dict:
    """Write the predictions JSON (and the ground truth it is scored against) and score it with pycocotools."""
    records = predictions_to_coco(outputs.coco_detections, outputs.coco_image_ids, outputs.category_ids)
    predictions_path = save_json(records, save_dir / f"{stem}_predictions.json")
    ground_truth_path = save_json(ground_truth, save_dir / "ground_truth_coco.json")
    logger.info("Evaluating %s (%d detections) with pycocotools against %s", predictions_path, len(records),
                ground_truth_path)
    try:
        coco = evaluate_coco(ground_truth, records)
    except ImportError as error:
        logger.warning("pycocotools unavailable, COCO evaluation skipped: %s", error)
        return {"predictions_json": str(predictions_path), "coco": None}
    logger.info("mAP50-95 %.4f / mAP50 %.4f (this project) vs %.4f / %.4f (pycocotools: top 100 detections per "
                "image and class, greedy matching by score)", metrics["map"], metrics["map50"], coco["map"],
                coco["map50"])
    return {"predictions_json": str(predictions_path), "coco": coco}


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (YOLOv5 val.py flag names)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "shapes.yaml"), help="dataset YAML")
    add_inference_arguments(parser, conf_thres=0.001, iou_thres=0.6, max_det=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--task", default="val", choices=TASKS, help="split to score, or 'speed' for latency only")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    parser.add_argument("--single-cls", action="store_true", help="score every class as one")
    parser.add_argument("--verbose", action="store_true", help="report mAP per class")
    parser.add_argument("--save-json", action="store_true", help="save COCO-format predictions and score them "
                        "with pycocotools")
    add_output_arguments(parser, ROOT / "runs" / "val")
    parser.add_argument("--noplots", action="store_true", help="write no curves, confusion matrix or batch images")
    parser.add_argument("--pad", type=float, default=RECT_PAD, help="rectangular batches: padding in strides "
                        "(YOLOv5's 0.5 grows the input by up to a stride: at --imgsz 96 a square image is scored at "
                        "128; 0 keeps --imgsz, the size a model was trained at)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 for unusable input)."""
    options = parse_options(argv)
    return run_command(lambda: run(**vars(options)))


if __name__ == "__main__":
    sys.exit(main())
