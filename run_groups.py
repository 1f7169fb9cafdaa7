"""Run groups (``tt_groups``): several runs of one configuration, over seeds and walk-forward folds.

``train_mvp.py --seeds K --folds N`` plans the members (:func:`plan_members`, folds from :mod:`walk_forward`),
records a group and trains each (fold, seed) as a normal run whose ``tt_runs`` row carries the group id, its fold
and its test sessions (:func:`run_group`, :class:`Member`); the group evaluation reads them back with
:func:`group_runs`. docs/training.md, "Seeds and walk-forward".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

import db_utils
import tt_schema as tables
from market import common_dates, require_dates
from run_records import RunRecord, new_id
from settings import ExitCode, UserError
from walk_forward import Fold, plan_folds

KINDS = ("seeds", "walk_forward")


@dataclasses.dataclass(frozen=True)
class GroupRecord:
    """One ``tt_groups`` row."""

    group_id: str
    kind: str  # seeds or walk_forward
    created_at: dt.datetime
    status: str  # running, finished, failed or interrupted
    config: dict[str, Any] | None = None  # {"settings": shared settings, "seeds": [...], "folds": [...]}
    study: str | None = None  # tune_mvp.py: the Optuna study and trial the group ran for
    trial: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> GroupRecord:
        """The record of a ``tt_groups`` row (a mapping of its columns)."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Member:
    """What a group's run records about its place in the group (``run_records.new_run``'s keyword arguments)."""

    group_id: str
    fold: int | None = None  # None: a seeds group without folds
    # the fold's test sessions; a seeds group: the held-out sessions at its creation (:func:`held_out_sessions`),
    # None only when none were stored after its slice (then judged on the tail after it)
    test_start: dt.date | None = None
    test_end: dt.date | None = None


def new_group(
    engine: sa.Engine, kind: str, config: dict[str, Any], *, study: str | None = None, trial: int | None = None
) -> str:
    """Insert a ``running`` group and return its id.

    :param config: the shared settings (secrets masked), the seeds and the fold plan; stored as JSON.
    """
    if kind not in KINDS:
        raise ValueError(f"group kind {kind!r} is not one of {KINDS}")
    now = dt.datetime.now(dt.UTC)
    group_id = new_id(now)
    with engine.begin() as conn:
        conn.execute(tables.groups.insert().values(
            group_id=group_id, kind=kind, created_at=now, status="running",
            config=json.loads(json.dumps(config, default=str)), study=study, trial=trial,
        ))  # fmt: skip
    return group_id


def set_group_status(engine: sa.Engine, group_id: str, status: str) -> None:
    """Record how the group ended: ``finished``, ``failed`` or ``interrupted``, only while it is still ``running``:
    a group another worker declared dead (:func:`abandon_trial_groups`) stays ``failed``."""
    g = tables.groups
    with engine.begin() as conn:
        conn.execute(g.update().where(g.c.group_id == group_id, g.c.status == "running").values(status=status))


def abandon_trial_groups(engine: sa.Engine, study: str, trial: int, error: str) -> list[str]:
    """Mark the still-running groups of a dead worker's trial ``failed``, and their running runs with ``error``."""
    g, r = tables.groups, tables.runs
    with engine.begin() as conn:
        ids = list(conn.execute(sa.select(g.c.group_id).where(g.c.study == study, g.c.trial == trial,
                                                              g.c.status == "running")).scalars())  # fmt: skip
        if ids:
            conn.execute(g.update().where(g.c.group_id.in_(ids)).values(status="failed"))
            conn.execute(r.update().where(r.c.group_id.in_(ids), r.c.status == "running")
                         .values(status="failed", error=error, finished_at=dt.datetime.now(dt.UTC)))  # fmt: skip
    return ids


