"""Statistics for the analyses as plain functions on arrays: bootstrap CIs, Spearman, curve areas."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..votes import spearman as _spearman_torch


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` item indices drawn with replacement (one row per bootstrap sample)."""
    if n < 1:
        raise ValueError("bootstrap needs at least one item")
    return np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis of bootstrap ``samples``."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level} must lie in (0, 1), e.g. 0.95")
    a = (1 - level) / 2
    return np.quantile(samples, a, axis=0), np.quantile(samples, 1 - a, axis=0)


def bootstrap_ci(values, statistic: Callable[[np.ndarray], np.ndarray] | None = None, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of a statistic of items on the **last** axis of ``values`` (default: the mean).

    ``statistic`` maps an array with items on the last axis to the statistic (reducing that axis).
    """
    v = np.asarray(values, dtype=np.float64)
    stat = statistic or (lambda x: x.mean(axis=-1))
    idx = bootstrap_indices(v.shape[-1], n_boot, seed)
    samples = np.stack([stat(v[..., row]) for row in idx])
    low, high = percentile_ci(samples, level)
    return (low.item(), high.item()) if np.ndim(low) == 0 else (low, high)


def mean_ci(values, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """(mean, CI low, CI high) over the last axis of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(v, None, n_boot, level, seed)
    m = v.mean(axis=-1)
    return (m.item() if np.ndim(m) == 0 else m), low, high


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties; 0 when either side is constant)."""
    return _spearman_torch(torch.as_tensor(np.asarray(a, dtype=np.float64)),
                           torch.as_tensor(np.asarray(b, dtype=np.float64)))


def normalised_area(ks, upper, lower) -> float:
    """Area between two curves over k (trapezoids) divided by the k range: the mean gap ``upper − lower``."""
    k = np.asarray(ks, dtype=np.float64)
    gap = np.asarray(upper, dtype=np.float64) - np.asarray(lower, dtype=np.float64)
    if k.ndim != 1 or len(k) != gap.shape[-1]:
        raise ValueError("ks and the curves must have the same length")
    if len(k) < 2 or k[-1] == k[0]:
        return float(gap[..., 0]) if gap.ndim == 1 else gap[..., 0]
    area = ((gap[..., 1:] + gap[..., :-1]) / 2 * np.diff(k)).sum(axis=-1)
    out = area / (k[-1] - k[0])
    return float(out) if np.ndim(out) == 0 else out


# Below this many prompt × seed items a percentile-bootstrap 95% interval is too coarse to trust.
MIN_CI_ITEMS = 20


def permutation_p(effects, values, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman(effects, values): share of shuffles with |ρ| ≥ the observed |ρ|."""
    e, v = np.asarray(effects, dtype=np.float64), np.asarray(values, dtype=np.float64)
    observed = abs(spearman(e, v))
    rng = np.random.default_rng(seed)
    null = np.array([abs(spearman(e, rng.permutation(v))) for _ in range(int(n_perm))])
    return float(((null >= observed - 1e-12).sum() + 1) / (len(null) + 1))
