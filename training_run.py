"""One training session of ``train_mvp.py``: ``PPO.learn`` with per-episode records, checkpoints and the step log.

:func:`run_training` numbers and records episodes through :class:`EpisodeCallback`, and always ends the same way,
whatever ends it (all episodes done, Ctrl-C, SIGTERM, an error, a checkpoint that cannot be written): episodes in
progress recorded, a final checkpoint attempted, buffered rows flushed, the run's ``tt_runs`` status set, a summary
printed. Ctrl-C and SIGTERM stop training after the current step. docs/training.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from checkpoints import FINAL, TrainingState, save_checkpoint
from settings import ExitCode, UserError, mask_secret, scrub_secrets
from step_logger import LoggerReport, StepLogger


class SessionSettings(Protocol):
    """What a session reads of ``train_mvp.TrainSettings`` (a frozen dataclass; the command layer is above this
    one, so it is described here rather than imported)."""

    @property
    def episodes(self) -> int: ...
    @property
    def timesteps(self) -> int | None: ...
    @property
    def seed(self) -> int: ...
    @property
    def n_steps(self) -> int: ...
    @property
    def step_log(self) -> bool: ...
    @property
    def initial_cash(self) -> float: ...
    @property
    def keep_checkpoints(self) -> int: ...
    @property
    def log_dir(self) -> Path: ...
    @property
    def database_url(self) -> str | None: ...
    @property
    def sqlite_path(self) -> Path: ...


def settings_record(settings: Any) -> dict[str, Any]:
    """Every setting, secrets masked: what ``tt_runs.config`` and checkpoints record."""
    masked = {f.name for f in dataclasses.fields(settings) if f.metadata.get("secret")}
    return {k: (mask_secret(v) if k in masked else v) for k, v in dataclasses.asdict(settings).items()}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_handled(handler: Any, signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """Within the block ``signals`` go to ``handler`` (a function, or ``signal.SIG_IGN``); main thread only."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def sigterm_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """Within the block SIGTERM (``kill``, systemd, ``docker stop``) is Ctrl-C: before training starts it ends
    the command at once; during training :func:`run_training` turns both into a clean stop."""
    return _signals_handled(_raise_interrupt, (signal.SIGTERM,))


class EpisodeCallback(BaseCallback):
    """Numbers episodes, logs each step from the VecEnv's ``last_step``, reports episodes and checkpoints them.

    An episode gets the next number when its first step is taken, so numbers follow start order with no gaps;
    training stops at the first step where ``target`` episodes have completed (across all environments), or
    with ``--timesteps`` when SB3's step budget is spent. Checkpoints: at most two per rollout (its first
    completed episode at once, later ones at its end): with many short episodes in parallel, one per episode
    would cost more than the training.
    """

    def __init__(self, settings: SessionSettings, env: Any, log: StepLogger, state: TrainingState, bar: tqdm) -> None:
        """:param state: the run's progress so far (a copy is updated and saved with every checkpoint)."""
        super().__init__()
        self.settings, self.vec, self.log, self.bar = settings, env, log, bar
        self.state = dataclasses.replace(state, settings=settings_record(settings))
        # --timesteps: SB3's total_timesteps ends training, not an episode count
        self.target = state.episodes_done + settings.episodes if settings.timesteps is None else math.inf
        self.unsaved = False  # an episode completed since the last checkpoint
        self.saved_in_rollout = False
        self.dates = np.array([str(d) for d in env.dates])
        n = env.num_envs
        self.episode, self.steps = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        self.reward_sum, self.max_dd, self.first_t = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        self.started = np.zeros(n)
        self.stop_requested = False

    def request_stop(self, signum: int, frame: Any) -> None:
        """Ctrl-C / SIGTERM handler: stop after the current step, whose records are then complete (an exception
        raised anywhere could split an episode's row from its counters); a second signal stops at once."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

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
            self.unsaved = True
            if not self.saved_in_rollout:
                self.saved_in_rollout = True
                self._on_rollout_end()
        if self.state.episodes_done >= self.target or self.stop_requested:
            self._on_rollout_end()  # training stops here: checkpoint the episodes that just completed
            return False
        return True

    def _on_rollout_start(self) -> None:
        self.saved_in_rollout = False

    def _on_rollout_end(self) -> None:
        if self.unsaved:
            self.checkpoint(f"episode_{self.state.episodes_done:05d}")
            self.unsaved = False

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
        """Save model + run state under the run's folder (:raise UserError: the folder cannot be written)."""
        normalizer = self.model.get_vec_normalize_env()  # None when the run trains on raw observations and rewards
        return save_checkpoint(self.model, self.state, name, self.settings.keep_checkpoints, normalizer)


