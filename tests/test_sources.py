"""File and yfinance sources: long and Yahoo layouts, bad files, incremental slicing, symbol mapping."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

import watchlist_loader as wl
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


def test_long_gzip_file_reads_with_canonical_symbols_and_parsed_dates() -> None:
    bars = wl.read_bars_file(SAMPLE_CSV)
    assert len(bars) == 78_255
    assert list(bars.columns) == list(wl.BAR_COLUMNS)
    assert pd.api.types.is_datetime64_any_dtype(bars["date"])
    assert bars["date"].notna().all() and bars["close"].dtype == "float64"


def test_yahoo_folder_takes_symbols_from_file_names(tmp_path: Path, sample: pd.DataFrame) -> None:
    spy = sample[sample["symbol"] == "SPY"].head(30)
    yahoo_layout(spy).to_csv(tmp_path / "SPY.csv", index=False)
    with gzip.open(tmp_path / "brk-b.csv.gz", "wt") as handle:
        yahoo_layout(spy.head(10)).to_csv(handle, index=False)
    (tmp_path / "notes.txt").write_text("ignored")
    bars = wl.read_bars_file(tmp_path)
    assert bars.groupby("symbol").size().to_dict() == {"BRK.B": 10, "SPY": 30}
    np.testing.assert_allclose(bars.loc[bars["symbol"] == "SPY", "adj_close"], spy["adj_close"])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("date,symbol,open,high,low,close,volume,extra\n", "unknown column(s) extra"),
        ("date,symbol,open,high,low,volume\n", "missing column(s) close"),
        ("", "cannot read: No columns to parse from file"),
    ],
)
def test_bad_headers_and_empty_files_name_the_file(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        wl.read_bars_file(path)
    assert info.value.exit_code == ExitCode.USAGE
    assert str(path) in str(info.value) and expected in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    broken = tmp_path / "bars.csv.gz"
    broken.write_bytes(b"this is not gzip")
    with pytest.raises(UserError, match=r"bars.csv.gz: cannot read: Not a gzipped file"):
        wl.read_bars_file(broken)
    with pytest.raises(UserError, match="no such file"):
        wl.read_bars_file(tmp_path / "missing.csv")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(UserError, match="no .csv or .csv.gz files"):
        wl.read_bars_file(empty_dir)


def test_unparseable_numbers_and_dates_become_missing_values_for_the_upsert_to_reject(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "date,symbol,open,high,low,close,volume\n"
        "2020-01-02,spy,1,2,0.5,1.5,100\n"
        "2020-01-03 ,SPY,abc,2,0.5,1.5,100\n"
        "2020-13-40,SPY,1,2,0.5,1.5,100\n"
    )
    bars = wl.read_bars_file(path)
    assert bars["symbol"].tolist() == ["SPY"] * 3
    assert bars["date"].iloc[1] == pd.Timestamp("2020-01-03")  # stray whitespace is fine
    assert pd.isna(bars["open"].iloc[1]) and pd.isna(bars["date"].iloc[2])


def test_tickers_that_look_like_missing_values_stay_symbols(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "date,symbol,open,high,low,close,adj_close,volume\n"
        "2020-01-02,NA,1,2,0.5,1.5,null,100\n"
        "2020-01-02,NAN,1,2,0.5,1.5,NaN,100\n"
        "2020-01-02,SPY,1,2,0.5,1.5,,NA\n"
    )
    bars = wl.read_bars_file(path)
    assert bars["symbol"].tolist() == ["NA", "NAN", "SPY"]
    assert bars["adj_close"].isna().all() and pd.isna(bars["volume"].iloc[2])


def test_frame_source_reports_missing_symbols_and_slices_incremental_ones(sample: pd.DataFrame) -> None:
    bars = wl.read_bars_file(SAMPLE_CSV)
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


def test_frame_source_out_of_range_is_no_data_and_bad_dates_always_pass_through(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "date,symbol,open,high,low,close,volume\n2020-01-02,SPY,1,2,0.5,1.5,100\nnot-a-date,SPY,1,2,1,1,1\n"
    )
    fetch = wl.frame_source(wl.read_bars_file(path), 5, "file")
    (early,) = fetch(entries("SPY"), D(2019, 1, 2), D(2019, 12, 31), {})
    assert early.status == wl.FetchStatus.STORED and len(early.bars) == 1 and early.bars["date"].isna().all()
    path.write_text("date,symbol,open,high,low,close,volume\n2020-01-02,SPY,1,2,0.5,1.5,100\n")
    (none,) = wl.frame_source(wl.read_bars_file(path), 5, "file")(entries("SPY"), D(2019, 1, 2), D(2019, 12, 31), {})
    assert none.status == wl.FetchStatus.NO_DATA
    assert "no bars in file between 2019-01-02 and 2019-12-31" in str(none.error)


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
