"""Features: no look-ahead, values equal a direct pandas computation, warm-up NaN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import features
from conftest import SAMPLE_CSV


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    bars = pd.read_csv(SAMPLE_CSV, parse_dates=["date"])
    return bars[bars["symbol"].isin(["SPY", "TLT", "GLD"]) & (bars["date"] < "2008-01-01")].reset_index(drop=True)


def test_values_match_a_direct_pandas_computation(sample: pd.DataFrame) -> None:
    got = features.compute_basic_features(sample.sample(frac=1.0, random_state=1), vol_windows=(5, 20))
    for symbol, bars in sample.groupby("symbol"):
        price = bars.sort_values("date")["adj_close"].reset_index(drop=True)
        mine = got[got["symbol"] == symbol].reset_index(drop=True)
        np.testing.assert_allclose(mine["ret"], price.pct_change(), equal_nan=True)
        log_ret = np.log(price).diff()
        np.testing.assert_allclose(mine["log_ret"], log_ret, equal_nan=True)
        for w in (5, 20):
            np.testing.assert_allclose(mine[f"vol_{w}"], log_ret.rolling(w).std() * np.sqrt(252), equal_nan=True)
        assert mine["ret"].iloc[:1].isna().all() and mine["vol_20"].iloc[:20].isna().all()
        assert mine["vol_20"].iloc[20:].notna().all()


def test_no_look_ahead_changing_later_bars_leaves_earlier_features_unchanged(sample: pd.DataFrame) -> None:
    cut = pd.Timestamp("2006-06-30")
    before = features.compute_basic_features(sample)
    changed = sample.copy()
    later = changed["date"] > cut
    changed.loc[later, ["close", "adj_close"]] *= np.random.default_rng(0).uniform(0.5, 2.0, later.sum())[:, None]
    changed = changed[~(changed["date"] > pd.Timestamp("2007-06-30"))]  # and drop the tail entirely
    after = features.compute_basic_features(changed)
    early = before["date"] <= cut
    pd.testing.assert_frame_equal(
        before[early].reset_index(drop=True), after[after["date"] <= cut].reset_index(drop=True)
    )
    assert not np.allclose(before.loc[~early, "ret"].head(50), after.loc[after["date"] > cut, "ret"].head(50))


def test_close_is_used_when_a_symbol_lacks_adj_close(sample: pd.DataFrame) -> None:
    bars = sample.copy()
    bars.loc[(bars["symbol"] == "TLT") & (bars.index % 7 == 0), "adj_close"] = np.nan
    got = features.compute_basic_features(bars)
    tlt, spy = got[got["symbol"] == "TLT"], got[got["symbol"] == "SPY"]
    np.testing.assert_allclose(tlt["price"], bars.loc[bars["symbol"] == "TLT", "close"])
    np.testing.assert_allclose(spy["price"], bars.loc[bars["symbol"] == "SPY", "adj_close"])


def test_bad_window_and_large_moves(sample: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="vol_windows must all be >= 2"):
        features.compute_basic_features(sample, vol_windows=(1,))
    bars = sample[sample["symbol"] == "SPY"].reset_index(drop=True)
    bars.loc[100, "adj_close"] = bars.loc[100, "adj_close"] / 2  # a bad print: -50% then +100%
    moves = features.large_moves(features.compute_basic_features(bars))
    assert moves["date"].tolist() == [bars.loc[101, "date"], bars.loc[100, "date"]]
    assert moves["ret"].round(2).tolist() == [1.0, -0.5]
