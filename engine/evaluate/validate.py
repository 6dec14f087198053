"""The validation loop shared by the trainer's per-epoch validation and val.py."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from engine.boxes import scale_boxes, xywh2xyxy
from engine.evaluate.metrics import ConfusionMatrix, DetectionMetrics
from engine.evaluate.plots import plot_confusion_matrix, plot_detection_curves
from engine.infer.nms import non_max_suppression
from engine.torch_utils import synchronize

logger = logging.getLogger(__name__)

# YOLOv5's padding of rectangular validation batches, in strides: each side is rounded up after adding half a stride,
# so a square image at --imgsz 640 is scored at 672, and at --imgsz 96 at 128 (a third larger than in training).
RECT_PAD = 0.5

# Called per image with (path, original shape (h0, w0), detections scaled to the original image (n, 6)).
ImageCallback = Callable[[str, tuple[int, int], torch.Tensor], None]
# Called per batch with (batch index, images (B, 3, H, W) float in [0, 1], targets (M, 6) [image, cls, cx, cy, w, h]
# normalised, paths, detections per image (n, 6) in input pixels); e.g. to plot the first batches.
BatchCallback = Callable[[int, torch.Tensor, torch.Tensor, tuple, list[torch.Tensor]], None]


@dataclass
class ValidationResult:
    """Metrics of one validation pass (see ``DetectionMetrics.compute`` for ``metrics``)."""

    metrics: dict
    losses: list[float]                       # mean val [box, obj, cls] when a loss function was given
    speed_ms: dict                            # per image: preprocess, inference, nms
    table: str
    confusion: ConfusionMatrix | None = None
    detection_metrics: DetectionMetrics | None = field(default=None, repr=False)


def labels_in_pixels(targets: torch.Tensor, image_index: int, height: int, width: int) -> torch.Tensor:
    """(M, 6) normalised [image, cls, cx, cy, w, h] -> (m, 5) [cls, x1, y1, x2, y2] pixels of one image."""
    rows = targets[targets[:, 0] == image_index]
    boxes = xywh2xyxy(rows[:, 2:6]) * torch.tensor([width, height, width, height], device=rows.device)
    return torch.cat((rows[:, 1:2], boxes), 1)


@torch.no_grad()
def evaluate(model: Callable, loader, num_classes: int, names: list[str], device: torch.device,
             conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 300, single_cls: bool = False,
             half: bool = False, loss_fn: Callable | None = None, confusion: bool = False,
             on_image: ImageCallback | None = None, progress: bool = True, desc: str = "val",
             on_batch: BatchCallback | None = None) -> ValidationResult:
    """Run ``model`` over ``loader`` and compute P, R, mAP50 and mAP50-95 (101-point, IoU 0.50:0.95).

    ``model`` maps float images (B, 3, H, W) in [0, 1] to decoded predictions, or to (decoded, raw) as our
    DetectionModel does in eval mode; ``loss_fn`` (optional) gets the raw maps. Detections and labels are matched in
    the network-input pixel space; ``on_image`` receives detections scaled back to each original image and
    ``on_batch`` each batch with its detections in input pixels. Callbacks run outside the timed sections.
    """
    metrics = DetectionMetrics(num_classes, names)
    matrix = ConfusionMatrix(num_classes) if confusion else None
    loss_sum = torch.zeros(3, device=device)
    times = {"preprocess": 0.0, "inference": 0.0, "nms": 0.0}
    seen = 0
    dtype = torch.float16 if half else torch.float32
    bar = tqdm(loader, desc=f"{desc:>12}", disable=not progress, leave=False, bar_format="{l_bar}{bar:20}{r_bar}")
    for batch_index, (images, targets, paths, shapes) in enumerate(bar):
        start = time.perf_counter()
        images = images.to(device, non_blocking=True).to(dtype) / 255
        targets = targets.to(device)
        batch, _, height, width = images.shape
        synchronize(device)
        after_pre = time.perf_counter()
        output = model(images)
        decoded, raw = output if isinstance(output, tuple) else (output, None)
        synchronize(device)
        after_inference = time.perf_counter()
        if loss_fn is not None and raw is not None:
            loss_sum += loss_fn([r.float() for r in raw], targets)[1]
        detections = non_max_suppression(decoded.float(), conf_thres, iou_thres, multi_label=True,
                                         agnostic=single_cls, max_det=max_det)
        synchronize(device)
        after_nms = time.perf_counter()
        times["preprocess"] += after_pre - start
        times["inference"] += after_inference - after_pre
        times["nms"] += after_nms - after_inference
        seen += batch
        labels = [labels_in_pixels(targets, i, height, width) for i in range(batch)]
        if single_cls:
            for dets in detections:
                dets[:, 5] = 0
        metrics.update([d.cpu() for d in detections], [lab.cpu() for lab in labels])
        if matrix is not None:
            for dets, lab in zip(detections, labels):
                matrix.update(dets.cpu(), lab.cpu())
        if on_image is not None:
            for dets, path, shape in zip(detections, paths, shapes):
                scaled = dets.clone()
                original = shape[0] if shape is not None else (height, width)
                scale_boxes(scaled[:, :4], (height, width), original, shape[1] if shape is not None else None)
                on_image(path, tuple(original), scaled.cpu())
        if on_batch is not None:
            on_batch(batch_index, images, targets, paths, detections)
    results = metrics.compute()
    count = max(len(loader), 1)
    speed = {key: value / max(seen, 1) * 1e3 for key, value in times.items()}
    return ValidationResult(results, (loss_sum / count).tolist(), speed, metrics.summary_table(verbose=False),
                            matrix, metrics)


def log_speed(speed: dict, shape: tuple) -> str:
    """The YOLOv5-style speed line for ``ValidationResult.speed_ms``."""
    return (f"Speed: {speed['preprocess']:.1f}ms pre-process, {speed['inference']:.1f}ms inference, "
            f"{speed['nms']:.1f}ms NMS per image at shape {shape}")


def save_plots(result: ValidationResult, save_dir: Path, names: list[str]) -> None:
    """PR/F1/P/R curves and the confusion matrix into ``save_dir``."""
    if result.detection_metrics is not None:
        plot_detection_curves(result.detection_metrics.curves(), result.detection_metrics.names, save_dir)
    if result.confusion is not None:
        plot_confusion_matrix(result.confusion.matrix, result.confusion.class_names(names),
                              save_dir / "confusion_matrix.png")


def validate_weights(weights: str | Path, data_yaml: str | Path, imgsz: int, batch_size: int = 32, workers: int = 0,
                     progress: bool = False, pad: float = RECT_PAD) -> ValidationResult:
    """Score a .pt checkpoint or any exported model (``engine.infer.detector.load_detector``) on a dataset YAML's val
    split on the CPU, with val.py's settings (rectangular batches padded by ``pad`` strides, conf 0.001, NMS IoU
    0.6)."""
    from engine.data.config import load_data_config
    from engine.data.loader import create_dataloader
    from engine.infer.detector import load_detector
    from models.errors import UsageError

    detector = load_detector(weights, "cpu", imgsz=imgsz)
    data = load_data_config(data_yaml)
    if detector.num_classes != data["nc"]:
        raise UsageError(f"{weights} predicts {detector.num_classes} classes but {data_yaml} has {data['nc']}")
    rect = detector.fixed_shape is None
    loader, _ = create_dataloader(data["val"], detector.imgsz, batch_size, detector.stride, rect=rect,
                                  pad=pad if rect else 0.0, workers=workers, num_classes=data["nc"], prefix="val: ")
    return evaluate(detector, loader, detector.num_classes, detector.names, torch.device("cpu"), progress=progress,
                    desc=Path(weights).name)
