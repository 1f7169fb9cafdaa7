"""bar_store.upsert_price_bars: validation, idempotency on real data, updates, and failures mid-batch."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import bar_store
import db_utils
from conftest import SAMPLE_CSV


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_CSV)


def count_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM tt_prices")).scalar_one())


def spy_rows(sample: pd.DataFrame, n: int) -> pd.DataFrame:
    return sample[sample["symbol"] == "SPY"].head(n).reset_index(drop=True)


def offending(sample: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Real SPY bars, each broken in one way; returns the frame and the expected reason per date."""
    rows = spy_rows(sample, 14).copy()
    d = rows["date"]
    expected = {
        d[0]: "missing price",
        d[1]: "non-positive price",
        d[2]: "high < low",
        d[3]: "open/close outside [low, high]",
        d[4]: "negative volume",
        d[5]: "missing volume",
        d[6]: "non-positive price",
        d[7]: "open/close outside [low, high]",
        d[11]: "non-finite value",
        d[12]: "non-finite value",
    }
    rows.loc[0, "close"] = np.nan
    rows.loc[1, "open"] = -rows.loc[1, "open"]
    high, low = float(rows.loc[2, "high"]), float(rows.loc[2, "low"])
    rows.loc[2, "high"], rows.loc[2, "low"] = low, high
    rows.loc[3, "open"] = rows.loc[3, "high"] * 1.05
    rows.loc[4, "volume"] = -100
    rows.loc[5, "volume"] = np.nan
    rows.loc[6, "adj_close"] = 0.0
    rows.loc[7, "close"] = rows.loc[7, "low"] * 0.9
    rows.loc[8, "date"] = "2005-13-45"
    rows.loc[11, "high"] = np.inf  # inf and 1e309 parse alike; never stored as Infinity
    rows.loc[12, "volume"] = float("1e309")
    conflicting = rows.loc[[9]].assign(volume=rows.loc[9, "volume"] + 1000)
    identical = rows.loc[[10]]
    rows = pd.concat([rows, conflicting, identical], ignore_index=True)
    return rows, expected


def test_every_validation_rule_rejects_a_real_offending_row_and_stores_the_rest(
    engine: sa.Engine, sample: pd.DataFrame
) -> None:
    rows, expected = offending(sample)
    result = bar_store.upsert_price_bars(engine, rows, source="test")
    reasons = dict(zip(result.rejected_rows["date"].astype(str), result.rejected_rows["reason"], strict=False))
    for date, reason in expected.items():
        assert reasons[date] == reason, date
    assert reasons["2005-13-45"] == "missing or unparseable date"
    by_reason = result.rejected_rows["reason"].value_counts()
    assert by_reason["conflicting duplicate (symbol, date)"] == 2  # both copies: which one is right is unknown
    assert by_reason["duplicate (symbol, date)"] == 1  # the identical copy; the first one is stored
    assert result.rejected == 14
    assert result.inserted == 2  # 14 real rows - 11 broken - the conflicting pair + the kept identical one
    assert count_rows(engine) == 2
    assert result.per_symbol.loc["SPY"].to_dict() == {"inserted": 2, "updated": 0, "unchanged": 0, "rejected": 14}


def test_changed_bar_is_updated_and_unchanged_rows_are_not_rewritten(engine: sa.Engine, sample: pd.DataFrame) -> None:
    rows = spy_rows(sample, 50)
    assert bar_store.upsert_price_bars(engine, rows, source="csv").inserted == 50
    with engine.connect() as conn:
        stamps: dict[Any, Any] = dict(conn.execute(sa.text("SELECT date, ingested_at FROM tt_prices")).all())
    changed = rows.copy()
    changed.loc[10, "close"] = round(changed.loc[10, "close"] * 1.001, 4)
    changed.loc[20, "adj_close"] = np.nan
    result = bar_store.upsert_price_bars(engine, changed, source="csv")
    assert (result.inserted, result.updated, result.unchanged) == (0, 2, 48)
    stored = db_utils.read_price_bars(engine, ["SPY"])
    assert stored.loc[10, "close"] == changed.loc[10, "close"]
    assert np.isnan(stored.loc[20, "adj_close"])
    with engine.connect() as conn:
        after: dict[Any, Any] = dict(conn.execute(sa.text("SELECT date, ingested_at FROM tt_prices")).all())
    untouched = [d for d in stamps if str(d) not in (rows.loc[10, "date"], rows.loc[20, "date"])]
    assert all(after[d] == stamps[d] for d in untouched)


def test_sample_round_trips_exactly(engine: sa.Engine, sample: pd.DataFrame) -> None:
    result = bar_store.upsert_price_bars(engine, sample, source="sample")
    assert (result.inserted, result.rejected) == (78_255, 0)
    stored = db_utils.read_price_bars(engine)
    expected = sample.sort_values(["symbol", "date"], ignore_index=True)
    for col in ("open", "high", "low", "close", "adj_close", "volume"):
        np.testing.assert_array_equal(stored[col].to_numpy(), expected[col].to_numpy(dtype="float64"), err_msg=col)
    assert (stored["date"].dt.strftime("%Y-%m-%d") == expected["date"]).all()
    again = bar_store.upsert_price_bars(engine, sample, source="sample")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 78_255)


