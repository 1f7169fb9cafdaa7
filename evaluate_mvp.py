"""Out-of-sample evaluation of a trained run against simple baselines, with statistics, in ``tt_evaluations``.

``python evaluate_mvp.py --run RUN_ID|latest [--start D] [--end D] [--json]`` loads the run's final PPO checkpoint,
runs it deterministically over the held-out tail (the sessions after the run's training slice, or
``--start/--end``; a slice overlapping the training slice only with ``--in-sample``, and labelled so) through the
same environment, costs and execution timing as training, runs the baselines the same way, computes bootstrap
intervals, paired tests, the SPA test, the deflated Sharpe ratio and a verdict (``evaluation_records``), prints
the tables (or one JSON document), stores one row per policy in ``tt_evaluations`` and writes
``reports/<run_id>/report.html`` (plus PNGs). Definitions: docs/evaluation.md and docs/statistics.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import pandas as pd
import sqlalchemy as sa

import checkpoints
import db_utils
import evaluation_records as records
import report_mvp
import run_records
from evaluation_records import overlaps_training
from evaluation_stats import BootstrapConfig
from market import Market, build_market
from metrics import Evaluation
from run_records import RunRecord
from settings import REPO_ROOT, CommonSettings, ExitCode, UserError, parse_command, run_cli, setting, writable_folder
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


def _liquidate_and_hold(env: TradingEnv) -> list[dict[str, Any]]:
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
            infos += _liquidate_and_hold(env)
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


# ------------------------------------------------------------------------------------------------ command
@dataclasses.dataclass(frozen=True)
class EvaluateSettings(CommonSettings):
    """Settings of ``evaluate_mvp.py``."""

    run: str = setting("latest", "run id to evaluate, or 'latest' (the most recently started finished run)")
    start: dt.date | None = setting(None, "first evaluated session (default: the first after the training slice)")
    end: dt.date | None = setting(None, "last evaluated session (default: the last stored bar)")
    in_sample: bool = setting(False, "evaluate a slice overlapping the training slice (labelled in-sample)")
    out_dir: Path = setting(REPO_ROOT / "reports", "reports are written to OUT_DIR/<run_id>/", env="TT_REPORTS_DIR")
    store: bool = setting(True, "store the metrics and statistics in tt_evaluations")
    json: bool = setting(False, "print one JSON document on stdout; the tables and messages go to stderr")
    bootstrap_reps: int = setting(
        2000, "bootstrap resamples behind every interval, p-value and the SPA test", bounds=(100, None)
    )


def evaluation_slice(run: RunRecord, settings: EvaluateSettings) -> tuple[dt.date, dt.date | None]:
    """(start, end) of the evaluation: flags, else the day after the training slice .. the last stored bar."""
    start = settings.start or (run.slice_end + dt.timedelta(days=1) if run.slice_end else None)
    if start is None:
        raise UserError(f"run {run.run_id} has no slice_end in tt_runs: give --start", ExitCode.USAGE)
    end = settings.end
    if end is not None and end < start:
        raise UserError(f"--end {end} is before the evaluation start {start}")
    return start, end


def check_out_of_sample(run: RunRecord, market: Market, config: EnvConfig, allowed: bool) -> None:
    """Refuse an evaluated slice that shares a session with the training slice, unless ``--in-sample`` asks for it.

    :raise UserError: (REFUSED) naming both slices.
    """
    start, end = (pd.Timestamp(d).date() for d in (market.dates[config.first_decision], market.dates[-1]))
    if allowed or not overlaps_training(run, start, end):
        return
    raise UserError(
        f"the evaluated sessions {start} .. {end} overlap run {run.run_id}'s training slice {run.slice_start} .. "
        f"{run.slice_end}: that is in-sample; evaluate_mvp.py --in-sample evaluates it anyway (labelled "
        "in-sample), or give a --start after the training slice",
        ExitCode.REFUSED,
    )


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


def print_summary(doc: dict[str, Any], evaluation: Evaluation, out: TextIO) -> None:
    """The metrics table, the statistics table (intervals, comparisons), the SPA, the DSR and the verdict."""
    period = doc["period"]
    label = " IN-SAMPLE (overlaps the training slice)" if period["in_sample"] else " out of sample"
    print(f"run {doc['run_id']}: {period['start']} .. {period['end']},{label}, {period['sessions']} sessions, "
          f"{len(doc['symbols'])} symbols", file=out)  # fmt: skip
    print(report_mvp.format_metrics(evaluation.metrics).to_string(), file=out)
    boot = doc["bootstrap"]
    print(f"\n{boot['level']:.0%} intervals: {boot['kind']} block bootstrap, {boot['reps']} resamples, mean block "
          f"{boot['block_size']:.1f} sessions; p-values two-sided", file=out)  # fmt: skip
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(report_mvp.format_statistics(doc).to_string(), file=out)
    for line in report_mvp.statistics_notes(doc):
        print(line, file=out)
    print(f"verdict: {doc['verdict']['text']}", file=out)


def evaluate_run(engine: sa.Engine, settings: EvaluateSettings) -> Path:
    """Evaluate ``settings.run`` against the baselines with statistics, store them, write the report and print
    the tables (or, with ``--json``, the document on stdout and the tables on stderr).

    :return: the path of ``report.html``.
    :raise UserError: NOT_FOUND for an unknown run or a missing checkpoint, REFUSED when the data do not fit or
        the slice is in-sample without ``--in-sample``, USAGE for an unreadable checkpoint, FILESYSTEM for a
        reports folder that cannot be written.
    """
    run = run_records.find_run(engine, settings.run, finished_only=True)
    if run.backend == "tensortrade":
        raise UserError(
            f"run {run.run_id} was trained on the TensorTrade backend, whose observations differ from the native "
            "environment's; evaluate_mvp.py evaluates native runs (see docs/tensortrade_backend.md)",
            ExitCode.REFUSED,
        )
    checkpoint = final_checkpoint(run)
    start, end = evaluation_slice(run, settings)
    env_settings = run_env_settings(run)
    config = EnvConfig(**env_settings)
    data = db_utils.load_training_bars(engine, run.symbols, None, end, include_flagged=True)
    if data.missing:
        raise UserError(f"run {run.run_id} traded {', '.join(data.missing)}: no stored bars", ExitCode.REFUSED)
    market = slice_market(build_market(data.bars, config), config, start, end)
    check_out_of_sample(run, market, config, settings.in_sample)
    folder = writable_folder(settings.out_dir / run.run_id, "--out-dir")
    model = load_model(checkpoint, len(market.symbols), make_env(market, **env_settings).observation_space.shape)
    agent = agent_policy(model, run_normalizer(run, checkpoint))
    policies = {"agent": agent, **baseline_policies(len(market.symbols))}
    evaluation = evaluate_policies(market, env_settings, policies)
    sharpe = float(evaluation.metrics.loc["agent", "sharpe"])
    trials = records.count_trials(engine, run, evaluation.start, evaluation.end, sharpe)
    stats = records.compute_statistics(evaluation, trials, BootstrapConfig(reps=settings.bootstrap_reps))
    doc = records.document(run, evaluation, stats, trials)
    if settings.store:
        records.store_evaluation(engine, run.run_id, evaluation, doc)
    episodes = run_records.read_episodes(engine, run.run_id)
    html = report_mvp.write_report(folder, run, evaluation, episodes, env_settings, doc)
    out = sys.stderr if settings.json else sys.stdout
    print_summary(doc, evaluation, out)
    print(f"report: {html}", file=out)
    if settings.json:
        document = {**doc, "stored": settings.store, "report": str(html)}
        print(json.dumps(document, indent=1, allow_nan=False))
    return html


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and evaluate the run (see :func:`evaluate_run`)."""
    settings = parse_command(EvaluateSettings, argv, "Out-of-sample evaluation of a training run against baselines.")
    if settings is None:
        return int(ExitCode.OK)
    announce = functools.partial(print, file=sys.stderr) if settings.json else print
    evaluate_run(db_utils.connect(settings, announce=announce), settings)
    return int(ExitCode.OK)


def cli() -> int:
    """The ``evaluate-mvp`` console script (pyproject.toml): ``main`` with user errors as one line."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
