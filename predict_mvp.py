"""Tomorrow's portfolio: target weights from a trained run at the latest close, stored in ``tt_signals``, with a
forward shadow record in ``tt_shadow`` (docs/predict.md).

``python predict_mvp.py --run RUN_ID|latest [--as-of D] [--notional X] [--json]`` refuses stale or incomplete
data (REFUSED), then replays the run's environment from the run's first signal (all cash at that close) to the
latest close, trading each stored signal at the environment's costs and timing (the shadow record: the new days
are appended to ``tt_shadow``), and runs the policy deterministically on the observation at that close, through the
same code path as ``evaluate_mvp.py``: the targets, the vol-targeting steps, the previous targets, the expected
turnover and an advisory trade list are printed and the targets upserted into ``tt_signals``. Running a day twice
changes nothing. ``evaluate_mvp.py --shadow RUN`` shows the shadow record beside the baselines over the same days.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import sys
from typing import Any, TextIO

import numpy as np
import pandas as pd
import sqlalchemy as sa

import db_utils
import run_records
import signal_records
from coverage_check import DEFAULT_CALENDAR
from features import vol_column
from market import Market, build_market
from policy_rollout import (
    agent_policy,
    final_checkpoint,
    liquidate_and_hold,
    load_model,
    run_env_settings,
    run_normalizer,
    slice_market,
)
from run_records import RunRecord
from settings import CommonSettings, ExitCode, UserError, parse_command, run_cli, setting
from tensortrade_risk_module import EnvConfig, rebalance
from trading_env import TradingEnv, make_env


@dataclasses.dataclass(frozen=True)
class PredictSettings(CommonSettings):
    """Settings of ``predict_mvp.py``."""

    run: str = setting("latest", "run id to predict with, or 'latest' (the most recently started finished run)")
    as_of: dt.date | None = setting(None, "replay as of this close, using only bars up to it (default: the last "
                                    "completed session)")  # fmt: skip
    notional: float | None = setting(None, "portfolio value of the advisory trade list (default: the run's cash)")
    calendar: str = setting(DEFAULT_CALENDAR, "exchange calendar whose last completed session the bars must reach")
    ood_std: float = setting(4.0, "warn when a normalized observation entry is this many std devs out", bounds=(0, 5))
    json: bool = setting(False, "print one JSON document on stdout; the tables and messages go to stderr")


@dataclasses.dataclass
class Replay:
    """The run's environment stepped from the anchor close to the session close along the stored signals."""

    env: TradingEnv
    t: int  # date index of the session in the environment's market
    obs: np.ndarray  # the observation at the session close
    days: list[dict[str, Any]]  # info of every day after the anchor, with the signal it traded
    stopped: bool  # the drawdown stopper fired: the portfolio was sold and holds cash


def replay(market: Market, env_settings: dict[str, Any], anchor: dt.date, signals: pd.DataFrame) -> Replay:
    """Step a fresh environment from all cash at the ``anchor`` close to the market's last close, trading each
    stored signal at its next fill (a day without a signal holds), as ``policy_rollout.rollout`` steps its baselines.

    :raise UserError: (REFUSED) too little history before the anchor.
    """
    config = EnvConfig(**env_settings)
    last = len(market.dates) - 1
    if market.dates[last] == np.datetime64(anchor, "D"):  # the first signal: nothing traded yet
        if last < config.first_decision:
            raise UserError(f"{anchor}: the environment needs {config.first_decision} sessions of history, "
                            f"{last} are stored", ExitCode.REFUSED)  # fmt: skip
        env = make_env(market, **env_settings)
        env.reset(seed=0)
        return Replay(env, last, env.engine.observe(last), [], False)
    env = make_env(slice_market(market, config, anchor, None), **env_settings)
    obs, info = env.reset(seed=0)
    days: list[dict[str, Any]] = []
    while True:
        date = dt.date.fromisoformat(info["date"])
        target = signals.loc[date, list(env.symbols)].to_numpy(float) if date in signals.index else None
        obs, _, terminated, truncated, info = env.step_target(target)
        days.append({**info, "signal_as_of": date if target is not None else None})
        if terminated:
            days += [{**i, "signal_as_of": None} for i in liquidate_and_hold(env)]
            return Replay(env, env.t, obs, days, True)
        if truncated:
            return Replay(env, env.t, obs, days, False)


