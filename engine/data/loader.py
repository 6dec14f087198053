"""Data loaders over ``YoloDataset``: worker count, reproducible seeding, DDP sampling and batching."""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

from engine.data.dataset import YoloDataset

logger = logging.getLogger(__name__)

# Data-loader workers are processes already; OpenCV's own thread pool in each of them would only
# oversubscribe the cores.
cv2.setNumThreads(0)


def collate_fn(batch: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """Stack a list of dataset items into (images (B, 3, H, W) uint8, targets (N, 6), paths, shapes).

    Each target row is ``[image_index, class, cx, cy, w, h]`` with the box normalised to the image.
    """
    images, labels, paths, shapes = zip(*batch)
    # New tensors rather than writing into the items: an item may be shared (the same sample twice).
    targets = [torch.cat([torch.full((len(image_labels), 1), float(image_index)), image_labels[:, 1:]], 1)
               for image_index, image_labels in enumerate(labels)]
    return torch.stack(images, 0), torch.cat(targets, 0), paths, shapes


class WeightedEpochSampler(Sampler[int]):
    """``--image-weights``: each epoch draws ``len(dataset)`` images with replacement, in proportion to weights the
    trainer sets before the epoch (``image_weights``); the draw comes from the loader's generator."""

    def __init__(self, num_items: int, generator: torch.Generator):
        self.weights = torch.ones(num_items, dtype=torch.float64)
        self.generator = generator

    def set_weights(self, weights: np.ndarray) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != self.weights.shape or not torch.isfinite(weights).all() or (weights < 0).any() \
                or weights.sum() <= 0:
            raise ValueError(f"image weights must be {len(self.weights)} finite non-negative numbers, not all 0")
        self.weights = weights

    def __iter__(self) -> Iterator[int]:
        return iter(torch.multinomial(self.weights, len(self.weights), replacement=True,
                                      generator=self.generator).tolist())

    def __len__(self) -> int:
        return len(self.weights)


def class_weights(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Inverse class frequencies over a dataset's labels, summing to 1 (an absent class counts as once)."""
    classes = np.concatenate([np.asarray(item)[:, 0] for item in labels]).astype(int) if labels else np.zeros(0, int)
    counts = np.bincount(classes, minlength=num_classes).astype(np.float64)
    counts[counts == 0] = 1
    weights = 1 / counts
    return weights / weights.sum()


def image_weights(labels: Sequence[np.ndarray], num_classes: int, class_maps: np.ndarray | None = None) -> np.ndarray:
    """YOLOv5's ``--image-weights``: an image weighs the sum over its objects of their class weight,
    ``nc x class_weights x (1 - class mAP)^2 / nc``: rare and badly detected classes are drawn more often. Images
    without objects weigh 0 (never drawn, as in YOLOv5)."""
    per_class = class_weights(labels, num_classes) * num_classes
    if class_maps is not None:
        per_class = per_class * (1 - np.asarray(class_maps, dtype=np.float64)) ** 2 / num_classes
    counts = np.stack([np.bincount(np.asarray(item)[:, 0].astype(int), minlength=num_classes) for item in labels])
    return counts @ per_class


class RectBatchSampler(Sampler[int]):
    """Distributed sampling for rectangular batches: whole batches, in order, dealt round-robin to ranks.

    A plain ``DistributedSampler`` interleaves single images across ranks, so a rank's batch would mix
    images letterboxed to different per-batch shapes and could not be stacked.
    """

    def __init__(self, dataset: YoloDataset, num_replicas: int, rank: int):
        self.indices = [index for batch in range(rank, int(dataset.batch_index[-1]) + 1, num_replicas)
                        for index in np.nonzero(dataset.batch_index == batch)[0].tolist()]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Accepted for interface parity with ``DistributedSampler``; the order is fixed."""


def create_dataloader(path: str | Path | Sequence[str | Path], imgsz: int, batch_size: int, stride: int,
                      hyp: dict | None = None, augment: bool = False, cache: str | bool | None = None,
                      rect: bool = False, pad: float = 0.0, rank: int = -1, workers: int = 8,
                      shuffle: bool = False, seed: int = 0, single_cls: bool = False, prefix: str = "",
                      num_classes: int | None = None, weighted: bool = False) -> tuple[DataLoader, YoloDataset]:
    """Build a ``YoloDataset`` and its ``DataLoader``.

    ``path`` is anything ``YoloDataset`` accepts (image files or a split spec). ``rank`` != -1 uses a
    distributed sampler (call ``loader.sampler.set_epoch(epoch)`` each epoch so shuffling changes);
    ``rect`` forces ``shuffle`` off, since the per-batch shapes depend on the aspect-ratio order. ``weighted``
    (single process only) samples with a ``WeightedEpochSampler`` instead of shuffling.
    Worker processes: ``min(cpu_count, batch_size if batch_size > 1 else 0, workers)``. The loader's
    generator is seeded with ``seed + max(rank, 0)`` so single-process and rank-0 runs match.
    """
    if rect and shuffle:
        logger.warning("%srect=True is incompatible with shuffle; shuffle turned off", prefix)
        shuffle = False
    dataset = YoloDataset(path, imgsz=imgsz, batch_size=batch_size, augment=augment, hyp=hyp, rect=rect,
                          stride=stride, pad=pad, cache=cache, single_cls=single_cls, prefix=prefix,
                          num_classes=num_classes)
    batch_size = min(batch_size, len(dataset))
    num_workers = min(os.cpu_count() or 1, batch_size if batch_size > 1 else 0, workers)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    sampler = None
    if weighted:
        if rank != -1 or rect:
            raise ValueError("weighted sampling needs a single process and square batches (no rect)")
        sampler = WeightedEpochSampler(len(dataset), generator)
    elif rank != -1:
        num_replicas = torch.distributed.get_world_size()
        sampler = (RectBatchSampler(dataset, num_replicas, rank) if rect
                   else DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                           seed=seed))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                        sampler=sampler, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                        collate_fn=collate_fn, generator=generator,
                        drop_last=False)
    logger.debug("%s%d images, batch %d, %d workers, %d batches", prefix, len(dataset), batch_size,
                 num_workers, math.ceil(len(sampler or dataset) / batch_size))
    return loader, dataset
