"""The IBKR fetcher against the loopback gateway simulator (the real ib_async client; nothing mocked)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ib_sim_helpers import (
    SCALE,
    SimThread,
    expected,
    fast_settings,
    fetch_all,
    iter_fetch,
    read_csv,
    set_today,
    start_sim,
)
from settings import ExitCode, UserError
from watchlist_loader import BAR_COLUMNS, FetchStatus

D = dt.date
PRICES = ["open", "high", "low", "close", "volume"]


@pytest.fixture
def sim() -> Iterator[Callable[..., SimThread]]:
    """Factory of simulators, all stopped after the test."""
    started: list[SimThread] = []

    def make(**config: object) -> SimThread:
        started.append(start_sim(**config))
        return started[-1]

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """The bundled sample, as the simulator serves it."""
    return read_csv()


def assert_same_bars(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Dates and OHLCV equal to the served CSV, no duplicate dates."""
    assert list(got.columns) == list(BAR_COLUMNS)
    assert got["date"].is_unique
    assert list(got["date"]) == list(want["date"])
    np.testing.assert_array_equal(got[PRICES].to_numpy(float), want[PRICES].to_numpy(float))


def test_full_history_in_year_chunks_equals_served_csv(sim, sample) -> None:
    gw = sim(latency=0.002)
    results = fetch_all(["SPY", "TLT", "GLD"], D(2004, 6, 1), D(2025, 9, 26), fast_settings(gw.port))
    for symbol in ("SPY", "TLT", "GLD"):
        r = results[symbol]
        assert r.status is FetchStatus.STORED, r.error
        assert_same_bars(r.bars, expected(sample, symbol, D(2004, 6, 1), D(2025, 9, 26)))
        assert r.bars["adj_close"].isna().all()  # TRADES bars carry no adjusted close
        assert r.first_available_date == D(2005, 1, 3) == r.metadata["first_available_date"]
        assert isinstance(r.metadata["ib_con_id"], int) and r.metadata["ib_con_id"] > 0
        assert r.metadata["primary_exchange"] == "ARCA"
        assert {"exchange", "currency", "long_name"} <= set(r.metadata)
        hist = gw.stats.historical(symbol)
        assert r.requests == len(hist) == 21  # 2005-01-03 .. 2025-09-26 in 1 Y chunks, clamped by the head
        assert all(d.endswith(" Y") or int(d.split()[0]) <= 365 for _, _, _, d, _ in hist)
        assert all(end.endswith("US/Eastern") for _, _, end, _, _ in hist)  # explicit zone, never machine-local


def test_unknown_no_data_and_share_class_symbols(sim, tmp_path: Path) -> None:
    rows = [("BRK.B", "2010-01-04"), ("BRK.B", "2010-01-05"), ("OLD", "2006-01-03"), ("NEW", "2024-01-02")]
    csv = tmp_path / "bars.csv"
    pd.DataFrame(
        [dict(date=d, symbol=s, open=1.0, high=2.0, low=0.5, close=1.5, adj_close=1.4, volume=100) for s, d in rows]
    ).to_csv(csv, index=False)
    gw = sim(csv=csv, no_data=frozenset({"NOBARS"}))
    results = fetch_all(
        ["ZZZZ", "BRK.B", "OLD", "NEW", "NOBARS"], D(2010, 1, 1), D(2010, 12, 31), fast_settings(gw.port)
    )
    assert results["ZZZZ"].status is FetchStatus.UNKNOWN_SYMBOL and results["ZZZZ"].error_code == 200
    assert results["BRK.B"].status is FetchStatus.STORED and len(results["BRK.B"].bars) == 2
    assert gw.stats.historical("BRK B")  # asked in IB notation
    old = results["OLD"]  # the head is in range but the window holds no bar: 162 HMDS "no data"
    assert old.status is FetchStatus.NO_DATA and old.error_code == 162 and "no data" in str(old.error)
    assert old.requests >= 1 and old.bars.empty
    new = results["NEW"]  # head timestamp after --end: no historical request at all
    assert new.status is FetchStatus.NO_DATA and new.requests == 0 and new.first_available_date == D(2024, 1, 2)
    assert results["NOBARS"].status is FetchStatus.NO_DATA and results["NOBARS"].error_code == 162


