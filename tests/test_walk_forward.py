"""walk_forward.plan_folds from tables (expanding, rolling, embargo, refusals) and one property over many plans."""

from __future__ import annotations

import datetime as dt
import itertools

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from settings import ExitCode, UserError
from walk_forward import Fold, plan_folds

# 20 sessions: the weekdays of 2020-01-02 .. 2020-01-29 (the plans below are written as indices into them)
SESSIONS = [d.date() for d in pd.bdate_range("2020-01-02", "2020-01-29")]
assert len(SESSIONS) == 20


def _indices(fold: Fold) -> tuple[int, int, int, int, int]:
    """The fold as session indices: (index, train start, train end, test start, test end)."""
    at = SESSIONS.index
    return fold.index, at(fold.train_start), at(fold.train_end), at(fold.test_start), at(fold.test_end)


@pytest.mark.parametrize(
    ("folds", "test", "embargo", "window", "train", "expected"),
    [
        # the last 2 x 3 sessions are the test folds; training ends `embargo` sessions before each
        (2, 3, 2, "expanding", 99, [(0, 0, 11, 14, 16), (1, 0, 14, 17, 19)]),
        (2, 3, 0, "expanding", 99, [(0, 0, 13, 14, 16), (1, 0, 16, 17, 19)]),
        (1, 5, 3, "expanding", 99, [(0, 0, 11, 15, 19)]),
        (3, 4, 1, "expanding", 99, [(0, 0, 6, 8, 11), (1, 0, 10, 12, 15), (2, 0, 14, 16, 19)]),
        # rolling: the last `train` sessions before the embargo
        (2, 3, 2, "rolling", 6, [(0, 6, 11, 14, 16), (1, 9, 14, 17, 19)]),
        (3, 4, 1, "rolling", 7, [(0, 0, 6, 8, 11), (1, 4, 10, 12, 15), (2, 8, 14, 16, 19)]),
        # exactly enough sessions: 2 x 6 tests + embargo 2 + 6 training sessions = 20
        (2, 6, 2, "rolling", 6, [(0, 0, 5, 8, 13), (1, 6, 11, 14, 19)]),
        (2, 6, 2, "expanding", 99, [(0, 0, 5, 8, 13), (1, 0, 11, 14, 19)]),
    ],
)
def test_plans(folds: int, test: int, embargo: int, window: str, train: int, expected: list[tuple[int, ...]]) -> None:
    plan = plan_folds(SESSIONS, folds, test, embargo, window, train, min_train_sessions=6)  # type: ignore[arg-type]
    assert [_indices(f) for f in plan] == expected


@pytest.mark.parametrize(
    ("folds", "test", "embargo", "window", "train", "needle"),
    [
        (2, 6, 3, "expanding", 99, "--folds 2 x --test-sessions 6 + --embargo 3 + 6 training sessions"),
        (3, 6, 0, "expanding", 99, "need 24 sessions"),
        (2, 6, 2, "rolling", 7, "(--train-sessions) need 21 sessions"),
        (1, 20, 0, "expanding", 99, "20 (2020-01-02 .. 2020-01-29) are stored"),
    ],
)
def test_too_few_sessions_refused(folds: int, test: int, embargo: int, window: str, train: int, needle: str) -> None:
    with pytest.raises(UserError) as err:
        plan_folds(SESSIONS, folds, test, embargo, window, train, min_train_sessions=6)  # type: ignore[arg-type]
    assert err.value.exit_code == ExitCode.REFUSED and needle in str(err.value)


def test_no_sessions_and_short_rolling_window() -> None:
    with pytest.raises(UserError, match="0 are stored") as err:
        plan_folds([], 1, 5, 0, "expanding", 10)
    assert err.value.exit_code == ExitCode.REFUSED
    with pytest.raises(UserError, match="--train-sessions 5: the environment needs at least 6") as err:
        plan_folds(SESSIONS, 1, 2, 0, "rolling", 5, min_train_sessions=6)
    assert err.value.exit_code == ExitCode.USAGE
    with pytest.raises(ValueError, match="sliding"):
        plan_folds(SESSIONS, 1, 2, 0, "sliding", 5)  # type: ignore[arg-type]


@given(
    n=st.integers(1, 300), folds=st.integers(1, 6), test=st.integers(1, 40), embargo=st.integers(0, 10),
    window=st.sampled_from(["expanding", "rolling"]), train=st.integers(1, 200),
)  # fmt: skip
def test_every_plan_tests_the_tail_in_order_and_trains_only_before_the_embargo(
    n: int, folds: int, test: int, embargo: int, window: str, train: int
) -> None:
    dates = [dt.date(2000, 1, 1) + dt.timedelta(days=3 * i) for i in range(n)]
    try:
        plan = plan_folds(dates, folds, test, embargo, window, train)  # type: ignore[arg-type]
    except UserError:
        assert n < folds * test + embargo + (train if window == "rolling" else 1)
        return
    at = dates.index
    assert [f.index for f in plan] == list(range(folds))
    assert at(plan[0].test_start) == n - folds * test and plan[-1].test_end == dates[-1]
    for fold, following in itertools.pairwise(plan):
        assert at(following.test_start) == at(fold.test_end) + 1
    for fold in plan:
        assert at(fold.test_end) - at(fold.test_start) + 1 == test
        assert at(fold.train_end) == at(fold.test_start) - embargo - 1  # the last session before the embargo
        trained = at(fold.train_end) - at(fold.train_start) + 1
        assert trained == (train if window == "rolling" else at(fold.train_end) + 1)
