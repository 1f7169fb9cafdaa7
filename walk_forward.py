"""Walk-forward fold plans (pure): which sessions each fold trains on and which it is judged on.

The test folds are the last ``folds x test_sessions`` sessions, consecutive and in order; fold k trains on the
sessions strictly before its test start minus ``embargo`` sessions: all of them (``expanding``) or the last
``train_sessions`` of them (``rolling``). The embargo keeps the features and rewards of the training tail (rolling
windows, next-day fills) from overlapping the test fold. docs/training.md, "Seeds and walk-forward".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Literal

from settings import ExitCode, UserError

Window = Literal["expanding", "rolling"]


@dataclasses.dataclass(frozen=True)
class Fold:
    """One walk-forward fold: train on ``train_start .. train_end``, judge on ``test_start .. test_end``
    (inclusive sessions)."""

    index: int  # 0, 1, ... in date order
    train_start: dt.date
    train_end: dt.date
    test_start: dt.date
    test_end: dt.date


def plan_folds(
    dates: Sequence[dt.date],
    folds: int,
    test_sessions: int,
    embargo: int,
    window: Window,
    train_sessions: int,
    *,
    min_train_sessions: int = 1,
) -> tuple[Fold, ...]:
    """The folds over ``dates`` (the sessions common to every symbol, ascending, no duplicates).

    :param min_train_sessions: the fewest sessions a fold may train on (the environment's warm-up plus a step).
    :raise UserError: (REFUSED) too few sessions for the settings, naming them and the sessions there are; a
        rolling window shorter than ``min_train_sessions`` (USAGE).
    """
    if window not in ("expanding", "rolling"):
        raise ValueError(f"window {window!r} is not 'expanding' or 'rolling'")
    if window == "rolling" and train_sessions < min_train_sessions:
        raise UserError(f"--train-sessions {train_sessions}: the environment needs at least {min_train_sessions} "
                        "sessions to train on")  # fmt: skip
    first_test = len(dates) - folds * test_sessions
    least_train = train_sessions if window == "rolling" else min_train_sessions
    if first_test - embargo < least_train:
        stored = f"{len(dates)}" + (f" ({dates[0]} .. {dates[-1]})" if len(dates) else "")
        raise UserError(
            f"walk-forward: --folds {folds} x --test-sessions {test_sessions} + --embargo {embargo} + {least_train} "
            f"training sessions ({'--train-sessions' if window == 'rolling' else 'the fewest the environment needs'})"
            f" need {folds * test_sessions + embargo + least_train} sessions common to all symbols; {stored} are "
            f"stored: fewer or shorter folds, a shorter embargo{' or window' if window == 'rolling' else ''} or an "
            "earlier --start",
            ExitCode.REFUSED,
        )
    plan = []
    for k in range(folds):
        test = first_test + k * test_sessions
        last_train = test - embargo - 1
        first_train = last_train - train_sessions + 1 if window == "rolling" else 0
        plan.append(Fold(k, dates[first_train], dates[last_train], dates[test], dates[test + test_sessions - 1]))
    return tuple(plan)
