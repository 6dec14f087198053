"""YOLO-format labels: where an image's label file is, checking images and label files, and the label cache.

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
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.data.images import read_image

logger = logging.getLogger(__name__)

COORDINATE_TOLERANCE = 0.02
CACHE_VERSION = 1


def image_to_label_path(image_path: str | Path) -> Path:
    """The label file of an image: the last ``images`` folder becomes ``labels``, the suffix ``.txt``."""
    parts = list(Path(image_path).parts)
    for position in range(len(parts) - 2, -1, -1):
        if parts[position] == "images":
            parts[position] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


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


def load_labels(image_files: list[Path], label_files: list[Path], num_classes: int | None, cache_path: Path,
                prefix: str = "") -> tuple[dict, bool]:
    """The checked labels of a split: from the cache when it matches the files, else scanned and cached.

    Returns ``(content, cache_hit)``; ``content`` holds ``kept`` (per image), ``sizes``, ``label_counts`` and
    ``labels`` (of the kept images, concatenated) and ``report`` (JSON: the messages and problem counts).
    """
    fingerprint = files_fingerprint(image_files, label_files, num_classes)
    content = _read_label_cache(cache_path, fingerprint, len(image_files))
    if content is not None:
        logger.info("%susing the label cache %s", prefix, cache_path)
        return content, True
    content = _scan(image_files, label_files, num_classes, prefix)
    content["version"] = np.array(CACHE_VERSION)
    content["fingerprint"] = np.array(fingerprint)
    _write_label_cache(cache_path, content)
    return content, False


def _scan(image_files: list[Path], label_files: list[Path], num_classes: int | None, prefix: str) -> dict:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(check_item, image_files, label_files,
                                     [num_classes] * len(image_files)),
                            total=len(image_files), desc=f"{prefix}scanning images and labels",
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
