"""IBKR request planning, chunk arithmetic and bar parsing: pure functions of plain values (docs/ibkr.md).

Kept apart from the connection and retries in ``ibkr_source.py`` so each rule is tested from a table of inputs
and expected outputs (tests/test_ibkr_parsing.py). ib_async is never imported here at run time: bars and
contract details are read by attribute (``BarData``, ``ContractDetails``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from watchlist_loader import BAR_COLUMNS, empty_bars

if TYPE_CHECKING:
    from ib_async import BarData, ContractDetails

ADJUSTED_LAST = "ADJUSTED_LAST"  # IBKR's adjusted bars: no end date allowed, close is the adjusted close
_DAY = dt.timedelta(days=1)


def duration(days: int, max_years: int | None = None) -> str:
    """IBKR's ``durationStr`` for ``days`` calendar days: "N D" up to 365, else whole years ("N Y", at most
    ``max_years``), since IBKR refuses more than 365 "D"."""
    if days <= 365:
        return f"{days} D"
    years = math.ceil(days / 365)
    return f"{years if max_years is None else min(max_years, years)} Y"


def plan_request(
    first: dt.date, chunk_end: dt.date, tz: str, what_to_show: str, chunk_years: int, today: dt.date
) -> tuple[str, str]:
    """The next request's ``(endDateTime, durationStr)``: chunks of ``chunk_years`` years, newest first.

    :param first: first day wanted; :param chunk_end: last day of this chunk; :param tz: the exchange's zone.
    :param today: for ``ADJUSTED_LAST``, which IBKR rejects with an end date: one request ending now, reaching
        back to ``first``.
    """
    if what_to_show == ADJUSTED_LAST:
        return "", duration((today - first).days + 1)
    # explicit exchange-zone end of day: a bare date would be read in the gateway machine's zone
    return f"{chunk_end:%Y%m%d} 23:59:59 {tz}", duration((chunk_end - first).days + 1, chunk_years)


def years_before(day: dt.date, years: int) -> dt.date:
    """``day`` moved back ``years`` calendar years; 29 February becomes the 28th in a common year."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def next_chunk_end(
    first: dt.date, chunk_end: dt.date, duration_text: str, what_to_show: str, earliest: dt.date | None
) -> dt.date:
    """End of the chunk after the one just requested; ``first - 1 day`` when nothing is left to ask for.

    :param duration_text: the ``durationStr`` of the request just made (:func:`plan_request`).
    :param earliest: the earliest bar date received, None when the chunk held no bar. The next chunk ends just
        before it, whatever window IBKR applied; without bars, the requested years back.
    """
    done = first - _DAY
    count, unit = duration_text.split()
    if unit == "D" or what_to_show == ADJUSTED_LAST:
        return done
    back = years_before(chunk_end, int(count))
    if back < first:
        return done
    following = back if earliest is None else earliest - _DAY
    if np.busday_count(first, following + _DAY) == 0:
        return done  # only a weekend left
    return following


def exchange_date(stamp: dt.datetime, tz: str) -> dt.date:
    """The calendar day of ``stamp`` (e.g. IBKR's head timestamp, in UTC) in the exchange's time zone."""
    return stamp.astimezone(ZoneInfo(tz)).date()


def bars_frame(symbol: str, bars: Sequence[BarData], what_to_show: str) -> pd.DataFrame:
    """Daily bars as a frame in ``BAR_COLUMNS`` order; ``adj_close`` = close for ADJUSTED_LAST, else NaN; a
    negative volume (IBKR's "not available", -1) becomes NaN."""
    close = np.array([b.close for b in bars], dtype="float64")
    volume = np.array([b.volume for b in bars], dtype="float64")
    return pd.DataFrame({
        "symbol": symbol, "date": [b.date for b in bars], "open": [b.open for b in bars],
        "high": [b.high for b in bars], "low": [b.low for b in bars], "close": close,
        "adj_close": close if what_to_show == ADJUSTED_LAST else np.full(len(close), np.nan),
        "volume": np.where(volume < 0, np.nan, volume),
    }, columns=list(BAR_COLUMNS))  # fmt: skip


def combine_chunks(frames: Sequence[pd.DataFrame], first: dt.date, end: dt.date) -> pd.DataFrame:
    """All chunks of one symbol (newest first), one row per date (the newest chunk wins an overlap), inside
    ``first``..``end``, sorted by date."""
    if not frames:
        return empty_bars()
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("date", keep="first")
    keep = (frame["date"] >= first) & (frame["date"] <= end)
    return frame[keep].sort_values("date", ignore_index=True)


def matching_details(details: Sequence[ContractDetails], sec_type: str, primary_exchange: str) -> list[ContractDetails]:
    """The contract details that fit a watchlist entry: same security type (all of them when none has it), then,
    when several remain and the entry names a primary exchange, those listed there. One match is the answer."""
    matches = [d for d in details if d.contract and d.contract.secType == sec_type] or list(details)
    if len(matches) > 1 and primary_exchange:
        matches = [d for d in matches if d.contract and d.contract.primaryExchange == primary_exchange]
    return matches


def is_no_data(code: int, message: str) -> bool:
    """Whether an IB error means "no bars" (162 HMDS no data / no head time stamp) rather than a failure."""
    text = message.lower()
    return code == 162 and ("no data" in text or "head time stamp" in text)


def is_pacing_violation(code: int, message: str) -> bool:
    """Whether an IB error is a historical-data pacing violation (162), which is retried after a pause."""
    return code == 162 and "pacing violation" in message.lower()