@pytest.mark.postgres
@pytest.mark.slow
def test_scale_set_twice_on_postgres_is_idempotent(pg_url: str, scale_csv: Path) -> None:
    engine = db_utils.connect(db_utils_settings(pg_url))
    bars = pd.read_csv(scale_csv)
    assert len(bars) == 619_029
    first = bar_store.upsert_price_bars(engine, bars, source="csv")
    # 12 real bars have open/close outside [low, high] (e.g. LNT 2016-05-19 close 17.87): rejected with reasons.
    assert (first.inserted, first.rejected) == (619_017, 12)
    assert first.inserted + first.rejected == len(bars)
    snapshot = db_utils.read_price_bars(engine)
    second = bar_store.upsert_price_bars(engine, bars, source="csv")
    assert (second.inserted, second.updated, second.unchanged, second.rejected) == (0, 0, 619_017, 12)
    assert count_rows(engine) == 619_017
    pd.testing.assert_frame_equal(db_utils.read_price_bars(engine), snapshot)
    lnt = first.rejected_rows[first.rejected_rows["symbol"] == "LNT"]
    assert lnt["date"].tolist() == ["2016-05-19"] and lnt["reason"].tolist() == ["open/close outside [low, high]"]


def db_utils_settings(url: str) -> object:
    from settings import CommonSettings

    return CommonSettings(database_url=url)


def add_failing_trigger(engine: sa.Engine) -> None:
    """Make the database itself fail while storing symbol BOOM (a real error inside the batch's transaction)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN IF NEW.symbol = 'BOOM' THEN "
                    "RAISE EXCEPTION 'disk full (simulated)'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(sa.text("CREATE TRIGGER boom BEFORE INSERT ON tt_prices FOR EACH ROW EXECUTE FUNCTION boom()"))
        else:
            conn.execute(
                sa.text(
                    "CREATE TRIGGER boom BEFORE INSERT ON tt_prices WHEN NEW.symbol = 'BOOM' "
                    "BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END"
                )
            )


def test_failed_batch_leaves_table_as_before_it_and_names_symbols_not_stored(
    engine: sa.Engine, sample: pd.DataFrame
) -> None:
    spy, agg = spy_rows(sample, 30), sample[sample["symbol"] == "AGG"].head(30)
    boom = agg.assign(symbol="BOOM").head(5)
    tlt = sample[sample["symbol"] == "TLT"].head(30)
    add_failing_trigger(engine)
    # Batches of 40 rows: [SPY 30 + AGG 10] [AGG 20 + BOOM 5 + TLT 15] [TLT 15].
    result = bar_store.upsert_price_bars(engine, pd.concat([spy, agg, boom, tlt]), batch_rows=40)
    assert not result.ok and "batch 2" in str(result.error) and "disk full (simulated)" in str(result.error)
    assert result.not_stored_symbols == ["AGG", "BOOM", "TLT"]
    stored = db_utils.read_price_bars(engine)
    assert stored.groupby("symbol").size().to_dict() == {"AGG": 10, "SPY": 30}  # batch 1 only
    assert result.inserted == 40


@pytest.mark.postgres
def test_connection_killed_mid_batch_leaves_no_partial_batch(pg_url: str, sample: pd.DataFrame) -> None:
    # Only this test's own connections are killed (other tests share the server): they carry a unique name.
    name = f"tt_kill_{uuid.uuid4().hex[:8]}"
    engine = db_utils.connect(db_utils_settings(f"{pg_url}&application_name={name}"))
    with engine.begin() as conn:  # slow down inserts of SLOW so the batch is surely in flight when killed
        conn.execute(
            sa.text(
                "CREATE FUNCTION slow() RETURNS trigger AS $$ BEGIN IF NEW.symbol = 'SLOW' THEN "
                "PERFORM pg_sleep(0.05); END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(sa.text("CREATE TRIGGER slow BEFORE INSERT ON tt_prices FOR EACH ROW EXECUTE FUNCTION slow()"))
    first = spy_rows(sample, 100)
    slow = sample[sample["symbol"] == "AGG"].head(100).assign(symbol="SLOW")
    admin = db_utils.make_engine(pg_url)
    killed: list[int] = []

    def kill_when_inserting() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not killed:
            with admin.connect() as conn:
                # Strike only the SLOW batch: wait until the first batch (SPY) is committed.
                if conn.execute(sa.text("SELECT count(*) FROM tt_prices WHERE symbol = 'SPY'")).scalar_one() < 100:
                    time.sleep(0.01)
                    continue
                pids = conn.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = :name AND state = 'active' "
                        "AND query LIKE '%INSERT INTO tt_prices AS p%'"
                    ),
                    {"name": name},
                ).scalars()
                for pid in pids:
                    conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_inserting)
    killer.start()
    result = bar_store.upsert_price_bars(engine, pd.concat([first, slow]), batch_rows=100)
    killer.join()
    assert killed, "the batch was never seen in flight"
    assert not result.ok and result.not_stored_symbols == ["SLOW"]
    stored = db_utils.read_price_bars(engine)
    assert stored.groupby("symbol").size().to_dict() == {"SPY": 100}
    retry = bar_store.upsert_price_bars(engine, pd.concat([first, slow]), batch_rows=100)  # the pool reconnects
    assert (retry.ok, retry.inserted, retry.unchanged) == (True, 100, 100)
    admin.dispose()
