"""tune_mvp.py: the search-space file, the study budget, and workers sharing one Optuna study on PostgreSQL.

The sweep test runs three ``tune_mvp.py`` worker processes on one study in the test PostgreSQL with tiny budgets,
kills one with SIGKILL while it trains, and checks that its trial was failed by heartbeat and re-queued, that
another worker finished it with the same settings, that no run of the dead worker is left ``running``, that every
complete trial's group holds exactly seeds x folds runs, and that the best trial's stored settings reproduce its
objective.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy as sa

import bar_store
import db_utils
import group_evaluation
import run_groups
import search_space
import train_mvp
import tt_schema as tables
import tune_mvp
from conftest import REPO, engine_with_bars
from evaluation_records import Trials
from evaluation_stats import BootstrapConfig
from settings import ExitCode, UserError, resolve, run_cli

# the heartbeat and retry API is experimental in Optuna (tune_mvp.py silences the same warning)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

# --------------------------------------------------------------------------------------------- space files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


GOOD = """
fixed:
  timesteps: 512
  n-envs: 4
  seeds: 2
  folds: 2
  net_arch: 32,32
space:
  learning_rate: {type: float, low: 1e-5, high: 1.0e-3, log: true}
  n_epochs: {type: int, low: 1, high: 3}
  gamma: {type: float, low: 0.5, high: 0.99}
  norm_reward: {type: categorical, choices: [true, false]}
