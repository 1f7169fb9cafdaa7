"""Validation of daily bars before they are stored: pure checks on a DataFrame, no I/O.

:func:`validate_bars` is called by ``bar_store.upsert_price_bars`` (and by the pipeline to report rejected rows);
the rules and their order are documented in docs/database.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from settings import UserError

PRICE_COLUMNS = ("open", "high", "low", "close")
VALUE_COLUMNS = ("open", "high", "low", "close", "adj_close", "volume")
BAR_COLUMNS: tuple[str, ...] = ("symbol", "date", *VALUE_COLUMNS)  # every source's bars, in this order
SOURCE_COLUMNS = ("file", "line")  # where a row was read, when the source says (line 1 is the file's first line)
OHLC_TOLERANCE = 1e-4  # relative slack for open/close vs [low, high]: absorbs rounding, not bad prints


def normalized_dates(values: pd.Series) -> pd.Series:
    """Dates as midnight ``datetime64`` (time zone dropped); unparseable values become NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_localize(None).dt.normalize() if values.dt.tz is not None else values.dt.normalize()
    return pd.to_datetime(values, errors="coerce", format="mixed").dt.normalize()


def validate_bars(bars: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Check bars before writing.

    :return: (boolean mask of valid rows, rejected rows as ``symbol, date, reason``, then the row's values as
        given and its ``file`` and ``line`` when ``bars`` has them). Rules, first match wins: missing symbol or
        date; missing open/high/low/close; an infinite value (inf, 1e309) in any price, adj_close or volume;
        non-positive open/high/low/close (or adj_close when given); high < low; open or close outside
        [low, high] by more than :data:`OHLC_TOLERANCE`; missing or negative volume; duplicate (symbol, date):
        identical copies keep the first, conflicting copies are all rejected.
    """
    missing = [c for c in ("symbol", "date", *PRICE_COLUMNS, "volume") if c not in bars.columns]
    if missing:
        raise UserError(f"bars are missing column(s): {', '.join(missing)}")
    dates = normalized_dates(bars["date"])
    symbol = bars["symbol"]
    prices = bars.loc[:, list(PRICE_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    o, h, lo, c = (prices[col].to_numpy(dtype="float64") for col in PRICE_COLUMNS)
    adj = pd.to_numeric(bars["adj_close"], errors="coerce").to_numpy("float64") if "adj_close" in bars else None
    volume = pd.to_numeric(bars["volume"], errors="coerce").to_numpy("float64")
    slack = OHLC_TOLERANCE * np.abs(h)
    values = np.column_stack([prices.to_numpy("float64"), volume, np.zeros(len(bars)) if adj is None else adj])
    with np.errstate(invalid="ignore"):
        conditions = [
            (symbol.isna() | (symbol.astype("string").str.strip() == "")).to_numpy(bool),
            dates.isna().to_numpy(bool),
            np.isnan(prices.to_numpy("float64")).any(axis=1),
            np.isinf(values).any(axis=1),
            (prices.to_numpy("float64") <= 0).any(axis=1) | (adj is not None and (adj <= 0)),
            h < lo,
            (o > h + slack) | (o < lo - slack) | (c > h + slack) | (c < lo - slack),
            np.isnan(volume),
            volume < 0,
        ]
    reasons = [
        "missing symbol",
        "missing or unparseable date",
        "missing price",
        "non-finite value",
        "non-positive price",
        "high < low",
        "open/close outside [low, high]",
        "missing volume",
        "negative volume",
    ]
    reason = np.select(conditions, reasons, default="")
    key = pd.DataFrame({"symbol": symbol.to_numpy(), "date": dates.to_numpy()})
    dup_any = key.duplicated(keep=False).to_numpy() & (reason == "")
    if dup_any.any():
        values = pd.concat(
            [key, bars.loc[:, [c for c in VALUE_COLUMNS if c in bars.columns]].reset_index(drop=True)], axis=1
        )
        candidates = values[dup_any]
        conflicting = candidates.drop_duplicates().duplicated(["symbol", "date"], keep=False)
        bad_keys = candidates.drop_duplicates()[conflicting][["symbol", "date"]].drop_duplicates()
        in_conflict = key.merge(bad_keys.assign(_c=True), how="left", on=["symbol", "date"])["_c"].fillna(False)
        reason = np.where(dup_any & in_conflict.to_numpy(bool), "conflicting duplicate (symbol, date)", reason)
        extra_copy = values.duplicated(keep="first").to_numpy() & dup_any & (reason == "")
        reason = np.where(extra_copy, "duplicate (symbol, date)", reason)
    bad = reason != ""
    rejected = pd.DataFrame(
        {"symbol": symbol[bad].to_numpy(), "date": bars["date"][bad].to_numpy(), "reason": reason[bad]}
    )
    for col in [c for c in (*VALUE_COLUMNS, *SOURCE_COLUMNS) if c in bars.columns]:
        rejected[col] = bars[col][bad].to_numpy()
    return ~bad, rejected
