"""How sure an evaluation can be: bootstrap intervals, PSR/DSR, paired tests, SPA, a verdict.

Pure functions of daily simple-return arrays (numpy/scipy/arch only, no database); the aggregates across seeds
are in ``seed_stats.py``. Definitions, formulas, sources and how to read the verdict: docs/statistics.md. The
metrics follow the project's conventions (``metrics.py``): Sharpe = mean / std(ddof=1) * sqrt(252), risk-free 0;
CAGR on trading days; max drawdown <= 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from arch.bootstrap import SPA, CircularBlockBootstrap, StationaryBootstrap, optimal_block_length
from scipy import stats

ANNUALIZATION = 252  # trading days a year, = features.TRADING_DAYS_PER_YEAR (checked by the tests)
_CHUNK_ROWS = 256  # resamples evaluated at once: bounds the (rows x days) temporaries


# ------------------------------------------------------------------------------------ metrics, row-wise
# Each row of ``r`` is one return series; the value per row equals metrics.py's function of the same name.
def sharpe_rows(r: np.ndarray, annualization: int = ANNUALIZATION) -> np.ndarray:
    """mean / std(ddof=1) * sqrt(annualization) per row; NaN for 0/0 (a flat zero row), ±inf for a flat non-zero row."""
    # A constant row has zero dispersion exactly; np.std could leave a 1e-18 residue.
    std = np.where(r.max(axis=-1) == r.min(axis=-1), 0.0, r.std(axis=-1, ddof=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return r.mean(axis=-1) / std * math.sqrt(annualization)


def cagr_rows(r: np.ndarray, annualization: int = ANNUALIZATION) -> np.ndarray:
    """(prod(1 + r)) ** (annualization / n) - 1 per row: compound growth on trading days."""
    return np.prod(1.0 + r, axis=-1) ** (annualization / r.shape[-1]) - 1.0


def max_drawdown_rows(r: np.ndarray) -> np.ndarray:
    """min over t of V_t / max(V_0..V_t) - 1 per row, with V_0 = 1: a number <= 0."""
    value = np.cumprod(1.0 + r, axis=-1)
    peak = np.maximum(np.maximum.accumulate(value, axis=-1), 1.0)
    return np.minimum((value / peak).min(axis=-1) - 1.0, 0.0)


# ------------------------------------------------------------------------------------ block bootstrap
@dataclass(frozen=True)
class BootstrapConfig:
    """How every interval of one evaluation is drawn (the same resample rows serve every series)."""

    reps: int = 2000
    level: float = 0.95
    seed: int = 0
    kind: Literal["stationary", "circular"] = "stationary"
    block_size: float | None = None  # None: Politis-White estimate (arch.bootstrap.optimal_block_length)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval (NaN when the statistic is undefined)."""

    estimate: float
    low: float
    high: float


@dataclass(frozen=True, eq=False)
class Resamples:
    """Resample indices, one row per bootstrap replication, applied identically to every series."""

    indices: np.ndarray  # (reps, n) int64
    level: float


