"""AutoAnchor: check that the anchors fit a dataset's box sizes and re-fit them when they do not.

The fit is judged with the same ratio rule the loss uses to assign targets: a box can be learned by an anchor
when its width ratio and height ratio r (box / anchor) both satisfy max(r, 1 / r) < thr. The best possible
recall (BPR) is the fraction of label boxes that at least one anchor can take. Below 0.98 the anchors are
re-estimated: k-means on the box sizes, then a genetic search that mutates the anchor set to maximise the
fitness (mean, over boxes, of the best anchor's worst-side ratio, counted only when above 1 / thr).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.errors import UsageError

logger = logging.getLogger(__name__)

# Below this best-possible recall the current anchors are considered a poor fit.
BPR_THRESHOLD = 0.98
# Boxes smaller than this (pixels, either side) are left out of the fit: they are mostly label noise.
MIN_BOX_SIZE = 2.0
# Seed of the 0.9-1.1 random rescale of label sizes (augmentation stand-in); fixed so a run is repeatable.
SCALE_SEED = 0


def _ratio_metric(anchors: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """(n, k): for each box and anchor, the worse of min(r, 1 / r) over width and height (1 = same size)."""
    ratio = wh[:, None, :] / anchors[None, :, :]
    return np.minimum(ratio, 1.0 / ratio).min(axis=2)


class _FitnessOfAnchors:
    """The evolution's fitness on fixed boxes: mean best-anchor ratio metric, counted when above 1 / thr.

    Works in log space, where the ratio metric min(r, 1 / r) is exp(-|log w - log a|), and loops over the
    few anchors on contiguous per-side arrays: about 20x faster than broadcasting an (n, k, 2) array,
    which is what makes 1000 generations on tens of thousands of boxes take about a second.
    """

    def __init__(self, wh: np.ndarray, thr: float) -> None:
        self.log_width = np.ascontiguousarray(np.log(wh[:, 0]))
        self.log_height = np.ascontiguousarray(np.log(wh[:, 1]))
        self.log_thr = float(np.log(thr))

    def __call__(self, anchors: np.ndarray) -> float:
        best = np.full_like(self.log_width, np.inf)
        for log_anchor_width, log_anchor_height in np.log(anchors):
            worst_side = np.maximum(np.abs(self.log_width - log_anchor_width),
                                    np.abs(self.log_height - log_anchor_height))
            np.minimum(best, worst_side, out=best)
        return float((np.exp(-best) * (best < self.log_thr)).mean())


def anchor_fitness_metrics(anchors_px: np.ndarray | torch.Tensor, wh: np.ndarray | torch.Tensor,
                           thr: float = 4.0) -> tuple[float, float]:
    """Return (best possible recall, anchors above threshold) of pixel anchors (k, 2) for boxes wh (n, 2).

    Best possible recall: the fraction of boxes with at least one anchor whose max(r, 1 / r) is below ``thr``
    for both sides. Anchors above threshold: the mean number of such anchors per box.
    """
    anchors = _as_wh_array(anchors_px, "anchors_px")
    sizes = _as_wh_array(wh, "wh")
    if len(anchors) == 0:
        raise ValueError("anchors_px is empty")
    if len(sizes) == 0:
        raise ValueError("wh is empty: there are no label boxes to measure the anchors against")
    metric = _ratio_metric(anchors, sizes)
    fits = metric > 1.0 / thr
    return float(fits.any(axis=1).mean()), float(fits.sum(axis=1).mean())


def _as_wh_array(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) = (width, height), got {array.shape}")
    return array


def _kmeans(points: np.ndarray, num_clusters: int, rng: np.random.Generator, iterations: int = 30) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns (num_clusters, d) centres."""
    first = rng.integers(len(points))
    centres = [points[first]]
    nearest = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, num_clusters):
        total = nearest.sum()
        # All points already coincide with a centre (fewer distinct sizes than anchors): duplicate one.
        index = rng.choice(len(points), p=nearest / total) if total > 0 else rng.integers(len(points))
        centres.append(points[index])
        nearest = np.minimum(nearest, ((points - points[index]) ** 2).sum(axis=1))
    centres = np.stack(centres)

    for _ in range(iterations):
        distance = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        label = distance.argmin(axis=1)
        updated = centres.copy()
        for cluster in range(num_clusters):
            members = points[label == cluster]
            if len(members):
                updated[cluster] = members.mean(axis=0)
            else:
                # An empty cluster takes the point worst served by the others, so k centres stay in use.
                updated[cluster] = points[distance.min(axis=1).argmax()]
        if np.allclose(updated, centres):
            break
        centres = updated
    return centres


