"""predict_mvp.py on the bundled sample (SQLite and PostgreSQL): days passing (stored targets = the evaluation
rollout's, shadow returns = the environment's), the data gate (stale, missing, non-finite: refused, nothing
written), idempotent reruns, a gap filled in order, the out-of-distribution warning, the vol-targeting steps, and
``evaluate_mvp.py --shadow``."""

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
import evaluate_mvp
import evaluation_records as records
import predict_mvp
import signal_records
import tt_schema as tables
from conftest import engine_with_bars, read_table, run_train
from evaluation_stats import BootstrapConfig, evaluation_statistics
from market import build_market, synthetic_bars
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


def evaluate(engine: sa.Engine, *args: str) -> int:
    url = engine.url.render_as_string(hide_password=False)
    return run_cli(evaluate_mvp.main, ["--database-url", url, "--bootstrap-reps", "100", *args])


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
        assert doc["warnings"] == []  # ordinary days: no observation entry 4+ std devs out
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

    assert evaluate(db, "--shadow", "latest") == 0
    out = capsys.readouterr().out
    assert "shadow record of run" in out and "inverse-vol" in out and f"{FIRST} .. {days[-1]}" in out
    assert evaluate(db, "--shadow", "latest", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shadow"] is True and report["stored"] is False and not report["period"]["in_sample"]
    assert (report["period"]["start"], report["period"]["end"]) == (FIRST.isoformat(), days[-1].isoformat())
    assert set(report["policies"]) == {"agent", "cash", "buy_and_hold", "monthly_rebalanced", "inverse_vol"}
    assert {p["metrics"]["sessions"] for p in report["policies"].values()} == {len(days) - 1}  # the same days
    worth = shadow["net_worth"].to_numpy()
    assert report["policies"]["agent"]["metrics"]["total_return"] == pytest.approx(worth[-1] / 100_000.0 - 1.0)
    assert read_table(db, tables.evaluations).empty  # the shadow report stores nothing


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


def test_the_shadow_report_needs_enough_days_and_takes_its_sessions(
    db: sa.Engine, sample: pd.DataFrame, capsys: pytest.CaptureFixture
) -> None:
    assert evaluate(db, "--shadow", "latest") == ExitCode.NOT_FOUND
    assert "has no shadow record yet (0 shadow days); the statistics need at least 8" in capsys.readouterr().err
    days = sessions(sample, FIRST, 2)  # two predictions: one shadow day, too few for the statistics
    ingest(db, sample, None, days[1])
    for day in days:
        assert predict(db, "--as-of", day.isoformat()) == 0
    capsys.readouterr()
    assert evaluate(db, "--shadow", "latest") == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "has 1 shadow day(s) since its first signal; the statistics need at least 8" in err
    assert "Traceback" not in err and records.MIN_RETURNS == 8
    assert evaluate(db, "--shadow", "latest", "--start", FIRST.isoformat()) == ExitCode.USAGE
    assert "--shadow evaluates the sessions of the shadow record" in capsys.readouterr().err


def test_an_as_of_date_past_the_calendar_is_a_usage_error_not_a_traceback() -> None:
    assert signal_records.last_session(dt.date(2024, 7, 6), "XNYS") == dt.date(2024, 7, 5)  # Saturday -> Friday
    with pytest.raises(UserError, match="--as-of 2099-01-01: outside the sessions") as caught:
        signal_records.last_session(dt.date(2099, 1, 1), "XNYS")
    assert caught.value.exit_code == ExitCode.USAGE


def test_an_extreme_last_day_warns_naming_the_symbol_and_feature(
    db: sa.Engine, sample: pd.DataFrame, capsys: pytest.CaptureFixture
) -> None:
    day = sessions(sample, FIRST, 3)[2]
    jump = (sample["symbol"] == "SPY") & (sample["date"] == day)
    bars = sample.copy()
    bars.loc[jump, ["open", "high", "low", "close", "adj_close"]] *= 1.25  # +25% in a day: ~20 SPY daily std devs
    ingest(db, bars, None, day)
    assert predict(db, "--as-of", day.isoformat(), "--json") == 0
    captured = capsys.readouterr()
    warnings = json.loads(captured.out)["warnings"]
    assert len(warnings) == 1 and f"warning: {warnings[0]}" in captured.err
    # the normalized entry is clipped at checkpoints.CLIP_OBS = 5 standard deviations
    assert f"4+ std devs from the training statistics: SPY log_ret on {day} (+5.0)" in warnings[0]
    assert "TLT" not in warnings[0]  # only what moved is named
    assert not snapshot(db)[0].empty  # a warning, not a refusal: the targets are stored


def test_observation_names_follow_the_observers_layout() -> None:
    env = make_env(synthetic_bars(2, 200, seed=2), window_size=3, return_windows=(5,))
    env.reset(seed=0)
    for _ in range(3):  # past the warm-up, where the observer writes 0 for the not yet defined vol_60
        obs = env.step(np.array([0.5, -0.2], np.float32))[0]
    names, market, t = predict_mvp.observation_names(env, env.t), env.engine.market, env.t
    assert len(names) == len(obs) and len(set(names)) == len(names)
    for j, symbol in enumerate(market.symbols):
        for day in (t - 2, t):
            on = f"on {market.date_strings[day]}"
            assert obs[names.index(f"{symbol} log_ret {on}")] == np.float32(market.log_ret[day, j])
            assert obs[names.index(f"{symbol} vol_60 {on}")] == np.float32(market.vol[1][day, j])
            assert obs[names.index(f"{symbol} ret_sum_5 {on}")] == np.float32(market.ret_sum[0][day, j])
        assert obs[names.index(f"{symbol} weight")] == np.float32(env.engine.portfolio.weights[j])
    pf = env.engine.portfolio
    assert obs[names.index("cash fraction")] == np.float32(pf.cash[0] / pf.net_worth[0]) > 0
    assert obs[names.index("drawdown")] == np.float32(pf.drawdown[0])


@pytest.mark.parametrize("action_map", ["softmax", "clip"])
@pytest.mark.parametrize("vol_mode", ["per_asset", "portfolio"])
def test_the_printed_vol_targeting_steps_give_the_environments_target(action_map: str, vol_mode: str) -> None:
    env = make_env(synthetic_bars(3, 300, seed=1), action_map=action_map, vol_mode=vol_mode, max_weight=0.3)
    env.reset(seed=0)
    rng, config, capped, scaled_days = np.random.default_rng(0), env.config, 0, 0
    for _ in range(30):
        action = rng.uniform(-1.0, 1.0, 3).astype(np.float32)
        raw, scale, target = env.engine.action_scheme.steps(action, env.t)
        info = env.step(action)[4]
        np.testing.assert_array_equal(target, info["target_weights"])
        scaled = raw * scale  # the caps, applied by hand to the printed steps
        by_hand = np.clip(scaled, -config.max_weight, config.max_weight)
        by_hand /= max(np.abs(by_hand).sum() / config.max_gross, 1.0)
        np.testing.assert_allclose(by_hand, target, rtol=1e-12, atol=0)
        capped += not np.allclose(scaled, target)
        scaled_days += not np.allclose(scale, 1.0)
    assert capped > 0 and scaled_days > 0  # the scaling and the caps both changed the weights


def test_min_returns_is_the_fewest_the_statistics_are_defined_for() -> None:
    """MIN_RETURNS daily returns go through every statistic; one fewer fails inside arch's block-length estimate."""
    rng = np.random.default_rng(0)

    def returns(n: int) -> dict[str, np.ndarray]:
        return {"agent": rng.normal(0, 0.01, n), "cash": np.zeros(n), "buy_and_hold": rng.normal(0, 0.01, n)}

    stats = evaluation_statistics(returns(records.MIN_RETURNS), "agent", 1, (), BootstrapConfig(reps=100))
    assert np.isfinite(stats.deflated.dsr) and np.isfinite(stats.policies["agent"].sharpe.low)
    with pytest.raises(ValueError):
        evaluation_statistics(returns(records.MIN_RETURNS - 1), "agent", 1, (), BootstrapConfig(reps=100))
