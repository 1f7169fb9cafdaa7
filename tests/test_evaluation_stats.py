"""evaluation_stats against reference values (arch, the papers' worked examples, rliable, scipy) and for honesty:
on null markets the edge verdict is rare, on a planted edge it is found."""

from __future__ import annotations

import json
import math
from typing import Literal

import numpy as np
import pytest
from arch.bootstrap import SPA, CircularBlockBootstrap, IIDBootstrap, StationaryBootstrap, optimal_block_length
from scipy import signal, stats

import evaluation_stats as es
import metrics
import seed_stats as seeds
from evaluation_stats import BootstrapConfig, DeflatedSharpe, Interval, PairedComparison, SpaResult


def _returns(seed: int, n: int = 500, mean: float = 0.0004, vol: float = 0.01) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, vol, n)


# ------------------------------------------------------------------------------------ metrics
def test_row_metrics_equal_the_metrics_module() -> None:
    rng = np.random.default_rng(0)
    crash = np.concatenate([np.full(30, -0.03), np.full(30, 0.01)])
    rows = np.vstack([rng.normal(0.001, 0.02, 60), np.zeros(60), np.full(60, 0.001), crash, -crash])
    for row in rows:
        assert es.sharpe_rows(row) == pytest.approx(metrics.sharpe(row), rel=1e-12, nan_ok=True)
        assert es.cagr_rows(row) == pytest.approx(metrics.cagr(row), rel=1e-12)
        assert es.max_drawdown_rows(row) == pytest.approx(metrics.max_drawdown(row), rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(es.sharpe_rows(rows[[0, 3]]), [metrics.sharpe(rows[0]), metrics.sharpe(rows[3])])
    assert es.ANNUALIZATION == metrics.ANNUALIZATION


# ------------------------------------------------------------------------------------ bootstraps vs arch
@pytest.mark.parametrize("kind", ["stationary", "circular"])
def test_policy_intervals_are_archs_percentile_intervals(kind: Literal["stationary", "circular"]) -> None:
    r = signal.lfilter([1.0], [1.0, -0.5], _returns(1, 400))  # AR(1), so blocks of several days
    config = BootstrapConfig(reps=300, seed=7, kind=kind)
    block = es.block_length(r, kind)
    assert block == optimal_block_length(r)[kind].iloc[0] > 2
    ours = es.policy_statistics(r, es.draw_resamples(len(r), block, config))

    bootstrap = (
        StationaryBootstrap(block, r, seed=7)  # type: ignore[arg-type]  # a fractional block length, as in arch
        if kind == "stationary"
        else CircularBlockBootstrap(math.ceil(block), r, seed=7)
    )
    low, high = bootstrap.conf_int(
        lambda x: np.array([metrics.sharpe(x), metrics.cagr(x), metrics.max_drawdown(x)]), reps=300, method="percentile"
    )
    intervals = (ours.sharpe, ours.cagr, ours.max_drawdown)
    np.testing.assert_allclose([i.low for i in intervals], low, rtol=1e-10)
    np.testing.assert_allclose([i.high for i in intervals], high, rtol=1e-10)
    assert ours.sharpe.estimate == pytest.approx(metrics.sharpe(r))
    assert ours.sharpe.low < ours.sharpe.estimate < ours.sharpe.high


def test_paired_intervals_are_archs_and_p_values_invert_them() -> None:
    noise = _returns(2, 600, mean=0.0)
    config = BootstrapConfig(reps=400, seed=3)
    for shift in (0.0, 0.002):  # no difference, a clear one
        a, b = _returns(3, 600) + shift, 0.5 * _returns(3, 600) + noise
        block = es.block_length(np.column_stack([a, b]))
        ours = es.paired_comparison(a, b, es.draw_resamples(len(a), block, config))
        low, high = StationaryBootstrap(block, a, b, seed=3).conf_int(  # type: ignore[arg-type]
            lambda x, y: np.array([metrics.sharpe(x) - metrics.sharpe(y), x.mean() - y.mean()]),
            reps=400,
            method="percentile",
        )
        diffs = (ours.sharpe_difference, ours.mean_difference)
        np.testing.assert_allclose([d.low for d in diffs], low, rtol=1e-10)
        np.testing.assert_allclose([d.high for d in diffs], high, rtol=1e-10)
        for d, p in zip(diffs, (ours.sharpe_p_value, ours.mean_p_value), strict=True):
            assert (p < 0.05) == (not d.low <= 0.0 <= d.high)
    assert ours.sharpe_p_value < 0.01 and ours.sharpe_difference.low > 0  # the clear one


def test_cash_has_no_sharpe_difference_and_flat_series_a_unit_block() -> None:
    assert es.block_length(np.zeros(300)) == 1.0
    r = _returns(4, 300)
    c = es.paired_comparison(r, np.zeros(300), es.draw_resamples(300, 1.0, BootstrapConfig(reps=200)))
    assert math.isnan(c.sharpe_difference.estimate) and math.isnan(c.sharpe_p_value)
    assert c.mean_difference.estimate == pytest.approx(r.mean())


# ------------------------------------------------------------------------------------ PSR and DSR
def test_dsr_reproduces_the_papers_numerical_example() -> None:
    # Bailey & López de Prado (2014): annualized SR 2.5 over 1250 days (250 a year), 100 trials with
    # V[SR] = 1/2 annualized, skewness -3, kurtosis 10: SR0 = 0.1132 per day and DSR = 0.9004.
    sharpe, variance = 2.5 / math.sqrt(250), 0.5 / 250
    benchmark = es.expected_max_sharpe(100, variance)
    assert benchmark == pytest.approx(0.1132, abs=5e-5)
    assert es.psr_from_moments(sharpe, benchmark, 1250, -3.0, 10.0) == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_matches_simulated_maxima() -> None:
    maxima = np.random.default_rng(5).standard_normal((20000, 100)).max(axis=1)
    assert es.expected_max_sharpe(100, 4.0) == pytest.approx(2.0 * maxima.mean(), rel=0.02)
    assert es.expected_max_sharpe(1, 4.0) == 0.0


def test_sharpe_standard_error_matches_simulation_for_skewed_fat_tailed_returns() -> None:
    # -Gamma(2): skewness -sqrt(2), Pearson kurtosis 6; true per-day Sharpe 0.1.
    shape, n = 2.0, 500
    draws = -np.random.default_rng(6).gamma(shape, size=(4000, n))
    returns = (draws + shape) / math.sqrt(shape) + 0.1
    simulated = es.sharpe_rows(returns, annualization=1).std()
    assert es.sharpe_standard_error(0.1, n, -math.sqrt(2), 6.0) == pytest.approx(simulated, rel=0.03)
    normal = es.sharpe_standard_error(0.1, n, 0.0, 3.0)  # Lo (2002): sqrt((1 + SR^2/2) / (n - 1))
    assert normal == pytest.approx(math.sqrt((1 + 0.1**2 / 2) / (n - 1)))
    assert simulated > 1.04 * normal  # the skew and kurtosis terms matter


def test_psr_is_calibrated_under_the_null() -> None:
    psr = [es.probabilistic_sharpe_ratio(_returns(100 + i, 250, mean=0.0)) for i in range(300)]
    assert 0.02 <= np.mean(np.array(psr) > 0.95) <= 0.09


def test_dsr_is_the_psr_for_one_trial_and_falls_with_more() -> None:
    r = _returns(7, 750, mean=0.0008)
    single = es.deflated_sharpe_ratio(r, 1)
    assert single.dsr == pytest.approx(es.probabilistic_sharpe_ratio(r)) and single.expected_max_sharpe == 0.0
    trials = [0.2, 1.1, -0.4, 0.7, 0.9, 0.1, 1.6, -0.2, 0.5, es.deflated_sharpe_ratio(r, 1).sharpe]
    deflated = es.deflated_sharpe_ratio(r, 14, trials)
    assert deflated.variance_source == "trials" and deflated.dsr < single.dsr
    expected = es.expected_max_sharpe(14, float(np.var(trials, ddof=1)) / 252) * math.sqrt(252)
    assert deflated.expected_max_sharpe == pytest.approx(expected)
    assert es.deflated_sharpe_ratio(r, 14).variance_source == "null"
    with pytest.raises(ValueError, match="fewer than"):
        es.deflated_sharpe_ratio(r, 2, trials)


# ------------------------------------------------------------------------------------ SPA
def test_spa_is_archs_spa_on_negated_returns() -> None:
    agent, noise = _returns(8, 500, mean=0.0), _returns(9, 500, mean=0.0)
    models = {"better": agent + 0.002 + 0.5 * noise, "worse": agent - 0.001 + noise}
    config = BootstrapConfig(reps=300, seed=11)
    ours = es.spa_test(agent, models, 2.5, config)
    reference = SPA(-agent, -np.column_stack(list(models.values())), block_size=2.5, reps=300, seed=11)  # type: ignore[arg-type]
    reference.compute()
    assert (ours.lower, ours.consistent, ours.upper) == tuple(reference.pvalues[["lower", "consistent", "upper"]])
    assert ours.consistent < 0.05 and ours.best_model == "better"
    dominant = es.spa_test(models["better"], {"agent": agent, "worse": models["worse"]}, 2.5, config)
    assert (
        dominant.consistent > 0.2 and dominant.upper == 1.0
    )  # never rejects; near 0.5, not 1: arch has no max(0, .) floor


# ------------------------------------------------------------------------------------ seeds (rliable)
def test_iqm_and_probability_of_improvement_match_rliables_examples() -> None:
    assert seeds.interquartile_mean(np.arange(1, 101)) == pytest.approx(np.mean(np.arange(26, 76)))
    x = np.array([[1, 2], [2, 2], [1, 1], [2, 1]])  # rliable's tests/rliable/metrics_test.py
    y = np.array([[1, 1], [2, 2], [3, 3]])
    assert (seeds.interquartile_mean(x), seeds.interquartile_mean(y)) == (1.5, 2.0)
    assert seeds.probability_of_improvement(x, y) == pytest.approx(1 / 3)
    assert seeds.probability_of_improvement(y, y) == 0.5


def test_probability_of_improvement_is_the_mann_whitney_u() -> None:
    rng = np.random.default_rng(12)
    x, y = rng.integers(0, 5, 12).astype(float), rng.integers(0, 5, 9).astype(float)  # with ties
    u = stats.mannwhitneyu(x, y, alternative="greater").statistic
    assert seeds.probability_of_improvement(x, y) == pytest.approx(u / (len(x) * len(y)))
    interval = seeds.improvement_interval(x, y, reps=500, seed=1)
    assert 0.0 <= interval.low <= interval.estimate <= interval.high <= 1.0


def test_iqm_interval_on_one_task_is_archs_iid_bootstrap() -> None:
    x = np.random.default_rng(13).normal(size=20)
    ours = seeds.iqm_interval(x, reps=500, seed=5)
    low, high = IIDBootstrap(x, seed=5).conf_int(lambda v: stats.trim_mean(v, 0.25), reps=500, method="percentile")
    assert (ours.low, ours.high) == pytest.approx((low[0], high[0]))
    # Stratified: runs are resampled within each task, so tasks whose runs agree leave no uncertainty.
    tasks = np.tile([0.0, 1.0, 5.0, 9.0], (5, 1))
    assert seeds.iqm_interval(tasks, reps=200) == Interval(3.0, 3.0, 3.0)


# ------------------------------------------------------------------------------------ verdict
def test_verdict_rules_and_wording() -> None:
    strong = PairedComparison(Interval(0.9, 0.2, 1.6), 0.01, Interval(4e-4, 1e-4, 7e-4), 0.02)
    weak = PairedComparison(Interval(-0.9, -1.6, -0.2), 0.01, Interval(-4e-4, -7e-4, -1e-4), 0.02)
    cash = PairedComparison(Interval(math.nan, math.nan, math.nan), math.nan, Interval(5e-4, 1e-4, 9e-4), 0.01)
    low, high = DeflatedSharpe(0.03, 0.3, 0.9, 14, 0.4, "trials"), DeflatedSharpe(0.97, 1.8, 0.9, 14, 0.4, "trials")
    calm, beaten = SpaResult(0.5, 0.6, 0.6, "inverse_vol"), SpaResult(0.002, 0.004, 0.004, "inverse_vol")

    none = es.build_verdict({"buy_and_hold": strong, "inverse_vol": weak}, low, calm)
    assert none.text == (
        "agent vs inverse_vol: Sharpe difference -0.90 [-1.60, -0.20], p = 0.01; "
        "deflated Sharpe 0.03 after 14 trials: no evidence of an edge"
    )
    assert not none.edge and len(none.details) == 2
    assert none.details[0] == (
        "agent vs buy_and_hold: Sharpe difference +0.90 [+0.20, +1.60], p = 0.01; "
        "mean daily return difference +4.0 bp [+1.0, +7.0], p = 0.02"
    )
    edge = es.build_verdict({"buy_and_hold": strong, "cash": cash}, high, calm)
    assert edge.edge and edge.text.endswith(
        "deflated Sharpe 0.97 after 14 trials: evidence of an edge over every baseline"
    )
    assert not es.build_verdict({"buy_and_hold": strong}, low, calm).edge  # DSR too low
    lost = es.build_verdict({"buy_and_hold": strong}, high, beaten)
    assert lost.beaten and not lost.edge and lost.text.endswith("inverse_vol does better (SPA p = 0.004)")


# ------------------------------------------------------------------------------------ honesty
QUICK = BootstrapConfig(reps=299, seed=1)


def _null_case(seed: int) -> dict[str, np.ndarray]:
    """Four i.i.d. fat-tailed zero-mean assets; a random (odd seeds) or constant policy; two baselines."""
    rng = np.random.default_rng(seed)
    market = rng.standard_t(5, size=(500, 4)) * 0.008
    weights = rng.dirichlet(np.ones(4), size=500 if seed % 2 else 1)
    return {"agent": (weights * market).sum(axis=1), "equal_weight": market.mean(axis=1), "first": market[:, 0]}


def test_null_markets_rarely_show_an_edge() -> None:
    verdicts = [es.evaluation_statistics(_null_case(seed), config=QUICK).verdict for seed in range(24)]
    assert sum(v.edge for v in verdicts) <= 2  # at most ~10% at the 5% level
    assert sum(v.beaten for v in verdicts) <= 2


def test_paired_test_size_on_null_pairs() -> None:
    resamples = es.draw_resamples(500, 2.0, BootstrapConfig(reps=299, seed=2))  # independent data, shared rows
    cases = [_null_case(1000 + seed) for seed in range(150)]
    comparisons = [es.paired_comparison(c["agent"], c["equal_weight"], resamples) for c in cases]
    assert np.mean([c.sharpe_p_value < 0.05 for c in comparisons]) <= 0.10
    assert np.mean([c.mean_p_value < 0.05 for c in comparisons]) <= 0.10


def test_a_planted_edge_is_found() -> None:
    # 16 noise assets; each day one of them gains an extra 3/sqrt(252) sigma and the agent holds exactly that one
    # (annualized Sharpe 3, against about 0.75 for equal weight).
    for seed in range(5):
        rng = np.random.default_rng(seed)
        market = rng.normal(0.0, 0.01, (1260, 16))
        winner = rng.integers(16, size=1260)
        market[np.arange(1260), winner] += 3.0 / math.sqrt(252) * 0.01
        returns = {"agent": market[np.arange(1260), winner], "equal_weight": market.mean(axis=1), "first": market[:, 0]}
        result = es.evaluation_statistics(returns, n_trials=20, config=QUICK)
        assert result.verdict.edge, result.verdict.text


def test_evaluation_statistics_as_json() -> None:
    returns = {"agent": _returns(14, 300), "cash": np.zeros(300)}
    result = es.evaluation_statistics(returns, config=BootstrapConfig(reps=100))
    document = json.loads(json.dumps(es.to_jsonable(result), allow_nan=False))
    assert document["policies"]["cash"]["sharpe"]["estimate"] is None
    assert document["comparisons"]["cash"]["mean_difference"]["estimate"] == pytest.approx(returns["agent"].mean())
    assert document["verdict"]["text"] == result.verdict.text
    with pytest.raises(ValueError, match="different numbers of days"):
        es.evaluation_statistics({"agent": np.zeros(5), "cash": np.zeros(6)})
