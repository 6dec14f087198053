"""Detection metrics: prediction-to-label matching, per-class AP, the mAP accumulator and a confusion matrix.

One implementation serves the trainer's per-epoch validation and ``val.py``.

Conventions: detections are (n, 6) = [x1, y1, x2, y2, conf, cls]; labels are (m, 5) = [cls, x1, y1, x2, y2],
both in the same pixel space. AP is the COCO 101-point interpolation of the monotone precision envelope
over recall, averaged over IoU thresholds 0.50:0.05:0.95; only classes present in the ground truth enter
the means.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

logger = logging.getLogger(__name__)

__all__ = [
    "IOU_THRESHOLDS",
    "MATCH_RULES",
    "APResult",
    "ConfusionMatrix",
    "DetectionMetrics",
    "ap_per_class",
    "box_iou",
    "compute_ap",
    "fitness",
    "match_predictions",
]

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
CONFIDENCE_POINTS = np.linspace(0.0, 1.0, 1000)
MATCH_RULES = ("iou", "score")


def _as_tensor(name: str, value, columns: int) -> torch.Tensor:
    """A float tensor of shape (k, columns); a clear error for anything else."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.numel() == 0:
        return tensor.reshape(0, columns)
    if tensor.ndim != 2 or tensor.shape[1] != columns:
        raise ValueError(f"{name}: expected shape (k, {columns}), got {tuple(tensor.shape)}")
    return tensor


def _unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """Reduce (label, detection) index pairs, already sorted best-first, to a one-to-one matching.

    Each detection keeps its first (best) pair, then each label keeps its first remaining pair. The
    best-first order is preserved between the two steps, so a label goes to its highest-IoU detection.
    """
    if len(pairs) <= 1:
        return pairs
    _, first = np.unique(pairs[:, 1], return_index=True)
    pairs = pairs[np.sort(first)]
    _, first = np.unique(pairs[:, 0], return_index=True)
    return pairs[np.sort(first)]


def _pairs_by_iou(iou: np.ndarray, allowed: np.ndarray, threshold: float) -> np.ndarray:
    """One-to-one (label, detection) pairs with IoU >= threshold where ``allowed``, by descending IoU."""
    label_index, detection_index = np.nonzero((iou >= threshold) & allowed)
    order = np.argsort(-iou[label_index, detection_index], kind="stable")
    return _unique_pairs(np.stack((label_index[order], detection_index[order]), axis=1))


def _matches_by_score(iou: np.ndarray, allowed: np.ndarray, thresholds: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """COCOeval's rule: detections in descending confidence each take the best-IoU label still free.

    Returns (n, T) bool. All thresholds are handled together; only detections with some allowed
    label at the lowest threshold can match, so the loop skips the rest.
    """
    num_labels, num_detections = iou.shape
    correct = np.zeros((num_detections, len(thresholds)), dtype=bool)
    taken = np.zeros((len(thresholds), num_labels), dtype=bool)
    eligible = allowed & (iou >= thresholds.min())
    for detection in np.argsort(-conf, kind="mergesort"):
        if not eligible[:, detection].any():
            continue
        column = np.where(allowed[:, detection], iou[:, detection], -1.0)
        candidates = (column[None, :] >= thresholds[:, None]) & ~taken
        masked = np.where(candidates, column[None, :], -1.0)
        best = masked.argmax(axis=1)
        matched = candidates[np.arange(len(thresholds)), best]
        correct[detection, matched] = True
        taken[np.nonzero(matched)[0], best[matched]] = True
    return correct


def match_predictions(
    detections: torch.Tensor,
    labels: torch.Tensor,
    iou_thresholds: torch.Tensor = IOU_THRESHOLDS,
    match_by: str = "score",
) -> torch.Tensor:
    """Mark each detection as a true positive at each IoU threshold.

    ``match_by="score"`` (COCOeval's rule, the default): detections in descending confidence each take the
    same-class label with the highest IoU >= t not yet taken. ``match_by="iou"`` (YOLOv5's rule): for every
    threshold t, the candidate pairs are (label, detection) of the same class with IoU >= t, taken in
    descending IoU; each detection and each label is used at most once. The two differ only when several
    detections compete for one label: by IoU the best-placed box wins even if it has the lower confidence,
    which ranks a true positive below a false positive and lowers AP. At conf 0.001 a trained model has many
    such competitors: on a yolov5n trained 60 epochs on the shapes data, the IoU rule gave mAP50-95 0.0672
    where COCOeval (pycocotools) and the score rule both gave 0.0785.
    Returns a bool tensor (n, len(iou_thresholds)) on the CPU.
    """
    if match_by not in MATCH_RULES:
        raise ValueError(f"match_predictions: match_by={match_by!r}, expected one of {MATCH_RULES}")
    detections = _as_tensor("match_predictions detections", detections, 6).cpu()
    labels = _as_tensor("match_predictions labels", labels, 5).cpu()
    thresholds = torch.as_tensor(iou_thresholds, dtype=torch.float32).flatten().numpy()
    correct = np.zeros((len(detections), len(thresholds)), dtype=bool)
    if len(detections) == 0 or len(labels) == 0:
        return torch.from_numpy(correct)

    iou = box_iou(labels[:, 1:], detections[:, :4]).numpy()
    same_class = (labels[:, 0:1] == detections[:, 5]).numpy()
    if match_by == "score":
        return torch.from_numpy(_matches_by_score(iou, same_class, thresholds, detections[:, 4].numpy()))
    for column, threshold in enumerate(thresholds):
        pairs = _pairs_by_iou(iou, same_class, threshold)
        correct[pairs[:, 1], column] = True
    return torch.from_numpy(correct)


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray]:
    """COCO 101-point AP of one ranked list; returns (ap, interpolated precision at the 101 recall points).

    ``recall`` and ``precision`` are the cumulative values after each detection in descending-confidence
    order. Precision is first replaced by its envelope (the maximum precision at any equal or higher
    recall); the interpolated precision at recall r is the envelope at the first rank reaching recall r,
    or 0 when r is never reached.
    """
    if len(recall) == 0:
        return 0.0, np.zeros_like(RECALL_POINTS)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    rank = np.searchsorted(recall, RECALL_POINTS, side="left")
    reached = rank < len(recall)
    interpolated = np.zeros_like(RECALL_POINTS)
    interpolated[reached] = envelope[rank[reached]]
    return float(interpolated.mean()), interpolated


