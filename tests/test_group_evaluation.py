"""group_evaluation / evaluate_mvp.py --group on a tiny walk-forward group (2 seeds x 2 folds of SPY and TLT, trained
once per module through train_mvp.main): stitched curves against rollouts chained in the test, the aggregates
against seed_stats, the trial count, stored rows (SQLite and PostgreSQL), --json, the report, refusals."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import db_utils
import evaluate_mvp as ev
import group_evaluation as ge
import tt_schema as tables
from conftest import engine_with_bars, read_table, run_train
from evaluation_records import daily_returns
from evaluation_stats import BootstrapConfig
from market import build_market
from metrics import sharpe
from policy_rollout import (
    agent_policy,
    baseline_policies,
    final_checkpoint,
    load_model,
    rollout,
    run_env_settings,
    run_normalizer,
    slice_market,
)
from run_records import RunRecord
from seed_stats import improvement_interval, iqm_interval
from settings import ExitCode, UserError, run_cli
from tensortrade_risk_module import EnvConfig
from trading_env import make_env

GROUP = "group-1"
SEEDS = (0, 1)
# fold, last training session, test sessions: two half-year folds, each trained on everything before it
FOLDS = ((0, "2010-12-31", dt.date(2011, 1, 3), dt.date(2011, 6, 30)),
         (1, "2011-06-30", dt.date(2011, 7, 1), dt.date(2011, 12, 30)))  # fmt: skip
TRAIN = ["--symbols", "SPY,TLT", "--start", "2010-01-01", "--episodes", "1", "--episode-length", "64", "--n-steps",
         "64", "--batch-size", "32", "--n-epochs", "1", "--n-envs", "1"]  # fmt: skip
BASELINES = {"cash", "buy_and_hold", "monthly_rebalanced", "inverse_vol"}
REPS = 200  # bootstrap resamples: enough for the tests, fast
CONFIG = BootstrapConfig(reps=REPS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_bars: pd.DataFrame) -> list[dict[str, Any]]:
    """The four member runs (tt_runs rows), trained as normal runs and then marked as the group's (fold, seed)."""
    folder = tmp_path_factory.mktemp("group")
    engine = engine_with_bars(f"sqlite:///{folder / 'train.sqlite'}", sample_bars)
    for fold, end, test_start, test_end in FOLDS:
        for seed in SEEDS:
            assert run_train(engine, folder, *TRAIN, "--end", end, "--seed", str(seed)) == 0
            with engine.begin() as conn:
                last = sa.select(tables.runs.c.run_id).order_by(tables.runs.c.started_at.desc()).limit(1)
                conn.execute(tables.runs.update().where(tables.runs.c.run_id == last.scalar_subquery()).values(
                    group_id=GROUP, fold=fold, test_start=test_start, test_end=test_end))  # fmt: skip
    with engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(sa.select(tables.runs).order_by(tables.runs.c.started_at)).mappings()]
    engine.dispose()
    return rows


def add_group(engine: sa.Engine, runs: list[dict[str, Any]], group_id: str = GROUP, **values: Any) -> None:
    """Insert the runs and their finished tt_groups row."""
    row = {"group_id": group_id, "kind": "walk_forward", "created_at": dt.datetime.now(dt.UTC), "status": "finished"}
    with engine.begin() as conn:
        conn.execute(tables.groups.insert().values(**{**row, **values}))
        if runs:
            conn.execute(tables.runs.insert(), [{**run, "group_id": group_id} for run in runs])


@pytest.fixture
def group_db(stored: sa.Engine, trained: list[dict[str, Any]]) -> sa.Engine:
    """The test's database (SQLite and PostgreSQL) with the bars and the group."""
    add_group(stored, trained)
    return stored


@pytest.fixture
def sqlite_group(sqlite_url: str, sample_bars: pd.DataFrame, trained: list[dict[str, Any]]) -> sa.Engine:
    """The group on SQLite only, for the tests that do not depend on the backend."""
    engine = engine_with_bars(sqlite_url, sample_bars)
    add_group(engine, trained)
    return engine


