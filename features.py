"""Basic features: simple and log returns and rolling annualized volatility, with no look-ahead.

Features are recomputed on demand from the stored bars rather than stored (docs/features.md explains why):
computing them for the 505-symbol, 619k-row scale set takes well under a second, and a stored copy could go
stale whenever a bar is corrected.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa

import create_tt_tables as tables
import db_utils

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


@dataclasses.dataclass(frozen=True)
class TrainingBars:
    """Stored bars for training: ``bars`` (long format, :func:`db_utils.read_price_bars`), the ``symbols`` they
    contain, the ``flagged`` symbols (below the minimum coverage at the last ingest) with their coverage, and the
    requested symbols that have no usable bars (``missing``)."""

    bars: pd.DataFrame
    symbols: tuple[str, ...]
    flagged: dict[str, float | None]
    missing: tuple[str, ...] = ()


def load_training_bars(
    engine: sa.Engine,
    symbols: Sequence[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    *,
    include_flagged: bool = False,
) -> TrainingBars:
    """The one way training reads stored bars: flagged (low-coverage) symbols are left out unless asked for.

    :param engine: database engine (``db_utils.connect``).
    :param symbols: symbols wanted; None = every stored symbol.
    :param start: first date (inclusive), None = from the first stored bar.
    :param end: last date (inclusive), None = to the last stored bar.
    :param include_flagged: keep symbols flagged below ``--min-coverage`` by the ingest run.
    """
    s = tables.symbols
    query = sa.select(s.c.symbol, s.c.coverage).where(s.c.below_min_coverage.is_(True))
    if symbols is not None:
        query = query.where(s.c.symbol.in_(list(symbols)))
    with engine.connect() as conn:
        flagged = {row.symbol: row.coverage for row in conn.execute(query)}
    wanted = None if symbols is None else [x for x in symbols if include_flagged or x not in flagged]
    bars = db_utils.read_price_bars(engine, wanted, start, end)
    if symbols is None and not include_flagged:
        bars = bars[~bars["symbol"].isin(list(flagged))].reset_index(drop=True)
    used = tuple(sorted(bars["symbol"].unique()))
    missing = tuple(sorted(set(wanted or ()) - set(used)))
    return TrainingBars(bars, used, flagged, missing)
