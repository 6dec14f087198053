"""How sure a comparison is: intervals between training seeds (paired t) and within one run (bootstrap), and
for latency ratios between separate builds of each model (Welch t).

Two kinds of uncertainty, reported side by side because they answer different questions:

- between seeds: train each config once per seed; the per-seed paired differences (seed k of a config against
  seed k of the baseline) give a Student-t interval for the mean difference. This is the variation a user
  meets when training again, and on small data it is the larger one;
- within a run: resample the validation images with replacement (a paired bootstrap: every model is scored on
  the same resampled images) and recompute mAP from the per-image matches the evaluator already made. This is the
  uncertainty of the measurement on a finite validation set, for fixed weights.

The bootstrap recomputes AP with the same functions as the reported metric (``engine.evaluate.metrics``), so with every
image drawn once it gives exactly the reported mAP.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.evaluate.metrics import compute_ap, ranked_recall_precision

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
ImageStats = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # tp (n, T), conf (n,), pred class (n,), labels (m,)


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval; ``low``/``high`` are NaN when they could not be measured."""

    estimate: float
    low: float
    high: float
    samples: int  # seeds for a t interval, resamples for a bootstrap

    @property
    def measured(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def verdict(self, reference: float = 0.0) -> str:
        """"higher" or "lower" when the interval excludes ``reference`` (0 for a difference, 1 for a ratio), else
        "no significant difference"."""
        if self.measured and self.low > reference:
            return "higher"
        if self.measured and self.high < reference:
            return "lower"
        return "no significant difference"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "samples": self.samples}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` (for example per-seed paired differences) with a Student-t interval.

    One value has no spread to measure: its interval is (NaN, NaN). Values that are all equal give a zero-width
    interval (a config compared with itself differs by exactly 0 on every seed).
    """
    from scipy.stats import t as student_t

    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(array.mean())
    if array.size < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half_width = float(student_t.ppf(0.5 + confidence / 2, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))
    return Interval(mean, mean - half_width, mean + half_width, int(array.size))


def percentile_interval(estimate: float, resampled: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The bootstrap percentile interval of ``resampled`` around the full-sample ``estimate``."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), int(len(resampled)))


class RankedDetections:
    """One model's per-image matches, ranked once by descending confidence, ready to be scored on any multiset of
    the validation images (``counts[i]`` copies of image i)."""

    def __init__(self, stats: Sequence[ImageStats], num_classes: int):
        num_thresholds = next((tp.shape[1] for tp, *_ in stats if tp.ndim == 2), 10)
        tp = [np.asarray(s[0], bool).reshape(-1, num_thresholds) for s in stats]
        image = np.concatenate([np.full(len(t), i) for i, t in enumerate(tp)]) if stats else np.zeros(0, int)
        conf = np.concatenate([np.asarray(s[1], np.float64).reshape(-1) for s in stats]) if stats else np.zeros(0)
        pred_cls = np.concatenate([np.asarray(s[2]).reshape(-1) for s in stats]) if stats else np.zeros(0, int)
        order = np.argsort(-conf, kind="mergesort")  # as ap_per_class ranks them
        self.tp = (np.concatenate(tp) if stats else np.zeros((0, num_thresholds), bool))[order]
        self.image, self.pred_cls = image[order], pred_cls[order].astype(int)
        self.targets = np.zeros((len(stats), num_classes), np.int64)  # label count per image and class
        for index, (*_, labels) in enumerate(stats):
            self.targets[index] = np.bincount(np.asarray(labels, int).reshape(-1), minlength=num_classes)[:num_classes]
        self.num_images, self.num_classes = len(stats), num_classes

    def map(self, counts: np.ndarray) -> tuple[float, float]:
        """(mAP50, mAP50-95) over the images taken ``counts`` times each (the classes present in their labels)."""
        repeats = counts[self.image]
        tp = np.repeat(self.tp, repeats, axis=0)  # stays ranked: copies of a detection sit side by side
        pred_cls = np.repeat(self.pred_cls, repeats)
        targets = counts @ self.targets
        present = np.nonzero(targets)[0]
        if not len(present):
            return 0.0, 0.0
        ap = np.zeros((len(present), self.tp.shape[1]))
        for k, class_id in enumerate(present):
            of_class = pred_cls == class_id
            if of_class.any():
                recall, precision = ranked_recall_precision(tp[of_class], targets[class_id])
                ap[k] = [compute_ap(recall[:, j], precision[:, j])[0] for j in range(ap.shape[1])]
        return float(ap[:, 0].mean()), float(ap.mean(axis=1).mean())


def bootstrap_maps(models: Sequence[Sequence[ImageStats]], num_classes: int, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> np.ndarray:
    """mAP50 and mAP50-95 of every model on ``resamples`` paired resamples of the validation images.

    ``models`` holds each model's per-image stats (``DetectionMetrics.image_stats()``) over the same images in the
    same order. Returns (resamples, models, 2). Resample b draws its images with ``numpy.random.default_rng(seed)``
    (``integers(0, N, (resamples, N))``), the same draw for every model.
    """
    ranked = [RankedDetections(stats, num_classes) for stats in models]
    sizes = {r.num_images for r in ranked}
    if len(sizes) != 1:
        raise ValueError(f"bootstrap_maps: the models were scored on different numbers of images {sorted(sizes)}")
    num_images = sizes.pop()
    draws = np.random.default_rng(seed).integers(0, num_images, (resamples, num_images))
    values = np.zeros((resamples, len(ranked), 2))
    for b, draw in enumerate(draws):
        counts = np.bincount(draw, minlength=num_images)
        for m, model in enumerate(ranked):
            values[b, m] = model.map(counts)
    return values


def bootstrap_ratio_of_medians(baseline: Sequence[float], other: Sequence[float], resamples: int = DEFAULT_RESAMPLES,
                               seed: int = 0) -> Interval:
    """median(other) / median(baseline) of paired timing rounds, with a bootstrap interval over the rounds."""
    baseline, other = np.asarray(baseline, np.float64), np.asarray(other, np.float64)
    if baseline.shape != other.shape or baseline.size == 0:
        raise ValueError("bootstrap_ratio_of_medians needs two equally long, non-empty lists of paired rounds")
    draws = np.random.default_rng(seed).integers(0, baseline.size, (resamples, baseline.size))
    ratios = np.median(other[draws], axis=1) / np.median(baseline[draws], axis=1)
    return percentile_interval(float(np.median(other) / np.median(baseline)), ratios)


def typical_latency(builds: Sequence[Sequence[float]]) -> float:
    """One model's latency from the timing rounds of its separate builds: the geometric mean of the builds' medians
    (the quantity whose ratio ``latency_ratio`` estimates)."""
    medians = [float(np.median(rounds)) for rounds in builds if len(rounds)]
    if not medians:
        raise ValueError("typical_latency needs at least one build with timing rounds")
    return float(np.exp(np.mean(np.log(medians))))


def latency_ratio(baseline: Sequence[Sequence[float]], other: Sequence[Sequence[float]],
                  confidence: float = CONFIDENCE, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval:
    """Latency of ``other`` over ``baseline`` with a confidence interval, from the timing rounds (seconds) of
    separate builds of each model: ``baseline[i]`` holds build i's rounds.

    Builds matter more than rounds. The same model built twice (a second copy of its weights, a second compiled
    OpenVINO or ONNX Runtime model) runs several per cent apart on a CPU, and stays apart over hundreds of
    interleaved rounds (probably where its memory lands; not investigated), so the rounds of one build per model
    understate the uncertainty of a ratio of a few per cent. The estimate is the ratio of the geometric means of the
    builds' medians, the interval Welch's t interval of the difference of the mean log medians, exponentiated
    (``samples``: builds per model, the smaller count). With one build of either model the between-build spread
    cannot be measured: the interval is then the bootstrap over paired rounds of ``bootstrap_ratio_of_medians``,
    narrower than the truth (``samples`` is 1 so a report can say so).
    """
    from scipy.stats import t as student_t

    base_logs = np.log([np.median(rounds) for rounds in baseline])
    other_logs = np.log([np.median(rounds) for rounds in other])
    if not base_logs.size or not other_logs.size:
        raise ValueError("latency_ratio needs at least one build of each model")
    estimate = float(np.exp(other_logs.mean() - base_logs.mean()))
    if min(base_logs.size, other_logs.size) < 2:
        rounds = bootstrap_ratio_of_medians(baseline[0], other[0], resamples, seed)
        return Interval(estimate, rounds.low, rounds.high, 1)
    base_term, other_term = base_logs.var(ddof=1) / base_logs.size, other_logs.var(ddof=1) / other_logs.size
    spread = base_term + other_term
    if spread == 0:
        return Interval(estimate, estimate, estimate, int(min(base_logs.size, other_logs.size)))
    freedom = spread ** 2 / (base_term ** 2 / (base_logs.size - 1) + other_term ** 2 / (other_logs.size - 1))
    half_width = float(student_t.ppf(0.5 + confidence / 2, freedom) * math.sqrt(spread))
    return Interval(estimate, estimate * math.exp(-half_width), estimate * math.exp(half_width),
                    int(min(base_logs.size, other_logs.size)))