def kmean_anchors(
    wh: np.ndarray | torch.Tensor,
    num_anchors: int = 9,
    image_size: int = 640,
    thr: float = 4.0,
    generations: int = 1000,
    seed: int = 0,
    verbose: bool = False,
    max_boxes: int = 30_000,
) -> np.ndarray:
    """Fit ``num_anchors`` pixel anchors to label box sizes ``wh`` (n, 2); returns them sorted by area.

    K-means runs on the sizes divided by their per-axis standard deviation (so width and height weigh the
    same), then ``generations`` rounds of mutation (each anchor coordinate mutated with probability 0.9 by a
    factor 1 + N(0, 0.1) times a random strength, clipped to 0.3-3) keep a candidate only when it raises the
    fitness. Boxes under 2 px are ignored; above ``max_boxes`` a seeded random subset is used for speed.
    ``image_size`` is only used in the log message.
    """
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be at least 1, got {num_anchors}")
    if thr <= 1.0:
        raise ValueError(f"thr must be greater than 1, got {thr}")
    sizes = _as_wh_array(wh, "wh")
    rng = np.random.default_rng(seed)

    tiny = int((sizes < 3.0).any(axis=1).sum())
    if tiny:
        logger.warning("%d of %d label boxes are smaller than 3 pixels; these are hard to detect", tiny, len(sizes))
    sizes = sizes[(sizes >= MIN_BOX_SIZE).all(axis=1)]
    if len(sizes) < num_anchors:
        raise UsageError(
            f"k-means needs at least {num_anchors} label boxes of {MIN_BOX_SIZE:g} px or more, got {len(sizes)}"
        )
    if len(sizes) > max_boxes:
        sizes = sizes[rng.choice(len(sizes), size=max_boxes, replace=False)]

    spread = sizes.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    anchors = _kmeans(sizes / spread, num_anchors, rng) * spread
    anchors = np.clip(anchors, MIN_BOX_SIZE, None)
    fitness_of = _FitnessOfAnchors(sizes, thr)
    fitness = fitness_of(anchors)

    mutation_probability, sigma = 0.9, 0.1
    progress = tqdm(range(generations), desc="Evolving anchors", disable=not verbose)
    for _ in progress:
        factor = np.ones_like(anchors)
        # Redraw until at least one coordinate actually changes, so no generation is wasted.
        while (factor == 1.0).all():
            mutate = rng.random(anchors.shape) < mutation_probability
            factor = (mutate * rng.random() * rng.standard_normal(anchors.shape) * sigma + 1.0).clip(0.3, 3.0)
        candidate = (anchors * factor).clip(min=MIN_BOX_SIZE)
        candidate_fitness = fitness_of(candidate)
        if candidate_fitness > fitness:
            anchors, fitness = candidate, candidate_fitness
            progress.set_postfix(fitness=f"{fitness:.4f}")

    anchors = anchors[np.argsort(anchors.prod(axis=1))]
    recall, above = anchor_fitness_metrics(anchors, sizes, thr)
    log = logger.info if verbose else logger.debug
    log(
        "k-means anchors for image size %d, thr %.2f: fitness %.4f, best possible recall %.4f, "
        "%.2f anchors above threshold per box; anchors %s",
        image_size, thr, fitness, recall, above, ", ".join(f"{w:.0f}x{h:.0f}" for w, h in anchors),
    )
    return anchors.astype(np.float32)


def _pixel_anchors(head: Any) -> torch.Tensor:
    """(nl, na, 2) anchors in pixels from the head's grid-unit anchors."""
    return head.anchors.detach().float() * head.stride.detach().float().to(head.anchors.device).view(-1, 1, 1)


def check_anchor_order(head: Any) -> bool:
    """Reverse the anchor sets across levels when their sizes run against the strides; True if reversed.

    The finest level (smallest stride) must own the smallest anchors. Compared in pixels, since the
    head stores grid units; the reversed pixel anchors are converted back with each level's own stride.
    """
    pixel = _pixel_anchors(head)
    mean_area = pixel.prod(dim=-1).mean(dim=-1)
    stride = head.stride.detach().float()
    area_change, stride_change = (mean_area[-1] - mean_area[0]).item(), (stride[-1] - stride[0]).item()
    if area_change == 0 or stride_change == 0 or (area_change > 0) == (stride_change > 0):
        return False
    logger.info("AutoAnchor: anchor order disagrees with the stride order, reversing it")
    stride_view = stride.to(head.anchors.device).view(-1, 1, 1)
    with torch.no_grad():
        head.anchors.copy_((pixel.flip(0) / stride_view).to(head.anchors.dtype))
    return True


