"""Fitness of an individual from its evaluation returns, as ACI: drop 1.5-IQR outliers, then the
median of the top 25 %."""

from __future__ import annotations

import numpy as np


def remove_outliers(returns, k: float = 1.5) -> np.ndarray:
    """The finite returns within [Q1 - k·IQR, Q3 + k·IQR]."""
    r = np.asarray(returns, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    if r.size == 0:
        return r
    q1, q3 = np.percentile(r, [25, 75])
    iqr = q3 - q1
    return r[(r >= q1 - k * iqr) & (r <= q3 + k * iqr)]


def fitness(returns) -> float:
    """Median of the returns at or above the 75th percentile, after outlier removal (-inf: none)."""
    r = remove_outliers(returns)
    if r.size == 0:
        return float("-inf")
    return float(np.median(r[r >= np.percentile(r, 75)]))
