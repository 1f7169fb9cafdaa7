"""Market preparation: alignment on common dates, adjusted prices, features and the refusals of bad bars."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from market import build_market, synthetic_bars
from settings import UserError
from tensortrade_risk_module import EnvConfig


def test_build_market_aligns_and_adjusts() -> None:
    bars = synthetic_bars(2, 200)
    bars.loc[bars["symbol"] == "S001", "adj_close"] *= 0.5
    dropped = bars.index[(bars["symbol"] == "S000")][100]
    gone_date = bars.loc[dropped, "date"]
    market = build_market(bars.drop(index=dropped), EnvConfig())
    assert market.dropped_dates == 1 and len(market.dates) == 199
    assert str(gone_date) not in market.date_strings
    s1 = bars[bars["symbol"] == "S001"].set_index("date")
    first = s1.iloc[0]
    assert market.open[0, 1] == pytest.approx(first["open"] * 0.5)
    assert market.close[0, 1] == pytest.approx(first["adj_close"])
    day_after_gap = market.date_strings.index(str(s1.index[101]))
    assert market.log_ret[day_after_gap, 1] == pytest.approx(
        np.log(s1["adj_close"].iloc[101] / s1["adj_close"].iloc[99])
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.drop(columns="open"), "missing column"),
        (lambda b: pd.concat([b, b.iloc[[3]]]), "duplicate bar for S000"),
        (lambda b: b.assign(close=b["close"].where(b.index != 7, -1.0)), "close of S000"),
        (lambda b: b.head(30), "need at least"),
    ],
)
def test_build_market_rejects_bad_bars(change: Callable[[pd.DataFrame], pd.DataFrame], message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_market(change(synthetic_bars(1, 100)), EnvConfig())