"""


def test_a_good_space_file_is_read_with_its_types(tmp_path: Path) -> None:
    space = tune_mvp.load_space(write(tmp_path, GOOD))
    assert space.fixed == {"timesteps": 512, "n_envs": 4, "seeds": 2, "folds": 2, "net_arch": (32, 32)}
    assert space.dimensions == (
        search_space.Dimension("learning_rate", "float", 1e-5, 1e-3, log=True),  # 1e-5 is text to YAML: parsed
        search_space.Dimension("n_epochs", "int", 1, 3),
        search_space.Dimension("gamma", "float", 0.5, 0.99),
        search_space.Dimension("norm_reward", "categorical", choices=(True, False)),
    )
    worker = resolve(tune_mvp.TuneSettings, {"study": "s"}, environ={}, dotenv={})[0]
    end = dt.date(2012, 6, 29)  # the study's
    settings = tune_mvp.trial_settings(space, {"learning_rate": 2e-4, "n_epochs": 2, "gamma": 0.9}, worker, end)
    assert (settings.timesteps, settings.n_epochs, settings.net_arch, settings.gamma) == (512, 2, (32, 32), 0.9)
    assert settings.end == end
    assert settings.checkpoint_dir == worker.checkpoint_dir  # the worker's own folder, not the space file's


NO_FOLDS = "fixed.folds: required, at least 1: each trial is judged out of sample on its walk-forward folds"
BAD = [
    ("space: {}\n", "space: nothing to sample; name at least one setting under space:"),
    ("fixd: {}\nspace: {gamma: {type: float, low: 0.5, high: 0.9}}\n",
     "unknown top-level key(s) fixd; expected fixed and space"),
    ("space: {gama: {type: float, low: 0.5, high: 0.9}}\n", "space.gama: not a setting of this command"),
    ("fixed: {database_url: 'postgresql://u:pw@h/db'}\nspace: {gamma: {type: float, low: 0.5, high: 0.9}}\n",
     "fixed.database_url: each worker's own setting: give it to tune_mvp.py"),
    ("space: {seed: {type: int, low: 0, high: 9}}\n",
     "space.seed: sampling the seed selects luck, not a configuration; fix it and use seeds: K"),
    ("space: {folds: {type: int, low: 1, high: 3}}\n",
     "space.folds: changes the data every trial is judged on; fix it so trials stay comparable"),
    ("fixed: {gamma: 0.9}\nspace: {gamma: {type: float, low: 0.5, high: 0.9}}\n",
     "gamma: both fixed and sampled; keep one"),
    ("fixed: {timesteps: 2.5}\nspace: {gamma: {type: float, low: 0.5, high: 0.9}}\n",
     "setting fixed.timesteps: expected a whole number, got float 2.5"),
    ("fixed: {n_envs: 0}\nspace: {gamma: {type: float, low: 0.5, high: 0.9}}\n",
     "fixed: setting --n-envs: 0 must be >= 1"),
    ("space: {gamma: {type: float, low: 0.9, high: 0.5}}\n", "space.gamma: low 0.9 must be below high 0.5"),
    ("space: {gamma: {type: float, low: 0.5, high: 1.5}}\n",
     "space.gamma = 1.5: setting --gamma: 1.5 must be in (0, 1]"),
    ("space: {gamma: {type: float, low: 0.5}}\n", "setting space.gamma.high: a value is required"),
    ("space: {gamma: {type: float, low: 0, high: 0.9, log: true}}\n",
     "space.gamma: a log scale needs low > 0, got 0.0"),
    ("space: {gamma: {type: float, lo: 0.5, high: 0.9}}\n",
     "space.gamma: unknown key(s) lo for type float; expected high, log, low, type"),
    ("space: {gamma: {type: real, low: 0.5, high: 0.9}}\n",
     "space.gamma: type must be one of float, int, categorical, got 'real'"),
    ("space: {n_epochs: {type: float, low: 1, high: 3}}\n",
     "space.n_epochs: type float does not fit this setting; use int or categorical"),
    ("space: {n_epochs: {type: int, low: 1, high: 2.5}}\n",
     "setting space.n_epochs.high: expected a whole number, got float 2.5"),
    ("space: {net_arch: {type: categorical, choices: [[64, 64]]}}\n",
     'space.net_arch: choices must be distinct numbers, text, true/false or null (write a list setting as text: '
     '"64,64")'),
    ("space: {net_arch: {type: categorical, choices: []}}\n", "space.net_arch: choices must be a non-empty list"),
    ("space: {vol_mode: {type: categorical, choices: [per_asset, weekly]}}\n",
     "space.vol_mode = 'weekly': setting --vol-mode: 'weekly' is not one of per_asset, portfolio"),
    ("space: [gamma]\n", "space: expected a mapping of setting: value, got list"),
    ("space: {seeds: {type: int, low: 1, high: 3}}\n",
     "space.seeds: the objective aggregates over the seeds; fix seeds: K so every trial aggregates as many"),
    ("fixed: {backend: native}\nspace: {gamma: {type: float, low: 0.5, high: 0.9}}\n",
     "fixed.backend: sweeps train the native environment only (a group evaluation refuses TensorTrade runs)"),
    ("space: {gamma: {type: float, low: 0.5, high: 0.9}}\n", NO_FOLDS),
    ("fixed: {folds: 0}\nspace: {gamma: {type: float, low: 0.5, high: 0.9}}\n", NO_FOLDS),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD)
def test_a_bad_space_file_is_one_line_naming_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as caught:
        tune_mvp.load_space(path)
    assert str(caught.value) == f"space file {path}: {message}"
    assert caught.value.exit_code == ExitCode.USAGE


def test_the_command_refuses_a_missing_study_or_space_with_usage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv in (["--config", str(write(tmp_path, GOOD))], ["--study", "s"], ["--heartbeat-interval", "5",
                                                                             "--grace-period", "5"]):  # fmt: skip
        assert run_cli(tune_mvp.main, argv) == ExitCode.USAGE
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: --study NAME is required: workers with the same study name and database share the study",
        "error: --config SPACE.yaml is required: the settings to sample (docs/tuning.md)",
        "error: setting --grace-period: 5 must be longer than --heartbeat-interval (5)",
    ]


# --------------------------------------------------------------------------------------------- the budget


def frozen(
    number: int, state: optuna.trial.TrialState, error: str | None = None, retries: tuple[int, ...] = ()
) -> optuna.trial.FrozenTrial:
    """A trial as the storage holds it: ``error`` set by the objective, ``retries``: the trials it re-runs."""
    trial = optuna.create_trial(
        state=state,
        value=0.0 if state == optuna.trial.TrialState.COMPLETE else None,
        user_attrs={} if error is None else {"error": error},
        system_attrs={"failed_trial": retries[0], "retry_history": list(retries)} if retries else {},
    )
    trial.number = number
    return trial


S = optuna.trial.TrialState
NEXT = [
    ([], 2, "run"),
    ([frozen(0, S.COMPLETE)], 2, "run"),
    ([frozen(0, S.COMPLETE), frozen(1, S.RUNNING)], 2, "wait"),  # a running trial may die and come back
    ([frozen(0, S.COMPLETE), frozen(1, S.COMPLETE)], 2, "done"),
    ([frozen(0, S.COMPLETE), frozen(1, S.FAIL)], 2, "done"),  # a NaN objective used its trial
    ([frozen(0, S.COMPLETE), frozen(1, S.FAIL, error="UserError: x")], 2, "run"),  # an aborted trial did not
    ([frozen(0, S.FAIL), frozen(1, S.WAITING, retries=(0,))], 1, "run"),  # the re-queued trial runs
    ([frozen(0, S.FAIL), frozen(1, S.COMPLETE, retries=(0,))], 1, "done"),  # the retry counts, not both
]


@pytest.mark.parametrize(("trials", "n_trials", "step"), NEXT)
def test_workers_run_until_the_study_budget_is_spent(trials: list, n_trials: int, step: str) -> None:
    assert tune_mvp.next_step(trials, n_trials) == step


# --------------------------------------------------------------------------------------------- workers

# Two symbols, 2011-2012: two walk-forward folds of 40 sessions; 512 env steps per run (a few seconds per trial).
SWEEP_SPACE = """
fixed:
  symbols: SPY,TLT
  start: 2011-01-03
  timesteps: 512
  n_envs: 4
  n_steps: 64
  batch_size: 64
  n_epochs: 1
  episode_length: 64
  seeds: 2
  folds: 2
  test_sessions: 40
  embargo: 5
