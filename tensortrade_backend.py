"""The same risk components inside a real TensorTrade 1.0.4 ``TradingEnv`` (optional backend, Python >= 3.12).

The native environment (:mod:`trading_env`) is the fast default. This module wraps the very same math of
:mod:`tensortrade_risk_module` in TensorTrade's component classes, so a TensorTrade user can drop them into
their own setups and ``make_tensortrade_env`` builds a genuine TensorTrade environment with
``tensortrade.env.default.create``:

- :class:`VolTargetOrders` (a ``TensorTradeActionScheme``): action -> vol-targeted, capped target weights ->
  the native ``rebalance`` plan -> market orders through TensorTrade's Broker, Exchange and Wallets.
- :class:`RiskAwareRewardScheme` (a ``TensorTradeRewardScheme``) and :class:`MaxDrawdownStopper` (a
  ``Stopper``): the native reward and drawdown rule on TensorTrade's portfolio net worth.
- :class:`RiskInformer` (an ``Informer``): the native environment's info keys.

Importing this module on Python < 3.12 or without tensortrade raises ``settings.UserError`` with
``ExitCode.SOURCE_UNAVAILABLE``. Semantic differences from the native backend: docs/tensortrade_backend.md.
``python tensortrade_backend.py --serve FD`` runs one environment for :mod:`tensortrade_remote` (training
from the main interpreter, which cannot import TensorTrade): :func:`serve`.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import sys
import traceback
from decimal import ROUND_DOWN, Decimal
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from env_kernels import log_return, update_drawdown
from market import Market
from settings import ExitCode, UserError
from tensortrade_risk_module import (
    DrawdownStopper,
    EnvConfig,
    Informer,
    RiskAwareReward,
    VolTargetActionScheme,
    mark_to_market,
    rebalance,
    tensortrade_config,
)
from trading_env import market_and_config

INSTALL_HINT = (
    "create the lane with tools/tt_lane.sh, or pip install -r requirements-tensortrade.txt "
    "in a Python >= 3.12 virtual environment"
)
if sys.version_info < (3, 12):
    raise UserError(
        f"the TensorTrade backend needs Python >= 3.12 (tensortrade 1.0.4 requires it), this is "
        f"{sys.version_info.major}.{sys.version_info.minor}: {INSTALL_HINT}",
        ExitCode.SOURCE_UNAVAILABLE,
    )
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tensortrade imports tensorflow: keep its banner quiet
try:
    import tensortrade.env.default as tt_default
    from tensortrade.env.default.actions import TensorTradeActionScheme
    from tensortrade.env.default.rewards import TensorTradeRewardScheme
    from tensortrade.env.generic import Informer as TTInformer
    from tensortrade.env.generic import Stopper, TradingEnv
    from tensortrade.feed.core import DataFeed, Stream
    from tensortrade.oms.exchanges import Exchange, ExchangeOptions
    from tensortrade.oms.instruments import USD, ExchangePair, Instrument, Quantity
    from tensortrade.oms.orders import Order, TradeSide, market_order
    from tensortrade.oms.services.execution.simulated import execute_order
    from tensortrade.oms.wallets import Portfolio, Wallet
except ImportError as exc:
    raise UserError(
        f"the TensorTrade backend needs tensortrade 1.0.4 ({exc}): {INSTALL_HINT}", ExitCode.SOURCE_UNAVAILABLE
    ) from None

ASSET_PRECISION = 8  # fractional shares, as the native portfolio holds
EXCHANGE = "sim"


def instrument_codes(symbols: tuple[str, ...]) -> list[str]:
    """TensorTrade instrument symbols: the alphanumeric part of each symbol plus its zero-padded index.

    TensorTrade finds a wallet's price stream by name *suffix*, so 'A' would pick up the price of 'AA'; a
    fixed-width index suffix makes every code a non-suffix of every other, and pair names need alphanumerics.
    """
    width = max(3, len(str(len(symbols) - 1)))
    return [f"{re.sub(r'[^A-Za-z0-9]', '', s)}{i:0{width}d}" for i, s in enumerate(symbols)]


class _StateProbe:
    """Portfolio state at feed row ``t`` from the wallets, cached per row (feeds the observation and info)."""

    def __init__(self, market: Market, cash: Wallet, assets: list[Wallet], first_row: int, initial: float) -> None:
        self.close, self.cash, self.assets, self.first_row = market.close, cash, assets, first_row
        self.initial = np.array([initial])
        self.peak, self.t, self.state = self.initial, -1, {}

    def holdings(self) -> tuple[np.ndarray, np.ndarray]:
        """Asset quantities ``(N,)`` and cash ``(1,)`` (free plus locked) as floats."""
        quantity = np.array([float(w.total_balance.size) for w in self.assets])
        return quantity, np.array([float(self.cash.total_balance.size)])

    def __call__(self, t: int) -> dict[str, np.ndarray]:
        """``net_worth, cash, weights, drawdown`` valued at the close of row ``t``."""
        t = int(t)
        if t != self.t:
            if t == self.first_row:  # the feed restarted: a new episode
                self.peak = self.initial
            quantity, cash = self.holdings()
            net_worth, weights = mark_to_market(quantity, cash, self.close[t])
            self.peak, drawdown = update_drawdown(net_worth, self.peak)
            self.t, self.state = t, {"net_worth": net_worth, "cash": cash, "weights": weights, "drawdown": drawdown}
        return self.state


class VolTargetOrders(TensorTradeActionScheme):
    """Box action -> native vol-targeted target weights -> native rebalance plan -> TensorTrade market orders.

    Sells are submitted and filled first, then buys sized from the freed cash (TensorTrade locks an order's
    funds when it is created); the flat fee per filled order is withdrawn from the cash wallet afterwards.
    """

    registered_name = "vol-target-orders"

    def __init__(self, config: EnvConfig, market: Market, pairs: list[ExchangePair], probe: _StateProbe) -> None:
        """:param pairs: one exchange pair per market symbol, in symbol order; ``probe``: wallet reader."""
        super().__init__()
        self.targeting = VolTargetActionScheme(config, market)
        self.config, self.close, self.pairs, self.probe = config, market.close, pairs, probe
        self.commission = config.commission_bps * 1e-4
        self.first = config.first_decision
        self.planned_buys: list[tuple[int, float]] = []
        self.placed: list[Order] = []
        self.last: dict[str, Any] = {}

    @property
    def action_space(self) -> Any:
        """The native action space, Box(-1, 1, (N,))."""
        return self.targeting.action_space

    @property
    def decision_index(self) -> int:
        """Market date index of the bar whose close the exchange quotes now (clock step 1 = first decision)."""
        return self.first + self.clock.step - 1

    def _order(self, side: TradeSide, j: int, size: float) -> Order | None:
        """A market order of ``size`` (cash for buys, asset units for sells); None when it rounds to zero.

        The size is rounded down to the instrument's precision first: TensorTrade fills a quantized amount,
        and an order whose remainder stays above zero never completes and keeps its proceeds locked.
        """
        pair = self.pairs[j]
        precision = pair.pair.base.precision if side == TradeSide.BUY else ASSET_PRECISION
        quantized = Decimal(size).quantize(Decimal(10) ** -precision, rounding=ROUND_DOWN)
        return market_order(side, pair, pair.price, quantized, self.portfolio) if quantized > 0 else None

    def get_orders(self, action: Any, portfolio: Portfolio) -> list[Order]:
        """Plan the rebalance with the native functions; return the sells and keep the buys for later."""
        cfg, t = self.config, self.decision_index
        price = self.close[t]
        quantity, cash = self.probe.holdings()
        targets = self.targeting.targets(action, t)
        new_quantity = rebalance(quantity, cash, targets, price, cfg.rebalance_band, cfg.fee_flat, self.commission)[0]
        delta = new_quantity - quantity
        self.last = {"t": t, "target_weights": targets, "value": float(cash[0] + quantity @ price)}
        self.planned_buys = [(j, float(delta[j] * price[j])) for j in np.flatnonzero(delta > 0)]
        sells = [self._order(TradeSide.SELL, j, min(-delta[j], quantity[j])) for j in np.flatnonzero(delta < 0)]
        self.placed = [o for o in sells if o is not None]
        return self.placed

    def perform(self, env: TradingEnv, action: Any) -> None:
        """Fill the sells, then the buys (scaled down together if the cash net of fees falls short)."""
        super().perform(env, action)
        n_trades = len(self.placed) + len(self.planned_buys)
        available = float(self.portfolio.get_wallet(self.pairs[0].exchange.id, USD).balance.size)
        available -= self.config.fee_flat * n_trades
        # a buy order spends commission out of its size, so size = value / (1 - c) buys the planned value
        sizes = [value / (1.0 - self.commission) for _, value in self.planned_buys]
        scale = min(1.0, max(available, 0.0) / sum(sizes)) if sizes else 1.0
        for (j, _), size in zip(self.planned_buys, sizes, strict=True):
            order = self._order(TradeSide.BUY, j, size * scale)
            if order is not None:
                self.broker.submit(order)
                self.placed.append(order)
        self.broker.update()
        self.last.update(self._settle())

    def _settle(self) -> dict[str, np.ndarray]:
        """Withdraw the flat fees; the step's fees and turnover from the trades actually made."""
        traded = commission = 0.0
        filled = 0
        for order in self.placed:
            filled += bool(order.trades)
            for trade in order.trades:
                to_cash = 1.0 if trade.side == TradeSide.BUY else float(trade.price)
                traded += float(trade.quantity.size) * to_cash
                commission += float(trade.commission.size) * to_cash
        flat = self.config.fee_flat * filled
        if flat > 0:
            self.probe.cash.withdraw(Quantity(USD, Decimal(flat)), "FLAT FEE")
        value = self.last["value"]
        return {"fees": np.array([commission + flat]), "turnover": np.array([traded / value])}

    def reset(self) -> None:
        """Reset the portfolio, the broker and the step record."""
        super().reset()
        self.planned_buys, self.placed, self.last = [], [], {}


