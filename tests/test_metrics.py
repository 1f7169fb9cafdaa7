"""The evaluation metrics equal empyrical-reloaded's on real return series, within 1e-9."""

from __future__ import annotations

import math
from pathlib import Path

import empyrical
import numpy as np
import pandas as pd
import pytest

import metrics

SAMPLE_CSV = Path(__file__).resolve().parent.parent / "data" / "sample_daily_bars.csv.gz"
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def closes() -> pd.DataFrame:
    """Adjusted closes of the bundled 15-ETF sample, dates x symbols."""
    bars = pd.read_csv(SAMPLE_CSV, usecols=["date", "symbol", "adj_close"], parse_dates=["date"])
    return bars.pivot(index="date", columns="symbol", values="adj_close").sort_index()


def _series(closes: pd.DataFrame) -> dict[str, np.ndarray]:
    daily = closes.pct_change().iloc[1:]
    equal_weight = daily.mean(axis=1)
    return {
        "SPY 2005-2025": daily["SPY"].to_numpy(),
        "TLT 2020-2022 (deep drawdown)": daily.loc["2020":"2022", "TLT"].to_numpy(),
        "SHY 2019 (low vol)": daily.loc["2019", "SHY"].to_numpy(),
        "GLD Jan 2010 (short)": daily.loc["2010-01", "GLD"].to_numpy(),
        "equal weight 2008": equal_weight.loc["2008"].to_numpy(),
        "two days": daily["QQQ"].to_numpy()[100:102],
        "no losing day": np.abs(daily["EEM"].to_numpy()[:50]),
        "cash": np.zeros(300),
    }


PAIRS = [
    ("total_return", lambda r: empyrical.cum_returns_final(r)),
    ("cagr", lambda r: empyrical.cagr(r)),
    ("annual_volatility", lambda r: empyrical.annual_volatility(r)),
    ("sharpe", lambda r: empyrical.sharpe_ratio(r, risk_free=0.0)),
    ("sortino", lambda r: empyrical.sortino_ratio(r, required_return=0.0)),
    ("max_drawdown", lambda r: empyrical.max_drawdown(r)),
    ("calmar", lambda r: empyrical.calmar_ratio(r)),
]


def _same(ours: float, reference: float) -> bool:
    if math.isnan(reference) or math.isinf(reference):
        return ours == reference or (math.isnan(ours) and math.isnan(reference))
    return abs(ours - reference) <= TOLERANCE


@pytest.mark.parametrize("name, reference", PAIRS, ids=[p[0] for p in PAIRS])
def test_metric_matches_empyrical(closes: pd.DataFrame, name: str, reference) -> None:
    ours_fn = getattr(metrics, name)
    for label, returns in _series(closes).items():
        ours, theirs = ours_fn(returns), float(reference(returns))
        assert _same(ours, theirs), f"{name} on {label}: ours {ours!r}, empyrical {theirs!r}"


def test_series_exercise_the_edge_cases(closes: pd.DataFrame) -> None:
    """The fixtures must reach the special branches, or the comparison above proves less than it claims."""
    series = _series(closes)
    assert metrics.max_drawdown(series["TLT 2020-2022 (deep drawdown)"]) < -0.3
    assert math.isinf(metrics.sortino(series["no losing day"]))
    assert math.isnan(metrics.sharpe(series["cash"])) and math.isnan(metrics.calmar(series["cash"]))
    assert metrics.max_drawdown(series["cash"]) == 0.0


def test_empty_and_single_day_series_are_undefined() -> None:
    one = np.array([0.01])
    assert math.isnan(metrics.total_return(np.array([])))
    assert math.isnan(metrics.cagr(np.array([])))
    assert math.isnan(metrics.annual_volatility(one))
    assert math.isnan(metrics.sharpe(one)) and math.isnan(metrics.sortino(one))
    assert metrics.total_return(one) == pytest.approx(0.01)


def test_policy_metrics_from_a_trace() -> None:
    """Trading metrics: turnover annualized over the n steps, fees summed, exposure and stops over rows 1..n."""
    worth = np.array([100.0, 101.0, 99.0, 99.0, 99.0])
    trace = pd.DataFrame(
        {
            "net_worth": worth,
            "turnover": [0.0, 1.0, 0.5, 1.0, 0.0],
            "fees": [0.0, 2.0, 1.0, 1.5, 0.0],
            "gross_exposure": [0.0, 1.0, 0.8, 0.0, 0.0],
            "stopped": [False, False, False, True, True],
        }
    )
    m = metrics.policy_metrics(trace)
    assert m["turnover"] == pytest.approx(2.5 * 252 / 4)
    assert m["fees_paid"] == pytest.approx(4.5)
    assert m["avg_gross_exposure"] == pytest.approx(1.8 / 4)
    assert m["days_stopped"] == 2
    assert m["final_net_worth"] == 99.0
    assert m["total_return"] == pytest.approx(-0.01)
    assert m["max_drawdown"] == pytest.approx(99.0 / 101.0 - 1.0)
