"""Train Stable-Baselines3 PPO on the stored bars, with checkpoints, per-episode reports and a step log in the DB.

``python train_mvp.py --episodes N`` trains on the stored range minus a held-out tail (never seen in training),
checkpoints after every episode and at the end, prints one line per episode and logs every step to
``tt_steps`` (episodes to ``tt_episodes``, the run to ``tt_runs``) through :mod:`step_logger`.
``--resume CHECKPOINT`` continues a run; ``--show-run RUN|latest --last N`` prints what a run logged;
``--load-steps FILE`` stores rows saved to a fallback file during a database outage. docs/training.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
import time
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

import db_utils
import run_records
from checkpoints import FINAL, TrainingState, read_checkpoint, save_checkpoint
from settings import (
    REPO_ROOT,
    CommonSettings,
    ExitCode,
    UserError,
    convert,
    mask_secret,
    parse_command,
    resolve,
    run_cli,
    setting,
)
from step_logger import LoggerReport, StepLogger, load_fallback
from tensortrade_risk_module import EnvConfig


@dataclasses.dataclass(frozen=True)
class TrainSettings(EnvConfig, CommonSettings):
    """Settings of ``train_mvp.py``: the run, PPO, and every environment parameter (:class:`EnvConfig`)."""

    episodes: int = setting(2, "episodes to train (with --resume: further episodes)")
    start: dt.date | None = setting(None, "first date of the training slice (default: first stored date)")
    end: dt.date | None = setting(None, "last date of the training slice (default: stored range minus the holdout)")
    holdout: float = setting(0.2, "fraction of the stored sessions at the end kept out of training when --end unset")
    symbols: tuple[str, ...] | None = setting(None, "symbols to trade, e.g. SPY,TLT (default: the watchlist)")
    watchlist: Path = setting(REPO_ROOT / "tensorwatchlist.csv", "watchlist CSV whose symbols are traded")
    force: bool = setting(False, "train even on symbols flagged below the coverage threshold")
    seed: int = setting(0, "seed of PPO, torch and the environments")
    n_envs: int = setting(1, "environments stepped together (make_vec_env)")
    torch_threads: int = setting(1, "torch CPU threads (1 is fastest for this small MLP and deterministic)")
    n_steps: int = setting(2048, "PPO rollout steps per environment between updates")
    batch_size: int = setting(64, "PPO minibatch size")
    n_epochs: int = setting(10, "PPO epochs per update")
    learning_rate: float = setting(3e-4, "PPO learning rate")
    gamma: float = setting(0.99, "PPO discount factor")
    backend: Literal["native", "tensortrade"] = setting("native", "environment implementation")
    checkpoint_dir: Path = setting(REPO_ROOT / "checkpoints", "checkpoints go to CHECKPOINT_DIR/<run_id>/")
    keep_checkpoints: int = setting(3, "per-episode checkpoints kept (the final one is always kept)")
    resume: Path | None = setting(None, "checkpoint (.zip/.json or run folder) whose run to continue")
    step_log: bool = setting(True, "log every environment step to tt_steps (--no-step-log: episodes only)")
    show_run: str | None = setting(None, "print a run's episodes and last steps (RUN id or 'latest') and exit")
    last: int = setting(100, "with --show-run: how many of the last steps to print")
    load_steps: Path | None = setting(None, "store the rows of a step-log fallback file and exit")
    evaluate: str | None = setting(None, "evaluate a run (RUN id or 'latest') out of sample like evaluate_mvp.py, exit")


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
        import tensortrade_remote as backend
    else:
        import trading_vec_env as backend
    return backend.make_vec_env(bars, settings.n_envs, seed=seed, **env_settings(settings))


def seed_everything(settings: TrainSettings) -> None:
    """Deterministic CPU torch with the chosen number of threads, and the global seeds."""
    import torch
    from stable_baselines3.common.utils import set_random_seed

    torch.set_num_threads(settings.torch_threads)
    torch.use_deterministic_algorithms(True)
    set_random_seed(settings.seed)


def build_model(settings: TrainSettings, env: Any, resume_zip: Path | None) -> Any:
    """A new PPO model, or the one saved in ``resume_zip`` attached to ``env``."""
    from stable_baselines3 import PPO

    if resume_zip is not None:
        return PPO.load(resume_zip, env=env, device="cpu")
    return PPO(
        "MlpPolicy", env, n_steps=settings.n_steps, batch_size=settings.batch_size, n_epochs=settings.n_epochs,
        learning_rate=settings.learning_rate, gamma=settings.gamma, seed=settings.seed, device="cpu", verbose=0,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ run record


def _settings_record(settings: TrainSettings) -> dict[str, Any]:
    """Every setting, secrets masked: what runs and checkpoints record."""
    masked = {f.name for f in dataclasses.fields(settings) if f.metadata.get("secret")}
    return {k: (mask_secret(v) if k in masked else v) for k, v in dataclasses.asdict(settings).items()}


def new_run(engine: sa.Engine, settings: TrainSettings, symbols: list[str], bars: pd.DataFrame) -> TrainingState:
    """Record a new run with its full effective configuration (``env``: EnvConfig fields, ``train``: the rest)."""
    env = env_settings(settings)
    train = {k: v for k, v in _settings_record(settings).items() if k not in env}
    return run_records.new_run(engine, config={"env": env, "train": train}, backend=settings.backend,
                               seed=settings.seed, symbols=symbols, bars=bars,
                               checkpoint_dir=settings.checkpoint_dir)  # fmt: skip


# ------------------------------------------------------------------------------------------------ training


class EpisodeCallback(BaseCallback):
    """Numbers episodes, logs each step from the VecEnv's ``last_step``, reports and checkpoints each episode.

    An episode gets the next number when its first step is taken, so numbers follow start order with no gaps;
    training stops at the first step where ``target`` episodes have completed (across all environments).
    """

    def __init__(self, settings: TrainSettings, env: Any, log: StepLogger, state: TrainingState, bar: tqdm) -> None:
        """:param state: the run's progress so far (a copy is updated and saved with every checkpoint)."""
        super().__init__()
        self.settings, self.vec, self.log, self.bar = settings, env, log, bar
        self.state = dataclasses.replace(state, settings=_settings_record(settings))
        self.target = state.episodes_done + settings.episodes
        self.dates = np.array([str(d) for d in env.dates])
        n = env.num_envs
        self.episode, self.steps = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        self.reward_sum, self.max_dd, self.first_t = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        self.started = np.zeros(n)

    def _on_step(self) -> bool:
        last = self.vec.last_step
        fresh = self.steps == 0
        if fresh.any():  # new episodes take the next numbers, in environment order
            count = int(fresh.sum())
            self.episode[fresh] = np.arange(self.state.next_episode, self.state.next_episode + count)
            self.state.next_episode += count
            self.first_t[fresh], self.started[fresh] = last["t"][fresh], time.perf_counter()
            self.reward_sum[fresh] = self.max_dd[fresh] = 0.0
        self.steps += 1
        reward, drawdown = last["reward"][:, 0], last["drawdown"][:, 0]
        self.reward_sum += reward
        np.maximum(self.max_dd, drawdown, out=self.max_dd)
        self.state.total_steps += len(reward)
        if self.settings.step_log:
            self.log.add_steps(
                self.episode, self.steps, self.dates[last["t"]], action=last["action"],
                target_weights=last["target_weights"], reward=reward, net_worth=last["net_worth"][:, 0],
                cash=last["cash"][:, 0], drawdown=drawdown, turnover=last["turnover"][:, 0], fees=last["fees"][:, 0],
            )  # fmt: skip
        done = np.flatnonzero(self.locals["dones"])
        if len(done):
            self.finish(done, [self.locals["infos"][i]["stop_reason"] for i in done])
            self.checkpoint(f"episode_{self.state.episodes_done:05d}")
        return self.state.episodes_done < self.target

    def finish(self, rows: np.ndarray, reasons: list[str], completed: bool = True) -> None:
        """Record and print the episodes of environments ``rows``; they start afresh at the next step."""
        last, now = self.vec.last_step, time.perf_counter()
        records = []
        for i, reason in zip(rows.tolist(), reasons, strict=True):
            wall = float(now - self.started[i])
            record = {
                "episode": int(self.episode[i]), "env_index": i, "steps": int(self.steps[i]),
                "start_date": dt.date.fromisoformat(self.dates[self.first_t[i]]),
                "end_date": dt.date.fromisoformat(self.dates[last["t"][i]]), "reward_sum": float(self.reward_sum[i]),
                "net_worth_start": self.settings.initial_cash, "net_worth_end": float(last["net_worth"][i, 0]),
                "max_drawdown": float(self.max_dd[i]), "stop_reason": reason, "wall_time_s": wall,
                "finished_at": dt.datetime.now(dt.UTC),
            }  # fmt: skip
            records.append(record)
            change = record["net_worth_end"] / record["net_worth_start"] - 1.0
            self.bar.write(
                f"episode {record['episode']:>4}  steps {record['steps']:>5}  reward {record['reward_sum']:+9.4f}  "
                f"net worth {record['net_worth_start']:,.0f} -> {record['net_worth_end']:,.0f} ({change:+.1%})  "
                f"max dd {record['max_drawdown']:.1%}  stop {reason}  {record['steps'] / max(wall, 1e-9):,.0f} steps/s"
            )
        self.steps[rows] = 0
        if completed:
            self.state.episodes_done += len(records)
            self.bar.update(len(records))
        self.log.add_episodes(records)
        self.log.update_run(episodes_done=self.state.episodes_done, total_steps=self.state.total_steps)

    def close_open(self, reason: str) -> None:
        """Record episodes still running when training ends (``cut``) or is interrupted (not counted as done)."""
        open_rows = np.flatnonzero(self.steps > 0)
        if len(open_rows):
            self.finish(open_rows, [reason] * len(open_rows), completed=False)

    def checkpoint(self, name: str) -> Path:
        """Save model + run state under the run's folder."""
        return save_checkpoint(self.model, self.state, name, self.settings.keep_checkpoints)


