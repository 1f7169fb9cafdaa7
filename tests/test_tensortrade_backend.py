"""The TensorTrade backend: real TensorTrade components around the native math, and parity with the native env.

Runs for real in the Python >= 3.12 lane (tools/tt_lane.sh, which sets TT_LANE=1 so a broken install fails
instead of skipping). In the main 3.11 lane only the import-refusal test runs; the others skip with the reason.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from settings import ExitCode, UserError
from tt_lane import unavailable

SAMPLE_CSV = Path(__file__).resolve().parent.parent / "data" / "sample_daily_bars.csv.gz"
ZERO_COSTS = {"fee_flat": 0.0, "commission_bps": 0.0, "rebalance_band": 0.0}


@pytest.fixture(scope="module")
def tb() -> ModuleType:
    """The backend module, or a skip (a failure inside the TensorTrade lane) when it cannot be imported."""
    try:
        return importlib.import_module("tensortrade_backend")
    except UserError as exc:
        unavailable("the TensorTrade backend", exc)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """Four real ETFs (stock, bond, gold, REIT) over 2015-2016 from the shipped sample."""
    frame = pd.read_csv(SAMPLE_CSV)
    keep = frame["symbol"].isin(["SPY", "AGG", "GLD", "VNQ"]) & frame["date"].between("2015-01-01", "2016-12-31")
    return frame[keep].reset_index(drop=True)


def run_both(tb: ModuleType, bars: pd.DataFrame, policy: Callable[[int], np.ndarray], **config: object) -> dict:
    """Step both backends with the same actions until either ends; return their per-step infos and flags."""
    from trading_env import make_env

    config = {"execution": "close", **config}
    envs = {"tensortrade": tb.make_tensortrade_env(bars, **config), "native": make_env(bars, **config)}
    out: dict = {name: {"infos": [], "rewards": [], "end": None} for name in envs}
    for env in envs.values():
        env.reset(seed=0)
    k, done = 0, False
    while not done:
        action = policy(k).astype(np.float32)
        for name, env in envs.items():
            _, reward, terminated, truncated, info = env.step(action)
            out[name]["infos"].append(info)
            out[name]["rewards"].append(reward)
            if terminated or truncated:
                out[name]["end"] = (terminated, truncated, info["stop_reason"])
                done = True
        k += 1
    out["envs"] = envs
    return out


def random_policy(n_assets: int, seed: int = 0) -> Callable[[int], np.ndarray]:
    """Seeded uniform actions in [-1, 1], one fresh vector per step."""
    rng = np.random.default_rng(seed)
    return lambda _k: rng.uniform(-1.0, 1.0, n_assets)


def net_worths(run: dict, name: str) -> np.ndarray:
    """The net-worth path of one backend."""
    return np.array([info["net_worth"] for info in run[name]["infos"]])


def test_import_refused_with_clear_error_when_tensortrade_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without tensortrade (or on Python 3.11) the import is a SOURCE_UNAVAILABLE user error naming the fix."""
    monkeypatch.setitem(sys.modules, "tensortrade", None)  # makes `import tensortrade...` raise ImportError
    monkeypatch.delitem(sys.modules, "tensortrade_backend", raising=False)
    with pytest.raises(UserError) as caught:
        importlib.import_module("tensortrade_backend")
    assert caught.value.exit_code == ExitCode.SOURCE_UNAVAILABLE
    message = str(caught.value)
    assert "requirements-tensortrade.txt" in message and "tools/tt_lane.sh" in message
    if sys.version_info < (3, 12):
        assert "needs Python >= 3.12" in message


def test_env_is_built_from_tensortrade_components(tb: ModuleType, bars: pd.DataFrame) -> None:
    """create() assembles a genuine TradingEnv whose components subclass TensorTrade's and trade via its OMS."""
    from tensortrade.env.default.actions import TensorTradeActionScheme
    from tensortrade.env.default.rewards import TensorTradeRewardScheme
    from tensortrade.env.generic import Stopper, TradingEnv

    env = tb.make_tensortrade_env(bars, execution="close")
    assert isinstance(env, TradingEnv)
    assert isinstance(env.action_scheme, TensorTradeActionScheme)
    assert isinstance(env.reward_scheme, TensorTradeRewardScheme)
    assert isinstance(env.stopper, Stopper)
    obs, info = env.reset()
    assert obs.shape == env.observation_space.shape == (20, 4 * 3 + 4 + 2)
    assert info["net_worth"] == pytest.approx(100_000.0)
    for _ in range(5):
        env.step(np.full(4, 0.5, np.float32))
    assert env.action_scheme.broker.executed, "no order went through TensorTrade's broker"
    wallets = env.action_scheme.portfolio.wallets
    assert all(w.locked_balance.size == 0 for w in wallets), "an order left funds locked"
    assert sum(w.balance.size > 0 for w in wallets) == 5  # cash plus the four assets


