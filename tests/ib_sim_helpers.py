"""Helpers for the IBKR tests: the loopback gateway simulator in a thread, fast settings, CSV readers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from ibkr_pacing import IbSettings
from ibkr_source import fetch_price_history_ibkr
from tools.ib_gateway_sim import SimConfig, SimThread
from watchlist_loader import SymbolFetch, WatchlistEntry

REPO = Path(__file__).resolve().parent.parent

SAMPLE_CSV = REPO / "data" / "sample_daily_bars.csv.gz"
SCALE = 0.005  # pacing windows shrunk 200x: 15 s -> 75 ms, 2 s -> 10 ms, 10 min -> 3 s


def fast_settings(port: int, **overrides: object) -> IbSettings:
    """Settings with short timeouts and backoffs, for a simulator on ``port``."""
    values: dict[str, object] = dict(
        ib_port=port, ib_timeout=5.0, ib_connect_timeout=3.0, ib_reconnect_delay=0.05, ib_pacing_scale=SCALE
    )
    values.update(overrides)
    return IbSettings(**values)  # type: ignore[arg-type]


def start_sim(**config: object) -> SimThread:
    """Start a simulator with the given :class:`SimConfig` fields (stop it with ``.stop()``)."""
    return SimThread(SimConfig(**config))  # type: ignore[arg-type]


def set_today(sim: SimThread, day: dt.date) -> None:
    """Serve bars up to ``day`` from now on (the next "day" of a cron run)."""
    sim.call(setattr, sim.gateway, "today", day)


def fetch_all(
    symbols: list[str], start: dt.date, end: dt.date, settings: IbSettings, since: dict[str, dt.date] | None = None
) -> dict[str, SymbolFetch]:
    """Every result of one fetch, by symbol."""
    entries = [WatchlistEntry(s) for s in symbols]
    return {r.symbol: r for r in fetch_price_history_ibkr(entries, start, end, since or {}, settings)}


def iter_fetch(symbols: list[str], start: dt.date, end: dt.date, settings: IbSettings) -> Iterator[SymbolFetch]:
    """The fetch generator itself (for tests that stop half-way)."""
    return fetch_price_history_ibkr([WatchlistEntry(s) for s in symbols], start, end, {}, settings)


def read_csv(path: Path = SAMPLE_CSV) -> pd.DataFrame:
    """A long-format bar file with ``date`` as ``datetime.date``."""
    frame = pd.read_csv(path)
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame


def expected(frame: pd.DataFrame, symbol: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    """The served rows of ``symbol`` between ``start`` and ``end``, sorted by date."""
    rows = frame[(frame["symbol"] == symbol) & (frame["date"] >= start) & (frame["date"] <= end)]
    return rows.sort_values("date", ignore_index=True)
