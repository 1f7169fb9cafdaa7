"""A prediction's data gate and records: the freshness and finiteness checks on the stored bars, the ``tt_signals``
rows (target weights per run, as-of close and symbol), the ``tt_shadow`` forward record (predict_mvp.py;
docs/predict.md) and its evaluation beside the baselines over the same sessions (``evaluate_mvp.py --shadow``).

A signal is refused rather than computed on stale or incomplete data: every symbol's latest stored bar must be the
exchange calendar's last completed session, and its features finite there (the observer turns NaN into 0, so a
gap would otherwise reach the policy silently).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

import db_utils
import evaluation_records as records
import tt_schema as tables
from coverage_check import get_calendar
from evaluation_stats import BootstrapConfig
from features import compute_basic_features, vol_column
from metrics import Evaluation
from policy_rollout import baseline_policies, evaluate_policies, run_market
from run_records import RunRecord
from settings import ExitCode, UserError
from tensortrade_risk_module import EnvConfig


def last_session(as_of: dt.date | None, calendar: str, now: pd.Timestamp | None = None) -> dt.date:
    """The session a prediction is for: the last session of ``calendar`` on or before ``as_of``, or (``as_of``
    None) the last session whose close has passed at ``now`` (default: the current time)."""
    if as_of is not None:
        try:
            cal = get_calendar(calendar, as_of - dt.timedelta(days=14))
            session = cal.date_to_session(pd.Timestamp(as_of), direction="previous")
        except ValueError:  # exchange_calendars knows sessions from ~20 years back to ~1 year ahead
            session = None
        if session is None or not cal.is_session(session):
            raise UserError(f"--as-of {as_of}: outside the sessions the {calendar} calendar knows", ExitCode.USAGE)
        return session.date()
    now = now or pd.Timestamp.now(tz="UTC")
    cal = get_calendar(calendar, now.date() - dt.timedelta(days=14))
    sessions = cal.sessions_in_range(pd.Timestamp(now.date() - dt.timedelta(days=14)), pd.Timestamp(now.date()))
    return next(s.date() for s in reversed(sessions) if cal.session_close(s) <= now)


def require_fresh(bars: pd.DataFrame, symbols: Sequence[str], session: dt.date) -> None:
    """Refuse unless every symbol has a bar on ``session`` (bars are read up to ``session``).

    :raise UserError: (REFUSED) naming each symbol without bars or whose latest bar is older, with its date.
    """
    last = pd.to_datetime(bars["date"]).dt.date.groupby(bars["symbol"]).max() if len(bars) else pd.Series()
    problems = [f"{s}: no stored bar" if s not in last.index else f"{s}: latest bar {last[s]}"
                for s in symbols if s not in last.index or last[s] != session]  # fmt: skip
    if problems:
        raise UserError(f"stale or incomplete data for the session of {session}: {'; '.join(problems)} (run the "
                        "ingest first; nothing was written)", ExitCode.REFUSED)  # fmt: skip


def require_finite_features(bars: pd.DataFrame, vol_windows: Sequence[int], session: dt.date) -> None:
    """Refuse when a symbol's price, return or volatility at ``session`` is not finite.

    :raise UserError: (REFUSED) naming the symbols, the features and the date.
    """
    features = compute_basic_features(bars, vol_windows)
    today = features[pd.to_datetime(features["date"]).dt.date == session].set_index("symbol")
    columns = ["price", "log_ret", *(vol_column(w) for w in vol_windows)]
    values = today[columns].to_numpy(dtype="float64")
    bad = [f"{symbol} {', '.join(c for c, ok in zip(columns, row, strict=True) if not ok)}"
           for symbol, row in zip(today.index, np.isfinite(values), strict=True) if not row.all()]  # fmt: skip
    if bad:
        raise UserError(f"features not finite on {session}: {'; '.join(bad)} (a bad bar, or too little history; "
                        "nothing was written)", ExitCode.REFUSED)  # fmt: skip


def read_signals(engine: sa.Engine, run_id: str) -> pd.DataFrame:
    """The run's stored target weights: index ``as_of`` (dates), one column per symbol."""
    s = tables.signals
    query = sa.select(s.c.as_of, s.c.symbol, s.c.target_weight).where(s.c.run_id == run_id)
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(query).all(), columns=["as_of", "symbol", "target_weight"])
    rows["as_of"] = pd.to_datetime(rows["as_of"]).dt.date
    return rows.pivot(index="as_of", columns="symbol", values="target_weight").sort_index()


