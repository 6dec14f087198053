"""``YoloDataset``: the checked images and labels of a split, letterboxed or augmented (YOLOv5 recipe), with
an optional RAM or disk image cache. Label rules and the label cache: engine/data/labels.py."""
from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from engine.boxes import xyxy2xywhn
from engine.data.augment import augment_hsv, augmentation_hyp, letterbox, mixup, mosaic4, random_perspective
from engine.data.config import DatasetError, resolve_image_files
from engine.data.images import available_memory, read_disk_cached, read_image
from engine.data.labels import image_to_label_path, label_cache_path, load_labels

logger = logging.getLogger(__name__)

CACHE_MODES = ("ram", "disk")

# Summary wording for each counter, in the order the summary line lists them.
_SUMMARY_WORDS = (
    ("corrupt", "corrupt image", "corrupt images", "skipped"),
    ("bad_labels", "bad label file", "bad label files", "skipped"),
    ("unknown_class", "image with an unknown class", "images with unknown classes", "skipped"),
    ("duplicates", "duplicate row", "duplicate rows", "removed"),
    ("degenerate", "zero-area box", "zero-area boxes", "removed"),
    ("clipped", "box", "boxes", "clipped to the image"),
)


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
        content, self.cache_hit = load_labels(image_files, label_files, self.num_classes, self.cache_path,
                                              self.prefix)

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
        available = available_memory()
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
        image = read_disk_cached(path) if self.cache_mode == "disk" else read_image(path)
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
