"""The cells of a bar file read as numbers and dates, in the forms spreadsheets and other tools write them.

Pure and per column: :func:`numbers` (thousands separators, decimal commas, currency signs), :func:`decimal_mark`
(decided per file), :func:`dates` (ISO, compact, Excel's M/D/YYYY, D.M.YYYY, month names, times and UTC offsets;
day/month order decided per file or given). ``bar_files`` reads files with them.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd

MISSING = frozenset({"", "null", "none", "n/a", "na", "#n/a", "-"})
NON_FINITE = frozenset({"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})
REJECTED_STATUS = ((0, "missing"), (2, "unparseable"), (3, "non-finite"))  # status codes of numbers() that reject
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


class CellError(ValueError):
    """The cells of a column cannot be read as a whole (mixed decimal marks, ambiguous or unknown dates)."""


# ---------------------------------------------------------------------------------------------------- numbers


def decimal_mark(cells: pd.Series, delimiter: str) -> str:
    """The decimal mark of a file, decided from its prices: a mark followed by other than three digits, or after
    the other mark, is decimal; when no price tells, ';' files use ',' (European Excel) and others '.'.

    :raise CellError: when the prices mix both marks as decimal marks.
    """
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
        raise CellError(f"prices mix decimal marks ({evidence.iloc[0]!r} and {against.iloc[0]!r})")
    return other


def numbers(cells: pd.Series, decimal: str) -> tuple[np.ndarray, np.ndarray]:
    """Floats and a status per cell: 1 read, 0 missing, 2 not a number, 3 not finite."""
    if cells.dtype.kind == "b":  # the CSV parser read True/False
        cells = cells.astype(str)
    if cells.dtype.kind in "fiu":  # the CSV parser read every cell as a number
        values = cells.to_numpy("float64")
        return values, np.where(np.isfinite(values), 1, 3).astype(np.int8)
    text = cells.to_numpy(object)
    values, status = np.full(len(text), np.nan), np.zeros(len(text), np.int8)  # missing, until read
    filled = np.flatnonzero(text != "")  # an empty adj_close column is 600,000 empty cells: no parsing
    if decimal == ".":
        values[filled] = pd.to_numeric(text[filled], errors="coerce")
    status[filled] = 1
    bad = filled[~np.isfinite(values[filled])]
    if len(bad):  # each distinct text once
        codes, uniques = pd.factorize(text[bad], use_na_sentinel=False)
        got, why = _texts(pd.Series(uniques, dtype=object), decimal)
        values[bad], status[bad] = got[codes], why[codes]
    return values, status


def _texts(texts: pd.Series, decimal: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`numbers` for texts the plain parser did not read: thousands separators, decimal commas, a currency
    sign; else why not."""
    text = texts.str.strip()
    group, mark = re.escape("," if decimal == "." else "."), re.escape(decimal)
    pattern = rf"[+-]?\$?(?:\d{{1,3}}(?:[{group} \u00a0\u202f']\d{{3}})+|\d+)(?:{mark}\d*)?(?:[eE][+-]?\d+)?"
    cleaned = text.where(text.str.fullmatch(pattern), "").str.replace(rf"[^\d+\-eE{mark}]", "", regex=True)
    values = pd.to_numeric(cleaned.str.replace(decimal, ".", regex=False), errors="coerce").to_numpy("float64")
    words = text.str.lower()
    infinite = words.isin(NON_FINITE).to_numpy() | np.isinf(values)
    status = np.where(np.isfinite(values), 1, np.where(words.isin(MISSING).to_numpy(), 0, np.where(infinite, 3, 2)))
    return values, status.astype(np.int8)


# ---------------------------------------------------------------------------------------------------- dates


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


def _day_first(pairs: list[tuple[int, int, str]]) -> bool:
    """D/M when a first field exceeds 12, M/D when a second does; refused when neither or both."""
    day = next((t for a, _, t in pairs if a > 12), None)
    month = next((t for _, b, t in pairs if b > 12), None)
    if day and month:
        raise CellError(f"dates in both day/month and month/day order ({day!r}, {month!r})")
    if not (day or month):
        raise CellError(
            f"the dates ({pairs[0][2]!r}) could be day/month or month/day; pass --date-format '%m/%d/%Y' "
            "(US, Excel) or '%d/%m/%Y'"
        )
    return day is not None


def _strptime(text: str, date_format: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, date_format).date()  # an offset in the text: its own local date
    except ValueError:
        return None


def _iso_dates(texts: pd.Series) -> np.ndarray | None:
    """The common case, vectorized: every text a plain ``YYYY-MM-DD`` and some of them dates; else None."""
    if not texts.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all():
        return None
    parsed = pd.to_datetime(texts, format="%Y-%m-%d", errors="coerce").to_numpy("datetime64[ns]")
    parsed[(parsed < np.datetime64("1800-01-01")) | (parsed >= np.datetime64("2201-01-01"))] = np.datetime64("NaT")
    return parsed if len(parsed) and not np.isnat(parsed).all() else None


def dates(raw: pd.Series, date_format: str | None) -> np.ndarray:
    """Session dates (``datetime64[ns]``, NaT where unreadable), each distinct text parsed once.

    :param date_format: a ``strptime`` format; without it the layout is recognized, and the day/month order of
        ``1/4/1999`` decided from the file's other dates.
    :raise CellError: when the order cannot be told, or no date reads at all.
    """
    codes, uniques = pd.factorize(raw)
    texts = pd.Series(uniques, dtype=object).str.strip()
    if date_format is None and (iso := _iso_dates(texts)) is not None:
        return iso[codes]
    uniques = list(texts)
    if date_format:
        parsed = [_strptime(u, date_format) for u in uniques]
    else:
        forms = [next(((k, m.groups()) for k, p in _DATE_FORMS if (m := p.fullmatch(u))), None) for u in uniques]
        pairs = [(int(f[1][0]), int(f[1][1]), u) for f, u in zip(forms, uniques, strict=True) if f and f[0] == "xxy"]
        day_first = _day_first(pairs) if pairs else False
        parsed = [_date_parts(*f, day_first) if f else None for f in forms]
    texts = [u for u in uniques if u]
    if texts and not any(parsed):
        hint = f"do not match --date-format {date_format!r}" if date_format else "are in no known layout"
        raise CellError(f"the dates ({texts[0]!r}) {hint}; pass --date-format (e.g. '%d.%m.%Y')")
    table = np.array([np.datetime64(d, "D") if d else np.datetime64("NaT") for d in parsed], "datetime64[D]")
    return table.astype("datetime64[ns]")[codes] if len(codes) else np.array([], "datetime64[ns]")