def block_length(returns: np.ndarray, kind: Literal["stationary", "circular"] = "stationary") -> float:
    """Politis-White optimal (mean) block length; for several columns the longest; 1.0 for flat or white noise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lengths = optimal_block_length(np.asarray(returns, dtype=float))[kind].to_numpy()
    finite = lengths[np.isfinite(lengths)]  # a flat column has no autocorrelation to estimate: NaN
    return max(1.0, float(finite.max())) if finite.size else 1.0


def draw_resamples(n: int, block_size: float, config: BootstrapConfig) -> Resamples:
    """``config.reps`` index rows from arch's stationary or circular bootstrap, in arch's own draw order."""
    index = np.arange(n)
    if config.kind == "circular":
        bootstrap: CircularBlockBootstrap = CircularBlockBootstrap(math.ceil(block_size), index, seed=config.seed)
    else:
        # arch draws fractional mean block lengths; its annotation says int
        bootstrap = StationaryBootstrap(block_size, index, seed=config.seed)  # type: ignore[arg-type]
    rows = np.stack([bootstrap.update_indices() for _ in range(config.reps)])
    return Resamples(rows, config.level)


def _replicate(indices: np.ndarray, statistic: Callable[..., np.ndarray], *series: np.ndarray) -> np.ndarray:
    """``statistic`` of every resample (rows of ``indices``) of the series, chunked: (reps, k)."""
    parts = [statistic(*(s[indices[i : i + _CHUNK_ROWS]] for s in series)) for i in range(0, len(indices), _CHUNK_ROWS)]
    return np.concatenate(parts)


def percentile_interval(estimate: float, replicates: np.ndarray, level: float) -> Interval:
    """Percentile interval, computed as arch's ``conf_int(method="percentile")`` does; NaN resamples ignored."""
    finite = replicates[~np.isnan(replicates)]
    if math.isnan(estimate) or not finite.size:
        return Interval(float(estimate), math.nan, math.nan)
    alpha = (1.0 - level) / 2
    low, high = np.percentile(finite, [100 * alpha, 100 * (1.0 - alpha)])
    return Interval(float(estimate), float(low), float(high))


def _p_value(estimate: float, replicates: np.ndarray) -> float:
    """Two-sided p-value of "the statistic is 0" that inverts the percentile interval (0 outside the 95%
    interval <=> p < 0.05), with the +1 correction so it is never 0."""
    finite = replicates[~np.isnan(replicates)]
    if math.isnan(estimate) or not finite.size:
        return math.nan
    below = (np.count_nonzero(finite <= 0.0) + 1) / (finite.size + 1)
    above = (np.count_nonzero(finite >= 0.0) + 1) / (finite.size + 1)
    return min(1.0, 2.0 * min(below, above))


# ------------------------------------------------------------------------------------ PSR and DSR
def sharpe_standard_error(sharpe: float, n: int, skew: float, kurtosis: float) -> float:
    """Standard error of a per-period Sharpe ratio from n i.i.d. returns with the given skewness and (Pearson,
    normal = 3) kurtosis: sqrt((1 - skew*SR + (kurtosis - 1)/4 * SR^2) / (n - 1)) (Bailey & Lopez de Prado 2012)."""
    variance = (1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2) / (n - 1)
    return math.sqrt(variance) if variance > 0 else math.nan


def psr_from_moments(sharpe: float, benchmark: float, n: int, skew: float, kurtosis: float) -> float:
    """P(true Sharpe > benchmark) = Phi((SR - SR*) / SE(SR)), both Sharpe ratios per period (not annualized)."""
    return float(stats.norm.cdf((sharpe - benchmark) / sharpe_standard_error(sharpe, n, skew, kurtosis)))


def _moments(returns: np.ndarray, annualization: int) -> tuple[float, int, float, float]:
    """(per-period Sharpe, n, skewness, Pearson kurtosis); the moments are the paper's (biased) sample ones."""
    r = np.asarray(returns, dtype=float)
    if len(r) < 3 or r.max() == r.min():
        return math.nan, len(r), math.nan, math.nan
    per_period = float(sharpe_rows(r, annualization)) / math.sqrt(annualization)
    return per_period, len(r), float(stats.skew(r)), float(stats.kurtosis(r, fisher=False))


def probabilistic_sharpe_ratio(
    returns: np.ndarray, benchmark: float = 0.0, annualization: int = ANNUALIZATION
) -> float:
    """PSR: probability that the true Sharpe exceeds ``benchmark`` (annualized), given skewness and kurtosis."""
    sharpe, n, skew, kurtosis = _moments(returns, annualization)
    return psr_from_moments(sharpe, benchmark / math.sqrt(annualization), n, skew, kurtosis)


