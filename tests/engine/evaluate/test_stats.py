"""Intervals of a comparison (engine/evaluate/stats.py): paired t between seeds, the bootstrap over validation
images."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.evaluate.metrics import ap_per_class
from engine.evaluate.stats import Interval, bootstrap_maps, bootstrap_ratio_of_medians, t_interval


def random_stats(rng: np.random.Generator, images: int = 40, classes: int = 3, quality: float = 0.5):
    """Per-image (tp, conf, pred class, label classes) with distinct confidences; higher quality = more hits."""
    stats = []
    for _ in range(images):
        labels = rng.integers(0, classes, rng.integers(0, 6))
        count = int(rng.integers(0, 8))
        conf = rng.random(count)
        hit = rng.random(count) < quality * conf  # confident detections are more often right
        tp = np.stack([hit & (rng.random(count) < 1 - 0.08 * j) for j in range(10)], 1)
        stats.append((tp, conf, rng.integers(0, classes, count), labels))
    return stats


def slow_reference(stats, draw):
    """Resample the images, concatenate, and score with ap_per_class: what the bootstrap must reproduce."""
    chosen = [stats[i] for i in draw]
    result = ap_per_class(np.concatenate([s[0] for s in chosen]).reshape(-1, 10), np.concatenate([s[1] for s in chosen]),
                          np.concatenate([s[2] for s in chosen]), np.concatenate([s[3] for s in chosen]))
    if not len(result.classes):
        return 0.0, 0.0
    return float(result.ap50.mean()), float(result.ap50_95.mean())


def test_bootstrap_equals_resampling_and_recomputing_with_ap_per_class():
    rng = np.random.default_rng(0)
    first, second = random_stats(rng), random_stats(rng, quality=0.8)
    values = bootstrap_maps([first, second], num_classes=3, resamples=25, seed=7)
    draws = np.random.default_rng(7).integers(0, 40, (25, 40))
    for b, draw in enumerate(draws):
        assert tuple(values[b, 0]) == slow_reference(first, draw)
        assert tuple(values[b, 1]) == slow_reference(second, draw)


def test_every_image_once_gives_the_reported_map():
    from engine.evaluate.stats import RankedDetections

    stats = random_stats(np.random.default_rng(3))
    assert RankedDetections(stats, 3).map(np.ones(40, int)) == slow_reference(stats, np.arange(40))


def test_t_interval_matches_hand_computed_values():
    # three differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t(0.975, 2) = 4.302653
    interval = t_interval([0.01, 0.02, 0.03])
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert interval.estimate == pytest.approx(0.02) and interval.low == pytest.approx(0.02 - half)
    assert interval.high == pytest.approx(0.02 + half) and interval.verdict() == "no significant difference"
    assert t_interval([0.1, 0.11, 0.12]).verdict() == "higher"
    assert t_interval([-0.1, -0.11, -0.12]).verdict() == "lower"
    same = t_interval([0.0, 0.0])
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and same.verdict() == "no significant difference"
    single = t_interval([0.05])
    assert not single.measured and single.verdict() == "no significant difference"


def test_bootstrap_of_a_better_model_excludes_zero_and_of_a_model_against_itself_is_zero():
    rng = np.random.default_rng(1)
    weak, strong = random_stats(rng, images=60, quality=0.2), random_stats(rng, images=60, quality=0.9)
    values = bootstrap_maps([weak, strong, weak], num_classes=3, resamples=200, seed=0)
    difference = values[:, 1, 1] - values[:, 0, 1]
    assert np.percentile(difference, 2.5) > 0
    assert (values[:, 2] == values[:, 0]).all()


def test_ratio_of_medians_interval():
    rng = np.random.default_rng(2)
    base = 10 + rng.random(60)
    interval = bootstrap_ratio_of_medians(base, base * 0.9, resamples=300)
    assert interval.estimate == pytest.approx(0.9) and interval.low == pytest.approx(0.9)
    assert interval.high == pytest.approx(0.9)
    noisy = bootstrap_ratio_of_medians(base, base * 0.9 + rng.random(60), resamples=300)
    assert noisy.low < noisy.estimate < noisy.high
    assert isinstance(noisy, Interval) and noisy.samples == 300
