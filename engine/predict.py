"""Inference helpers shared by val.py and detect.py: one loader for .pt and .onnx detectors, test-time
augmentation, image preprocessing, YOLO-format text output, and the media sources detect.py reads.

A :class:`Detector` hides what kind of weights it runs: it maps float images (B, 3, H, W) in [0, 1] to
decoded predictions (B, N, 5 + nc) = [cx, cy, w, h] in input pixels, objectness, class probabilities, the
input of ``engine.ops.non_max_suppression``.
"""
from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.augment import PAD_COLOR, letterbox
from engine.backends import exported_kind, open_exported
from engine.boxes import xyxy2xywhn
from engine.dataset import IMAGE_SUFFIXES, read_image
from engine.torch_utils import select_device
from models.errors import UsageError

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".asf", ".avi", ".gif", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".ts", ".webm", ".wmv")
NETWORK_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://", "tcp://", "udp://")

# Test-time augmentation (YOLOv5's recipe): the image as is, flipped left-right at 0.83 scale, and at 0.67 scale.
TTA_SCALES = (1.0, 0.83, 0.67)
TTA_FLIPS = (False, True, False)
_TTA_PAD_VALUE = PAD_COLOR[0] / 255  # the letterbox gray, so padded borders look like any other padding

SOURCE_HELP = ("give an image, a video, a folder of images/videos, a glob pattern such as 'images/*.jpg', "
               "or a .txt file listing one path per line")


class SourceError(UsageError):
    """A --source that cannot be used; the message says what is wrong and what to give instead."""


# ----------------------------------------------------------------------------------------------
# The detector
# ----------------------------------------------------------------------------------------------

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


def check_imgsz(imgsz: int, stride: int) -> int:
    """Round ``imgsz`` up to a multiple of ``stride`` (with a warning when it changes)."""
    if not isinstance(imgsz, int) or isinstance(imgsz, bool) or imgsz < 1:
        raise UsageError(f"--imgsz must be a positive integer, got {imgsz!r}")
    rounded = max(math.ceil(imgsz / stride), 1) * stride
    if rounded != imgsz:
        logger.warning("--imgsz %d is not a multiple of the max stride %d; using %d", imgsz, stride, rounded)
    return rounded


def load_detector(weights: str | Path | Sequence[str | Path], device: str | torch.device = "", half: bool = False,
                  imgsz: int = 640, augment: bool = False) -> Detector:
    """Load .pt weights (our checkpoints or official YOLOv5/YOLOv7 files) or an exported model: ``.onnx`` (INT8
    included), ``.torchscript``, or an OpenVINO ``.xml`` / the folder holding it (``engine.backends``).

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
        forward = _ensemble([_tta(model) for model in models])
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


# ----------------------------------------------------------------------------------------------
# Test-time augmentation
# ----------------------------------------------------------------------------------------------

def scale_image(images: torch.Tensor, ratio: float, grid: int) -> torch.Tensor:
    """Resize (B, 3, H, W) by ``ratio`` and pad right/bottom with the letterbox gray to a ``grid`` multiple.

    Padding only at the right and bottom keeps pixel coordinates of the scaled image = original x ``ratio``.
    """
    if ratio == 1.0:
        return images
    height, width = images.shape[-2:]
    new_height, new_width = round(height * ratio), round(width * ratio)
    resized = F.interpolate(images, size=(new_height, new_width), mode="bilinear", align_corners=False)
    padded_height, padded_width = math.ceil(new_height / grid) * grid, math.ceil(new_width / grid) * grid
    return F.pad(resized, (0, padded_width - new_width, 0, padded_height - new_height), value=_TTA_PAD_VALUE)


def augmented_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: predictions of the original, a flipped 0.83x and a 0.67x copy, merged for NMS.

    ``model`` is a DetectionModel in eval mode (it returns (decoded, raw)). Boxes of the scaled passes are
    mapped back to the input's pixels. As in YOLOv5, the full-size pass drops its coarsest level (large
    objects are better seen at the smaller scales) and the smallest pass drops its finest level.
    """
    width = images.shape[-1]
    grid = model.size_multiple
    merged = []
    last = len(TTA_SCALES) - 1
    for index, (ratio, flip) in enumerate(zip(TTA_SCALES, TTA_FLIPS)):
        view = images.flip(-1) if flip else images
        decoded, raw = model(scale_image(view, ratio, grid))
        decoded = decoded.clone()
        decoded[..., :4] /= ratio
        if flip:
            decoded[..., 0] = width - decoded[..., 0]
        level_sizes = [level.shape[1] * level.shape[2] * level.shape[3] for level in raw]
        if index == 0 and len(level_sizes) > 1:
            decoded = decoded[:, :decoded.shape[1] - level_sizes[-1]]
        elif index == last and len(level_sizes) > 1:
            decoded = decoded[:, level_sizes[0]:]
        merged.append(decoded)
    return torch.cat(merged, 1)


def _tta(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(images: torch.Tensor) -> torch.Tensor:
        return augmented_forward(model, images)

    return forward


# ----------------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------------

def yolo_label_lines(detections: torch.Tensor | np.ndarray, image_shape: tuple[int, int],
                     save_conf: bool = False) -> list[str]:
    """YOLO-format rows ``class cx cy w h [conf]`` (normalised to ``image_shape`` = (height, width)).

    ``detections`` is (n, 6) [x1, y1, x2, y2, conf, cls] in pixels of that image.
    """
    if isinstance(detections, torch.Tensor):
        detections = detections.detach().cpu().numpy()
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 6)
    height, width = image_shape[:2]
    boxes = xyxy2xywhn(detections[:, :4].copy(), width, height, clip=True)
    lines = []
    for box, conf, class_id in zip(boxes, detections[:, 4], detections[:, 5]):
        values = [f"{int(class_id)}", *(f"{value:.6f}" for value in box)]
        if save_conf:
            values.append(f"{conf:.5f}")
        lines.append(" ".join(values))
    return lines


