"""YOLO-format datasets: dataset YAMLs, split lists, checked labels with a cache, and ``YoloDataset``.

Layout. Images live anywhere; the label of ``.../images/.../name.jpg`` is ``.../labels/.../name.txt``
(the last ``images`` folder of the path becomes ``labels``; without one the label sits next to the
image). A label file has one object per line, ``class cx cy w h``, normalised to the image's width
and height; a polygon row ``class x1 y1 x2 y2 x3 y3 ...`` is accepted and reduced to its box.
A missing or empty label file means a background image.

Checking (done once, then cached). Every problem is logged once, with the file and the reason, and
counted in a one-line summary; loading goes on:

- an image that cannot be decoded: the image is skipped;
- a label file that is not UTF-8 text, has a row with the wrong number of values, a value that is not
  a finite number, a class that is not a non-negative integer, a negative size, or a box that reaches
  more than ``COORDINATE_TOLERANCE`` (2 % of the image) outside [0, 1]: the image is skipped, because
  a half-read label file would teach the model that real objects are background;
- a class id >= nc: the image is skipped for the same reason;
- a box that reaches outside the image by less than the tolerance: clipped to the image and kept;
- a row whose box has no area (after clipping): removed; exact duplicate rows: removed.

The label cache is ``labels/<split>.slimneck.cache`` next to the labels folder (an ``.npz`` file read with
``allow_pickle=False``), keyed by a hash of every image and label path, size and mtime plus nc. It is
written atomically and is always safe to delete.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import random
import shutil
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset
from tqdm import tqdm

from engine.augment import (augment_hsv, augmentation_hyp, letterbox, mixup, mosaic4,
                            random_perspective)
from engine.boxes import xyxy2xywhn
from engine.coco import check_category_ids
from models.errors import UsageError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
COORDINATE_TOLERANCE = 0.02
CACHE_VERSION = 1
CACHE_MODES = ("ram", "disk")

# Built-in dataset generators a dataset YAML may name with `generator:`. A fixed table: a YAML can
# only pick one of these, never point at arbitrary code.
BUILTIN_GENERATORS = {"blocks": ("data.blocks", "generate_dataset"),
                      "shapes": ("data.shapes", "generate_dataset"),
                      "photo_objects": ("data.photo_objects", "generate_dataset")}

# Summary wording for each counter, in the order the summary line lists them.
_SUMMARY_WORDS = (
    ("corrupt", "corrupt image", "corrupt images", "skipped"),
    ("bad_labels", "bad label file", "bad label files", "skipped"),
    ("unknown_class", "image with an unknown class", "images with unknown classes", "skipped"),
    ("duplicates", "duplicate row", "duplicate rows", "removed"),
    ("degenerate", "zero-area box", "zero-area boxes", "removed"),
    ("clipped", "box", "boxes", "clipped to the image"),
)


class DatasetError(UsageError):
    """A dataset YAML, split or file set that cannot be used; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------
# Dataset YAML and split resolution
# ----------------------------------------------------------------------------------------------

