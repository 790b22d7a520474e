"""Bootstrap confidence intervals and mean/sd with missing values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusynth.core.stats import bootstrap_ci, mean_sd


def test_constant_sample_gives_a_point_interval():
    assert bootstrap_ci([0.7] * 20) == (0.7, 0.7, 0.7)


def test_single_value_and_no_value():
    assert bootstrap_ci([3.5, math.nan, None]) == (3.5, 3.5, 3.5)
    for empty in ([], [math.nan, None]):
        assert all(math.isnan(v) for v in bootstrap_ci(empty))
        assert all(math.isnan(v) for v in mean_sd(empty))


def test_interval_of_a_normal_sample_covers_its_mean_and_matches_theory():
    x = np.random.default_rng(0).normal(10.0, 2.0, size=400)
    mean, low, high = bootstrap_ci(x, n_boot=4000)
    assert mean == pytest.approx(x.mean())
    assert low < 10.0 < high
    # Half-width close to 1.96 * standard error.
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_wider_confidence_gives_a_wider_interval():
    x = np.random.default_rng(1).uniform(size=50)
    _, lo90, hi90 = bootstrap_ci(x, confidence=0.9)
    _, lo99, hi99 = bootstrap_ci(x, confidence=0.99)
    assert lo99 < lo90 < hi90 < hi99


def test_deterministic_for_a_seed():
    x = np.random.default_rng(2).exponential(size=30)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)


def test_missing_values_are_dropped():
    x = [1.0, 2.0, 3.0, 4.0]
    assert bootstrap_ci([*x, math.nan, None, math.inf], seed=1) == bootstrap_ci(x, seed=1)
    assert mean_sd([*x, math.nan, None]) == pytest.approx((2.5, np.std(x, ddof=1)))
    mean, sd = mean_sd([2.0, math.nan])
    assert mean == 2.0 and math.isnan(sd)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.0)