def write_yolo_labels(path: str | Path, detections: torch.Tensor | np.ndarray, image_shape: tuple[int, int],
                      save_conf: bool = False) -> Path | None:
    """Write :func:`yolo_label_lines` to ``path``; nothing is written for an image without detections
    (a missing label file means "no objects" in the YOLO format), and None is returned then."""
    lines = yolo_label_lines(detections, image_shape, save_conf)
    if not lines:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def describe_detections(detections: torch.Tensor, names: Sequence[str]) -> str:
    """``2 rectangles, 1 ring`` (class order), or ``(no detections)``."""
    if len(detections) == 0:
        return "(no detections)"
    class_ids, counts = torch.unique(detections[:, 5].detach().cpu().long(), return_counts=True)
    parts = []
    for class_id, count in zip(class_ids.tolist(), counts.tolist()):
        name = names[class_id] if 0 <= class_id < len(names) else str(class_id)
        parts.append(f"{count} {name}{'s' if count > 1 else ''}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Sources for detect.py
# ----------------------------------------------------------------------------------------------

def media_kind(path: str | Path) -> str | None:
    """'image', 'video' or None, by file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _supported() -> str:
    return f"images ({' '.join(IMAGE_SUFFIXES)}) or videos ({' '.join(VIDEO_SUFFIXES)})"


def resolve_source(source: str | Path) -> tuple[list[Path], list[str]]:
    """Expand --source into media files: (files in order, problems with listed entries).

    A folder gives its images and videos (not recursive, sorted); a pattern with ``*``, ``?`` or ``[``
    is a glob (``**`` recurses); a ``.txt`` file lists one path per line (relative to the list's folder;
    blank lines and lines starting with ``#`` ignored). Listed entries that are missing or not media are
    reported in the problems list and skipped. URLs, streams and webcams raise :class:`SourceError`, as
    does a source that yields no file at all.
    """
    text = str(source).strip()
    if not text:
        raise SourceError(f"--source is empty; {SOURCE_HELP}")
    if text.lower().startswith(NETWORK_PREFIXES) or text.lower().endswith(".streams"):
        raise SourceError(f"--source {text}: URLs and streams are not supported (this tool works offline); "
                          f"download the file and {SOURCE_HELP}")
    if text.isdigit():
        raise SourceError(f"--source {text}: webcams are not supported; record a video file and pass its path")
    path = Path(text).expanduser()
    problems: list[str] = []
    if path.is_dir():
        files = sorted(item for item in path.iterdir() if item.is_file() and media_kind(item))
        if not files:
            raise SourceError(f"--source {path}: the folder holds no {_supported()}")
        return files, problems
    if path.is_file():
        if path.suffix.lower() == ".txt":
            return _read_source_list(path)
        if media_kind(path) is None:
            raise SourceError(f"--source {path}: unsupported file type '{path.suffix}'; expected {_supported()}, "
                              "or a .txt list of paths")
        return [path], problems
    if glob.has_magic(text):
        matches = sorted(Path(item) for item in glob.glob(os.path.expanduser(text), recursive=True))
        files = [item for item in matches if item.is_file() and media_kind(item)]
        if not files:
            raise SourceError(f"--source {text}: the pattern matches no {_supported()}")
        return files, problems
    raise SourceError(f"--source {text}: no such file or folder; {SOURCE_HELP}")


def _read_source_list(list_file: Path) -> tuple[list[Path], list[str]]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"--source {list_file}: cannot read the list of paths ({error})") from error
    files, problems = [], []
    for line_number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path
        if entry.lower().startswith(NETWORK_PREFIXES):
            problems.append(f"{list_file}: line {line_number}: {entry} skipped, URLs are not supported")
        elif media_kind(path) is None:
            problems.append(f"{list_file}: line {line_number}: {entry} skipped, not one of the {_supported()}")
        elif not path.is_file():
            problems.append(f"{list_file}: line {line_number}: {path} skipped, file not found")
        else:
            files.append(path)
    if not files:
        detail = f" ({len(problems)} unusable entries, first: {problems[0]})" if problems else ""
        raise SourceError(f"--source {list_file}: the list names no readable image or video{detail}")
    return files, problems


@dataclass
class Frame:
    """One image, or one frame of a video, read from a source (``image`` is BGR uint8 (H, W, 3))."""

    path: Path
    image: np.ndarray = field(repr=False)
    index: int                  # position of the file among the source's files, 0-based
    kind: str                   # 'image' or 'video'
    frame: int = 0              # 1-based frame number within a video
    frame_count: int = 0        # frames the video container announces (0 when unknown)
    fps: float = 0.0


def iterate_frames(files: Sequence[Path], on_error: Callable[[Path, str], None]) -> Iterator[Frame]:
    """Yield every image and every video frame of ``files`` in order.

    A file that cannot be decoded is passed to ``on_error(path, reason)`` and skipped; the rest go on.
    """
    for index, path in enumerate(files):
        if media_kind(path) == "image":
            image = read_image(path)
            if image is None:
                on_error(path, "file not found" if not path.exists() else "cannot be decoded as an image")
                continue
            yield Frame(path, image, index, "image")
            continue
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                on_error(path, "cannot be opened as a video")
                continue
            frame_count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            number = 0
            while True:
                ok, image = capture.read()
                if not ok:
                    break
                number += 1
                yield Frame(path, image, index, "video", number, frame_count, fps)
            if number == 0:
                on_error(path, "no frame could be decoded")
        finally:
            capture.release()