class RiskAwareRewardScheme(TensorTradeRewardScheme):
    """The native risk-aware (or differential Sharpe) reward on TensorTrade's portfolio net worth."""

    registered_name = "risk-aware-reward"

    def __init__(self, config: EnvConfig) -> None:
        """:param config: reward base, penalties and the differential Sharpe rate."""
        self.scheme = RiskAwareReward(config, ())
        self.reset()

    def reset(self) -> None:
        """Forget the previous net worth, the peak and the differential-Sharpe moments."""
        self.scheme.reset()
        self.previous: np.ndarray | None = None
        self.peak: np.ndarray | None = None
        self.drawdown = np.zeros(1)
        self.last_reward = np.zeros(1)

    def get_reward(self, portfolio: Portfolio) -> float:
        """Log return of the net worth since the last call (first: since the episode start), penalized."""
        net_worth = np.array([float(portfolio.net_worth)])
        if self.previous is None:
            self.previous = self.peak = np.array([float(portfolio.initial_net_worth)])
        before = self.drawdown
        self.peak, self.drawdown = update_drawdown(net_worth, self.peak)
        self.last_reward = self.scheme.reward(log_return(net_worth, self.previous), before, self.drawdown)
        self.previous = net_worth
        return float(self.last_reward[0])


class MaxDrawdownStopper(Stopper):
    """Terminates when the drawdown from peak net worth reaches ``max_drawdown`` (the native rule).

    Like TensorTrade's MaxLossStopper it also ends an episode whose feed is exhausted, unless the environment
    truncates it first through ``max_episode_steps`` (as :func:`make_tensortrade_env` sets).
    """

    registered_name = "max-drawdown"

    def __init__(self, max_drawdown: float) -> None:
        """:param max_drawdown: threshold in (0, 1], reached inclusively."""
        super().__init__()
        self.rule = DrawdownStopper(max_drawdown)
        self.reset()

    def reset(self) -> None:
        """Forget the peak."""
        self.peak: np.ndarray | None = None
        self.stopped = False

    def stop(self, env: TradingEnv) -> bool:
        """True when the drawdown rule fires (or the feed ran out with no step limit)."""
        portfolio = env.action_scheme.portfolio
        if self.peak is None:
            self.peak = np.array([float(portfolio.initial_net_worth)])
        self.peak, drawdown = update_drawdown(np.array([float(portfolio.net_worth)]), self.peak)
        self.stopped = bool(self.rule.stop(drawdown)[0])
        return self.stopped or (env.max_episode_steps is None and not env.observer.has_next())


