"""The agent learns: with the default settings and a CI-sized budget, PPO cracks each planted edge.

Each test trains ``train_mvp.py`` (default settings, ``--timesteps BUDGET``) on the first part of a planted market
(:mod:`planted_markets`) for three seeds, evaluates the final checkpoint on the held-out tail with
``evaluate_mvp.py`` (so through the run's own observation normalization and action map) and compares the median
held-out Sharpe ratio after costs with the best baseline and with the oracle run through the same environment.
How the budget and thresholds were chosen: docs/training.md ("Learning tests").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import evaluate_mvp
import planted_markets
import policy_rollout
import tt_schema as tables
from conftest import engine_with_bars, read_table, run_train
from market import build_market
from tensortrade_risk_module import EnvConfig

N_DATES, HOLDOUT = 4000, 1500  # 2500 training sessions, 1500 held out (6 years: Sharpe standard error ~0.4)
BUDGET = 200_000  # env steps per seed (--timesteps): ~12 s per seed on a quiet 2-core machine, ~35 s loaded
SEEDS = (0, 1, 2)
# The thresholds. Measured at BUDGET over seeds 0-2 with these defaults (docs/training.md, ablation row
# 11), median agent / best baseline / oracle: momentum 2.98 / 0.18 / 3.80, cross_section 3.82 / 0.95 / 4.63,
# vol_timing 3.09 / 1.78 / 5.19 -- margins over the thresholds 1.8 / 1.9 / 0.3 Sharpe (beat-by) and
# 0.28 / 0.33 / 0.10 (oracle fraction); vol_timing is the tight one (if it fails, raise BUDGET to 300k: the
# budget binds, ablation row 8; do not loosen the thresholds).
BEAT_BASELINE_BY, ORACLE_FRACTION = 1.0, 0.5
# Null market: agent - best baseline measured over 9 runs (seeds 0-2; 16 x 256 envs, 64 x 64 with 5 and with 3
# epochs): -0.96 .. -0.11, median -0.52; 0.5 allows for the ~0.3 standard error of a Sharpe difference over the
# 6 held-out years.
NULL_NOISE = 0.5


def held_out(tmp_path: Path, kind: planted_markets.EdgeKind, seed: int) -> dict[str, float]:
    """Held-out Sharpe of the agent (trained with the defaults), the oracle and the best baseline for one seed."""
    bars = planted_markets.planted_bars(kind, n_dates=N_DATES, seed=seed)
    dates = np.sort(bars["date"].unique())
    folder = tmp_path / f"{kind}_{seed}"
    folder.mkdir()
    engine = engine_with_bars(f"sqlite:///{folder / 'db.sqlite'}", bars)
    symbols = ",".join(sorted(bars["symbol"].unique()))
    code = run_train(engine, folder, "--symbols", symbols, "--end", str(dates[N_DATES - HOLDOUT - 1]),
                     "--timesteps", str(BUDGET), "--seed", str(seed), "--no-step-log")  # fmt: skip
    assert code == 0
    settings = evaluate_mvp.EvaluateSettings(run="latest", out_dir=folder / "reports", bootstrap_reps=100)
    evaluate_mvp.evaluate_run(engine, settings)
    sharpe = read_table(engine, tables.evaluations).set_index("policy")["sharpe"].astype(float).fillna(0.0)
    engine.dispose()
    config = EnvConfig()  # the oracle reads the default observation; costs and timing are the defaults too
    market = policy_rollout.slice_market(build_market(bars, config), config, dates[N_DATES - HOLDOUT], None)
    rule = planted_markets.oracle_weights(kind, len(market.symbols))
    oracle = policy_rollout.evaluate_policies(market, {}, {"oracle": lambda obs, date, previous: ("target", rule(obs))})
    best = sharpe.drop("agent").max()
    return {"agent": sharpe["agent"], "best": best, "oracle": oracle.metrics.at["oracle", "sharpe"]}


def medians(tmp_path: Path, kind: planted_markets.EdgeKind) -> pd.Series:
    results = pd.DataFrame([held_out(tmp_path, kind, seed) for seed in SEEDS], index=list(SEEDS))
    print(f"\n{kind}:\n{results.round(2)}")  # shown with pytest -s: the numbers behind a failure
    return results.median()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["momentum", "vol_timing", "cross_section"])
def test_agent_cracks_planted_edge(tmp_path: Path, kind: planted_markets.EdgeKind) -> None:
    m = medians(tmp_path, kind)
    assert m["oracle"] >= m["best"] + 2.0  # the edge is worth finding (planted_markets' design goal)
    assert m["agent"] >= m["best"] + BEAT_BASELINE_BY
    assert m["agent"] >= ORACLE_FRACTION * m["oracle"]


@pytest.mark.slow
def test_agent_finds_nothing_in_null_market(tmp_path: Path) -> None:
    m = medians(tmp_path, "null")
    assert m["agent"] - m["best"] <= NULL_NOISE
