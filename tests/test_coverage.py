"""Coverage: exchange sessions (holidays, unscheduled closures), per-symbol windows, stored missing dates."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import coverage_check
import tt_schema as tables
from settings import UserError

D = dt.date


def days(*texts: str) -> np.ndarray:
    return np.array(texts, dtype="datetime64[D]")


def test_nyse_sessions_skip_holidays_and_unscheduled_closures() -> None:
    sandy = coverage_check.expected_sessions(D(2012, 10, 26), D(2012, 11, 2))
    assert sandy.astype(str).tolist() == ["2012-10-26", "2012-10-31", "2012-11-01", "2012-11-02"]
    carter = coverage_check.expected_sessions(D(2025, 1, 6), D(2025, 1, 10))
    assert np.datetime64("2025-01-09") not in carter and len(carter) == 4
    assert len(coverage_check.expected_sessions(D(2005, 1, 3), D(2025, 9, 26))) == 5217  # the sample's row count
    assert len(coverage_check.expected_sessions(D(2020, 1, 2), D(2020, 1, 1))) == 0


def test_sessions_on_or_after_and_unknown_calendar() -> None:
    assert coverage_check.sessions_on_or_after([D(2005, 1, 1), D(2024, 7, 4), D(2024, 7, 5)]) == [
        D(2005, 1, 3), D(2024, 7, 5), D(2024, 7, 5),
    ]  # fmt: skip
    with pytest.raises(UserError, match="--calendar 'NOPE' is not an exchange_calendars name"):
        coverage_check.get_calendar("NOPE")


def test_compute_coverage_counts_missing_extra_and_flags_low_symbols() -> None:
    window = (D(2024, 7, 1), D(2024, 7, 12))  # 9 sessions (July 4 is a holiday)
    full = coverage_check.expected_sessions(*window)
    stored = {
        "FULL": full,
        "GAPPY": np.concatenate([full[:-3], days("2024-07-06")]),  # three sessions missing, one Saturday bar
        "OUTSIDE": np.concatenate([days("2024-06-28"), full]),  # bars before the window do not count
    }
    windows = {"FULL": window, "GAPPY": window, "OUTSIDE": window, "NONE": window, "LATE": (D(2024, 7, 10), window[1])}
    report = coverage_check.compute_coverage(stored, windows, min_coverage=0.8)
    t = report.table
    assert t.loc["FULL", ["expected", "stored", "missing", "extra"]].tolist() == [9, 9, 0, 0]
    assert t.loc["GAPPY", ["stored", "missing", "extra"]].tolist() == [6, 3, 1]
    assert t.loc["GAPPY", "coverage"] == pytest.approx(6 / 9) and t.loc["GAPPY", "below_min"]
    assert t.loc["OUTSIDE", "coverage"] == 1.0 and not t.loc["OUTSIDE", "below_min"]
    assert t.loc["NONE", "coverage"] == 0.0 and t.loc["LATE", "expected"] == 3
    gappy = report.missing_dates[report.missing_dates["symbol"] == "GAPPY"]["date"]
    assert gappy.dt.strftime("%Y-%m-%d").tolist() == ["2024-07-10", "2024-07-11", "2024-07-12"]
    assert len(report.missing_dates) == 3 + 9 + 3  # GAPPY, NONE and the part of LATE's window with no bars


def test_windows_start_at_first_available_and_stop_before_today() -> None:
    windows = coverage_check.coverage_windows(
        ["A", "B"], D(2020, 1, 1), D(2024, 7, 10), {"A": D(2021, 3, 1), "B": None}, today=D(2024, 7, 10)
    )
    assert windows == {"A": (D(2021, 3, 1), D(2024, 7, 9)), "B": (D(2020, 1, 1), D(2024, 7, 9))}


def test_missing_dates_are_stored_and_updated_in_place(engine: sa.Engine) -> None:
    window = (D(2024, 7, 1), D(2024, 7, 12))
    full = coverage_check.expected_sessions(*window)

    def store(stored: dict[str, np.ndarray]) -> tuple[int, int]:
        report = coverage_check.compute_coverage(stored, {"X": window, "Y": window}, 0.95)
        with engine.begin() as conn:
            return coverage_check.store_missing_dates(conn, report)

    def rows() -> list[tuple[str, str]]:
        with engine.connect() as conn:
            got = conn.execute(sa.select(tables.missing_dates).order_by("symbol", "date")).all()
        return [(s, str(d)) for s, d in got]

    assert store({"X": full[2:], "Y": full}) == (2, 0)
    assert rows() == [("X", "2024-07-01"), ("X", "2024-07-02")]
    assert store({"X": full[2:], "Y": full}) == (0, 0)  # unchanged: nothing written
    assert store({"X": np.delete(full, [1, 8]), "Y": full}) == (1, 1)
    assert rows() == [("X", "2024-07-02"), ("X", "2024-07-12")]


def test_read_stored_dates_returns_each_symbols_dates(engine: sa.Engine) -> None:
    import bar_store

    bars = pd.DataFrame({"symbol": ["A", "A", "B"], "date": ["2024-07-01", "2024-07-02", "2024-07-01"]})
    bars[["open", "high", "low", "close", "adj_close", "volume"]] = [1.0, 1.0, 1.0, 1.0, np.nan, 1.0]
    bar_store.upsert_price_bars(engine, bars, source="test")
    got = coverage_check.read_stored_dates(engine, ["A", "B", "C"])
    assert sorted(got) == ["A", "B"]
    assert sorted(got["A"].astype(str)) == ["2024-07-01", "2024-07-02"]
