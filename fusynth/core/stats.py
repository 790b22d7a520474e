"""Summary statistics for per-image metrics: mean and standard deviation, and a
percentile bootstrap confidence interval of the mean.

Missing values (None, NaN, and infinities) are dropped before anything is computed, so a
metric that is undefined for some images (e.g. a surface distance to an empty
prediction) is summarised over the images where it is defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

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
