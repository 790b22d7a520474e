"""The paired difference test, against cases whose answer is known by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fusynth.core.stats import paired_difference_test


def test_three_subjects_exact_sign_flip_distribution():
    # Differences 1, 2, 3 (one image each): the 8 sign vectors give sums
    # ±1 ±2 ±3 = 6, 4, 2, 0, 0, -2, -4, -6; |sum| >= 6 twice, so p = 2/8.
    r = paired_difference_test([0, 0, 0], [1, 2, 3], ["a", "b", "c"])
    assert r["difference"] == pytest.approx(2.0)
    assert r["exact"] and r["p_value"] == pytest.approx(0.25)
    assert (r["n_images"], r["n_subjects"]) == (3, 3)
    # Every resample mean lies between the smallest and largest difference.
    assert 1.0 <= r["ci_low"] <= r["difference"] <= r["ci_high"] <= 3.0
    assert r["crosses_zero"] is False


def test_subjects_are_the_unit_and_image_weights_are_kept():
    # Subject s has three images with difference 1 (D = 3), subject t one with -1:
    # observed (3 - 1) / 4 = 0.5; flips give 0.5, 1, -1, -0.5: all |T| >= 0.5, p = 1.
    a = [0.5, 0.5, 0.5, 0.9]
    b = [1.5, 1.5, 1.5, -0.1]
    r = paired_difference_test(a, b, ["s", "s", "s", "t"], n_boot=4000)
    assert r["difference"] == pytest.approx(0.5)
    assert r["p_value"] == pytest.approx(1.0)
    # Bootstrap of two subjects: draws {s,s} -> 1, {t,t} -> -1 (1/4 each), {s,t} -> 0.5:
    # the 95% interval runs from -1 to 1 and crosses zero.
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(-1.0), pytest.approx(1.0))
    assert r["crosses_zero"] is True


def test_exact_p_matches_brute_force_enumeration():
    rng = np.random.default_rng(3)
    d = rng.normal(0.2, 1.0, size=7)
    subjects = [f"p{i}" for i in range(7)]
    observed = abs(d.mean())
    flips = [abs(np.dot(s, d) / 7) for s in itertools.product([-1, 1], repeat=7)]
    want = sum(f >= observed - 1e-12 for f in flips) / 128
    r = paired_difference_test(np.zeros(7), d, subjects)
    assert r["p_value"] == pytest.approx(want)


def test_many_subjects_sample_the_permutations_and_never_give_zero():
    # 40 subjects all improved by 0.1: only the two all-equal sign vectors reach it.
    r = paired_difference_test([0.5] * 40, [0.6] * 40, [str(i) for i in range(40)], n_perm=999)
    assert not r["exact"]
    assert r["p_value"] == pytest.approx(1 / 1000)
    assert r["ci_low"] == r["ci_high"] == pytest.approx(0.1)  # constant difference


def test_missing_pairs_are_dropped_and_bad_input_is_refused():
    r = paired_difference_test([0, None, 0], [1, 2, math.nan], ["a", "b", "c"])
    assert (r["n_images"], r["difference"], r["p_value"]) == (1, 1.0, 1.0)
    empty = paired_difference_test([None], [1.0], ["a"])
    assert math.isnan(empty["difference"]) and empty["crosses_zero"]
    with pytest.raises(ValueError, match="lengths differ"):
        paired_difference_test([1, 2], [1], ["a", "b"])
