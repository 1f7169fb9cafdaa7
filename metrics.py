"""Evaluation metrics of a policy's daily returns, and the evaluation record the command and the report share.

Pure numpy/pandas: no database, no Stable-Baselines3. ``evaluate_mvp.py`` computes an :class:`Evaluation`
and ``report_mvp.py`` draws it; both import this module, neither imports the other's. Definitions:
docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import pandas as pd

from features import TRADING_DAYS_PER_YEAR

ANNUALIZATION = TRADING_DAYS_PER_YEAR


# Each takes the daily simple returns r_1..r_n of one policy (n = number of sessions after the first one) and
# matches empyrical's definition of the same name (tests/test_metrics.py checks them to 1e-9).
def total_return(returns: np.ndarray) -> float:
    """prod(1 + r) - 1 (NaN for an empty series)."""
    return float(np.prod(1.0 + returns) - 1.0) if len(returns) else math.nan


def cagr(returns: np.ndarray, annualization: int = ANNUALIZATION) -> float:
    """Compound annual growth on trading days: (1 + total return) ** (annualization / n) - 1."""
    if not len(returns):
        return math.nan
    return float((1.0 + total_return(returns)) ** (annualization / len(returns)) - 1.0)


def annual_volatility(returns: np.ndarray, annualization: int = ANNUALIZATION) -> float:
    """Sample standard deviation (ddof=1) of the daily returns times sqrt(annualization); NaN when n < 2."""
    if len(returns) < 2:
        return math.nan
    return float(np.std(returns, ddof=1) * math.sqrt(annualization))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator with IEEE semantics (±inf, or NaN for 0/0) instead of an exception."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(numerator) / np.float64(denominator))


def sharpe(returns: np.ndarray, annualization: int = ANNUALIZATION) -> float:
    """mean(r) / std(r, ddof=1) * sqrt(annualization), risk-free rate 0; NaN when n < 2 or for 0/0."""
    if len(returns) < 2:
        return math.nan
    # A constant series has zero dispersion exactly; np.std could leave a 1e-18 residue.
    std = 0.0 if returns.max() == returns.min() else float(np.std(returns, ddof=1))
    return _ratio(float(np.mean(returns)), std) * math.sqrt(annualization)


def downside_deviation(returns: np.ndarray, annualization: int = ANNUALIZATION) -> float:
    """sqrt(mean(min(r, 0)²)) * sqrt(annualization): the mean runs over all n days, not only the losing ones."""
    if not len(returns):
        return math.nan
    return float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2)) * math.sqrt(annualization))


def sortino(returns: np.ndarray, annualization: int = ANNUALIZATION) -> float:
    """mean(r) * annualization / downside deviation (target return 0); NaN when n < 2, ±inf with no losses."""
    if len(returns) < 2:
        return math.nan
    return _ratio(float(np.mean(returns)) * annualization, downside_deviation(returns, annualization))


def max_drawdown(returns: np.ndarray) -> float:
    """min over t of V_t / max(V_0..V_t) - 1, with V_0 = 1 and V_t = prod(1 + r): a number <= 0."""
    if not len(returns):
        return math.nan
    value = np.concatenate(([1.0], np.cumprod(1.0 + returns)))
    return float(np.min(value / np.maximum.accumulate(value) - 1.0))


def calmar(returns: np.ndarray, annualization: int = ANNUALIZATION) -> float:
    """CAGR / |max drawdown|; NaN when there was no drawdown (or the ratio is infinite)."""
    drawdown = max_drawdown(returns)
    if not drawdown < 0:
        return math.nan
    ratio = cagr(returns, annualization) / abs(drawdown)
    return ratio if math.isfinite(ratio) else math.nan


def policy_metrics(trace: pd.DataFrame, annualization: int = ANNUALIZATION) -> dict[str, float]:
    """Every metric of one policy from its daily trace (see ``policy_rollout.rollout``).

    Row 0 is the start (all cash, before any decision); rows 1..n are the closes after each step.

    :return: the ``tt_evaluations`` metric columns; ``turnover`` is annualized (sum of daily traded value /
        net worth, times annualization / n), ``avg_gross_exposure`` is the mean of sum|w| over the n closes.
    """
    worth = trace["net_worth"].to_numpy(dtype="float64")
    returns = worth[1:] / worth[:-1] - 1.0
    n = len(returns)
    return {
        "total_return": total_return(returns),
        "cagr": cagr(returns, annualization),
        "annual_volatility": annual_volatility(returns, annualization),
        "sharpe": sharpe(returns, annualization),
        "sortino": sortino(returns, annualization),
        "max_drawdown": max_drawdown(returns),
        "calmar": calmar(returns, annualization),
        "turnover": float(trace["turnover"].iloc[1:].sum() * annualization / n) if n else math.nan,
        "fees_paid": float(trace["fees"].sum()),
        "avg_gross_exposure": float(trace["gross_exposure"].iloc[1:].mean()) if n else math.nan,
        "days_stopped": int(trace["stopped"].iloc[1:].sum()),
        "final_net_worth": float(worth[-1]),
        "sessions": n,
    }


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Every policy's daily trace, end-of-day weights and metrics over one slice."""

    start: dt.date  # first evaluated session: the start value and the first decision are at its close
    end: dt.date  # last evaluated session
    metrics: pd.DataFrame  # index policy, columns as in tt_evaluations
    traces: dict[str, pd.DataFrame]  # policy -> daily trace (see policy_rollout.rollout)
    weights: dict[str, pd.DataFrame]  # policy -> end-of-day weights, dates x symbols

    @classmethod
    def from_traces(cls, traces: dict[str, pd.DataFrame], weights: dict[str, pd.DataFrame]) -> Evaluation:
        """The evaluation of policies run over the same sessions: their metrics computed from their traces."""
        metrics = pd.DataFrame({name: policy_metrics(trace) for name, trace in traces.items()}).T
        metrics.index.name = "policy"
        dates = next(iter(traces.values())).index
        return cls(dates[0].date(), dates[-1].date(), metrics, traces, weights)
