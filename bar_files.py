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
import datetime as dt
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

from bar_validation import PRICE_COLUMNS, VALUE_COLUMNS, validate_bars
from settings import UserError

BAR_COLUMNS: tuple[str, ...] = ("symbol", "date", *VALUE_COLUMNS)
SOURCE_COLUMNS = ("file", "line")  # where each row came from (line 1 is the file's first line)
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
_MISSING = frozenset({"", "null", "none", "n/a", "na", "#n/a", "-"})
_NON_FINITE = frozenset({"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})
_MONTHS = {
    m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))
}
_TIME = r"(?:[ T]+\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s*[AaPp][Mm])?)?\s*(?:Z|UTC|[+-]\d{2}:?\d{2})?"
_DATE_FORMS = (  # (kind, pattern); the time and offset are dropped: the date as written is the session date
    ("ymd", re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})" + _TIME)),
    ("ymd", re.compile(r"(\d{4})(\d{2})(\d{2})" + _TIME)),  # Stooq, IB: 20200102
    ("xxy", re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})" + _TIME)),  # M/D/Y or D/M/Y, decided per file
    ("dmy", re.compile(r"(\d{1,2})[- ]([A-Za-z]{3,9})\.?[- ](\d{4})" + _TIME)),  # 4-Jan-1999
    ("mdy", re.compile(r"([A-Za-z]{3,9})\.?[- ](\d{1,2}),?[- ](\d{4})" + _TIME)),  # Jan 4, 1999
)


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
        return f"{where}: {self.symbol + ': ' if self.symbol else ''}{self.reason} ({self.raw!r})"


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
            io.StringIO(body), sep=layout.delimiter, header=None, names=range(width), dtype=dtype,
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


# ---------------------------------------------------------------------------------------------------- values


def _decimal_mark(cells: pd.Series, delimiter: str, name: str) -> str:
    """The decimal mark, decided per file from the prices: a mark followed by other than three digits, or after
    the other mark, is decimal; when no price tells, ';' files use ',' (European Excel) and others '.'."""
    default, other = (",", ".") if delimiter == ";" else (".", ",")

    def decimal(mark: str, among: pd.Series) -> pd.Series:
        rest = re.escape("." if mark == "," else ",")
        mark = re.escape(mark)
        return among[among.str.contains(rf"{mark}(?:\d{{0,2}}|\d{{4,}})(?:[eE][+-]?\d+)?$|{rest}\d*{mark}")]

    evidence = decimal(other, cells[cells.str.contains(other, regex=False)])
    if evidence.empty:
        return default
    against = decimal(default, cells)
    if not against.empty:
        raise BarFileError(name, f"prices mix decimal marks ({evidence.iloc[0]!r} and {against.iloc[0]!r})")
    return other


_STATUS = ((0, "missing"), (2, "unparseable"), (3, "non-finite"))  # the status codes of _numbers that reject a row


def _numbers(cells: pd.Series, decimal: str) -> tuple[np.ndarray, np.ndarray]:
    """Floats and a status per cell: 1 read, 0 missing, 2 not a number, 3 not finite."""
    if cells.dtype.kind == "b":  # the CSV parser read True/False
        cells = cells.astype(str)
    if cells.dtype.kind in "fiu":  # the CSV parser read every cell as a number
        values = cells.to_numpy("float64")
        return values, np.where(np.isfinite(values), 1, 3).astype(np.int8)
    values = np.full(len(cells), np.nan) if decimal != "." else pd.to_numeric(cells, errors="coerce")
    values = np.asarray(values, "float64").copy()
    retry = np.isnan(values)
    text = cells[retry].str.strip()
    if retry.any():  # thousands separators, decimal commas, a currency sign
        group, mark = re.escape("," if decimal == "." else "."), re.escape(decimal)
        pattern = rf"[+-]?\$?(?:\d{{1,3}}(?:[{group} \u00a0\u202f']\d{{3}})+|\d+)(?:{mark}\d*)?(?:[eE][+-]?\d+)?"
        cleaned = text.where(text.str.fullmatch(pattern), "").str.replace(rf"[^\d+\-eE{mark}]", "", regex=True)
        values[retry] = pd.to_numeric(cleaned.str.replace(decimal, ".", regex=False), errors="coerce")
    status = np.ones(len(values), np.int8)
    bad = ~np.isfinite(values)
    if bad.any():
        words = cells[bad].str.strip().str.lower()
        infinite = words.isin(_NON_FINITE).to_numpy() | np.isinf(values[bad])
        status[bad] = np.where(words.isin(_MISSING).to_numpy(), 0, np.where(infinite, 3, 2))
    return values, status


def _date_parts(kind: str, groups: tuple[str, ...], day_first: bool) -> dt.date | None:
    if kind == "ymd":
        y, m, d = groups
    elif kind == "xxy":
        d, m, y = groups if day_first else (groups[1], groups[0], groups[2])
    else:
        d, mon, y = groups if kind == "dmy" else (groups[1], groups[0], groups[2])
        m = str(_MONTHS.get(mon[:3].lower(), 0))
    try:
        date = dt.date(int(y), int(m), int(d))
    except ValueError:
        return None
    return date if 1800 <= date.year <= 2200 else None