def load_data_config(yaml_file: str | Path) -> dict:
    """Read a dataset YAML and resolve its splits to image files.

    Returns a dict with ``path`` (Path, the dataset root), ``train``, ``val`` (list[Path] of image
    files), ``test`` (list[Path] or None), ``names`` (list[str]), ``nc`` (int), ``yaml_file`` (Path) and
    ``category_ids`` (the COCO category id of each class, for datasets converted from COCO; else None).
    A relative ``path`` is relative to the YAML's folder (no ``path``: the YAML's folder); relative
    split entries are relative to ``path``. A YAML with ``generator: <name>`` (one of
    ``BUILTIN_GENERATORS``) has its dataset created when the ``path`` folder is missing; a missing folder is
    otherwise an error, which quotes the YAML's ``prepare:`` text (the command that creates it), if any.
    """
    yaml_file = Path(yaml_file).expanduser()
    if not yaml_file.is_file():
        raise DatasetError(f"dataset YAML {yaml_file} does not exist")
    try:
        content = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DatasetError(f"{yaml_file}: not a readable YAML file: {error}") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{yaml_file}: expected a mapping with path, train, val and names, "
                           f"got {type(content).__name__}")
    names = _parse_names(content, yaml_file)

    root = content.get("path")
    if root is None:
        root = yaml_file.parent
    elif not isinstance(root, str):
        raise DatasetError(f"{yaml_file}: 'path' must be a string, got {root!r}")
    root = Path(os.path.abspath(yaml_file.parent / Path(root).expanduser()))

    for key in ("train", "val"):
        if content.get(key) in (None, "", []):
            raise DatasetError(f"{yaml_file}: the '{key}' split is missing or empty "
                               "(give a folder, a .txt list of images, or a list of those)")

    if content.get("generator") is not None and not root.is_dir():
        _run_generator(content["generator"], root, yaml_file)
    elif not root.is_dir():
        hint = " (downloads are not supported: fetch the data yourself)" if "download" in content else ""
        if isinstance(content.get("prepare"), str):
            hint = f"; create it with: {content['prepare'].strip()}"
        raise DatasetError(f"{yaml_file}: dataset folder {root} does not exist{hint}")

    splits = {}
    for key in ("train", "val", "test"):
        spec = content.get(key)
        if key == "test" and spec in (None, "", []):
            splits[key] = None
            continue
        splits[key] = resolve_image_files(spec, root, what=f"{yaml_file} '{key}'")
    category_ids = content.get("category_ids")
    if category_ids is not None:
        try:
            category_ids = check_category_ids(category_ids, len(names))
        except UsageError as error:
            raise DatasetError(f"{yaml_file}: {error}") from None
    return {"path": root, **splits, "names": names, "nc": len(names), "yaml_file": yaml_file.resolve(),
            "category_ids": category_ids}


def _parse_names(content: dict, yaml_file: Path) -> list[str]:
    names = content.get("names")
    if names is None:
        raise DatasetError(f"{yaml_file}: no 'names' (give the class names as a list or a "
                           "{0: name, 1: name} mapping)")
    if isinstance(names, dict):
        keys = list(names)
        if not all(isinstance(key, int) and not isinstance(key, bool) for key in keys) \
                or sorted(keys) != list(range(len(keys))):
            raise DatasetError(f"{yaml_file}: 'names' mapping keys must be the class ids 0..n-1, "
                               f"got {keys}")
        names = [names[index] for index in range(len(keys))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{yaml_file}: 'names' must be a non-empty list or mapping, got {names!r}")
    for index, name in enumerate(names):
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise DatasetError(f"{yaml_file}: class {index} name must be a string, got {name!r}")
    names = [str(name) for name in names]
    declared = content.get("nc")
    if declared is not None and declared != len(names):
        raise DatasetError(f"{yaml_file}: nc is {declared} but 'names' has {len(names)} entries")
    return names


def _run_generator(spec: str | dict, root: Path, yaml_file: Path) -> None:
    """Create a built-in dataset at ``root``: into a temporary folder first, renamed when complete."""
    options = {}
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name", None)
    else:
        name = spec
    if name not in BUILTIN_GENERATORS:
        raise DatasetError(f"{yaml_file}: unknown generator {name!r}; built-in generators: "
                           f"{sorted(BUILTIN_GENERATORS)}")
    module_name, function_name = BUILTIN_GENERATORS[name]
    generate = getattr(importlib.import_module(module_name), function_name)
    accepted = [parameter for parameter in inspect.signature(generate).parameters if parameter != "out_dir"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"{yaml_file}: generator {name!r} has no option(s) {unknown}; "
                           f"options: {accepted}")
    logger.info("%s: creating the %r dataset in %s", yaml_file.name, name, root)
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        generate(temporary, **options)
        os.rename(temporary, root)
        logger.info("%s: dataset ready in %s", yaml_file.name, root)
    except OSError:
        # Another process (a DDP rank) may have finished first; its copy is as good as ours.
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def resolve_image_files(spec: str | Path | Sequence[str | Path], root: Path | None = None,
                        what: str = "split") -> list[Path]:
    """Expand a split spec into image files: a folder (searched recursively), a ``.txt`` list of image
    paths (relative lines are relative to the list's folder), an image file, or a list of those.

    Relative entries are relative to ``root`` (default: the working directory). Order is kept,
    duplicates dropped. Raises ``DatasetError`` for an entry that does not exist or an empty result.
    Listed images are not opened here; unreadable ones are reported by the dataset scan.
    """
    entries = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    files: list[Path] = []
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)) or str(entry) == "":
            raise DatasetError(f"{what}: entry {entry!r} is not a path")
        path = Path(entry).expanduser()
        if root is not None and not path.is_absolute():
            path = root / path
        path = Path(os.path.abspath(path))
        if path.suffix.lower() in IMAGE_SUFFIXES:  # checked first: no filesystem call per listed image
            files.append(path)
        elif path.is_dir():
            files += sorted(item for item in path.rglob("*")
                            if item.suffix.lower() in IMAGE_SUFFIXES and item.is_file())
        elif path.suffix.lower() == ".txt" and path.is_file():
            files += _read_image_list(path)
        elif path.exists():
            raise DatasetError(f"{what}: {path} is neither a folder, a .txt list of images nor an image "
                               f"({', '.join(IMAGE_SUFFIXES)})")
        else:
            raise DatasetError(f"{what}: {path} does not exist")
    files = list(dict.fromkeys(files))
    if not files:
        raise DatasetError(f"{what}: no images found in {[str(entry) for entry in entries]}")
    return files


