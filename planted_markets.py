"""Synthetic daily markets with an edge planted on purpose, and the oracle rule that exploits each edge.

A learning agent that cannot find an edge planted on purpose says nothing about real data, so the learning
tests (tests/test_learning.py) train on these markets and compare the agent on a held-out tail with the baselines
and with the oracle. Every edge is visible in what the environment observes (the window of per-asset log returns
and rolling volatilities, docs/environment.md), and the oracles read only that observation.

Kinds (asset 0 carries the edge unless said otherwise; the other assets are i.i.d. noise with a small drift):

- ``momentum``: asset 0's drift is +mu or -mu in persistent regimes; the sign of its recent return tells which.
- ``vol_timing``: asset 0 switches between a calm regime with a positive drift and a turbulent one with a
  negative drift; its recent realized volatility tells which.
- ``cross_section``: one leading asset at a time drifts up while the others drift down (a zero-sum rotation);
  the asset with the best recent return is the likely leader.
- ``null``: i.i.d. returns, no edge.

Returns are planted on the open-to-close move (the overnight gap is small noise), because the environment fills
a decision taken at a close at the next open. Pure numpy/pandas: no environment import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

EdgeKind = Literal["momentum", "vol_timing", "cross_section", "null"]
EDGE_KINDS: tuple[EdgeKind, ...] = ("momentum", "vol_timing", "cross_section", "null")
BASE_DRIFT, BASE_VOL, GAP_VOL = 0.0002, 0.01, 0.001  # daily: the noise assets' drift and volatility, overnight gap
# The oracle's lookback (days of the observed window) and the calm/turbulent split of the vol-timing edge.
LOOKBACK, VOL_DAYS, VOL_THRESHOLD = 20, 5, 0.22 / np.sqrt(252.0)


def _regimes(rng: np.random.Generator, n_dates: int, switch: float, n_states: int) -> np.ndarray:
    """A Markov chain over ``n_states`` that leaves its state with probability ``switch`` a day (to another one)."""
    state = np.empty(n_dates, dtype=np.int64)
    state[0] = rng.integers(n_states)
    jumps = rng.random(n_dates) < switch
    steps = rng.integers(1, n_states, n_dates)  # a jump always lands on a different state
    for t in range(1, n_dates):
        state[t] = (state[t - 1] + steps[t]) % n_states if jumps[t] else state[t - 1]
    return state


def planted_returns(kind: EdgeKind, n_assets: int, n_dates: int, rng: np.random.Generator) -> np.ndarray:
    """Daily open-to-close log returns ``(n_dates, n_assets)`` with the edge of ``kind`` planted."""
    returns = rng.normal(BASE_DRIFT, BASE_VOL, (n_dates, n_assets))
    noise = rng.standard_normal(n_dates)
    if kind == "momentum":  # +-0.4 %/day regimes lasting ~80 days: a 20-day sum separates them at ~1.8 sigma
        sign = 2 * _regimes(rng, n_dates, 1 / 80, 2) - 1
        returns[:, 0] = 0.004 * sign + BASE_VOL * noise
    elif kind == "vol_timing":  # calm: +0.4 %/day at 0.6 %; turbulent: -0.8 %/day at 3 % (~100-day regimes)
        calm = _regimes(rng, n_dates, 1 / 100, 2) == 0
        returns[:, 0] = np.where(calm, 0.004 + 0.006 * noise, -0.008 + 0.03 * noise)
    elif kind == "cross_section":  # the leader gains 0.4 %/day, the others lose 0.4/(N-1) %/day (~40-day legs)
        leader = _regimes(rng, n_dates, 1 / 40, n_assets)
        drift = np.full((n_dates, n_assets), -0.004 / (n_assets - 1))
        drift[np.arange(n_dates), leader] = 0.004
        returns = BASE_DRIFT + drift + BASE_VOL * rng.standard_normal((n_dates, n_assets))
    elif kind != "null":
        raise ValueError(f"unknown edge kind {kind!r}; one of {EDGE_KINDS}")
    return returns


def planted_bars(
    kind: EdgeKind, n_assets: int = 4, n_dates: int = 3000, seed: int = 0, start: str = "2000-01-03"
) -> pd.DataFrame:
    """Seeded synthetic daily bars with the edge ``kind`` planted, in the long ``tt_prices`` layout.

    :return: columns ``symbol, date, open, high, low, close, adj_close, volume`` (``adj_close`` = ``close``),
        business days from ``start``, symbols ``P0``, ``P1``, ... (``P0`` carries a single-asset edge).
    """
    if n_assets < 2:
        raise ValueError("n_assets must be >= 2")
    rng = np.random.default_rng(seed)
    intraday = planted_returns(kind, n_assets, n_dates, rng)
    gap = rng.normal(0.0, GAP_VOL, (n_dates, n_assets))
    gap[0] = 0.0
    log_close = np.log(100.0) + np.cumsum(gap + intraday, axis=0)
    close, opened = np.exp(log_close), np.exp(log_close - intraday)
    spread = np.exp(np.abs(rng.normal(0.0, 0.003, (2, n_dates, n_assets))))
    dates = pd.bdate_range(start, periods=n_dates)
    frame = pd.DataFrame(
        {
            "symbol": np.repeat([f"P{i}" for i in range(n_assets)], n_dates),
            "date": np.tile(dates.date, n_assets),
            "open": opened.T.ravel(),
            "high": (np.maximum(opened, close) * spread[0]).T.ravel(),
            "low": (np.minimum(opened, close) / spread[1]).T.ravel(),
            "close": close.T.ravel(),
        }
    )
    frame["adj_close"] = frame["close"]
    frame["volume"] = 1_000_000.0
    return frame


def write_csv(bars: pd.DataFrame, path: Path) -> Path:
    """Write ``bars`` as the long CSV ``mvp_pipeline.py --source csv --csv PATH`` ingests (gzip if ``.gz``)."""
    path = Path(path)
    bars.to_csv(path, index=False, float_format="%.6f")
    return path


# ----------------------------------------------------------------------------------------------- oracles
# An oracle reads the environment's observation only: window rows t-W+1..t of per-asset features
# [log_ret, vol_<w> for each vol window], asset-major, then weights, cash fraction and drawdown.
Oracle = Callable[[np.ndarray], np.ndarray]


def observed_features(obs: np.ndarray, n_assets: int, window_size: int, n_vol: int) -> np.ndarray:
    """The feature window of an observation as ``(window_size, n_assets, 1 + n_vol)``."""
    width = n_assets * (1 + n_vol)
    return obs[: window_size * width].reshape(window_size, n_assets, 1 + n_vol)


def oracle_weights(kind: EdgeKind, n_assets: int, window_size: int = 20, n_vol: int = 2) -> Oracle:
    """The rule that knows the planted edge: observation -> target weights (long-only, sum <= 1).

    - momentum: all in asset 0 while its return over the last ``LOOKBACK`` days is positive, else cash.
    - vol_timing: all in asset 0 while its realized volatility over the last ``VOL_DAYS`` observed returns is
      below ``VOL_THRESHOLD`` (22 % annualized), else cash.
    - cross_section: all in the asset with the best return over the last ``LOOKBACK`` days.
    - null: equal weights (there is nothing to know).
    """
    lookback = min(LOOKBACK, window_size)
    single = np.eye(n_assets)[0]

    def rule(obs: np.ndarray) -> np.ndarray:
        window = observed_features(np.asarray(obs, dtype=np.float64), n_assets, window_size, n_vol)
        recent = window[-lookback:, :, 0].sum(axis=0)
        if kind == "momentum":
            return single if recent[0] > 0 else 0.0 * single
        if kind == "vol_timing":
            calm = np.sqrt(np.mean(window[-VOL_DAYS:, 0, 0] ** 2)) < VOL_THRESHOLD
            return single if calm else 0.0 * single
        if kind == "cross_section":
            return np.eye(n_assets)[int(np.argmax(recent))]
        return np.full(n_assets, 1.0 / n_assets)

    return rule
