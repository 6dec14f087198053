"""Loading a detector for val.py, detect.py and hubconf.py: PyTorch .pt weights (one model or an ensemble, with
optional test-time augmentation) or any exported model, behind one :class:`Detector` interface.

A :class:`Detector` hides what kind of weights it runs: it maps float images (B, 3, H, W) in [0, 1] to
decoded predictions (B, N, 5 + nc) = [cx, cy, w, h] in input pixels, objectness, class probabilities, the
input of ``engine.infer.nms.non_max_suppression``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.cli import check_imgsz
from engine.data.augment import letterbox
from engine.infer.backends import exported_kind, open_exported
from engine.infer.tta import tta_forward
from engine.torch_utils import select_device
from models.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class Detector:
    """A loaded detector: ``detector(images)`` maps float (B, 3, H, W) in [0, 1] to decoded (B, N, 5 + nc).

    ``forward`` does the work (a fused PyTorch model, an ensemble, test-time augmentation or an ONNX
    session); the call adds the dtype conversion for ``half`` and, for an ONNX model exported with a fixed
    batch size, splits or zero-pads the batch to that size. ``imgsz`` is the square input size the model
    should be fed (a stride multiple; the exported size for a fixed-shape ONNX model), ``fixed_shape`` the
    exported (height, width) or None when any stride-multiple size works.
    """

    forward: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    names: list[str]
    stride: int
    device: torch.device
    imgsz: int
    kind: str = "pytorch"
    half: bool = False
    fixed_shape: tuple[int, int] | None = None
    fixed_batch: int | None = None
    augment: bool = False
    weights: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def label(self) -> str:
        """The weights file(s) for messages."""
        return ", ".join(self.weights) if self.weights else f"the {self.kind} model"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.half else torch.float32

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.fixed_shape is not None and tuple(images.shape[-2:]) != self.fixed_shape:
            raise UsageError(f"{self.label} was exported for {self.fixed_shape[0]}x{self.fixed_shape[1]} inputs, "
                             f"got {images.shape[-2]}x{images.shape[-1]}")
        images = images.to(self.device, self.dtype)
        batch = images.shape[0]
        if self.fixed_batch is None or batch == self.fixed_batch:
            return self._decoded(images)
        outputs = []
        for start in range(0, batch, self.fixed_batch):
            chunk = images[start:start + self.fixed_batch]
            used = chunk.shape[0]
            if used < self.fixed_batch:
                chunk = torch.cat((chunk, chunk.new_zeros((self.fixed_batch - used, *chunk.shape[1:]))))
            outputs.append(self._decoded(chunk)[:used])
        return torch.cat(outputs)

    def _decoded(self, images: torch.Tensor) -> torch.Tensor:
        output = self.forward(images)
        decoded = output[0] if isinstance(output, (tuple, list)) else output
        return decoded.to(images.device)

    def input_shape(self) -> tuple[int, int]:
        """(height, width) of a square batch: the fixed ONNX shape, else ``imgsz`` x ``imgsz``."""
        return self.fixed_shape if self.fixed_shape is not None else (self.imgsz, self.imgsz)

    def prepare(self, image_bgr: np.ndarray, auto: bool = True) -> tuple[torch.Tensor, tuple]:
        """Letterbox one BGR image for this detector: ((1, 3, H, W) float tensor in [0, 1], ratio_pad).

        ``auto`` pads only to the next stride multiple (the smallest valid input) when the model accepts any
        size; a fixed-shape ONNX model always gets its exported shape. ``ratio_pad`` is what
        ``engine.boxes.scale_boxes`` needs to map boxes back to ``image_bgr``.
        """
        fixed = self.fixed_shape is not None
        resized, gain, pad = letterbox(image_bgr, self.input_shape(), auto=auto and not fixed, stride=self.stride)
        chw_rgb = np.ascontiguousarray(resized[..., ::-1].transpose(2, 0, 1))
        tensor = torch.from_numpy(chw_rgb).to(self.device).to(self.dtype).div_(255).unsqueeze(0)
        return tensor, (gain, pad)

    def warmup(self, batch_size: int = 1, shape: tuple[int, int] | None = None) -> None:
        """One forward pass on zeros of (height, width) ``shape`` (default: :meth:`input_shape`), so one-time
        initialisation does not count in measured latency."""
        height, width = shape if shape is not None and self.fixed_shape is None else self.input_shape()
        self(torch.zeros((self.fixed_batch or batch_size, 3, height, width), device=self.device))


def load_detector(weights: str | Path | Sequence[str | Path], device: str | torch.device = "", half: bool = False,
                  imgsz: int = 640, augment: bool = False) -> Detector:
    """Load .pt weights (our checkpoints or official YOLOv5/YOLOv7 files) or an exported model: ``.onnx`` (INT8
    included), ``.torchscript``, or an OpenVINO ``.xml`` / the folder holding it (``engine.infer.backends``).

    Several .pt files make an ensemble: their decoded predictions are concatenated before NMS (YOLOv5's
    ``--weights a.pt b.pt``); they must share the class count. PyTorch models are fused and put in eval mode.
    ``half`` needs CUDA (ignored with a warning elsewhere, and for exported models, whose precision is fixed at
    export).
    ``augment`` enables test-time augmentation (PyTorch models only).
    """
    paths = [Path(weights)] if isinstance(weights, (str, os.PathLike)) else [Path(item) for item in weights]
    if not paths:
        raise UsageError("--weights: give at least one .pt file or one exported model")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"--weights: {path} does not exist (downloads are not supported; "
                                    "give a local .pt file or exported model)")
        if path.suffix.lower() not in (".pt", ".pth") and exported_kind(path) is None:
            raise UsageError(f"--weights: {path} is neither a PyTorch .pt nor an exported model (.onnx, "
                             ".torchscript, an OpenVINO .xml or its folder)")
    device = device if isinstance(device, torch.device) else select_device(device)
    if half and device.type != "cuda":
        logger.warning("--half needs a CUDA device; running in float32 on %s", device)
        half = False
    exported = [path for path in paths if exported_kind(path) is not None]
    if exported:
        if len(paths) > 1:
            raise UsageError(f"--weights: an ensemble needs PyTorch .pt files; got {[str(p) for p in paths]}")
        if augment:
            raise UsageError(f"--augment (test-time augmentation) needs a PyTorch .pt model; {exported[0]} is "
                             f"{exported_kind(exported[0])}")
        return _load_exported(exported[0], device, half, imgsz)
    return _load_pytorch(paths, device, half, imgsz, augment)


def _load_pytorch(paths: list[Path], device: torch.device, half: bool, imgsz: int, augment: bool) -> Detector:
    from models.weights import load_model

    models, names = [], None
    for path in paths:
        model, info = load_model(path, device=device, fuse=True)
        model.eval()
        if half:
            model.half()
        model_names = list(info.get("names") or model.names)
        if names is not None and len(model_names) != len(names):
            raise UsageError(f"--weights: cannot ensemble {paths[0]} ({len(names)} classes) with {path} "
                             f"({len(model_names)} classes)")
        names = names or model_names
        models.append(model)
    stride = max(model.size_multiple for model in models)
    if augment:
        forward = _ensemble([tta_forward(model) for model in models])
    else:
        forward = models[0] if len(models) == 1 else _ensemble(models)
    logger.info("Loaded %s (%d classes, stride %d%s)", ", ".join(str(p) for p in paths), len(names), stride,
                ", test-time augmentation" if augment else "")
    return Detector(forward, names, stride, device, check_imgsz(imgsz, stride), "pytorch", half,
                    augment=augment, weights=[str(p) for p in paths])


def _load_exported(path: Path, device: torch.device, half: bool, imgsz: int) -> Detector:
    if half:
        logger.warning("--half is ignored for exported models: their precision is fixed at export")
    backend = open_exported(path, device)
    stride = int(backend.stride)
    names = list(backend.names)
    fixed_shape, fixed_batch = _fixed_input(backend)
    if fixed_shape is not None:
        if fixed_shape[0] != fixed_shape[1]:
            raise UsageError(f"{path} was exported for a non-square {fixed_shape[0]}x{fixed_shape[1]} input; "
                             "re-export it with a square --imgsz or with dynamic shapes")
        if imgsz != fixed_shape[0]:
            logger.warning("%s was exported for %dx%d inputs; using imgsz %d instead of %d", path, *fixed_shape,
                           fixed_shape[0], imgsz)
        imgsz = fixed_shape[0]
    else:
        imgsz = check_imgsz(imgsz, stride)
    logger.info("Loaded %s with %s (%d classes, stride %d, %s input%s)", path, backend.kind, len(names), stride,
                f"fixed {fixed_batch or 'dynamic'}x3x{fixed_shape[0]}x{fixed_shape[1]}" if fixed_shape else "dynamic",
                ", INT8" if backend.int8 else "")
    return Detector(backend, names, stride, device, imgsz, backend.kind, False, fixed_shape, fixed_batch,
                    weights=[str(path)])


def _fixed_input(backend) -> tuple[tuple[int, int] | None, int | None]:
    """(height, width) and batch size an ONNX model was exported with; None for dynamic dimensions."""
    shape = getattr(backend, "fixed_shape", None)
    if not shape:
        return None, None
    shape = tuple(shape)
    if len(shape) == 2:
        return (int(shape[0]), int(shape[1])), getattr(backend, "batch_size", None)
    batch, height, width = shape[0], shape[-2], shape[-1]
    spatial = (int(height), int(width)) if isinstance(height, int) and isinstance(width, int) else None
    return spatial, batch if isinstance(batch, int) and batch > 0 else None


def _ensemble(forwards: Sequence[Callable]) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(images: torch.Tensor) -> torch.Tensor:
        outputs = []
        for model in forwards:
            output = model(images)
            outputs.append(output[0] if isinstance(output, (tuple, list)) else output)
        return torch.cat(outputs, 1)  # NMS picks among all members' boxes

    return forward
