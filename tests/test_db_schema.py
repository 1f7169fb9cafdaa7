"""Schema creation, idempotency, in-place upgrade, connection checks, run locks and reads."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import bar_store
import db_utils
import features
import run_locks
import tt_schema
from conftest import SAMPLE_CSV
from settings import CommonSettings, ExitCode, UserError

REPO = Path(__file__).resolve().parent.parent


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_schema_is_created_once_and_a_second_run_changes_nothing(db_url: str) -> None:
    engine = db_utils.make_engine(db_url)
    changes = tt_schema.ensure_schema(engine)
    assert {t.name for t in tt_schema.metadata.sorted_tables} <= table_names(engine)
    assert f"schema version 0 -> {tt_schema.SCHEMA_VERSION}" in changes
    assert tt_schema.ensure_schema(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tt_schema.schema_version)).scalar() == 1


def test_database_from_an_older_version_is_upgraded_in_place_without_data_loss(db_url: str) -> None:
    engine = db_utils.make_engine(db_url)
    old = sa.MetaData()  # what a pre-versioning release created: fewer tables, fewer columns
    sa.Table(
        "tt_prices",
        old,
        *(sa.Column(c.name, c.type, primary_key=c.primary_key) for c in tt_schema.prices.columns),
    )
    sa.Table(
        "tt_symbols",
        old,
        sa.Column("symbol", sa.String(32), primary_key=True),
        sa.Column("exchange", sa.String(32)),
        sa.Column("coverage", sa.Double),
    )
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO tt_symbols (symbol, exchange, coverage) VALUES ('SPY', 'ARCA', 0.99)"))
        conn.execute(
            sa.text(
                "INSERT INTO tt_prices (symbol, date, open, high, low, close, volume) "
                "VALUES ('SPY', '2020-03-23', 228.19, 229.68, 218.26, 222.95, 1)"
            )
        )
    changes = tt_schema.ensure_schema(engine)
    assert "added column tt_symbols.ib_con_id" in changes
    assert "created table tt_runs" in changes
    assert f"schema version 0 -> {tt_schema.SCHEMA_VERSION}" in changes
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT symbol, exchange, coverage, ib_con_id FROM tt_symbols")).one()
        assert tuple(row) == ("SPY", "ARCA", 0.99, None)
        assert conn.execute(sa.text("SELECT close FROM tt_prices WHERE symbol = 'SPY'")).scalar() == 222.95
    assert tt_schema.ensure_schema(engine) == []


def test_create_tt_tables_runs_on_its_own(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite'}"}
    command = [sys.executable, str(REPO / "create_tt_tables.py")]
    first = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "created table tt_prices" in first.stdout
    second = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "nothing changed" in second.stdout


def test_unset_database_url_means_embedded_sqlite_and_says_where(tmp_path: Path) -> None:
    messages: list[str] = []
    settings = CommonSettings(database_url=None, sqlite_path=tmp_path / "sub" / "embedded.sqlite")
    engine = db_utils.connect(settings, announce=messages.append)
    assert engine.dialect.name == "sqlite"
    assert (tmp_path / "sub" / "embedded.sqlite").exists()
    assert str(tmp_path / "sub" / "embedded.sqlite") in messages[0] and "embedded SQLite" in messages[0]


def test_postgres_urls_as_users_write_them_use_psycopg2() -> None:
    for url in ("postgresql://u:p@h:5432/db", "postgres://u:p@h:5432/db"):
        assert db_utils.make_engine(url).dialect.driver == "psycopg2"


def test_a_raw_at_in_the_password_stays_in_the_password() -> None:
    for written in ("postgresql://u:pa@ss@db.example:5432/tt", "postgres://u:pa%40ss@db.example:5432/tt"):
        url = sa.make_url(db_utils.normalize_url(written))
        assert (url.drivername, url.username, url.password) == ("postgresql+psycopg2", "u", "pa@ss")
        assert (url.host, url.port, url.database) == ("db.example", 5432, "tt")


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("suffix", "code", "words"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", ExitCode.DB_UNREACHABLE, "host unreachable"),
        ("postgresql://no_such_role_tt@127.0.0.1:5432/test", ExitCode.DB_AUTH, "authentication failed"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_tt", ExitCode.DB_MISSING, "database does not exist"),
        ("READONLY", ExitCode.DB_READONLY, "read-only"),
    ],
)
def test_connection_problems_are_named_with_distinct_exit_codes(
    pg_server: str, suffix: str, code: ExitCode, words: str
) -> None:
    url = f"{pg_server}?options=-cdefault_transaction_read_only%3Don" if suffix == "READONLY" else suffix
    with pytest.raises(UserError, match=words) as info:
        db_utils.connect(CommonSettings(database_url=url))
    assert info.value.exit_code == code


def test_read_only_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ro.sqlite"
    db_utils.connect(CommonSettings(database_url=f"sqlite:///{path}"))
    with pytest.raises(UserError, match="read-only") as info:
        db_utils.connect(CommonSettings(database_url=f"sqlite:///file:{path}?mode=ro&uri=true"))
    assert info.value.exit_code == ExitCode.DB_READONLY


def test_password_never_appears_in_connection_errors() -> None:
    with pytest.raises(UserError) as info:
        db_utils.connect(CommonSettings(database_url="postgresql://postgres:hunter2@127.0.0.1:1/test"))
    assert "hunter2" not in str(info.value)


def test_second_run_cannot_take_the_lock(engine: sa.Engine) -> None:
    with run_locks.run_lock(engine, "mvp_pipeline"):
        with (
            pytest.raises(UserError, match="another run holds the lock") as info,
            run_locks.run_lock(engine, "mvp_pipeline"),
        ):
            pass
        assert info.value.exit_code == ExitCode.LOCKED
        with run_locks.run_lock(engine, "train_mvp"):  # other names are independent
            pass
    with run_locks.run_lock(engine, "mvp_pipeline"):  # released after the run
        pass


def test_read_price_bars_filters_and_orders(engine: sa.Engine) -> None:
    bars = pd.DataFrame(
        {
            "symbol": ["SPY", "SPY", "NA"],  # NA is a real ticker, not a missing value
            "date": [dt.date(2020, 1, 3), dt.date(2020, 1, 2), dt.date(2020, 1, 2)],
            "open": [1.0, 1.0, 2.0],
            "high": [1.5, 1.5, 2.5],
            "low": [0.5, 0.5, 1.5],
            "close": [1.2, 1.1, 2.2],
            "adj_close": [None, None, 2.1],
            "volume": [10, 20, 30],
        }
    )
    assert bar_store.upsert_price_bars(engine, bars).inserted == 3
    read = db_utils.read_price_bars(engine, ["SPY"], start=dt.date(2020, 1, 3))
    assert read["date"].dt.date.tolist() == [dt.date(2020, 1, 3)]
    every = db_utils.read_price_bars(engine)
    assert list(every["symbol"]) == ["NA", "SPY", "SPY"]
    assert every["date"].dt.date.tolist()[1:] == [dt.date(2020, 1, 2), dt.date(2020, 1, 3)]
    assert every.loc[1, "close"] == 1.1
    ranges = db_utils.stored_date_ranges(engine)
    assert ranges.loc["SPY", "first_date"] == dt.date(2020, 1, 2) and ranges.loc["SPY", "bars"] == 2


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    bars = pd.read_csv(SAMPLE_CSV, parse_dates=["date"])
    return bars[bars["symbol"].isin(["SPY", "TLT", "GLD"]) & (bars["date"] < "2008-01-01")].reset_index(drop=True)


def test_load_training_bars_leaves_flagged_symbols_out_by_default(engine: sa.Engine, sample: pd.DataFrame) -> None:
    bar_store.upsert_price_bars(engine, sample, source="test")
    with engine.begin() as conn:
        db_utils.upsert_rows(conn, tt_schema.symbols, [
            {"symbol": "TLT", "coverage": 0.5, "below_min_coverage": True},
            {"symbol": "SPY", "coverage": 1.0, "below_min_coverage": False},
        ], ["symbol"])  # fmt: skip
    data = db_utils.load_training_bars(engine)
    assert data.symbols == ("GLD", "SPY") and data.flagged == {"TLT": 0.5} and data.missing == ()
    assert set(data.bars["symbol"]) == {"GLD", "SPY"}
    picked = db_utils.load_training_bars(engine, ["SPY", "TLT", "XYZ"], pd.Timestamp("2006-01-03").date())
    assert picked.symbols == ("SPY",) and picked.missing == ("XYZ",) and picked.flagged == {"TLT": 0.5}
    assert picked.bars["date"].min() == pd.Timestamp("2006-01-03")
    everything = db_utils.load_training_bars(engine, ["SPY", "TLT"], include_flagged=True)
    assert everything.symbols == ("SPY", "TLT")
    assert len(features.compute_basic_features(everything.bars)) == len(everything.bars)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM tt_prices WHERE symbol = 'TLT'")).scalar_one() > 0


@pytest.mark.postgres
def test_schema_refused_by_the_database_is_a_clear_error_not_a_traceback(pg_server: str, pg_url: str) -> None:
    role = f"tt_nocreate_{uuid.uuid4().hex[:8]}"
    schema = pg_url.rsplit("%3D", 1)[1]
    admin = db_utils.make_engine(pg_server)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {schema} TO {role}"))  # may read, may not create
    try:
        url = pg_url.replace("postgres@", f"{role}@", 1)
        env = {**os.environ, "DATABASE_URL": url}
        done = subprocess.run(
            [sys.executable, str(REPO / "create_tt_tables.py")], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == ExitCode.DB_ERROR, done.stderr
        assert "permission denied" in done.stderr and "Traceback" not in done.stderr
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"REVOKE ALL ON SCHEMA {schema} FROM {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()