class RiskInformer(TTInformer):
    """The native info dict (date, net_worth, cash, weights, target_weights, turnover, fees, drawdown, reward,
    stop_reason at the end) plus TensorTrade's ``step``."""

    registered_name = "risk-informer"

    def __init__(self, market: Market, probe: _StateProbe, first: int) -> None:
        """:param first: market date index of the first decision (clock step 0)."""
        super().__init__()
        self.native, self.probe, self.first = Informer(market), probe, first
        self.last = len(market.dates) - 1

    def info(self, env: TradingEnv) -> dict[str, Any]:
        """Info after the current step, valued at the close of the newest observed bar."""
        t = self.first + self.clock.step
        state = self.probe(t)
        zero = np.zeros(1)
        scheme = env.action_scheme.last if self.clock.step else {}
        step = {**state, "t": t, "turnover": scheme.get("turnover", zero), "fees": scheme.get("fees", zero),
                "target_weights": scheme.get("target_weights", state["weights"]),
                "reward": env.reward_scheme.last_reward if self.clock.step else zero}  # fmt: skip
        info = {**self.native.info(step), "step": self.clock.step}
        limit = env.max_episode_steps
        if getattr(env.stopper, "stopped", False):
            info["stop_reason"] = "max_drawdown"
        elif limit is not None and self.clock.step >= limit:
            info["stop_reason"] = "end_of_data" if t >= self.last else "episode_length"
        return info


