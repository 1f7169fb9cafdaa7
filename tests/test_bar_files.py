"""bar_files: the layouts, date and number forms other tools write; bad rows and bad files reported, not fatal."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
from pathlib import Path
from random import Random

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bar_files as bf
from watchlist_loader import canonical_symbol

D = dt.date
ROW = (1.5, 2.0, 1.0, 1.75)  # open, high, low, close of the inline files


def read(
    tmp_path: Path, name: str, text: str | bytes, date_format: str | None = None
) -> tuple[pd.DataFrame, list[bf.Problem]]:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return bf.read_bar_file(path, canonical=canonical_symbol, date_format=date_format)


def rows(bars: pd.DataFrame) -> list[tuple[object, ...]]:
    """(symbol, date, open, high, low, close, adj_close, volume, line) per bar, NaN adj_close as None."""
    out = []
    for r in bars.itertuples(index=False):
        adj = None if np.isnan(r.adj_close) else r.adj_close
        out.append((r.symbol, r.date.date(), r.open, r.high, r.low, r.close, adj, r.volume, r.line))
    return sorted(out, key=lambda t: (t[0], t[1]))


# ---------------------------------------------------------------------------------------------------- layouts

LAYOUTS = [
    ("yahoo", "SPY.csv", "Date,Open,High,Low,Close,Adj Close,Volume\n2020-01-02,1.5,2,1,1.75,1.7,100\n",
     [("SPY", D(2020, 1, 2), *ROW, 1.7, 100.0, 2)]),
    ("yahoo-no-adj", "SPY.csv", "Date,Open,High,Low,Close,Volume\n2020-01-02,1.5,2,1,1.75,100\n",
     [("SPY", D(2020, 1, 2), *ROW, None, 100.0, 2)]),
    ("yfinance-history", "SPY.csv",
     "Date,Open,High,Low,Close,Volume,Dividends,Stock Splits,Capital Gains\n"
     "2020-01-02 00:00:00-05:00,1.5,2,1,1.75,100,0.0,0.0,0.0\n2020-03-09 00:00:00-04:00,1.5,2,1,1.75,100,0,0,0\n",
     [("SPY", D(2020, 1, 2), *ROW, None, 100.0, 2), ("SPY", D(2020, 3, 9), *ROW, None, 100.0, 3)]),
    ("yfinance-download", "whatever.csv",
     "Price,Adj Close,Close,High,Low,Open,Volume\nTicker,SPY,SPY,SPY,SPY,SPY,SPY\nDate,,,,,,\n"
     "2020-01-02,1.7,1.75,2,1,1.5,100\n",
     [("SPY", D(2020, 1, 2), *ROW, 1.7, 100.0, 4)]),
    ("pandas-empty-header", "SPY.csv", ",open,high,low,close,volume\n2020-01-02,1.5,2,1,1.75,100\n",
     [("SPY", D(2020, 1, 2), *ROW, None, 100.0, 2)]),
    ("pandas-unnamed", "SPY.csv", "Unnamed: 0,open,high,low,close,volume\n2020-01-02,1.5,2,1,1.75,100\n",
     [("SPY", D(2020, 1, 2), *ROW, None, 100.0, 2)]),
    ("pandas-index-and-date", "SPY.csv", ",date,open,high,low,close,volume\n0,2020-01-02,1.5,2,1,1.75,100\n",
     [("SPY", D(2020, 1, 2), *ROW, None, 100.0, 2)]),
    ("stooq-lower", "spy.us.txt", "date,open,high,low,close,volume\n2020-01-02,1.5,2,1,1.75,100\n",
     [("SPY", D(2020, 1, 2), *ROW, None, 100.0, 2)]),
    ("stooq-tagged", "anything.txt",
     "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>\n"
     "SPY.US,D,20200102,000000,1.5,2,1,1.75,100,0\nBRK-B.US,D,20200102,000000,1.5,2,1,1.75,7,0\n",
     [("BRK.B", D(2020, 1, 2), *ROW, None, 7.0, 3), ("SPY", D(2020, 1, 2), *ROW, None, 100.0, 2)]),
    ("alpha-vantage", "QQQ.csv",
     "timestamp,open,high,low,close,adjusted_close,volume,dividend_amount,split_coefficient\n"
     "2020-01-03,1.5,2,1,1.75,1.6,200,0.0000,1.0\n2020-01-02,1.5,2,1,1.75,1.5,100,0.0000,1.0\n",
     [("QQQ", D(2020, 1, 2), *ROW, 1.5, 100.0, 3), ("QQQ", D(2020, 1, 3), *ROW, 1.6, 200.0, 2)]),
    ("ib-util-df", "IBM.csv", "date,open,high,low,close,volume,average,barCount\n2020-01-02,1.5,2,1,1.75,100,1.6,42\n",
     [("IBM", D(2020, 1, 2), *ROW, None, 100.0, 2)]),
    ("long", "bars.csv",
     "symbol,date,open,high,low,close,adj_close,volume\nNA,2020-01-02,1.5,2,1,1.75,,100\n"
     "brk-b,2020-01-02,1.5,2,1,1.75,1.7,5\n",
     [("BRK.B", D(2020, 1, 2), *ROW, 1.7, 5.0, 3), ("NA", D(2020, 1, 2), *ROW, None, 100.0, 2)]),
    ("nasdaq", "AAPL.csv", "Date,Close/Last,Volume,Open,High,Low\n01/13/2020,$1.75,100,$1.50,$2.00,$1.00\n",
     [("AAPL", D(2020, 1, 13), *ROW, None, 100.0, 2)]),
    ("excel-sep-hint", "SPY.csv", "sep=;\nDate;Open;High;Low;Close;Volume\n2020-01-02;1,5;2;1;1,75;100\n",
     [("SPY", D(2020, 1, 2), *ROW, None, 100.0, 3)]),
    ("blank-lines-and-crlf", "SPY.csv",
     "\r\nDate,Open,High,Low,Close,Volume\r\n\r\n2020-01-02,1.5,2,1,1.75,100\r\n,,,,,\r\n",
     [("SPY", D(2020, 1, 2), *ROW, None, 100.0, 4)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "expected"), [c[1:] for c in LAYOUTS], ids=[c[0] for c in LAYOUTS])
def test_each_layout_reads_its_rows_with_lines(tmp_path: Path, name: str, text: str, expected: list) -> None:
    bars, problems = read(tmp_path, name, text)
    assert problems == []
    assert list(bars.columns) == [*bf.BAR_COLUMNS, *bf.SOURCE_COLUMNS]
    assert rows(bars) == expected
    assert (bars["file"] == str(tmp_path / name)).all()


def test_excel_unicode_text_export_utf16_tabs_and_decimal_commas(tmp_path: Path) -> None:
    text = "Date\tOpen\tHigh\tLow\tClose\tVolume\r\n13.01.2020\t1,5\t2\t1\t1,75\t1.234.567\r\n"
    bars, problems = read(tmp_path, "SPY.txt", text.encode("utf-16"))
    assert problems == []
    assert rows(bars) == [("SPY", D(2020, 1, 13), *ROW, None, 1234567.0, 2)]


def test_gzip_and_file_objects_are_read(tmp_path: Path) -> None:
    data = gzip.compress(b"Date,Open,High,Low,Close,Volume\n2020-01-02,1.5,2,1,1.75,100\n")
    bars, _ = bf.read_bar_file(io.BytesIO(data), name="brk-b.csv.gz", canonical=canonical_symbol)
    assert rows(bars) == [("BRK.B", D(2020, 1, 2), *ROW, None, 100.0, 2)]


# ---------------------------------------------------------------------------------------------------- dates

DATES = [
    ("2020-01-13", D(2020, 1, 13)), ("2020/1/13", D(2020, 1, 13)), ("20200113", D(2020, 1, 13)),
    ("1/13/2020", D(2020, 1, 13)), ("13/1/2020", D(2020, 1, 13)), ("13.01.2020", D(2020, 1, 13)),
    ("1/13/2020 0:00", D(2020, 1, 13)), ("1/13/2020 12:00:00 AM", D(2020, 1, 13)), ("13-Jan-2020", D(2020, 1, 13)),
    ("13 January 2020", D(2020, 1, 13)), ("Jan 13, 2020", D(2020, 1, 13)), ("2020-01-13T00:00:00Z", D(2020, 1, 13)),
    ("2020-01-13 00:00:00-05:00", D(2020, 1, 13)), ("2020-01-13 23:00:00-05:00", D(2020, 1, 13)),  # not UTC's 14th
    ("2020-01-13 00:00:00+09:00", D(2020, 1, 13)),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), DATES)
def test_unambiguous_date_forms(tmp_path: Path, text: str, expected: dt.date) -> None:
    bars, problems = read(tmp_path, "SPY.csv", f'Date,Open,High,Low,Close,Volume\n"{text}",1.5,2,1,1.75,100\n')
    assert problems == []
    assert bars["date"].dt.date.tolist() == [expected]


@pytest.mark.parametrize(
    ("dates", "date_format", "expected"),
    [
        (["1/4/1999", "1/13/1999"], None, [D(1999, 1, 4), D(1999, 1, 13)]),  # one second field > 12: M/D
        (["4/1/1999", "13/1/1999"], None, [D(1999, 1, 4), D(1999, 1, 13)]),  # one first field > 12: D/M
        (["01/04/1999"], "%m/%d/%Y", [D(1999, 1, 4)]),
        (["01/04/1999"], "%d/%m/%Y", [D(1999, 4, 1)]),
        (["2020-01-02 23:30:00-05:00"], "%Y-%m-%d %H:%M:%S%z", [D(2020, 1, 2)]),
    ],
)
def test_day_month_order_is_decided_per_file_or_given(
    tmp_path: Path, dates: list[str], date_format: str | None, expected: list[dt.date]
) -> None:
    body = "".join(f"{d},1.5,2,1,1.75,100\n" for d in dates)
    bars, _ = read(tmp_path, "SPY.csv", "Date,Open,High,Low,Close,Volume\n" + body, date_format=date_format)
    assert bars["date"].dt.date.tolist() == expected


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        (["1/4/1999", "2/5/1999"], "could be day/month or month/day; pass --date-format"),
        (["1/13/1999", "13/1/1999"], "both day/month and month/day order"),
        (["99-1-4", "99-1-5"], "are in no known layout; pass --date-format"),
    ],
)
def test_ambiguous_or_unknown_dates_are_refused(tmp_path: Path, dates: list[str], message: str) -> None:
    body = "".join(f"{d},1.5,2,1,1.75,100\n" for d in dates)
    with pytest.raises(bf.BarFileError, match=message) as caught:
        read(tmp_path, "SPY.csv", "Date,Open,High,Low,Close,Volume\n" + body)
    assert str(caught.value).startswith(str(tmp_path / "SPY.csv") + ": ") and "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------------- numbers

NUMBERS = [  # (delimiter, open cell, volume cell, open, volume)
    (",", '"1,234.50"', '"123,623,700"', 1234.5, 123623700.0),
    (",", '"$1,234.50"', "100", 1234.5, 100.0),
    (";", "1.234,50", "123.623.700", 1234.5, 123623700.0),
    (";", "1234,5", "100", 1234.5, 100.0),
    (";", "1 234,5", "100", 1234.5, 100.0),
    (";", "1,234.50", "123,623,700", 1234.5, 123623700.0),  # a ';' file with decimal points: told by the prices
    ("\t", "1234,5", "1.000", 1234.5, 1000.0),
    ("|", "1234.5", "1e3", 1234.5, 1000.0),
]


@pytest.mark.parametrize(("sep", "open_cell", "volume_cell", "open_", "volume"), NUMBERS)
def test_number_forms(tmp_path: Path, sep: str, open_cell: str, volume_cell: str, open_: float, volume: float) -> None:
    text = sep.join(["Date", "Open", "High", "Low", "Close", "Volume"]) + "\n"
    text += sep.join(["2020-01-02", open_cell, "2000", "1000", "1500", volume_cell]) + "\n"
    bars, problems = read(tmp_path, "SPY.csv", text)
    assert problems == []
    assert (bars.loc[0, "open"], bars.loc[0, "volume"]) == (open_, volume)


def test_mixed_decimal_marks_are_refused(tmp_path: Path) -> None:
    text = "Date;Open;High;Low;Close;Volume\n2020-01-02;1,5;2.25;1;1,75;100\n"
    with pytest.raises(bf.BarFileError, match="prices mix decimal marks"):
        read(tmp_path, "SPY.csv", text)


@pytest.mark.parametrize("value", ["inf", "1e309", "nan", "-inf", "Infinity", "NaN"])
@pytest.mark.parametrize("column", ["close", "adj_close", "volume"])
def test_non_finite_values_reject_the_row(tmp_path: Path, value: str, column: str) -> None:
    cells = {"open": "1.5", "high": "2", "low": "1", "close": "1.75", "adj_close": "1.7", "volume": "100"}
    bad = ",".join(value if c == column else v for c, v in cells.items())
    text = f"date,open,high,low,close,adj_close,volume\n2020-01-02,{bad}\n2020-01-03,{','.join(cells.values())}\n"
    bars, problems = read(tmp_path, "SPY.csv", text)
    assert bars["date"].dt.date.tolist() == [D(2020, 1, 3)]
    assert [(p.line, p.symbol, p.reason) for p in problems] == [(2, "SPY", f"non-finite {column}")]
    assert problems[0].raw in (value, "inf", "-inf")


@pytest.mark.parametrize(
    ("cells", "reason", "raw"),
    [
        ("2020-01-02,,2,1,1.75,100", "missing open", ""),
        ("2020-01-02,null,null,null,null,null", "missing open", "null"),
        ("2020-01-02,1.5,2,1,abc,100", "unparseable close", "abc"),
        ("2020-01-02,1.5,2,1,1.75,", "missing volume", ""),
        ("2020-02-30,1.5,2,1,1.75,100", "unparseable date", "2020-02-30"),
        ("2020-01-02,1.5,2,1,1.75,100,7", "7 fields, the header has 6", "2020-01-02,1.5,2,1,1.75,100,7"),
    ],
)
def test_bad_rows_are_reported_and_the_rest_read(tmp_path: Path, cells: str, reason: str, raw: str) -> None:
    text = f"Date,Open,High,Low,Close,Volume\n2020-01-03,1.5,2,1,1.75,100\n{cells}\n2020-01-06,1.5,2,1,1.75,100\n"
    bars, problems = read(tmp_path, "SPY.csv", text)
    assert bars["line"].tolist() == [2, 4]
    assert [(p.line, p.reason, p.raw) for p in problems] == [(3, reason, raw)]


def test_rows_without_a_valid_symbol_are_reported(tmp_path: Path) -> None:
    text = "symbol,date,open,high,low,close,volume\n,2020-01-02,1.5,2,1,1.75,1\nBAD$,2020-01-02,1.5,2,1,1.75,1\n"
    bars, problems = read(tmp_path, "bars.csv", text + "NA,2020-01-02,1.5,2,1,1.75,1\n")
    assert bars["symbol"].tolist() == ["NA"]
    assert [(p.line, p.symbol, p.reason, p.raw) for p in problems] == [
        (2, None, "missing symbol", ""),
        (3, "BAD$", "invalid symbol", "BAD$"),
    ]


# ---------------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("name", "symbol"),
    [("spy.us.txt", "SPY"), ("SPY (1).csv", "SPY"), ("BRK-B.csv", "BRK.B"), ("brk-b.us.txt.gz", "BRK.B"),
     ("spy_us_d.csv", "SPY"), ("aapl.CSV", "AAPL"), ("BF.B.csv", "BF.B")],
)  # fmt: skip
def test_file_names_give_symbols(name: str, symbol: str) -> None:
    assert bf.symbol_from_file_name(name, canonical_symbol) == symbol


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        (
            "SPY.csv.gz",
            # mtime=0: the same bytes, so the same test id, in every xdist worker
            gzip.compress(b"Date,Open,High,Low,Close,Volume\n" * 50, mtime=0)[:40],
            "corrupt or truncated gzip",
        ),
        ("SPY.csv.gz", b"\x1f\x8b garbage", "corrupt or truncated gzip"),
        ("SPY.csv.gz", b"Date,Open", "not a gzip file"),
        ("SPY.csv", "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,1,1,5 \u20ac\n".encode("cp1252"), "not UTF-8"),
        ("SPY.csv", b"", "empty file"),
        ("SPY.csv", b"\n \n", "empty file"),
        ("SPY.csv", b"PK\x03\x04\x00\x00", "a binary file"),
        ("SPY.csv", b"Date,Open,High,Low,Close,Volume\n", "no data rows"),
        ("SPY.csv", b"2020-01-02,1,2,1,1,5\n", "cannot tell the delimiter or the columns"),
        ("SPY.csv", b"Datum:Open:High:Low:Close:Volume\n", "cannot tell the delimiter or the columns"),
        ("SPY.csv", b"Date,Open,High,Low,Volume\n", "missing column(s) close"),
        ("SPY.csv", b"Date,Open,High,Low,Close,Volume,Notes\n", "unknown column(s) Notes"),
        ("SPY.csv", b"Date,Close,Open,High,Low,Close,Volume\n", "two close columns"),
        ("my prices!.csv", b"Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,1,1,5\n", "the name gives no symbol"),
    ],
)
def test_unreadable_files_raise_one_line_naming_the_file(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    with pytest.raises(bf.BarFileError) as caught:
        read(tmp_path, name, data)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / name}: ") and reason in message and "\n" not in message


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def test_folder_reports_bad_files_and_conflicts_and_reads_the_rest(tmp_path: Path) -> None:
    yahoo = "Date,Open,High,Low,Close,Volume\n2020-01-02,1.5,2,1,1.75,{}\n"
    write(tmp_path, "SPY.csv", yahoo.format(100))
    write(tmp_path, "spy.csv", yahoo.format(999))  # same symbol, different bars
    write(tmp_path, "QQQ.csv", yahoo.format(5))
    write(tmp_path, "qqq.us.txt", "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>\n"
          "QQQ.US,D,20200102,000000,1.5,2,1,1.75,5,0\n")  # fmt: skip
    (tmp_path / "IWM.csv.gz").write_bytes(b"\x1f\x8b broken")
    write(tmp_path, "DIA.csv", yahoo.format(7) + "2020-01-03,1.5,2,1,inf,7\n")
    write(tmp_path, "notes.md", "not a bar file")
    write(tmp_path, "my prices!.csv", yahoo.format(1))
    bars, problems = bf.read_bar_files(tmp_path, canonical=canonical_symbol)
    assert sorted(bars["symbol"]) == ["DIA", "QQQ"]  # QQQ's two identical files count once
    assert {(Path(p.file).name, p.line, p.symbol, p.reason) for p in problems} == {
        ("IWM.csv.gz", 0, "IWM", "corrupt or truncated gzip file"),  # the symbol its name gives
        ("my prices!.csv", 0, None, "no symbol column, and the name gives no symbol: invalid symbol 'my prices!': "
         "use letters and digits, optionally one share class (BRK.B, BRK-B or BRK B), at most 12 characters"),
        ("DIA.csv", 3, "DIA", "non-finite close"),
        ("SPY.csv", 0, "SPY", "conflicting files for one symbol"),
    }  # fmt: skip
    conflict = next(p for p in problems if p.symbol == "SPY")
    assert conflict.raw == f"{tmp_path / 'SPY.csv'}, {tmp_path / 'spy.csv'}: 1 date(s) differ, first 2020-01-02"
    assert str(conflict).startswith(f"{tmp_path / 'SPY.csv'}: SPY: conflicting files for one symbol (")
    corrupt = next(p for p in problems if p.symbol == "IWM")
    assert str(corrupt) == f"{tmp_path / 'IWM.csv.gz'}: IWM: corrupt or truncated gzip file"  # no empty raw


def test_files_of_one_symbol_merge_when_they_agree_on_every_date(tmp_path: Path) -> None:
    header = "Date,Open,High,Low,Close,Volume\n"
    day = "2020-01-{:02d},1.5,2,1,1.75,100\n"
    write(tmp_path, "SPY.csv", header + day.format(2) + day.format(3))
    write(tmp_path, "SPY (1).csv", header + day.format(3) + day.format(6))  # a newer download: one day more
    bars, problems = bf.read_bar_files(tmp_path, canonical=canonical_symbol)
    assert problems == []
    assert [(Path(f).name, n, d.day) for f, n, d in zip(bars["file"], bars["line"], bars["date"], strict=True)] == [
        ("SPY (1).csv", 2, 3), ("SPY (1).csv", 3, 6), ("SPY.csv", 2, 2),
    ]  # fmt: skip


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(bf.BarFileError, match="not a folder"):
        bf.read_bar_files(tmp_path / "missing", canonical=canonical_symbol)
    with pytest.raises(bf.BarFileError, match="no bar files"):
        bf.read_bar_files(tmp_path, canonical=canonical_symbol)
    write(tmp_path, "SPY.csv", "")
    bars, problems = bf.read_bar_files([tmp_path / "SPY.csv"], canonical=canonical_symbol)
    assert bars.empty and [p.reason for p in problems] == ["empty file"]


# ---------------------------------------------------------------------------------------------------- reports


def test_summary_counts_per_reason_and_symbol_with_a_few_examples() -> None:
    problems = [
        bf.Problem(f"S{i}.csv", 2 + k, f"S{i}", "inf", "non-finite close") for i in range(10_000) for k in (0, 1)
    ]
    problems += [bf.Problem("bars.csv", 9, "SPY", "", "missing volume"), bf.Problem("X.gz", 0, None, "", "empty file")]
    lines = bf.summarize_problems(problems, examples=2, symbols=3)
    assert len(lines) == 3
    assert lines[0] == (
        "non-finite close: 20000 in 10000 symbol(s) (S0 2, S1 2, S2 2 +9997 more); e.g. S0.csv:2 'inf'; S0.csv:3 'inf'"
    )
    assert lines[1:] == ["missing volume: 1 in 1 symbol(s) (SPY 1); e.g. bars.csv:9 ''",
                         "empty file: 1 in 1 symbol(s) (? 1); e.g. X.gz ''"]  # fmt: skip
    assert str(problems[0]) == "S0.csv:2: S0: non-finite close ('inf')"


def test_validation_problems_carry_file_and_line(tmp_path: Path) -> None:
    text = "Date,Open,High,Low,Close,Volume\n2020-01-02,1.5,2,1,1.75,100\n2020-01-03,1.5,1,2,1.75,100\n"
    bars, _ = read(tmp_path, "SPY.csv", text)
    valid, problems = bf.validation_problems(bars)
    assert valid["line"].tolist() == [2]
    assert [(Path(p.file).name, p.line, p.symbol, p.reason, p.raw) for p in problems] == [
        ("SPY.csv", 3, "SPY", "high < low", "1.5,1.0,2.0,1.75,100.0")
    ]


# ---------------------------------------------------------------------------------------------------- property

# (file name, symbol the name gives, header, one row's fields: bar columns, or "=text" for a constant)
PROPERTY_LAYOUTS = {
    "yahoo": ("SPY.csv", "SPY", "Date,Open,High,Low,Close,Adj Close,Volume",
              "date open high low close adj_close volume"),
    "yahoo-no-adj": ("SPY (1).csv", "SPY", "Date,Open,High,Low,Close,Volume", "date open high low close volume"),
    "pandas": ("BRK-B.csv", "BRK-B", ",open,high,low,close,volume", "date open high low close volume"),
    "stooq": ("spy.us.txt", "SPY", "date,open,high,low,close,volume", "date open high low close volume"),
    "stooq-tagged": ("x.txt", "SPY", "<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>",
                     "=SPY.US =D date =000000 open high low close volume =0"),
    "alpha-vantage": ("SPY.csv", "SPY", "timestamp,open,high,low,close,adjusted_close,volume,dividend_amount,"
                      "split_coefficient", "date open high low close adj_close volume =0.0 =1.0"),
    "ib": ("IBM.csv", "IBM", "date,open,high,low,close,volume,average,barCount",
           "date open high low close volume =1 =2"),
    "long": ("bars.csv", None, "symbol,date,open,high,low,close,adj_close,volume",
             "symbol date open high low close adj_close volume"),
}  # fmt: skip
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DATE_FORMS = {
    "iso": lambda d: d.isoformat(), "yfinance": lambda d: f"{d} 00:00:00-05:00", "compact": lambda d: f"{d:%Y%m%d}",
    "m/d/y": lambda d: f"{d.month}/{d.day}/{d.year}", "d.m.y": lambda d: f"{d:%d.%m.%Y}",
    "d-mon-y": lambda d: f"{d.day}-{MONTHS[d.month - 1]}-{d.year}",
}  # fmt: skip
NUMBER_STYLES = [(",", "."), (";", ","), (";", "."), ("\t", "."), ("\t", ","), ("|", ".")]  # (delimiter, decimal)
PRICES = ("open", "high", "low", "close", "adj_close")


def number(value: float, decimals: int, decimal: str, grouped: bool) -> str:
    text = f"{value:,.{decimals}f}" if grouped else f"{value:.{decimals}f}"
    return text.translate(str.maketrans(",.", ".,")) if decimal == "," else text


@st.composite
def bar_rows(draw: st.DrawFn) -> list[tuple[str, dt.date, dict[str, float], int]]:
    """(symbol, date, prices, volume) rows on distinct dates; prices up to 10 million, volumes up to 10**12."""
    days = draw(st.lists(st.integers(0, 12_000), min_size=1, max_size=12, unique=True))
    cents = st.integers(1, 10**9)
    return [
        (("SPY", "NA", "BRK-B")[i % 3], D(2000, 1, 3) + dt.timedelta(days=day),
         {p: draw(cents) / 100 for p in PRICES}, draw(st.integers(0, 10**12)))
        for i, day in enumerate(days)
    ]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(sorted(PROPERTY_LAYOUTS)), date_form=st.sampled_from(sorted(DATE_FORMS)),
    style=st.sampled_from(NUMBER_STYLES), decimals=st.sampled_from([1, 2, 4]), grouped=st.booleans(),
    data=bar_rows(), shuffle=st.randoms(use_true_random=False), crlf=st.booleans(), gz=st.booleans(),
)  # fmt: skip
def test_messy_valid_files_read_every_row_once_with_its_values(
    layout: str, date_form: str, style: tuple[str, str], decimals: int, grouped: bool, data: list,
    shuffle: Random, crlf: bool, gz: bool,
) -> None:  # fmt: skip
    name, symbol, header, fields = PROPERTY_LAYOUTS[layout]
    delimiter, decimal = style
    data = [(symbol or s, *rest) for s, *rest in data]
    shuffle.shuffle(data)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(header.split(","))
    expected = {}
    for s, day, prices, volume in data:
        cells = {p: number(v, decimals, decimal, grouped) for p, v in prices.items()}
        cells |= {"symbol": s, "date": DATE_FORMS[date_form](day), "volume": number(volume, 0, decimal, grouped)}
        writer.writerow([f[1:] if f.startswith("=") else cells[f] for f in fields.split(" ")])
        read_back = {p: float(number(v, decimals, ".", False)) for p, v in prices.items()}
        read_back["adj_close"] = read_back["adj_close"] if "adj_close" in fields else np.nan
        expected[(canonical_symbol(s), day)] = [*read_back.values(), float(volume)]
    raw = out.getvalue().encode()
    source = io.BytesIO(gzip.compress(raw) if gz else raw)
    if date_form in ("m/d/y", "d.m.y") and all(day.day <= 12 for _, day, *_ in data):  # day/month order unknown
        with pytest.raises(bf.BarFileError, match="--date-format"):
            bf.read_bar_file(source, name=name, canonical=canonical_symbol)
        return
    bars, problems = bf.read_bar_file(source, name=name, canonical=canonical_symbol)
    assert problems == []
    got = {(r.symbol, r.date.date()): r for r in bars.itertuples(index=False)}
    assert len(bars) == len(data) and got.keys() == expected.keys()
    lines = raw.decode().replace("\r\n", "\n").split("\n")
    for key, values in expected.items():
        row = got[key]
        actual = [row.open, row.high, row.low, row.close, row.adj_close, row.volume]
        np.testing.assert_allclose(actual, values, rtol=1e-12, err_msg=str(key))
        assert DATE_FORMS[date_form](key[1]) in lines[row.line - 1]  # the line reported is the row's line
