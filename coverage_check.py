"""Coverage: the sessions an exchange calendar expects versus the bars stored, per symbol.

Expected sessions come from ``exchange_calendars`` (docs/ingestion.md says why it was chosen over
pandas_market_calendars). A symbol's window runs from max(start, its first available date) to end; today is left
out because its bar may not be final yet. Missing dates are stored in ``tt_missing_dates`` so they can be queried.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import sqlalchemy as sa

import tt_schema as tables
from settings import UserError

DEFAULT_CALENDAR = "XNYS"
_CALENDARS: dict[str, xcals.ExchangeCalendar] = {}
COVERAGE_COLUMNS = ["first_expected", "last_expected", "expected", "stored", "missing", "extra", "coverage"]


def get_calendar(name: str = DEFAULT_CALENDAR, since: dt.date | None = None) -> xcals.ExchangeCalendar:
    """The exchange calendar ``name`` (ISO MIC such as XNYS) from the year of ``since`` (default 1990) to a year ahead.

    Cached per name and rebuilt only when an earlier day is asked for: building 35 years takes ~0.4 s, 5 years ~0.1 s.

    :raise UserError: (exit code 2) for an unknown calendar name.
    """
    since = since or dt.date(1990, 1, 1)
    cal = _CALENDARS.get(name)
    if cal is None or cal.first_session.date() > since:
        try:
            with warnings.catch_warnings():  # exchange_calendars 4.13 trips a pandas 3.1 deprecation warning
                warnings.simplefilter("ignore", getattr(pd.errors, "Pandas4Warning", FutureWarning))
                cal = xcals.get_calendar(name, start=f"{since.year}-01-01")
                cal.sessions  # noqa: B018  (built lazily: build it inside the filter)
        except xcals.errors.InvalidCalendarName:
            raise UserError(f"--calendar {name!r} is not an exchange_calendars name (e.g. XNYS, XLON, XTSE)") from None
        _CALENDARS[name] = cal
    return cal


def expected_sessions(start: dt.date, end: dt.date, calendar: str = DEFAULT_CALENDAR) -> np.ndarray:
    """Sessions of ``calendar`` between ``start`` and ``end`` inclusive, as ``datetime64[D]``."""
    if end < start:
        return np.array([], dtype="datetime64[D]")
    cal = get_calendar(calendar, start)
    lo, hi = max(pd.Timestamp(start), cal.first_session), min(pd.Timestamp(end), cal.last_session)
    return cal.sessions_in_range(lo, hi).to_numpy().astype("datetime64[D]")


def sessions_on_or_after(days: Sequence[dt.date], calendar: str = DEFAULT_CALENDAR) -> list[dt.date]:
    """The first session of ``calendar`` on or after each of ``days`` (one vectorized lookup)."""
    if not len(days):
        return []
    sessions = get_calendar(calendar, min(days)).sessions.to_numpy().astype("datetime64[D]")
    found = sessions[np.searchsorted(sessions, np.array(days, dtype="datetime64[D]"))]
    return [d.astype(dt.date) for d in found]


@dataclasses.dataclass(frozen=True)
class CoverageReport:
    """Coverage per symbol (index ``symbol``, columns :data:`COVERAGE_COLUMNS` plus ``below_min``) and the
    missing sessions as ``symbol, date`` rows. ``coverage`` is NaN when no session is expected."""

    table: pd.DataFrame
    missing_dates: pd.DataFrame


def compute_coverage(
    stored: Mapping[str, np.ndarray],
    windows: Mapping[str, tuple[dt.date, dt.date]],
    min_coverage: float,
    calendar: str = DEFAULT_CALENDAR,
) -> CoverageReport:
    """Compare stored bar dates with the expected sessions of each symbol's window.

    :param stored: symbol -> dates of its stored bars (``datetime64[D]``, any order, may reach outside the window).
    :param windows: symbol -> (first, last) day expected.
    :param min_coverage: symbols whose coverage is below this fraction get ``below_min`` True.
    :param calendar: exchange calendar name.
    :return: a :class:`CoverageReport`; bars on non-session days count as ``extra``, not as stored.
    """
    if not windows:
        return CoverageReport(pd.DataFrame(columns=[*COVERAGE_COLUMNS, "below_min"]), _no_missing())
    sessions = expected_sessions(min(w[0] for w in windows.values()), max(w[1] for w in windows.values()), calendar)
    rows, missing = [], []  # missing: one array of dates per symbol, framed once at the end (cheaper)
    for symbol, (first, last) in windows.items():
        lo, hi = np.datetime64(first, "D"), np.datetime64(last, "D")
        wanted = sessions[(sessions >= lo) & (sessions <= hi)]
        have = stored.get(symbol, np.array([], dtype="datetime64[D]"))
        have = have[(have >= lo) & (have <= hi)]
        hit = np.isin(wanted, have)
        missing.append(wanted[~hit])
        stored_n = int(hit.sum())
        rows.append({
            "symbol": symbol, "first_expected": first, "last_expected": last, "expected": len(wanted),
            "stored": stored_n, "missing": len(wanted) - stored_n, "extra": int((~np.isin(have, wanted)).sum()),
            "coverage": stored_n / len(wanted) if len(wanted) else np.nan,
        })  # fmt: skip
    table = pd.DataFrame(rows).set_index("symbol")
    table["below_min"] = table["coverage"].fillna(0.0) < min_coverage
    counts = [len(m) for m in missing]
    frame = pd.DataFrame({"symbol": np.repeat(list(windows), counts), "date": np.concatenate(missing)})
    return CoverageReport(table, frame)


def symbol_rows(report: CoverageReport, stored: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The ``tt_symbols`` coverage columns of each symbol in ``report`` (first/last stored bar from ``stored``)."""
    now = dt.datetime.now(dt.UTC)
    rows = []
    for symbol, c in report.table.iterrows():
        dates = stored.get(str(symbol))
        rows.append({
            "symbol": symbol, "expected_bars": int(c["expected"]), "stored_bars": int(c["stored"]),
            "missing_bars": int(c["missing"]), "coverage": None if pd.isna(c["coverage"]) else float(c["coverage"]),
            "below_min_coverage": bool(c["below_min"]), "coverage_checked_at": now,
            "first_date": None if dates is None else dates.min().astype(dt.date),
            "last_date": None if dates is None else dates.max().astype(dt.date),
        })  # fmt: skip
    return rows


