"""Intervals of a comparison (engine/evaluate/stats.py): paired t between seeds, the bootstrap over validation
images."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.evaluate.metrics import ap_per_class
from engine.evaluate.stats import (Interval, bootstrap_maps, bootstrap_ratio_of_medians, latency_ratio, t_interval,
                                   typical_latency)
from helpers import random_stats


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


def builds_of(medians: list[float], rng: np.random.Generator, rounds: int = 200) -> list[np.ndarray]:
    """Timing rounds of builds that sit at ``medians`` with 0.5 % round-to-round noise."""
    return [median * (1 + 0.005 * rng.standard_normal(rounds)) for median in medians]


def test_builds_of_one_model_that_run_apart_give_no_verdict():
    """The same model built three times per side, builds 4 % apart: the rounds alone are tight enough to call
    either side faster, the interval over builds is not."""
    rng = np.random.default_rng(3)
    base, other = builds_of([100, 104, 101], rng), builds_of([102, 99, 103], rng)
    over_rounds = bootstrap_ratio_of_medians(base[0], other[1], resamples=300)
    assert over_rounds.verdict(reference=1.0) == "lower"  # what one build per model would have claimed
    ratio = latency_ratio(base, other)
    assert ratio.samples == 3 and ratio.low < 1 < ratio.high
    assert ratio.verdict(reference=1.0) == "no significant difference"
    geometric = np.exp(np.mean(np.log([102, 99, 103])) - np.mean(np.log([100, 104, 101])))
    assert ratio.estimate == pytest.approx(geometric, rel=2e-3)
    assert typical_latency(base) == pytest.approx(np.exp(np.mean(np.log([100, 104, 101]))), rel=2e-3)


def test_a_real_difference_outside_the_build_spread_is_called():
    rng = np.random.default_rng(4)
    ratio = latency_ratio(builds_of([100, 101, 100.5], rng), builds_of([80, 80.5, 81], rng))
    assert ratio.high < 1 and ratio.verdict(reference=1.0) == "lower"
    assert ratio.low < ratio.estimate < ratio.high


def test_identical_builds_give_an_exact_ratio_and_one_build_falls_back_to_the_rounds():
    base = [np.full(20, 10.0)] * 2
    exact = latency_ratio(base, [np.full(20, 9.0)] * 2)
    assert exact.estimate == exact.low == exact.high == pytest.approx(0.9)
    rng = np.random.default_rng(5)
    one = latency_ratio(builds_of([100], rng), builds_of([90], rng))
    assert one.samples == 1 and one.low < one.estimate < one.high < 1
    with pytest.raises(ValueError):
        latency_ratio([], builds_of([90], rng))
