"""evaluate_mvp.py end to end on a tiny PPO run (SQLite and PostgreSQL): tables, statistics, --json, stored rows,
report, in-sample labelling, the trial count, errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from stable_baselines3 import PPO

import bar_store
import evaluate_mvp as ev
import evaluation_stats as es
import policy_rollout
import run_records
import tt_schema as tables
from market import synthetic_bars
from settings import ExitCode, run_cli
from tensortrade_risk_module import EnvConfig
from trading_vec_env import make_vec_env

SMALL: dict[str, Any] = {"window_size": 5, "vol_windows": (5, 10), "vol_window": 5, "warmup": 10, "cov_window": 10}
ENV: dict[str, Any] = {**SMALL, "episode_length": 40, "random_start": True}  # training shape; evaluation must undo it
TRAIN_END = dt.date(2000, 6, 30)
POLICIES = {"agent", "cash", "buy_and_hold", "monthly_rebalanced", "inverse_vol"}
REPS = 200  # bootstrap resamples: enough for the tests, fast


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
           "slice_start": dt.date(2000, 1, 3), "slice_end": TRAIN_END, "checkpoint_dir": str(folder),
           "data_fingerprint": run_records.fingerprint(train)}  # fmt: skip
    episodes = [{"run_id": "run-1", "episode": i, "steps": 40, "reward_sum": 0.01 * i, "net_worth_start": 1e5,
                 "net_worth_end": 1e5 + 100 * i} for i in (1, 2, 3)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(tables.runs.insert().values(**row))
        conn.execute(tables.episodes.insert(), episodes)
    return row


def evaluate(engine: sa.Engine, tmp_path: Path, *args: str) -> int:
    url = engine.url.render_as_string(hide_password=False)
    return run_cli(ev.main, ["--database-url", url, "--out-dir", str(tmp_path / "reports"),
                             "--bootstrap-reps", str(REPS), *args])  # fmt: skip


def evaluate_json(engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> dict:
    """The --json document: stdout must be exactly one JSON document."""
    assert evaluate(engine, tmp_path, "--json", *args) == 0
    return json.loads(capsys.readouterr().out)


def stored(engine: sa.Engine) -> Sequence[sa.Row]:
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
    assert "out of sample" in out and "IN-SAMPLE" not in out
    verdict = re.search(r"^verdict: (agent vs \w+: Sharpe difference .* after 1 trial: .*)$", out, re.MULTILINE)
    assert verdict, out
    assert re.search(r"^agent \(PPO\) +-?\d\.\d\d \[-?\d\.\d\d, -?\d\.\d\d\]", out, re.MULTILINE)  # intervals
    assert "SPA test" in out and "deflated Sharpe" in out
    rows = stored(engine)
    assert {r.policy for r in rows} == POLICIES
    first_session_after_training = dt.date(2000, 7, 3)
    assert {(r.slice_start, r.slice_end) for r in rows} == {(first_session_after_training, dt.date(2000, 10, 6))}
    cash = next(r for r in rows if r.policy == "cash")
    sessions = len(pd.bdate_range(first_session_after_training, "2000-10-06")) - 1
    assert cash.total_return == 0.0 and cash.sharpe is None and cash.metrics["sessions"] == sessions
    assert len(cash.metrics["daily_returns"]) == sessions and not cash.metrics["in_sample"]
    agent = next(r for r in rows if r.policy == "agent")
    assert agent.metrics["statistics"]["evaluation"]["verdict"]["text"] == verdict.group(1)

    folder = tmp_path / "reports" / "run-1"
    page = (folder / "report.html").read_text()
    for section in ("metrics", "statistics", "equity", "drawdown", "weights", "training", "settings"):
        assert f'<section id="{section}">' in page
    # the verdict line comes first, right under the heading
    assert page.index('<p class="verdict"') < page.index('<section id="metrics">')
    assert verdict.group(1).replace("&", "&amp;") in page and "<h1>Out-of-sample evaluation of run run-1</h1>" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5 and all(len(i) > 1000 for i in images)
    for name in ("equity", "drawdown", "weights", "training", "metrics", "intervals"):
        assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Days stopped" in page and "run-1" in page


def test_json_document_is_the_statistics_of_the_stored_returns(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    doc = evaluate_json(engine, tmp_path, capsys, "--run", "run-1", "--start", "2000-07-10")
    assert doc["period"] == {"start": "2000-07-10", "end": "2000-10-06", "sessions": 64, "in_sample": False,
                             "training_start": "2000-01-03", "training_end": "2000-06-30"}  # fmt: skip
    assert set(doc["policies"]) == POLICIES and set(doc["comparisons"]) == POLICIES - {"agent"}
    assert doc["stored"] and doc["report"].endswith("report.html") and doc["bootstrap"]["reps"] == REPS
    assert doc["trials"] == {"n_trials": 1, "run_ids": ["run-1"], "sharpes": [doc["policies"]["agent"]["sharpe"][
        "estimate"]]}  # fmt: skip

    e = tables.evaluations
    with engine.connect() as conn:
        rows = conn.execute(sa.select(e.c.policy, e.c.sharpe, e.c.metrics).order_by(e.c.evaluation_id)).all()
    returns = {r.policy: np.asarray(r.metrics["daily_returns"]) for r in rows}
    assert all(len(r) == 64 for r in returns.values())
    expected = es.to_jsonable(es.evaluation_statistics(returns, "agent", 1, doc["trials"]["sharpes"],
                                                       es.BootstrapConfig(reps=REPS)))  # fmt: skip
    assert isinstance(expected, dict)
    assert doc["comparisons"] == expected["comparisons"] and doc["spa"] == expected["spa"]
    assert doc["deflated_sharpe"] == expected["deflated"] and doc["verdict"]["text"] == expected["verdict"]["text"]
    for r in rows:
        policy = doc["policies"][r.policy]
        for key in ("sharpe", "cagr", "max_drawdown", "psr"):
            assert policy[key] == expected["policies"][r.policy][key] == r.metrics["statistics"][key]
        assert policy["metrics"]["sharpe"] == r.sharpe  # the stored metric column is the interval's estimate
        assert r.sharpe is None or r.sharpe == pytest.approx(policy["sharpe"]["estimate"], rel=1e-12)
        if r.policy != "agent":
            assert r.metrics["statistics"]["agent_vs_this"] == doc["comparisons"][r.policy]
    low, high = doc["policies"]["buy_and_hold"]["sharpe"]["low"], doc["policies"]["buy_and_hold"]["sharpe"]["high"]
    assert low < doc["policies"]["buy_and_hold"]["sharpe"]["estimate"] < high


def test_json_stdout_holds_only_the_document(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    assert evaluate(engine, tmp_path, "--run", "run-1", "--json", "--no-store") == 0
    out, err = capfd.readouterr()
    doc = json.loads(out)
    assert doc["stored"] is False and doc["verdict"]["text"] in err and "agent (PPO)" in err
    assert stored(engine) == []


def test_in_sample_slice_is_refused_unless_asked_and_then_labelled_everywhere(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert evaluate(engine, tmp_path, "--run", "run-1", "--start", "2000-05-01") == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert "overlap run run-1's training slice 2000-01-03 .. 2000-06-30" in err and "--in-sample" in err
    assert err.count("\n") == 1 and stored(engine) == []

    doc = evaluate_json(engine, tmp_path, capsys, "--run", "run-1", "--start", "2000-05-01", "--in-sample")
    assert doc["period"]["in_sample"] and doc["verdict"]["in_sample"]
    assert doc["verdict"]["text"].startswith("IN-SAMPLE (the run trained on 2000-01-03 .. 2000-06-30): agent")
    assert all(r.metrics["in_sample"] for r in stored(engine))
    page = (tmp_path / "reports" / "run-1" / "report.html").read_text()
    assert "<h1>In-sample evaluation of run run-1</h1>" in page and 'class="in-sample"' in page
    assert evaluate(engine, tmp_path, "--run", "run-1", "--start", "2000-05-01", "--in-sample") == 0
    out = capsys.readouterr().out
    assert "IN-SAMPLE (overlaps the training slice)" in out and "verdict: IN-SAMPLE" in out


def test_trials_count_every_run_over_the_same_bars(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # run-2 trained on the same bars (failed, but it is a trial) and was evaluated on the same slice; run-3 on
    # other bars does not count, nor does run-2's evaluation of another slice.
    start, end = dt.date(2000, 7, 3), dt.date(2000, 10, 6)
    others = [{**tiny_run, "run_id": "run-2", "status": "failed"},
              {**tiny_run, "run_id": "run-3", "data_fingerprint": "f" * 64}]  # fmt: skip
    evaluations = [
        {"run_id": "run-2", "policy": "agent", "slice_start": start, "slice_end": end, "sharpe": 1.5},
        {"run_id": "run-2", "policy": "agent", "slice_start": start, "slice_end": dt.date(2000, 9, 1), "sharpe": 9.0},
        {"run_id": "run-3", "policy": "agent", "slice_start": start, "slice_end": end, "sharpe": -2.0},
        {"run_id": "run-2", "policy": "cash", "slice_start": start, "slice_end": end, "sharpe": None},
    ]
    with engine.begin() as conn:
        conn.execute(tables.runs.insert(), others)
        conn.execute(tables.evaluations.insert(), [{**e, "evaluated_at": dt.datetime.now(dt.UTC)}
                                                   for e in evaluations])  # fmt: skip
    doc = evaluate_json(engine, tmp_path, capsys, "--run", "run-1")
    agent_sharpe = doc["policies"]["agent"]["sharpe"]["estimate"]
    assert doc["trials"] == {"n_trials": 2, "run_ids": ["run-1", "run-2"], "sharpes": [1.5, agent_sharpe]}
    deflated = doc["deflated_sharpe"]
    assert deflated["n_trials"] == 2 and deflated["variance_source"] == "trials"
    assert deflated["trial_sharpe_std"] == pytest.approx(np.std([1.5, agent_sharpe], ddof=1))
    assert doc["verdict"]["text"].count("after 2 trials") == 1


def test_bad_files_and_folders_end_in_one_line(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    assert run_cli(ev.main, ["--database-url", url, "--out-dir", str(blocked / "reports")]) == ExitCode.FILESYSTEM
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out-dir {blocked / 'reports' / 'run-1'}: cannot create or write the folder") and (
        err.count("\n") == 1
    )
    assert evaluate(engine, tmp_path, "--bootstrap-reps", "10") == ExitCode.USAGE
    assert "--bootstrap-reps: 10 is outside the allowed range 100.." in capsys.readouterr().err

    checkpoint = Path(tiny_run["checkpoint_dir"]) / "final.zip"
    data = checkpoint.read_bytes()
    for damaged in (data[: len(data) // 2], b"not a zip"):
        checkpoint.write_bytes(damaged)
        assert evaluate(engine, tmp_path, "--run", "run-1") == ExitCode.USAGE
        err = capsys.readouterr().err
        assert f"checkpoint {checkpoint}: not a readable model" in err and err.count("\n") == 1
    with engine.begin() as conn:
        conn.execute(tables.runs.update().values(config={"train": {"episodes": 2}}))
    assert evaluate(engine, tmp_path, "--run", "run-1") == ExitCode.REFUSED
    assert "holds no environment settings" in capsys.readouterr().err
    assert stored(engine) == []


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


def test_run_stored_before_the_action_map_existed_is_evaluated_as_trained() -> None:
    env = {f.name: getattr(EnvConfig(), f.name) for f in dataclasses.fields(EnvConfig)}
    old = {k: v for k, v in env.items() if k not in ("action_map", "return_windows")}
    record = run_records.RunRecord("run-0", "finished", dt.datetime.now(dt.UTC), config={"env": old, "train": {}})
    settings = policy_rollout.run_env_settings(record)
    assert (settings["action_map"], settings["return_windows"]) == ("clip", ())
    assert policy_rollout.run_normalizer(record, Path("final.zip")) is None  # no norm_obs recorded: raw observations


def test_normalized_run_without_its_statistics_is_refused(
    engine: sa.Engine, tiny_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with engine.begin() as conn:
        conn.execute(tables.runs.update().values(config={**tiny_run["config"], "train": {"norm_obs": True}}))
    assert evaluate(engine, tmp_path, "--run", "run-1") == ExitCode.NOT_FOUND
    err = capsys.readouterr().err
    assert "final.vecnormalize.pkl are missing" in err and err.count("\n") == 1
