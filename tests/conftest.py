"""Shared fixtures: a real PostgreSQL server (fresh schema per test) and SQLite files.

PostgreSQL comes from ``TT_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``). When it is
unreachable the PostgreSQL tests are skipped locally, but fail when ``CI=true``: CI must never pass without them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import bar_store
import db_utils
import tt_schema

PG_URL = os.environ.get("TT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent
SAMPLE_CSV = REPO / "data" / "sample_daily_bars.csv.gz"
# The 505-symbol scale set is read from the shared folder beside the repository (never copied into it).
SCALE_CSV = Path(os.environ.get("TT_SCALE_CSV", REPO.parent / "shared" / "data" / "scale_daily_bars.csv.gz"))


@pytest.fixture(scope="session")
def scale_csv() -> Path:
    """The scale set; skipped locally when absent, a failure when ``CI=true``."""
    if not SCALE_CSV.is_file():
        message = f"scale set {SCALE_CSV} not found (set TT_SCALE_CSV)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SCALE_CSV


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server URL, checked once per session."""
    engine = db_utils.make_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL at {PG_URL} unreachable: {str(exc.orig).strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    finally:
        engine.dispose()
    return PG_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A URL whose connections see only a fresh, empty schema (dropped after the test)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db_utils.make_engine(pg_server)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in pg_server else "?"
    yield f"{pg_server}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL for an empty SQLite file in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'tt_test.sqlite'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(name)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh database (both backends) with the schema created."""
    eng = db_utils.make_engine(db_url)
    tt_schema.ensure_schema(eng)
    yield eng
    eng.dispose()


def engine_with_bars(url: str, bars: pd.DataFrame) -> sa.Engine:
    """An engine on ``url`` with the schema created and ``bars`` stored."""
    engine = db_utils.make_engine(url)
    tt_schema.ensure_schema(engine)
    assert bar_store.upsert_price_bars(engine, bars).ok
    return engine


def read_table(engine: sa.Engine, table: sa.Table) -> pd.DataFrame:
    """Every row of ``table``."""
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(sa.select(table)).mappings().all())


def run_train(engine: sa.Engine, tmp_path: Path, *args: str) -> int:
    """``train_mvp.main`` on ``engine``'s database, checkpoints and logs under ``tmp_path``."""
    import train_mvp

    url = engine.url.render_as_string(hide_password=False)
    folders = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--log-dir", str(tmp_path / "log")]
    return train_mvp.main([*args, "--database-url", url, *folders])


# ------------------------------------------------------------------ the training tests' two-symbol sample
TRAINING_SYMBOLS = ("SPY", "TLT")


@pytest.fixture(scope="module")
def sample_bars() -> pd.DataFrame:
    """The bundled sample restricted to two symbols and three years."""
    bars = pd.read_csv(SAMPLE_CSV, parse_dates=["date"])
    return bars[bars["symbol"].isin(TRAINING_SYMBOLS) & (bars["date"] >= "2009-06-01") & (bars["date"] <= "2012-12-31")]


@pytest.fixture
def stored(db_url: str, sample_bars: pd.DataFrame) -> Iterator[sa.Engine]:
    """An engine on a fresh database holding the sample bars."""
    engine = engine_with_bars(db_url, sample_bars)
    yield engine
    engine.dispose()