@dataclasses.dataclass
class _Outcome:
    """How a session ended: the run's status, the exit code, the error recorded, the exception to re-raise."""

    status: str = "finished"
    code: ExitCode = ExitCode.OK
    error: str | None = None
    failure: Exception | None = None
    secret: str | None = None  # the database URL, whose password an error text must not carry into tt_runs

    def fail(self, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        self.status, self.error, self.failure = "failed", scrub_secrets(text, self.secret), exc


def run_training(engine: sa.Engine, settings: SessionSettings, model: Any, env: Any, state: TrainingState) -> int:
    """Learn until ``settings.episodes`` more episodes complete (or ``settings.timesteps`` more env steps are
    taken); always checkpoint, flush and record the outcome.

    :return: exit code: OK, INTERRUPTED, or PARTIAL when rows went to the step-log fallback file (or were lost).
    :raise Exception: what ended training (a :class:`UserError` for a checkpoint that cannot be written), after
        the run was marked ``failed`` with it.
    """
    run_id = state.run_id
    fallback = Path(settings.log_dir) / f"steps_{run_id}_{dt.datetime.now():%H%M%S}.jsonl"
    log = StepLogger(engine, run_id, fallback, announce=lambda m: tqdm.write(m))
    # disable=None: no bar when stderr is not a terminal (cron, log files); episode lines still print.
    total = None if settings.timesteps else settings.episodes
    bar = tqdm(total=total, unit="episode", desc=f"run {run_id}", dynamic_ncols=True, disable=None)
    callback = EpisodeCallback(settings, env, log, state, bar)
    # --episodes: a step budget that never binds (the callback stops training); --timesteps: SB3's own
    budget = settings.timesteps or settings.episodes * len(env.dates) * env.num_envs + settings.n_steps * env.num_envs
    outcome, started = _Outcome(secret=settings.database_url), time.perf_counter()
    try:
        amount = f"{settings.timesteps} env steps" if settings.timesteps else f"{settings.episodes} episode(s)"
        print(f"run {run_id}: training {amount} on {', '.join(env.symbols)}, "
              f"{env.dates[0]} .. {env.dates[-1]}, seed {settings.seed}, {env.num_envs} env(s)")  # fmt: skip
        with _signals_handled(callback.request_stop, (signal.SIGINT, signal.SIGTERM)):
            model.learn(total_timesteps=budget, callback=callback, reset_num_timesteps=state.total_steps == 0)
        if callback.stop_requested:
            outcome.status, outcome.code = "interrupted", ExitCode.INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C / SIGTERM, or one outside the handler's reach
        outcome.status, outcome.code = "interrupted", ExitCode.INTERRUPTED
    except Exception as exc:
        outcome.fail(exc)
    # Nothing may interrupt the clean-up: it keeps the buffered rows and the final checkpoint.
    with _signals_handled(signal.SIG_IGN, (signal.SIGINT, signal.SIGTERM)):
        callback.close_open("cut" if outcome.status == "finished" else outcome.status)
        final, why = _final_checkpoint(callback)
        if why is not None and outcome.status == "finished":
            outcome.fail(why)
        elif why is not None:
            outcome.error = outcome.error or str(why)
        # applied only while the row is still running (step_writes.write_item): a run a sweep declared dead stays failed
        log.update_run(status=outcome.status, finished_at=dt.datetime.now(dt.UTC), error=outcome.error)
        bar.close()
        report = log.close(timeout=30)
    _summary(callback.state, outcome.status, time.perf_counter() - started, final or why, report, settings)
    if outcome.failure is not None:
        raise outcome.failure
    if outcome.code == ExitCode.OK and (report.fallback_file is not None or report.lost_steps):
        return int(ExitCode.PARTIAL)  # trained, but the database misses rows: cron must see it
    return int(outcome.code)


def _final_checkpoint(callback: EpisodeCallback) -> tuple[Path | None, UserError | None]:
    """The final checkpoint's path, or why it could not be written (the run's records are stored either way)."""
    try:
        return callback.checkpoint(FINAL), None
    except UserError as exc:
        return None, exc


def _summary(
    state: TrainingState, status: str, wall: float, final: Path | UserError | None, report: LoggerReport,
    settings: SessionSettings,
) -> None:  # fmt: skip
    saved = f"final checkpoint {final}" if isinstance(final, Path) else f"no final checkpoint ({final})"
    print(f"run {state.run_id} {status}: {state.episodes_done} episode(s), {state.total_steps} env steps in "
          f"{wall:.1f} s ({state.total_steps / max(wall, 1e-9):,.0f} env steps/s); {saved}")  # fmt: skip
    print(f"step log: {report.steps_written} step rows, {report.episodes_written} episode rows written"
          + (f", {report.retries} retries during database outages" if report.retries else ""))  # fmt: skip
    if report.fallback_file is not None:
        # Never the URL itself: it may hold a password, and this line lands in cron mails and log files.
        target = " --database-url <your DATABASE_URL>" if settings.database_url else (
            f" --sqlite-path {settings.sqlite_path}")  # fmt: skip
        print(f"WARNING: {report.unwritten_steps} step rows (and episode/run updates) could not be stored; they are "
              f"saved in {report.fallback_file}\n  store them later with: python train_mvp.py --load-steps "
              f"{report.fallback_file}{target}")  # fmt: skip
    if report.lost_steps:
        print(f"WARNING: {report.lost_steps} step rows (and episode/run updates) are lost: {report.errors[-1]}")