def expected_max_sharpe(n_trials: int, variance: float) -> float:
    """E[max Sharpe] of n_trials skill-less trials whose Sharpe ratios have this variance (Bailey & Lopez de
    Prado 2014): sqrt(V) * ((1 - g) * Phi^-1(1 - 1/N) + g * Phi^-1(1 - 1/(N e))), g = Euler-Mascheroni; 0 for N = 1."""
    if n_trials <= 1:
        return 0.0
    z = (1 - np.euler_gamma) * stats.norm.ppf(1 - 1 / n_trials) + np.euler_gamma * stats.norm.ppf(
        1 - 1 / (n_trials * math.e)
    )
    return float(math.sqrt(variance) * z)


@dataclass(frozen=True)
class DeflatedSharpe:
    """The DSR and what went into it; Sharpe ratios annualized."""

    dsr: float  # P(true Sharpe > expected_max_sharpe)
    sharpe: float
    expected_max_sharpe: float
    n_trials: int
    trial_sharpe_std: float
    variance_source: Literal["trials", "null"]  # "null": fewer than 2 trial Sharpes, see deflated_sharpe_ratio


def deflated_sharpe_ratio(
    returns: np.ndarray,
    n_trials: int,
    trial_sharpes: Sequence[float] = (),
    annualization: int = ANNUALIZATION,
) -> DeflatedSharpe:
    """DSR of the selected strategy's daily returns after ``n_trials`` trials over the same data.

    ``trial_sharpes`` are the (annualized) Sharpe ratios of every trial, this one included; their variance sets
    the expected maximum. With fewer than 2 of them the variance of the Sharpe estimator itself under the null,
    1 / (n - 1) per period, stands in (the spread pure-noise trials would have). With n_trials = 1 the DSR is
    the PSR against 0.
    """
    if n_trials < max(1, len(trial_sharpes)):
        raise ValueError(f"n_trials={n_trials} is fewer than the {len(trial_sharpes)} trial Sharpe ratios given")
    sharpe, n, skew, kurtosis = _moments(returns, annualization)
    known = np.asarray([s for s in trial_sharpes if math.isfinite(s)], dtype=float)
    source: Literal["trials", "null"]
    if known.size >= 2:
        variance, source = float(np.var(known, ddof=1)) / annualization, "trials"
    else:
        variance, source = 1.0 / max(n - 1, 1), "null"
    benchmark = expected_max_sharpe(n_trials, variance)
    root = math.sqrt(annualization)
    return DeflatedSharpe(
        dsr=psr_from_moments(sharpe, benchmark, n, skew, kurtosis),
        sharpe=sharpe * root,
        expected_max_sharpe=benchmark * root,
        n_trials=n_trials,
        trial_sharpe_std=math.sqrt(variance) * root,
        variance_source=source,
    )


# ------------------------------------------------------------------------------------ per policy, pairs, SPA
@dataclass(frozen=True)
class PolicyStatistics:
    sharpe: Interval
    cagr: Interval
    max_drawdown: Interval
    psr: float  # P(true Sharpe > 0)


def policy_statistics(
    returns: np.ndarray, resamples: Resamples, annualization: int = ANNUALIZATION
) -> PolicyStatistics:
    """Bootstrap intervals of Sharpe, CAGR and max drawdown, and the PSR, of one policy's daily returns."""
    r = np.asarray(returns, dtype=float)

    def statistic(x: np.ndarray) -> np.ndarray:
        return np.column_stack([sharpe_rows(x, annualization), cagr_rows(x, annualization), max_drawdown_rows(x)])

    estimates = statistic(r[None, :])[0]
    replicates = _replicate(resamples.indices, statistic, r)
    sharpe, cagr, drawdown = (percentile_interval(estimates[j], replicates[:, j], resamples.level) for j in range(3))
    return PolicyStatistics(sharpe, cagr, drawdown, probabilistic_sharpe_ratio(r, 0.0, annualization))