def read_shadow(engine: sa.Engine, run_id: str) -> pd.DataFrame:
    """The run's ``tt_shadow`` rows by date (index ``date``)."""
    s = tables.shadow
    with engine.connect() as conn:
        rows = conn.execute(sa.select(s).where(s.c.run_id == run_id).order_by(s.c.date)).mappings().all()
    frame = pd.DataFrame(rows, columns=[c.name for c in s.columns])
    frame["date"] = pd.to_datetime(frame["date"]).dt.date
    return frame.set_index("date")


def write_day(engine: sa.Engine, signal_rows: list[dict[str, Any]], shadow_rows: list[dict[str, Any]]) -> None:
    """Upsert the day's signals and the new shadow days in one transaction (all or nothing)."""
    with engine.begin() as conn:
        if signal_rows:
            db_utils.upsert_rows(conn, tables.signals, signal_rows, ["run_id", "as_of", "symbol"])
        if shadow_rows:
            db_utils.upsert_rows(conn, tables.shadow, shadow_rows, ["run_id", "date"])


def shadow_trace(shadow: pd.DataFrame, anchor: dt.date, initial_cash: float) -> pd.DataFrame:
    """The shadow record as an evaluation trace (``policy_rollout.rollout``'s columns): row 0 is the anchor close,
    all cash, before the first signal was traded."""
    index = pd.DatetimeIndex([pd.Timestamp(anchor), *pd.to_datetime(list(shadow.index))], name="date")
    trace = pd.DataFrame({
        "net_worth": [initial_cash, *shadow["net_worth"]],
        "cash": np.nan,
        "turnover": [0.0, *shadow["turnover"]],
        "fees": [0.0, *shadow["fees"]],
    }, index=index)  # fmt: skip
    trace["gross_exposure"] = np.nan
    trace["stopped"] = False
    return trace


def evaluate_shadow(engine: sa.Engine, run: RunRecord, bootstrap_reps: int) -> tuple[dict[str, Any], Evaluation]:
    """The run's shadow record (as the agent) beside the baselines run over the same sessions, from the first
    signal's close to the last shadow day, with the evaluation's statistics; nothing is stored.

    :return: the evaluation's document (``evaluation_records.document``, plus ``"shadow": true``) and the
        evaluation.
    :raise UserError: NOT_FOUND when the run has no shadow record yet, REFUSED when it holds fewer days than the
        statistics need (``evaluation_records.MIN_RETURNS``) or the data do not fit (``policy_rollout.run_market``).
    """
    shadow, need = read_shadow(engine, run.run_id), records.MIN_RETURNS
    wait = (f"the statistics need at least {need}: run predict_mvp.py again once {need} sessions have closed after "
            "the run's first signal (missed sessions are filled in)")  # fmt: skip
    if shadow.empty:
        raise UserError(f"run {run.run_id} has no shadow record yet (0 shadow days); {wait}", ExitCode.NOT_FOUND)
    if len(shadow) < need:
        raise UserError(f"run {run.run_id} has {len(shadow)} shadow day(s) since its first signal; {wait}",
                        ExitCode.REFUSED)  # fmt: skip
    anchor, end = read_signals(engine, run.run_id).index[0], shadow.index[-1]
    market, env_settings = run_market(engine, run, anchor, end)
    config = EnvConfig(**env_settings)
    baselines = evaluate_policies(market, env_settings, baseline_policies(len(market.symbols)))
    traces = {records.AGENT: shadow_trace(shadow, anchor, config.initial_cash), **baselines.traces}
    weights = {records.AGENT: pd.DataFrame(index=traces[records.AGENT].index), **baselines.weights}
    evaluation = Evaluation.from_traces(traces, weights)
    document = records.evaluation_document(engine, run, evaluation, BootstrapConfig(reps=bootstrap_reps))
    return {**document, "shadow": True}, evaluation