def _streams(market: Market, codes: list[str], rows: slice, probe: _StateProbe) -> list[Stream]:
    """The observed streams per row: per asset log return, each vol and each return sum, then weights, cash
    fraction, drawdown."""
    vols = zip(market.vol_windows, market.vol, strict=True)
    sums = zip(market.return_windows, market.ret_sum, strict=True)
    features = [("log_ret", market.log_ret)] + [(f"vol_{w}", v) for w, v in vols] + [(f"ret_{w}", v) for w, v in sums]
    streams = [
        Stream.source(np.nan_to_num(values[rows, j]).tolist(), dtype="float").rename(f"{code}:{name}")
        for j, code in enumerate(codes)
        for name, values in features
    ]
    index = Stream.source(list(range(len(market.dates)))[rows], dtype="float").rename("row")
    streams += [index.apply(lambda t, j=j: probe(t)["weights"][j]).rename(f"{c}:weight") for j, c in enumerate(codes)]
    streams.append(index.apply(lambda t: (probe(t)["cash"] / probe(t)["net_worth"])[0]).rename("cash_fraction"))
    streams.append(index.apply(lambda t: probe(t)["drawdown"][0]).rename("drawdown"))
    return streams


def make_tensortrade_env(bars: pd.DataFrame | Market, **config: Any) -> TradingEnv:
    """A TensorTrade ``TradingEnv`` over long-format ``bars`` (or a prebuilt Market) with the risk components.

    Built with ``tensortrade.env.default.create``: a simulated Exchange with one close-price stream per
    symbol, a USD wallet and one wallet per symbol in a Portfolio, and a DataFeed of the native features.

    :param config: any :class:`~tensortrade_risk_module.EnvConfig` field. ``execution`` defaults to ``close``
        (TensorTrade quotes one price per step); ``next_open``, ``random_start`` and ``allow_short`` (its
        wallets cannot go negative) are refused.
    :raise UserError: bad settings or bars (as :func:`trading_env.make_env`), or an unsupported setting
        (:func:`~tensortrade_risk_module.tensortrade_config`).
    """
    market, cfg = market_and_config(bars, tensortrade_config(config))
    first, last = cfg.first_decision, len(market.dates) - 1
    rows = slice(first - (cfg.window_size - 1), None)
    codes = instrument_codes(market.symbols)
    prices = [Stream.source(market.close[rows, j].tolist(), dtype="float").rename(f"USD-{c}")
              for j, c in enumerate(codes)]  # fmt: skip
    options = ExchangeOptions(commission=cfg.commission_bps * 1e-4, max_trade_size=1e15, max_trade_price=1e12)
    exchange = Exchange(EXCHANGE, service=execute_order, options=options)(*prices)
    instruments = [Instrument(c, ASSET_PRECISION, s) for c, s in zip(codes, market.symbols, strict=True)]
    cash = Wallet(exchange, cfg.initial_cash * USD)
    assets = [Wallet(exchange, 0 * i) for i in instruments]
    portfolio = Portfolio(USD, [cash, *assets])
    probe = _StateProbe(market, cash, assets, rows.start, cfg.initial_cash)
    pairs = [ExchangePair(exchange, USD / i) for i in instruments]
    env = tt_default.create(
        portfolio=portfolio,
        action_scheme=VolTargetOrders(cfg, market, pairs, probe),
        reward_scheme=RiskAwareRewardScheme(cfg),
        feed=DataFeed(_streams(market, codes, rows, probe)),
        window_size=cfg.window_size,
        min_periods=cfg.window_size - 1,
        stopper=MaxDrawdownStopper(cfg.max_drawdown),
        informer=RiskInformer(market, probe, first),
    )
    env.max_episode_steps = min(cfg.episode_length or last - first, last - first)
    return env