@dataclass(frozen=True)
class PairedComparison:
    """Agent minus baseline, both resampled with the same indices; p-values two-sided (difference = 0)."""

    sharpe_difference: Interval  # annualized; NaN when either Sharpe is undefined (e.g. cash)
    sharpe_p_value: float
    mean_difference: Interval  # mean daily return
    mean_p_value: float


def paired_comparison(
    agent: np.ndarray, baseline: np.ndarray, resamples: Resamples, annualization: int = ANNUALIZATION
) -> PairedComparison:
    """Paired block-bootstrap interval and p-value of the Sharpe and mean-daily-return differences."""
    a, b = np.asarray(agent, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"agent and baseline cover different days: {a.shape} != {b.shape}")

    def statistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        sharpe = sharpe_rows(x, annualization) - sharpe_rows(y, annualization)
        return np.column_stack([np.where(np.isfinite(sharpe), sharpe, np.nan), x.mean(axis=-1) - y.mean(axis=-1)])

    estimates = statistic(a[None, :], b[None, :])[0]
    replicates = _replicate(resamples.indices, statistic, a, b)
    return PairedComparison(
        percentile_interval(estimates[0], replicates[:, 0], resamples.level),
        _p_value(estimates[0], replicates[:, 0]),
        percentile_interval(estimates[1], replicates[:, 1], resamples.level),
        _p_value(estimates[1], replicates[:, 1]),
    )


@dataclass(frozen=True)
class SpaResult:
    """Hansen's SPA p-values of H0 "no model has a higher mean daily return than the benchmark"."""

    lower: float
    consistent: float
    upper: float
    best_model: str  # the model with the highest mean daily return


def spa_test(
    benchmark: np.ndarray, models: Mapping[str, np.ndarray], block_size: float, config: BootstrapConfig
) -> SpaResult:
    """arch's SPA with losses = -returns; a small p-value: some model beats the benchmark, allowing for having
    looked at all of them."""
    names = list(models)
    matrix = np.column_stack([np.asarray(models[name], dtype=float) for name in names])
    size = math.ceil(block_size) if config.kind == "circular" else block_size
    losses = -np.asarray(benchmark, dtype=float)
    # a fractional stationary block length, as in draw_resamples
    spa = SPA(losses, -matrix, block_size=size, reps=config.reps, bootstrap=config.kind, seed=config.seed)  # type: ignore[arg-type]
    spa.compute()
    p = spa.pvalues
    best = names[int(np.argmax(matrix.mean(axis=0)))]
    return SpaResult(float(p["lower"]), float(p["consistent"]), float(p["upper"]), best)


# ------------------------------------------------------------------------------------ verdict
@dataclass(frozen=True)
class Verdict:
    """``edge``: every defined Sharpe comparison is positive with p < alpha, DSR >= the threshold, and the SPA
    does not find a baseline that beats the agent. ``beaten``: the SPA consistent p-value < alpha."""

    edge: bool
    beaten: bool
    text: str
    details: tuple[str, ...]  # one line per baseline


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def _sharpe_phrase(c: PairedComparison) -> str:
    s = c.sharpe_difference
    if math.isnan(s.estimate):
        return "Sharpe difference undefined"
    return f"Sharpe difference {s.estimate:+.2f} [{s.low:+.2f}, {s.high:+.2f}], {_p(c.sharpe_p_value)}"


def _comparison_line(agent: str, baseline: str, c: PairedComparison) -> str:
    m = c.mean_difference
    mean = f"mean daily return difference {m.estimate * 1e4:+.1f} bp [{m.low * 1e4:+.1f}, {m.high * 1e4:+.1f}]"
    return f"{agent} vs {baseline}: {_sharpe_phrase(c)}; {mean}, {_p(c.mean_p_value)}"


