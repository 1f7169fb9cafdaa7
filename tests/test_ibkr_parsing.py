"""IBKR request planning, chunk arithmetic and bar parsing, from tables of inputs and expected outputs.

The pure functions of ``ibkr_parsing.py``; real ib_async ``BarData`` / ``ContractDetails`` records as input (built,
never mocked). The same rules end to end against the gateway simulator: tests/test_ibkr_source.py.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from ib_async import BarData, Contract, ContractDetails

from ibkr_parsing import (
    bars_frame,
    combine_chunks,
    duration,
    exchange_date,
    is_no_data,
    is_pacing_violation,
    matching_details,
    next_chunk_end,
    plan_request,
    years_before,
)
from watchlist_loader import BAR_COLUMNS

D = dt.date
ET = "US/Eastern"
HMDS = "Historical Market Data Service error message:"


@pytest.mark.parametrize(
    ("days", "max_years", "expected"),
    [
        (1, None, "1 D"),
        (365, None, "365 D"),  # IBKR's largest "D" duration
        (366, None, "2 Y"),
        (730, None, "2 Y"),
        (731, None, "3 Y"),
        (366, 1, "1 Y"),  # capped by --ib-chunk-years
        (3650, 5, "5 Y"),
        (3650, None, "10 Y"),
    ],
)
def test_duration(days: int, max_years: int | None, expected: str) -> None:
    assert duration(days, max_years) == expected


@pytest.mark.parametrize(
    ("first", "chunk_end", "tz", "what", "years", "expected"),
    [
        (D(2005, 1, 3), D(2025, 9, 26), ET, "TRADES", 1, ("20250926 23:59:59 US/Eastern", "1 Y")),
        (D(2005, 1, 3), D(2025, 9, 26), ET, "TRADES", 5, ("20250926 23:59:59 US/Eastern", "5 Y")),
        (D(2023, 1, 1), D(2025, 9, 26), ET, "TRADES", 5, ("20250926 23:59:59 US/Eastern", "3 Y")),  # 1000 days
        (D(2024, 9, 27), D(2025, 9, 26), ET, "TRADES", 1, ("20250926 23:59:59 US/Eastern", "365 D")),
        (D(2025, 3, 1), D(2025, 3, 31), ET, "TRADES", 1, ("20250331 23:59:59 US/Eastern", "31 D")),  # incremental
        (D(2025, 3, 31), D(2025, 3, 31), "Europe/London", "TRADES", 1, ("20250331 23:59:59 Europe/London", "1 D")),
        # ADJUSTED_LAST: no end date, one request from today back to ``first`` (chunk_end and years ignored)
        (D(2024, 1, 1), D(2025, 6, 30), ET, "ADJUSTED_LAST", 1, ("", "2 Y")),
        (D(2025, 6, 1), D(2025, 6, 15), ET, "ADJUSTED_LAST", 1, ("", "30 D")),
    ],
)
def test_plan_request(
    first: dt.date, chunk_end: dt.date, tz: str, what: str, years: int, expected: tuple[str, str]
) -> None:
    assert plan_request(first, chunk_end, tz, what, years, today=D(2025, 6, 30)) == expected


@pytest.mark.parametrize(
    ("day", "years", "expected"),
    [
        (D(2025, 9, 26), 1, D(2024, 9, 26)),
        (D(2025, 3, 1), 10, D(2015, 3, 1)),
        (D(2024, 2, 29), 1, D(2023, 2, 28)),  # no 29 February in a common year
        (D(2024, 2, 29), 4, D(2020, 2, 29)),
    ],
)
def test_years_before(day: dt.date, years: int, expected: dt.date) -> None:
    assert years_before(day, years) == expected


@pytest.mark.parametrize(
    ("first", "chunk_end", "duration_text", "what", "earliest", "expected"),
    [
        # a "D" request reaches back to ``first``: done
        (D(2025, 3, 1), D(2025, 3, 31), "31 D", "TRADES", D(2025, 3, 3), D(2025, 2, 28)),
        # a year chunk: continue just before the earliest bar received
        (D(2005, 1, 3), D(2025, 9, 26), "1 Y", "TRADES", D(2024, 9, 26), D(2024, 9, 25)),
        (D(2005, 1, 3), D(2025, 9, 26), "5 Y", "TRADES", D(2020, 9, 28), D(2020, 9, 27)),
        # a year chunk without bars (IBKR's 162 "no data" for the window): the requested years back
        (D(2005, 1, 3), D(2025, 9, 26), "1 Y", "TRADES", None, D(2024, 9, 26)),
        # the years requested reach before ``first``: done
        (D(2025, 1, 2), D(2025, 9, 26), "1 Y", "TRADES", D(2025, 1, 2), D(2025, 1, 1)),
        # only a weekend left before ``first`` (Saturday 2024-09-21): done
        (D(2024, 9, 21), D(2025, 9, 26), "1 Y", "TRADES", D(2024, 9, 23), D(2024, 9, 20)),
        # ADJUSTED_LAST is a single request
        (D(2024, 1, 1), D(2025, 6, 30), "2 Y", "ADJUSTED_LAST", D(2024, 1, 2), D(2023, 12, 31)),
    ],
)
def test_next_chunk_end(
    first: dt.date, chunk_end: dt.date, duration_text: str, what: str, earliest: dt.date | None, expected: dt.date
) -> None:
    assert next_chunk_end(first, chunk_end, duration_text, what, earliest) == expected


@pytest.mark.parametrize(
    ("stamp", "tz", "expected"),
    [
        (dt.datetime(2005, 1, 3, 14, 30, tzinfo=dt.UTC), ET, D(2005, 1, 3)),
        (dt.datetime(2005, 1, 3, 3, 0, tzinfo=dt.UTC), ET, D(2005, 1, 2)),  # still the evening before in New York
        (dt.datetime(2005, 1, 2, 23, 30, tzinfo=dt.UTC), "Asia/Tokyo", D(2005, 1, 3)),
    ],
)
def test_exchange_date(stamp: dt.datetime, tz: str, expected: dt.date) -> None:
    assert exchange_date(stamp, tz) == expected


def bar(day: dt.date, close: float, volume: float = 100.0) -> BarData:
    return BarData(date=day, open=close - 1, high=close + 1, low=close - 2, close=close, volume=volume)


@pytest.mark.parametrize(
    ("what", "bars", "adj_close", "volume"),
    [
        ("TRADES", [bar(D(2024, 1, 2), 10.0), bar(D(2024, 1, 3), 11.0)], [np.nan, np.nan], [100.0, 100.0]),
        ("ADJUSTED_LAST", [bar(D(2024, 1, 2), 10.0), bar(D(2024, 1, 3), 11.0)], [10.0, 11.0], [100.0, 100.0]),
        ("TRADES", [bar(D(2024, 1, 2), 10.0, volume=-1)], [np.nan], [np.nan]),  # -1: volume not available
        ("TRADES", [], [], []),
    ],
)
def test_bars_frame(what: str, bars: list[BarData], adj_close: list[float], volume: list[float]) -> None:
    frame = bars_frame("SPY", bars, what)
    assert list(frame.columns) == list(BAR_COLUMNS)
    assert frame["symbol"].tolist() == ["SPY"] * len(bars)
    assert frame["date"].tolist() == [b.date for b in bars]
    assert frame[["open", "high", "low", "close"]].to_numpy(float).tolist() == [
        [b.open, b.high, b.low, b.close] for b in bars
    ]
    np.testing.assert_array_equal(frame["adj_close"].to_numpy(float), adj_close)
    np.testing.assert_array_equal(frame["volume"].to_numpy(float), volume)


NEWER = bars_frame("SPY", [bar(D(2024, 1, 3), 10.0), bar(D(2024, 1, 4), 11.0), bar(D(2024, 1, 5), 12.0)], "TRADES")
OLDER = bars_frame("SPY", [bar(D(2024, 1, 2), 1.0), bar(D(2024, 1, 3), 2.0), bar(D(2024, 1, 4), 3.0)], "TRADES")


@pytest.mark.parametrize(
    ("frames", "first", "end", "dates", "closes"),
    [
        # chunks arrive newest first; the newest chunk wins an overlap
        ([NEWER, OLDER], D(2024, 1, 1), D(2024, 1, 31), [2, 3, 4, 5], [1.0, 10.0, 11.0, 12.0]),
        ([OLDER.iloc[::-1]], D(2024, 1, 1), D(2024, 1, 31), [2, 3, 4], [1.0, 2.0, 3.0]),  # sorted by date
        ([NEWER, OLDER], D(2024, 1, 3), D(2024, 1, 4), [3, 4], [10.0, 11.0]),  # clipped to first..end
        ([], D(2024, 1, 1), D(2024, 1, 31), [], []),
    ],
)
def test_combine_chunks(
    frames: list[pd.DataFrame], first: dt.date, end: dt.date, dates: list[int], closes: list[float]
) -> None:
    got = combine_chunks(frames, first, end)
    assert list(got.columns) == list(BAR_COLUMNS)
    assert got["date"].tolist() == [D(2024, 1, day) for day in dates]
    assert got["close"].tolist() == closes


def details(name: str, sec_type: str | None, primary: str = "") -> ContractDetails:
    contract = None if sec_type is None else Contract(symbol="X", secType=sec_type, primaryExchange=primary)
    return ContractDetails(contract=contract, longName=name)


@pytest.mark.parametrize(
    ("found", "sec_type", "primary", "expected"),
    [
        ([details("a", "STK", "ARCA")], "STK", "", ["a"]),
        ([details("a", "STK"), details("b", "OPT")], "STK", "", ["a"]),
        ([details("a", None), details("b", "STK")], "STK", "", ["b"]),
        ([details("a", "CFD"), details("b", "CFD")], "STK", "", ["a", "b"]),  # none of the type: all of them
        ([details("a", "STK", "ARCA"), details("b", "STK", "NASDAQ")], "STK", "ARCA", ["a"]),
        ([details("a", "STK", "ARCA"), details("b", "STK", "NASDAQ")], "STK", "", ["a", "b"]),  # ambiguous
        ([details("a", "STK", "ARCA"), details("b", "STK", "NASDAQ")], "STK", "NYSE", []),
        ([], "STK", "", []),
    ],
)
def test_matching_details(found: list[ContractDetails], sec_type: str, primary: str, expected: list[str]) -> None:
    assert [d.longName for d in matching_details(found, sec_type, primary)] == expected


@pytest.mark.parametrize(
    ("code", "message", "no_data", "pacing"),
    [
        (162, f"{HMDS}HMDS query returned no data: SPY@SMART Trades", True, False),
        (162, f"{HMDS}No head time stamp: SPY", True, False),
        (162, f"{HMDS}Historical data request pacing violation", False, True),
        (200, "No security definition has been found for the request", False, False),
        (366, "No historical data query found for ticker id:7", False, False),
        (322, "Only 50 simultaneous API historical data requests allowed.", False, False),
        (-1, "hist request timed out after 65 s", False, False),
    ],
)
def test_error_classification(code: int, message: str, no_data: bool, pacing: bool) -> None:
    assert (is_no_data(code, message), is_pacing_violation(code, message)) == (no_data, pacing)
