"""Baselines hold the weights they claim; the slice starts where asked; a drawdown stop liquidates and holds; what
counts as in-sample; the daily returns the statistics use."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import numpy as np
import pandas as pd
import pytest

import metrics
import policy_rollout as ev
from evaluation_records import daily_returns, overlaps_training
from market import Market, build_market, synthetic_bars
from metrics import policy_metrics
from run_records import RunRecord
from settings import ExitCode, UserError
from tensortrade_risk_module import EnvConfig
from trading_env import make_env

SMALL: dict[str, Any] = {"window_size": 5, "vol_windows": (5, 10), "vol_window": 5, "warmup": 10, "cov_window": 10}
N_ASSETS = 3


@functools.cache
def market() -> Market:
    """200 business days of 3 synthetic assets (2000-01-03 .. 2000-10-06)."""
    return build_market(synthetic_bars(N_ASSETS, 200, seed=7), EnvConfig(**SMALL))


def run(policy: str, **overrides: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    settings = {**SMALL, "max_drawdown": 1.0, **overrides}
    return ev.rollout(make_env(market(), **settings), ev.baseline_policies(N_ASSETS)[policy])


def test_cash_never_trades_and_holds_nothing() -> None:
    trace, weights = run("cash")
    assert (weights.to_numpy() == 0.0).all()
    assert (trace["net_worth"] == EnvConfig().initial_cash).all()
    assert trace["fees"].sum() == 0.0 and trace["turnover"].sum() == 0.0


def test_buy_and_hold_trades_on_day_one_only() -> None:
    trace, weights = run("buy_and_hold")
    assert trace["turnover"].iloc[1] == pytest.approx(1.0, abs=1e-3)  # cash -> fully invested
    assert (trace["turnover"].iloc[2:] == 0.0).all() and (trace["fees"].iloc[2:] == 0.0).all()
    m = market()
    close = pd.DataFrame(m.close, index=pd.DatetimeIndex(m.dates), columns=list(m.symbols))
    opened = pd.DataFrame(m.open, index=close.index, columns=close.columns)
    # equal value bought at the open of row 1: its close weights are proportional to close / open
    day_one = weights.iloc[1] / (close.loc[weights.index[1]] / opened.loc[weights.index[1]])
    assert np.allclose(day_one / day_one.sum(), 1.0 / N_ASSETS, rtol=1e-6)
    # afterwards quantities are fixed, so each weight divided by its price keeps the same proportions
    drift = (weights.iloc[1:] / close.loc[weights.index[1:]]).to_numpy()
    assert np.allclose(drift / drift.sum(axis=1, keepdims=True), drift[0] / drift[0].sum(), rtol=1e-9)


def test_monthly_rebalances_exactly_on_the_first_session_of_each_month() -> None:
    trace, _ = run("monthly_rebalanced", rebalance_band=0.0)
    decision_dates = trace.index[:-1]  # step k is decided at the close of row k and reported on row k + 1
    traded = trace["turnover"].iloc[1:].to_numpy() > 0.0
    months = decision_dates.to_period("M")
    first_of_month = np.r_[True, months[1:] != months[:-1]]
    assert first_of_month.sum() >= 8  # the slice spans enough month starts for the test to mean something
    assert np.array_equal(traded, first_of_month)


def test_inverse_vol_is_the_action_scheme_with_a_constant_action() -> None:
    trace, weights = run("inverse_vol", rebalance_band=0.0, fee_flat=0.0, commission_bps=0.0)
    env = make_env(market(), **SMALL, max_drawdown=1.0)
    env.reset()
    expected = env.engine.action_scheme.targets(np.ones(N_ASSETS), env.t)
    assert trace["turnover"].iloc[1] > 0
    # with no costs and band 0 the first fill is exactly the target (weights then move with the close)
    assert np.abs(weights.iloc[1].to_numpy() - expected).max() < 0.05
    assert weights.abs().sum(axis=1).max() <= EnvConfig().max_gross + 1e-9


def test_slice_starts_on_the_requested_session_with_full_history_features() -> None:
    full = market()
    config = EnvConfig(**SMALL)
    start, end = dt.date(2000, 6, 1), dt.date(2000, 8, 31)
    cut = ev.slice_market(full, config, start, end)
    env = make_env(cut, **SMALL)
    _, info = env.reset()
    assert info["date"] == "2000-06-01"
    assert cut.date_strings[-1] == "2000-08-31"
    offset = int(np.searchsorted(full.dates, cut.dates[0]))
    assert np.array_equal(cut.vol[1], full.vol[1][offset : offset + len(cut.dates)], equal_nan=True)


def test_slice_refuses_a_start_without_enough_history() -> None:
    with pytest.raises(UserError, match="sessions of\\s+history") as err:
        ev.slice_market(market(), EnvConfig(**SMALL), dt.date(2000, 1, 5), dt.date(2000, 3, 1))
    assert err.value.exit_code == ExitCode.REFUSED


def test_after_a_drawdown_stop_the_policy_sells_out_and_stays_in_cash() -> None:
    trace, weights = run("buy_and_hold", max_drawdown=0.03)
    stopped = trace["stopped"].to_numpy()
    assert stopped.any() and not stopped[0]
    first = int(np.argmax(stopped))  # the day after the stop: the sale fills at its open
    assert trace["fees"].iloc[first] > 0 and trace["turnover"].iloc[first] > 0.9
    after = trace.iloc[first:]
    assert (after["net_worth"] == after["net_worth"].iloc[0]).all()
    assert (weights.iloc[first:].to_numpy() == 0.0).all()
    assert len(trace) == len(market().dates) - EnvConfig(**SMALL).first_decision  # ran to the end of the data
    assert policy_metrics(trace)["days_stopped"] == len(after)


def test_evaluate_policies_gives_one_metrics_row_per_policy() -> None:
    evaluation = ev.evaluate_policies(market(), SMALL, ev.baseline_policies(N_ASSETS))
    assert list(evaluation.metrics.index) == ["cash", "buy_and_hold", "monthly_rebalanced", "inverse_vol"]
    assert evaluation.start == dt.date(2000, 1, 17)  # first_decision = 10 sessions after 2000-01-03
    assert evaluation.metrics.loc["cash", "total_return"] == 0.0


@pytest.mark.parametrize(
    ("start", "end", "overlaps"),
    [
        ("2000-07-01", "2000-09-01", False),  # the default: the day after the training slice
        ("2000-06-30", "2000-09-01", True),  # its last day
        ("1999-01-01", "2000-01-02", False),  # wholly before it
        ("1999-01-01", "2000-01-03", True),  # its first day
        ("2000-03-01", "2000-04-01", True),  # inside it
    ],
)
def test_overlap_with_the_training_slice(start: str, end: str, overlaps: bool) -> None:
    run = RunRecord("r", "finished", dt.datetime(2000, 7, 1), slice_start=dt.date(2000, 1, 3),
                    slice_end=dt.date(2000, 6, 30))  # fmt: skip
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    assert overlaps_training(run, first, last) is overlaps
    unknown_start = RunRecord("r", "finished", dt.datetime(2000, 7, 1), slice_end=dt.date(2000, 6, 30))
    assert overlaps_training(unknown_start, first, last) is (first <= dt.date(2000, 6, 30))  # open to the past


def test_daily_returns_are_the_metrics_returns() -> None:
    trace, _ = run("buy_and_hold")
    returns = daily_returns(trace)
    assert len(returns) == len(trace) - 1
    assert policy_metrics(trace)["sharpe"] == pytest.approx(metrics.sharpe(returns), rel=1e-12)
    assert np.prod(1.0 + returns) == pytest.approx(trace["net_worth"].iloc[-1] / trace["net_worth"].iloc[0])
