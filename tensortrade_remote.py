"""Training on the TensorTrade backend from the main interpreter: a VecEnv of TensorTrade worker processes.

TensorTrade 1.0.4 needs Python >= 3.12 while the learner (Stable-Baselines3 with CPU torch) runs on the main
3.11 interpreter. Like SB3's ``SubprocVecEnv``, but across interpreters, :class:`RemoteVecEnv` starts one
``<tt python> tensortrade_backend.py --serve`` worker per environment, each running a genuine TensorTrade
``TradingEnv`` (:func:`tensortrade_backend.make_tensortrade_env`), and talks to it over pipes: pickled
commands on the worker's stdin, pickled replies on a pipe of their own (so nothing TensorTrade or TensorFlow
prints can corrupt them; the worker's stdout and stderr go to a log file whose tail explains a crash).
The bars travel once, as the fields of the :class:`market.Market` built here. docs/tensortrade_backend.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import IO, Any, cast

import gymnasium as gym
import numpy as np
import pandas as pd
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from market import Market
from settings import REPO_ROOT, ExitCode, UserError
from tensortrade_risk_module import tensortrade_config
from trading_env import market_and_config
from trading_vec_env import SharedVecEnv

WORKER = REPO_ROOT / "tensortrade_backend.py"
LANE_HINT = (
    "create it with `bash tools/tt_lane.sh` (or `make test-tt`), or point TT_PYTHON at a Python >= 3.12 "
    "with requirements-tensortrade.txt installed"
)
RECORD_KEYS = ("net_worth", "cash", "drawdown", "turnover", "fees")


def tt_python() -> Path:
    """The TensorTrade interpreter: ``$TT_PYTHON``, else the lane's ``<repo>/.venv-tt/bin/python``.

    :raise UserError: ``SOURCE_UNAVAILABLE`` when it does not exist, saying how to create it.
    """
    given = os.environ.get("TT_PYTHON")
    path = Path(given).expanduser() if given else REPO_ROOT / ".venv-tt" / "bin" / "python"
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = f"TT_PYTHON={given}" if given else str(path)
        raise UserError(
            f"the TensorTrade backend runs in a Python >= 3.12 interpreter and {where} is not one: {LANE_HINT}",
            ExitCode.SOURCE_UNAVAILABLE,
        )
    return path


class _Pickler(pickle.Pickler):
    """Pickles arrays as ``numpy.ndarray(shape, dtype, bytes)``, which numpy 1.26 (the lane) reads; numpy 2's
    own array pickles name ``numpy._core``, a module numpy 1.26 does not have."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
            return np.ndarray, (obj.shape, obj.dtype.str, np.ascontiguousarray(obj).tobytes())
        return NotImplemented


class _Worker:
    """One TensorTrade environment in a child process of ``python``."""

    def __init__(self, python: Path, index: int) -> None:
        """Start the process (it then imports TensorTrade, a few seconds); ``index`` names it in errors."""
        self.index, self.python, self.ready = index, python, False
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker; closed by _stop)
        read, write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [str(python), str(WORKER), "--serve", str(write)], stdin=subprocess.PIPE, stdout=self.log,
                stderr=self.log, pass_fds=(write,), cwd=REPO_ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )  # fmt: skip
        except OSError as exc:
            os.close(read)
            raise UserError(
                f"cannot start the TensorTrade worker {python}: {exc}", ExitCode.SOURCE_UNAVAILABLE
            ) from None
        finally:
            os.close(write)
        self.replies: IO[bytes] = os.fdopen(read, "rb")
        self.requests = cast(IO[bytes], self.process.stdin)  # stdin=PIPE: never None

    def send(self, *command: Any) -> None:
        """Send one command; a worker that is gone raises its failure."""
        try:
            _Pickler(self.requests, protocol=5).dump(command)
            self.requests.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed by close()
            raise self.failure() from None

    def receive(self) -> tuple:
        """The next reply without its tag; an ``error`` reply or a dead worker raises :class:`UserError`."""
        try:
            reply = pickle.load(self.replies)
        except (EOFError, ValueError):
            raise self.failure() from None
        if reply[0] == "error":
            raise UserError(f"TensorTrade worker {self.index}: {reply[1]}", ExitCode(reply[2]))
        self.ready = True
        return reply[1:]

    def failure(self) -> UserError:
        """The error for a worker that exited: its exit code and the last line of its log."""
        try:
            code: int | str | None = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = "none (still running)"
        self.log.seek(0)
        lines = [line for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        # before its first reply the worker could not even start: most often no TensorTrade in that interpreter
        kind = ExitCode.ERROR if self.ready else ExitCode.SOURCE_UNAVAILABLE
        cause = lines[-1] if lines else "no output"
        return UserError(f"TensorTrade worker {self.index} ({self.python}) exited with code {code}: {cause}", kind)


def _stop(workers: list[_Worker]) -> None:
    """Close the workers' pipes (they exit on end of input), then terminate, then kill the stragglers."""
    for worker in workers:
        with contextlib.suppress(OSError):
            worker.requests.close()
        worker.replies.close()
    for worker in workers:
        for end in (None, worker.process.terminate, worker.process.kill):
            if end is not None:
                end()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=3)
                break
        worker.log.close()


def _box(shape: tuple[int, ...], dtype: str, low: list, high: list) -> gym.spaces.Box:
    """The Box a worker described as plain values."""
    kind = np.dtype(dtype)
    return gym.spaces.Box(np.array(low, kind).reshape(shape), np.array(high, kind).reshape(shape), shape, kind)


