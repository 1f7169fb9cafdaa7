"""Interface of the trading environment: checkers, seeding, the batched VecEnv, settings, the math functions."""

from __future__ import annotations

import argparse
import functools
import math
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import env_kernels
import settings
import tensortrade_risk_module as risk
from market import synthetic_bars
from trading_env import ENV_ID, TradingEnv, make_env
from trading_vec_env import make_vec_env

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample_daily_bars.csv.gz"
SMALL = {"window_size": 5, "vol_windows": (5, 10), "vol_window": 5, "warmup": 10, "cov_window": 10}


@functools.cache
def sample_bars() -> pd.DataFrame:
    return pd.read_csv(SAMPLE)


@pytest.mark.parametrize("source", ["synthetic-1", "sample-15", "synthetic-100"])
def test_checkers_pass_without_warnings(source: str) -> None:
    bars = sample_bars() if source == "sample-15" else synthetic_bars(int(source.split("-")[1]), 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = make_env(bars, max_drawdown=1.0)
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(make_env(bars, max_drawdown=1.0), warn=True)
        obs, _ = env.reset(seed=0)
        assert obs.dtype == np.float32 and np.isfinite(obs).all()


def test_the_gymnasium_env_imports_neither_the_learner_nor_the_database() -> None:
    """The TensorTrade lane's interpreter has no SB3, torch or SQLAlchemy, and needs market.py and trading_env.py."""
    code = (
        "import sys, trading_env; heavy = ('stable_baselines3', 'torch', 'sqlalchemy', 'trading_vec_env');"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_gymnasium_registration() -> None:
    env = gym.make(ENV_ID, bars=synthetic_bars(2, 200), episode_length=3)
    env.reset(seed=0)
    assert isinstance(env.unwrapped, TradingEnv) and env.unwrapped.symbols == ("S000", "S001")
    assert env.step(np.zeros(2, dtype=np.float32))[3] is False


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"execution": "close", "allow_short": True},
        {"vol_mode": "portfolio", "reward": "differential_sharpe"},
        {"allow_short": True, "vol_mode": "portfolio", "max_drawdown": 0.1, "target_vol": 0.5},
    ],
)
def test_full_episodes_on_the_sample(config: dict) -> None:
    env = make_env(sample_bars(), **config)
    assert len(env.symbols) == 15
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(0)
    steps, done = 0, False
    while not done:
        assert np.isfinite(obs).all()
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 15).astype(np.float32))
        assert math.isfinite(reward) and info["net_worth"] > 0
        steps, done = steps + 1, terminated or truncated
    assert info["stop_reason"] == ("max_drawdown" if terminated else "end_of_data")
    assert steps > 10


def _episode(env: gym.Env, seed: int, actions: np.ndarray) -> tuple[str, list[float]]:
    _, info = env.reset(seed=seed)
    return info["date"], [float(env.step(a)[1]) for a in actions]


def test_seeded_reset_is_deterministic() -> None:
    env = make_env(synthetic_bars(3, 400), random_start=True, episode_length=30)
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 3)).astype(np.float32)
    first = _episode(env, 5, actions)
    assert _episode(env, 5, actions) == first
    assert _episode(make_env(synthetic_bars(3, 400), random_start=True, episode_length=30), 5, actions) == first
    starts = {_episode(env, seed, actions[:1])[0] for seed in range(6)}
    assert len(starts) > 1, "random starts must depend on the seed"


@pytest.mark.parametrize("execution", ["next_open", "close"])
def test_vec_env_matches_single_envs_step_for_step(execution: str) -> None:
    bars = synthetic_bars(3, 150, seed=3)
    config = {**SMALL, "execution": execution, "random_start": True, "episode_length": 40, "max_drawdown": 0.05}
    vec = make_vec_env(bars, 3, seed=7, **config)
    singles = [make_env(bars, **config) for _ in range(3)]
    vec_obs = vec.reset()
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(vec_obs[i], env.reset(seed=7 + i)[0])
    rng = np.random.default_rng(1)
    finished = 0
    for _ in range(130):
        actions = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
        step_obs, rewards, dones, infos = vec.step(actions)
        assert isinstance(step_obs, np.ndarray)
        for i, env in enumerate(singles):
            obs, reward, terminated, truncated, info = env.step(actions[i])
            assert rewards[i] == reward and dones[i] == (terminated or truncated)
            for key in ("date", "net_worth", "cash", "fees", "drawdown", "turnover"):
                assert infos[i][key] == info[key], key
            np.testing.assert_array_equal(infos[i]["weights"], info["weights"])
            assert vec.last_step["net_worth"][i, 0] == info["net_worth"]
            if dones[i]:
                finished += 1
                assert infos[i]["stop_reason"] == info["stop_reason"]
                assert infos[i]["TimeLimit.truncated"] == (truncated and not terminated)
                np.testing.assert_array_equal(infos[i]["terminal_observation"], obs)
                obs, _ = env.reset()
            np.testing.assert_array_equal(step_obs[i], obs)
    assert finished >= 3