def test_adjusted_last_is_requested_without_end_date(sim, sample) -> None:
    gw = sim()
    settings = fast_settings(gw.port, what_to_show="ADJUSTED_LAST")
    r = fetch_all(["IEF"], D(2024, 1, 1), D(2025, 6, 30), settings)["IEF"]
    assert r.status is FetchStatus.STORED, r.error
    hist = gw.stats.historical("IEF")
    assert [(end, what) for _, _, end, _, what in hist] == [("", "ADJUSTED_LAST")]  # no 321 provoked
    want = expected(sample, "IEF", D(2024, 1, 1), D(2025, 6, 30))
    assert list(r.bars["date"]) == list(want["date"])
    np.testing.assert_allclose(r.bars["close"], want["adj_close"])
    np.testing.assert_array_equal(r.bars["adj_close"], r.bars["close"])


def test_strict_pacing_crosses_the_limits_without_a_violation(sim, sample) -> None:
    symbols = ["SPY", "QQQ", "IWM", "MDY", "EFA", "EEM", "EWJ", "TLT", "IEF", "SHY", "LQD", "TIP", "AGG", "GLD", "VNQ"]
    gw = sim(pacing="strict", pacing_scale=SCALE)
    settings = fast_settings(gw.port, ib_pacing="strict", ib_max_in_flight=8)
    t0 = time.monotonic()
    results = fetch_all(symbols, D(2021, 1, 1), D(2025, 9, 26), settings)
    elapsed = time.monotonic() - t0
    assert gw.stats.pacing_violations == 0
    assert all(r.status is FetchStatus.STORED for r in results.values())
    paced = len([r for r in gw.stats.requests if r[0] in ("hist", "head")])
    assert paced > 60  # more than one 60-request window
    assert elapsed >= 600 * SCALE * (paced // 60)  # the rate window really was waited out
    assert_same_bars(results["VNQ"].bars, expected(sample, "VNQ", D(2021, 1, 1), D(2025, 9, 26)))


def test_pacing_violations_and_open_limit_are_retried(sim, sample) -> None:
    gw = sim(pacing="strict", pacing_scale=SCALE, max_open=2)
    settings = fast_settings(gw.port, ib_pacing="soft", ib_max_in_flight=6)  # soft client vs strict gateway
    symbols = ["SPY", "QQQ", "IWM", "TLT", "GLD", "AGG"]
    results = fetch_all(symbols, D(2014, 1, 1), D(2025, 9, 26), settings)  # 78 requests: > 60 per window
    assert gw.stats.pacing_violations > 0 and gw.stats.max_open_seen == 2
    for s in symbols:
        assert results[s].status is FetchStatus.STORED, results[s].error
        assert_same_bars(results[s].bars, expected(sample, s, D(2014, 1, 1), D(2025, 9, 26)))
    assert sum(r.requests for r in results.values()) > 6 * 12  # retries are counted


@pytest.mark.parametrize("behaviour", [dict(disconnect_at=frozenset({4, 17, 30})), dict(restart_after=12)])
def test_reconnects_and_resumes_without_gaps_or_duplicates(sim, sample, behaviour) -> None:
    gw = sim(latency=0.002, restart_downtime=0.3, **behaviour)
    symbols = ["SPY", "QQQ", "EEM", "GLD", "VNQ"]
    results = fetch_all(symbols, D(2015, 1, 1), D(2025, 9, 26), fast_settings(gw.port, ib_max_in_flight=3))
    assert gw.stats.connections >= 2
    for s in symbols:
        assert results[s].status is FetchStatus.STORED, results[s].error
        assert_same_bars(results[s].bars, expected(sample, s, D(2015, 1, 1), D(2025, 9, 26)))


def test_reconnects_exhausted_stops_after_yielding_what_is_done(sim) -> None:
    gw = sim(restart_after=8, restart_downtime=60)
    settings = fast_settings(gw.port, ib_max_in_flight=1, ib_max_reconnects=2)
    done = []
    with pytest.raises(UserError) as err:
        for r in iter_fetch(["SHY", "TIP", "LQD", "AGG"], D(2022, 1, 1), D(2025, 9, 26), settings):
            done.append(r)
    assert err.value.exit_code == ExitCode.SOURCE_UNAVAILABLE
    assert "2 reconnects" in str(err.value) and "--source" in str(err.value)
    assert [r.symbol for r in done] == ["SHY"] and done[0].status is FetchStatus.STORED  # 4 chunks, then drop


def test_duplicate_client_id_fails_fast_with_source_unavailable(sim) -> None:
    gw = sim(duplicate_client_ids=frozenset({17}))
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        fetch_all(["SPY"], D(2024, 1, 1), D(2024, 12, 31), fast_settings(gw.port, ib_client_id=17))
    assert time.monotonic() - t0 < 2.0  # not the 3 s connect timeout: 326 is caught as it arrives
    assert err.value.exit_code == ExitCode.SOURCE_UNAVAILABLE
    assert "326" in str(err.value) and "client id 17" in str(err.value)


def test_unreachable_gateway_says_how_to_start_it() -> None:
    with pytest.raises(UserError) as err:
        fetch_all(["SPY"], D(2024, 1, 1), D(2024, 12, 31), fast_settings(1))  # nothing listens on port 1
    message = str(err.value)
    assert err.value.exit_code == ExitCode.SOURCE_UNAVAILABLE
    assert "IB Gateway" in message and "Enable ActiveX and Socket Clients" in message and "--source" in message


def test_next_day_run_is_one_small_request_per_symbol(sim, sample) -> None:
    gw = sim(today=D(2025, 9, 25))
    symbols = ["SPY", "AGG", "GLD"]
    first = fetch_all(symbols, D(2025, 1, 1), D(2025, 9, 26), fast_settings(gw.port))
    assert all(r.bars["date"].max() == D(2025, 9, 25) for r in first.values())
    set_today(gw, D(2025, 9, 26))
    before = len(gw.stats.requests)
    since = {s: D(2025, 9, 25) for s in symbols}
    second = fetch_all(symbols, D(2025, 1, 1), D(2025, 9, 26), fast_settings(gw.port), since=since)
    new = gw.stats.requests[before:]
    assert [k for k, *_ in new if k == "head"] == []  # no head timestamp on an incremental run
    for s in symbols:
        r = second[s]
        assert r.status is FetchStatus.STORED and r.requests == 1
        assert r.bars["date"].min() >= D(2025, 9, 25) - dt.timedelta(days=7)  # a few sessions of overlap
        assert r.bars["date"].max() == D(2025, 9, 26)
        assert_same_bars(r.bars, expected(sample, s, r.bars["date"].min(), D(2025, 9, 26)))
        assert [d for k, sym, _, d, _ in new if k == "hist" and sym == s] == ["9 D"]  # 2025-09-18 .. 2025-09-26


def test_timeout_cancels_the_slow_request_and_reports_failure(sim) -> None:
    gw = sim(latency=3.0)
    t0 = time.monotonic()
    settings = fast_settings(gw.port, ib_timeout=0.3)
    r = fetch_all(["SPY"], D(2025, 1, 2), D(2025, 3, 31), settings, since={"SPY": D(2025, 3, 1)})["SPY"]
    assert r.status is FetchStatus.FAILED and "timed out" in str(r.error)
    assert time.monotonic() - t0 < 2.5  # did not wait for the 3 s reply
    cancels = [status for kind, _, _, _, status in gw.stats.requests if kind == "cancel"]
    assert cancels and set(cancels) == {"open"}  # the cancel overtook the pending reply
