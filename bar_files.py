"""Bar files as people really have them: the layouts other tools write, read without flags where unambiguous.

:func:`read_bar_file` reads one file into bars (with the file and line of each row) and a :class:`Problem` per
row it could not read; :func:`read_bar_files` reads a folder, reporting unreadable files and conflicting files
for one symbol instead of stopping; :func:`summarize_problems` condenses problems for printing. Pure: no I/O
but reading the files.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import io
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

import bar_parsing
from bar_validation import BAR_COLUMNS, PRICE_COLUMNS, SOURCE_COLUMNS, VALUE_COLUMNS, validate_bars
from settings import UserError

SUFFIXES = (".csv", ".txt", ".csv.gz", ".txt.gz")
Canonicalizer = Callable[[str], str]  # canonical symbol; ValueError when the text is not a symbol

_ALIASES = {
    "date": "date", "timestamp": "date", "datetime": "date",
    "open": "open", "high": "high", "low": "low", "close": "close", "close_last": "close",
    "adj_close": "adj_close", "adjclose": "adj_close", "adjusted_close": "adj_close",
    "volume": "volume", "vol": "volume", "symbol": "symbol", "ticker": "symbol",
}  # fmt: skip
# columns of known layouts that carry nothing we store (Stooq, yfinance, Alpha Vantage, IB)
_IGNORED = frozenset(
    {"per", "time", "openint", "dividend_amount", "split_coefficient", "dividends", "stock_splits",
     "capital_gains", "average", "barcount", "wap"}
)  # fmt: skip
_REQUIRED = ("date", "open", "high", "low", "close", "volume")
_DELIMITERS = (",", ";", "\t", "|")
_HEAD_LINES = 64  # the header is among the first lines
_EXPECTED = "expected a header such as Date,Open,High,Low,Close,Adj Close,Volume"


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something not read: a row (``line`` >= 1) or a whole file (``line`` 0), with the raw value and why."""

    file: str
    line: int
    symbol: str | None
    raw: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        raw = f" ({self.raw!r})" if self.raw or self.line else ""  # an empty cell is shown, an empty file's raw not
        return f"{where}: {self.symbol + ': ' if self.symbol else ''}{self.reason}{raw}"