def describe_missing(report: CoverageReport, limit: int = 8) -> list[str]:
    """One line per symbol with missing sessions: how many, and the first ``limit`` dates."""
    lines = []
    by_symbol = report.missing_dates.groupby("symbol", sort=False)["date"]
    for symbol, dates in by_symbol:
        shown = [f"{d:%Y-%m-%d}" for d in pd.to_datetime(dates.head(limit))]
        more = f" ... (+{len(dates) - limit})" if len(dates) > limit else ""
        expected = report.table.loc[symbol, "expected"]
        lines.append(f"{symbol} misses {len(dates)} of {expected} sessions: {', '.join(shown)}{more}")
    return lines


def _no_missing() -> pd.DataFrame:
    return pd.DataFrame({"symbol": pd.Series(dtype=str), "date": pd.Series(dtype="datetime64[s]")})


def coverage_windows(
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    first_available: Mapping[str, dt.date | None],
    today: dt.date | None = None,
) -> dict[str, tuple[dt.date, dt.date]]:
    """Each symbol's expected window: max(start, first available date) .. min(end, yesterday)."""
    today = today or dt.date.today()
    last = min(end, today - dt.timedelta(days=1))
    return {s: (max(start, first_available.get(s) or start), last) for s in symbols}


def read_stored_dates(engine: sa.Engine, symbols: Sequence[str]) -> dict[str, np.ndarray]:
    """Dates of the stored bars of ``symbols`` as ``datetime64[D]`` arrays, unordered.

    One comma-joined string per symbol (string_agg / group_concat) is several times faster than a row per bar.
    """
    p = tables.prices
    query = (
        sa.select(p.c.symbol, sa.func.aggregate_strings(sa.cast(p.c.date, sa.String), ","))
        .where(p.c.symbol.in_(list(symbols)))
        .group_by(p.c.symbol)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {symbol: np.array(dates.split(","), dtype="datetime64[D]") for symbol, dates in rows}


def store_missing_dates(conn: sa.Connection, report: CoverageReport) -> tuple[int, int]:
    """Make ``tt_missing_dates`` of the report's symbols equal to the report, touching only rows that change.

    :return: (rows inserted, rows deleted).
    """
    m = tables.missing_dates
    symbols = list(report.table.index)
    old = pd.DataFrame(
        conn.execute(sa.select(m.c.symbol, m.c.date).where(m.c.symbol.in_(symbols))).all(), columns=["symbol", "date"]
    )
    old["date"] = pd.to_datetime(old["date"]).dt.date
    new = pd.DataFrame({"symbol": report.missing_dates["symbol"], "date": report.missing_dates["date"]})
    new["date"] = pd.to_datetime(new["date"]).dt.date
    merged = old.merge(new, how="outer", on=["symbol", "date"], indicator=True)
    gone = merged[merged["_merge"] == "left_only"]
    added = merged[merged["_merge"] == "right_only"]
    if len(gone):
        conn.execute(
            m.delete().where(m.c.symbol == sa.bindparam("s")).where(m.c.date == sa.bindparam("d")),
            [{"s": s, "d": d} for s, d in zip(gone["symbol"], gone["date"], strict=True)],
        )
    if len(added):
        conn.execute(m.insert(), added[["symbol", "date"]].to_dict("records"))
    return len(added), len(gone)
