"""Watchlist loading, symbol normalization, and the result type every price source returns.

(The watchlist parser and the sample/csv/yfinance sources are added by the ingestion issue; the IBKR source
lives in ``ibkr_source.py`` and returns the same :class:`SymbolFetch` records.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from enum import StrEnum

import pandas as pd

BAR_COLUMNS: tuple[str, ...] = ("symbol", "date", "open", "high", "low", "close", "adj_close", "volume")


@dataclasses.dataclass(frozen=True)
class WatchlistEntry:
    """One validated watchlist row. ``symbol`` is canonical (upper case, share class written ``BRK.B``)."""

    symbol: str
    exchange: str = "SMART"
    currency: str = "USD"
    sec_type: str = "STK"
    primary_exchange: str = ""
    name: str = ""
    line: int = 0  # line in the watchlist file, for error messages


class FetchStatus(StrEnum):
    """How fetching one symbol ended."""

    STORED = "stored"  # bars returned (the pipeline then stores them)
    NO_DATA = "no_data"  # the source has no bars in the requested range
    UNKNOWN_SYMBOL = "unknown_symbol"  # the source does not know the symbol
    FAILED = "failed"  # request failed; ``error`` says why (with the IB code when there is one)


@dataclasses.dataclass
class SymbolFetch:
    """What a source returns for one symbol.

    ``bars`` has the columns of :data:`BAR_COLUMNS` (``date`` as ``datetime.date``, ``adj_close`` may be
    NaN) and may be empty. ``metadata`` carries source identifiers for ``tt_symbols`` (e.g. ``ib_con_id``,
    ``primary_exchange``, ``first_available_date``).
    """

    symbol: str
    status: FetchStatus
    bars: pd.DataFrame
    error: str | None = None
    error_code: int | None = None
    requests: int = 0
    metadata: dict[str, object] = dataclasses.field(default_factory=dict)
    first_available_date: dt.date | None = None


def empty_bars() -> pd.DataFrame:
    """An empty frame with the bar columns."""
    return pd.DataFrame({c: pd.Series(dtype="object" if c in ("symbol", "date") else "float64") for c in BAR_COLUMNS})
