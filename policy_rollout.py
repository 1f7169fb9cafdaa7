"""Policies run through the trading environment: the baselines, a trained run's agent, rollouts and their traces.

The one code path by which every policy is judged (evaluation, walk-forward folds, the shadow record of
``predict_mvp.py``): a run's checkpoint, normalization and environment settings rebuilt from ``tt_runs``
(:func:`run_env_settings`, :func:`load_model`, :func:`run_normalizer`), the run's market cut to a slice with its
warm-up history (:func:`run_market`, :func:`slice_market`) and a deterministic rollout per policy
(:func:`rollout`) with the environment's costs, timing and drawdown stopper; only native runs
(:func:`require_native`). docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

import checkpoints
import db_utils
from market import Market, build_market
from metrics import Evaluation
from run_records import RunRecord
from settings import ExitCode, UserError
from tensortrade_risk_module import EnvConfig, mark_to_market, rebalance
from trading_env import TradingEnv, make_env

# ----------------------------------------------------------------------------------------------- policies
# A policy sees the observation, the decision date and the previous decision date (None on the first step)
# and returns ("action", a) for env.step or ("target", w | None) for env.step_target (None = hold, no trade).
Decision = tuple[Literal["action"], np.ndarray] | tuple[Literal["target"], np.ndarray | None]
Policy = Callable[[np.ndarray, np.datetime64, np.datetime64 | None], Decision]


def baseline_policies(n_assets: int) -> dict[str, Policy]:
    """The four baselines, by name: cash, equal-weight buy-and-hold, equal-weight monthly, inverse-vol.

    Monthly rebalances on the first decision date of each calendar month (and on the first step, to invest);
    inverse-vol is the environment's own vol-target action scheme fed the constant action 1 for every asset.
    """
    equal, zeros, ones = np.full(n_assets, 1.0 / n_assets), np.zeros(n_assets), np.ones(n_assets, np.float32)

    def new_month(date: np.datetime64, previous: np.datetime64 | None) -> bool:
        return previous is None or date.astype("datetime64[M]") != previous.astype("datetime64[M]")

    return {
        "cash": lambda obs, date, previous: ("target", zeros),
        "buy_and_hold": lambda obs, date, previous: ("target", equal if previous is None else None),
        "monthly_rebalanced": lambda obs, date, previous: ("target", equal if new_month(date, previous) else None),
        "inverse_vol": lambda obs, date, previous: ("action", ones),
    }


def agent_policy(model: Any, normalize: Callable[[np.ndarray], np.ndarray] | None = None) -> Policy:
    """The trained model, acting deterministically (the mean of its action distribution) on the observation as it
    saw it in training (``normalize``: the run's frozen observation normalization; None: it trained on raw ones)."""
    prepare = normalize or (lambda obs: obs)
    return lambda obs, date, previous: ("action", model.predict(prepare(obs), deterministic=True)[0])


# ---------------------------------------------------------------------------------------------- rollouts
def slice_market(market: Market, config: EnvConfig, start: dt.date, end: dt.date | None) -> Market:
    """The market cut so that the first decision falls on ``start`` (or the next session) and the last close on
    ``end`` (or the session before; None = the last date).

    Keeps exactly ``config.first_decision`` sessions of history before ``start`` (features are computed on
    the full history first, so the warm-up windows are filled with real data, and sliced afterwards).

    :raise UserError: (REFUSED) too little history before ``start``, or no session to trade in the slice.
    """
    first = int(np.searchsorted(market.dates, np.datetime64(start, "D")))
    last = len(market.dates) if end is None else int(np.searchsorted(market.dates, np.datetime64(end, "D"), "right"))
    last -= 1
    if last <= first:
        raise UserError(
            f"evaluation slice {start} .. {end or 'last bar'}: fewer than 2 sessions common to all symbols",
            ExitCode.REFUSED,
        )
    if first < config.first_decision:
        raise UserError(
            f"evaluation start {market.dates[first]}: the environment needs {config.first_decision} sessions of "
            f"history before it, only {first} are stored (choose a later --start)",
            ExitCode.REFUSED,
        )
    rows = slice(first - config.first_decision, last + 1)
    return dataclasses.replace(
        market,
        dates=market.dates[rows],
        date_strings=market.date_strings[rows],
        open=market.open[rows],
        close=market.close[rows],
        log_ret=market.log_ret[rows],
        vol=tuple(v[rows] for v in market.vol),
        ret_sum=tuple(v[rows] for v in market.ret_sum),
    )


def liquidate_and_hold(env: TradingEnv) -> list[dict[str, Any]]:
    """After a drawdown stop at the close of t: sell everything at the next fill, then hold cash to the end.

    The sale is a decision at t with the environment's timing and costs (band 0: everything that can pay its
    fee is sold); a position too small to pay its flat fee stays and is marked to market.
    """
    step_engine, t = env.engine, env.t
    if t >= step_engine.last:
        return []
    pf = step_engine.portfolio
    price = step_engine.fill[t + step_engine.fill_offset]
    quantity, cash, fees, turnover = rebalance(
        pf.quantity, pf.cash, np.zeros_like(pf.quantity), price, 0.0, env.config.fee_flat, step_engine.commission
    )
    worth, weights = mark_to_market(quantity, cash, step_engine.market.close[t + 1 :])
    return [
        {"date": step_engine.market.date_strings[t + 1 + i], "net_worth": float(worth[i, 0]), "cash": float(cash[0]),
         "weights": weights[i], "turnover": float(turnover[0]) if i == 0 else 0.0,
         "fees": float(fees[0]) if i == 0 else 0.0}
        for i in range(len(worth))
    ]  # fmt: skip


def rollout(env: TradingEnv, policy: Policy) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``policy`` from reset to the end of the environment's data.

    :return: the daily trace (index ``date``; columns ``net_worth, cash, turnover, fees, gross_exposure,
        stopped``; row 0 is the start, before any decision) and the end-of-day weights (dates x symbols).
    """
    obs, info = env.reset(seed=0)
    infos, previous, stop_row = [info], None, None
    while True:
        date = np.datetime64(info["date"])
        decision = policy(obs, date, previous)
        if decision[0] == "action":
            obs, _, terminated, truncated, info = env.step(decision[1])
        else:
            obs, _, terminated, truncated, info = env.step_target(decision[1])
        infos.append(info)
        previous = date
        if terminated:
            stop_row = len(infos) - 1
            infos += liquidate_and_hold(env)
            break
        if truncated:
            break
    dates = pd.DatetimeIndex([i["date"] for i in infos], name="date")
    weights = pd.DataFrame(np.vstack([i["weights"] for i in infos]), index=dates, columns=list(env.symbols))
    trace = pd.DataFrame({k: [i[k] for i in infos] for k in ("net_worth", "cash", "turnover", "fees")}, index=dates)
    trace["gross_exposure"] = weights.abs().sum(axis=1)
    trace["stopped"] = np.arange(len(trace)) > (stop_row if stop_row is not None else len(trace))
    return trace, weights


def evaluate_policies(market: Market, env_settings: dict[str, Any], policies: dict[str, Policy]) -> Evaluation:
    """Run every policy on its own fresh environment over ``market`` and compute its metrics."""
    traces, weights = {}, {}
    for name, policy in policies.items():
        traces[name], weights[name] = rollout(make_env(market, **env_settings), policy)
    return Evaluation.from_traces(traces, weights)


def run_market(engine: sa.Engine, run: RunRecord, start: dt.date, end: dt.date | None) -> tuple[Market, dict[str, Any]]:
    """The run's stored bars (flagged symbols included: the run traded them) as a market sliced to start..end
    (:func:`slice_market`), and the environment settings it trained with (:func:`run_env_settings`).

    :raise UserError: (REFUSED) a symbol of the run has no stored bars, or as :func:`slice_market`.
    """
    env_settings = run_env_settings(run)
    config = EnvConfig(**env_settings)
    data = db_utils.load_training_bars(engine, run.symbols, None, end, include_flagged=True)
    if data.missing:
        raise UserError(f"run {run.run_id} traded {', '.join(data.missing)}: no stored bars", ExitCode.REFUSED)
    return slice_market(build_market(data.bars, config), config, start, end), env_settings


def require_native(run: RunRecord, name: str | None = None) -> None:
    """Refuse a run trained on the TensorTrade backend: its observations differ from the native environment's,
    which every evaluation runs (``name``: how the message names the run; default ``run <id>``).

    :raise UserError: (REFUSED).
    """
    if run.backend == "tensortrade":
        raise UserError(f"{name or f'run {run.run_id}'} was trained on the TensorTrade backend, whose observations "
                        "differ from the native environment's the evaluation runs (see docs/tensortrade_backend.md)",
                        ExitCode.REFUSED)  # fmt: skip


def final_checkpoint(run: RunRecord) -> Path:
    """Path of the run's final checkpoint; :raise UserError: (NOT_FOUND) when it is not on disk."""
    path = Path(run.checkpoint_dir or "") / f"{checkpoints.FINAL}.zip"
    if not run.checkpoint_dir or not path.is_file():
        raise UserError(
            f"run {run.run_id}: final checkpoint {path} not found (status {run.status!r}; was the run "
            "interrupted, or the checkpoint folder moved or deleted?)",
            ExitCode.NOT_FOUND,
        )
    return path


def run_env_settings(run: RunRecord) -> dict[str, Any]:
    """The environment settings the run trained with, for a single whole-slice episode.

    Only the episode shaping changes: no random start and no episode length, so the evaluation runs from the
    first to the last session of the slice; costs, timing, reward and stopper are the training ones.
    """
    config = run.config or {}
    stored = config.get("env", config)
    names = {f.name for f in dataclasses.fields(EnvConfig)}
    trained = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in names}
    if not trained:
        raise UserError(f"run {run.run_id}: tt_runs.config holds no environment settings, so the environment it "
                        "trained in cannot be rebuilt", ExitCode.REFUSED)  # fmt: skip
    legacy = {k: v for k, v in checkpoints.LEGACY_SETTINGS.items() if k in names}  # a run from before they existed
    return {**legacy, **trained, "random_start": False, "episode_length": None}


