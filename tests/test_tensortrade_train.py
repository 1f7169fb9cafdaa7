"""``train_mvp.py --backend tensortrade``: PPO in this (3.11) interpreter, TensorTrade envs in 3.12 worker processes.

Runs in the main venv. The tests that start workers need the TensorTrade interpreter (``$TT_PYTHON`` or
``.venv-tt``, made by tools/tt_lane.sh); without one they skip, except with ``TT_LANE=1`` (the lane) where
they fail. The refusal, missing-interpreter and broken-worker tests run everywhere.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import db_utils
import tensortrade_remote
import tt_schema as tables
from conftest import engine_with_bars, read_table, run_train
from settings import REPO_ROOT, ExitCode, UserError
from trading_env import make_env
from tt_lane import unavailable

SAMPLE_CSV = REPO_ROOT / "data" / "sample_daily_bars.csv.gz"
SYMBOLS = ("GLD", "SPY", "TLT")
ZERO_COSTS: dict[str, Any] = {"fee_flat": 0.0, "commission_bps": 0.0, "rebalance_band": 0.0, "max_drawdown": 1.0}
# one 40-step episode on 2010-2011 with a tiny PPO: the lane must stay quick (TensorTrade steps at ~600/s)
TRAIN = ["--symbols", ",".join(SYMBOLS), "--start", "2010-01-01", "--end", "2011-12-31", "--episodes", "1",
         "--episode-length", "40", "--n-steps", "32", "--batch-size", "16", "--n-epochs", "1", "--seed", "3",
         "--backend", "tensortrade", "--n-envs", "1", "--no-random-start"]  # fmt: skip


@pytest.fixture(scope="module")
def tt_python() -> Path:
    """The TensorTrade interpreter, or a skip (a failure in the lane) when there is none."""
    try:
        return tensortrade_remote.tt_python()
    except UserError as exc:
        unavailable("a TensorTrade interpreter", exc)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """The bundled sample's bars of :data:`SYMBOLS` and four ETFs, 2009-06 .. 2016."""
    bars = pd.read_csv(SAMPLE_CSV)
    keep = bars["symbol"].isin([*SYMBOLS, "AGG", "VNQ"]) & bars["date"].between("2009-06-01", "2016-12-31")
    return bars[keep].reset_index(drop=True)


@pytest.fixture
def stored(sqlite_url: str, sample: pd.DataFrame) -> Iterator[sa.Engine]:
    """A SQLite database holding the training symbols' bars."""
    engine = engine_with_bars(sqlite_url, sample[sample["symbol"].isin(SYMBOLS)])
    yield engine
    engine.dispose()


def _train(engine: sa.Engine, tmp_path: Path, *extra: str) -> int:
    return run_train(engine, tmp_path, *TRAIN, *extra)


def test_ppo_trains_on_tensortrade_workers(tt_python: Path, stored: sa.Engine, tmp_path: Path) -> None:
    """One episode: every step logged, sums consistent, and the logged actions replay to the same net worth."""
    assert _train(stored, tmp_path, "--execution", "close") == 0
    run = read_table(stored, tables.runs).iloc[-1]
    episodes, steps = read_table(stored, tables.episodes), read_table(stored, tables.steps).sort_values("step")
    assert (run["status"], run["backend"], run["episodes_done"]) == ("finished", "tensortrade", 1)
    assert len(episodes) == 1 and episodes["stop_reason"].iloc[0] == "episode_length"
    assert len(steps) == episodes["steps"].iloc[0] == run["total_steps"] == 40
    assert steps["step"].tolist() == list(range(1, 41))
    assert steps["reward"].sum() == pytest.approx(episodes["reward_sum"].iloc[0], rel=1e-12, abs=1e-12)
    assert steps["net_worth"].iloc[-1] == episodes["net_worth_end"].iloc[0]
    # the same actions on the native environment: the TensorTrade fills agree within the parity tolerance
    bars = db_utils.read_price_bars(stored, list(SYMBOLS), dt.date(2010, 1, 1), dt.date(2011, 12, 31))
    native = make_env(bars, execution="close", episode_length=40)
    native.reset()
    replayed = [native.step(np.asarray(a, np.float32))[4] for a in steps["action"]]
    assert [str(d) for d in steps["date"]] == [info["date"] for info in replayed]
    np.testing.assert_allclose(steps["net_worth"], [info["net_worth"] for info in replayed], rtol=0.005)


