"""File and yfinance sources: files and folders through bar_files, bad files, incremental slicing, symbol mapping."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

import watchlist_loader as wl
from bar_validation import SOURCE_COLUMNS
from conftest import SAMPLE_CSV
from settings import ExitCode, UserError

D = dt.date


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_CSV)


def entries(*symbols: str) -> list[wl.WatchlistEntry]:
    return [wl.WatchlistEntry(s) for s in symbols]


def yahoo_layout(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.rename(columns={"date": "Date", "open": "Open", "high": "High", "low": "Low", "close": "Close",
                                "adj_close": "Adj Close", "volume": "Volume"}).drop(columns="symbol")  # fmt: skip


def test_long_gzip_file_reads_with_canonical_symbols_parsed_dates_and_lines() -> None:
    bars, problems = wl.read_bars_file(SAMPLE_CSV)
    assert len(bars) == 78_255 and problems == []
    assert list(bars.columns) == [*wl.BAR_COLUMNS, *SOURCE_COLUMNS]
    assert pd.api.types.is_datetime64_any_dtype(bars["date"])
    assert bars["date"].notna().all() and bars["close"].dtype == "float64"
    assert bars["line"].tolist()[:2] == [2, 3] and (bars["file"] == str(SAMPLE_CSV)).all()


def test_folder_takes_symbols_from_file_names_and_reports_what_it_cannot_read(
    tmp_path: Path, sample: pd.DataFrame
) -> None:
    spy = sample[sample["symbol"] == "SPY"].head(30)
    yahoo_layout(spy).to_csv(tmp_path / "SPY.csv", index=False)
    with gzip.open(tmp_path / "brk-b.csv.gz", "wt") as handle:
        yahoo_layout(spy.head(10)).to_csv(handle, index=False)
    yahoo_layout(spy.head(5)).to_csv(tmp_path / "qqq.us.txt", index=False)
    (tmp_path / "notes.txt").write_text("ignored")
    bars, problems = wl.read_bars_file(tmp_path)
    assert bars.groupby("symbol").size().to_dict() == {"BRK.B": 10, "QQQ": 5, "SPY": 30}
    np.testing.assert_allclose(bars.loc[bars["symbol"] == "SPY", "adj_close"], spy["adj_close"])
    # not a bar file: reported with the symbol its name gives, so the pipeline ignores it unless NOTES is wanted
    assert [(Path(p.file).name, p.line, p.symbol) for p in problems] == [("notes.txt", 0, "NOTES")]
    assert "cannot tell the delimiter or the columns" in problems[0].reason


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("bars.csv", b"date,symbol,open,high,low,close,volume,extra\n", "unknown column(s) extra"),
        ("bars.csv", b"date,symbol,open,high,low,volume\n", "missing column(s) close"),
        ("bars.csv", b"", "empty file"),
        ("bars.csv.gz", b"this is not gzip", "not a gzip file although the name ends in .gz"),
        (
            "bars.csv.gz",
            # mtime=0: the same bytes, so the same test id, in every xdist worker
            gzip.compress(b"date,symbol,open,high,low,close,volume\n" * 99, mtime=0)[:50],
            "corrupt or truncated",
        ),
        ("bars.csv", "date,symbol,open\n2020-01-02,SPY,5 \u20ac\n".encode("cp1252"), "not UTF-8 text"),
        ("bars.csv", b"date,symbol,open,high,low,close,volume\n1/2/2020,SPY,1,2,1,1,5\n", "pass --date-format"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_line_naming_it(
    tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        wl.read_bars_file(path)
    assert info.value.exit_code == ExitCode.USAGE
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value) and "\n" not in str(info.value)


def test_missing_files_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.csv: no such file"):
        wl.read_bars_file(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="no bar files"):
        wl.read_bars_file(tmp_path)


def test_date_format_decides_the_day_month_order(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("date,symbol,open,high,low,close,volume\n1/2/2020,SPY,1,2,1,1,5\n")
    assert wl.read_bars_file(path, "%d/%m/%Y")[0]["date"].tolist() == [pd.Timestamp("2020-02-01")]
    assert wl.read_bars_file(path, "%m/%d/%Y")[0]["date"].tolist() == [pd.Timestamp("2020-01-02")]


def test_rows_that_do_not_read_are_problems_with_line_and_raw_value(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "date,symbol,open,high,low,close,volume\n"
        "2020-01-02,spy,1,2,0.5,1.5,100\n"
        "2020-01-03 ,SPY,abc,2,0.5,1.5,100\n"
        "2020-13-40,SPY,1,2,0.5,1.5,100\n"
        "2020-01-06 ,SPY,1,2,0.5,1.5,100\n"
    )
    bars, problems = wl.read_bars_file(path)
    assert bars["symbol"].tolist() == ["SPY"] * 2 and bars["line"].tolist() == [2, 5]
    assert bars["date"].iloc[1] == pd.Timestamp("2020-01-06")  # stray whitespace is fine
    assert [(p.line, p.symbol, p.raw, p.reason) for p in problems] == [
        (3, "SPY", "abc", "unparseable open"), (4, "SPY", "2020-13-40", "unparseable date")
    ]  # fmt: skip


def test_tickers_that_look_like_missing_values_stay_symbols(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "date,symbol,open,high,low,close,adj_close,volume\n"
        "2020-01-02,NA,1,2,0.5,1.5,null,100\n"
        "2020-01-02,NAN,1,2,0.5,1.5,,100\n"
        "2020-01-02,SPY,1,2,0.5,1.5,,NA\n"
    )
    bars, problems = wl.read_bars_file(path)
    assert bars["symbol"].tolist() == ["NA", "NAN"] and bars["adj_close"].isna().all()
    assert [(p.line, p.symbol, p.reason) for p in problems] == [(4, "SPY", "missing volume")]


def test_frame_source_reports_missing_symbols_and_slices_incremental_ones(sample: pd.DataFrame) -> None:
    bars, _ = wl.read_bars_file(SAMPLE_CSV)
    fetch = wl.frame_source(bars, overlap_sessions=3, label="sample")
    got = {f.symbol: f for f in fetch(entries("SPY", "QQQ", "NOPE"), D(2010, 1, 4), D(2010, 12, 31),
                                           {"QQQ": D(2010, 6, 30)})}  # fmt: skip
    assert got["NOPE"].status == wl.FetchStatus.UNKNOWN_SYMBOL and "not in sample" in str(got["NOPE"].error)
    spy = got["SPY"]
    assert spy.status == wl.FetchStatus.STORED
    assert spy.bars["date"].min() == pd.Timestamp("2010-01-04") and spy.bars["date"].max() == pd.Timestamp("2010-12-31")
    assert len(spy.bars) == len(sample[(sample.symbol == "SPY") & sample.date.between("2010-01-04", "2010-12-31")])
    assert spy.metadata == {"first_available_date": D(2005, 1, 3)}
    qqq = got["QQQ"]
    assert qqq.bars["date"].min() == pd.Timestamp("2010-06-25")  # 3 business days before the last stored bar
    assert qqq.metadata == {}  # incremental fetches do not claim a first available date


def test_frame_source_out_of_range_is_no_data_and_an_unread_file_fails_its_symbol(tmp_path: Path) -> None:
    path = tmp_path / "SPY.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,100\n")
    (tmp_path / "QQQ.csv.gz").write_bytes(b"not gzip")
    bars, problems = wl.read_bars_file(tmp_path)
    fetch = wl.frame_source(bars, 5, "folder", problems)
    spy, qqq, iwm = fetch(entries("SPY", "QQQ", "IWM"), D(2019, 1, 2), D(2019, 12, 31), {})
    assert spy.status == wl.FetchStatus.NO_DATA and "no bars in folder between 2019-01-02 and 2019-12-31" in str(
        spy.error
    )
    assert qqq.status == wl.FetchStatus.FAILED
    assert qqq.error == f"{tmp_path / 'QQQ.csv.gz'}: not a gzip file although the name ends in .gz"
    assert iwm.status == wl.FetchStatus.UNKNOWN_SYMBOL and iwm.error == "not in folder"


class FakeTicker:
    calls: ClassVar[list[tuple[str, dict]]] = []
    offline = False

    def __init__(self, ticker: str) -> None:
        self.ticker = ticker

    def history(self, **kwargs: object) -> pd.DataFrame:
        FakeTicker.calls.append((self.ticker, kwargs))
        if FakeTicker.offline:
            raise OSError("Could not resolve host: query2.finance.yahoo.com")
        if self.ticker == "ZZZZ":
            raise ValueError("ZZZZ: possibly delisted; no timezone found")
        index = pd.DatetimeIndex(["2024-01-02", "2024-01-03"]).tz_localize("America/New_York")
        return pd.DataFrame({"Open": [1.0, 2.0], "High": [2.0, 3.0], "Low": [0.5, 1.5], "Close": [1.5, 2.5],
                             "Adj Close": [1.4, 2.4], "Volume": [100, 200]}, index=index)  # fmt: skip


@pytest.fixture
def fake_yfinance(monkeypatch: pytest.MonkeyPatch) -> type[FakeTicker]:
    import yfinance

    FakeTicker.calls, FakeTicker.offline = [], False
    monkeypatch.setattr(yfinance, "Ticker", FakeTicker)
    return FakeTicker


def test_yfinance_source_maps_share_classes_and_converts_bars(fake_yfinance: type[FakeTicker]) -> None:
    fetch = wl.yfinance_source(overlap_sessions=5)
    got = list(fetch(entries("BRK.B", "ZZZZ"), D(2024, 1, 2), D(2024, 1, 3), {}))
    assert fake_yfinance.calls[0][0] == "BRK-B"
    assert fake_yfinance.calls[0][1]["end"] == "2024-01-04"  # Yahoo's end is exclusive
    brk, unknown = got
    assert brk.status == wl.FetchStatus.STORED and brk.symbol == "BRK.B"
    assert brk.bars["date"].tolist() == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]
    assert brk.bars["adj_close"].tolist() == [1.4, 2.4] and brk.bars["volume"].tolist() == [100.0, 200.0]
    assert brk.metadata == {"first_available_date": D(2024, 1, 2)}
    assert unknown.status == wl.FetchStatus.UNKNOWN_SYMBOL and "possibly delisted" in str(unknown.error)


def test_yfinance_offline_is_a_clear_source_unavailable_error(fake_yfinance: type[FakeTicker]) -> None:
    fake_yfinance.offline = True
    with pytest.raises(UserError) as info:
        list(wl.yfinance_source(5)(entries("SPY"), D(2024, 1, 2), D(2024, 1, 3), {}))
    assert info.value.exit_code == ExitCode.SOURCE_UNAVAILABLE
    assert "cannot reach Yahoo Finance" in str(info.value)