def run_training(engine: sa.Engine, settings: TrainSettings, model: Any, env: Any, state: TrainingState) -> int:
    """Learn until ``settings.episodes`` more episodes complete; always checkpoint, flush and record the outcome.

    :return: exit code: OK, INTERRUPTED, or PARTIAL when rows went to the step-log fallback file instead.
    """
    run_id = state.run_id
    fallback = Path(settings.log_dir) / f"steps_{run_id}_{dt.datetime.now():%H%M%S}.jsonl"
    log = StepLogger(engine, run_id, fallback, announce=lambda m: tqdm.write(m))
    print(f"run {run_id}: training {settings.episodes} episode(s) on {', '.join(env.symbols)}, "
          f"{env.dates[0]} .. {env.dates[-1]}, seed {settings.seed}, {env.num_envs} env(s)")  # fmt: skip
    # disable=None: no bar when stderr is not a terminal (cron, log files); episode lines still print.
    bar = tqdm(total=settings.episodes, unit="episode", desc=f"run {run_id}", dynamic_ncols=True, disable=None)
    callback = EpisodeCallback(settings, env, log, state, bar)
    budget = (
        settings.episodes * len(env.dates) * env.num_envs + settings.n_steps * env.num_envs
    )  # never the binding limit
    status, code, error, started = "finished", ExitCode.OK, None, time.perf_counter()
    try:
        model.learn(total_timesteps=budget, callback=callback, reset_num_timesteps=state.total_steps == 0)
    except KeyboardInterrupt:
        status, code = "interrupted", ExitCode.INTERRUPTED
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose buffered rows
        try:
            callback.close_open("cut" if status == "finished" else status)
            final = callback.checkpoint(FINAL)
            log.update_run(status=status, finished_at=dt.datetime.now(dt.UTC), error=error)
            bar.close()
            report = log.close(timeout=30)
        finally:
            signal.signal(signal.SIGINT, previous)
        _summary(callback.state, status, time.perf_counter() - started, final, report, settings)
    if code == ExitCode.OK and report.fallback_file is not None:
        code = ExitCode.PARTIAL  # trained, but the database misses rows: cron must see it (--load-steps stores them)
    return int(code)


