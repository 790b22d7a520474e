"""Summary statistics for per-image metrics: mean and standard deviation, and a
percentile bootstrap confidence interval of the mean, and the paired difference of two
arms scored on the same images (subject bootstrap interval, sign-flip permutation p).

Missing values (None, NaN, and infinities) are dropped before anything is computed, so a
metric that is undefined for some images (e.g. a surface distance to an empty
prediction) is summarised over the images where it is defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

#: Resampled means drawn per block, to bound memory for large samples.
_BLOCK_ELEMENTS = 1_000_000


def finite_values(values: Iterable[float | None]) -> np.ndarray:
    """The finite values of ``values`` as a float64 array (None and NaN dropped)."""
    arr = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def mean_sd(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of the finite values.

    Returns:
        ``(mean, sd)``; the mean is NaN without values and the sd is NaN with fewer
        than two.
    """
    arr = finite_values(values)
    if arr.size == 0:
        return math.nan, math.nan
    sd = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return float(arr.mean()), sd


def bootstrap_ci(
    values: Iterable[float | None],
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of the mean.

    The finite values are resampled with replacement ``n_boot`` times (numpy's
    ``default_rng(seed)``, so the result is deterministic for a seed) and the interval
    is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the
    resampled means.

    Args:
        values: the sample; None and NaN are dropped.
        n_boot: number of bootstrap resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: seed of the resampling.

    Returns:
        ``(mean, low, high)``: all NaN without values, all equal to the value when
        there is one or all are equal.

    Raises:
        ValueError: ``n_boot`` < 1 or ``confidence`` outside (0, 1).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = finite_values(values)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    if arr.min() == arr.max():  # one value, or a constant: exact, without rounding
        value = float(arr[0])
        return value, value, value
    mean = float(arr.mean())
    means = _resampled_means(arr, n_boot, np.random.default_rng(seed))
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return mean, float(low), float(high)


def _resampled_means(arr: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples of ``arr`` with replacement, drawn in blocks."""
    n = arr.size
    rows = max(1, _BLOCK_ELEMENTS // n)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, rows):
        stop = min(start + rows, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = arr[idx].mean(axis=1)
    return means


#: Above this many subjects the sign-flip distribution is sampled, not enumerated.
EXACT_PERMUTATION_SUBJECTS = 16


def paired_difference_test(
    values_a: Iterable[float | None],
    values_b: Iterable[float | None],
    subjects: Iterable[str],
    n_boot: int = 2000,
    n_perm: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired difference ``mean(b) - mean(a)`` of two arms scored on the same images.

    The unit of resampling is the subject (images of one subject are not independent):

    - **interval**: percentile bootstrap; each resample draws as many subjects as there
      are, with replacement, and the *same draw* scores both arms, so the interval is
      that of the difference (not two overlapping intervals);
    - **p-value**: two-sided sign-flip permutation test of the per-subject differences
      (under "no difference" each subject's ``b - a`` is as likely negative). The
      statistic is the image-mean difference ``sum_s e_s D_s / N`` (``D_s`` the sum of a
      subject's image differences, ``e_s = ±1``), so it matches the reported difference.
      With at most :data:`EXACT_PERMUTATION_SUBJECTS` subjects all ``2^S`` sign vectors
      are enumerated (exact p); beyond, ``n_perm`` are drawn and
      ``p = (1 + hits) / (1 + n_perm)``.

    Pairs where either value is missing (None, NaN, inf) are dropped.

    Args:
        values_a: the reference arm's per-image values (e.g. real-only Dice).
        values_b: the other arm's, aligned with ``values_a``.
        subjects: each image's subject id.
        n_boot: bootstrap resamples.
        n_perm: sign vectors drawn when the distribution is not enumerated.
        confidence: the interval's coverage, in (0, 1).
        seed: seed of both (numpy ``default_rng``).

    Returns:
        ``{"difference", "ci_low", "ci_high", "p_value", "crosses_zero", "exact",
        "n_images", "n_subjects"}``; NaN statistics (and ``crosses_zero`` True) without
        any complete pair.

    Raises:
        ValueError: the three sequences differ in length, or a bad ``n_boot``,
            ``n_perm`` or ``confidence``.
    """
    if n_boot < 1 or n_perm < 1:
        raise ValueError(f"n_boot and n_perm must be at least 1, got {n_boot}, {n_perm}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = np.array([math.nan if v is None else v for v in values_a], dtype=np.float64)
    b = np.array([math.nan if v is None else v for v in values_b], dtype=np.float64)
    subj = list(subjects)
    if not len(a) == len(b) == len(subj):
        raise ValueError(f"lengths differ: {len(a)} a, {len(b)} b, {len(subj)} subjects")
    keep = np.isfinite(a) & np.isfinite(b)
    d = (b - a)[keep]
    subj = [s for s, k in zip(subj, keep, strict=True) if k]
    names = sorted(set(subj))
    nan = math.nan
    if not names:
        return {
            "difference": nan, "ci_low": nan, "ci_high": nan, "p_value": nan,
            "crosses_zero": True, "exact": False, "n_images": 0, "n_subjects": 0,
        }  # fmt: skip
    index = {s: i for i, s in enumerate(names)}
    which = np.array([index[s] for s in subj])
    totals = np.bincount(which, weights=d, minlength=len(names))  # D_s
    counts = np.bincount(which, minlength=len(names)).astype(np.float64)  # n_s
    n_images = float(counts.sum())
    observed = float(totals.sum() / n_images)
    rng = np.random.default_rng(seed)

    # Bootstrap: one draw of subjects scores both arms.
    s = len(names)
    boot = np.empty(n_boot)
    rows = max(1, _BLOCK_ELEMENTS // s)
    for start in range(0, n_boot, rows):
        stop = min(start + rows, n_boot)
        idx = rng.integers(0, s, size=(stop - start, s))
        boot[start:stop] = totals[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1 - confidence) / 2
    if np.ptp(boot) == 0:  # a constant difference: exact, without rounding
        low = high = float(boot[0])
    else:
        low, high = (float(x) for x in np.percentile(boot, [100 * alpha, 100 * (1 - alpha)]))

    # Sign flips of the per-subject totals.
    exact = s <= EXACT_PERMUTATION_SUBJECTS
    if exact:
        bits = (np.arange(2**s)[:, None] >> np.arange(s)[None, :]) & 1
        signs = 1.0 - 2.0 * bits
    else:
        signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, s))
    flipped = np.abs(signs @ totals / n_images)
    # A tolerance: sums of the same numbers in another order must count as ties.
    hits = int(np.sum(flipped >= abs(observed) - 1e-12 * max(1.0, abs(observed))))
    p = hits / len(signs) if exact else (1 + hits) / (1 + n_perm)
    return {
        "difference": observed,
        "ci_low": low,
        "ci_high": high,
        "p_value": float(min(1.0, p)),
        "crosses_zero": bool(low <= 0 <= high),
        "exact": exact,
        "n_images": int(n_images),
        "n_subjects": s,
    }
