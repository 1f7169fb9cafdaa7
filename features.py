"""Basic features: simple and log returns and rolling annualized volatility, with no look-ahead.

Pure functions of a bar frame, no database access (``db_utils.load_training_bars`` reads the bars). Features are
recomputed on demand rather than stored (docs/features.md explains why): computing them for the 505-symbol,
619k-row scale set takes well under a second, and a stored copy could go stale whenever a bar is corrected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

TRADING_DAYS_PER_YEAR = 252
DEFAULT_VOL_WINDOWS: tuple[int, ...] = (20, 60)
LARGE_MOVE = 0.4  # a daily move this large in either direction is reported by the ingest run


def vol_column(window: int) -> str:
    """Name of the rolling-volatility column for ``window`` days."""
    return f"vol_{window}"


def price_series(bars: pd.DataFrame) -> pd.Series:
    """The price returns are measured on: ``adj_close`` for symbols whose every bar has one, else ``close``.

    Mixing adjusted and unadjusted prices inside one symbol would create false returns, so the choice is made
    per symbol, not per row.
    """
    if "adj_close" not in bars.columns:
        return bars["close"].astype("float64")
    adj = pd.to_numeric(bars["adj_close"], errors="coerce")
    fully_adjusted = adj.notna().groupby(bars["symbol"], sort=False).transform("all")
    return adj.where(fully_adjusted, bars["close"]).astype("float64")


def compute_basic_features(
    bars: pd.DataFrame,
    vol_windows: Sequence[int] = DEFAULT_VOL_WINDOWS,
    annualization: int = TRADING_DAYS_PER_YEAR,
) -> pd.DataFrame:
    """Per-symbol returns and rolling volatility from long-format bars.

    :param bars: columns ``symbol, date, close`` and optionally ``adj_close``; any order.
    :param vol_windows: rolling windows (in bars) for the annualized volatility of log returns.
    :param annualization: periods per year used to annualize the volatility.
    :return: one row per input bar, sorted by symbol then date, with columns ``symbol, date, price, ret,
        log_ret`` and ``vol_<w>`` per window. The value at date t uses bars up to t only; NaN during warm-up
        (the first return of a symbol, and the first ``w`` returns for ``vol_<w>``).
    """
    if any(int(w) < 2 for w in vol_windows):
        raise ValueError(f"vol_windows must all be >= 2, got {tuple(vol_windows)}")
    frame = bars.loc[:, [c for c in ("symbol", "date", "close", "adj_close") if c in bars.columns]]
    frame = frame.sort_values(["symbol", "date"], kind="stable", ignore_index=True)
    price = price_series(frame)
    previous = price.groupby(frame["symbol"], sort=False).shift(1)
    out = pd.DataFrame({"symbol": frame["symbol"], "date": frame["date"], "price": price})
    out["ret"] = price / previous - 1.0
    out["log_ret"] = np.log(price / previous)
    by_symbol = out.groupby("symbol", sort=False)["log_ret"]
    scale = float(np.sqrt(annualization))
    for w in vol_windows:
        rolled = by_symbol.rolling(int(w), min_periods=int(w)).std(ddof=1)
        out[vol_column(int(w))] = rolled.reset_index(level=0, drop=True).sort_index() * scale
    return out


def large_moves(features: pd.DataFrame, threshold: float = LARGE_MOVE) -> pd.DataFrame:
    """Rows whose simple return is at least ``threshold`` in size (possible bad prints or unadjusted splits).

    :param features: output of :func:`compute_basic_features`.
    :return: ``symbol, date, price, ret`` of those rows, largest moves first.
    """
    hits = features.loc[features["ret"].abs() >= threshold, ["symbol", "date", "price", "ret"]]
    return hits.sort_values("ret", key=np.abs, ascending=False, ignore_index=True)
