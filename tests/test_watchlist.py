"""Watchlist loader: what people really write, strict symbols, errors that name the file and line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import watchlist_loader as wl
from settings import ExitCode, UserError


def write(tmp_path: Path, text: str, name: str = "wl.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UserError) as info:
        wl.load_watchlist(path)
    assert info.value.exit_code == ExitCode.USAGE
    return str(info.value)


def test_the_shipped_watchlist_loads_all_15_etfs() -> None:
    entries = wl.load_watchlist(wl.REPO_ROOT / "tensorwatchlist.csv")
    assert [e.symbol for e in entries][:3] == ["SPY", "QQQ", "IWM"]
    assert len(entries) == 15
    assert entries[0].primary_exchange == "ARCA" and entries[0].name == "SPDR S&P 500 ETF Trust"
    assert entries[0].line == 4  # two comment lines and the header come first


def test_bom_comments_blank_lines_whitespace_and_case_are_accepted(tmp_path: Path) -> None:
    text = "# my list\n\n Symbol , Currency ,NOTES\n spy , usd , core\n\n# later\nbrk-b,,Berkshire\n"
    entries = wl.load_watchlist(write(tmp_path, text, encoding="utf-8-sig"))
    assert [(e.symbol, e.currency, e.name, e.line) for e in entries] == [
        ("SPY", "USD", "core", 4),
        ("BRK.B", "USD", "Berkshire", 7),
    ]
    assert entries[0].exchange == "SMART" and entries[0].sec_type == "STK"


def test_duplicates_in_any_notation_are_merged_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "symbol\nBRK.B\nSPY\nbrk b\nBRK-B\n")
    monkeypatch.setattr(logging.getLogger("mvp_pipeline"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="mvp_pipeline"):
        entries = wl.load_watchlist(path)
    assert [e.symbol for e in entries] == ["BRK.B", "SPY"]
    messages = {r.getMessage().split(".csv, ")[-1] for r in caplog.records}
    assert messages == {
        "line 4: BRK.B duplicates line 2; keeping line 2",
        "line 5: BRK.B duplicates line 2; keeping line 2",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ticker\nSPY\n", "line 1: no 'symbol' column"),
        ("symbol,sector\nSPY,tech\n", "line 1: unknown column(s) 'sector'"),
        ("symbol,currency\nSPY,USD\nQQQ,USD,extra\n", "line 3: 3 fields, the header has 2"),
        ("symbol\nSPY\n^GSPC\n", "line 3: invalid symbol '^GSPC'"),
        ("symbol\nSPY\nTOOLONGSYMBOL\n", "line 3: invalid symbol 'TOOLONGSYMBOL'"),
        ("symbol\nSPY\nBRK..B\n", "line 3: invalid symbol 'BRK..B'"),
        ("symbol\n\n", "no symbols (only a header)"),
        ("# nothing here\n\n", "no header and no symbols"),
        ("symbol,currency\nSPY,US\n", "line 2: currency 'US' is not a 3-letter code"),
        ("symbol,exchange\nSPY,NY SE\n", "line 2: invalid exchange 'NY SE'"),
    ],
)
def test_bad_watchlists_fail_naming_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert str(path) in message
    assert expected in message


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    assert "cannot read (No such file or directory)" in error_of(tmp_path / "nope.csv")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81symbol\n")
    assert "not a UTF-8 text file" in error_of(binary)


@pytest.mark.parametrize("raw", ["BRK.B", "brk-b", "BRK B", "BRK/B", " brk.b "])
def test_share_class_notations_are_one_symbol_and_map_per_source(raw: str) -> None:
    symbol = wl.canonical_symbol(raw)
    assert symbol == "BRK.B"
    assert wl.to_source_symbol(symbol, "ibkr") == "BRK B"
    assert wl.to_source_symbol(symbol, "yfinance") == "BRK-B"
    assert wl.to_source_symbol(symbol, "csv") == "BRK.B"
    assert wl.to_source_symbol("SPY", "ibkr") == "SPY"
