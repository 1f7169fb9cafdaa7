"""Risk-aware trading components in TensorTrade's component model, over one compiled copy of the math.

The math is a set of module-level functions over arrays with leading environment axes: vectors are
``(..., N)`` (one entry per asset) and per-environment scalars are ``(..., 1)``, so the same function serves a
single environment (``(N,)`` and ``(1,)``) and a batch (``(B, N)`` and ``(B, 1)``). They are thin wrappers over
the numba row kernels of :mod:`env_kernels`, which the environment's fused step composes; the element-wise math
(``log_return``, ``update_drawdown``, ...) is those kernels themselves, imported from :mod:`env_kernels`. The
component classes (:class:`Portfolio`, :class:`VolTargetActionScheme`, :class:`RiskAwareReward`,
:class:`DrawdownStopper`, :class:`Observer`, :class:`Informer`) hold state and precomputed arrays and call the
same kernels, so a TensorTrade backend reuses the exact same math. Semantics and formulas: docs/environment.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import numpy as np

import env_kernels as kernels
from features import TRADING_DAYS_PER_YEAR
from market import Market
from settings import UserError, setting

# Logit per unit of action in the softmax map: actions in [-1, 1] then span a single asset at ~98 % (others -1,
# cash 0) to ~93 % cash (all -1) with 4 assets.
SOFTMAX_GAIN = 4.0


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Every parameter of the trading environment (docs/environment.md explains each one)."""

    initial_cash: float = setting(100_000.0, "starting cash of each episode")
    window_size: int = setting(20, "days of per-asset features in each observation")
    vol_windows: tuple[int, ...] = setting((20, 60), "rolling volatility windows observed (days)")
    vol_window: int = setting(20, "which of --vol-windows the vol-targeting uses")
    return_windows: tuple[int, ...] = setting((), "also observe each asset's log return summed over these windows")
    warmup: int = setting(60, "minimum days of history before the first decision")
    target_vol: float = setting(0.10, "annualized volatility target")
    vol_floor: float = setting(0.05, "realized volatility floor in the scaling (caps leverage at target/floor)")
    vol_mode: Literal["per_asset", "portfolio"] = setting("per_asset", "inverse-vol per asset or portfolio-level")
    cov_window: int = setting(60, "days of returns for the portfolio-level volatility estimate")
    max_weight: float = setting(0.5, "cap on each asset's absolute weight")
    max_gross: float = setting(1.0, "cap on the sum of absolute weights (<= 1: no margin)")
    allow_short: bool = setting(False, "allow negative weights (target weights, and actions with --action-map clip)")
    rebalance_band: float = setting(0.01, "weight changes at or below this do not trade")
    fee_flat: float = setting(1.0, "flat fee per trade, in cash units")
    commission_bps: float = setting(1.0, "proportional commission in basis points of traded value")
    execution: Literal["next_open", "close"] = setting("next_open", "fill at the next open or at today's close")
    reward: Literal["risk_aware", "differential_sharpe"] = setting("risk_aware", "reward base")
    downside_penalty: float = setting(2.0, "risk aversion to downside semivariance: penalty λ·min(R, 0)²")
    drawdown_penalty: float = setting(1.0, "penalty λ·(d²_new - d²_old)⁺: sums to λ·D² over a drawdown to depth D")
    dsr_eta: float = setting(0.01, "adaptation rate of the differential Sharpe ratio moving moments")
    max_drawdown: float = setting(0.25, "terminate when drawdown from peak net worth reaches this (1 = never)")
    episode_length: int | None = setting(None, "steps per episode (None = to the end of the data)")
    random_start: bool = setting(False, "draw the episode start from the environment's generator")
    action_map: Literal["clip", "softmax"] = setting(
        "softmax", "action -> raw weights: softmax over the assets and cash (zero action = equal split), or clip"
    )

    def __post_init__(self) -> None:
        checks = [
            ("initial_cash", self.initial_cash > 0, "> 0"),
            ("window_size", self.window_size >= 1, ">= 1"),
            ("vol_windows", len(self.vol_windows) > 0 and min(self.vol_windows) >= 2, "non-empty, each >= 2"),
            ("vol_window", self.vol_window in self.vol_windows, f"one of vol_windows {self.vol_windows}"),
            ("return_windows", all(w >= 1 for w in self.return_windows), "each >= 1"),
            ("warmup", self.warmup >= 0, ">= 0"),
            ("target_vol", self.target_vol > 0, "> 0"),
            ("vol_floor", self.vol_floor > 0, "> 0"),
            ("cov_window", self.cov_window >= 2, ">= 2"),
            ("max_weight", 0 < self.max_weight <= 1, "in (0, 1]"),
            ("max_gross", 0 < self.max_gross <= 1, "in (0, 1]"),
            ("rebalance_band", 0 <= self.rebalance_band < 1, "in [0, 1)"),
            ("fee_flat", self.fee_flat >= 0, ">= 0"),
            ("commission_bps", 0 <= self.commission_bps < 10_000, "in [0, 10000)"),
            ("downside_penalty", self.downside_penalty >= 0, ">= 0"),
            ("drawdown_penalty", self.drawdown_penalty >= 0, ">= 0"),
            ("dsr_eta", 0 < self.dsr_eta < 1, "in (0, 1)"),
            ("max_drawdown", 0 < self.max_drawdown <= 1, "in (0, 1]"),
            ("episode_length", self.episode_length is None or self.episode_length >= 1, ">= 1 or None"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise UserError(f"setting --{name.replace('_', '-')}: {getattr(self, name)!r} must be {rule}")
        for name, choices in (("vol_mode", ("per_asset", "portfolio")), ("execution", ("next_open", "close")),
                              ("action_map", ("clip", "softmax"))):  # fmt: skip
            if getattr(self, name) not in choices:
                raise UserError(f"setting --{name.replace('_', '-')}: {getattr(self, name)!r} not in {choices}")
        if self.reward not in ("risk_aware", "differential_sharpe"):
            raise UserError(f"setting --reward: {self.reward!r} not in ('risk_aware', 'differential_sharpe')")

    @property
    def first_decision(self) -> int:
        """Date index of the earliest decision: every observed feature and the vol estimate are defined."""
        cov = self.cov_window if self.vol_mode == "portfolio" else 0
        return max(self.warmup, max(self.vol_windows), *self.return_windows, cov, self.window_size - 1)


def env_config(**overrides: Any) -> EnvConfig:
    """Build an :class:`EnvConfig` from keyword overrides; an unknown key is a usage error naming it."""
    known = {f.name for f in dataclasses.fields(EnvConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown environment setting(s): {', '.join(unknown)}")
    return EnvConfig(**overrides)


def tensortrade_config(config: dict[str, Any]) -> EnvConfig:
    """The validated settings of the TensorTrade backend, refusing those it cannot honour.

    Pure (no TensorTrade import), so the main interpreter refuses before starting any worker.

    :param config: :class:`EnvConfig` fields; ``execution`` defaults to ``close`` (TensorTrade quotes one price
        per step).
    :raise UserError: a bad setting, or ``execution`` other than ``close``, ``random_start`` or ``allow_short``
        (TensorTrade's wallets cannot go negative).
    """
    cfg = env_config(**{"execution": "close", **config})
    unsupported = {
        "execution": (cfg.execution != "close", "pass --execution close"),
        "random_start": (cfg.random_start, "turn it off"),
        "allow_short": (cfg.allow_short, "turn it off"),
    }
    for name, (bad, fix) in unsupported.items():
        if bad:
            raise UserError(
                f"setting --{name.replace('_', '-')}: {getattr(cfg, name)!r} is not supported by "
                f"the TensorTrade backend (docs/tensortrade_backend.md): {fix}"
            )
    return cfg


def kernel_params(config: EnvConfig) -> np.ndarray:
    """The float64 parameter vector of the compiled step (entries ``env_kernels.P_*``)."""
    params = np.zeros(kernels.N_PARAMS)
    for index, value in (
        (kernels.P_TARGET_VOL, config.target_vol),
        (kernels.P_VOL_FLOOR, config.vol_floor),
        (kernels.P_MAX_WEIGHT, config.max_weight),
        (kernels.P_MAX_GROSS, config.max_gross),
        (kernels.P_BAND, config.rebalance_band),
        (kernels.P_FEE_FLAT, config.fee_flat),
        (kernels.P_COMMISSION, config.commission_bps * 1e-4),
        (kernels.P_DOWNSIDE, config.downside_penalty),
        (kernels.P_DRAWDOWN_PENALTY, config.drawdown_penalty),
        (kernels.P_DSR_ETA, config.dsr_eta),
        (kernels.P_MAX_DRAWDOWN, config.max_drawdown),
        (kernels.P_ALLOW_SHORT, config.allow_short),
        (kernels.P_PORTFOLIO_VOL, config.vol_mode == "portfolio"),
        (kernels.P_DSR, config.reward == "differential_sharpe"),
        (kernels.P_COV_WINDOW, config.cov_window),
        (kernels.P_WINDOW_SIZE, config.window_size),
        (kernels.P_FILL_OFFSET, config.execution == "next_open"),
        (kernels.P_ANNUALIZE, math.sqrt(TRADING_DAYS_PER_YEAR)),
        (kernels.P_SOFTMAX_GAIN, SOFTMAX_GAIN if config.action_map == "softmax" else 0.0),
    ):
        params[index] = value
    return params


# ----------------------------------------------------------------------------------------------- pure math
def _lead(*arrays: Any) -> tuple[int, ...]:
    """Broadcast leading shape of ``(..., k)`` arrays."""
    return np.broadcast_shapes(*(np.shape(a)[:-1] for a in arrays))


def _rows(lead: tuple[int, ...], array: Any) -> np.ndarray:
    """``array`` ``(..., k)`` broadcast to ``lead + (k,)`` as C-contiguous float64 rows ``(M, k)`` for a kernel."""
    array = np.asarray(array, dtype=np.float64)
    return np.ascontiguousarray(np.broadcast_to(array, (*lead, array.shape[-1]))).reshape(-1, array.shape[-1])


def inverse_vol_scale(vol: np.ndarray, target_vol: float, vol_floor: float) -> np.ndarray:
    """Per-asset scale target_vol / max(vol, vol_floor); 0 where the volatility is unknown (warm-up).

    Computed once per market (the step reads the precomputed scale), hence plain numpy.

    :param vol: annualized realized volatility, any shape, NaN during warm-up.
    """
    with np.errstate(invalid="ignore"):
        scale = target_vol / np.maximum(vol, vol_floor)
    return np.where(np.isfinite(vol), scale, 0.0)


def portfolio_vol(raw: np.ndarray, window_returns: np.ndarray) -> np.ndarray:
    """Annualized volatility of the raw portfolio over a window: sqrt(w' C w) with C the sample covariance.

    Computed as the standard deviation of the window's portfolio returns, which equals sqrt(w' C w) exactly
    and costs O(W·N) instead of O(N²) without storing a covariance matrix per date.

    :param raw: ``(..., N)`` raw weights.
    :param window_returns: ``(..., N, W)`` daily log returns of the W days up to the decision date.
    :return: ``(..., 1)``.
    """
    days_first = np.swapaxes(np.asarray(window_returns, dtype=np.float64), -1, -2)  # (..., W, N)
    lead = np.broadcast_shapes(np.shape(raw)[:-1], days_first.shape[:-2])
    blocks = np.ascontiguousarray(np.broadcast_to(days_first, lead + days_first.shape[-2:]))
    vol = kernels.portfolio_vol_rows(
        _rows(lead, raw), blocks.reshape(-1, *days_first.shape[-2:]), math.sqrt(TRADING_DAYS_PER_YEAR)
    )
    return vol.reshape(*lead, 1)


def rebalance(
    quantity: np.ndarray,
    cash: np.ndarray,
    target: np.ndarray,
    price: np.ndarray,
    band: float,
    fee_flat: float,
    commission: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trade towards target weights at ``price``, paying a flat fee per trade plus a proportional commission.

    An asset trades when |target·V - q·p| exceeds both band·V and fee_flat / (1 - commission) (a trade that
    cannot pay its own flat fee is skipped), with V = cash + q·p the net worth at the fill. When buys plus
    fees would overdraw the cash, all buys are scaled by one factor so the cash ends at zero (a buy scaled to
    nothing leaves its quantity unchanged).

    :param quantity: ``(..., N)`` holdings; ``cash``: ``(..., 1)``; ``target``/``price``: ``(..., N)``.
    :param commission: rate per unit of traded value (bps / 1e4).
    :return: new quantity, new cash, fees ``(..., 1)``, turnover ``(..., 1)`` = traded value / V.
    """
    lead = _lead(quantity, cash, target, price)
    rows = (_rows(lead, a) for a in (quantity, cash, target, price))
    new_quantity, scalars = kernels.rebalance_rows(*rows, float(band), float(fee_flat), float(commission))
    new_cash, fees, turnover = (scalars[:, k : k + 1].reshape(*lead, 1) for k in range(3))
    return new_quantity.reshape(*lead, -1), new_cash, fees, turnover


def mark_to_market(quantity: np.ndarray, cash: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Net worth = cash + sum(q·p) ``(..., 1)`` and weights q·p / net worth ``(..., N)``."""
    lead = _lead(quantity, cash, price)
    net_worth, weights = kernels.mark_to_market_rows(*(_rows(lead, a) for a in (quantity, cash, price)))
    return net_worth.reshape(*lead, 1), weights.reshape(*lead, -1)


# ------------------------------------------------------------------------------------------------ components
def _state_column(index: int, doc: str) -> property:
    return property(lambda self: self.state[..., index : index + 1], doc=doc)


class Portfolio:
    """Cash plus fractional quantities per asset, for one environment (lead=()) or a batch (lead=(B,)).

    ``state`` is the record ``lead + (env_kernels.STATE_WIDTH,)`` the compiled step reads and replaces:
    cash, net worth, peak, drawdown, the differential-Sharpe moments and the last step's reward, fees and
    turnover. ``cash``, ``net_worth``, ``peak``, ``drawdown`` are ``lead + (1,)`` views of it. Each step and
    reset replaces the arrays instead of writing into them, so arrays handed out earlier never change.
    """

    cash = _state_column(kernels.CASH, "cash ``lead + (1,)``")
    net_worth = _state_column(kernels.NET_WORTH, "cash + sum(q·p) at the last close")
    peak = _state_column(kernels.PEAK, "highest net worth of the episode")
    drawdown = _state_column(kernels.DRAWDOWN, "1 - net_worth / peak")

    def __init__(self, initial_cash: float, lead: tuple[int, ...], n_assets: int) -> None:
        """:param lead: leading environment shape; vectors are ``lead + (N,)``."""
        self.initial_cash = initial_cash
        self.quantity = np.zeros((*lead, n_assets))
        self.weights = np.zeros((*lead, n_assets))
        self.state = np.zeros((*lead, kernels.STATE_WIDTH))
        self.reset()

    def reset(self, rows: Any = ...) -> None:
        """Back to all cash (and fresh reward moments), for every environment or the selected rows."""
        fresh = np.zeros(kernels.STATE_WIDTH)
        fresh[[kernels.CASH, kernels.NET_WORTH, kernels.PEAK]] = self.initial_cash
        self.quantity, self.weights, self.state = self.quantity.copy(), self.weights.copy(), self.state.copy()
        self.quantity[rows] = self.weights[rows] = 0.0
        self.state[rows] = fresh


class VolTargetActionScheme:
    """Box action -> raw weights -> vol-targeted -> capped target weights (cash takes the rest)."""

    def __init__(self, config: EnvConfig, market: Market) -> None:
        """Precompute the per-asset scale per date and the (NaN-free) returns for the portfolio mode."""
        self.config = config
        self.n_assets = len(market.symbols)
        vol = market.vol[market.vol_windows.index(config.vol_window)]
        self.scale = np.ascontiguousarray(inverse_vol_scale(vol, config.target_vol, config.vol_floor))
        self.returns = np.ascontiguousarray(np.nan_to_num(market.log_ret), dtype=np.float64)
        self.params = kernel_params(config)
        self.first = config.cov_window - 1 if config.vol_mode == "portfolio" else 0

    @property
    def action_space(self) -> gym.spaces.Box:
        """Box(-1, 1, (N,)); ``clip``: long-only treats negative entries as 0; ``softmax``: logits 4·a, cash 0."""
        return gym.spaces.Box(-1.0, 1.0, (self.n_assets,), np.float32)

    def targets(self, action: np.ndarray, t: int | np.ndarray) -> np.ndarray:
        """Target weights at decision date index ``t`` (uses data up to the close of t only)."""
        t = np.asarray(t, dtype=np.int64)
        if t.size and (t.min() < self.first or t.max() >= len(self.scale)):
            raise IndexError(f"decision date index {t} outside [{self.first}, {len(self.scale) - 1}]")
        lead = np.broadcast_shapes(np.shape(action)[:-1], t.shape)
        rows = np.broadcast_to(t, lead).ravel()
        out = kernels.targets_rows(_rows(lead, action), rows, self.scale, self.returns, self.params)
        return out.reshape(*lead, -1)

    def steps(self, action: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The target weights of one action at ``t`` step by step, by the kernels :meth:`targets` runs: the raw
        weights (the action map), the vol-targeting scale per asset and the capped targets (:meth:`targets`)."""
        target = self.targets(action, t)  # first: it checks t
        raw = np.empty(self.n_assets)
        kernels.action_weights_row(np.asarray(action, np.float64), self.params, raw)
        if self.params[kernels.P_PORTFOLIO_VOL]:
            scale = np.full(self.n_assets, kernels.portfolio_scale_row(raw, t, self.returns, self.params))
        else:
            scale = self.scale[t].copy()
        return raw, scale, target


class RiskAwareReward:
    """Log return net of costs (or the differential Sharpe ratio) minus downside and drawdown penalties."""

    def __init__(self, config: EnvConfig, lead: tuple[int, ...]) -> None:
        """:param lead: leading environment shape of the moving-moment state."""
        self.config = config
        self.dsr = config.reward == "differential_sharpe"
        self.a = np.zeros((*lead, 1))
        self.b = np.zeros((*lead, 1))

    def reset(self, rows: Any = ...) -> None:
        """Forget the differential-Sharpe moments."""
        self.a[rows] = 0.0
        self.b[rows] = 0.0

    def reward(self, ret: np.ndarray, drawdown_before: np.ndarray, drawdown_after: np.ndarray) -> np.ndarray:
        """The step reward ``(..., 1)`` from the step log return and the drawdown before/after."""
        cfg = self.config
        reward, self.a, self.b = kernels.scheme_reward(
            *(np.asarray(x, dtype=np.float64) for x in (ret, drawdown_before, drawdown_after, self.a, self.b)),
            self.dsr, cfg.dsr_eta, cfg.downside_penalty, cfg.drawdown_penalty,
        )  # fmt: skip
        return reward


class DrawdownStopper:
    """Terminates an episode when the drawdown from peak net worth reaches ``max_drawdown``."""

    def __init__(self, max_drawdown: float) -> None:
        """:param max_drawdown: threshold in (0, 1]; reached inclusively."""
        self.max_drawdown = max_drawdown

    def stop(self, drawdown: np.ndarray) -> np.ndarray:
        """Boolean ``(..., 1)``: this environment's episode terminates."""
        return kernels.drawdown_stop(np.asarray(drawdown, dtype=np.float64), float(self.max_drawdown))


class Observer:
    """Flat float32 observation: a window of per-asset features, current weights, cash fraction, drawdown."""

    def __init__(self, config: EnvConfig, market: Market) -> None:
        """Precompute the feature matrix once (per date: asset-major [log_ret, vol_w..., ret_sum_w...])."""
        self.window_size = config.window_size
        n_dates, n_assets = market.close.shape
        features = np.stack([market.log_ret, *market.vol, *market.ret_sum], axis=-1).reshape(n_dates, -1)
        self.features = np.ascontiguousarray(np.nan_to_num(features), dtype=np.float32)
        self.size = self.features.shape[1] * self.window_size + n_assets + 2

    @property
    def observation_space(self) -> gym.spaces.Box:
        """Float32 Box of the flat observation; the bounds only say "any finite float32"."""
        bound = np.finfo(np.float32).max
        return gym.spaces.Box(-bound, bound, (self.size,), np.float32)

    def observe(self, t: int | np.ndarray, weights: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Observation at the close of ``t`` (``(size,)`` or ``(B, size)``) from a :class:`Portfolio`'s arrays."""
        t = np.asarray(t, dtype=np.int64)
        out = np.empty((*t.shape, self.size), np.float32)
        kernels.observe_rows(
            self.features, t.reshape(-1), self.window_size, weights.reshape(-1, weights.shape[-1]),
            state.reshape(-1, kernels.STATE_WIDTH), out.reshape(-1, self.size),
        )  # fmt: skip
        return out


class Informer:
    """Builds the per-step info dicts (keys in docs/environment.md)."""

    KEYS = ("net_worth", "cash", "turnover", "fees", "drawdown", "reward")

    def __init__(self, market: Market) -> None:
        """:param market: source of the precomputed ISO date strings."""
        self.dates = market.date_strings

    def info(self, step: dict[str, Any]) -> dict[str, Any]:
        """Info of a single environment from its step arrays (``(1,)`` scalars, ``(N,)`` vectors)."""
        net_worth, cash, turnover, fees, drawdown, reward = (float(step[key][0]) for key in self.KEYS)
        return self.record(step["t"], net_worth, cash, turnover, fees, drawdown, reward, step["weights"],
                           step["target_weights"])  # fmt: skip

    def record(
        self, t: int, net_worth: float, cash: float, turnover: float, fees: float, drawdown: float, reward: float,
        weights: np.ndarray, target_weights: np.ndarray,
    ) -> dict[str, Any]:  # fmt: skip
        """The info dict of one environment at date index ``t`` (the close the step ends at)."""
        return {
            "date": self.dates[t], "net_worth": net_worth, "cash": cash, "turnover": turnover, "fees": fees,
            "drawdown": drawdown, "reward": reward, "weights": weights, "target_weights": target_weights,
        }  # fmt: skip

    def from_state(self, t: int, state: np.ndarray, weights: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """The info dict of one environment from its state record ``(STATE_WIDTH,)`` (steps and resets alike)."""
        s = state.tolist()
        c = kernels
        return self.record(t, s[c.NET_WORTH], s[c.CASH], s[c.TURNOVER], s[c.FEES], s[c.DRAWDOWN], s[c.REWARD],
                           weights, targets)  # fmt: skip

    def infos(self, t: np.ndarray, state: np.ndarray, weights: np.ndarray, targets: np.ndarray) -> list[LazyInfo]:
        """Infos of a batch, one :class:`LazyInfo` per environment over these (never rewritten) step arrays."""
        source = functools.partial(self._row, t, state, weights, targets)
        infos = []
        for i in range(len(t)):
            info = LazyInfo()
            info.source, info.row = source, i
            infos.append(info)
        return infos

    def _row(self, t: np.ndarray, state: np.ndarray, weights: np.ndarray, targets: np.ndarray, i: int) -> dict:
        return self.from_state(int(t[i]), state[i], weights[i], targets[i])


class LazyInfo(dict):
    """A dict whose record keys (those of :meth:`Informer.record`) are filled in on first read.

    Building B full info dicts costs more than the whole batched step, and training reads them only for
    finished copies; so every read (item, ``get``, ``in``, iteration, ``len``, ``keys``/``items``/``values``,
    ``copy`` (a plain dict), ``repr``, ``==``, pickling) first fills the record from the step's arrays. Keys set
    before the fill (SB3's ``terminal_observation`` ...) are kept. ``get`` and ``in`` of a key the record does not
    hold (SB3 asks every info for ``episode`` and ``is_success`` at every step) answer without filling: a fill
    would not add it.
    """

    __slots__ = ("row", "source")
    RECORD_KEYS = frozenset(("date", "weights", "target_weights", *Informer.KEYS))
    row: int
    source: Callable[[int], dict[str, Any]] | None

    def fill(self) -> LazyInfo:
        """Fill the record keys now (once); returns self."""
        source = getattr(self, "source", None)
        if source is not None:
            self.source = None
            for key, value in source(self.row).items():
                dict.setdefault(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """``dict.get``, filling the record first only when ``key`` is one of its keys."""
        return dict.get(self.fill() if key in self.RECORD_KEYS else self, key, default)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self.fill() if key in self.RECORD_KEYS else self, key)

    def __missing__(self, key: str) -> Any:
        if getattr(self, "source", None) is None:
            raise KeyError(key)
        return self.fill()[key]


def _reading(name: str) -> Any:
    method = getattr(dict, name)

    def read(self: LazyInfo, *args: Any, **kwargs: Any) -> Any:
        return method(self.fill(), *args, **kwargs)

    read.__name__, read.__doc__ = name, method.__doc__
    return read


for _name in ("__iter__", "__len__", "keys", "values", "items", "copy", "__repr__",
              "__eq__", "__ne__", "__reduce_ex__", "pop", "popitem", "setdefault", "__or__", "__ror__"):  # fmt: skip
    setattr(LazyInfo, _name, _reading(_name))