def test_fills_at_the_decision_close(tb: ModuleType, bars: pd.DataFrame) -> None:
    """The first trade fills at the close of the first decision date (rounded to cents by TensorTrade)."""
    from market import build_market
    from tensortrade_risk_module import EnvConfig

    env = tb.make_tensortrade_env(bars, execution="close", action_map="clip")  # one asset: one trade
    env.reset()
    env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    trades = [t for order_trades in env.action_scheme.broker.trades.values() for t in order_trades]
    market = build_market(bars, EnvConfig(execution="close"))
    close = market.close[env.action_scheme.first, 0]
    assert len(trades) == 1
    assert float(trades[0].price) == pytest.approx(close, abs=0.005)


def test_parity_zero_costs_net_worth_within_half_percent(tb: ModuleType, bars: pd.DataFrame) -> None:
    """Same bars, same actions, no costs: net-worth paths agree within 0.5% at every step, same end."""
    run = run_both(tb, bars, random_policy(4), max_drawdown=1.0, **ZERO_COSTS)
    tt, native = net_worths(run, "tensortrade"), net_worths(run, "native")
    assert len(tt) == len(native) > 400
    assert [i["date"] for i in run["tensortrade"]["infos"]] == [i["date"] for i in run["native"]["infos"]]
    assert np.max(np.abs(tt / native - 1.0)) < 0.005
    assert run["tensortrade"]["end"] == run["native"]["end"] == (False, True, "end_of_data")
    np.testing.assert_allclose(run["tensortrade"]["rewards"], run["native"]["rewards"], atol=1e-3)


def test_parity_with_default_costs(tb: ModuleType, bars: pd.DataFrame) -> None:
    """With the default fees and band the paths still agree within 0.5% and fees are charged alike."""
    run = run_both(tb, bars, random_policy(4, seed=1), max_drawdown=1.0)
    tt, native = net_worths(run, "tensortrade"), net_worths(run, "native")
    assert np.max(np.abs(tt / native - 1.0)) < 0.005
    fees = {name: sum(i["fees"] for i in run[name]["infos"]) for name in ("tensortrade", "native")}
    assert fees["native"] > 0
    assert fees["tensortrade"] == pytest.approx(fees["native"], rel=0.02)


def test_drawdown_stopper_terminates_like_native(tb: ModuleType, bars: pd.DataFrame) -> None:
    """A tight max_drawdown with concentrated bets terminates both backends on the same step."""
    policy = random_policy(4, seed=3)
    run = run_both(tb, bars, policy, max_drawdown=0.02, target_vol=0.5, max_weight=1.0, **ZERO_COSTS)
    assert run["native"]["end"] == (True, False, "max_drawdown")
    assert run["tensortrade"]["end"] == run["native"]["end"]
    assert len(run["tensortrade"]["infos"]) == len(run["native"]["infos"])
    assert run["tensortrade"]["infos"][-1]["drawdown"] >= 0.02


def test_episode_length_and_reset_repeat_the_episode(tb: ModuleType, bars: pd.DataFrame) -> None:
    """episode_length truncates after that many steps; a reset replays the same path from all cash."""
    env = tb.make_tensortrade_env(bars, execution="close", episode_length=15)
    paths = []
    for _ in range(2):
        env.reset()
        policy, path, end = random_policy(4, seed=5), [], None
        for k in range(15):
            _, _, terminated, truncated, info = env.step(policy(k).astype(np.float32))
            path.append(info["net_worth"])
            end = (terminated, truncated, info.get("stop_reason"))
        paths.append(path)
        assert end == (False, True, "episode_length")
    assert paths[0] == paths[1]


@pytest.mark.parametrize("setting", [{"execution": "next_open"}, {"random_start": True}, {"allow_short": True}])
def test_unsupported_settings_are_refused(tb: ModuleType, bars: pd.DataFrame, setting: dict) -> None:
    """Settings TensorTrade's OMS cannot honour are usage errors naming the setting."""
    name = next(iter(setting)).replace("_", "-")
    with pytest.raises(UserError, match=f"--{name}"):
        tb.make_tensortrade_env(bars, **setting)


def test_instrument_codes_are_alphanumeric_and_suffix_free(tb: ModuleType) -> None:
    """TensorTrade matches price streams by name suffix: no code may end with another code."""
    codes = tb.instrument_codes(("A", "AA", "BRK.B", "BRKB", "XA"))
    assert all(code.isalnum() for code in codes)
    assert not [(a, b) for a in codes for b in codes if a != b and a.endswith(b)]