def observation_names(env: TradingEnv, t: int) -> list[str]:
    """A name per entry of the observation at the close of ``t``, in the observer's layout (docs/environment.md):
    the window's days oldest first, per day each symbol's log return, volatilities and return sums; then each
    symbol's weight, the cash fraction and the drawdown."""
    market = env.engine.market
    features = ["log_ret", *map(vol_column, market.vol_windows), *(f"ret_sum_{w}" for w in market.return_windows)]
    days = market.date_strings[t - env.config.window_size + 1 : t + 1]
    window = [f"{symbol} {feature} on {day}" for day in days for symbol in market.symbols for feature in features]
    return [*window, *(f"{symbol} weight" for symbol in market.symbols), "cash fraction", "drawdown"]


def out_of_distribution(names: list[str], normalized: np.ndarray, ood_std: float, shown: int = 5) -> list[str]:
    """The warning (none or one) naming the observation entries ``ood_std`` or more standard deviations from the
    training statistics, the farthest first."""
    far = np.flatnonzero(np.abs(normalized) >= ood_std)
    if not len(far):
        return []
    farthest = far[np.argsort(-np.abs(normalized[far]), kind="stable")]
    listed = ", ".join(f"{names[i]} ({normalized[i]:+.1f})" for i in farthest[:shown])
    more = f" and {len(far) - shown} more" if len(far) > shown else ""
    return [f"out of distribution: {len(far)} observation entries lie {ood_std:g}+ std devs from the training "
            f"statistics: {listed}{more}"]  # fmt: skip


def decide(rep: Replay, model: Any, normalize: Any, ood_std: float) -> tuple[dict[str, np.ndarray], list[str]]:
    """The policy's targets at the session close (all cash after a drawdown stop) and the warnings.

    :raise UserError: (REFUSED) a non-finite observation.
    """
    n = len(rep.env.symbols)
    if rep.stopped:
        nan = np.full(n, np.nan)
        return {"raw": nan, "scale": nan, "target": np.zeros(n)}, ["the drawdown stop fired: the shadow holds cash"]
    if not np.isfinite(rep.obs).all():
        raise UserError(f"the observation at {rep.env.dates[rep.t]} is not finite (entries "
                        f"{np.flatnonzero(~np.isfinite(rep.obs)).tolist()[:10]})", ExitCode.REFUSED)  # fmt: skip
    warnings = []
    if normalize is not None:  # a run trained on raw observations has no statistics to compare with
        names = observation_names(rep.env, rep.t)
        warnings = out_of_distribution(names, np.asarray(normalize(rep.obs), np.float64), ood_std)
    kind, action = agent_policy(model, normalize)(rep.obs, rep.env.dates[rep.t], None)
    if kind != "action" or action is None:  # the agent always acts through the action scheme
        raise RuntimeError(f"the agent policy returned a {kind!r} decision")
    raw, scale, target = rep.env.engine.action_scheme.steps(action, rep.t)
    return {"raw": raw, "scale": scale, "target": target}, warnings