def _read_image_list(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{list_file}: cannot read the image list: {error}") from error
    files = []
    for line_number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        path = Path(line).expanduser()
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{list_file}: line {line_number}: {line!r} is not an image file "
                               f"({', '.join(IMAGE_SUFFIXES)})")
        files.append(Path(os.path.abspath(path if path.is_absolute() else list_file.parent / path)))
    return files


def image_to_label_path(image_path: str | Path) -> Path:
    """The label file of an image: the last ``images`` folder becomes ``labels``, the suffix ``.txt``."""
    parts = list(Path(image_path).parts)
    for position in range(len(parts) - 2, -1, -1):
        if parts[position] == "images":
            parts[position] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_image(path: str | Path) -> np.ndarray | None:
    """Decode an image file to BGR uint8 (H, W, 3), applying EXIF orientation; None when unreadable."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


# ----------------------------------------------------------------------------------------------
# Checking images and label files
# ----------------------------------------------------------------------------------------------

@dataclass
class ItemCheck:
    """What the scan found for one image and its label file."""

    kept: bool
    size: tuple[int, int] = (0, 0)  # original (width, height)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))
    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)


class _LabelProblem(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def check_item(image_path: Path, label_path: Path, num_classes: int | None) -> ItemCheck:
    """Decode one image and validate its label file (see the module docstring for the rules)."""
    image = read_image(image_path)
    if image is None:
        reason = "file not found" if not image_path.exists() else "cannot be decoded"
        return ItemCheck(False, counts=Counter(corrupt=1),
                         messages=[f"{image_path}: image skipped, {reason}"])
    height, width = image.shape[:2]
    try:
        labels, counts, notes = parse_label_file(label_path, num_classes)
    except _LabelProblem as problem:
        return ItemCheck(False, (width, height), counts=Counter({problem.kind: 1}),
                         messages=[f"{label_path}: image skipped, {problem}"])
    messages = [f"{label_path}: {'; '.join(notes)}"] if notes else []
    if len(labels) == 0:
        counts["backgrounds"] += 1
    return ItemCheck(True, (width, height), labels, counts, messages)


def parse_label_file(label_path: Path, num_classes: int | None) -> tuple[np.ndarray, Counter, list[str]]:
    """Parse a YOLO label file into a float32 (n, 5) ``[class, cx, cy, w, h]`` array.

    Returns the labels, the repair counters (``missing``, ``duplicates``, ``clipped``, ``degenerate``)
    and notes describing the repairs. Raises ``_LabelProblem`` when the image must be skipped.
    """
    counts: Counter = Counter()
    if not label_path.exists():
        counts["missing"] += 1
        return np.zeros((0, 5), np.float32), counts, []
    try:
        text = label_path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise _LabelProblem("bad_labels", f"cannot read the label file: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise _LabelProblem("bad_labels", "the label file is not UTF-8 text") from error

    rows = []
    for line_number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields:
            rows.append(_parse_label_row(fields, line_number, num_classes))
    labels = np.array(rows, dtype=np.float32).reshape(-1, 5)
    notes = []

    corners = np.concatenate([labels[:, 1:3] - labels[:, 3:5] / 2, labels[:, 1:3] + labels[:, 3:5] / 2], 1)
    clipped_corners = corners.clip(0.0, 1.0)
    outside = (np.abs(clipped_corners - corners) > 1e-6).any(1)
    if outside.any():
        counts["clipped"] += int(outside.sum())
        notes.append(f"{int(outside.sum())} box(es) reaching outside the image clipped")
        labels[:, 1:3] = (clipped_corners[:, :2] + clipped_corners[:, 2:]) / 2
        labels[:, 3:5] = clipped_corners[:, 2:] - clipped_corners[:, :2]
    degenerate = (labels[:, 3] <= 0) | (labels[:, 4] <= 0)
    if degenerate.any():
        counts["degenerate"] += int(degenerate.sum())
        notes.append(f"{int(degenerate.sum())} zero-area box(es) removed")
        labels = labels[~degenerate]
    _, first_index = np.unique(labels, axis=0, return_index=True)
    if len(first_index) < len(labels):
        removed = len(labels) - len(first_index)
        counts["duplicates"] += removed
        notes.append(f"{removed} duplicate row(s) removed")
        labels = labels[np.sort(first_index)]
    return labels, counts, notes


def _parse_label_row(fields: list[str], line_number: int, num_classes: int | None) -> list[float]:
    where = f"line {line_number}"
    try:
        values = [float(value) for value in fields]
    except ValueError:
        bad = next(value for value in fields if not _is_number(value))
        raise _LabelProblem("bad_labels", f"{where}: {bad!r} is not a number") from None
    if not all(math.isfinite(value) for value in values):
        raise _LabelProblem("bad_labels", f"{where}: non-finite value in {' '.join(fields)!r}")
    class_id = values[0]
    if class_id < 0 or class_id != int(class_id):
        raise _LabelProblem("bad_labels", f"{where}: class {fields[0]!r} is not a non-negative integer")
    if num_classes is not None and class_id >= num_classes:
        raise _LabelProblem("unknown_class", f"{where}: class {int(class_id)} is not below nc={num_classes}")
    if len(values) == 5:
        center_x, center_y, width, height = values[1:]
        if width < 0 or height < 0:
            raise _LabelProblem("bad_labels", f"{where}: negative box size in {' '.join(fields)!r}")
        x_low, x_high = center_x - width / 2, center_x + width / 2
        y_low, y_high = center_y - height / 2, center_y + height / 2
    elif len(values) >= 7 and len(values) % 2 == 1:
        xs, ys = values[1::2], values[2::2]
        x_low, x_high, y_low, y_high = min(xs), max(xs), min(ys), max(ys)
    else:
        raise _LabelProblem("bad_labels", f"{where}: expected 5 values 'class cx cy w h' (or a polygon "
                                          f"'class x1 y1 x2 y2 x3 y3 ...'), got {len(values)}")
    if min(x_low, y_low) < -COORDINATE_TOLERANCE or max(x_high, y_high) > 1 + COORDINATE_TOLERANCE:
        raise _LabelProblem("bad_labels", f"{where}: box {' '.join(fields[1:])!r} lies outside the image "
                                          "(coordinates must be normalised to [0, 1])")
    return [class_id, (x_low + x_high) / 2, (y_low + y_high) / 2, x_high - x_low, y_high - y_low]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Label cache
# ----------------------------------------------------------------------------------------------

def label_cache_path(label_files: Sequence[Path]) -> Path:
    """Where the scan result of a split is cached: ``<labels folder>.slimneck.cache`` next to the first label's
    folder. The name differs from YOLOv5's ``<labels folder>.cache`` so both engines can share a dataset."""
    folder = Path(label_files[0]).parent
    return folder.with_name(folder.name + ".slimneck.cache")


