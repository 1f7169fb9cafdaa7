"""predict_mvp.py on the bundled sample (SQLite and PostgreSQL): days passing (stored targets = the evaluation
rollout's, shadow returns = the environment's), the data gate (stale, missing, non-finite: refused, nothing
written), idempotent reruns, a gap filled in order, the shadow report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import bar_store
import db_utils
import predict_mvp
import signal_records
import tt_schema as tables
from conftest import engine_with_bars, read_table, run_train
from market import build_market
from policy_rollout import (
    agent_policy,
    final_checkpoint,
    load_model,
    rollout,
    run_env_settings,
    run_normalizer,
    slice_market,
)
from run_records import RunRecord
from settings import ExitCode, UserError, run_cli
from tensortrade_risk_module import EnvConfig
from trading_env import make_env

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_daily_bars.csv.gz"
SYMBOLS = ("SPY", "TLT")
TRAIN = ["--symbols", ",".join(SYMBOLS), "--start", "2010-06-01", "--end", "2011-12-30", "--episodes", "1",
         "--episode-length", "64", "--n-steps", "64", "--batch-size", "32", "--n-epochs", "1",
         "--seed", "7"]  # fmt: skip
FIRST = dt.date(2012, 1, 3)  # the first session after the training slice


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    bars = pd.read_csv(SAMPLE, parse_dates=["date"])
    bars = bars[bars["symbol"].isin(SYMBOLS) & (bars["date"] >= "2010-01-01") & (bars["date"] <= "2012-03-30")]
    return bars.assign(date=bars["date"].dt.date).reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sample: pd.DataFrame) -> dict[str, Any]:
    """A tiny run trained once through train_mvp.main; its tt_runs row (copied into each test's database)."""
    folder = tmp_path_factory.mktemp("trained")
    engine = engine_with_bars(f"sqlite:///{folder / 'train.sqlite'}", sample[sample["date"] < FIRST])
    assert run_train(engine, folder, *TRAIN) == 0
    with engine.connect() as conn:
        row = dict(conn.execute(sa.select(tables.runs)).mappings().one())
    engine.dispose()
    return row


@pytest.fixture
def db(engine: sa.Engine, trained: dict[str, Any], sample: pd.DataFrame) -> sa.Engine:
    """The test's database with the run recorded and the bars up to the training end stored."""
    with engine.begin() as conn:
        conn.execute(tables.runs.insert().values(**trained))
    ingest(engine, sample, None, FIRST - dt.timedelta(days=1))
    return engine


def ingest(engine: sa.Engine, sample: pd.DataFrame, after: dt.date | None, until: dt.date) -> None:
    """Store the sample's bars in (after, until]: a daily ingest."""
    rows = sample[(sample["date"] <= until) & ((sample["date"] > after) if after else True)]
    assert bar_store.upsert_price_bars(engine, rows, source="test").ok


def sessions(sample: pd.DataFrame, start: dt.date, n: int) -> list[dt.date]:
    return sorted(d for d in sample["date"].unique() if d >= start)[:n]


def predict(engine: sa.Engine, *args: str) -> int:
    return run_cli(predict_mvp.main, ["--database-url", engine.url.render_as_string(hide_password=False), *args])


def snapshot(engine: sa.Engine) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_table(engine, tables.signals), read_table(engine, tables.shadow)


def evaluation_rollout(engine: sa.Engine, start: dt.date, end: dt.date) -> tuple[dict[dt.date, np.ndarray], pd.Series]:
    """evaluate_mvp's code path from ``start`` to ``end``: the agent's targets per decision date and the daily
    returns of the environment."""
    run = RunRecord.from_row(read_table(engine, tables.runs).iloc[0].to_dict())
    env_settings = run_env_settings(run)
    config = EnvConfig(**env_settings)
    data = db_utils.load_training_bars(engine, run.symbols, None, end, include_flagged=True)
    env = make_env(slice_market(build_market(data.bars, config), config, start, end), **env_settings)
    checkpoint = final_checkpoint(run)
    model = load_model(checkpoint, len(run.symbols), env.observation_space.shape)
    agent, targets = agent_policy(model, run_normalizer(run, checkpoint)), {}

    def recorded(obs: np.ndarray, date: np.datetime64, previous: np.datetime64 | None) -> Any:
        decision = agent(obs, date, previous)
        assert decision[1] is not None
        targets[pd.Timestamp(date).date()] = env.engine.action_scheme.targets(decision[1], env.t)
        return decision

    trace, _ = rollout(env, recorded)
    return targets, trace["net_worth"].pct_change().iloc[1:]


def test_days_passing_match_the_evaluation_rollout(
    db: sa.Engine, sample: pd.DataFrame, capsys: pytest.CaptureFixture
) -> None:
    days = sessions(sample, FIRST, 12)
    previous = None
    for day in days:
        ingest(db, sample, previous, day)
        assert predict(db, "--as-of", day.isoformat(), "--json") == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["as_of"] == day.isoformat() and doc["anchor"] == FIRST.isoformat()
        assert doc["shadow"]["days_added"] == ([] if previous is None else [day.isoformat()])
        assert set(doc["table"]) == set(SYMBOLS) and doc["notional"] == 100_000.0
        previous = day
    signals, shadow = snapshot(db)
    stored = signals.assign(as_of=[pd.Timestamp(d).date() for d in signals["as_of"]])
    stored = stored.pivot(index="as_of", columns="symbol", values="target_weight")
    targets, returns = evaluation_rollout(db, FIRST, days[-1])
    assert list(stored.index) == days
    assert sorted(targets) == days[:-1]  # the rollout makes no decision at its last close
    for day in days[:-1]:
        np.testing.assert_array_equal(stored.loc[day, list(SYMBOLS)].to_numpy(float), targets[day])
    assert [pd.Timestamp(d).date() for d in shadow["date"]] == days[1:]
    np.testing.assert_allclose(shadow["daily_return"].to_numpy(), returns.to_numpy(), rtol=0, atol=1e-12)
    assert shadow["signal_as_of"].notna().all()
    assert stored.abs().sum(axis=1).max() > 0  # the policy invested: the comparison says something

    assert predict(db, "--shadow-report", "--bootstrap-reps", "100") == 0
    out = capsys.readouterr().out
    assert "shadow record of run" in out and "inverse-vol" in out and f"{FIRST} .. {days[-1]}" in out


def test_rerun_is_idempotent_and_a_gap_is_filled_in_order(
    db: sa.Engine, sample: pd.DataFrame, capsys: pytest.CaptureFixture
) -> None:
    days = sessions(sample, FIRST, 6)
    ingest(db, sample, None, days[0])
    assert predict(db, "--as-of", days[0].isoformat()) == 0
    first = snapshot(db)
    assert predict(db, "--as-of", days[0].isoformat()) == 0
    pd.testing.assert_frame_equal(snapshot(db)[0], first[0])
    assert first[1].empty
    ingest(db, sample, days[0], days[5])
    assert predict(db, "--as-of", days[5].isoformat()) == 0
    signals, shadow = snapshot(db)
    again = predict(db, "--as-of", days[5].isoformat())
    pd.testing.assert_frame_equal(snapshot(db)[0], signals)
    pd.testing.assert_frame_equal(snapshot(db)[1], shadow)
    assert again == 0
    assert [pd.Timestamp(d).date() for d in shadow["date"]] == days[1:]
    # the first day traded the first signal, then the portfolio held: no signal was published in the gap
    assert [None if pd.isna(s) else pd.Timestamp(s).date() for s in shadow["signal_as_of"]] == [days[0]] + [None] * 4
    assert shadow["turnover"].iloc[1:].eq(0).all() and shadow["turnover"].iloc[0] > 0
    assert sorted({pd.Timestamp(d).date() for d in signals["as_of"]}) == [days[0], days[5]]
    assert "targets at the close of" in capsys.readouterr().out


def refused(db: sa.Engine, day: dt.date, capsys: pytest.CaptureFixture) -> str:
    assert predict(db, "--as-of", day.isoformat()) == ExitCode.REFUSED
    signals, shadow = snapshot(db)
    assert signals.empty and shadow.empty
    return capsys.readouterr().err


def test_stale_symbol_is_refused_naming_it(db: sa.Engine, sample: pd.DataFrame, capsys: pytest.CaptureFixture) -> None:
    day = sessions(sample, FIRST, 2)[1]
    ingest(db, sample[sample["symbol"] == "SPY"], None, day)
    ingest(db, sample[sample["symbol"] == "TLT"], None, FIRST)
    assert f"TLT: latest bar {FIRST}" in refused(db, day, capsys)


def test_missing_symbol_is_refused(db: sa.Engine, sample: pd.DataFrame, capsys: pytest.CaptureFixture) -> None:
    with db.begin() as conn:
        conn.execute(tables.prices.delete().where(tables.prices.c.symbol == "TLT"))
    ingest(db, sample[sample["symbol"] == "SPY"], None, FIRST)
    assert "TLT: no stored bar" in refused(db, FIRST, capsys)


def test_non_finite_features_are_refused(db: sa.Engine, sample: pd.DataFrame, capsys: pytest.CaptureFixture) -> None:
    ingest(db, sample, None, FIRST)
    with db.begin() as conn:  # a bad print that validation would have rejected, written behind its back
        conn.execute(tables.prices.update().where((tables.prices.c.symbol == "SPY") & (tables.prices.c.date == FIRST))
                     .values(adj_close=float("inf")))  # fmt: skip
    assert f"features not finite on {FIRST}: SPY price, log_ret" in refused(db, FIRST, capsys)


def test_in_sample_and_earlier_sessions_are_refused(
    db: sa.Engine, sample: pd.DataFrame, capsys: pytest.CaptureFixture
) -> None:
    assert "inside run" in refused(db, dt.date(2011, 12, 30), capsys)
    days = sessions(sample, FIRST, 2)
    ingest(db, sample, None, days[1])
    assert predict(db, "--as-of", days[1].isoformat()) == 0
    assert predict(db, "--as-of", days[0].isoformat()) == ExitCode.REFUSED
    assert "before run" in capsys.readouterr().err


def test_an_as_of_date_past_the_calendar_is_a_usage_error_not_a_traceback() -> None:
    assert signal_records.last_session(dt.date(2024, 7, 6), "XNYS") == dt.date(2024, 7, 5)  # Saturday -> Friday
    with pytest.raises(UserError, match="--as-of 2099-01-01: outside the sessions") as caught:
        signal_records.last_session(dt.date(2099, 1, 1), "XNYS")
    assert caught.value.exit_code == ExitCode.USAGE