def advisory(rep: Replay, targets: np.ndarray, notional: float, closes: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """The trades the environment's rules would make towards ``targets`` (band, flat fee, commission) valued at
    the session close, scaled to ``notional``; and the expected turnover and fees (fraction of net worth)."""
    engine, config = rep.env.engine, rep.env.config
    pf, price = engine.portfolio, engine.market.close[rep.t]
    quantity, _, fees, turnover = rebalance(pf.quantity, pf.cash, targets, price, config.rebalance_band,
                                            config.fee_flat, engine.commission)  # fmt: skip
    worth = float(pf.net_worth[0])
    value = (quantity - pf.quantity) * price / worth * notional
    trades = pd.DataFrame({"value": value, "shares": value / closes}, index=list(rep.env.symbols))
    return trades, {"turnover": float(turnover[0]), "fees_fraction": float(fees[0]) / worth}


def gated_market(engine: sa.Engine, run: RunRecord, config: EnvConfig, session: dt.date) -> tuple[Market, np.ndarray]:
    """The run's market up to ``session`` and the raw closes there, after the data gate.

    :raise UserError: (REFUSED) stale or missing bars, non-finite features, or bars the market refuses.
    """
    data = db_utils.load_training_bars(engine, run.symbols, None, session, include_flagged=True)
    signal_records.require_fresh(data.bars, run.symbols, session)
    signal_records.require_finite_features(data.bars, config.vol_windows, session)
    try:
        market = build_market(data.bars, config)
    except UserError as exc:
        raise UserError(f"{exc} (nothing was written)", ExitCode.REFUSED) from None
    today = data.bars[pd.to_datetime(data.bars["date"]).dt.date == session].set_index("symbol")
    return market, today.loc[list(market.symbols), "close"].to_numpy(float)


def prediction_rows(run: RunRecord, session: dt.date, rep: Replay, steps: dict, closes: np.ndarray) -> list[dict]:
    """The ``tt_signals`` rows of the session (None for a value that is not a number)."""

    def num(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    current = rep.env.engine.portfolio.weights
    return [{"run_id": run.run_id, "as_of": session, "symbol": s, "target_weight": float(steps["target"][j]),
             "raw_weight": num(steps["raw"][j]), "scale": num(steps["scale"][j]),
             "capped_weight": None if rep.stopped else float(steps["target"][j]),
             "previous_weight": float(current[j]), "close": float(closes[j])}
            for j, s in enumerate(rep.env.symbols)]  # fmt: skip


def shadow_rows(run: RunRecord, rep: Replay, after: dt.date | None, initial_cash: float) -> list[dict]:
    """The replayed days after ``after`` (the last stored shadow day) as ``tt_shadow`` rows."""
    rows, before = [], initial_cash
    for day in rep.days:
        date = dt.date.fromisoformat(day["date"])
        if after is None or date > after:
            rows.append({"run_id": run.run_id, "date": date, "daily_return": day["net_worth"] / before - 1.0,
                         "net_worth": day["net_worth"], "turnover": day["turnover"], "fees": day["fees"],
                         "signal_as_of": day["signal_as_of"]})  # fmt: skip
        before = day["net_worth"]
    return rows


def load_run(engine: sa.Engine, settings: PredictSettings) -> tuple[RunRecord, dict[str, Any], EnvConfig]:
    """The run (finished, native backend), its environment settings and their validated config."""
    run = run_records.find_run(engine, settings.run, finished_only=True)
    if run.backend == "tensortrade":
        raise UserError(f"run {run.run_id} was trained on the TensorTrade backend; predict_mvp.py predicts with "
                        "native runs (see docs/tensortrade_backend.md)", ExitCode.REFUSED)  # fmt: skip
    env_settings = run_env_settings(run)
    return run, env_settings, EnvConfig(**env_settings)


def predict(engine: sa.Engine, settings: PredictSettings) -> dict[str, Any]:
    """Gate the data, extend the shadow record, compute and store the session's targets; return the document.

    :raise UserError: REFUSED (stale data, in-sample session, session before the run's first signal, ...),
        NOT_FOUND (run or checkpoint), USAGE (unreadable checkpoint).
    """
    run, env_settings, config = load_run(engine, settings)
    checkpoint = final_checkpoint(run)
    session = signal_records.last_session(settings.as_of, settings.calendar)
    if run.slice_end and session <= run.slice_end:
        raise UserError(f"session {session} is inside run {run.run_id}'s training slice (to {run.slice_end}): "
                        "a signal there would be in-sample", ExitCode.REFUSED)  # fmt: skip
    signals = signal_records.read_signals(engine, run.run_id)
    anchor = signals.index[0] if len(signals) else session
    if session < anchor:
        raise UserError(f"session {session} is before run {run.run_id}'s first signal ({anchor}): the forward "
                        "record cannot be rewritten", ExitCode.REFUSED)  # fmt: skip
    market, closes = gated_market(engine, run, config, session)
    rep = replay(market, env_settings, anchor, signals[signals.index < session])
    model = load_model(checkpoint, len(market.symbols), rep.env.observation_space.shape)
    normalize = run_normalizer(run, checkpoint)
    steps, warnings = decide(rep, model, normalize, settings.ood_std)
    notional = settings.notional or config.initial_cash
    trades, expected = advisory(rep, steps["target"], notional, closes)
    shadow = signal_records.read_shadow(engine, run.run_id)
    new_days = shadow_rows(run, rep, shadow.index[-1] if len(shadow) else None, config.initial_cash)
    signal_records.write_day(engine, prediction_rows(run, session, rep, steps, closes), new_days)
    before = signals[signals.index < session]
    previous = before.iloc[-1].reindex(list(market.symbols)) if len(before) else pd.Series(0.0, list(market.symbols))
    table = pd.DataFrame({"raw": steps["raw"], "scale": steps["scale"], "target": steps["target"],
                          "previous_target": previous.to_numpy(float),
                          "current": rep.env.engine.portfolio.weights, "trade_value": trades["value"],
                          "trade_shares": trades["shares"]}, index=list(market.symbols))  # fmt: skip
    worth = rep.days[-1]["net_worth"] if rep.days else config.initial_cash
    return {"run_id": run.run_id, "as_of": session.isoformat(), "anchor": anchor.isoformat(),
            "previous_signal": before.index[-1].isoformat() if len(before) else None, "notional": notional,
            "expected": expected, "warnings": warnings, "stopped": rep.stopped, "table": table,
            "shadow": {"days_added": [r["date"].isoformat() for r in new_days], "net_worth": worth,
                       "return_since_anchor": worth / config.initial_cash - 1.0}}  # fmt: skip


def print_prediction(doc: dict[str, Any], out: TextIO) -> None:
    """The targets with their vol-targeting steps, the expected turnover, the trade list and the warnings."""
    print(
        f"run {doc['run_id']}: targets at the close of {doc['as_of']} (shadow record since {doc['anchor']}; "
        f"{len(doc['shadow']['days_added'])} day(s) added, net worth {doc['shadow']['net_worth']:,.2f})",
        file=out,
    )
    with pd.option_context("display.width", 200, "display.float_format", "{:,.4f}".format):
        print(doc["table"].to_string(), file=out)
    print(f"expected turnover {doc['expected']['turnover']:.2%}, fees {doc['expected']['fees_fraction']:.4%} of net "
          f"worth; trade values for a notional of {doc['notional']:,.2f} (advisory; fill at the next session)",
          file=out)  # fmt: skip
    for warning in doc["warnings"]:
        print(f"warning: {warning}", file=out)


def to_json(doc: dict[str, Any]) -> str:
    """The document with the table as one record per symbol; non-finite numbers as null."""
    table = doc["table"].astype(object).where(np.isfinite(doc["table"].to_numpy(float)), None)
    return json.dumps({**doc, "table": table.to_dict(orient="index")}, indent=1, allow_nan=False)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and predict (see :func:`predict`)."""
    settings = parse_command(PredictSettings, argv, "Tomorrow's target weights from a trained run.")
    if settings is None:
        return int(ExitCode.OK)
    announce = functools.partial(print, file=sys.stderr) if settings.json else print
    doc = predict(db_utils.connect(settings, announce=announce), settings)
    print_prediction(doc, sys.stderr if settings.json else sys.stdout)
    if settings.json:
        print(to_json(doc))
    return int(ExitCode.OK)


def cli() -> int:
    """The ``predict-mvp`` console script: ``main`` with user errors as one line."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
