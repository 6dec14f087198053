"""What hubconf.py returns to ``torch.hub.load(..., source="local")``: a detector that takes images, and
untrained models built from the configs. Nothing is downloaded: ``pretrained=True`` is an error that says to
train or to pass a local checkpoint to ``custom``.

    model = torch.hub.load("path/to/slimneck-yolo", "custom", path="runs/train/exp/weights/best.pt", source="local")
    results = model(["bus.jpg", numpy_rgb_image])   # one (n, 6) tensor per image in results.xyxy
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.boxes import scale_boxes, xyxy2xywhn
from engine.cli import check_imgsz
from engine.data.images import read_image
from engine.infer.detector import Detector, load_detector
from engine.infer.nms import non_max_suppression
from engine.infer.results import describe_detections
from models.errors import UsageError
from models.yolo import DetectionModel

ImageInput = str | Path | np.ndarray


@dataclass
class Detections:
    """Detections of a batch of images: ``xyxy[i]`` is image i's (n, 6) [x1, y1, x2, y2, conf, class] tensor in
    its original pixels; ``xywhn(i)`` the same boxes as normalised [cx, cy, w, h, conf, class] (YOLO labels)."""

    xyxy: list[torch.Tensor]
    shapes: list[tuple[int, int]]  # (height, width) of each original image
    names: list[str]
    files: list[str]

    def __len__(self) -> int:
        return len(self.xyxy)

    def xywhn(self, index: int) -> torch.Tensor:
        detections = self.xyxy[index]
        height, width = self.shapes[index]
        return torch.cat((xyxy2xywhn(detections[:, :4], width, height), detections[:, 4:]), 1)

    def __str__(self) -> str:
        return "\n".join(f"{file}: {describe_detections(detections, self.names)}"
                         for file, detections in zip(self.files, self.xyxy))


class HubModel:
    """A loaded ``Detector`` that is called on images: file paths, or numpy (H, W, 3) uint8 arrays in RGB order (as
    PIL and YOLOv5's hub models take them; reverse an OpenCV image with ``image[..., ::-1]``), one or a list.

    ``conf``, ``iou``, ``classes``, ``agnostic`` and ``max_det`` are the NMS settings (detect.py's defaults) and may
    be changed on the object; ``size`` in the call overrides the inference size (a stride multiple)."""

    def __init__(self, detector: Detector):
        self.detector = detector
        self.names = detector.names
        self.conf, self.iou, self.max_det = 0.25, 0.45, 1000
        self.classes: list[int] | None = None
        self.agnostic = False

    @torch.no_grad()
    def __call__(self, images: ImageInput | Sequence[ImageInput], size: int | None = None) -> Detections:
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        detector = self.detector
        if size is not None and detector.fixed_shape is None:
            detector = dataclasses.replace(detector, imgsz=check_imgsz(size, detector.stride))
        results, shapes, files = [], [], []
        for index, item in enumerate(items):
            image_bgr, name = _as_bgr(item, index)
            tensor, ratio_pad = detector.prepare(image_bgr)
            detections = non_max_suppression(detector(tensor), self.conf, self.iou, classes=self.classes,
                                             agnostic=self.agnostic, max_det=self.max_det)[0].cpu()
            scale_boxes(detections[:, :4], tuple(tensor.shape[2:]), image_bgr.shape[:2], ratio_pad)
            results.append(detections)
            shapes.append(tuple(image_bgr.shape[:2]))
            files.append(name)
        return Detections(results, shapes, list(self.names), files)


def _as_bgr(item: ImageInput, index: int) -> tuple[np.ndarray, str]:
    if isinstance(item, (str, Path)):
        image = read_image(item)
        if image is None:
            raise UsageError(f"image {item} cannot be read (missing or not an image)")
        return image, str(item)
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        item = np.asarray(item.convert("RGB"))
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise UsageError(f"image {index}: a numpy image must be (H, W, 3) uint8 RGB, got {item.dtype} "
                             f"{item.shape}")
        return np.ascontiguousarray(item[..., ::-1]), f"image{index}"
    raise UsageError(f"image {index}: give a file path, a numpy (H, W, 3) uint8 RGB array or a PIL image, "
                     f"not {type(item).__name__}")


def load_custom(path: str | Path, device: str = "", imgsz: int = 640) -> HubModel:
    """A trained checkpoint (ours or an official YOLOv5/v7 .pt) or an exported .onnx file, ready for images.
    A .pt file is unpickled with a restricted loader, but load only files you trust."""
    return HubModel(load_detector(path, device=device, imgsz=imgsz))


def build_untrained(cfg: str, classes: int = 80, channels: int = 3, pretrained: bool = False) -> DetectionModel:
    """An untrained model from ``cfg/<cfg>`` (for training or inspection: ``model.info()``)."""
    if pretrained:
        raise UsageError(f"no pretrained {cfg} weights are downloaded: train one (train.py --cfg {cfg}) and load it "
                         "with torch.hub.load(..., 'custom', path='best.pt', source='local')")
    if channels != 3:
        raise UsageError(f"only 3-channel (RGB) models are supported, got channels={channels}")
    return DetectionModel(cfg, num_classes=classes)
