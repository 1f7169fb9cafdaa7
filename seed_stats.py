"""Aggregates across seeds (and walk-forward folds): interquartile mean with stratified-bootstrap intervals and
the probability of improvement (Agarwal et al. 2021, the rliable method; docs/statistics.md).

Scores are arranged as runs x tasks (seeds x folds); a 1-D array is one task. Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from evaluation_stats import Interval, percentile_interval


def _runs_by_tasks(scores: np.ndarray) -> np.ndarray:
    """Scores as (runs, tasks): a 1-D array is one task (e.g. seeds on one fold)."""
    x = np.asarray(scores, dtype=float)
    return x[:, None] if x.ndim == 1 else x


def _stratified(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One stratified resample: runs drawn with replacement within each task (column)."""
    runs, tasks = scores.shape
    return scores[rng.integers(runs, size=(runs, tasks), dtype=np.int64), np.arange(tasks)]


def interquartile_mean(scores: np.ndarray) -> float:
    """IQM: mean of the middle 50% of all runs x tasks scores (scipy.stats.trim_mean, 25% cut each side)."""
    return float(stats.trim_mean(np.ravel(scores), 0.25))


def iqm_interval(scores: np.ndarray, reps: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """IQM with its stratified-bootstrap percentile interval (Agarwal et al. 2021)."""
    x, rng = _runs_by_tasks(scores), np.random.default_rng(seed)
    resampled = np.stack([_stratified(x, rng).ravel() for _ in range(reps)])
    return percentile_interval(interquartile_mean(x), stats.trim_mean(resampled, 0.25, axis=1), level)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 per task (the Mann-Whitney U / (n_x n_y)), averaged over tasks."""
    xs, ys = _runs_by_tasks(x), _runs_by_tasks(y)
    pairs_x, pairs_y = xs[:, None, :], ys[None, :, :]
    per_task = (pairs_x > pairs_y).mean(axis=(0, 1)) + 0.5 * (pairs_x == pairs_y).mean(axis=(0, 1))
    return float(per_task.mean())


def improvement_interval(
    x: np.ndarray, y: np.ndarray, reps: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Probability of improvement of X over Y with an interval from independent stratified resamples of both."""
    xs, ys, rng = _runs_by_tasks(x), _runs_by_tasks(y), np.random.default_rng(seed)
    replicates = np.array([probability_of_improvement(_stratified(xs, rng), _stratified(ys, rng)) for _ in range(reps)])
    return percentile_interval(probability_of_improvement(xs, ys), replicates, level)