def _summary(
    state: TrainingState, status: str, wall: float, final: Path, report: LoggerReport, settings: TrainSettings
) -> None:
    print(
        f"run {state.run_id} {status}: {state.episodes_done} episode(s), {state.total_steps} env steps in "
        f"{wall:.1f} s ({state.total_steps / max(wall, 1e-9):,.0f} env steps/s); final checkpoint {final}"
    )
    print(f"step log: {report.steps_written} step rows, {report.episodes_written} episode rows written"
          + (f", {report.retries} retries during database outages" if report.retries else ""))  # fmt: skip
    if report.fallback_file is not None:
        url = f" --database-url '{settings.database_url}'" if settings.database_url else ""
        print(f"WARNING: {report.unwritten_steps} step rows (and episode/run updates) could not be stored; they are "
              f"saved in {report.fallback_file}\n  store them later with: python train_mvp.py --load-steps "
              f"{report.fallback_file}{url}")  # fmt: skip


def train(engine: sa.Engine, settings: TrainSettings) -> int:
    """Train (or resume) a run; returns the exit code."""
    resumed, resume_zip = read_checkpoint(settings.resume) if settings.resume is not None else (None, None)
    if resumed is not None:
        settings = dataclasses.replace(settings, **_resumed_settings(resumed))
    bars, symbols = training_slice(engine, settings, requested_symbols(settings))
    state = run_records.resume_run(engine, resumed) if resumed is not None else new_run(engine, settings, symbols, bars)
    seed_everything(settings)
    env = make_training_env(settings, bars, settings.seed + state.next_episode - 1)
    try:
        return run_training(engine, settings, build_model(settings, env, resume_zip), env, state)
    finally:
        env.close()  # stops the TensorTrade backend's worker processes now rather than at exit


def _resumed_settings(state: TrainingState) -> dict[str, Any]:
    """The checkpoint's settings, except those a resumed run may change (episodes, logging, database)."""
    changeable = {"episodes", "step_log", "database_url", "sqlite_path", "log_dir", "verbose", "keep_checkpoints",
                  "resume", "show_run", "load_steps", "last", "evaluate"}  # fmt: skip
    hints = typing.get_type_hints(TrainSettings)
    return {k: convert(v, hints[k], k) for k, v in state.settings.items() if k not in changeable}


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
        if not settings.load_steps.is_file():
            raise UserError(f"step-log file {settings.load_steps} not found", ExitCode.NOT_FOUND)
        try:
            n_steps, n_episodes = load_fallback(engine, settings.load_steps)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        print(f"stored {n_steps} step rows and {n_episodes} episode rows from {settings.load_steps} (rows already "
              "stored were left alone)")  # fmt: skip
        return int(ExitCode.OK)
    if settings.show_run is not None:
        run_records.show_run(engine, settings.show_run, settings.last)
        return int(ExitCode.OK)
    if settings.episodes < 1 or settings.n_envs < 1:
        raise UserError("--episodes and --n-envs must be >= 1")
    return train(engine, settings)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
