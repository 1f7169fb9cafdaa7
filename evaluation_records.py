"""An evaluation as a record: its statistics, the trials counted over the same bars, the JSON document that
``evaluate_mvp.py --json`` prints, and its ``tt_evaluations`` rows.

Between the pure parts (``metrics.py``, ``evaluation_stats.py``) and the command (``evaluate_mvp.py``): the only
database code of the evaluation. What is stored where: docs/evaluation.md, "Storage".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

import tt_schema as tables
from evaluation_stats import BootstrapConfig, EvaluationStatistics, evaluation_statistics, to_jsonable
from metrics import Evaluation
from run_records import RunRecord
from settings import ExitCode, UserError

AGENT = "agent"
# The fewest daily returns the statistics are defined for: arch's Politis-White block length (behind every
# interval and the SPA test) reads ceil(sqrt(n)) + 5 autocovariances, so it needs n >= 8 (the PSR needs 3).
MIN_RETURNS = 8


def overlaps_training(run: RunRecord, start: dt.date, end: dt.date) -> bool:
    """Whether the sessions start..end share a day with the run's training slice (an unknown bound is open)."""
    return start <= (run.slice_end or dt.date.max) and end >= (run.slice_start or dt.date.min)


def daily_returns(trace: pd.DataFrame) -> np.ndarray:
    """The daily simple returns r_1..r_n of a policy's net worth (row 0 of the trace is the start)."""
    worth = trace["net_worth"].to_numpy(dtype="float64")
    return worth[1:] / worth[:-1] - 1.0


@dataclasses.dataclass(frozen=True)
class Trials:
    """The trials the deflated Sharpe ratio counts (docs/statistics.md, "Deflated Sharpe Ratio")."""

    run_ids: tuple[str, ...]  # every tt_runs row over the same bars (data fingerprint), this run included
    sharpes: tuple[float, ...]  # their agent Sharpe ratios stored over the same slice, this evaluation's included


def count_trials(engine: sa.Engine, run: RunRecord, start: dt.date, end: dt.date, sharpe: float) -> Trials:
    """Every run over the same bars as ``run`` (any status: failed and discarded trials count too), and the agent
    Sharpe of each one's stored evaluation over exactly start..end (other slices are not comparable)."""
    r, e = tables.runs, tables.evaluations
    same_bars = sa.select(r.c.run_id).where(r.c.data_fingerprint == run.data_fingerprint)
    stored = (
        sa.select(e.c.run_id, e.c.sharpe)
        .where(e.c.run_id.in_(same_bars), e.c.run_id != run.run_id, e.c.policy == AGENT, e.c.sharpe.is_not(None))
        .where(e.c.slice_start == start, e.c.slice_end == end)
        .order_by(e.c.evaluated_at)
    )
    with engine.connect() as conn:
        run_ids = set(conn.scalars(same_bars)) if run.data_fingerprint else set()
        by_run = {run_id: s for run_id, s in conn.execute(stored)} if run.data_fingerprint else {}  # latest wins
    known = [float(s) for s in by_run.values()] + ([sharpe] if math.isfinite(sharpe) else [])
    return Trials(tuple(sorted(run_ids | {run.run_id})), tuple(known))


def compute_statistics(evaluation: Evaluation, trials: Trials, config: BootstrapConfig) -> EvaluationStatistics:
    """evaluation_statistics of every policy's daily returns, the agent against the baselines.

    :raise UserError: (REFUSED) fewer than :data:`MIN_RETURNS` daily returns.
    """
    returns = {policy: daily_returns(trace) for policy, trace in evaluation.traces.items()}
    n = len(returns[AGENT])
    if n < MIN_RETURNS:
        raise UserError(f"evaluation {evaluation.start} .. {evaluation.end}: {n} daily return(s), the statistics need "
                        f"at least {MIN_RETURNS} (a longer slice)", ExitCode.REFUSED)  # fmt: skip
    return evaluation_statistics(returns, AGENT, len(trials.run_ids), trials.sharpes, config)


def _metric_values(values: pd.Series) -> dict[str, Any]:
    """One policy's metrics with undefined or infinite values as None, counts as int."""
    clean: dict[str, Any] = {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()}
    return {**clean, "days_stopped": int(values["days_stopped"]), "sessions": int(values["sessions"])}


