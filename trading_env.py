"""The multi-asset trading environment: the step engine shared with the batched VecEnv, and the Gymnasium env.

The env and :class:`trading_vec_env.VecTradingEnv` step through the same :class:`StepEngine`, which wires the
components of :mod:`tensortrade_risk_module` in TensorTrade's order: action scheme -> portfolio -> reward ->
stopper -> observer -> informer. Market data are prepared once by :func:`market.build_market`; a step is one
compiled call over precomputed arrays. Semantics: docs/environment.md. This module imports neither
Stable-Baselines3 (nor torch) nor :mod:`trading_vec_env`, so the TensorTrade lane's interpreter, which has
neither, can import it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd

from env_kernels import ACTION, CASH, DRAWDOWN, FEES, HOLD, NET_WORTH, REWARD, TARGET, TURNOVER, step_row, step_rows
from market import Market, build_market, require_dates
from settings import UserError
from tensortrade_risk_module import (
    EnvConfig,
    Informer,
    Observer,
    Portfolio,
    VolTargetActionScheme,
    env_config,
)

ENV_ID = "RiskAwareTrading-v0"


class StepEngine:
    """One step of the simulation for one environment (lead=()) or a batch (lead=(B,)).

    The components hold the precomputed arrays and the state; a step is one call of the compiled
    :func:`env_kernels.step_row` (or :func:`env_kernels.step_rows` for a batch), which composes the same math
    the public functions of :mod:`tensortrade_risk_module` wrap, in TensorTrade's order.
    """

    def __init__(self, market: Market, config: EnvConfig, lead: tuple[int, ...]) -> None:
        n_dates, n_assets = market.close.shape
        require_dates(n_dates, n_assets, config)  # a prebuilt Market may be short for these settings
        self.market, self.config, self.lead = market, config, lead
        self.action_scheme = VolTargetActionScheme(config, market)
        self.observer = Observer(config, market)
        self.informer = Informer(market)
        self.portfolio = Portfolio(config.initial_cash, lead, n_assets)
        self.fill, self.fill_offset = (market.close, 0) if config.execution == "close" else (market.open, 1)
        self.commission = config.commission_bps * 1e-4
        self.first, self.last = config.first_decision, n_dates - 1
        self.params = self.action_scheme.params
        # the components' arrays are contiguous already; a Market's may not be (any caller can build one)
        fill, close = np.ascontiguousarray(self.fill), np.ascontiguousarray(market.close)
        self.arrays = (self.action_scheme.scale, self.action_scheme.returns, fill, close, self.observer.features)
        self.obs_shape = (*lead, self.observer.size)

    def episode_bounds(self, rng: np.random.Generator) -> tuple[int, int]:
        """(start, end) date indices of a new episode; the start is drawn from ``rng`` when random."""
        length = self.config.episode_length
        start = self.first
        if self.config.random_start:
            start = int(rng.integers(self.first, max(self.first, self.last - (length or 1)) + 1))
        return start, min(start + length, self.last) if length else self.last

    def advance(self, t: int | np.ndarray, mode: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
        """Act on ``values`` (see ``env_kernels`` modes) at decisions ``t``, value at the close of t + 1.

        Replaces the portfolio's arrays with the new ones (never writes into arrays handed out before).

        :return: target weights, the observation at the close of t + 1, the stopper flag(s).
        """
        pf = self.portfolio
        quantity, weights, targets = np.empty_like(pf.quantity), np.empty_like(pf.quantity), np.empty_like(pf.quantity)
        state, obs = np.empty_like(pf.state), np.empty(self.obs_shape, np.float32)
        if self.lead:
            stop = step_rows(t, values, self.arrays, self.params, pf.quantity, pf.state, quantity, weights, targets,
                             state, obs)  # fmt: skip
        else:
            stop = step_row(t, mode, values, self.arrays, self.params, pf.quantity, pf.state, quantity, weights,
                            targets, state, obs)  # fmt: skip
        pf.quantity, pf.weights, pf.state = quantity, weights, state
        return targets, obs, stop

    def observe(self, t: int | np.ndarray) -> np.ndarray:
        """Observation at the close of ``t`` from the current portfolio."""
        return self.observer.observe(t, self.portfolio.weights, self.portfolio.state)


def stop_reason(terminated: bool, t: int, last: int) -> str:
    """The ``stop_reason`` of an episode that ended after the step to date index ``t`` (``last``: final index)."""
    return "max_drawdown" if terminated else "end_of_data" if t >= last else "episode_length"


def step_arrays(pf: Portfolio, t: Any, targets: np.ndarray) -> dict[str, Any]:
    """The step record: ``t``, ``target_weights``, ``weights`` and ``(..., 1)`` views of the state record
    (``reward``, ``net_worth``, ``cash``, ``drawdown``, ``turnover``, ``fees``), never written again."""
    columns = {"reward": REWARD, "net_worth": NET_WORTH, "cash": CASH, "drawdown": DRAWDOWN, "turnover": TURNOVER,
               "fees": FEES}  # fmt: skip
    record = {key: pf.state[..., c : c + 1] for key, c in columns.items()}
    return {"t": t, "target_weights": targets, "weights": pf.weights, **record}


class TradingEnv(gym.Env):
    """Gymnasium environment over one market; ``step(action)`` or, for baselines, ``step_target(weights)``."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium's class attribute)

    def __init__(self, market: Market, config: EnvConfig) -> None:
        """:param market: from :func:`build_market`; ``config``: the environment parameters."""
        self.config = config
        self.engine = StepEngine(market, config, ())
        self.observation_space = self.engine.observer.observation_space
        self.action_space = self.engine.action_scheme.action_space
        self.symbols, self.dates = market.symbols, market.dates
        self._last: tuple[int, np.ndarray] | None = None
        self._t = self._end = self.engine.first
        self._over = True
        self._hold = np.zeros(len(market.symbols))

    @property
    def t(self) -> int:
        """Date index of the current decision (the close the last observation was taken at)."""
        return self._t

    @property
    def last_step(self) -> dict[str, Any]:
        """The last step's arrays (:func:`step_arrays`, ``(1,)`` scalars), built on demand; {} after reset."""
        return {} if self._last is None else step_arrays(self.engine.portfolio, *self._last)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode (all cash) at the first decision date, or a random one drawn from ``np_random``."""
        super().reset(seed=seed)
        self._t, self._end = self.engine.episode_bounds(self.np_random)
        self._over, self._last = False, None
        pf = self.engine.portfolio
        pf.reset()
        info = self.engine.informer.from_state(self._t, pf.state, pf.weights, pf.weights)
        return self.engine.observe(self._t), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Map the action through the vol-target action scheme and advance one day."""
        if self._over:
            raise RuntimeError("the episode is over: call reset()")
        return self._advance(ACTION, np.ascontiguousarray(action, dtype=np.float64))

    def step_target(self, target_weights: np.ndarray | None) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Advance one day towards explicit target weights, bypassing the action scheme (None = hold).

        Timing, costs, band, reward and stopper are the same as :meth:`step`. The weights must be finite,
        non-negative unless ``allow_short``, with sum(|w|) <= 1; the action-scheme caps do not apply.
        """
        if self._over:
            raise RuntimeError("the episode is over: call reset()")
        if target_weights is None:
            return self._advance(HOLD, self._hold)
        target_weights = np.ascontiguousarray(target_weights, dtype=np.float64)
        if target_weights.shape != (len(self.symbols),) or not np.isfinite(target_weights).all():
            raise ValueError(f"target_weights must be {len(self.symbols)} finite numbers")
        if (target_weights < 0).any() and not self.config.allow_short:
            raise ValueError("negative target weight with allow_short=False")
        if np.abs(target_weights).sum() > 1.0 + 1e-9:
            raise ValueError("sum of |target weights| exceeds 1 (no margin)")
        return self._advance(TARGET, target_weights)

    def _advance(self, mode: int, values: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        engine = self.engine
        targets, obs, terminated = engine.advance(self._t, mode, values)
        self._t = t = self._t + 1
        truncated = t >= self._end
        pf = engine.portfolio
        info = engine.informer.from_state(t, pf.state, pf.weights, targets)
        if terminated or truncated:
            self._over = True
            info["stop_reason"] = stop_reason(terminated, t, engine.last)
        self._last = (t, targets)
        return obs, info["reward"], terminated, truncated, info


def market_and_config(bars: pd.DataFrame | Market, config: dict[str, Any] | EnvConfig) -> tuple[Market, EnvConfig]:
    """The validated settings and the market they apply to (built from ``bars`` unless already a Market).

    :param config: :class:`~tensortrade_risk_module.EnvConfig` fields, or an already validated EnvConfig.
    :raise UserError: a bad setting or bars, or a Market built with other ``vol_windows`` or ``return_windows``.
    """
    cfg = config if isinstance(config, EnvConfig) else env_config(**config)
    market = bars if isinstance(bars, Market) else build_market(bars, cfg)
    for name in ("vol_windows", "return_windows"):
        built, wanted = getattr(market, name), tuple(getattr(cfg, name))
        if built != wanted:
            raise UserError(f"market was built with {name} {built}, the settings say {wanted}")
    return market, cfg


def make_env(bars: pd.DataFrame | Market, **config: Any) -> TradingEnv:
    """The Gymnasium environment over long-format ``bars`` (or a prebuilt :class:`Market`).

    :param config: any :class:`~tensortrade_risk_module.EnvConfig` field.
    """
    return TradingEnv(*market_and_config(bars, config))


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=f"{__name__}:make_env")  # "module:function", as gymnasium documents
