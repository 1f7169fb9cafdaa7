"""Sweep train_mvp settings with Optuna, on any number of machines sharing the project's database.

``python tune_mvp.py --study NAME --n-trials K --config SPACE.yaml`` joins (or creates) the Optuna study NAME,
stored by Optuna's RDBStorage in the database of ``DATABASE_URL`` (the project's own: PostgreSQL for several
machines, the embedded SQLite file for one), and runs trials until the study holds K of them. Each trial samples
the space file's settings (:mod:`search_space`), trains a seeds x walk-forward-folds group with
:func:`train_mvp.train_group` (every run a ``tt_runs`` row, so the deflated Sharpe counts it) and returns the
group's out-of-sample objective from :func:`group_evaluation.evaluate_group`. A worker that stops sending
heartbeats has its trial failed, its group and runs marked ``failed``, and the trial re-queued with the same
settings for another worker. docs/tuning.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

import db_utils
import run_groups
import search_space
from market import common_dates
from settings import (
    REPO_ROOT,
    CommonSettings,
    ExitCode,
    UserError,
    add_arguments,
    format_config,
    mask_secret,
    resolve,
    run_cli,
    scrub_secrets,
    setting,
    writable_folder,
)

if TYPE_CHECKING:
    import optuna

# Settings a space file may not name: the worker's own, or actions of train_mvp.py rather than training settings.
_WORKERS = "each worker's own setting: give it to tune_mvp.py"
REFUSED = {
    **dict.fromkeys(("database_url", "sqlite_path", "checkpoint_dir", "log_dir", "verbose"), _WORKERS),
    **dict.fromkeys(("resume", "show_run", "last", "load_steps", "evaluate"), "an action of train_mvp.py, not a "
                    "training setting"),
    "backend": "sweeps train the native environment only (a group evaluation refuses TensorTrade runs)",
}  # fmt: skip
# Settings a space file may fix but not sample: they change what the objective measures, or select luck.
_MEASURE = "changes the data every trial is judged on; fix it so trials stay comparable"
NOT_SAMPLED = {
    "seed": "sampling the seed selects luck, not a configuration; fix it and use seeds: K",
    "seeds": "the objective aggregates over the seeds; fix seeds: K so every trial aggregates as many",
    **dict.fromkeys(("symbols", "watchlist", "start", "end", "holdout", "folds", "test_sessions", "embargo"), _MEASURE),
}


@dataclasses.dataclass(frozen=True)
class TuneSettings(CommonSettings):
    """Settings of ``tune_mvp.py`` (the trials' training settings come from the space file)."""

    study: str | None = setting(None, "Optuna study name: every worker with this name and database joins it")
    n_trials: int = setting(10, "trials the study runs in total, over all its workers", bounds=(1, None))
    sampler_seed: int = setting(0, "seed of the TPE sampler, with the trial number (reproducible with one worker)",
                                bounds=(0, None))  # fmt: skip
    heartbeat_interval: int = setting(10, "seconds between a running trial's heartbeats", bounds=(1, None))
    grace_period: int = setting(30, "seconds without a heartbeat before a trial's worker counts as dead",
                                bounds=(1, None))  # fmt: skip
    max_retry: int = setting(2, "times a dead worker's trial is re-queued", bounds=(0, None))
    bootstrap_reps: int = setting(200, "bootstrap resamples of each trial's group evaluation (the objective does "
                                  "not depend on them)", bounds=(100, None))  # fmt: skip
    checkpoint_dir: Path = setting(REPO_ROOT / "checkpoints", "this worker's checkpoints: CHECKPOINT_DIR/<run_id>/")

    def __post_init__(self) -> None:
        """A grace period no longer than the heartbeat interval would fail every live trial."""
        if self.grace_period <= self.heartbeat_interval:
            raise UserError(f"setting --grace-period: {self.grace_period} must be longer than --heartbeat-interval "
                            f"({self.heartbeat_interval})")  # fmt: skip


def parse(argv: list[str] | None) -> tuple[TuneSettings, Path | None, bool]:
    """Flags, environment and ``.env`` into settings; ``--config`` is the space file here, not a settings file."""
    parser = argparse.ArgumentParser(description="Sweep train_mvp settings with Optuna (docs/tuning.md).",
                                     conflict_handler="resolve")  # fmt: skip
    add_arguments(parser, TuneSettings)
    parser.add_argument("--config", dest="config_file", type=Path, default=None, metavar="SPACE.yaml",
                        help="the search space: fixed and sampled train_mvp settings (docs/tuning.md)")  # fmt: skip
    args = vars(parser.parse_args(argv))
    space_file, print_config = args.pop("config_file"), args.pop("print_config")
    settings, sources = resolve(TuneSettings, args)
    if print_config:
        print(format_config(settings, sources))
    return settings, space_file, print_config


# ------------------------------------------------------------------------------------------------ trials


def load_space(path: Path) -> search_space.SearchSpace:
    """The space file checked against train_mvp's settings, with walk-forward folds fixed.

    :raise UserError: (USAGE) see :func:`search_space.load_space`; no fixed ``folds`` of at least 1 (a trial is
        judged out of sample, over its folds, never on one in-sample number).
    """
    import train_mvp

    space = search_space.load_space(path, train_mvp.TrainSettings, REFUSED, NOT_SAMPLED)
    if space.fixed.get("folds", 0) < 1:
        raise UserError(f"space file {path}: fixed.folds: required, at least 1: each trial is judged out of sample "
                        "on its walk-forward folds")  # fmt: skip
    return space


def trial_settings(space: search_space.SearchSpace, params: dict[str, Any], worker: TuneSettings,
                   end: dt.date | None) -> Any:  # fmt: skip
    """A trial's ``TrainSettings``: defaults, the fixed and sampled settings, the study's ``end`` and this worker's
    database and folders. Neither the environment nor ``.env`` counts, so a trial trains the same on every
    machine."""
    import train_mvp

    own = {name: getattr(worker, name) for name in ("database_url", "sqlite_path", "checkpoint_dir", "log_dir")}
    values = {**space.values(params), **({"end": end} if end is not None else {}), **own}
    return resolve(train_mvp.TrainSettings, values, environ={}, dotenv={})[0]


def study_end(engine: sa.Engine, space: search_space.SearchSpace, worker: TuneSettings) -> dt.date:
    """The last session of every trial: the space file's fixed ``end``, else the last session now common to its
    symbols. Stored with the study, so that sessions ingested during a sweep move no trial's folds (trials judged
    on other sessions would not count each other in the deflated Sharpe).

    :raise UserError: (REFUSED) unknown or flagged symbols, or no session common to them (``train_mvp``).
    """
    import train_mvp

    fixed = space.fixed.get("end")  # a date: load_space converted it
    if fixed is not None:
        return fixed
    settings = trial_settings(space, {}, worker, None)
    whole = dataclasses.replace(settings, holdout=0.0)
    bars, symbols = train_mvp.training_slice(engine, whole, train_mvp.requested_symbols(settings))
    common = common_dates(bars, len(symbols))
    if common.empty:
        raise UserError(f"no session common to {', '.join(symbols)}: nothing to sweep over", ExitCode.REFUSED)
    return pd.Timestamp(common.max()).date()


class Objective:
    """What Optuna maximizes: train the trial's group, evaluate it out of sample, return its objective (the IQM of
    the agent's out-of-sample Sharpe over seeds x folds)."""

    def __init__(self, engine: sa.Engine, space: search_space.SearchSpace, worker: TuneSettings,
                 end: dt.date) -> None:  # fmt: skip
        self.engine, self.space, self.worker, self.end = engine, space, worker, end
        self.trial_number: int | None = None  # the trial this worker runs now or ran last

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        import group_evaluation
        import train_mvp
        from evaluation_stats import BootstrapConfig

        self.trial_number = trial.number
        trial.set_user_attr("worker", worker_name())
        # Each trial samples with its own seed (sampler seed, trial number): one worker reproduces its sequence,
        # and workers never draw from one random stream (they would propose the same settings). TPE samples each
        # setting when it is suggested, so the sampler set here is the one that samples this trial. The constant
        # liar counts trials running elsewhere as poor, so workers do not all sample near the same point.
        seed = int(np.random.SeedSequence([self.worker.sampler_seed, trial.number]).generate_state(1)[0])
        trial.study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        try:
            params = search_space.sample(trial, self.space.dimensions)
            settings = trial_settings(self.space, params, self.worker, self.end)
            group_id = train_mvp.train_group(self.engine, settings, study=self.worker.study, trial=trial.number)
            trial.set_user_attr("group_id", group_id)
            config = BootstrapConfig(reps=self.worker.bootstrap_reps)
            return float(group_evaluation.evaluate_group(self.engine, group_id, config, store=True).objective)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # another worker declared this one dead: nothing more may be written to the trial
        except BaseException as exc:
            # an aborted trial does not use the study's budget (next_step); a dead worker's is re-queued instead
            # shown by optuna-dashboard: a driver's message may quote the database URL, password included
            interrupted = isinstance(exc, KeyboardInterrupt)
            text = f"{type(exc).__name__}: {scrub_secrets(str(exc), db_utils.raw_url(self.engine))}"
            trial.set_user_attr("error", "interrupted (Ctrl-C or SIGTERM)" if interrupted else text)
            raise


def worker_name() -> str:
    """``host:pid``: which machine and process ran a trial (a trial user attribute, shown by optuna-dashboard)."""
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------------------------ dead workers


def on_dead_worker(engine: sa.Engine, max_retry: int) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """Optuna's callback for a trial whose heartbeat went stale: close its group and runs, then re-queue it."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        dead = trial.user_attrs.get("worker", "unknown")
        error = (f"worker {dead} died (no heartbeat) during trial {trial.number} of study {study.study_name}; "
                 f"noticed by {worker_name()}")  # fmt: skip
        groups = run_groups.abandon_trial_groups(engine, study.study_name, trial.number, error)
        retry(study, trial)
        requeued = len(RetryHeartbeatStaleTrialCallback.retry_history(trial)) < max_retry
        print(
            f"trial {trial.number}: worker {dead} died; group(s) {', '.join(groups) or 'none'} marked failed; "
            + ("re-queued" if requeued else f"not re-queued (retried {max_retry} times already)"),
            flush=True,
        )

    return callback


# ------------------------------------------------------------------------------------------------ the study


def open_study(engine: sa.Engine, settings: TuneSettings, space: search_space.SearchSpace) -> tuple[optuna.Study,
               dt.date]:  # fmt: skip
    """Create or join the study in the project's database, with heartbeats and the dead-worker callback; returns
    it and its last session (:func:`study_end`, fixed when the study is created, read by a worker joining it).

    :raise UserError: a database error (its exit code); (USAGE) the study was created with another space;
        (REFUSED) see :func:`study_end`.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this command prints its own line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries
    sqlite = engine.dialect.name == "sqlite"
    try:
        storage = optuna.storages.RDBStorage(
            db_utils.raw_url(engine),
            engine_kwargs={"connect_args": {"timeout": 30}} if sqlite else {"pool_pre_ping": True},
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=on_dead_worker(engine, settings.max_retry),
        )
        study = optuna.create_study(study_name=settings.study, storage=storage, direction="maximize",
                                    load_if_exists=True)  # fmt: skip
        doc, stored, end = space.document(), study.user_attrs.get("space"), study.user_attrs.get("end")
        if stored is not None and stored != doc:
            raise UserError(f"study {settings.study} was created with another search space than {space.path}: use "
                            "its space file, or another --study name")  # fmt: skip
        if end is None:
            end = study_end(engine, space, settings).isoformat()
            study.set_user_attr("end", end)
        if stored is None:
            study.set_user_attr("space", doc)
    except sa.exc.SQLAlchemyError as exc:
        raise db_utils.engine_error(engine, exc) from None
    return study, dt.date.fromisoformat(end)


def next_step(trials: Iterable[optuna.trial.FrozenTrial], n_trials: int) -> str:
    """``run`` another trial, ``wait`` for trials running elsewhere (a dead worker's comes back), or ``done``.

    Every trial uses the study's budget of ``n_trials`` except a failed one that was re-queued (its retry
    counts instead) or aborted by an error or Ctrl-C (it ran no result). A queued trial always runs.
    """
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    trials = list(trials)
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    unspent = [t for t in trials if t.state == TrialState.FAIL and (t.number in retried or "error" in t.user_attrs)]
    if any(t.state == TrialState.WAITING for t in trials) or len(trials) - len(unspent) < n_trials:
        return "run"
    return "wait" if any(t.state == TrialState.RUNNING for t in trials) else "done"


def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per trial this worker finished."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    took = trial.duration.total_seconds() if trial.duration is not None else float("nan")
    retry = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    head = f"trial {trial.number}" + (f" (retry of trial {retry})" if retry is not None else "")
    if trial.value is None:
        print(f"{head} {trial.state.name.lower()} after {took:.0f} s: no objective (undefined, e.g. a Sharpe ratio "
              f"of constant returns); params {trial.params}", flush=True)  # fmt: skip
        return
    best = study.best_trial
    print(f"{head} done in {took:.0f} s: objective {trial.value:.4f} (best {best.value:.4f}, trial {best.number}); "
          f"group {trial.user_attrs.get('group_id')}; params {trial.params}", flush=True)  # fmt: skip


def work(study: optuna.Study, run: Objective) -> None:
    """Run trials until the study's budget is spent and no trial runs anywhere (so none of a dead worker's is
    left behind)."""
    import optuna

    settings, waiting = run.worker, False
    while True:
        optuna.storages.fail_stale_trials(study)
        step = next_step(study.get_trials(deepcopy=False), settings.n_trials)
        if step == "done":
            return
        if step == "wait":
            if not waiting:
                print(f"waiting for trials running on other workers (a dead worker's trial is re-queued after "
                      f"{settings.grace_period} s without a heartbeat)", flush=True)  # fmt: skip
            waiting = True
            time.sleep(settings.heartbeat_interval)
            continue
        waiting = False
        try:
            study.optimize(run, n_trials=1, callbacks=[progress], gc_after_trial=False)
        except ValueError:
            if not taken_over(study, run.trial_number):
                raise
            print(
                f"trial {run.trial_number}: another worker declared this one dead (no heartbeat for "
                f"{settings.grace_period} s) and re-queued the trial; this result is not recorded",
                flush=True,
            )


def taken_over(study: optuna.Study, number: int | None) -> bool:
    """Whether the trial was failed by another worker while this one still ran it (tell() then refuses it)."""
    from optuna.trial import TrialState

    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    return trial is not None and trial.state == TrialState.FAIL and "error" not in trial.user_attrs


def print_best(study: optuna.Study, space: search_space.SearchSpace, end: dt.date) -> None:
    """The best trial: objective, settings, group, and the commands that evaluate it and train it again (its
    fixed and sampled settings and the study's end; train_mvp.py's other training settings are at their defaults,
    which neither the environment nor ``.env`` changes: they set only the database and log folder)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        print(f"study {study.study_name}: no complete trial")
        return
    best = study.best_trial
    group = best.user_attrs.get("group_id")
    print(f"study {study.study_name}: {len(done)} complete trial(s); best trial {best.number}: objective "
          f"{best.value:.4f}, group {group}")  # fmt: skip
    print(f"  params: {best.params}")
    print(f"  evaluate it:     python evaluate_mvp.py --group {group}")
    flags = search_space.train_flags({**space.values(best.params), "end": end})
    print(f"  train it again:  python train_mvp.py {flags}   (on the same database; no --config file)")


def main(argv: list[str] | None = None) -> int:
    """Join or create the study, run trials until its budget is spent, print the best trial."""
    settings, space_file, print_config = parse(argv)
    if print_config:
        return int(ExitCode.OK)
    if not settings.study:
        raise UserError("--study NAME is required: workers with the same study name and database share the study")
    if space_file is None:
        raise UserError("--config SPACE.yaml is required: the settings to sample (docs/tuning.md)")
    space = load_space(space_file)
    writable_folder(settings.checkpoint_dir, "--checkpoint-dir")
    writable_folder(settings.log_dir, "--log-dir")
    engine = db_utils.connect(settings)
    study, end = open_study(engine, settings, space)
    print(f"study {settings.study} on {mask_secret(db_utils.raw_url(engine))}: worker {worker_name()} joins, "
          f"{settings.n_trials} trial(s) in total, sessions up to {end}", flush=True)  # fmt: skip
    from training_run import sigterm_as_interrupt  # brings in Stable-Baselines3: after the checks above

    try:
        with sigterm_as_interrupt():  # SIGTERM ends a trial as Ctrl-C does: recorded, not left to the heartbeat
            work(study, Objective(engine, space, settings, end))
    except sa.exc.SQLAlchemyError as exc:  # Optuna's storage lost the database (training handles its own)
        raise db_utils.engine_error(engine, exc) from None
    print_best(study, space, end)
    return int(ExitCode.OK)


def cli() -> int:
    """The ``tune-mvp`` console script (pyproject.toml): ``main`` with user errors as one line."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
