"""What the TensorTrade tests do when the backend cannot run here: skip, but fail inside the lane (TT_LANE=1)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(what: str, reason: Exception) -> NoReturn:
    """Skip because ``what`` is missing; inside the TensorTrade lane a missing piece is a failure instead."""
    if os.environ.get("TT_LANE") == "1":
        pytest.fail(f"TensorTrade lane without {what}: {reason}")
    pytest.skip(f"{what} is not available here (run tools/tt_lane.sh): {reason}")