space:
  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  gamma: {type: float, low: 0.5, high: 0.99}
"""
SEEDS, FOLDS, N_TRIALS = 2, 2, 4


@pytest.fixture
def sweep_db(pg_url: str, sample_bars: pd.DataFrame) -> Iterator[sa.Engine]:
    engine = engine_with_bars(pg_url, sample_bars)
    yield engine
    engine.dispose()


def tune_args(url: str, study: str, space: Path, tmp_path: Path, n_trials: int) -> list[str]:
    """tune_mvp.py's flags for a test: its database and folders, 1 s heartbeats, a 3 s grace period (a loaded
    2-core machine may delay a live worker's heartbeat by a second or two)."""
    folders = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--log-dir", str(tmp_path / "log")]
    timing = ["--heartbeat-interval", "1", "--grace-period", "3", "--bootstrap-reps", "100"]
    return ["--study", study, "--n-trials", str(n_trials), "--config", str(space), "--database-url", url, *folders,
            *timing]  # fmt: skip


def worker(url: str, study: str, space: Path, tmp_path: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """A tune_mvp.py worker process, its output in ``tmp_path/name.log``."""
    log = tmp_path / f"{name}.log"
    cmd = [sys.executable, str(REPO / "tune_mvp.py"), *tune_args(url, study, space, tmp_path, N_TRIALS)]
    with log.open("w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path), log


def training_trial(engine: sa.Engine, study: str) -> int | None:
    """The number of a trial of ``study`` whose group is training a run right now, if any."""
    g, r = tables.groups, tables.runs
    query = (
        sa.select(g.c.trial)
        .join(r, r.c.group_id == g.c.group_id)
        .where(g.c.study == study, g.c.status == "running", r.c.status == "running")
    )
    with engine.connect() as conn:
        return conn.execute(query.limit(1)).scalar()


def kill_a_worker_mid_trial(engine: sa.Engine, study: optuna.Study, procs: dict[int, subprocess.Popen]) -> int:
    """SIGKILL the worker of the first trial seen training a run; returns that trial's number."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        number = training_trial(engine, study.study_name)
        if number is not None:
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
            if pid in procs and procs[pid].poll() is None:
                os.kill(pid, signal.SIGKILL)
                return number
        time.sleep(0.05)
    raise AssertionError("no worker started training within 60 s")


group_runs_of = run_groups.group_runs  # RunRecords, where group_runs below is a frame


def group_runs(engine: sa.Engine, group_id: str) -> pd.DataFrame:
    r = tables.runs
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(sa.select(r).where(r.c.group_id == group_id)).mappings().all())


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_share_a_study_and_a_dead_workers_trial_is_finished_by_another(
    sweep_db: sa.Engine, pg_url: str, tmp_path: Path
) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    space = tmp_path / "space.yaml"
    space.write_text(SWEEP_SPACE)
    started = [worker(pg_url, name, space, tmp_path, f"w{i}") for i in range(3)]
    procs = {p.pid: p for p, _ in started}
    storage = optuna.storages.RDBStorage(sweep_db.url.render_as_string(hide_password=False))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the first worker to get there creates the study
        if any(s.study_name == name for s in optuna.get_all_study_summaries(storage)):
            break
        time.sleep(0.1)
    study = optuna.load_study(study_name=name, storage=storage)
    killed = kill_a_worker_mid_trial(sweep_db, study, procs)
    codes = {pid: p.wait(timeout=120) for pid, p in procs.items()}
    logs = "\n".join(f"--- {log.name}\n{log.read_text()}" for _, log in started)
    assert sorted(codes.values()) == [-signal.SIGKILL, 0, 0], logs
    assert study.user_attrs["end"] == "2012-12-31"  # the last session of SPY and TLT in the sample

    trials = study.get_trials()
    dead = trials[killed]
    assert dead.state == S.FAIL, logs
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retry) == 1 and retry[0].state == S.COMPLETE and retry[0].params == dead.params, logs
    assert retry[0].user_attrs["worker"] != dead.user_attrs["worker"]
    complete = [t for t in trials if t.state == S.COMPLETE]
    assert len(complete) == N_TRIALS
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both live workers ran trials of the one study

    # the dead worker's group and runs are failed, not left running; every complete trial has a full group
    g = tables.groups
    with sweep_db.connect() as conn:
        groups = pd.DataFrame(conn.execute(sa.select(g).where(g.c.study == name)).mappings().all())
    dead_group = groups[groups["trial"] == killed]
    assert list(dead_group["status"]) == ["failed"]
    dead_runs = group_runs(sweep_db, dead_group["group_id"].iloc[0])
    assert "running" not in set(dead_runs["status"])
    assert dead_runs[dead_runs["status"] == "failed"]["error"].str.contains(r"died \(no heartbeat\)").all()
    assert len(groups) == len(trials)  # one group per trial: nothing trained twice for a trial
    for t in complete:
        runs = group_runs(sweep_db, t.user_attrs["group_id"])
        assert len(runs) == SEEDS * FOLDS and set(runs["status"]) == {"finished"}
        members = sorted(zip(runs["fold"], runs["seed"], strict=True))
        assert members == [(fold, seed) for fold in range(FOLDS) for seed in range(SEEDS)]
        with sweep_db.connect() as conn:  # each run logged its 512 steps once
            steps = conn.execute(sa.select(tables.steps.c.run_id, sa.func.count()).where(
                tables.steps.c.run_id.in_(list(runs["run_id"]))).group_by(tables.steps.c.run_id)).all()  # fmt: skip
        assert sorted(n for _, n in steps) == [512] * SEEDS * FOLDS
    # the best trial's deflated Sharpe counts every trial of the study, the dead worker's too
    best_group = study.best_trial.user_attrs["group_id"]
    trials_counted = group_evaluation.group_trials(sweep_db, best_group, group_runs_of(sweep_db, best_group),
                                                   dt.date(2012, 1, 3), dt.date(2012, 12, 31), 0.0)[0]  # fmt: skip
    assert set(groups["group_id"]) <= set(trials_counted.run_ids)

    # the best trial's stored settings (space file + its params) train the same objective again
    best = study.best_trial
    folders = {"checkpoint_dir": tmp_path / "again", "log_dir": tmp_path / "log"}
    worker_settings = resolve(tune_mvp.TuneSettings, {"study": name, **folders}, environ={}, dotenv={})[0]
    end = dt.date.fromisoformat(study.user_attrs["end"])
    settings = tune_mvp.trial_settings(tune_mvp.load_space(space), best.params, worker_settings, end)
    group_id = train_mvp.train_group(sweep_db, settings)
    again = group_evaluation.evaluate_group(sweep_db, group_id, BootstrapConfig(reps=100), store=False)
    assert again.objective == pytest.approx(best.value, abs=1e-9)


def test_one_worker_on_sqlite_runs_the_study_and_a_second_command_finds_it_done(
    sqlite_url: str, sample_bars: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    last = sample_bars["date"] == sample_bars["date"].max()  # ingested while the sweep runs (below)
    engine = engine_with_bars(sqlite_url, sample_bars[~last])
    space = tmp_path / "space.yaml"
    space.write_text(SWEEP_SPACE)
    args = tune_args(sqlite_url, "one", space, tmp_path, n_trials=1)
    assert tune_mvp.main(args) == ExitCode.OK
    with engine.connect() as conn:
        (group_id,) = conn.execute(sa.select(tables.groups.c.group_id).where(tables.groups.c.study == "one")).scalars()
    out = capsys.readouterr().out
    assert f"  evaluate it:     python evaluate_mvp.py --group {group_id}\n" in out
    assert "trial 0 done in " in out and ", sessions up to 2012-12-28\n" in out
    # everything that trains the best trial again, the study's end included
    again = ("  train it again:  python train_mvp.py --symbols SPY,TLT --start 2011-01-03 --timesteps 512 --n-envs 4 "
             "--n-steps 64 --batch-size 64 --n-epochs 1 --episode-length 64 --seeds 2 --folds 2 --test-sessions 40 "
             "--embargo 5 --learning-rate ")  # fmt: skip
    assert again in out and " --end 2012-12-28   (on the same database; no --config file)\n" in out

    assert tune_mvp.main(args) == ExitCode.OK  # the budget is spent: nothing trains, the best is printed again
    out = capsys.readouterr().out
    assert "trial 0 done" not in out and "study one: 1 complete trial(s); best trial 0: objective " in out
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.groups)).scalar() == 1

    # a session ingested during the sweep moves no fold: the next trial is judged on the same sessions
    assert bar_store.upsert_price_bars(engine, sample_bars[last]).ok
    assert tune_mvp.main(tune_args(sqlite_url, "one", space, tmp_path, n_trials=2)) == ExitCode.OK
    assert "trial 1 done in " in capsys.readouterr().out
    with engine.connect() as conn:
        ends = conn.execute(sa.select(tables.runs.c.fold, tables.runs.c.test_end).distinct()).all()
    assert len(ends) == FOLDS and max(end for _, end in ends) == dt.date(2012, 12, 28)  # both trials' folds alike

    space.write_text(SWEEP_SPACE.replace("gamma: {type: float, low: 0.5", "gamma: {type: float, low: 0.6"))
    with pytest.raises(UserError, match=f"^study one was created with another search space than {space}: use its "):
        tune_mvp.main(args)
    engine.dispose()


def test_the_example_space_file_is_valid() -> None:
    space = tune_mvp.load_space(REPO / "examples" / "space.yaml")
    assert {d.name for d in space.dimensions} >= {"learning_rate", "gamma"} and space.fixed["folds"] == 3


def test_a_sweeps_group_evaluation_counts_every_trial_of_its_study(sqlite_url: str) -> None:
    """Trials 0 and 1 trained other bars (a sampled window changes the fingerprint); trial 2's worker died before
    its first run; another study's group and a group of no study are not counted."""
    engine = db_utils.make_engine(sqlite_url)
    tables.ensure_schema(engine)
    now, start, end = dt.datetime.now(dt.UTC), dt.date(2012, 1, 3), dt.date(2012, 12, 31)
    groups = [("g0", "s", 0, "fp-a"), ("g1", "s", 1, "fp-b"), ("g2", "s", 2, None), ("h0", "other", 0, "fp-c"),
              ("loose", None, None, "fp-d")]  # fmt: skip
    with engine.begin() as conn:
        for gid, study, trial, fingerprint in groups:
            conn.execute(tables.groups.insert().values(group_id=gid, kind="walk_forward", created_at=now,
                                                       status="finished", study=study, trial=trial))  # fmt: skip
            if fingerprint:
                run = {"status": "finished", "started_at": now, "data_fingerprint": fingerprint, "group_id": gid}
                conn.execute(
                    tables.runs.insert(), [{**run, "run_id": f"{gid}-{seed}", "seed": seed} for seed in (0, 1)]
                )
        stored = {"policy": "agent", "evaluated_at": now, "slice_start": start, "slice_end": end}
        conn.execute(tables.group_evaluations.insert().values(group_id="g1", stitched_sharpe=0.4, **stored))
    counted = group_evaluation.group_trials(engine, "g0", run_groups.group_runs(engine, "g0"), start, end, 0.7)
    assert counted == (Trials(("g0", "g1", "g2"), (0.4, 0.7)), 4)  # each group once; 2 + 2 runs
    alone = group_evaluation.group_trials(engine, "loose", run_groups.group_runs(engine, "loose"), start, end, 0.7)
    assert alone == (Trials(("loose",), (0.7,)), 2)
    engine.dispose()


def test_an_aborted_trial_records_its_error_without_the_database_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = sa.create_engine("postgresql+psycopg2://tuner:s3cr%40t@db.example:5432/tt")  # never connects

    def fail(*args: object, **kwargs: object) -> str:
        raise RuntimeError("connection to tuner:s3cr@t@db.example refused")

    monkeypatch.setattr(train_mvp, "train_group", fail)
    worker = resolve(tune_mvp.TuneSettings, {"study": "s"}, environ={}, dotenv={})[0]
    objective = tune_mvp.Objective(engine, tune_mvp.load_space(write(tmp_path, GOOD)), worker, dt.date(2012, 12, 31))
    study = optuna.create_study(direction="maximize")
    with pytest.raises(RuntimeError):
        study.optimize(objective, n_trials=1)
    assert study.trials[0].user_attrs["error"] == "RuntimeError: connection to tuner:***@db.example refused"


def test_train_mvp_takes_only_the_database_and_log_folder_from_the_environment() -> None:
    # the printed "train it again" command relies on it: trials ignore the environment and .env, and so does it
    from_env = {f.name for f in dataclasses.fields(train_mvp.TrainSettings) if f.metadata.get("env")}
    assert from_env == {"database_url", "sqlite_path", "log_dir"}