def test_remote_vec_env_matches_native_env(tt_python: Path, sample: pd.DataFrame) -> None:
    """Two workers, different actions: each row follows its own native env to the end, then auto-resets.

    Then one worker is killed: the next step names it and its exit code; close() ends the other.
    """
    bars = sample[sample["symbol"].isin(["SPY", "AGG", "GLD", "VNQ"]) & (sample["date"] >= "2015-01-01")]
    vec = tensortrade_remote.make_vec_env(bars, 2, execution="close", **ZERO_COSTS)
    natives = [make_env(bars, execution="close", **ZERO_COSTS) for _ in range(2)]
    try:
        first = vec.reset()
        assert first.shape[0] == 2 and first.shape[1:] == vec.observation_space.shape
        assert vec.symbols == natives[0].symbols
        for native in natives:
            native.reset()
        rng, worths, done = np.random.default_rng(0), [], np.zeros(2, bool)
        while not done.any():
            actions = rng.uniform(-1.0, 1.0, (2, 4))
            _, rewards, done, infos = vec.step(actions)
            expected = [native.step(a.astype(np.float32)) for native, a in zip(natives, actions, strict=True)]
            worths.append([(info["net_worth"], e[4]["net_worth"]) for info, e in zip(infos, expected, strict=True)])
            assert vec.last_step["t"].tolist() == [native.t for native in natives]
            np.testing.assert_array_equal(vec.last_step["reward"][:, 0], rewards)
        pairs = np.array(worths)  # steps x workers x (remote, native)
        assert len(pairs) > 400 and done.all()
        assert np.max(np.abs(pairs[..., 0] / pairs[..., 1] - 1.0)) < 0.005
        assert not np.allclose(pairs[:, 0, 0], pairs[:, 1, 0])  # each worker got its own actions
        for info in infos:
            assert (info["stop_reason"], info["TimeLimit.truncated"]) == ("end_of_data", True)
            assert info["terminal_observation"].shape == vec.observation_space.shape
        again = vec.step(np.zeros((2, 4)))[0]
        assert isinstance(again, np.ndarray) and again.shape == first.shape
        vec.workers[1].process.kill()  # a worker dying mid-run is a clear error naming it
        with pytest.raises(UserError, match=r"TensorTrade worker 1 .* exited with code -9") as caught:
            vec.step(np.zeros((2, 4)))
        assert caught.value.exit_code == ExitCode.ERROR
    finally:
        vec.close()
    assert all(worker.process.returncode is not None for worker in vec.workers)


@pytest.mark.parametrize("execution", [(), ("--execution", "next_open")], ids=["default", "next_open"])
def test_refused_setting_is_a_clear_training_error(
    execution: tuple[str, ...], stored: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Next-open fills (the default) are refused before any worker starts: no interpreter is even looked up."""
    monkeypatch.setenv("TT_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(UserError) as caught:
        _train(stored, tmp_path, *execution)
    assert caught.value.exit_code == ExitCode.USAGE
    assert "--execution" in str(caught.value) and "pass --execution close" in str(caught.value)


def test_workers_die_with_their_parent(tt_python: Path) -> None:
    """SIGKILL the parent: its workers see their input end and exit."""
    script = (
        "import time; import market, tensortrade_remote as r;"  # python -c: the working directory is on sys.path
        "v = r.make_vec_env(market.synthetic_bars(2, 200), 1, execution='close');"
        "print(v.workers[0].process.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None  # stdout=PIPE
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.1)
    alive = Path(f"/proc/{worker}").exists()
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the worker outlived its parent"


def test_missing_interpreter_says_how_to_create_the_lane(
    stored: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No TensorTrade interpreter: SOURCE_UNAVAILABLE naming TT_PYTHON and tools/tt_lane.sh."""
    monkeypatch.setenv("TT_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(UserError) as caught:
        _train(stored, tmp_path, "--execution", "close")
    assert caught.value.exit_code == ExitCode.SOURCE_UNAVAILABLE
    assert "no-such-python" in str(caught.value) and "tools/tt_lane.sh" in str(caught.value)


def test_worker_that_cannot_import_tensortrade_is_a_clear_error(
    sample: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker interpreter without TensorTrade (here: this 3.11 one) fails with the backend's own reason."""
    monkeypatch.setenv("TT_PYTHON", sys.executable)
    with pytest.raises(UserError) as caught:
        tensortrade_remote.make_vec_env(sample[sample["symbol"].isin(SYMBOLS)], 1, execution="close")
    assert caught.value.exit_code == ExitCode.SOURCE_UNAVAILABLE
    message = str(caught.value)
    assert "TensorTrade worker 0" in message and "exited with code 1" in message
    assert "tensortrade" in message.lower() and "tt_lane.sh" in message