def files_fingerprint(image_files: Sequence[Path], label_files: Sequence[Path], num_classes: int | None) -> str:
    """A hash of every path, size and mtime (and nc): any added, removed or edited file changes it."""
    digest = hashlib.sha256(f"v{CACHE_VERSION} nc={num_classes}\n".encode())
    for path in [*image_files, *label_files]:
        try:
            status = os.stat(path)
            digest.update(f"{path}|{status.st_size}|{status.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}|absent\n".encode())
    return digest.hexdigest()


def _read_label_cache(cache_path: Path, fingerprint: str, num_images: int) -> dict | None:
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as stored:
            if int(stored["version"]) != CACHE_VERSION or str(stored["fingerprint"]) != fingerprint:
                return None
            content = {key: stored[key] for key in ("kept", "sizes", "label_counts", "labels", "report")}
    except (OSError, ValueError, KeyError) as error:
        logger.info("label cache %s is unreadable (%s); rebuilding it", cache_path, error)
        return None
    if len(content["kept"]) != num_images:
        return None
    return content


def _write_label_cache(cache_path: Path, content: dict) -> None:
    if not cache_path.parent.is_dir():
        logger.info("no label cache written: folder %s does not exist", cache_path.parent)
        return
    temporary = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            np.savez(file, **content)
        os.replace(temporary, cache_path)
    except OSError as error:
        logger.warning("cannot write the label cache %s (%s); the next start will scan again",
                       cache_path, error.strerror or error)
        temporary.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------