class BarFileError(UserError):
    """A file that cannot be read at all; the message is one line naming the file."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


@dataclasses.dataclass(frozen=True)
class _Layout:
    delimiter: str
    columns: dict[str, int]  # bar column -> field index
    width: int  # fields in the header
    first_line: int  # 0-based index of the first data line
    symbol: str | None  # the ticker a header gives (yfinance's "Ticker" row)


# ---------------------------------------------------------------------------------------------------- text


def _read_text(source: str | Path | BinaryIO, name: str) -> str:
    try:
        data = Path(source).read_bytes() if isinstance(source, str | Path) else source.read()
    except FileNotFoundError:
        raise BarFileError(name, "no such file") from None
    except OSError as exc:
        raise BarFileError(name, f"cannot read ({exc.strerror or exc})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise BarFileError(name, "corrupt or truncated gzip file") from None
    elif name.lower().endswith(".gz"):
        raise BarFileError(name, "not a gzip file although the name ends in .gz")
    try:  # Excel's "Unicode text" export is UTF-16 with a BOM
        text = data.decode("utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BarFileError(name, f"not UTF-8 text (byte {exc.start}); save it as CSV UTF-8") from None
    if "\x00" in text:
        raise BarFileError(name, "a binary file, not CSV text")
    if not text.strip():
        raise BarFileError(name, "empty file")
    return text


def _column_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.strip().strip("<>").lower()).strip("_")


def _columns(fields: list[str]) -> tuple[dict[str, int], list[str]]:
    """Bar column -> field index, and the names that are neither bar columns nor known extras."""
    keys = [_column_key(f) for f in fields]
    has_date = "date" in map(_ALIASES.get, keys)
    columns: dict[str, int] = {}
    unknown = []
    for i, key in enumerate(keys):
        name = _ALIASES.get(key)
        if i == 0 and key in ("", "unnamed_0", "price"):  # pandas to_csv()'s index, yfinance's "Price" corner
            if has_date:
                continue  # an index beside the date column
            name = "date"
        if name in columns:
            raise ValueError(f"two {name} columns ({fields[columns[name]]!r} and {fields[i]!r})")
        if name:
            columns[name] = i
        elif key and key not in _IGNORED:  # blank names of trailing empty columns are harmless
            unknown.append(fields[i])
    return columns, unknown


def _split(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:  # a field over the csv module's size limit: garbage, reported by the caller
        return [line]


def _layout(lines: list[str], name: str) -> _Layout:
    """The header: its delimiter (the one that makes the most column names known) and columns."""
    at = next((i for i, line in enumerate(lines) if line.strip()), None)
    if at is None:
        raise BarFileError(name, f"no header in the first {len(lines)} lines")
    delimiters: tuple[str, ...] = _DELIMITERS
    if sep := re.fullmatch(r'"?sep=(.)"?', lines[at].strip()):  # Excel's delimiter hint line
        delimiters, at = (sep[1],), next((i for i in range(at + 1, len(lines)) if lines[i].strip()), len(lines) - 1)
    header = lines[at]
    try:
        found = [(_columns(_split(header, d)), d) for d in delimiters]
    except ValueError as exc:
        raise BarFileError(name, f"line {at + 1}: {exc}") from None
    (columns, unknown), delimiter = max(found, key=lambda f: len(f[0][0]))
    if len(columns) < 2:
        raise BarFileError(
            name, f"cannot tell the delimiter or the columns from line {at + 1} {header[:80]!r}; {_EXPECTED}, "
            "separated by ',' ';' tab or '|'"
        )  # fmt: skip
    missing = [c for c in _REQUIRED if c not in columns]
    if missing or unknown:
        problem = f"missing column(s) {', '.join(missing)}" if missing else f"unknown column(s) {', '.join(unknown)}"
        raise BarFileError(name, f"line {at + 1}: {problem}; {_EXPECTED}")
    fields = _split(header, delimiter)
    first, symbol = at + 1, None
    below = [_split(line, delimiter) or [""] for line in lines[first : first + 2]] + [[""], [""]]
    if _column_key(fields[0]) == "price" and _column_key(below[0][0]) == "ticker":  # yfinance: Price/Ticker/Date
        tickers = set(below[0][1:]) - {""}
        if len(tickers) != 1:
            raise BarFileError(name, f"{len(tickers)} tickers in one yfinance file; save one ticker per file")
        symbol = tickers.pop()
        first += 2 if _column_key(below[1][0]) == "date" and not any(below[1][1:]) else 1
    return _Layout(delimiter, columns, len(fields), first, symbol)


def _fields(body: str, layout: _Layout, name: str) -> tuple[pd.DataFrame, list[Problem]]:
    """The bar fields of the data lines (``body``), one column per bar column, with a ``line`` column; lines
    without any value dropped. Columns are strings, except those of a ',' file that hold only numbers (floats)."""
    if not body:
        raise BarFileError(name, "no data rows")
    text_only = {layout.columns[c] for c in ("date", "symbol") if c in layout.columns}
    dtype = dict.fromkeys(text_only, str) if layout.delimiter == "," else str  # others may have decimal commas
    width, problems = layout.width, []
    try:  # fast: one row per line (blank ones too), an error for a line with too many fields
        table = pd.read_csv(
            io.BytesIO(body.encode()), sep=layout.delimiter, header=None, names=range(width), dtype=dtype,
            na_filter=False, skip_blank_lines=False, index_col=False, engine="c",
        )  # fmt: skip
    except pd.errors.ParserError:
        table = None
    if table is None or len(table) != body.count("\n") + 1:  # extra fields, or a quoted newline: line by line
        lines = body.split("\n")
        rows = [_split(text, layout.delimiter) for text in lines]
        rows = [r[:width] if not any(r[width:]) else r for r in rows]  # empty extra fields are harmless
        problems = [Problem(name, n, None, t, f"{len(r)} fields, the header has {width}")
                    for n, (t, r) in enumerate(zip(lines, rows, strict=True), layout.first_line + 1)
                    if len(r) > width]  # fmt: skip
        table = pd.DataFrame(
            [r + [""] * (width - len(r)) if len(r) <= width else [""] * width for r in rows], dtype=str
        )
    table = table.loc[:, sorted(layout.columns.values())].rename(columns={i: c for c, i in layout.columns.items()})
    table["line"] = np.arange(len(table)) + layout.first_line + 1
    if any(table[c].dtype.kind in "fiu" for c in layout.columns):  # a number in every line: no blank line
        return table, problems
    return table[np.logical_or.reduce([(table[c] != "").to_numpy(bool) for c in layout.columns])], problems


# ---------------------------------------------------------------------------------------------------- symbols


def _strip_market(text: str) -> str:
    return re.sub(r"\.us$", "", text.strip(), flags=re.IGNORECASE)  # Stooq writes US tickers as SPY.US


def symbol_from_file_name(name: str, canonical: Canonicalizer) -> str:
    """The symbol a file name gives: ``SPY.csv``, ``spy.us.txt``, ``spy_us_d.csv`` (stooq.com), ``SPY (1).csv``
    (a repeated download), ``BRK-B.csv.gz`` -> ``BRK.B``. :raise ValueError: when it gives none."""
    stem = re.sub(r"(\.(csv|txt))?(\.gz)?$", "", Path(name).name, flags=re.IGNORECASE)
    stem = re.sub(r"_us_d$", "", re.sub(r"\s*\(\d+\)$", "", stem), flags=re.IGNORECASE)
    return canonical(_strip_market(stem))


def _symbol_or_none(name: str, canonical: Canonicalizer) -> str | None:
    try:
        return symbol_from_file_name(name, canonical)
    except ValueError:
        return None


def _symbols(raw: pd.Series, canonical: Canonicalizer) -> tuple[np.ndarray, np.ndarray]:
    """Canonical symbols (raw text where invalid) and a status per row: 0 valid, 1 missing, 2 invalid."""
    codes, uniques = pd.factorize(raw)
    out, status = [], []
    for text in uniques:
        try:
            out.append(canonical(_strip_market(text)))
            status.append(0)
        except ValueError:
            out.append(text.strip())
            status.append(2 if text.strip() else 1)
    return np.array(out, object)[codes], np.array(status, np.int8)[codes]


# ---------------------------------------------------------------------------------------------------- files


def read_bar_file(
    source: str | Path | BinaryIO, *, canonical: Canonicalizer, name: str | None = None, date_format: str | None = None
) -> tuple[pd.DataFrame, list[Problem]]:
    """Read one bar file in any known layout.

    :param source: a path or a binary file object (gzip is recognized by its content).
    :param canonical: maps a symbol text to its canonical form, ValueError when invalid
        (``watchlist_loader.canonical_symbol``).
    :param name: the file's name in messages and, without a symbol column, the symbol (default: the path).
    :param date_format: a ``strptime`` format for dates, needed only when day/month order is ambiguous.
    :return: (bars with :data:`BAR_COLUMNS` + :data:`SOURCE_COLUMNS` in file order; problems, one
        per row not read). Rows with a missing, unparseable or non-finite value are left out and reported;
        an empty ``adj_close`` is kept as NaN. Whether a bar makes sense (high >= low ...) is not checked here.
    :raise BarFileError: (one line naming the file) when the file cannot be read at all.
    """
    if name is None:
        name = str(source) if isinstance(source, str | Path) else str(getattr(source, "name", "<stream>"))
    text = _read_text(source, name)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    head = text.split("\n", _HEAD_LINES)[:_HEAD_LINES]
    layout = _layout(head, name)
    table, problems = _fields(text[sum(len(line) + 1 for line in head[: layout.first_line]) :].rstrip(), layout, name)
    if "symbol" not in table:
        try:
            symbol = (
                canonical(_strip_market(layout.symbol)) if layout.symbol else symbol_from_file_name(name, canonical)
            )
        except ValueError as exc:
            raise BarFileError(name, f"no symbol column, and the name gives no symbol: {exc}") from None
        table["symbol"] = symbol
        problems = [dataclasses.replace(p, symbol=symbol) for p in problems]
    bars, rejected = _values(table, layout.delimiter, name, canonical, date_format)
    return bars, problems + rejected


def _values(
    table: pd.DataFrame, delimiter: str, name: str, canonical: Canonicalizer, date_format: str | None
) -> tuple[pd.DataFrame, list[Problem]]:
    """The fields read as bars; a problem for each row with a field that does not read (the first such field)."""
    symbols, symbol_status = _symbols(table["symbol"], canonical)
    decimal = "."  # a ',' file has decimal points; others tell by their prices
    try:
        if delimiter != ",":
            prices = pd.concat([table[c] for c in (*PRICE_COLUMNS, "adj_close") if c in table], ignore_index=True)
            decimal = bar_parsing.decimal_mark(prices.str.strip(), delimiter)
        dates = bar_parsing.dates(table["date"], date_format)
    except bar_parsing.CellError as exc:
        raise BarFileError(name, str(exc)) from None
    values = {c: bar_parsing.numbers(table[c], decimal) for c in VALUE_COLUMNS if c in table}
    checks = [(symbol_status == 1, "missing symbol", "symbol"), (symbol_status == 2, "invalid symbol", "symbol")]
    checks.append((np.isnat(dates), "unparseable date", "date"))
    for column, (_, status) in values.items():  # an empty adj_close is allowed (status 0 = missing)
        checks += [
            (status == code, f"{why} {column}", column)
            for code, why in bar_parsing.REJECTED_STATUS
            if column != "adj_close" or code
        ]
    failed = np.select([bad for bad, _, _ in checks], np.arange(1, len(checks) + 1), 0)  # the first check failed
    line = table["line"].to_numpy()
    problems = []
    for i in np.flatnonzero(failed):
        _, why, column = checks[failed[i] - 1]
        problems.append(Problem(name, int(line[i]), symbols[i] or None, str(table[column].iat[i]), why))
    columns = {c: values[c][0] if c in values else np.nan for c in VALUE_COLUMNS}
    bars = pd.DataFrame({"symbol": symbols, "date": dates, **columns, "file": name, "line": line})
    return bars[failed == 0].reset_index(drop=True), problems


def read_bar_files(
    source: str | Path | Iterable[str | Path], *, canonical: Canonicalizer, date_format: str | None = None
) -> tuple[pd.DataFrame, list[Problem]]:
    """Read a folder's bar files (``*.csv``, ``*.txt``, and gzipped) or the files given, each as
    :func:`read_bar_file` does. A file that cannot be read is a problem (``line`` 0, with the symbol its name
    gives, if any) and does not stop the others. Files that give the same symbol are merged: a bar they give
    alike counts once; when they give different bars for one date, none of them is used for that symbol and a
    "conflicting files" problem names them all.

    :raise BarFileError: when ``source`` is not a folder or holds no bar file.
    """
    if isinstance(source, str | Path):
        folder = Path(source)
        if not folder.is_dir():
            raise BarFileError(str(folder), "not a folder")
        files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(SUFFIXES) and not p.name.startswith("."))
        if not files:
            raise BarFileError(str(folder), f"no bar files ({', '.join(SUFFIXES)})")
    else:
        files = [Path(p) for p in source]
    parts, problems = [], []
    for file in files:
        try:
            bars, found = read_bar_file(file, canonical=canonical, date_format=date_format)
        except BarFileError as exc:  # the symbol the name gives, so a watchlist symbol can say why it is missing
            problems.append(Problem(str(file), 0, _symbol_or_none(file.name, canonical), "", exc.reason))
            continue
        parts.append(bars)
        problems += found
    if not parts:
        types = (object, "datetime64[ns]", *["float64"] * len(VALUE_COLUMNS), object, "int64")
        columns = zip((*BAR_COLUMNS, *SOURCE_COLUMNS), types, strict=True)
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns}), problems
    bars, conflicts = _one_copy_per_symbol(pd.concat(parts, ignore_index=True))
    return bars, problems + conflicts


def _one_copy_per_symbol(bars: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    """One copy of each bar that several files of a symbol give alike (a newer download, ``SPY (1).csv``); files
    that only add dates add them. A symbol whose files give different bars for one date is left out whole."""
    pairs = bars[["symbol", "file"]].drop_duplicates()
    shared = bars["symbol"].isin(pairs.loc[pairs["symbol"].duplicated(), "symbol"]).to_numpy()
    if not shared.any():
        return bars, []
    part = bars[shared]
    first = part.groupby(list(BAR_COLUMNS), dropna=False, sort=False)["file"].transform("first")
    copy = (part["file"] != first).to_numpy()  # the same bar in an earlier file: one copy is enough
    rest = part[~copy]
    files_per_date = rest.groupby(["symbol", "date"], sort=False)["file"].nunique()
    conflicted = files_per_date[files_per_date > 1].reset_index()
    problems = []
    for symbol, dates in conflicted.groupby("symbol", sort=True):
        files = sorted(part.loc[part["symbol"] == symbol, "file"].unique())
        raw = f"{', '.join(files)}: {len(dates)} date(s) differ, first {dates['date'].min():%Y-%m-%d}"
        problems.append(Problem(files[0], 0, str(symbol), raw, "conflicting files for one symbol"))
    drop = np.zeros(len(bars), bool)
    drop[np.flatnonzero(shared)[copy]] = True
    drop |= bars["symbol"].isin(conflicted["symbol"]).to_numpy()
    return bars[~drop].reset_index(drop=True), problems


# ---------------------------------------------------------------------------------------------------- reports


def validation_problems(bars: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    """:func:`bar_validation.validate_bars` on bars read here: (valid bars, one problem per rejected row with
    its file, line and values)."""
    valid, rejected = validate_bars(bars)
    bad = bars[~valid]
    raw = bad.loc[:, ["open", "high", "low", "close", "volume"]].astype(str).agg(",".join, axis=1)
    problems = [
        Problem(f, int(n), s, r, why)
        for f, n, s, r, why in zip(bad["file"], bad["line"], bad["symbol"], raw, rejected["reason"], strict=True)
    ]
    return bars[valid].reset_index(drop=True), problems


def summarize_problems(problems: Sequence[Problem], *, examples: int = 3, symbols: int = 5) -> list[str]:
    """Lines for printing: per reason (most frequent first) its count, the symbols with most, and the first
    examples (file:line 'raw'); the full list is for the log."""
    by_reason: dict[str, list[Problem]] = defaultdict(list)
    for problem in problems:
        by_reason[problem.reason].append(problem)
    lines = []
    for reason, items in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        counts = Counter(p.symbol or "?" for p in items)
        top = ", ".join(f"{s} {n}" for s, n in counts.most_common(symbols))
        more = f" +{len(counts) - symbols} more" if len(counts) > symbols else ""
        shown = "; ".join(f"{p.file}:{p.line} {p.raw!r}" if p.line else f"{p.file} {p.raw!r}" for p in items[:examples])
        lines.append(f"{reason}: {len(items)} in {len(counts)} symbol(s) ({top}{more}); e.g. {shown}")
    return lines
