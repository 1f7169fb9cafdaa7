"""TensorTrade backend throughput beside the native environment's, same data, same actions, same run.

Run in the TensorTrade lane: ``tools/tt_lane.sh bench`` (about a minute). Under Python < 3.12 or without
tensortrade it prints why it skipped and exits 0, so ``make bench`` stays green in the main lane.
Data: seeded synthetic 2,520-day markets of 5 and 20 assets; costs and settings are the defaults but
``execution="close"`` (the one fill timing the TensorTrade backend supports).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial

import gymnasium as gym
import numpy as np

from market import build_market, synthetic_bars
from settings import UserError
from tensortrade_risk_module import EnvConfig
from trading_env import make_env

STEPS = {"native": 20_000, "tensortrade": 1_500}


def steps_per_second(make: Callable[[], gym.Env], steps: int, n_assets: int) -> tuple[float, float]:
    """(steps/s over ``steps`` random-action steps with resets at episode ends, seconds to build + reset)."""
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.0, 1.0, (steps, n_assets)).astype(np.float32)
    start = time.perf_counter()
    env = make()
    env.reset(seed=0)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start), setup


def main() -> int:
    """Print the figures; 0 also when skipped."""
    try:
        from tensortrade_backend import make_tensortrade_env
    except UserError as exc:
        print(f"bench_tensortrade: SKIPPED: {exc}")
        return 0
    print(f"{'assets':>6} {'backend':>12} {'steps/s':>10} {'build+reset s':>14} {'native/TT':>10}")
    for n_assets in (5, 20):
        market = build_market(synthetic_bars(n_assets, seed=n_assets), EnvConfig())
        native, native_setup = steps_per_second(partial(make_env, market, execution="close"), STEPS["native"], n_assets)
        tt, tt_setup = steps_per_second(
            partial(make_tensortrade_env, market, execution="close"), STEPS["tensortrade"], n_assets
        )
        print(f"{n_assets:>6} {'native':>12} {native:>10,.0f} {native_setup:>14.3f} {'':>10}")
        print(f"{n_assets:>6} {'tensortrade':>12} {tt:>10,.0f} {tt_setup:>14.3f} {native / tt:>9,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
