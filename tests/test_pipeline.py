"""mvp_pipeline end to end: the sample into SQLite and PostgreSQL, re-runs, file sources, bad input, the lock."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import coverage_check
import db_utils
import mvp_pipeline
import run_locks
import tt_schema as tables
import watchlist_loader as wl
from conftest import SAMPLE_CSV
from settings import REPO_ROOT, ExitCode, run_cli

SAMPLE_RANGE = ["--start", "2005-01-03", "--end", "2025-09-26"]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Logs into the test's folder, no stray settings from the environment."""
    monkeypatch.setenv("TT_LOG_DIR", str(tmp_path / "log"))
    for name in ("TT_SOURCE", "TT_WATCHLIST", "TT_MIN_COVERAGE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def ingest(monkeypatch: pytest.MonkeyPatch, url: str, *argv: str) -> int:
    monkeypatch.setenv("DATABASE_URL", url)
    return run_cli(mvp_pipeline.main, list(argv))


def table(url: str, t: sa.Table) -> pd.DataFrame:
    engine = db_utils.make_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql(sa.select(t), conn)
    finally:
        engine.dispose()


def write_watchlist(tmp_path: Path, *symbols: str) -> str:
    path = tmp_path / "watchlist.csv"
    path.write_text("symbol\n" + "\n".join(symbols) + "\n")
    return str(path)


def test_sample_through_the_pipeline_then_a_rerun_stores_nothing_new(
    db_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ingest(monkeypatch, db_url, "--source", "sample", *SAMPLE_RANGE) == 0
    out = capsys.readouterr().out
    assert "15 symbol(s): 15 ok; 78255 fetched, 78255 inserted, 0 updated, 0 unchanged, 0 rejected -> exit 0" in out
    symbols = table(db_url, tables.symbols).set_index("symbol")
    assert len(symbols) == 15 and (symbols["coverage"] == 1.0).all() and (symbols["expected_bars"] == 5217).all()
    assert not symbols["below_min_coverage"].any() and (symbols["status"] == "ok").all()
    assert (
        symbols.loc["SPY", "primary_exchange"] == "ARCA"
        and str(symbols.loc["SPY", "first_available_date"]) == "2005-01-03"
    )
    assert len(table(db_url, tables.missing_dates)) == 0

    stamps = table(db_url, tables.prices)[["symbol", "date", "ingested_at"]]
    assert len(stamps) == 78_255
    assert ingest(monkeypatch, db_url, "--source", "sample", *SAMPLE_RANGE) == 0
    assert "0 inserted, 0 updated, 90 unchanged, 0 rejected -> exit 0" in capsys.readouterr().out
    pd.testing.assert_frame_equal(table(db_url, tables.prices)[["symbol", "date", "ingested_at"]], stamps)

    runs = table(db_url, tables.ingest_runs).sort_values("run_id")
    assert runs["status"].tolist() == ["finished", "finished"] and runs["exit_code"].tolist() == [0, 0]
    assert runs["rows_inserted"].tolist() == [78_255, 0] and runs["symbols_ok"].tolist() == [15, 15]
    timings = runs["timings"].iloc[0]
    timings = json.loads(timings) if isinstance(timings, str) else timings
    assert {"read", "fetch", "store", "coverage", "features", "total"} <= set(timings)
    assert (env / "log" / "mvp_pipeline.log").read_text().count("-> exit 0 (OK)") == 2


def test_incremental_run_fetches_only_after_the_last_stored_bar(
    sqlite_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ingest(monkeypatch, sqlite_url, "--source", "sample", "--start", "2024-01-02", "--end", "2024-06-28") == 0
    capsys.readouterr()
    assert ingest(monkeypatch, sqlite_url, "--source", "sample", "--start", "2024-01-02", "--end", "2024-07-31") == 0
    out = capsys.readouterr().out
    # 22 new July sessions (July 4 closed) + 5 overlap sessions before the last stored bar + that bar, per symbol
    assert "15 incremental" in out and f"{15 * 28} fetched, {15 * 22} inserted, 0 updated, {15 * 6} unchanged" in out
    assert ingest(monkeypatch, sqlite_url, "--source", "sample", "--start", "2023-01-03", "--end", "2024-07-31") == 0
    assert "(0 incremental)" in capsys.readouterr().out  # an earlier --start: stored history does not reach back


def test_yahoo_folder_and_long_file_with_symbols_missing_on_either_side(
    db_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = pd.read_csv(SAMPLE_CSV)
    part = sample[sample["symbol"].isin(["SPY", "QQQ", "GLD"]) & sample["date"].between("2020-01-02", "2020-03-31")]
    folder = env / "yahoo"
    folder.mkdir()
    for symbol, rows in part.groupby("symbol"):
        rows.drop(columns="symbol").rename(columns=str.title).rename(columns={"Adj_Close": "Adj Close"}).to_csv(
            folder / f"{symbol}.csv", index=False
        )
    range_args = ["--start", "2020-01-02", "--end", "2020-03-31"]
    wl_path = write_watchlist(env, "SPY", "QQQ")
    assert (
        ingest(monkeypatch, db_url, "--source", "csv", "--csv", str(folder), "--watchlist", wl_path, *range_args) == 0
    )
    out = capsys.readouterr().out
    assert "1 symbol(s) not in the watchlist, ignored: GLD" in out and "2 ok; 124 fetched, 124 inserted" in out

    long_file = env / "long.csv.gz"
    part.to_csv(long_file, index=False)
    wl_path = write_watchlist(env, "SPY", "TLT")
    code = ingest(monkeypatch, db_url, "--source", "csv", "--csv", str(long_file), "--watchlist", wl_path, *range_args)
    assert code == ExitCode.PARTIAL
    out = capsys.readouterr().out
    assert f"TLT: not in {long_file}" in out and "2 symbol(s) not in the watchlist, ignored: GLD, QQQ" in out
    symbols = table(db_url, tables.symbols).set_index("symbol")
    assert symbols.loc["TLT", "status"] == "unknown_symbol" and symbols.loc["TLT", "coverage"] == 0.0
    assert bool(symbols.loc["TLT", "below_min_coverage"]) and len(table(db_url, tables.missing_dates)) == 62
    run = table(db_url, tables.ingest_runs).sort_values("run_id").iloc[-1]
    assert run["status"] == "partial" and run["exit_code"] == 3 and run["symbols_failed"] == 1
    assert db_utils.load_training_bars(db_utils.make_engine(db_url)).symbols == ("QQQ", "SPY")


def test_nan_and_negative_prices_are_rejected_and_reported_the_rest_stored(
    db_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = pd.read_csv(SAMPLE_CSV)
    bars = sample[(sample["symbol"] == "SPY") & sample["date"].between("2020-01-02", "2020-01-31")].copy()
    bars.loc[bars.index[3], "close"] = np.nan
    bars.loc[bars.index[5], "open"] = -1.0
    path = env / "bad.csv"
    bars.to_csv(path, index=False)
    argv = ["--source", "csv", "--csv", str(path), "--watchlist", write_watchlist(env, "SPY")]
    code = ingest(monkeypatch, db_url, *argv, "--start", "2020-01-02", "--end", "2020-01-31")
    out = capsys.readouterr().out
    assert code == 3  # rejected rows: the rest stored, the rejects reported with exit 3; coverage shows the loss
    # the empty close is not read (line 5), the negative open is read and then rejected by validation (line 7)
    assert f"missing close: 1 in 1 symbol(s) (SPY 1); e.g. {path}:5 ''" in out
    assert f"non-positive price: 1 in 1 symbol(s) (SPY 1); e.g. {path}:7 '{bars['date'].iloc[5]},-1.0," in out
    assert "1 low_coverage; 21 fetched, 19 inserted, 0 updated, 0 unchanged, 2 rejected -> exit 3 (PARTIAL)" in out
    logged = (env / "log" / "mvp_pipeline.log").read_text()
    assert f"rejected {path}:5: SPY: missing close ('')" in logged
    assert len(table(db_url, tables.prices)) == 19
    run = table(db_url, tables.ingest_runs).iloc[-1]
    errors = json.loads(run["errors"]) if isinstance(run["errors"], str) else run["errors"]
    assert [(r["reason"], r["line"]) for r in errors["rejected"]] == [("missing close", 5), ("non-positive price", 7)]
    assert errors["rejected_total"] == 2 and errors["rejected"][1]["raw"].startswith(str(bars["date"].iloc[5]))


def files_as_people_have_them(folder: Path, bars: pd.DataFrame) -> None:
    """One symbol per layout (bars of SPY, QQQ, GLD, TLT, EFA from ``bars``), and the files that cannot be used."""
    folder.mkdir()
    rows = {s: b.drop(columns="symbol").reset_index(drop=True) for s, b in bars.groupby("symbol")}
    yahoo = rows["SPY"].rename(columns=str.title).rename(columns={"Adj_Close": "Adj Close"})
    yahoo.to_csv(folder / "SPY.csv", index=False)
    yahoo.to_csv(folder / "SPY (1).csv", index=False)  # the same download twice: one copy
    stooq = rows["QQQ"].assign(ticker="QQQ.US", per="D", date=rows["QQQ"]["date"].str.replace("-", ""), time="000000")
    stooq = stooq[["ticker", "per", "date", "time", "open", "high", "low", "close", "volume"]].assign(openint=0)
    stooq.rename(columns=lambda c: f"<{c.upper()}>").rename(columns={"<VOLUME>": "<VOL>"}).to_csv(
        folder / "qqq.us.txt", index=False
    )
    alpha = rows["GLD"].rename(columns={"date": "timestamp", "adj_close": "adjusted_close"})
    alpha.assign(dividend_amount=0.0, split_coefficient=1.0).iloc[::-1].to_csv(folder / "GLD.csv", index=False)
    european = rows["TLT"].assign(date=pd.to_datetime(rows["TLT"]["date"]).dt.strftime("%d.%m.%Y"))
    european["volume"] = [f"{v:,.0f}".replace(",", ".") for v in european["volume"]]  # 1.234.567
    lines = european.rename(columns=str.title).to_csv(index=False, sep=";", decimal=",").splitlines()
    cells = lines[5].split(";")
    lines[5] = ";".join([*cells[:4], "n/a", *cells[5:]])  # line 6: no close
    (folder / "TLT.csv").write_text("\n".join(lines) + "\n")
    efa = rows["EFA"].rename(columns=str.title)
    efa.to_csv(folder / "EFA.csv", index=False)
    efa.assign(Close=efa["Close"] + 0.01).to_csv(folder / "efa.csv.gz", index=False)  # another vendor's prices
    (folder / "IWM.csv.gz").write_bytes(gzip.compress(yahoo.to_csv(index=False).encode())[:200])  # truncated
    (folder / "my export.csv").write_text(yahoo.to_csv(index=False))  # no symbol in the name or the rows
    (folder / "notes.txt").write_text("downloaded 2020-04-01\n")  # NOTES is not in the watchlist: ignored


def test_a_folder_of_files_as_people_have_them_stores_what_reads_and_reports_the_rest(
    db_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = pd.read_csv(SAMPLE_CSV)
    wanted = ["SPY", "QQQ", "GLD", "TLT", "EFA"]
    bars = sample[sample["symbol"].isin(wanted) & sample["date"].between("2020-01-02", "2020-03-31")]
    folder = env / "downloads"
    files_as_people_have_them(folder, bars)
    argv = ["--source", "csv", "--csv", str(folder), "--watchlist", write_watchlist(env, *wanted, "IWM")]
    code = ingest(monkeypatch, db_url, *argv, "--start", "2020-01-02", "--end", "2020-03-31")
    out = capsys.readouterr().out
    assert code == ExitCode.PARTIAL
    assert f"missing close: 1 in 1 symbol(s) (TLT 1); e.g. {folder / 'TLT.csv'}:6 'n/a'" in out
    assert "3 file(s) not read:" in out
    assert f"IWM: {folder / 'IWM.csv.gz'}: corrupt or truncated gzip file" in out
    assert (
        f"EFA: {folder / 'EFA.csv'}: conflicting files for one symbol ({folder / 'EFA.csv'}, {folder / 'efa.csv.gz'}"
        in out
    )
    assert f"{folder / 'my export.csv'}: no symbol column, and the name gives no symbol" in out
    assert "notes.txt" not in out and "1 row(s) or file(s) not read, of symbols not in the watchlist" in out
    assert "6 symbol(s): 4 ok, 2 failed; 248 fetched, 247 inserted, 0 updated, 0 unchanged, 1 rejected" in out

    stored = db_utils.read_price_bars(db_utils.make_engine(db_url))
    expected = bars[~((bars["symbol"] == "TLT") & (bars.groupby("symbol").cumcount() == 4))]
    expected = expected[expected["symbol"] != "EFA"].sort_values(["symbol", "date"], ignore_index=True)
    assert stored["symbol"].tolist() == expected["symbol"].tolist() and len(stored) == 247
    assert (stored["date"].dt.strftime("%Y-%m-%d") == expected["date"]).all()
    np.testing.assert_allclose(stored[["open", "high", "low", "close", "volume"]], expected[["open", "high", "low",
                               "close", "volume"]])  # fmt: skip
    adj = stored["adj_close"].to_numpy()
    has_adj = stored["symbol"].isin(["SPY", "GLD", "TLT"]).to_numpy()  # Stooq has no adjusted close
    np.testing.assert_allclose(adj[has_adj], expected["adj_close"].to_numpy()[has_adj])
    assert np.isnan(adj[~has_adj]).all()
    symbols = table(db_url, tables.symbols).set_index("symbol")["status"].to_dict()
    assert symbols == {"SPY": "ok", "QQQ": "ok", "GLD": "ok", "TLT": "ok", "EFA": "failed", "IWM": "failed"}
    run = table(db_url, tables.ingest_runs).iloc[-1]
    errors = json.loads(run["errors"]) if isinstance(run["errors"], str) else run["errors"]
    assert sorted(Path(f["file"]).name for f in errors["unread_files"]) == ["EFA.csv", "IWM.csv.gz", "my export.csv"]
    assert (run["status"], run["exit_code"], run["rows_rejected"]) == ("partial", 3, 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--start", "2020-13-01", "--end", "2020-12-31"], "setting --start: '2020-13-01' is not a date"),
        (["--start", "2020-06-01", "--end", "2020-05-31"], "--end 2020-05-31 is before --start 2020-06-01"),
        (["--start", "2020-06-01", "--end", "2999-01-01"], "--end 2999-01-01 is in the future"),
        (["--end", "2020-05-31"], "--start and --end are required"),
        (["--start", "2020-01-02", "--end", "2020-01-31", "--min-coverage", "1.5"], "--min-coverage must be between"),
        (["--start", "2020-01-02", "--end", "2020-01-31", "--calendar", "XXXX"], "--calendar 'XXXX' is not"),
        (["--start", "2020-01-02", "--end", "2020-01-31", "--source", "csv"], "--source csv needs --csv PATH"),
        (["--start", "2020-01-02", "--end", "2020-01-31", "--csv", "x.csv"], "--csv only applies to --source csv"),
        (["--start", "2020-01-02", "--end", "2020-01-31", "--source", "csv", "--csv", "nope.csv"], "nope.csv: no such"),
        (
            ["--start", "2020-01-02", "--end", "2020-01-31", "--watchlist", "nope.csv"],
            "watchlist nope.csv: cannot read",
        ),
    ],
)
def test_bad_arguments_fail_with_usage_before_any_database_work(
    argv: list[str], message: str, sqlite_url: str, env: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert ingest(monkeypatch, sqlite_url, "--source", "sample", *argv) == ExitCode.USAGE
    assert message in capsys.readouterr().err
    assert not Path(str(sa.make_url(sqlite_url).database)).exists()


def test_watchlist_errors_name_file_and_line(
    sqlite_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = env / "watchlist.csv"
    path.write_text("symbol\nSPY\nBAD$\n")
    assert ingest(monkeypatch, sqlite_url, "--watchlist", str(path), *SAMPLE_RANGE) == ExitCode.USAGE
    assert f"watchlist {path}, line 3: invalid symbol 'BAD$'" in capsys.readouterr().err
    assert "invalid symbol 'BAD$'" in (env / "log" / "mvp_pipeline.log").read_text()


def test_a_second_run_while_the_lock_is_held_exits_locked(
    db_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = db_utils.connect(mvp_pipeline.IngestSettings(database_url=db_url), announce=lambda _: None)
    with run_locks.run_lock(engine, mvp_pipeline.LOCK_NAME):
        code = ingest(monkeypatch, db_url, "--source", "sample", "--start", "2024-01-02", "--end", "2024-01-31")
    assert code == ExitCode.LOCKED
    assert "another run holds the lock" in capsys.readouterr().err
    assert len(table(db_url, tables.prices)) == 0 and len(table(db_url, tables.ingest_runs)) == 0
    engine.dispose()


def test_dry_run_writes_nothing(sqlite_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    argv = ["--source", "sample", "--start", "2024-01-02", "--end", "2024-01-31", "--dry-run"]
    assert ingest(monkeypatch, sqlite_url, *argv) == 0
    sessions = len(coverage_check.expected_sessions(dt.date(2024, 1, 2), dt.date(2024, 1, 31)))
    assert f"dry run, nothing written: 15 symbol(s): 15 ok; {15 * sessions} fetched" in capsys.readouterr().out
    assert len(table(sqlite_url, tables.prices)) == 0 and len(table(sqlite_url, tables.ingest_runs)) == 0


def test_print_config_masks_the_password(env: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    code = ingest(monkeypatch, "postgresql://me:s3cret@db:5432/x", "--print-config", "--ib-port", "4001")
    out = capsys.readouterr().out
    assert code == 0 and "s3cret" not in out and "postgresql://me:***@db:5432/x" in out
    assert "ib_port = 4001   (flag)" in out and "min_coverage = 0.95   (default)" in out


def test_ibkr_source_is_called_with_the_contract_and_its_metadata_stored(
    sqlite_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import ibkr_source

    calls = []

    def fake(entries: list, start: dt.date, end: dt.date, since: dict, settings: Any) -> Iterator[wl.SymbolFetch]:
        calls.append((entries, start, end, since, settings.ib_port))
        bars, _ = wl.read_bars_file(SAMPLE_CSV)
        spy = bars[(bars["symbol"] == "SPY") & bars["date"].between("2024-01-02", "2024-01-31")]
        meta = {"ib_con_id": 756733, "primary_exchange": "ARCA", "long_name": "SPDR S&P 500 ETF TRUST"}
        yield wl.SymbolFetch(
            "SPY", wl.FetchStatus.STORED, spy, metadata=meta, first_available_date=dt.date(1993, 1, 29)
        )
        yield wl.SymbolFetch("QQQ", wl.FetchStatus.FAILED, wl.empty_bars(), "no security definition", 200)

    monkeypatch.setattr(ibkr_source, "fetch_price_history_ibkr", fake)
    argv = ["--source", "ibkr", "--ib-port", "4999", "--watchlist", write_watchlist(env, "SPY", "QQQ")]
    assert ingest(monkeypatch, sqlite_url, *argv, "--start", "2024-01-02", "--end", "2024-01-31") == ExitCode.PARTIAL
    entries, start, end, since, port = calls[0]
    assert [e.symbol for e in entries] == ["SPY", "QQQ"] and (start, end, since, port) == (
        dt.date(2024, 1, 2), dt.date(2024, 1, 31), {}, 4999,
    )  # fmt: skip
    spy = table(sqlite_url, tables.symbols).set_index("symbol").loc["SPY"]
    assert spy["ib_con_id"] == 756733 and spy["name"] == "SPDR S&P 500 ETF TRUST"
    assert str(spy["first_available_date"]) == "1993-01-29" and spy["coverage"] == 1.0
    assert "QQQ: IB error 200: no security definition" in capsys.readouterr().out


def test_sample_source_runs_without_loading_ib_async(tmp_path: Path) -> None:
    # ib_async is only for --source ibkr: the other sources must work without it (and start faster)
    code = "import sys, mvp_pipeline; c = mvp_pipeline.main(sys.argv[1:]); print(c, 'ib_async' in sys.modules)"
    database = f"sqlite:///{tmp_path / 'x.sqlite'}"
    args = ["--source", "sample", "--start", "2025-09-01", "--end", "2025-09-26", "--database-url", database,
            "--log-dir", str(tmp_path), "--watchlist", write_watchlist(tmp_path, "SPY")]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.stdout.splitlines()[-1] == "0 False", done.stderr


def test_database_failing_mid_run_exits_with_a_database_code_and_is_recorded(
    db_url: str, env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = db_utils.make_engine(db_url)
    tables.ensure_schema(engine)
    with engine.begin() as conn:  # the database itself refuses the symbol metadata written after the bars
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("CREATE FUNCTION refuse_symbols() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                                 "'disk full (simulated)'; END $$ LANGUAGE plpgsql"))  # fmt: skip
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse_symbols BEFORE INSERT ON tt_symbols FOR EACH ROW "
                    "EXECUTE FUNCTION refuse_symbols()"
                )
            )
        else:
            conn.execute(sa.text("CREATE TRIGGER refuse_symbols BEFORE INSERT ON tt_symbols "
                                 "BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END"))  # fmt: skip
    engine.dispose()
    wl_path = write_watchlist(env, "SPY")
    code = ingest(monkeypatch, db_url, "--source", "sample", "--watchlist", wl_path, *SAMPLE_RANGE)
    assert code == ExitCode.DB_ERROR
    err = capsys.readouterr().err
    assert "disk full (simulated)" in err and "Traceback" not in err
    run = table(db_url, tables.ingest_runs).iloc[-1]
    assert (run["status"], run["exit_code"]) == ("failed", ExitCode.DB_ERROR)