def ranked_recall_precision(tp: np.ndarray, num_targets: float, eps: float = 1e-16) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision after each of one class's detections, ranked by descending confidence.

    ``tp`` is (n, T) bool; returns two (n, T) arrays. ``ap_per_class`` and the bootstrap (engine/evaluate/stats.py)
    both use
    this one function, so a resampled mAP is computed with exactly the same arithmetic as the reported one.
    """
    true_positives = np.cumsum(tp, axis=0)
    false_positives = np.cumsum(~tp, axis=0)
    return true_positives / (num_targets + eps), true_positives / (true_positives + false_positives)


def _box_filter(values: np.ndarray, fraction: float) -> np.ndarray:
    """Moving average of a 1-D curve over about ``fraction`` of its length, edges padded with the end values."""
    width = round(len(values) * fraction * 2) // 2 + 1  # odd, so the window is centred
    if width <= 1:
        return values
    padded = np.pad(values, width // 2, mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")


@dataclass
class APResult:
    """Per-class output of :func:`ap_per_class`; row k of every per-class array is ``classes[k]``.

    ``precision``/``recall``/``f1`` are taken at ``best_confidence``, the confidence that maximises the
    mean F1 over classes. ``ap`` is (k, num_iou_thresholds). Curves for plotting: ``pr_curve`` (k, 101) is
    the interpolated precision at IoU 0.5 over ``RECALL_POINTS``; ``precision_curve``, ``recall_curve``
    and ``f1_curve`` (k, 1000) are the values at IoU 0.5 over ``CONFIDENCE_POINTS`` (unsmoothed).
    """

    classes: np.ndarray
    num_targets: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    best_confidence: float
    pr_curve: np.ndarray
    precision_curve: np.ndarray
    recall_curve: np.ndarray
    f1_curve: np.ndarray

    @property
    def ap50(self) -> np.ndarray:
        """AP at the first IoU threshold (0.5) per class."""
        return self.ap[:, 0] if self.ap.size else np.zeros(len(self.classes))

    @property
    def ap50_95(self) -> np.ndarray:
        """AP averaged over all IoU thresholds per class."""
        return self.ap.mean(axis=1) if self.ap.size else np.zeros(len(self.classes))


def ap_per_class(
    tp: np.ndarray,
    conf: np.ndarray,
    pred_cls: np.ndarray,
    target_cls: np.ndarray,
    f1_smoothing: float = 0.1,
    eps: float = 1e-16,
) -> APResult:
    """Precision, recall, F1 and AP per ground-truth class from matched detections.

    ``tp`` is (n, T) bool (detection i is a true positive at IoU threshold j), ``conf`` and ``pred_cls``
    are (n,), ``target_cls`` lists the class of every ground-truth box. Only classes that occur in
    ``target_cls`` are evaluated; detections of other classes cannot change any reported number.
    Detections are ranked by descending confidence (stable, as COCOeval does).

    P, R and F1 are reported at one shared confidence: the argmax of the class-mean F1 curve, after a
    moving average over ``f1_smoothing`` of the [0, 1] confidence range (0 disables it), as YOLOv5 does.
    The curves are exact step functions: at threshold c they are the precision and recall of the detections
    with conf >= c (YOLOv5 interpolates linearly between detections instead, so its P and R can differ
    slightly; AP is unaffected). With no detection above c, precision is taken as 1 and recall as 0.
    """
    tp = np.asarray(tp, dtype=bool)
    if tp.ndim == 1:
        tp = tp[:, None]
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    pred_cls = np.asarray(pred_cls).reshape(-1)
    target_cls = np.asarray(target_cls).reshape(-1)
    if not len(tp) == len(conf) == len(pred_cls):
        raise ValueError(
            f"ap_per_class: tp ({len(tp)}), conf ({len(conf)}) and pred_cls ({len(pred_cls)}) must have equal length"
        )

    order = np.argsort(-conf, kind="mergesort")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, num_targets = np.unique(target_cls, return_counts=True)
    num_classes, num_thresholds = len(classes), tp.shape[1]

    ap = np.zeros((num_classes, num_thresholds))
    pr_curve = np.zeros((num_classes, len(RECALL_POINTS)))
    precision_curve = np.zeros((num_classes, len(CONFIDENCE_POINTS)))
    recall_curve = np.zeros((num_classes, len(CONFIDENCE_POINTS)))
    for k, (class_id, targets) in enumerate(zip(classes, num_targets)):
        of_class = pred_cls == class_id
        if not of_class.any():
            continue
        recall, precision = ranked_recall_precision(tp[of_class], targets, eps)
        for j in range(num_thresholds):
            ap[k, j], interpolated = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                pr_curve[k] = interpolated
        # how many of this class's detections survive each confidence threshold (conf >= threshold)
        kept = np.searchsorted(-conf[of_class], -CONFIDENCE_POINTS, side="right")
        recall_curve[k] = np.where(kept > 0, recall[kept - 1, 0], 0.0)
        precision_curve[k] = np.where(kept > 0, precision[kept - 1, 0], 1.0)

    f1_curve = 2 * precision_curve * recall_curve / (precision_curve + recall_curve + eps)
    best = int(_box_filter(f1_curve.mean(axis=0), f1_smoothing).argmax()) if num_classes else 0
    precision_at, recall_at = precision_curve[:, best], recall_curve[:, best]
    return APResult(
        classes=classes.astype(int),
        num_targets=num_targets,
        precision=precision_at,
        recall=recall_at,
        f1=2 * precision_at * recall_at / (precision_at + recall_at + eps),
        ap=ap,
        best_confidence=float(CONFIDENCE_POINTS[best]),
        pr_curve=pr_curve,
        precision_curve=precision_curve,
        recall_curve=recall_curve,
        f1_curve=f1_curve,
    )


def fitness(metrics) -> float | np.ndarray:
    """Model selection score 0.1 * mAP50 + 0.9 * mAP50-95.

    Accepts a mapping with ``map50`` and ``map`` keys, or an array whose last axis is
    (precision, recall, mAP50, mAP50-95) (a row, or a table of rows).
    """
    if isinstance(metrics, Mapping):
        missing = {"map50", "map"} - metrics.keys()
        if missing:
            raise KeyError(f"fitness: metrics mapping lacks {sorted(missing)}")
        return 0.1 * float(metrics["map50"]) + 0.9 * float(metrics["map"])
    values = np.asarray(metrics, dtype=np.float64)
    if values.ndim == 0 or values.shape[-1] != 4:
        raise ValueError(
            f"fitness: expected a mapping or an array ending in (P, R, mAP50, mAP50-95), got shape {values.shape}"
        )
    result = 0.1 * values[..., 2] + 0.9 * values[..., 3]
    return float(result) if result.ndim == 0 else result


def _names_list(num_classes: int, names) -> list[str]:
    if names is None:
        return [str(i) for i in range(num_classes)]
    if isinstance(names, Mapping):
        names = [names[i] if i in names else str(i) for i in range(num_classes)]
    names = [str(name) for name in names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for num_classes={num_classes}")
    return names


class DetectionMetrics:
    """Accumulates matched detections over a validation set and reports P, R, mAP50 and mAP50-95.

    Call :meth:`update` once per batch with per-image detections (n, 6) [x1, y1, x2, y2, conf, cls] and
    labels (m, 5) [cls, x1, y1, x2, y2] in one pixel space, then :meth:`compute`. ``match_by`` picks the
    matching rule of :func:`match_predictions`: "score" (COCOeval, default: the reported mAP then agrees with
    pycocotools on the same predictions) or "iou" (YOLOv5's rule).
    """

    def __init__(
        self, num_classes: int, names=None, iou_thresholds: torch.Tensor = IOU_THRESHOLDS, match_by: str = "score"
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"DetectionMetrics: num_classes must be >= 1, got {num_classes}")
        if match_by not in MATCH_RULES:
            raise ValueError(f"DetectionMetrics: match_by={match_by!r}, expected one of {MATCH_RULES}")
        self.match_by = match_by
        self.num_classes = num_classes
        self.names = _names_list(num_classes, names)
        self.iou_thresholds = torch.as_tensor(iou_thresholds, dtype=torch.float32).flatten()
        self.result: APResult | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._tp: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._pred_cls: list[np.ndarray] = []
        self._target_cls: list[np.ndarray] = []
        self.images_seen = 0
        self.images_per_class = np.zeros(self.num_classes, dtype=int)
        self.result = None
        self._summary: dict | None = None

    def _check_classes(self, what: str, image_index: int, class_ids: torch.Tensor) -> None:
        if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= self.num_classes
                               or not torch.equal(class_ids, class_ids.round())):
            bad = class_ids[(class_ids < 0) | (class_ids >= self.num_classes) | (class_ids != class_ids.round())]
            raise ValueError(
                f"DetectionMetrics.update: {what} of image {image_index} has class ids {bad.tolist()} "
                f"outside 0..{self.num_classes - 1}"
            )

    def update(self, detections_per_image: Sequence[torch.Tensor], labels_per_image: Sequence[torch.Tensor]) -> None:
        """Match one batch of images and store the outcome."""
        if len(detections_per_image) != len(labels_per_image):
            raise ValueError(
                f"DetectionMetrics.update: {len(detections_per_image)} detection tensors for "
                f"{len(labels_per_image)} label tensors"
            )
        for index, (detections, labels) in enumerate(zip(detections_per_image, labels_per_image)):
            detections = _as_tensor(f"detections of image {index}", detections, 6).cpu()
            labels = _as_tensor(f"labels of image {index}", labels, 5).cpu()
            self._check_classes("labels", index, labels[:, 0])
            self._check_classes("detections", index, detections[:, 5])
            self._tp.append(match_predictions(detections, labels, self.iou_thresholds, self.match_by).numpy())
            self._conf.append(detections[:, 4].numpy())
            self._pred_cls.append(detections[:, 5].numpy().astype(int))
            target_cls = labels[:, 0].numpy().astype(int)
            self._target_cls.append(target_cls)
            self.images_per_class[np.unique(target_cls)] += 1
            self.images_seen += 1
        self._summary = None
        self.result = None

    def image_stats(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per image seen, in order: (tp (n, T) bool, conf (n,), predicted class (n,), label classes (m,)).

        What ``compute`` aggregates; a bootstrap over images resamples these instead of running the model again.
        """
        return list(zip(self._tp, self._conf, self._pred_cls, self._target_cls))

    def compute(self, f1_smoothing: float = 0.1) -> dict:
        """Aggregate everything seen so far.

        Returns ``precision``, ``recall``, ``map50``, ``map`` (mAP50-95) and ``fitness`` as floats
        (means over the classes present in the ground truth), ``images``, ``instances`` and ``per_class``:
        a list of dicts (name, images, instances, P, R, mAP50, mAP50-95) for every class in the ground truth.
        The full :class:`APResult` (curves included) is kept in ``self.result``.
        """
        num_thresholds = len(self.iou_thresholds)
        tp = np.concatenate(self._tp) if self._tp else np.zeros((0, num_thresholds), dtype=bool)
        conf = np.concatenate(self._conf) if self._conf else np.zeros(0)
        pred_cls = np.concatenate(self._pred_cls) if self._pred_cls else np.zeros(0, dtype=int)
        target_cls = np.concatenate(self._target_cls) if self._target_cls else np.zeros(0, dtype=int)
        if len(target_cls) == 0:
            logger.warning("DetectionMetrics: no ground-truth labels seen, every metric is 0")

        result = ap_per_class(tp, conf, pred_cls, target_cls, f1_smoothing=f1_smoothing)
        self.result = result
        present = len(result.classes) > 0
        summary = {
            "precision": float(result.precision.mean()) if present else 0.0,
            "recall": float(result.recall.mean()) if present else 0.0,
            "map50": float(result.ap50.mean()) if present else 0.0,
            "map": float(result.ap50_95.mean()) if present else 0.0,
            "images": self.images_seen,
            "instances": int(len(target_cls)),
        }
        summary["fitness"] = fitness(summary)
        summary["per_class"] = [
            {
                "name": self.names[class_id],
                "images": int(self.images_per_class[class_id]),
                "instances": int(result.num_targets[k]),
                "P": float(result.precision[k]),
                "R": float(result.recall[k]),
                "mAP50": float(result.ap50[k]),
                "mAP50-95": float(result.ap50_95[k]),
            }
            for k, class_id in enumerate(result.classes)
        ]
        self._summary = summary
        return summary

    def summary_table(self, verbose: bool = False) -> str:
        """A YOLOv5-style table: a header, the ``all`` row, and one row per class when ``verbose``.

        Uses the last :meth:`compute` when nothing was added since, otherwise computes.
        """
        metrics = self._summary if self._summary is not None else self.compute()
        header = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}{'mAP50-95':>11}"

        def row(name, images, instances, precision, recall, map50, map50_95) -> str:
            return (f"{name:>22}{images:>11d}{instances:>11d}{precision:>11.3g}{recall:>11.3g}"
                    f"{map50:>11.3g}{map50_95:>11.3g}")

        lines = [header, row("all", metrics["images"], metrics["instances"], metrics["precision"],
                             metrics["recall"], metrics["map50"], metrics["map"])]
        if verbose:
            lines += [row(c["name"], c["images"], c["instances"], c["P"], c["R"], c["mAP50"], c["mAP50-95"])
                      for c in metrics["per_class"]]
        return "\n".join(lines)

    def curves(self) -> APResult:
        """The curves behind the last :meth:`compute` (computed now if there was none), for engine/evaluate/plots."""
        if self.result is None:
            self.compute()
        return self.result


