"""Watchlist loading, symbol normalization, and the sample / csv / yfinance price sources.

Every source is called as ``fetch(entries, start, end, since)`` and yields one :class:`SymbolFetch` per entry
(docs/architecture.md); the IBKR source lives in ``ibkr_source.py`` and returns the same records.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import itertools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

import bar_files
from bar_files import Problem
from bar_validation import BAR_COLUMNS, VALUE_COLUMNS
from settings import REPO_ROOT, ExitCode, UserError

log = logging.getLogger("mvp_pipeline")

SAMPLE_CSV = REPO_ROOT / "data" / "sample_daily_bars.csv.gz"
WATCHLIST_COLUMNS = ("symbol", "exchange", "currency", "sec_type", "primary_exchange", "name", "notes")
MAX_SYMBOL_LENGTH = 12
# canonical form: a root, optionally one share-class suffix after a dot (BRK.B)
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,8}(\.[A-Z0-9]{1,4})?$")
_CODE_RE = re.compile(r"^[A-Z0-9.]{1,16}$")
_SOURCE_SEPARATOR = {"ibkr": " ", "yfinance": "-"}  # share-class separator each source wants

Fetcher = Callable[[list["WatchlistEntry"], dt.date, dt.date, dict[str, dt.date]], Iterator["SymbolFetch"]]


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
    NaN), file sources also ``file`` and ``line``; it may be empty. ``metadata`` carries source identifiers
    for ``tt_symbols`` (e.g. ``ib_con_id``, ``primary_exchange``, ``first_available_date``).
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


# ---------------------------------------------------------------------------------------------------- symbols


def canonical_symbol(text: str) -> str:
    """Canonical form of a symbol in any common notation (``brk-b``, ``BRK B``, ``BRK/B`` -> ``BRK.B``).

    :raise ValueError: when the result is not a valid symbol (letters, digits, one share-class suffix).
    """
    cleaned = re.sub(r"\s+", " ", str(text).strip().upper())
    cleaned = re.sub(r"^([A-Z0-9]+)[ \-/.]([A-Z0-9]{1,4})$", r"\1.\2", cleaned)
    if len(cleaned) > MAX_SYMBOL_LENGTH or not _SYMBOL_RE.match(cleaned):
        raise ValueError(
            f"invalid symbol {text!r}: use letters and digits, optionally one share class (BRK.B, BRK-B or BRK B), "
            f"at most {MAX_SYMBOL_LENGTH} characters"
        )
    return cleaned


def to_source_symbol(symbol: str, source: str) -> str:
    """A canonical symbol in the notation ``source`` expects: ``BRK B`` for ibkr, ``BRK-B`` for yfinance."""
    return symbol.replace(".", _SOURCE_SEPARATOR.get(source, "."))


# ---------------------------------------------------------------------------------------------------- watchlist


def _entry_from_row(row: dict[str, str], where: str, line: int) -> WatchlistEntry:
    def code(column: str, default: str) -> str:
        value = (row.get(column) or "").strip().upper() or default
        if value and not _CODE_RE.match(value):
            raise UserError(f"{where}: invalid {column} {value!r}")
        return value

    try:
        symbol = canonical_symbol(row.get("symbol") or "")
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    currency = code("currency", "USD")
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise UserError(f"{where}: currency {currency!r} is not a 3-letter code")
    name = (row.get("name") or row.get("notes") or "").strip()
    return WatchlistEntry(
        symbol, code("exchange", "SMART"), currency, code("sec_type", "STK"), code("primary_exchange", ""), name, line
    )


def _data_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            for number, text in enumerate(handle, start=1):
                if text.strip() and not text.lstrip().startswith("#"):
                    yield number, text
    except OSError as exc:
        raise UserError(f"watchlist {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"watchlist {path}: not a UTF-8 text file") from None


def load_watchlist(path: Path) -> list[WatchlistEntry]:
    """Read and validate a watchlist CSV.

    Accepts a BOM, ``#`` comment lines, blank lines, stray whitespace and any case in the header and values.
    Duplicate symbols (in any notation) are merged, keeping the first, with a warning.

    :param path: CSV with a header; ``symbol`` required, optional columns in :data:`WATCHLIST_COLUMNS`.
    :raise UserError: (exit code 2) naming the file and line for a missing file, a missing ``symbol`` column,
        unknown columns, a malformed line or symbol, or a watchlist without any symbol.
    """
    lines = list(_data_lines(path))
    if not lines:
        raise UserError(f"watchlist {path}: no header and no symbols (only blank or # comment lines)")
    header_line, header_text = lines[0]
    header = [h.strip().lower().replace(" ", "_") for h in next(csv.reader([header_text]))]
    if "symbol" not in header:
        raise UserError(
            f"watchlist {path}, line {header_line}: no 'symbol' column in the header {header_text.strip()!r}"
        )
    unknown = [h for h in header if h not in WATCHLIST_COLUMNS]
    if unknown:
        raise UserError(
            f"watchlist {path}, line {header_line}: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(WATCHLIST_COLUMNS)}"
        )
    entries: dict[str, WatchlistEntry] = {}
    for number, text in lines[1:]:
        fields = next(csv.reader([text]))
        where = f"watchlist {path}, line {number}"
        if len(fields) > len(header):
            raise UserError(f"{where}: {len(fields)} fields, the header has {len(header)}")
        entry = _entry_from_row(dict(zip(header, fields, strict=False)), where, number)
        if entry.symbol in entries:
            first = entries[entry.symbol]
            log.warning("%s: %s duplicates line %d; keeping line %d", where, entry.symbol, first.line, first.line)
            continue
        entries[entry.symbol] = entry
    if not entries:
        raise UserError(f"watchlist {path}: no symbols (only a header)")
    return list(entries.values())


# ---------------------------------------------------------------------------------------------------- files


def read_bars_file(path: Path, date_format: str | None = None) -> tuple[pd.DataFrame, list[Problem]]:
    """Bars of a bar file or of a folder of them, in any layout ``bar_files`` knows (long, Yahoo, Stooq, Alpha
    Vantage, IB, European Excel ...; gzip allowed); a folder's files named by symbol (``spy.us.txt``).

    :return: (bars in :data:`BAR_COLUMNS` + ``SOURCE_COLUMNS`` (file, line) with canonical symbols; one
        ``bar_files.Problem`` per row or folder file not read).
    :raise UserError: (exit code 2) one line naming the file, when a file (not a folder's file) cannot be read.
    """
    if Path(path).is_dir():
        return bar_files.read_bar_files(path, canonical=canonical_symbol, date_format=date_format)
    return bar_files.read_bar_file(path, canonical=canonical_symbol, date_format=date_format)


def frame_source(bars: pd.DataFrame, overlap_sessions: int, label: str, problems: Sequence[Problem] = ()) -> Fetcher:
    """A source over bars already in memory (the sample and csv sources), read by :func:`read_bars_file`.

    Incremental symbols (in ``since``) get the bars from ``overlap_sessions`` business days before their last
    stored bar; the first date in the file is reported as the symbol's first available date, unless some of the
    symbol's rows were not read (a ``problems`` entry with a ``line``). A symbol without bars whose file could
    not be read (a ``problems`` entry with ``line`` 0) fails with that file's reason.
    """
    bars = bars.sort_values(["symbol", "date"], kind="stable", ignore_index=True)
    symbols, dates = bars["symbol"].astype(str).to_numpy(), bars["date"].to_numpy()
    edges = np.r_[0, np.flatnonzero(symbols[1:] != symbols[:-1]) + 1, len(bars)]
    spans = {symbols[a]: (int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a}  # none for no bars
    unread = {p.symbol: p for p in reversed(problems) if p.line == 0 and p.symbol}  # the first one per symbol
    # a row not read may be the first: then the first bar's date is not the first available date
    partly_read = {p.symbol for p in problems if p.line}

    def fetch(
        entries: list[WatchlistEntry], start: dt.date, end: dt.date, since: dict[str, dt.date]
    ) -> Iterator[SymbolFetch]:
        extra = sorted(set(spans) - {e.symbol for e in entries})
        if extra:
            log.info("%s: %d symbol(s) not in the watchlist, ignored: %s", label, len(extra), _shorten(extra))
        for entry in entries:
            if entry.symbol not in spans:
                if entry.symbol in unread:
                    problem = unread[entry.symbol]
                    why = f"{problem.file}: {problem.reason}" + (f" ({problem.raw})" if problem.raw else "")
                    yield SymbolFetch(entry.symbol, FetchStatus.FAILED, empty_bars(), why)
                else:
                    yield SymbolFetch(entry.symbol, FetchStatus.UNKNOWN_SYMBOL, empty_bars(), f"not in {label}")
                continue
            a, b = spans[entry.symbol]
            lo = _fetch_from(start, since.get(entry.symbol), overlap_sessions)
            first = a + np.searchsorted(dates[a:b], np.datetime64(lo), "left")
            last = a + np.searchsorted(dates[a:b], np.datetime64(end), "right")
            part = bars.iloc[first:last]
            known = entry.symbol not in since and entry.symbol not in partly_read
            meta = {"first_available_date": pd.Timestamp(dates[a]).date()} if known else {}
            status = FetchStatus.STORED if len(part) else FetchStatus.NO_DATA
            error = None if len(part) else f"no bars in {label} between {lo} and {end}"
            yield SymbolFetch(entry.symbol, status, part, error, metadata=meta)

    return fetch


def _fetch_from(start: dt.date, last_stored: dt.date | None, overlap_sessions: int) -> dt.date:
    """First day to fetch: ``start``, or ``overlap_sessions`` business days before the last stored bar."""
    if last_stored is None:
        return start
    back = np.busday_offset(np.datetime64(last_stored, "D"), -overlap_sessions, roll="backward")
    return max(start, back.astype(dt.date))


def _shorten(items: list[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" ... (+{len(items) - limit})" if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------------- yfinance


def yfinance_source(overlap_sessions: int) -> Fetcher:
    """Daily bars from Yahoo Finance through yfinance (unadjusted OHLC plus ``adj_close``), one request per symbol.

    Only used when asked for with ``--source yfinance``. :raise UserError: ``SOURCE_UNAVAILABLE`` when Yahoo
    cannot be reached for the first symbol (no network); later network errors fail only that symbol.
    """

    def fetch(
        entries: list[WatchlistEntry], start: dt.date, end: dt.date, since: dict[str, dt.date]
    ) -> Iterator[SymbolFetch]:
        import yfinance as yf

        logging.getLogger("yfinance").setLevel(logging.CRITICAL)  # its own error lines duplicate ours
        yf.config.debug.hide_exceptions = False
        reached = False
        for entry in entries:
            lo = _fetch_from(start, since.get(entry.symbol), overlap_sessions)
            ticker = to_source_symbol(entry.symbol, "yfinance")
            try:
                raw = yf.Ticker(ticker).history(
                    start=lo.isoformat(), end=(end + dt.timedelta(days=1)).isoformat(), auto_adjust=False, actions=False
                )
            except OSError as exc:  # curl_cffi connection errors are OSErrors
                if not reached:
                    raise UserError(
                        f"yfinance: cannot reach Yahoo Finance: {exc}", ExitCode.SOURCE_UNAVAILABLE
                    ) from None
                yield SymbolFetch(entry.symbol, FetchStatus.FAILED, empty_bars(), f"yfinance {ticker}: {exc}")
                continue
            except Exception as exc:  # yfinance raises YF*Error for unknown or delisted tickers
                reached = True
                yield SymbolFetch(entry.symbol, FetchStatus.UNKNOWN_SYMBOL, empty_bars(), f"yfinance {ticker}: {exc}")
                continue
            reached = True
            yield _yahoo_fetch(entry.symbol, raw, full=entry.symbol not in since)

    return fetch


def _yahoo_fetch(symbol: str, raw: pd.DataFrame, full: bool) -> SymbolFetch:
    """A yfinance history frame (DatetimeIndex in the exchange zone) as a SymbolFetch."""
    if raw.empty:
        return SymbolFetch(symbol, FetchStatus.NO_DATA, empty_bars(), "yfinance returned no bars")
    frame = raw.rename(columns=lambda c: str(c).strip().lower().replace(" ", "_"))
    bars = pd.DataFrame({"symbol": symbol, "date": pd.DatetimeIndex(raw.index).tz_localize(None).normalize()})
    for col in VALUE_COLUMNS:
        bars[col] = frame[col].to_numpy("float64") if col in frame else np.nan
    bars = bars.reset_index(drop=True)
    meta = {"first_available_date": bars["date"].min().date()} if full else {}
    return SymbolFetch(symbol, FetchStatus.STORED, bars, metadata=meta, requests=1)