def dataset_box_sizes(dataset: Any, image_size: int = 640, seed: int = SCALE_SEED) -> np.ndarray:
    """Label box sizes (n, 2) in pixels as the model sees them: long side resized to ``image_size``.

    Each image's sizes are also multiplied by one random factor in 0.9-1.1 (seeded), which stands in for
    scale augmentation so that anchors do not fit the exact label sizes too tightly.
    """
    labels = dataset.labels
    image_sizes = np.asarray(dataset.image_sizes, dtype=np.float64)
    if image_sizes.ndim != 2 or image_sizes.shape[1] != 2:
        raise ValueError(f"dataset.image_sizes must have shape (N, 2) = (width, height), got {image_sizes.shape}")
    if len(labels) != len(image_sizes):
        raise ValueError(
            f"dataset.labels has {len(labels)} entries but dataset.image_sizes has {len(image_sizes)}"
        )
    if (image_sizes <= 0).any():
        bad = int(np.nonzero((image_sizes <= 0).any(axis=1))[0][0])
        raise ValueError(f"dataset.image_sizes[{bad}] = {image_sizes[bad].tolist()} is not a positive size")
    shapes = image_size * image_sizes / image_sizes.max(axis=1, keepdims=True)
    scale = np.random.default_rng(seed).uniform(0.9, 1.1, size=(len(shapes), 1))
    pieces = []
    for index, (shape, image_labels) in enumerate(zip(shapes * scale, labels)):
        image_labels = np.asarray(image_labels, dtype=np.float64)
        if image_labels.size == 0:
            continue
        if image_labels.ndim != 2 or image_labels.shape[1] != 5:
            raise ValueError(
                f"dataset.labels[{index}] must have shape (n, 5) = [class, cx, cy, w, h], got {image_labels.shape}"
            )
        pieces.append(image_labels[:, 3:5] * shape)
    return np.concatenate(pieces) if pieces else np.zeros((0, 2))


def check_anchors(dataset: Any, head: Any, thr: float = 4.0, image_size: int = 640) -> bool:
    """Measure the head's anchors on the dataset's boxes and re-fit them when the recall is below 0.98.

    New anchors (k-means + evolution) replace ``head.anchors`` in place, in grid units, only when their best
    possible recall is higher than the current one. Returns True when the anchors changed.
    """
    sizes = dataset_box_sizes(dataset, image_size)
    if len(sizes) == 0:
        logger.warning("AutoAnchor: the dataset has no label boxes; keeping the current anchors")
        return False
    current = _pixel_anchors(head).view(-1, 2).cpu().numpy()
    recall, above = anchor_fitness_metrics(current, sizes, thr)
    summary = f"{above:.2f} anchors/target, best possible recall {recall:.4f}"
    if recall >= BPR_THRESHOLD:
        logger.info("AutoAnchor: %s; current anchors are a good fit", summary)
        return False

    num_anchors = head.num_levels * head.num_anchors
    logger.info("AutoAnchor: %s is below %.2f; fitting new anchors", summary, BPR_THRESHOLD)
    usable = int((sizes >= MIN_BOX_SIZE).all(axis=1).sum())
    if usable < num_anchors:
        logger.warning(
            "AutoAnchor: only %d label boxes of %g px or more, need %d to fit anchors; keeping the current ones",
            usable, MIN_BOX_SIZE, num_anchors,
        )
        return False
    fitted = kmean_anchors(sizes, num_anchors, image_size, thr, verbose=False)
    new_recall, _ = anchor_fitness_metrics(fitted, sizes, thr)
    if new_recall <= recall:
        logger.info(
            "AutoAnchor: fitted anchors reach best possible recall %.4f, not better than %.4f; "
            "keeping the current ones",
            new_recall, recall,
        )
        return False

    stride = head.stride.detach().float().to(head.anchors.device).view(-1, 1, 1)
    fitted_grid = torch.from_numpy(fitted).to(head.anchors.device).view_as(head.anchors) / stride
    with torch.no_grad():
        head.anchors.copy_(fitted_grid.to(head.anchors.dtype))
    check_anchor_order(head)
    logger.info("AutoAnchor: new anchors installed, best possible recall %.4f -> %.4f", recall, new_recall)
    return True