class YoloDataset(Dataset):
    """A YOLO-format detection dataset with YOLOv5 training augmentation.

    ``image_files_or_split_spec`` is a list of image files (as ``load_data_config`` returns) or any
    split spec ``resolve_image_files`` accepts. Images are resized so the long side is ``imgsz`` and
    letterboxed to ``imgsz`` x ``imgsz`` (or, with ``rect``, to a per-batch stride-multiple shape in
    aspect-ratio order). With ``augment``, each sample is a 4-image mosaic with probability
    ``hyp['mosaic']`` (then mixup with probability ``hyp['mixup']``) or a single letterboxed image,
    followed by random affine/perspective, HSV jitter and flips. ``cache`` keeps decoded images in RAM
    (``'ram'``, resized) or as ``.npy`` files next to the images (``'disk'``, full size so every
    ``imgsz`` can use them). ``single_cls`` maps every class to 0. ``mosaic`` may be switched off
    between epochs (e.g. for the last epochs of training).

    The augmentation of item ``i`` draws only from ``(augment_seed, i)`` (``set_augment_seed`` per epoch), not
    from whatever state a loader process has: the same epoch gives the same images with 0 or N workers, and
    a run resumed with another ``--workers`` continues exactly.

    Each item is ``(image, labels, path, shapes)``: a uint8 (3, H, W) RGB tensor, a float32 (n, 6)
    tensor ``[0, class, cx, cy, w, h]`` normalised to the output image (the collate function fills
    column 0 with the image index), the image path, and ``((h0, w0), ((gain_h, gain_w), (pad_x, pad_y)))``
    for mapping predictions back to the original image (None for a mosaic).
    """

    def __init__(self, image_files_or_split_spec: str | Path | Sequence[str | Path], imgsz: int = 640,
                 batch_size: int = 16, augment: bool = False, hyp: dict | None = None, rect: bool = False,
                 stride: int = 32, pad: float = 0.0, cache: str | bool | None = None, single_cls: bool = False,
                 prefix: str = "", num_classes: int | None = None):
        if imgsz <= 0 or imgsz % stride:
            raise ValueError(f"imgsz {imgsz} must be a positive multiple of the stride {stride}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        cache = {True: "ram", False: None}.get(cache, cache) if isinstance(cache, bool) else cache
        if cache is not None and cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES} or None, got {cache!r}")
        self.imgsz = imgsz
        self.batch_size = batch_size
        self.augment = augment
        self.hyp = augmentation_hyp(hyp)
        self.rect = rect
        self.mosaic = augment and not rect
        self.augment_seed = 0
        self.stride = stride
        self.pad = pad
        self.prefix = prefix
        self.num_classes = num_classes
        for key in ("copy_paste", "paste_in"):  # YOLOv5's and YOLOv7's segment-pasting augmentations
            value = (hyp or {}).get(key, 0.0)
            if augment and value > 0:
                logger.warning("%s%s=%g ignored: it needs segment labels, which this pipeline does not keep",
                               prefix, key, value)

        image_files = resolve_image_files(image_files_or_split_spec, what=f"{prefix}dataset")
        label_files = [image_to_label_path(path) for path in image_files]
        self.cache_hit = False
        self.cache_path = label_cache_path(label_files)
        self._load_labels(image_files, label_files)
        if single_cls:
            for labels in self.labels:
                labels[:, 0] = 0

        self.batch_index = np.arange(len(self)) // batch_size
        self.batch_shapes = None
        if rect:
            self._sort_for_rect()

        self.cache_mode = cache
        self._ram_images: list[np.ndarray | None] = [None] * len(self)
        if cache == "ram":
            self._cache_in_ram()

    def __len__(self) -> int:
        return len(self.image_files)

    def set_augment_seed(self, seed: int) -> None:
        """The seed of the coming epoch's augmentation (set before the loader starts its workers)."""
        self.augment_seed = int(seed)

    def _seed_item(self, index: int) -> None:
        # Python's random and numpy's global generator are what the augmentations draw from.
        state = np.random.SeedSequence([self.augment_seed, index]).generate_state(2)
        random.seed(int(state[0]))
        np.random.seed(int(state[1]))

    # -- labels ---------------------------------------------------------------------------------

    def _load_labels(self, image_files: list[Path], label_files: list[Path]) -> None:
        fingerprint = files_fingerprint(image_files, label_files, self.num_classes)
        content = _read_label_cache(self.cache_path, fingerprint, len(image_files))
        if content is not None:
            self.cache_hit = True
            logger.info("%susing the label cache %s", self.prefix, self.cache_path)
        else:
            content = self._scan(image_files, label_files)
            content["version"] = np.array(CACHE_VERSION)
            content["fingerprint"] = np.array(fingerprint)
            _write_label_cache(self.cache_path, content)

        report = json.loads(str(content["report"]))
        for message in report["messages"]:
            logger.warning("%s%s", self.prefix, message)
        kept = content["kept"].astype(bool)
        label_counts = content["label_counts"].astype(np.int64)
        all_labels = content["labels"].astype(np.float32).reshape(-1, 5)
        self.image_files = [path for path, keep in zip(image_files, kept) if keep]
        self.label_files = [path for path, keep in zip(label_files, kept) if keep]
        self.image_sizes = content["sizes"].astype(np.int64).reshape(-1, 2)
        self.labels = [labels.copy() for labels in np.split(all_labels, np.cumsum(label_counts)[:-1])] \
            if len(label_counts) else []
        self.summary = Counter(report["counts"])
        self.summary["images"] = len(self.image_files)
        self.summary["boxes"] = int(sum(len(labels) for labels in self.labels))
        logger.info("%s%s", self.prefix, self.summary_line())
        if not self.image_files:
            raise DatasetError(f"{self.prefix}no usable images among {len(image_files)} "
                               f"(first: {image_files[0]}); see the warnings above")

    def _scan(self, image_files: list[Path], label_files: list[Path]) -> dict:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(tqdm(pool.map(check_item, image_files, label_files,
                                         [self.num_classes] * len(image_files)),
                                total=len(image_files), desc=f"{self.prefix}scanning images and labels",
                                disable=None, leave=False))
        counts: Counter = Counter()
        messages: list[str] = []
        for result in results:
            counts.update(result.counts)
            messages += result.messages
        kept = [result for result in results if result.kept]
        labels = [result.labels for result in kept]
        return {
            "kept": np.array([result.kept for result in results], dtype=bool),
            "sizes": np.array([result.size for result in kept], dtype=np.int64).reshape(-1, 2),
            "label_counts": np.array([len(item) for item in labels], dtype=np.int64),
            "labels": np.concatenate(labels, 0) if labels else np.zeros((0, 5), np.float32),
            "report": np.array(json.dumps({"messages": messages, "counts": dict(counts)})),
        }

    def summary_line(self) -> str:
        """One line such as ``300 images, 912 boxes, 2 backgrounds, 1 corrupt image skipped``."""
        counts = self.summary
        parts = [f"{counts['images']} images", f"{counts['boxes']} boxes"]
        if counts["backgrounds"]:
            missing = f" ({counts['missing']} without a label file)" if counts["missing"] else ""
            parts.append(f"{counts['backgrounds']} backgrounds{missing}")
        for key, singular, plural, verb in _SUMMARY_WORDS:
            if counts[key]:
                parts.append(f"{counts[key]} {singular if counts[key] == 1 else plural} {verb}")
        return ", ".join(parts)

    # -- rectangular batches and image caching ----------------------------------------------------

    def _sort_for_rect(self) -> None:
        aspect = self.image_sizes[:, 1] / self.image_sizes[:, 0]  # height / width
        order = aspect.argsort(kind="stable")
        self.image_files = [self.image_files[index] for index in order]
        self.label_files = [self.label_files[index] for index in order]
        self.labels = [self.labels[index] for index in order]
        self.image_sizes = self.image_sizes[order]
        aspect = aspect[order]
        num_batches = int(self.batch_index[-1]) + 1
        relative = np.ones((num_batches, 2))
        for batch in range(num_batches):
            batch_aspect = aspect[self.batch_index == batch]
            if batch_aspect.max() < 1:  # all landscape: full width, height of the tallest
                relative[batch] = [batch_aspect.max(), 1]
            elif batch_aspect.min() > 1:  # all portrait: full height, width of the widest
                relative[batch] = [1, 1 / batch_aspect.min()]
        self.batch_shapes = (np.ceil(relative * self.imgsz / self.stride + self.pad).astype(int)
                             * self.stride)

    def _cache_in_ram(self) -> None:
        gains = self.imgsz / self.image_sizes.max(1)
        needed = int(sum(round(width * gain) * round(height * gain) * 3
                         for (width, height), gain in zip(self.image_sizes, gains)))
        available = _available_memory()
        if available is not None and needed > 0.8 * available:
            logger.warning("%snot caching images in RAM: %.1f GB needed, %.1f GB available",
                           self.prefix, needed / 1e9, available / 1e9)
            self.cache_mode = None
            return
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            loaded = tqdm(pool.map(self._decode_resized, range(len(self))), total=len(self),
                          desc=f"{self.prefix}caching images ({needed / 1e9:.2f} GB RAM)",
                          disable=None, leave=False)
            for index, (image, _, _) in enumerate(loaded):
                self._ram_images[index] = image

    # -- loading ----------------------------------------------------------------------------------

    def load_image(self, index: int) -> tuple[np.ndarray, tuple[int, int], float]:
        """The image at ``index`` resized so its long side is ``imgsz``: (image, (h0, w0), gain)."""
        cached = self._ram_images[index]
        if cached is not None:
            width, height = self.image_sizes[index]
            return cached, (int(height), int(width)), self.imgsz / max(width, height)
        return self._decode_resized(index)

    def _decode_resized(self, index: int) -> tuple[np.ndarray, tuple[int, int], float]:
        path = self.image_files[index]
        image = self._read_disk_cached(path) if self.cache_mode == "disk" else read_image(path)
        if image is None:
            raise DatasetError(f"{path}: image can no longer be read (it was readable when the dataset "
                               "was scanned; delete the label cache if the files changed)")
        height, width = image.shape[:2]
        gain = self.imgsz / max(height, width)
        if gain != 1:
            # Area averaging keeps shrunken validation images faithful; training uses the faster
            # bilinear filter (its randomness hides the difference).
            shrink_filter = cv2.INTER_LINEAR if self.augment else cv2.INTER_AREA
            image = cv2.resize(image, (max(round(width * gain), 1), max(round(height * gain), 1)),
                               interpolation=cv2.INTER_LINEAR if gain > 1 else shrink_filter)
        return image, (height, width), gain

    @staticmethod
    def _read_disk_cached(path: Path) -> np.ndarray | None:
        cached_path = path.with_name(path.name + ".npy")
        try:
            if cached_path.stat().st_mtime_ns >= path.stat().st_mtime_ns:
                return np.load(cached_path, allow_pickle=False)
        except (OSError, ValueError):
            pass
        image = read_image(path)
        if image is not None:
            temporary = cached_path.with_name(f"{cached_path.name}.{os.getpid()}.tmp")
            try:
                with open(temporary, "wb") as file:
                    np.save(file, image, allow_pickle=False)
                os.replace(temporary, cached_path)
            except OSError as error:
                logger.warning("cannot write the image cache %s (%s)", cached_path, error.strerror or error)
                temporary.unlink(missing_ok=True)
        return image

    def _pixel_boxes(self, index: int, width: float, height: float, pad_x: float, pad_y: float) -> np.ndarray:
        """Labels of ``index`` as ``[class, x1, y1, x2, y2]`` pixels of an image scaled to width x height."""
        labels = self.labels[index]
        boxes = np.empty_like(labels)
        boxes[:, 0] = labels[:, 0]
        boxes[:, 1] = (labels[:, 1] - labels[:, 3] / 2) * width + pad_x
        boxes[:, 2] = (labels[:, 2] - labels[:, 4] / 2) * height + pad_y
        boxes[:, 3] = (labels[:, 1] + labels[:, 3] / 2) * width + pad_x
        boxes[:, 4] = (labels[:, 2] + labels[:, 4] / 2) * height + pad_y
        return boxes

    def _load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        indices = [index] + random.choices(range(len(self)), k=3)
        random.shuffle(indices)
        images, boxes = [], []
        for item in indices:
            image = self.load_image(item)[0]
            images.append(image)
            boxes.append(self._pixel_boxes(item, image.shape[1], image.shape[0], 0, 0))
        canvas, canvas_boxes = mosaic4(images, boxes, self.imgsz)
        hyp = self.hyp
        return random_perspective(canvas, canvas_boxes, degrees=hyp["degrees"], translate=hyp["translate"],
                                  scale=hyp["scale"], shear=hyp["shear"], perspective=hyp["perspective"],
                                  border=(-self.imgsz // 2, -self.imgsz // 2))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        hyp = self.hyp
        shapes = None
        if self.augment:
            self._seed_item(index)
        if self.mosaic and random.random() < hyp["mosaic"]:
            image, boxes = self._load_mosaic(index)
            if random.random() < hyp["mixup"]:
                image, boxes = mixup(image, boxes, *self._load_mosaic(random.randrange(len(self))))
        else:
            image, (height0, width0), load_gain = self.load_image(index)
            shape = (tuple(int(side) for side in self.batch_shapes[self.batch_index[index]]) if self.rect
                     else (self.imgsz, self.imgsz))
            image, (letterbox_gain, _), (pad_x, pad_y) = letterbox(image, shape, auto=False,
                                                                  scaleup=self.augment)
            gain = load_gain * letterbox_gain
            boxes = self._pixel_boxes(index, width0 * gain, height0 * gain, pad_x, pad_y)
            shapes = ((height0, width0), ((gain, gain), (pad_x, pad_y)))
            if self.augment:
                image, boxes = random_perspective(image, boxes, degrees=hyp["degrees"],
                                                  translate=hyp["translate"], scale=hyp["scale"],
                                                  shear=hyp["shear"], perspective=hyp["perspective"])

        height, width = image.shape[:2]
        labels = np.zeros((len(boxes), 5), np.float32)
        if len(boxes):
            labels[:, 0] = boxes[:, 0]
            labels[:, 1:] = xyxy2xywhn(boxes[:, 1:5].astype(np.float32), width, height, clip=True)
        if self.augment:
            augment_hsv(image, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
            if random.random() < hyp["flipud"]:
                image = np.flipud(image)
                labels[:, 2] = 1 - labels[:, 2]
            if random.random() < hyp["fliplr"]:
                image = np.fliplr(image)
                labels[:, 1] = 1 - labels[:, 1]

        targets = torch.zeros((len(labels), 6), dtype=torch.float32)
        targets[:, 1:] = torch.from_numpy(labels)
        chw_rgb = np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1))
        return torch.from_numpy(chw_rgb), targets, str(self.image_files[index]), shapes


def _available_memory() -> int | None:
    """Bytes of memory the kernel considers available (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
