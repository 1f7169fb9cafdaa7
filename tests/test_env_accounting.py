"""Accounting invariants, timing (no look-ahead), stopper and truncation of the trading environment."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market import Market, build_market, synthetic_bars
from tensortrade_risk_module import EnvConfig, mark_to_market, rebalance
from trading_env import make_env

SMALL: dict[str, Any] = {"window_size": 5, "vol_windows": (5, 10), "vol_window": 5, "warmup": 10, "cov_window": 10}


@functools.cache
def small_market(n_assets: int) -> Market:
    """A 90-date synthetic market, built once per asset count."""
    return build_market(synthetic_bars(n_assets, 90, seed=n_assets), EnvConfig(**SMALL))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, dict, list[np.ndarray]]:
    n = draw(st.integers(1, 4))
    config = {
        **SMALL,
        "allow_short": draw(st.booleans()),
        "execution": draw(st.sampled_from(["next_open", "close"])),
        "vol_mode": draw(st.sampled_from(["per_asset", "portfolio"])),
        "fee_flat": draw(st.sampled_from([0.0, 1.0, 250.0])),
        "commission_bps": draw(st.sampled_from([0.0, 5.0, 100.0])),
        "rebalance_band": draw(st.sampled_from([0.0, 0.01, 0.2])),
        "max_weight": draw(st.sampled_from([0.2, 0.6, 1.0])),
        "max_gross": draw(st.sampled_from([0.5, 1.0])),
        "target_vol": draw(st.sampled_from([0.1, 1.0])),
        "max_drawdown": 1.0,
        "downside_penalty": draw(st.sampled_from([0.0, 2.0, 50.0])),
        "drawdown_penalty": draw(st.sampled_from([0.0, 1.0, 30.0])),
    }
    action = st.lists(st.floats(-1.5, 1.5), min_size=n, max_size=n).map(np.array)
    return n, config, draw(st.lists(action, min_size=1, max_size=25))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_accounting_invariants(scenario: tuple[int, dict, list[np.ndarray]]) -> None:
    n, config, actions = scenario
    market = small_market(n)
    env = make_env(market, **config)
    env.reset(seed=0)
    pf = env.engine.portfolio
    fill = market.close if config["execution"] == "close" else market.open
    offset = 0 if config["execution"] == "close" else 1
    commission = config["commission_bps"] * 1e-4
    for action in actions:
        t, q0, cash0 = env.t, pf.quantity.copy(), float(pf.cash[0])
        nw0, dd0 = float(pf.net_worth[0]), float(pf.drawdown[0])
        _, reward, terminated, truncated, info = env.step(action)
        q1, cash1, price = pf.quantity, info["cash"], fill[t + offset]
        traded = np.abs(q1 - q0) * price
        expected_fees = config["fee_flat"] * np.count_nonzero(q1 != q0) + commission * traded.sum()
        assert info["fees"] == pytest.approx(expected_fees, rel=1e-9, abs=1e-9)
        assert cash1 == pytest.approx(cash0 - ((q1 - q0) * price).sum() - info["fees"], rel=1e-9, abs=1e-6)
        assert info["net_worth"] == pytest.approx(cash1 + q1 @ market.close[t + 1], rel=1e-12)
        np.testing.assert_allclose(info["weights"], q1 * market.close[t + 1] / info["net_worth"], atol=1e-12)
        target = info["target_weights"]
        assert np.all(np.abs(target) <= config["max_weight"] + 1e-12)
        assert np.abs(target).sum() <= config["max_gross"] + 1e-12
        assert cash1 >= 0.0
        if not config["allow_short"]:
            assert np.all(q1 >= 0.0)
        ret = np.log(info["net_worth"] / nw0)
        deepening = max(info["drawdown"] ** 2 - dd0**2, 0.0)
        penalties = config["downside_penalty"] * min(ret, 0.0) ** 2 + config["drawdown_penalty"] * deepening
        assert reward == pytest.approx(ret - penalties, abs=1e-12)
        if terminated or truncated:
            break


def _perturbed_after(bars, cutoff_date) -> object:
    """Copy of ``bars`` with every price after ``cutoff_date`` changed."""
    changed = bars.copy()
    later = changed["date"] > cutoff_date
    factor = np.random.default_rng(5).uniform(0.7, 1.3, later.sum())
    for column in ("open", "high", "low", "close", "adj_close"):
        changed.loc[later, column] = changed.loc[later, column] * factor
    return changed


@pytest.mark.parametrize("execution", ["next_open", "close"])
@pytest.mark.parametrize("vol_mode", ["per_asset", "portfolio"])
def test_no_look_ahead(execution: str, vol_mode: str) -> None:
    bars = synthetic_bars(3, 120, seed=11)
    config = {**SMALL, "execution": execution, "vol_mode": vol_mode, "max_drawdown": 1.0}
    original = make_env(bars, **config)
    cutoff = 60  # date index: bars after it change
    changed = make_env(_perturbed_after(bars, original.dates[cutoff].astype(object)), **config)
    actions = np.random.default_rng(2).uniform(-1, 1, (100, 3))
    obs_a, _ = original.reset(seed=0)
    obs_b, _ = changed.reset(seed=0)
    differs_later = False
    for action in actions:
        t = original.t
        if t <= cutoff:  # decision at the close of t: observation and action mapping see data up to t only
            np.testing.assert_array_equal(obs_a, obs_b)
            np.testing.assert_array_equal(
                original.engine.action_scheme.targets(action, t), changed.engine.action_scheme.targets(action, t)
            )
        obs_a, reward_a, *_ = original.step(action)
        obs_b, reward_b, *_ = changed.step(action)
        if t + 1 <= cutoff:  # the reward is taken at the close of t + 1
            assert reward_a == reward_b
        else:
            differs_later |= reward_a != reward_b
    assert differs_later, "the perturbation must show after the cutoff, or this test proves nothing"


def _drawdowns(**config: object) -> list[tuple[float, bool, dict]]:
    env = make_env(small_market(2), **{**SMALL, "fee_flat": 0.0, **config})
    env.reset(seed=0)
    out = []
    while True:
        _, _, terminated, truncated, info = env.step(np.array([1.0, 1.0]))
        out.append((info["drawdown"], terminated, info))
        if terminated or truncated:
            return out


def test_stopper_fires_exactly_at_threshold() -> None:
    free = _drawdowns(max_drawdown=1.0, target_vol=1.0)
    drawdowns = [d for d, _, _ in free]
    j = next(i for i in range(1, len(drawdowns)) if drawdowns[i] > max(drawdowns[:i]) and drawdowns[i] > 0.01)
    at = _drawdowns(max_drawdown=drawdowns[j], target_vol=1.0)
    assert len(at) == j + 1
    assert at[-1][1] is True
    assert at[-1][2]["stop_reason"] == "max_drawdown"
    above = _drawdowns(max_drawdown=float(np.nextafter(drawdowns[j], 1.0)), target_vol=1.0)
    assert len(above) > j + 1


def test_truncation_at_data_end_and_episode_length() -> None:
    market = small_market(2)
    env = make_env(market, **SMALL, max_drawdown=1.0)
    env.reset(seed=0)
    first = env.t
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step_target(None)
        steps += 1
        if terminated or truncated:
            break
    assert (terminated, truncated) == (False, True)
    assert steps == len(market.dates) - 1 - first
    assert info["stop_reason"] == "end_of_data"
    assert info["date"] == market.date_strings[-1]
    assert info["net_worth"] == env.config.initial_cash  # held cash the whole time
    with pytest.raises(RuntimeError):
        env.step_target(None)
    short = make_env(market, **SMALL, episode_length=5)
    short.reset(seed=0)
    results = [short.step(np.ones(2)) for _ in range(5)]
    assert [r[3] for r in results] == [False] * 4 + [True]
    assert results[-1][4]["stop_reason"] == "episode_length"


def test_buy_and_hold_never_trades_after_day_one() -> None:
    env = make_env(small_market(3), **SMALL, max_drawdown=1.0)
    env.reset(seed=0)
    _, _, _, _, first = env.step_target(np.full(3, 1 / 3))
    held = env.engine.portfolio.quantity.copy()
    assert first["fees"] > 0 and first["turnover"] == pytest.approx(1.0, rel=1e-3)
    for _ in range(20):
        *_, info = env.step_target(None)
        assert info["fees"] == 0.0 and info["turnover"] == 0.0
        np.testing.assert_array_equal(env.engine.portfolio.quantity, held)


def test_cash_never_negative_when_fully_invested_with_fees() -> None:
    env = make_env(small_market(4), **SMALL, max_weight=1.0, target_vol=5.0, commission_bps=50.0, fee_flat=20.0)
    env.reset(seed=0)
    for action in np.random.default_rng(0).uniform(0, 1, (40, 4)):
        *_, info = env.step(action)
        assert info["cash"] >= 0.0
        assert np.abs(info["target_weights"]).sum() == pytest.approx(1.0)


def test_a_buy_that_cannot_be_funded_is_dropped_not_given_away() -> None:
    # cash 0.5 < flat fee 1 and the only sell is inside the band: the buy of asset 0 is scaled to nothing
    q, cash, fees, turnover = rebalance(
        np.array([0.0, 50.0, 50.0]), np.array([0.5]), np.array([0.02, 0.49, 0.49]), np.ones(3), 0.01, 1.0, 0.0
    )
    np.testing.assert_array_equal(q, [0.0, 50.0, 50.0])
    assert (cash[0], fees[0], turnover[0]) == (0.5, 0.0, 0.0)


def test_public_math_broadcasts_leading_axes() -> None:
    rng = np.random.default_rng(4)
    quantity, cash, prices = rng.uniform(0, 10, 3), np.array([50.0]), rng.uniform(1, 2, (7, 3))
    net_worth, weights = mark_to_market(quantity, cash, prices)
    assert net_worth.shape == (7, 1) and weights.shape == (7, 3)
    np.testing.assert_allclose(net_worth[:, 0], 50.0 + prices @ quantity, rtol=1e-14)
    np.testing.assert_allclose(weights, quantity * prices / net_worth, rtol=1e-14)
    batch = rebalance(np.tile(quantity, (7, 1)), np.full((7, 1), 50.0), np.full((7, 3), 0.3), prices, 0.0, 1.0, 1e-3)
    for i in range(7):
        single = rebalance(quantity, cash, np.full(3, 0.3), prices[i], 0.0, 1.0, 1e-3)
        for got, expected in zip(batch, single, strict=True):
            np.testing.assert_array_equal(got[i], expected)
