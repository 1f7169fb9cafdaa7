"""The batched Stable-Baselines3 VecEnv of the native environment, and its factory :func:`make_vec_env`.

Kept apart from :mod:`trading_env` because it imports Stable-Baselines3, and with it torch: the TensorTrade
lane's Python 3.12 interpreter has neither, yet needs :mod:`trading_env` (docs/tensortrade_backend.md). As in
SB3 (``make_vec_env`` in ``common/env_util.py``), the factory sits above the VecEnv classes, which never call it.
"""

from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np
import pandas as pd
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from env_kernels import ACTION
from market import Market
from settings import UserError
from tensortrade_risk_module import EnvConfig
from trading_env import StepEngine, market_and_config, step_arrays, stop_reason


class SharedVecEnv(VecEnv):
    """A VecEnv whose copies are one Python object (batched here, or proxies of worker processes).

    SB3's per-copy attribute and method calls therefore act on that object once.
    """

    render_mode = None

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The attribute of the shared object, once per selected copy."""
        return [getattr(self, attr_name)] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute; copies share one object, so it applies to all of them."""
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any) -> list:
        """Call a method of the shared object once, result repeated per selected copy."""
        return [getattr(self, method_name)(*method_args, **kwargs)] * len(list(self._get_indices(indices)))

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Copies are never wrapped."""
        return [False] * len(list(self._get_indices(indices)))


class VecTradingEnv(SharedVecEnv):
    """``n_envs`` copies stepped in one compiled pass, each with its own generator and episode start.

    Follows Stable-Baselines3's VecEnv conventions: automatic reset, ``terminal_observation`` and
    ``TimeLimit.truncated`` in the info of a finished copy. ``last_step`` holds the last step's batched
    arrays (plus ``action``, ``terminated``, ``truncated``) for cheap logging.
    """

    def __init__(self, market: Market, config: EnvConfig, n_envs: int) -> None:
        """:param n_envs: number of copies (>= 1)."""
        if n_envs < 1:
            raise UserError(f"n_envs: {n_envs} must be >= 1")
        self.config = config
        self.engine = StepEngine(market, config, (n_envs,))
        self.symbols, self.dates = market.symbols, market.dates
        super().__init__(n_envs, self.engine.observer.observation_space, self.engine.action_scheme.action_space)
        self._rngs = [np.random.default_rng() for _ in range(n_envs)]
        self._t = np.full(n_envs, self.engine.first)
        self._end = np.full(n_envs, self.engine.last)
        self._actions = np.zeros((n_envs, len(self.symbols)))
        self.last_step: dict[str, np.ndarray] = {}

    def _restart(self, rows: np.ndarray) -> None:
        for i in rows.tolist():
            self._t[i], self._end[i] = self.engine.episode_bounds(self._rngs[i])
        self.engine.portfolio.reset(rows)

    def reset(self) -> np.ndarray:
        """Reset every copy; seeds given through :meth:`seed` re-create the copies' generators."""
        for i, seed in enumerate(self._seeds):
            if seed is not None:
                self._rngs[i] = np.random.default_rng(seed)
        self._reset_seeds()
        self._reset_options()
        self._restart(np.arange(self.num_envs))
        pf, informer = self.engine.portfolio, self.engine.informer
        self.reset_infos = [
            informer.from_state(t, pf.state[i], pf.weights[i], pf.weights[i]) for i, t in enumerate(self._t.tolist())
        ]
        self.last_step = {}
        return self.engine.observe(self._t)

    def step_async(self, actions: np.ndarray) -> None:
        """Store the batched actions ``(n_envs, N)``."""
        self._actions = np.ascontiguousarray(actions, dtype=np.float64)

    def step_wait(self) -> VecEnvStepReturn:
        """Advance every copy one day; finished copies are reset (SB3 auto-reset)."""
        engine = self.engine
        targets, obs, terminated = engine.advance(self._t, ACTION, self._actions)
        self._t = self._t + 1
        truncated = self._t >= self._end
        dones = terminated | truncated
        pf = engine.portfolio
        infos = engine.informer.infos(self._t, pf.state, pf.weights, targets)
        self.last_step = {**step_arrays(pf, self._t, targets), "action": self._actions, "terminated": terminated,
                          "truncated": truncated}  # fmt: skip
        rewards = self.last_step["reward"][:, 0]
        if dones.any():
            rows = np.flatnonzero(dones)
            self._t = self._t.copy()
            for i in rows.tolist():
                info = infos[i].fill()
                info["stop_reason"] = stop_reason(bool(terminated[i]), int(self._t[i]), engine.last)
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                info["terminal_observation"] = obs[i].copy()
            self._restart(rows)
            obs[rows] = engine.observer.observe(self._t[rows], pf.weights[rows], pf.state[rows])
        return obs, rewards, dones, cast(list[dict], infos)  # LazyInfo is a dict; SB3's type says list[dict]

    def close(self) -> None:
        """Nothing to release."""


def make_vec_env(bars: pd.DataFrame | Market, n_envs: int, seed: int | None = None, **config: Any) -> VecTradingEnv:
    """The batched SB3 VecEnv over ``bars``; ``seed`` seeds copy i with ``seed + i`` at the next reset.

    :param config: any :class:`~tensortrade_risk_module.EnvConfig` field.
    """
    env = VecTradingEnv(*market_and_config(bars, config), n_envs)
    if seed is not None:
        env.seed(seed)
    return env
