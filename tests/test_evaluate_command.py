"""evaluate_mvp.py end to end on a tiny PPO run (SQLite and PostgreSQL): table, stored rows, report, errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from stable_baselines3 import PPO

import bar_store
import evaluate_mvp as ev
import tt_schema as tables
from market import synthetic_bars
from settings import ExitCode, run_cli
from tensortrade_risk_module import EnvConfig
from trading_vec_env import make_vec_env

SMALL = {"window_size": 5, "vol_windows": (5, 10), "vol_window": 5, "warmup": 10, "cov_window": 10}
ENV = {**SMALL, "episode_length": 40, "random_start": True}  # training shape; evaluation must undo it
TRAIN_END = dt.date(2000, 6, 30)
POLICIES = {"agent", "cash", "buy_and_hold", "monthly_rebalanced", "inverse_vol"}


@pytest.fixture
def tiny_run(engine: sa.Engine, tmp_path: Path) -> dict:
    """Bars stored, a PPO model trained for a few steps on the slice up to TRAIN_END, its tt_runs row."""
    bars = synthetic_bars(3, 200, seed=3)  # business days 2000-01-03 .. 2000-10-06
    bar_store.upsert_price_bars(engine, bars, source="test")
    train = bars[bars["date"] <= TRAIN_END]
    model = PPO("MlpPolicy", make_vec_env(train, 2, seed=0, **ENV), n_steps=32, batch_size=32, n_epochs=1, seed=0)
    model.learn(64)
    folder = tmp_path / "checkpoints" / "run-1"
    folder.mkdir(parents=True)
    model.save(folder / "final.zip")
    env = {f.name: getattr(EnvConfig(**ENV), f.name) for f in dataclasses.fields(EnvConfig)}
    row = {"run_id": "run-1", "status": "finished", "started_at": dt.datetime.now(dt.UTC), "seed": 0,
           "config": {"env": env, "train": {"episodes": 2}}, "symbols": sorted(bars["symbol"].unique()),
           "slice_start": dt.date(2000, 1, 3), "slice_end": TRAIN_END, "checkpoint_dir": str(folder)}  # fmt: skip
    episodes = [{"run_id": "run-1", "episode": i, "steps": 40, "reward_sum": 0.01 * i, "net_worth_start": 1e5,
                 "net_worth_end": 1e5 + 100 * i} for i in (1, 2, 3)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(tables.runs.insert().values(**row))
        conn.execute(tables.episodes.insert(), episodes)
    return row


def evaluate(engine: sa.Engine, tmp_path: Path, *args: str) -> int:
    url = engine.url.render_as_string(hide_password=False)
    return run_cli(ev.main, ["--database-url", url, "--out-dir", str(tmp_path / "reports"), *args])


def stored(engine: sa.Engine) -> list[sa.Row]:
    e = tables.evaluations
    with engine.connect() as conn:
        return conn.execute(sa.select(e).order_by(e.c.policy)).all()


def test_tiny_run_is_evaluated_stored_and_reported(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert evaluate(engine, tmp_path, "--run", "latest") == 0
    out = capsys.readouterr().out
    for label in ("agent (PPO)", "cash", "equal-weight buy & hold", "equal-weight monthly", "inverse-vol"):
        assert label in out
    rows = stored(engine)
    assert {r.policy for r in rows} == POLICIES
    first_session_after_training = dt.date(2000, 7, 3)
    assert {(r.slice_start, r.slice_end) for r in rows} == {(first_session_after_training, dt.date(2000, 10, 6))}
    cash = next(r for r in rows if r.policy == "cash")
    sessions = len(pd.bdate_range(first_session_after_training, "2000-10-06")) - 1
    assert cash.total_return == 0.0 and cash.sharpe is None and cash.metrics["sessions"] == sessions

    folder = tmp_path / "reports" / "run-1"
    page = (folder / "report.html").read_text()
    for section in ("metrics", "equity", "drawdown", "weights", "training", "settings"):
        assert f'<section id="{section}">' in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4 and all(len(i) > 1000 for i in images)
    for name in ("equity", "drawdown", "weights", "training", "metrics"):
        assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Days stopped" in page and "run-1" in page


def test_rerun_replaces_the_rows_of_the_same_slice(engine: sa.Engine, tiny_run: dict, tmp_path: Path) -> None:
    assert evaluate(engine, tmp_path, "--run", "run-1", "--start", "2000-08-01", "--end", "2000-09-29") == 0
    assert evaluate(engine, tmp_path, "--run", "run-1", "--start", "2000-08-01", "--end", "2000-09-29") == 0
    rows = stored(engine)
    assert len(rows) == len(POLICIES)
    assert {(r.slice_start, r.slice_end) for r in rows} == {(dt.date(2000, 8, 1), dt.date(2000, 9, 29))}


def test_missing_checkpoint_fails_clearly(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (Path(tiny_run["checkpoint_dir"]) / "final.zip").unlink()
    assert evaluate(engine, tmp_path, "--run", "run-1") == ExitCode.NOT_FOUND
    err = capsys.readouterr().err
    assert "final checkpoint" in err and "final.zip" in err and "not found" in err
    assert stored(engine) == []


def test_unknown_run_fails_clearly(engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert evaluate(engine, tmp_path, "--run", "nope") == ExitCode.NOT_FOUND
    assert "run 'nope' is not in tt_runs" in capsys.readouterr().err
    assert evaluate(engine, tmp_path, "--run", "latest") == ExitCode.NOT_FOUND


def test_train_mvp_evaluate_delegates_to_the_evaluation(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import train_mvp

    monkeypatch.setenv("TT_REPORTS_DIR", str(tmp_path / "via_train"))
    url = engine.url.render_as_string(hide_password=False)
    assert run_cli(train_mvp.main, ["--database-url", url, "--evaluate", "run-1", "--start", "2000-08-01"]) == 0
    assert {r.policy for r in stored(engine)} == POLICIES
    assert {r.slice_start for r in stored(engine)} == {dt.date(2000, 8, 1)}
    assert (tmp_path / "via_train" / "run-1" / "report.html").is_file()


def test_checkpoint_that_reads_other_observations_is_refused(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    changed = {**tiny_run["config"]["env"], "window_size": 7}  # the model was trained on 5-day windows
    with engine.begin() as conn:
        conn.execute(tables.runs.update().values(config={**tiny_run["config"], "env": changed}))
    assert evaluate(engine, tmp_path, "--run", "run-1") == ExitCode.REFUSED
    assert "reads observations of shape" in capsys.readouterr().err


def test_tensortrade_run_is_refused_clearly(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with engine.begin() as conn:
        conn.execute(tables.runs.update().values(backend="tensortrade"))
    assert evaluate(engine, tmp_path, "--run", "run-1") == ExitCode.REFUSED
    assert "TensorTrade backend" in capsys.readouterr().err