def _day_first(pairs: list[tuple[int, int, str]], name: str) -> bool:
    """D/M when a first field exceeds 12, M/D when a second does; refused when neither or both."""
    day = next((t for a, _, t in pairs if a > 12), None)
    month = next((t for _, b, t in pairs if b > 12), None)
    if day and month:
        raise BarFileError(name, f"dates in both day/month and month/day order ({day!r}, {month!r})")
    if not (day or month):
        raise BarFileError(
            name, f"the dates ({pairs[0][2]!r}) could be day/month or month/day; pass --date-format "
            "'%m/%d/%Y' (US, Excel) or '%d/%m/%Y'"
        )  # fmt: skip
    return day is not None


def _strptime(text: str, date_format: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, date_format).date()  # an offset in the text: its own local date
    except ValueError:
        return None


def _dates(raw: pd.Series, date_format: str | None, name: str) -> np.ndarray:
    """Session dates (``datetime64[ns]``, NaT where unreadable), each distinct text parsed once."""
    codes, uniques = pd.factorize(raw)
    uniques = [u.strip() for u in uniques]
    if date_format:
        parsed = [_strptime(u, date_format) for u in uniques]
    else:
        forms = [next(((k, m.groups()) for k, p in _DATE_FORMS if (m := p.fullmatch(u))), None) for u in uniques]
        pairs = [(int(f[1][0]), int(f[1][1]), u) for f, u in zip(forms, uniques, strict=True) if f and f[0] == "xxy"]
        day_first = _day_first(pairs, name) if pairs else False
        parsed = [_date_parts(*f, day_first) if f else None for f in forms]
    texts = [u for u in uniques if u]
    if texts and not any(parsed):
        hint = f"do not match --date-format {date_format!r}" if date_format else "are in no known layout"
        raise BarFileError(name, f"the dates ({texts[0]!r}) {hint}; pass --date-format (e.g. '%d.%m.%Y')")
    table = np.array([np.datetime64(d, "D") if d else np.datetime64("NaT") for d in parsed], "datetime64[D]")
    return table.astype("datetime64[ns]")[codes] if len(codes) else np.array([], "datetime64[ns]")


# ---------------------------------------------------------------------------------------------------- symbols


def _strip_market(text: str) -> str:
    return re.sub(r"\.us$", "", text.strip(), flags=re.IGNORECASE)  # Stooq writes US tickers as SPY.US


def symbol_from_file_name(name: str, canonical: Canonicalizer) -> str:
    """The symbol a file name gives: ``SPY.csv``, ``spy.us.txt``, ``spy_us_d.csv`` (stooq.com), ``SPY (1).csv``
    (a repeated download), ``BRK-B.csv.gz`` -> ``BRK.B``. :raise ValueError: when it gives none."""
    stem = re.sub(r"(\.(csv|txt))?(\.gz)?$", "", Path(name).name, flags=re.IGNORECASE)
    stem = re.sub(r"_us_d$", "", re.sub(r"\s*\(\d+\)$", "", stem), flags=re.IGNORECASE)
    return canonical(_strip_market(stem))


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
    text = _read_text(source, name).replace("\r\n", "\n").replace("\r", "\n")
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
    if delimiter != ",":
        prices = pd.concat([table[c] for c in (*PRICE_COLUMNS, "adj_close") if c in table], ignore_index=True)
        decimal = _decimal_mark(prices.str.strip(), delimiter, name)
    values = {c: _numbers(table[c], decimal) for c in VALUE_COLUMNS if c in table}
    dates = _dates(table["date"], date_format, name)
    checks = [(symbol_status == 1, "missing symbol", "symbol"), (symbol_status == 2, "invalid symbol", "symbol")]
    checks.append((np.isnat(dates), "unparseable date", "date"))
    for column, (_, status) in values.items():  # an empty adj_close is allowed (status 0 = missing)
        checks += [
            (status == code, f"{why} {column}", column) for code, why in _STATUS if column != "adj_close" or code
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
    :func:`read_bar_file` does. A file that cannot be read is a problem (``line`` 0) and does not stop the
    others. Files that give the same symbol count once when their bars are identical; when they differ, none
    of them is used for it and a "conflicting files" problem names them all.

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
        except BarFileError as exc:
            problems.append(Problem(str(file), 0, None, "", exc.reason))
            continue
        parts.append(bars)
        problems += found
    if not parts:
        empty = {"symbol": str, "date": "datetime64[ns]", **dict.fromkeys(VALUE_COLUMNS, float), "file": str}
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in {**empty, "line": int}.items()}), problems
    bars, conflicts = _one_copy_per_symbol(pd.concat(parts, ignore_index=True))
    return bars, problems + conflicts


def _one_copy_per_symbol(bars: pd.DataFrame) -> tuple[pd.DataFrame, list[Problem]]:
    pairs = bars[["symbol", "file"]].drop_duplicates()
    shared = pairs[pairs["symbol"].duplicated(keep=False)]
    drop, problems = np.zeros(len(bars), bool), []
    for symbol, group in shared.groupby("symbol", sort=True):
        files = list(group["file"])
        rows = (bars["symbol"] == symbol).to_numpy()
        copies = [bars.loc[rows & (bars["file"] == f).to_numpy(), list(BAR_COLUMNS)] for f in files]
        copies = [c.sort_values("date", ignore_index=True) for c in copies]
        if all(c.equals(copies[0]) for c in copies[1:]):
            drop |= rows & (bars["file"] != files[0]).to_numpy()
        else:
            drop |= rows
            problems.append(Problem(files[0], 0, str(symbol), ", ".join(files), "conflicting files for one symbol"))
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