def statistics_sections(evaluation: Evaluation, result: Mapping[str, Any]) -> dict[str, Any]:
    """The per-policy metrics and statistics, the comparisons, the SPA test and the deflated Sharpe of an evaluation
    document, from its statistics made JSON-ready (``to_jsonable``): shared by run and group documents, which the
    report reads alike."""
    return {
        "policies": {
            policy: {"metrics": _metric_values(values), **result["policies"][policy]}
            for policy, values in evaluation.metrics.iterrows()
        },
        "comparisons": result["comparisons"],
        "spa": result["spa"],
        "deflated_sharpe": result["deflated"],
    }


def document(run: RunRecord, evaluation: Evaluation, stats: EvaluationStatistics, trials: Trials) -> dict[str, Any]:
    """Everything one evaluation says, JSON-ready (non-finite numbers as None); the ``--json`` output.

    An evaluation overlapping the training slice has ``period.in_sample`` true and its verdict text starts with
    ``IN-SAMPLE``.
    """
    in_sample = overlaps_training(run, evaluation.start, evaluation.end)
    result: dict[str, Any] = to_jsonable(stats)  # type: ignore[assignment]
    verdict = result["verdict"]
    if in_sample:
        verdict["text"] = f"IN-SAMPLE (the run trained on {run.slice_start} .. {run.slice_end}): {verdict['text']}"
    return {
        "run_id": run.run_id,
        "symbols": list(run.symbols),
        "data_fingerprint": run.data_fingerprint,
        "period": {
            "start": evaluation.start.isoformat(),
            "end": evaluation.end.isoformat(),
            "sessions": int(evaluation.metrics["sessions"].iloc[0]),
            "in_sample": in_sample,
            "training_start": run.slice_start.isoformat() if run.slice_start else None,
            "training_end": run.slice_end.isoformat() if run.slice_end else None,
        },
        **statistics_sections(evaluation, result),
        "trials": {"n_trials": len(trials.run_ids), "run_ids": list(trials.run_ids), "sharpes": list(trials.sharpes)},
        "verdict": {**verdict, "in_sample": in_sample},
        "bootstrap": {**result["config"], "block_size": result["block_size"]},
    }


def evaluation_document(
    engine: sa.Engine, run: RunRecord, evaluation: Evaluation, config: BootstrapConfig
) -> dict[str, Any]:
    """The :func:`document` of ``run``'s evaluation, its statistics computed with the trials counted from the
    database (:func:`count_trials`, this evaluation's agent Sharpe included)."""
    sharpe = float(evaluation.metrics.loc[AGENT, "sharpe"])
    trials = count_trials(engine, run, evaluation.start, evaluation.end, sharpe)
    return document(run, evaluation, compute_statistics(evaluation, trials, config), trials)


def _row_metrics(doc: dict[str, Any], policy: str, returns: np.ndarray) -> dict[str, Any]:
    """The ``metrics`` JSON of one policy's row: metrics, intervals, PSR, its daily returns; baselines their
    comparison with the agent, the agent's row the evaluation-wide statistics."""
    entry = doc["policies"][policy]
    statistics = {k: entry[k] for k in ("sharpe", "cagr", "max_drawdown", "psr")}
    if policy == AGENT:
        statistics["evaluation"] = {k: doc[k] for k in ("period", "spa", "deflated_sharpe", "trials", "verdict",
                                                        "bootstrap")}  # fmt: skip
    elif policy in doc["comparisons"]:
        statistics["agent_vs_this"] = doc["comparisons"][policy]
    return {**entry["metrics"], "in_sample": doc["period"]["in_sample"], "statistics": statistics,
            "daily_returns": returns.tolist()}  # fmt: skip


def store_evaluation(engine: sa.Engine, run_id: str, evaluation: Evaluation, doc: dict[str, Any]) -> None:
    """Replace this run's rows for the same slice in ``tt_evaluations`` by one row per policy (one transaction)."""
    e = tables.evaluations
    now = dt.datetime.now(dt.UTC)
    rows = []
    for policy, trace in evaluation.traces.items():
        values = doc["policies"][policy]["metrics"]
        columns = {k: v for k, v in values.items() if k in e.c}
        rows.append({"run_id": run_id, "policy": policy, "slice_start": evaluation.start,
                     "slice_end": evaluation.end, "evaluated_at": now, **columns,
                     "metrics": _row_metrics(doc, policy, daily_returns(trace))})  # fmt: skip
    same_slice = (e.c.run_id == run_id) & (e.c.slice_start == evaluation.start) & (e.c.slice_end == evaluation.end)
    with engine.begin() as conn:
        conn.execute(e.delete().where(same_slice))
        conn.execute(e.insert(), rows)