class RemoteVecEnv(SharedVecEnv):
    """``n_envs`` TensorTrade environments, one per worker process, stepped in parallel.

    SB3 conventions as the native VecEnv: automatic reset (in the worker, saving a round trip),
    ``terminal_observation`` and ``TimeLimit.truncated`` in a finished copy's info; ``last_step`` holds the
    last step's arrays, built from the workers' infos, with the keys of the native ``last_step``.
    """

    def __init__(self, market: Market, config: dict[str, Any], n_envs: int, python: Path | None = None) -> None:
        """:param config: EnvConfig fields; ``python``: the TensorTrade interpreter (default :func:`tt_python`)."""
        if n_envs < 1:
            raise UserError(f"n_envs: {n_envs} must be >= 1")
        python = python or tt_python()
        self.symbols, self.dates = market.symbols, market.dates
        self._index = {d: i for i, d in enumerate(market.date_strings)}
        self.workers: list[_Worker] = []
        self._stopper = weakref.finalize(self, _stop, self.workers)  # also runs at interpreter exit
        fields = {f.name: getattr(market, f.name) for f in dataclasses.fields(market)}
        try:
            self.workers.extend(_Worker(python, i) for i in range(n_envs))  # all start (import) in parallel
            for worker in self.workers:
                worker.send("init", fields, config)
            spaces = [worker.receive() for worker in self.workers][0]  # noqa: RUF015 (every worker must answer)
        except BaseException:
            self.close()
            raise
        action_space = _box(*spaces[1])
        super().__init__(n_envs, _box(*spaces[0]), action_space)
        self._shape, self._dtype = self.observation_space.shape, self.observation_space.dtype
        self._actions = np.zeros((n_envs, *action_space.shape))
        self.last_step: dict[str, np.ndarray] = {}

    def _obs(self, raw: bytes) -> np.ndarray:
        return np.frombuffer(raw, self._dtype).reshape(self._shape)

    def reset(self) -> np.ndarray:
        """Reset every worker's environment (seeds given through :meth:`seed` are passed on)."""
        for worker, seed in zip(self.workers, self._seeds, strict=True):
            worker.send("reset", seed)
        self._reset_seeds()
        self._reset_options()
        replies = [worker.receive() for worker in self.workers]
        self.reset_infos = [_arrays(info) for _, info in replies]
        self.last_step = {}
        return np.stack([self._obs(raw) for raw, _ in replies])

    def step_async(self, actions: np.ndarray) -> None:
        """Send each worker its row of ``actions`` ``(n_envs, N)``."""
        self._actions = np.asarray(actions, dtype=np.float64)
        for worker, action in zip(self.workers, self._actions, strict=True):
            worker.send("step", action)

    def step_wait(self) -> VecEnvStepReturn:
        """Collect every worker's step; a finished copy comes back already reset."""
        obs, rewards, terms, truncs, infos = [], [], [], [], []
        for worker in self.workers:
            raw, reward, term, trunc, info, restart = worker.receive()
            info = _arrays(info)
            if restart is not None:
                info["terminal_observation"] = self._obs(raw)
                info["TimeLimit.truncated"] = trunc and not term
                raw = restart
            obs.append(self._obs(raw))
            rewards.append(reward)
            terms.append(term)
            truncs.append(trunc)
            infos.append(info)
        terminated, truncated = np.array(terms), np.array(truncs)
        self.last_step = {
            "t": np.array([self._index[info["date"]] for info in infos]), "reward": np.array(rewards)[:, None],
            **{key: np.array([[info[key]] for info in infos]) for key in RECORD_KEYS},
            "weights": np.stack([info["weights"] for info in infos]),
            "target_weights": np.stack([info["target_weights"] for info in infos]),
            "action": self._actions, "terminated": terminated, "truncated": truncated,
        }  # fmt: skip
        return np.stack(obs), np.array(rewards), terminated | truncated, infos

    def close(self) -> None:
        """Stop the workers (also done when the VecEnv is garbage-collected or the interpreter exits)."""
        self._stopper()


def _arrays(info: dict[str, Any]) -> dict[str, Any]:
    """A worker's info with its weight lists back as arrays, as the native infos have them."""
    return {k: np.array(v) if isinstance(v, list) else v for k, v in info.items()}


def make_vec_env(bars: pd.DataFrame | Market, n_envs: int, seed: int | None = None, **config: Any) -> RemoteVecEnv:
    """The TensorTrade backend as an SB3 VecEnv of worker processes, over ``bars`` (or a prebuilt Market).

    Same signature as :func:`trading_vec_env.make_vec_env`; the settings (including the TensorTrade refusals of
    :func:`~tensortrade_risk_module.tensortrade_config`: ``execution``, ``random_start``, ``allow_short``)
    and the bars are validated here, before any worker starts.

    :param seed: passed to the environments' next reset (TensorTrade episodes are deterministic here).
    :param config: any :class:`~tensortrade_risk_module.EnvConfig` field.
    :raise UserError: a bad or refused setting, or bad bars (before any worker starts);
        ``SOURCE_UNAVAILABLE`` without a TensorTrade interpreter.
    """
    market, _ = market_and_config(bars, tensortrade_config(config))
    env = RemoteVecEnv(market, config, n_envs)
    if seed is not None:
        env.seed(seed)
    return env