def _space(space: Any) -> tuple:
    """A Box as plain values: ``(shape, dtype, low, high)``."""
    return space.shape, space.dtype.str, space.low.tolist(), space.high.tolist()


def _plain(info: dict[str, Any]) -> dict[str, Any]:
    """An info dict with its arrays as lists."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in info.items()}


def _answer(env: TradingEnv | None, command: str, args: list[Any]) -> tuple[TradingEnv, tuple]:
    """The reply to one command of :func:`serve` (plain Python values and raw observation bytes)."""
    if command == "init":
        env = make_tensortrade_env(Market(**args[0]), **args[1])
        return env, ("ready", _space(env.observation_space), _space(env.action_space))
    if env is None:
        raise RuntimeError(f"command {command!r} before 'init'")
    dtype = env.observation_space.dtype
    if command == "reset":
        obs, info = env.reset(seed=args[0])
        return env, ("reset", np.asarray(obs, dtype).tobytes(), _plain(info))
    obs, reward, terminated, truncated, info = env.step(np.asarray(args[0], np.float32))
    restart = np.asarray(env.reset()[0], dtype).tobytes() if terminated or truncated else None  # SB3 auto-reset
    return env, ("step", np.asarray(obs, dtype).tobytes(), float(reward), bool(terminated), bool(truncated),
                 _plain(info), restart)  # fmt: skip


def serve(commands: BinaryIO, replies: BinaryIO) -> None:
    """Run one environment for a :mod:`tensortrade_remote` parent until ``commands`` ends.

    Commands are pickled tuples ``("init", market_fields, config)``, ``("reset", seed)``, ``("step", action)``;
    each gets one pickled reply, ``("error", message, exit_code)`` after which the worker stops. Replies carry
    no numpy objects: the parent's numpy 2 and this lane's numpy 1.26 cannot read each other's array pickles.
    """
    env = None
    while True:
        try:
            command, *args = pickle.load(commands)
        except EOFError:  # the parent closed the pipe (close(), exit, or it died)
            return
        try:
            env, reply = _answer(env, command, args)
        except UserError as exc:
            reply = ("error", str(exc), int(exc.exit_code))
        except Exception as exc:  # a bug: the traceback goes to the worker's log, the cause to the parent
            traceback.print_exc()
            reply = ("error", f"{type(exc).__name__}: {exc}", int(ExitCode.ERROR))
        pickle.dump(reply, replies, protocol=5)
        replies.flush()
        if reply[0] == "error":
            return


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--serve":
        sys.exit("usage: python tensortrade_backend.py --serve REPLY_FD  (started by tensortrade_remote.py)")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # on Ctrl-C the parent shuts its workers down in order
    with os.fdopen(int(sys.argv[2]), "wb") as reply_pipe:
        serve(sys.stdin.buffer, reply_pipe)