class ConfusionMatrix:
    """Detection confusion matrix with a background class, indexed ``matrix[predicted, true]``.

    Row/column ``num_classes`` is background: ``matrix[num_classes, c]`` counts missed boxes of class c,
    ``matrix[p, num_classes]`` counts detections of class p that matched no box. Detections below
    ``conf`` are ignored; a detection and a box are paired (regardless of class, one-to-one, by
    descending IoU) when their IoU is at least ``iou_thres``.
    """

    def __init__(self, num_classes: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.conf = conf
        self.iou_thres = iou_thres
        self.matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

    def update(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) [x1, y1, x2, y2, conf, cls] or None, labels (m, 5) [cls, x1, y1, x2, y2]."""
        background = self.num_classes
        labels = _as_tensor("ConfusionMatrix labels", labels, 5).cpu()
        detections = _as_tensor("ConfusionMatrix detections", [] if detections is None else detections, 6).cpu()
        detections = detections[detections[:, 4] > self.conf]
        true_classes = labels[:, 0].long().numpy()
        predicted_classes = detections[:, 5].long().numpy()
        for name, ids in (("labels", true_classes), ("detections", predicted_classes)):
            if len(ids) and (ids.min() < 0 or ids.max() >= self.num_classes):
                raise ValueError(f"ConfusionMatrix.update: {name} hold class ids outside 0..{self.num_classes - 1}")

        if len(labels) and len(detections):
            iou = box_iou(labels[:, 1:], detections[:, :4]).numpy()
            pairs = _pairs_by_iou(iou, np.ones_like(iou, dtype=bool), self.iou_thres)
        else:
            pairs = np.zeros((0, 2), dtype=int)

        np.add.at(self.matrix, (predicted_classes[pairs[:, 1]], true_classes[pairs[:, 0]]), 1)
        missed = np.ones(len(labels), dtype=bool)
        missed[pairs[:, 0]] = False
        np.add.at(self.matrix, (background, true_classes[missed]), 1)
        unmatched = np.ones(len(detections), dtype=bool)
        unmatched[pairs[:, 1]] = False
        np.add.at(self.matrix, (predicted_classes[unmatched], background), 1)

    def class_names(self, names=None) -> list[str]:
        """The row/column labels for ``names`` (a list, a {index: name} mapping, or None for the indices)."""
        return _names_list(self.num_classes, names)