def evaluate(engine: sa.Engine, tmp_path: Path, *args: str) -> int:
    url = engine.url.render_as_string(hide_password=False)
    return run_cli(ev.main, ["--database-url", url, "--out-dir", str(tmp_path / "reports"),
                             "--bootstrap-reps", str(REPS), *args])  # fmt: skip


def rollouts(engine: sa.Engine, row: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The member's agent and the baselines over its test sessions, straight from policy_rollout."""
    run = RunRecord.from_row(row)
    env = run_env_settings(run)
    config = EnvConfig(**env)
    bars = db_utils.load_training_bars(engine, run.symbols, None, run.test_end, include_flagged=True).bars
    assert run.test_start is not None
    market = slice_market(build_market(bars, config), config, run.test_start, run.test_end)
    checkpoint = final_checkpoint(run)
    model = load_model(checkpoint, 2, make_env(market, **env).observation_space.shape)
    policies = {"agent": agent_policy(model, run_normalizer(run, checkpoint)), **baseline_policies(2)}
    return {name: rollout(make_env(market, **env), policy)[0] for name, policy in policies.items()}


def chained(traces: list[pd.DataFrame]) -> pd.DataFrame:
    """Fold traces chained by hand: the returns one after another, net worth compounding from the first start."""
    returns = np.concatenate([daily_returns(t) for t in traces])
    worth = traces[0]["net_worth"].iloc[0] * np.cumprod(1.0 + returns)
    return pd.DataFrame({"daily_return": returns, "net_worth": worth},
                        index=pd.DatetimeIndex(np.concatenate([t.index[1:] for t in traces])))  # fmt: skip


def test_stitched_curves_are_the_fold_rollouts_chained(sqlite_group: sa.Engine, trained: list[dict]) -> None:
    result = ge.evaluate_group(sqlite_group, GROUP, CONFIG, store=False)
    by_fold = {(row["fold"], row["seed"]): rollouts(sqlite_group, row) for row in trained}
    assert set(result.curves) == {("agent", s) for s in SEEDS} | {(b, ge.BASELINE_SEED) for b in BASELINES}
    for (policy, seed), curve in result.curves.items():
        member = seed if policy == "agent" else SEEDS[0]
        expected = chained([by_fold[fold, member][policy] for fold, *_ in FOLDS])
        assert curve.index.equals(expected.index)
        np.testing.assert_array_equal(curve["daily_return"], expected["daily_return"])
        np.testing.assert_allclose(curve["net_worth"], expected["net_worth"], rtol=1e-12)
        assert curve["fold"].tolist() == [0] * 124 + [1] * 126  # fold 1's first session is its start: no return
    # the session between the folds is the one return the stitching leaves out
    assert result.curves["agent", 0].index[123:125].strftime("%m-%d").tolist() == ["06-30", "07-05"]
    chosen = result.document["stitched"]["agent_seed"]
    stitched_agent = result.stitched.traces["agent"]["net_worth"].to_numpy()[1:]
    np.testing.assert_allclose(stitched_agent, result.curves["agent", chosen]["net_worth"], rtol=1e-12)
    seed_sharpes = {s: sharpe(result.curves["agent", s]["daily_return"].to_numpy()) for s in SEEDS}
    expected_sharpes = {str(s): pytest.approx(v, rel=1e-12) for s, v in seed_sharpes.items()}
    assert result.document["stitched"]["seed_sharpes"] == expected_sharpes
    assert chosen == min(SEEDS, key=lambda s: seed_sharpes[s])  # of two seeds, the lower is the median
    stats = result.document["stitched"]
    assert stats["policies"]["agent"]["sharpe"]["estimate"] == pytest.approx(seed_sharpes[chosen], rel=1e-12)
    assert stats["period"] == {"start": "2011-01-03", "end": "2011-12-30", "sessions": 250, "in_sample": False}


def test_aggregates_are_seed_stats_of_the_per_fold_sharpe_ratios(sqlite_group: sa.Engine, trained: list[dict]) -> None:
    result = ge.evaluate_group(sqlite_group, GROUP, CONFIG, store=False)
    fold_returns = {(row["fold"], row["seed"]): rollouts(sqlite_group, row) for row in trained}
    agent = np.array([[sharpe(daily_returns(fold_returns[f, s]["agent"])) for f, *_ in FOLDS] for s in SEEDS])
    aggregate = result.document["aggregate"]
    np.testing.assert_allclose(aggregate["sharpes"]["agent"], agent, rtol=1e-12)
    iqm = iqm_interval(agent, REPS, 0.95, 0)
    assert aggregate["iqm_sharpe"]["agent"] == pytest.approx(dataclasses.asdict(iqm), rel=1e-9)
    assert result.objective == result.document["objective"] == pytest.approx(iqm.estimate, rel=1e-12)
    for baseline in BASELINES:
        scores = [sharpe(daily_returns(fold_returns[f, SEEDS[0]][baseline])) for f, *_ in FOLDS]
        scores = [0.0 if math.isnan(s) else s for s in scores]  # cash: a flat curve scores 0
        np.testing.assert_allclose(aggregate["sharpes"][baseline], [scores], rtol=1e-12)
        expected = improvement_interval(agent, np.array([scores]), REPS, 0.95, 0)
        assert aggregate["improvement"][baseline] == pytest.approx(dataclasses.asdict(expected), rel=1e-9)
    assert aggregate["improvement"]["cash"]["estimate"] == np.mean(agent > 0)
    # the verdict names the baseline the agent is least likely to beat, then the stitched verdict
    hardest = min(aggregate["improvement"], key=lambda b: aggregate["improvement"][b]["estimate"])
    verdict = result.document["verdict"]["text"]
    assert verdict.startswith(f"agent (2 seeds x 2 folds): IQM Sharpe {iqm.estimate:.2f} [")
    assert f"; P(agent > {hardest}) " in verdict and verdict.endswith(result.document["stitched"]["verdict"]["text"])


def test_group_is_stored_printed_as_json_and_reported(
    group_db: sa.Engine, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    assert evaluate(group_db, tmp_path, "--group", "latest", "--json") == 0
    out, err = capfd.readouterr()
    doc = json.loads(out)  # stdout is exactly the document, strict JSON
    assert set(doc) == {"group_id", "kind", "study", "trial", "symbols", "seeds", "members", "folds", "aggregate",
                        "stitched", "objective", "verdict", "bootstrap", "stored", "report"}  # fmt: skip
    assert doc["group_id"] == GROUP and doc["seeds"] == [0, 1] and doc["stored"] and len(doc["members"]) == 4
    assert [(f["fold"], f["start"], f["end"], f["sessions"]) for f in doc["folds"]] == [
        (0, "2011-01-03", "2011-06-30", 124), (1, "2011-07-01", "2011-12-30", 126)]  # fmt: skip
    assert set(doc["stitched"]["policies"]) == BASELINES | {"agent"} and doc["stitched"]["trials"]["n_trials"] == 1
    assert err.startswith(f"group {GROUP} (walk-forward, 2 seeds x 2 folds)")
    assert f"verdict: {doc['verdict']['text']}" in err and "stitched Sharpe by seed: seed 0" in err

    evaluations, curves = read_table(group_db, tables.group_evaluations), read_table(group_db, tables.group_curves)
    assert sorted(evaluations["policy"]) == sorted(BASELINES | {"agent"})
    agent = evaluations.set_index("policy").loc["agent"]
    assert agent["iqm_sharpe"] == pytest.approx(doc["objective"], rel=1e-12)
    iqm = doc["aggregate"]["iqm_sharpe"]["agent"]
    assert (agent["iqm_low"], agent["iqm_high"]) == pytest.approx((iqm["low"], iqm["high"]))
    assert agent["stitched_sharpe"] == pytest.approx(doc["stitched"]["policies"]["agent"]["sharpe"]["estimate"])
    assert (agent["slice_start"], agent["slice_end"]) == (dt.date(2011, 1, 3), dt.date(2011, 12, 30))
    assert agent["document"]["verdict"] == doc["verdict"]
    assert len(curves) == 250 * (len(SEEDS) + len(BASELINES))
    assert set(curves.groupby(["policy", "seed"]).size()) == {250}  # one row per date
    assert set(curves.loc[curves["policy"] != "agent", "seed"]) == {ge.BASELINE_SEED}

    page = (tmp_path / "reports" / GROUP / "report.html").read_text()
    assert page.index('<p class="verdict"') < page.index('<section id="aggregate">')
    assert doc["verdict"]["text"].replace(">", "&gt;") in page
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) == 3

    first = agent["evaluated_at"]
    assert evaluate(group_db, tmp_path, "--group", GROUP) == 0  # a rerun replaces the rows
    again = read_table(group_db, tables.group_evaluations)
    assert len(again) == len(evaluations) and len(read_table(group_db, tables.group_curves)) == len(curves)
    assert again.set_index("policy").loc["agent", "evaluated_at"] > first


def test_trials_count_groups_once_and_ungrouped_runs(sqlite_group: sa.Engine, trained: list[dict]) -> None:
    # a second group over the same bars (stored over the same sessions) and an ungrouped run over a member's bars
    copies = [{**row, "run_id": f"{row['run_id']}-b"} for row in trained]
    add_group(sqlite_group, copies, "group-2")
    other = ge.evaluate_group(sqlite_group, "group-2", CONFIG, store=True)
    with sqlite_group.begin() as conn:
        conn.execute(tables.runs.insert().values(**{**trained[0], "run_id": "loose", "group_id": None}))
    doc = ge.evaluate_group(sqlite_group, GROUP, CONFIG, store=False).document
    trials = doc["stitched"]["trials"]
    sharpes = [other.document["stitched"]["policies"]["agent"]["sharpe"]["estimate"],
               doc["stitched"]["policies"]["agent"]["sharpe"]["estimate"]]  # fmt: skip
    assert trials == {"n_trials": 3, "ids": [GROUP, "group-2", "loose"], "runs": 9, "sharpes": sharpes}
    assert doc["stitched"]["deflated_sharpe"]["n_trials"] == 3 and "after 3 trials" in doc["verdict"]["text"]


def test_a_seeds_group_is_judged_on_its_pinned_sessions_as_evaluate_run_judges_a_run(
    sqlite_group: sa.Engine, trained: list[dict], tmp_path: Path
) -> None:
    # train_mvp pins a seeds group's held-out sessions at creation; the bars stored after 2012-06-29 (ingested
    # later, say) are not judged
    pinned = {"fold": None, "test_start": dt.date(2011, 7, 1), "test_end": dt.date(2012, 6, 29)}
    members = [{**row, "run_id": f"{row['run_id']}-s", **pinned} for row in trained if row["fold"] == 1]
    add_group(sqlite_group, members, "seeds", kind="seeds")
    result = ge.evaluate_group(sqlite_group, "seeds", CONFIG, store=False)
    (fold,) = result.document["folds"]
    assert (fold["fold"], fold["start"], fold["end"]) == (None, "2011-07-01", "2012-06-29")
    assert result.document["verdict"]["text"].startswith("agent (2 seeds x 1 fold): IQM Sharpe")
    assert evaluate(sqlite_group, tmp_path, "--run", members[0]["run_id"], "--end", "2012-06-29") == 0
    e = tables.evaluations
    with sqlite_group.connect() as conn:
        stored = conn.execute(sa.select(e.c.sharpe).where(e.c.policy == "agent")).scalar_one()
    assert fold["agent_sharpe"][str(members[0]["seed"])]["estimate"] == pytest.approx(stored, rel=1e-12)


def test_unknown_unfinished_and_misused_groups_end_in_one_line(
    sqlite_group: sa.Engine, trained: list[dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert evaluate(sqlite_group, tmp_path, "--group", "nope") == ExitCode.NOT_FOUND
    assert capsys.readouterr().err == "error: group 'nope' is not in tt_groups\n"
    assert evaluate(sqlite_group, tmp_path, "--group", GROUP, "--start", "2011-01-03") == ExitCode.USAGE
    assert "--group judges each run on its own test sessions" in capsys.readouterr().err
    failed = trained[2]["run_id"]
    with sqlite_group.begin() as conn:
        conn.execute(tables.runs.update().where(tables.runs.c.run_id == failed).values(status="failed", error="boom"))
    assert evaluate(sqlite_group, tmp_path, "--group", GROUP) == ExitCode.REFUSED
    err = capsys.readouterr().err
    assert f"run {failed} (fold 1, seed 0) is failed (boom)" in err and err.count("\n") == 1
    with sqlite_group.begin() as conn:
        conn.execute(tables.groups.update().values(status="interrupted"))
    assert evaluate(sqlite_group, tmp_path, "--group", GROUP) == ExitCode.REFUSED
    assert f"group {GROUP} is interrupted, not finished" in capsys.readouterr().err
    assert evaluate(sqlite_group, tmp_path, "--group", "latest") == ExitCode.NOT_FOUND  # latest: newest finished
    assert capsys.readouterr().err.startswith("error: no finished run group in tt_groups")
    assert read_table(sqlite_group, tables.group_evaluations).empty


def test_too_few_test_sessions_for_the_statistics_are_refused(sqlite_group: sa.Engine, trained: list[dict]) -> None:
    short = {"fold": None, "test_start": dt.date(2011, 7, 1), "test_end": dt.date(2011, 7, 12)}  # 7 sessions
    add_group(sqlite_group, [{**trained[2], "run_id": "short", **short}], "short", kind="seeds")
    with pytest.raises(UserError, match=r"6 daily return\(s\), the statistics need at least 8") as caught:
        ge.evaluate_group(sqlite_group, "short", CONFIG, store=False)
    assert caught.value.exit_code == ExitCode.REFUSED


def test_empty_group_and_missing_seed_are_refused(sqlite_group: sa.Engine, trained: list[dict]) -> None:
    add_group(sqlite_group, [], "empty")
    with pytest.raises(UserError, match="group empty has no runs") as caught:
        ge.evaluate_group(sqlite_group, "empty", CONFIG, store=False)
    assert caught.value.exit_code == ExitCode.REFUSED
    with sqlite_group.begin() as conn:
        conn.execute(tables.runs.delete().where(tables.runs.c.run_id == trained[3]["run_id"]))
    with pytest.raises(UserError, match=r"the folds hold different seeds \{0: \[0, 1\], 1: \[0\]\}"):
        ge.evaluate_group(sqlite_group, GROUP, CONFIG, store=False)


# ------------------------------------------------------------------------------------------- pure parts
def trace(worth: list[float], start: str) -> pd.DataFrame:
    dates = pd.bdate_range(start, periods=len(worth), name="date")
    return pd.DataFrame({"net_worth": worth, "cash": worth, "fees": 1.0, "turnover": 0.5}, index=dates)


def test_stitch_continues_each_fold_from_the_previous_end_and_refuses_overlaps() -> None:
    first, second = trace([100.0, 110.0, 99.0], "2020-01-01"), trace([50.0, 60.0, 45.0], "2020-01-06")
    joined = ge.stitch([first, second])
    assert joined["net_worth"].tolist() == pytest.approx([100.0, 110.0, 99.0, 118.8, 89.1])
    np.testing.assert_allclose(daily_returns(joined), [0.1, -0.1, 0.2, -0.25])
    assert joined["fees"].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.98, 1.98])  # money scales, ratios do not
    assert joined["turnover"].tolist() == [0.5] * 5
    with pytest.raises(UserError, match="overlap") as caught:
        ge.stitch([first, trace([50.0, 60.0], "2020-01-02")])
    assert caught.value.exit_code == ExitCode.REFUSED


def test_scores_and_median_seed() -> None:
    assert ge.sharpe_score(np.zeros(5), "cash") == 0.0
    assert ge.sharpe_score(np.array([0.01, -0.01, 0.02]), "x") == pytest.approx(sharpe(np.array([0.01, -0.01, 0.02])))
    with pytest.raises(UserError, match=r"run r: Sharpe ratio undefined over 1 daily returns"):
        ge.sharpe_score(np.array([0.01]), "run r")
    assert ge.median_seed({3: 0.5, 1: -1.0, 2: 2.0}) == 3
    assert ge.median_seed({0: 1.0, 1: 0.0, 2: 3.0, 3: 2.0}) == 0  # even count: the lower middle one
