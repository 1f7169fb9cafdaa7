"""train_mvp.py --seeds / --folds: groups of runs in tt_groups, walk-forward folds that never train on their test.

The issue's test: no tt_steps row of a fold's run is dated at or after its test start minus the embargo (sessions
counted from the bars stored for the symbols), while the steps do reach the last session before that cutoff.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

import run_groups
import run_records
import train_mvp
import tt_schema as tables
from conftest import TRAINING_SYMBOLS, engine_with_bars, read_table, run_train
from settings import ExitCode, UserError, run_cli
from step_writes import write_item

# Tiny PPO; whole-slice episodes from the first decision (no random start), so one episode steps through every
# training session up to the fold's last one: a leak past the cutoff would show in tt_steps.
TINY = ["--symbols", ",".join(TRAINING_SYMBOLS), "--n-steps", "64", "--batch-size", "32", "--n-epochs", "1",
        "--n-envs", "1", "--seed", "7"]  # fmt: skip
WHOLE_SLICE = ["--episodes", "1", "--no-random-start", "--episode-length", "none"]
# the sample's SPY/TLT 2009-06 .. 2012-12 hold ~900 common sessions: 2 x 100 test sessions leave ~700 to train on
FOLDS = ["--folds", "2", "--test-sessions", "100", "--embargo", "5"]


@pytest.fixture
def lite(sqlite_url: str, sample_bars: pd.DataFrame) -> Iterator[sa.Engine]:
    """The sample bars in SQLite (PostgreSQL: the ``stored`` fixture runs on both)."""
    engine = engine_with_bars(sqlite_url, sample_bars)
    yield engine
    engine.dispose()


def _sessions(engine: sa.Engine) -> list[dt.date]:
    """The stored sessions common to the training symbols."""
    p = tables.prices
    query = (
        sa.select(p.c.date).where(p.c.symbol.in_(TRAINING_SYMBOLS)).group_by(p.c.date)
        .having(sa.func.count() == len(TRAINING_SYMBOLS)).order_by(p.c.date)
    )  # fmt: skip
    with engine.connect() as conn:
        return [pd.Timestamp(d).date() for d in conn.execute(query).scalars()]


def test_seeds_make_one_group_of_runs_on_the_plain_slice(lite: sa.Engine, tmp_path: Path, capsys: Any) -> None:
    assert run_train(lite, tmp_path, *TINY, "--timesteps", "64", "--seeds", "2") == 0
    group = run_groups.find_group(lite, "latest")
    config = group.config or {}
    assert (group.kind, group.status, config["seeds"], config["folds"]) == ("seeds", "finished", [7, 8], [])
    assert config["settings"]["seeds"] == 2 and group.study is None
    runs = run_groups.group_runs(lite, group.group_id)
    assert [r.seed for r in runs] == [7, 8] and {r.status for r in runs} == {"finished"}
    # the held-out tail, pinned at creation: the session after the slice .. the last one stored for both symbols
    sessions, slice_end = _sessions(lite), runs[0].slice_end
    assert slice_end is not None
    held_out = (sessions[sessions.index(slice_end) + 1], sessions[-1])
    assert {(r.fold, r.test_start, r.test_end) for r in runs} == {(None, *held_out)}
    assert (runs[0].config or {})["train"]["seeds"] == 1  # each member is a plain run of its own
    # the slice of a plain run (the last 20% held out), the same for every seed
    assert run_train(lite, tmp_path, *TINY, "--timesteps", "64") == 0
    plain = run_records.find_run(lite, "latest")
    assert plain.group_id is None and len(read_table(lite, tables.groups)) == 1
    assert {(r.slice_start, r.slice_end, r.data_fingerprint) for r in runs} == {
        (plain.slice_start, plain.slice_end, plain.data_fingerprint)
    }
    # and the member with the plain run's seed trained exactly like it
    rewards = {r: run_records.read_episodes(lite, r)["reward_sum"].tolist() for r in (plain.run_id, runs[0].run_id)}
    assert rewards[plain.run_id] == rewards[runs[0].run_id]
    url = lite.url.render_as_string(hide_password=False)
    assert train_mvp.main(["--show-run", runs[1].run_id, "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert f"seed 8, checkpoints {runs[1].checkpoint_dir}, group {group.group_id}\n" in out
    assert f"group {group.group_id}: seed 2/2 (--seed 8), training {runs[1].slice_start}" in out
    assert f"{runs[1].slice_end}, test {held_out[0]} .. {held_out[1]}\n" in out
    assert f"group {group.group_id} finished: 2 of 2 runs trained" in out


def test_walk_forward_never_trains_on_or_after_test_start_minus_embargo(
    stored: sa.Engine, tmp_path: Path, capsys: Any
) -> None:
    assert run_train(stored, tmp_path, *TINY, *WHOLE_SLICE, *FOLDS) == 0
    group = run_groups.find_group(stored, "latest")
    config = group.config or {}
    assert (group.kind, group.status, config["seeds"]) == ("walk_forward", "finished", [7])
    runs = run_groups.group_runs(stored, group.group_id)
    sessions = _sessions(stored)
    assert [r.fold for r in runs] == [0, 1] and runs[-1].test_end == sessions[-1]
    assert [r.test_start for r in runs] == [sessions[-200], sessions[-100]]
    assert [f["test_start"] for f in config["folds"]] == [str(r.test_start) for r in runs]
    s, r = tables.steps, tables.runs
    query = sa.select(r.c.run_id, sa.func.max(s.c.date), sa.func.count()).join(s, s.c.run_id == r.c.run_id)
    with stored.connect() as conn:
        last_step = {row[0]: (pd.Timestamp(row[1]).date(), row[2]) for row in conn.execute(query.group_by(r.c.run_id))}
    for run in runs:
        assert run.test_start is not None
        cutoff = sessions[sessions.index(run.test_start) - 5]
        latest, n_steps = last_step[run.run_id]
        assert latest < cutoff and run.slice_end is not None and run.slice_end < cutoff
        # the steps did reach the last session before the cutoff: the check above could have failed
        assert latest == run.slice_end == sessions[sessions.index(cutoff) - 1] and n_steps == run.total_steps
        assert run.slice_start == sessions[0]  # expanding window
    url = stored.url.render_as_string(hide_password=False)
    assert train_mvp.main(["--show-run", runs[1].run_id, "--database-url", url, "--last", "0"]) == 0
    assert f"group {group.group_id} fold 1 (test {runs[1].test_start} .. {sessions[-1]})" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--folds", "4", "--test-sessions", "252"], ExitCode.REFUSED, "--folds 4 x --test-sessions 252"),
        (["--folds", "2", "--window", "rolling", "--train-sessions", "800"], ExitCode.REFUSED, "--train-sessions"),
        (["--folds", "2", "--symbols", "SPY,ZZZZ"], ExitCode.REFUSED, "ZZZZ"),
        (["--seeds", "2", "--start", "2010-01-01", "--end", "2010-03-31"], ExitCode.REFUSED, "need at least"),
        (["--seeds", "2", "--resume", str(Path("nowhere") / "final.zip")], ExitCode.USAGE, "--resume"),
        (["--seeds", "0"], ExitCode.USAGE, "--seeds"),
        (["--folds", "-1"], ExitCode.USAGE, "--folds"),
        (["--folds", "1", "--test-sessions", "1"], ExitCode.USAGE, "--test-sessions"),
        (["--folds", "1", "--embargo", "-2"], ExitCode.USAGE, "--embargo"),
        (["--folds", "1", "--window", "sliding"], ExitCode.USAGE, "sliding"),
    ],
)
def test_refusals_write_nothing(lite: sa.Engine, tmp_path: Path, extra: list[str], code: ExitCode, needle: str) -> None:
    with pytest.raises((UserError, SystemExit)) as err:  # argparse rejects a --window choice itself
        run_train(lite, tmp_path, *TINY, "--timesteps", "64", *extra)
    error = err.value
    if isinstance(error, UserError):
        assert error.exit_code == code and needle in str(error)
    else:
        assert isinstance(error, SystemExit) and error.code == code
    assert read_table(lite, tables.runs).empty and read_table(lite, tables.groups).empty


def _fake_train(outcomes: list[Any], calls: list[tuple[Any, run_groups.Member]]) -> Any:
    """A stand-in for train_mvp.train: records its arguments, returns (or raises) the next outcome."""

    def train(engine: sa.Engine, settings: Any, member: run_groups.Member) -> int:
        calls.append((settings, member))
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return int(outcome)

    return train


def test_rolling_members_and_how_a_group_ends(lite: sa.Engine, tmp_path: Path, monkeypatch: Any) -> None:
    calls: list[tuple[Any, run_groups.Member]] = []
    args = [*TINY, *FOLDS, "--seeds", "2", "--window", "rolling", "--train-sessions", "300", "--embargo", "3"]
    monkeypatch.setattr(train_mvp, "train", _fake_train([0, 3, 0, 0], calls))
    assert run_train(lite, tmp_path, *args) == ExitCode.PARTIAL  # a member's rows went to its fallback file
    sessions = _sessions(lite)
    assert [(s.seed, m.fold) for s, m in calls] == [(7, 0), (8, 0), (7, 1), (8, 1)]
    for settings, member in calls:
        assert (settings.seeds, settings.folds) == (1, 0)
        assert member.test_start is not None
        first, last, test = (sessions.index(d) for d in (settings.start, settings.end, member.test_start))
        assert (last - first + 1, test - last - 1) == (300, 3)  # a 300-session window, then the embargo
    assert run_groups.find_group(lite, "latest").status == "finished"

    calls.clear()
    monkeypatch.setattr(train_mvp, "train", _fake_train([0, ExitCode.INTERRUPTED], calls))
    assert run_cli(lambda argv: run_train(lite, tmp_path, *args)) == ExitCode.INTERRUPTED
    assert len(calls) == 2
    interrupted = read_table(lite, tables.groups).sort_values("created_at").iloc[-1]
    assert interrupted["status"] == "interrupted"
    assert run_groups.find_group(lite, "latest").status == "finished"  # latest: the newest finished group

    monkeypatch.setattr(train_mvp, "train", _fake_train([RuntimeError("boom")], calls))
    with pytest.raises(RuntimeError, match="boom"):
        train_mvp.train_group(lite, train_mvp.TrainSettings(folds=2, test_sessions=100, symbols=TRAINING_SYMBOLS,
                              checkpoint_dir=tmp_path, log_dir=tmp_path), study="s", trial=3)  # fmt: skip
    groups = read_table(lite, tables.groups).sort_values("created_at")
    assert len(groups) == 3 and tuple(groups.iloc[-1][["status", "study", "trial"]]) == ("failed", "s", 3)
    with lite.begin() as conn:  # nothing finished: 'latest' finds no group
        conn.execute(tables.groups.update().values(status="failed"))
    with pytest.raises(UserError, match="no finished run group") as err:
        run_groups.find_group(lite, "latest")
    assert err.value.exit_code == ExitCode.NOT_FOUND
    with pytest.raises(UserError, match="not in tt_groups") as err:
        run_groups.find_group(lite, "nope")
    assert err.value.exit_code == ExitCode.NOT_FOUND


def test_a_group_declared_dead_stays_failed(lite: sa.Engine) -> None:
    """A live worker's group and run that tune_mvp declared dead are not overwritten when the worker finishes."""
    group_id = run_groups.new_group(lite, "seeds", {}, study="s", trial=1)
    with lite.begin() as conn:
        conn.execute(tables.runs.insert().values(run_id="r1", status="running", started_at=dt.datetime.now(dt.UTC),
                                                 group_id=group_id))  # fmt: skip
    assert run_groups.abandon_trial_groups(lite, "s", 1, "worker died") == [group_id]
    run_groups.set_group_status(lite, group_id, "finished")  # the worker was alive after all, and ends its group
    write_item(lite, {"kind": "run", "run_id": "r1", "values": {"status": "finished"}})  # and its run
    assert run_groups.find_group(lite, group_id).status == "failed"
    assert tuple(read_table(lite, tables.runs).iloc[0][["status", "error"]]) == ("failed", "worker died")
    run_records.mark_resumed(lite, "r1")  # a resumed run is set back to running first: then its end is recorded
    write_item(lite, {"kind": "run", "run_id": "r1", "values": {"status": "finished"}})
    assert read_table(lite, tables.runs).iloc[0]["status"] == "finished"
