"""``mvp_pipeline.py --source ibkr`` end to end: the real ib_async client, the loopback simulator, SQLite."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import db_utils
import mvp_pipeline
import tt_schema as tables
from ib_sim_helpers import SCALE, SimThread, read_csv, set_today, start_sim
from settings import ExitCode, run_cli
from tools.ib_gateway_sim import SimProcess

D = dt.date
WATCHLIST = Path(mvp_pipeline.__file__).resolve().parent / "tensorwatchlist.csv"


@pytest.fixture
def gateway() -> Iterator[list[SimThread]]:
    """Simulators started by a test (stopped afterwards)."""
    started: list[SimThread] = []
    yield started
    for s in started:
        s.stop()


def sim(started: list[SimThread], **config: object) -> SimThread:
    """Start a simulator and register it for teardown."""
    started.append(start_sim(**config))
    return started[-1]


def run(tmp_path: Path, port: int, start: str, end: str, *extra: str) -> int:
    """One pipeline run against the simulator, into ``tmp_path/db.sqlite``; the exit code."""
    argv = [
        "--source", "ibkr", "--start", start, "--end", end, "--ib-port", str(port),
        "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}", "--log-dir", str(tmp_path / "log"),
        "--ib-timeout", "10", "--ib-connect-timeout", "3", "--ib-reconnect-delay", "0.05",
        "--ib-pacing-scale", str(SCALE), *extra,
    ]  # fmt: skip
    return run_cli(mvp_pipeline.main, argv)


def stored(tmp_path: Path, table: sa.Table) -> pd.DataFrame:
    """A whole table of the test database."""
    engine = db_utils.make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.select(table), conn)
    finally:
        engine.dispose()


def watchlist(tmp_path: Path, symbols: list[str]) -> str:
    """A watchlist file with these symbols."""
    path = tmp_path / "watchlist.csv"
    path.write_text("symbol\n" + "\n".join(symbols) + "\n")
    return str(path)


def assert_prices_equal_csv(prices: pd.DataFrame, served: pd.DataFrame) -> None:
    """Every served bar stored once, with the served values."""
    prices = prices.assign(date=pd.to_datetime(prices["date"]).dt.date).sort_values(["symbol", "date"])
    served = served.sort_values(["symbol", "date"])
    assert len(prices) == len(served) and not prices.duplicated(["symbol", "date"]).any()
    assert list(zip(prices["symbol"], prices["date"], strict=True)) == list(
        zip(served["symbol"], served["date"], strict=True)
    )
    cols = ["open", "high", "low", "close", "volume"]
    np.testing.assert_array_equal(prices[cols].to_numpy(float), served[cols].to_numpy(float))


def test_sample_watchlist_through_the_pipeline(tmp_path, gateway) -> None:
    gw = sim(gateway, latency=0.001)
    # 5-year chunks keep this under ib_async's 45 messages/s; 1-year chunks are covered in test_ibkr_source
    code = run(tmp_path, gw.port, "2005-01-03", "2025-09-26", "--watchlist", str(WATCHLIST), "--ib-chunk-years", "5")
    assert code == ExitCode.OK
    durations = {d for _, _, _, d, _ in gw.stats.historical()}
    assert all(d == "5 Y" or (d.endswith(" D") and int(d.split()[0]) <= 365) for d in durations)
    assert_prices_equal_csv(stored(tmp_path, tables.prices), read_csv())
    symbols = stored(tmp_path, tables.symbols).set_index("symbol")
    assert len(symbols) == 15 and (symbols["coverage"] >= 0.95).all()
    assert symbols["ib_con_id"].notna().all() and (symbols["source"] == "ibkr").all()
    assert (pd.to_datetime(symbols["first_available_date"]).dt.date == D(2005, 1, 3)).all()


def test_gateway_restart_mid_run_completes_without_gaps(tmp_path, gateway) -> None:
    gw = sim(gateway, restart_after=40, restart_downtime=0.3)
    symbols = ["SPY", "QQQ", "TLT", "GLD", "EEM", "VNQ"]
    code = run(tmp_path, gw.port, "2015-01-02", "2025-09-26", "--watchlist", watchlist(tmp_path, symbols))
    assert code == ExitCode.OK and gw.stats.connections == 2
    served = read_csv()
    served = served[served["symbol"].isin(symbols) & (served["date"] >= D(2015, 1, 2))]
    assert_prices_equal_csv(stored(tmp_path, tables.prices), served)


def test_strict_pacing_stores_every_symbol_without_violations(tmp_path) -> None:
    # In its own process: a simulator thread would wait for the GIL while the pipeline stores bars, then see
    # requests late and bunched together, i.e. violations the gateway would never see.
    gw = SimProcess(pacing="strict", pacing_scale=SCALE)
    try:
        code = run(
            tmp_path, gw.port, "2021-01-04", "2025-09-26", "--watchlist", str(WATCHLIST), "--ib-pacing", "strict"
        )
    finally:
        stats = gw.stop()
    assert code == ExitCode.OK
    assert stats["pacing_violations"] == 0 and stats["historical"] + 15 > 60  # crossed the 60-per-window limit
    assert stored(tmp_path, tables.prices)["symbol"].nunique() == 15


def test_unknown_and_no_data_symbols_are_reported_and_the_rest_stored(tmp_path, gateway) -> None:
    gw = sim(gateway, no_data=frozenset({"NOBAR"}))
    wl = watchlist(tmp_path, ["SPY", "ZZZZ", "NOBAR"])
    code = run(tmp_path, gw.port, "2024-01-02", "2024-12-31", "--watchlist", wl)
    assert code == ExitCode.PARTIAL
    symbols = stored(tmp_path, tables.symbols).set_index("symbol")
    status = symbols["status"]
    assert status["SPY"] == "ok" and status["ZZZZ"] == "unknown_symbol" and status["NOBAR"] == "no_data"
    assert symbols.loc["ZZZZ", "last_error"].startswith("IB error 200: ")  # the IB code is kept with the text
    assert symbols.loc["NOBAR", "last_error"].startswith("IB error 162: ")
    assert set(stored(tmp_path, tables.prices)["symbol"]) == {"SPY"}


def test_duplicate_client_id_exits_source_unavailable(tmp_path, gateway, capsys) -> None:
    gw = sim(gateway, duplicate_client_ids=frozenset({17}))
    code = run(tmp_path, gw.port, "2024-01-02", "2024-12-31", "--watchlist", watchlist(tmp_path, ["SPY"]))
    assert code == ExitCode.SOURCE_UNAVAILABLE
    assert "client id 17" in capsys.readouterr().err


def test_next_day_run_fetches_one_request_per_symbol_and_stores_only_new_bars(tmp_path, gateway) -> None:
    gw = sim(gateway, today=D(2025, 9, 25))
    symbols = ["SPY", "AGG", "GLD", "TIP"]
    wl = watchlist(tmp_path, symbols)
    assert run(tmp_path, gw.port, "2025-01-02", "2025-09-25", "--watchlist", wl) == ExitCode.OK
    before = stored(tmp_path, tables.prices)
    set_today(gw, D(2025, 9, 26))
    hist_before = len(gw.stats.historical())
    assert run(tmp_path, gw.port, "2025-01-02", "2025-09-26", "--watchlist", wl) == ExitCode.OK
    second = gw.stats.historical()[hist_before:]
    assert sorted(sym for _, sym, *_ in second) == sorted(symbols)  # one request per symbol
    after = stored(tmp_path, tables.prices)
    new = after.merge(before[["symbol", "date"]], how="left", indicator=True)
    new = new[new["_merge"] == "left_only"]
    assert len(new) == len(symbols) and set(pd.to_datetime(new["date"]).dt.date) == {D(2025, 9, 26)}
    runs = stored(tmp_path, tables.ingest_runs).sort_values("run_id")
    assert runs["rows_inserted"].iloc[-1] == len(symbols) and runs["rows_updated"].iloc[-1] == 0