def find_group(engine: sa.Engine, group: str) -> GroupRecord:
    """The ``tt_groups`` record of ``group``; ``latest`` is the most recently created ``finished`` group (as
    ``run_records.find_run(..., finished_only=True)``): a group still training or one that failed is not judged.

    :raise UserError: (NOT_FOUND) no such group, with what to do about it.
    """
    g = tables.groups
    latest = group == "latest"
    query = (
        sa.select(g).where(g.c.status == "finished").order_by(g.c.created_at.desc()).limit(1)
        if latest
        else sa.select(g).where(g.c.group_id == group)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    if row is not None:
        return GroupRecord.from_row(row)
    if latest:
        raise UserError("no finished run group in tt_groups: train one first (python train_mvp.py --seeds K or "
                        "--folds N)", ExitCode.NOT_FOUND)  # fmt: skip
    raise UserError(f"group {group!r} is not in tt_groups", ExitCode.NOT_FOUND)


def group_runs(engine: sa.Engine, group_id: str) -> list[RunRecord]:
    """The group's runs, ordered by fold, then seed (then start time)."""
    r = tables.runs
    query = sa.select(r).where(r.c.group_id == group_id).order_by(r.c.fold, r.c.seed, r.c.started_at)
    with engine.connect() as conn:
        return [RunRecord.from_row(row) for row in conn.execute(query).mappings()]


def plan_members(settings: Any, bars: pd.DataFrame, symbols: Sequence[str]) -> list[tuple[Fold | None, Any]]:
    """Each member run's fold (None: no folds) and settings: folds outer, seeds inner.

    :param settings: the group's ``train_mvp.TrainSettings`` (the command layer is above this one); each member
        gets ``seeds=1, folds=0``, its seed and its training slice as ``start``/``end``.
    :param bars: the group's bars (``train_mvp.training_slice``): without folds the members train on exactly
        their dates (pinned: bars ingested meanwhile move nothing); the folds are planned over the sessions common
        to all ``symbols``.
    :raise UserError: (REFUSED) too few sessions for the folds, or for the environment.
    """
    sessions = common_sessions(bars, symbols)
    one = dataclasses.replace(settings, seeds=1, folds=0)
    seeds = range(settings.seed, settings.seed + settings.seeds)
    if not settings.folds:
        require_dates(len(sessions), len(symbols), settings)
        first, last = (pd.Timestamp(bars["date"].agg(f)).date() for f in ("min", "max"))
        return [(None, dataclasses.replace(one, seed=s, start=first, end=last)) for s in seeds]
    least = settings.first_decision + 2  # market.require_dates: a first decision plus one step
    folds = plan_folds(sessions, settings.folds, settings.test_sessions, settings.embargo, settings.window,
                       settings.train_sessions, min_train_sessions=least)  # fmt: skip
    return [(f, dataclasses.replace(one, seed=s, start=f.train_start, end=f.train_end)) for f in folds for s in seeds]


def common_sessions(bars: pd.DataFrame, symbols: Sequence[str]) -> list[dt.date]:
    """The dates on which every one of ``symbols`` has a bar, in order."""
    return [pd.Timestamp(d).date() for d in common_dates(bars, len(symbols))]


def held_out_sessions(engine: sa.Engine, bars: pd.DataFrame, symbols: Sequence[str]) -> tuple[dt.date, dt.date] | None:
    """A seeds group's test sessions, pinned at its creation: the first to the last session common to all
    ``symbols`` stored after the training slice ``bars``; None when there is none.

    Recorded in each member's ``tt_runs.test_start/test_end``, so bars ingested later do not change what the
    group evaluation judges.
    """
    after = pd.Timestamp(bars["date"].max()).date() + dt.timedelta(days=1)
    later = db_utils.load_training_bars(engine, symbols, after, None, include_flagged=True).bars
    sessions = common_sessions(later, symbols)
    return (sessions[0], sessions[-1]) if sessions else None


def run_group(
    engine: sa.Engine,
    record: dict[str, Any],
    members: Sequence[tuple[Fold | None, Any]],
    train: Callable[[Any, Member], int],
    study: str | None = None,
    trial: int | None = None,
    test: tuple[dt.date, dt.date] | None = None,
) -> tuple[str, int]:
    """Record a group, train its members one after another, record how it ended; returns its id and exit code.

    :param record: the group's settings, secrets masked (``training_run.settings_record``), recorded beside the
        seeds and the fold plan.
    :param members: (fold or None, the run's settings) per run, folds outer and seeds inner.
    :param train: trains one run (``train_mvp.train``) and returns its exit code: OK, PARTIAL (rows went to the
        step-log fallback file) or INTERRUPTED.
    :param test: a seeds group's test sessions (:func:`held_out_sessions`), recorded in each member's row.
    :return: the group id, and OK or PARTIAL when a member's was.
    :raise KeyboardInterrupt: a member was interrupted (Ctrl-C, SIGTERM): the group is marked ``interrupted``;
        an exception that failed a member marks the group ``failed`` and is raised again.
    """
    folds = list(dict.fromkeys(fold for fold, _ in members if fold is not None))
    seeds = list(dict.fromkeys(run.seed for _, run in members))
    config = {"settings": record, "seeds": seeds, "folds": [dataclasses.asdict(f) for f in folds]}
    group_id = new_group(engine, "walk_forward" if folds else "seeds", config, study=study, trial=trial)
    n_folds, n_seeds = max(len(folds), 1), len(seeds)
    status, code, trained = "failed", ExitCode.OK, 0
    try:
        for i, (fold, settings) in enumerate(members):
            where = f"fold {fold.index + 1}/{n_folds}, " if fold is not None else ""
            member = Member(group_id, None, *(test or (None, None)))
            if fold is not None:
                member = Member(group_id, fold.index, fold.test_start, fold.test_end)
            shown = f", test {member.test_start} .. {member.test_end}" if member.test_start else ""
            print(f"group {group_id}: {where}seed {i % n_seeds + 1}/{n_seeds} (--seed {settings.seed}), training "
                  f"{settings.start} .. {settings.end}{shown}")  # fmt: skip
            done = train(settings, member)
            if done == ExitCode.INTERRUPTED:
                raise KeyboardInterrupt
            code, trained = max(code, ExitCode(done)), trained + 1
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        set_group_status(engine, group_id, status)
        print(f"group {group_id} {status}: {trained} of {len(members)} runs trained")
    return group_id, int(code)