def load_model(path: Path, n_assets: int, observation_shape: tuple[int, ...] | None) -> Any:
    """The PPO model saved at ``path``, checked to act on ``n_assets`` assets and to read ``observation_shape``.

    :raise UserError: USAGE when the file is not a readable model (``checkpoints.load_model``), REFUSED when it
        does not fit the run's environment.
    """
    model = checkpoints.load_model(path)
    if model.action_space.shape != (n_assets,):
        raise UserError(
            f"checkpoint {path} acts on {model.action_space.shape} assets, the run's symbols give {n_assets}",
            ExitCode.REFUSED,
        )
    if model.observation_space.shape != observation_shape:
        raise UserError(
            f"checkpoint {path} reads observations of shape {model.observation_space.shape}, the run's environment "
            f"gives {observation_shape} (were its settings changed?)",
            ExitCode.REFUSED,
        )
    return model


def run_normalizer(run: RunRecord, checkpoint: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    """The run's observation normalization frozen at ``checkpoint`` (None: the run trained on raw observations).

    :raise UserError: (NOT_FOUND) the run normalized observations but their statistics file is missing.
    """
    train = (run.config or {}).get("train", {})
    if not train.get("norm_obs", checkpoints.LEGACY_SETTINGS["norm_obs"]):
        return None
    return checkpoints.load_normalizer(checkpoint)


def run_agent(run: RunRecord, checkpoint: Path, market: Market, env_settings: dict[str, Any]) -> Policy:
    """The run's agent saved at ``checkpoint``, checked to fit ``market`` in the run's environment, acting through the
    run's own observation normalization: how every command judges a trained run.

    :raise UserError: as :func:`load_model` and :func:`run_normalizer`.
    """
    shape = make_env(market, **env_settings).observation_space.shape
    model = load_model(checkpoint, len(market.symbols), shape)
    return agent_policy(model, run_normalizer(run, checkpoint))