def test_vec_env_reset_infos_match_the_single_env_reset_info() -> None:
    """Same keys and values per copy: start date, all-cash account, zero step results, zero weights."""
    bars = synthetic_bars(2, 150, seed=4)
    config = {**SMALL, "random_start": True}
    vec = make_vec_env(bars, 2, seed=5, **config)
    vec.reset()
    for i, vec_info in enumerate(vec.reset_infos):
        _, info = make_env(bars, **config).reset(seed=5 + i)
        assert set(vec_info) == set(info) and len(info) == 9
        for key in ("date", "net_worth", "cash", "turnover", "fees", "drawdown", "reward"):
            assert vec_info[key] == info[key], key
        np.testing.assert_array_equal(vec_info["weights"], info["weights"])
        np.testing.assert_array_equal(vec_info["target_weights"], info["target_weights"])
    assert vec.reset_infos[0]["date"] != vec.reset_infos[1]["date"]  # each copy reports its own start


def test_vec_env_trains_with_sb3_ppo() -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    batched = make_vec_env(synthetic_bars(2, 150), 4, seed=0, **SMALL, episode_length=20, random_start=True)
    vec = VecMonitor(batched)
    model = PPO("MlpPolicy", vec, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(256)
    assert model.ep_info_buffer  # episodes finished
    assert set(batched.last_step) >= {"action", "target_weights", "weights", "reward", "net_worth", "t"}


def test_settings_errors_name_the_setting() -> None:
    bars = synthetic_bars(1, 100)
    with pytest.raises(settings.UserError, match="--target-vol"):
        make_env(bars, target_vol=-1.0)
    with pytest.raises(settings.UserError, match="unknown environment setting.*tagret_vol"):
        make_env(bars, tagret_vol=0.1)
    with pytest.raises(settings.UserError, match="--vol-window"):
        risk.EnvConfig(vol_window=7)


def test_env_config_becomes_cli_flags() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, risk.EnvConfig)
    args = parser.parse_args(["--vol-windows", "10,30", "--vol-window", "30", "--execution", "close", "--allow-short"])
    config, sources = settings.resolve(risk.EnvConfig, args, environ={}, dotenv={})
    assert (config.vol_windows, config.vol_window, config.execution, config.allow_short) == (
        (10, 30),
        30,
        "close",
        True,
    )
    assert sources["target_vol"] == "default"


def test_step_target_validates_weights() -> None:
    env = make_env(synthetic_bars(2, 100), **SMALL)
    env.reset(seed=0)
    for bad in ([0.5, -0.1], [0.7, 0.7], [np.nan, 0.0], [1.0]):
        with pytest.raises(ValueError):
            env.step_target(np.array(bad))


def test_portfolio_vol_is_sqrt_of_covariance_quadratic_form() -> None:
    rng = np.random.default_rng(0)
    returns, weights = rng.normal(0, 0.01, (4, 60)), rng.uniform(0, 0.3, 4)
    expected = np.sqrt(weights @ np.cov(returns) @ weights * 252)
    assert risk.portfolio_vol(weights, returns)[0] == pytest.approx(expected, rel=1e-12)


def test_differential_sharpe_is_the_first_order_sharpe_increment() -> None:
    """Moody & Saffell: S_t(eta) = S_{t-1} + eta * D_t + O(eta^2), with S = A / sqrt(B - A^2)."""
    rets = np.random.default_rng(3).normal(0.001, 0.01, 50)
    a, b = np.array([rets[:20].mean()]), np.array([(rets[:20] ** 2).mean()])
    sharpe_before = a / np.sqrt(b - a * a)
    for eta in (1e-4, 1e-5):
        d, a_new, b_new = env_kernels.differential_sharpe(np.array([rets[20]]), a, b, eta)
        sharpe_after = a_new / np.sqrt(b_new - a_new * a_new)
        assert (sharpe_after - sharpe_before)[0] / eta == pytest.approx(d[0], rel=10 * eta / 1e-4 * 1e-2)


def test_vec_env_infos_read_like_full_dicts() -> None:
    vec = make_vec_env(synthetic_bars(2, 150), 2, seed=0, **SMALL)
    vec.reset()
    _, rewards, _, infos = vec.step(np.ones((2, 2), dtype=np.float32))
    keys = {"date", "net_worth", "cash", "turnover", "fees", "drawdown", "reward", "weights", "target_weights"}
    assert "cash" in infos[0] and infos[0].get("reward") == rewards[0]
    assert set(infos[0]) == keys and len(infos[0]) == len(keys)
    plain = infos[1].copy()
    assert type(plain) is dict and set(plain) == keys and plain["net_worth"] == vec.last_step["net_worth"][1, 0]
    infos[1]["extra"] = 1  # keys set by wrappers stay beside the record
    assert {**infos[1]}["extra"] == 1 and infos[1]["fees"] == plain["fees"]
    with pytest.raises(KeyError):
        infos[0]["no such key"]


def test_vec_infos_answer_keys_they_lack_without_building_the_record() -> None:
    """SB3 asks every info for ``episode``/``is_success`` each step: that must not build 64 records a step."""
    vec = make_vec_env(synthetic_bars(3, 200, seed=1), 4, seed=0)
    vec.reset()
    _, _, _, infos = vec.step(np.zeros((4, 3), np.float32))
    info = infos[0]
    assert info.get("episode") is None and "is_success" not in info and dict.__len__(info) == 0
    assert "net_worth" in info and dict.__len__(info) == 9  # a record key fills it
    assert infos[1].get("reward") == vec.last_step["reward"][1, 0]