def build_verdict(
    comparisons: Mapping[str, PairedComparison],
    deflated: DeflatedSharpe,
    spa: SpaResult | None,
    agent: str = "agent",
    alpha: float = 0.05,
    dsr_threshold: float = 0.95,
) -> Verdict:
    """The verdict line: the agent against its hardest baseline (lowest Sharpe difference), the DSR, a conclusion.

    Requiring every baseline to be beaten is an intersection-union test, valid at ``alpha`` without a
    multiplicity correction; a comparison whose Sharpe difference is undefined (cash) is left to the DSR,
    which already asks whether the Sharpe beats 0.
    """
    defined = {name: c for name, c in comparisons.items() if not math.isnan(c.sharpe_difference.estimate)}
    beats_all = all(c.sharpe_difference.estimate > 0 and c.sharpe_p_value < alpha for c in defined.values())
    beaten = spa is not None and spa.consistent < alpha
    edge = beats_all and deflated.dsr >= dsr_threshold and not beaten
    trials = f"{deflated.n_trials} trial" + ("s" if deflated.n_trials != 1 else "")
    if edge:
        conclusion = "evidence of an edge over every baseline"
    elif beaten:
        assert spa is not None
        conclusion = f"no evidence of an edge; {spa.best_model} does better (SPA {_p(spa.consistent)})"
    else:
        conclusion = "no evidence of an edge"
    head = agent
    if defined:
        hardest = min(defined, key=lambda name: defined[name].sharpe_difference.estimate)
        head = f"{agent} vs {hardest}: {_sharpe_phrase(defined[hardest])}"
    text = f"{head}; deflated Sharpe {deflated.dsr:.2f} after {trials}: {conclusion}"
    details = tuple(_comparison_line(agent, name, c) for name, c in comparisons.items())
    return Verdict(edge, beaten, text, details)


# ------------------------------------------------------------------------------------ one evaluation
@dataclass(frozen=True)
class EvaluationStatistics:
    policies: Mapping[str, PolicyStatistics]
    comparisons: Mapping[str, PairedComparison]  # agent vs each baseline
    spa: SpaResult | None
    deflated: DeflatedSharpe
    verdict: Verdict
    block_size: float
    config: BootstrapConfig


def evaluation_statistics(
    returns: Mapping[str, np.ndarray],
    agent: str = "agent",
    n_trials: int = 1,
    trial_sharpes: Sequence[float] = (),
    config: BootstrapConfig = BootstrapConfig(),
    annualization: int = ANNUALIZATION,
) -> EvaluationStatistics:
    """Every statistic of one evaluation from each policy's daily returns over the same days.

    One block length (``config.block_size`` or the longest Politis-White estimate over the policies) and one
    set of resample rows serve every interval, so the paired comparisons are paired by construction.
    """
    series = {name: np.asarray(r, dtype=float) for name, r in returns.items()}
    lengths = {len(r) for r in series.values()}
    if len(lengths) != 1:
        raise ValueError(f"policies cover different numbers of days: {sorted(lengths)}")
    block = config.block_size or block_length(np.column_stack(list(series.values())), config.kind)
    resamples = draw_resamples(lengths.pop(), block, config)
    baselines = {name: r for name, r in series.items() if name != agent}
    comparisons = {name: paired_comparison(series[agent], r, resamples, annualization) for name, r in baselines.items()}
    spa = spa_test(series[agent], baselines, block, config) if baselines else None
    deflated = deflated_sharpe_ratio(series[agent], n_trials, trial_sharpes, annualization)
    return EvaluationStatistics(
        policies={name: policy_statistics(r, resamples, annualization) for name, r in series.items()},
        comparisons=comparisons,
        spa=spa,
        deflated=deflated,
        verdict=build_verdict(comparisons, deflated, spa, agent),
        block_size=block,
        config=config,
    )


def to_jsonable(value: object) -> object:
    """Dataclasses as dicts, non-finite floats as None (JSON has no NaN), for ``--json``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
