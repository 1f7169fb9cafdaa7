"""PPO training throughput with the step log to PostgreSQL on and off, and the environment's share of wall time.

Run from the repository root: ``.venv/bin/python -m bench.bench_train`` (about two minutes; needs the PostgreSQL
server of the tests, ``TT_TEST_DATABASE_URL`` or postgresql://postgres@127.0.0.1:5432/test; it works in a
throw-away schema).
Data: the bundled sample (15 ETFs, 2005-2025), default training slice (stored range minus the 20% holdout),
``--episodes 2`` with the default PPO settings, seed 0, one environment. Each variant runs ``ROUNDS`` times,
alternating, and the fastest round is reported (the least disturbed by the machine). Goals (issue 6): step
logging costs at most 10% of training wall time; ``VecEnv.step_wait`` takes at most 15% of it.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import uuid
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

import bar_store
import db_utils
import trading_vec_env
import train_mvp
import tt_schema

PG_URL = os.environ.get("TT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample_daily_bars.csv.gz"
ROUNDS = 3
ORIGINAL_TRAINING = train_mvp.run_training
ORIGINAL_STEP = trading_vec_env.VecTradingEnv.step_wait


def timed(owner: type | object, name: str, totals: dict[str, float]) -> None:
    """Wrap ``owner.name`` so each call's duration adds to ``totals[name]``."""
    original = getattr(owner, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)


def one_run(url: str, folder: Path, symbols: str, step_log: bool) -> dict[str, float]:
    """Train 2 episodes; return wall time of training, env time and env steps."""
    totals: dict[str, float] = {}
    timed(train_mvp, "run_training", totals)
    timed(trading_vec_env.VecTradingEnv, "step_wait", totals)
    flags = ["--episodes", "2", "--symbols", symbols, "--seed", "0", "--database-url", url,
             "--checkpoint-dir", str(folder), "--log-dir", str(folder)]  # fmt: skip
    flags += [] if step_log else ["--no-step-log"]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert train_mvp.main(flags) == 0
    finally:
        train_mvp.run_training, trading_vec_env.VecTradingEnv.step_wait = ORIGINAL_TRAINING, ORIGINAL_STEP  # type: ignore[method-assign]
    engine = db_utils.make_engine(url)
    with engine.connect() as conn:
        steps, logged = conn.execute(sa.text(
            "SELECT total_steps, (SELECT count(*) FROM tt_steps s WHERE s.run_id = r.run_id) FROM tt_runs r "
            "ORDER BY started_at DESC LIMIT 1")).one()  # fmt: skip
    engine.dispose()
    assert logged == (steps if step_log else 0)
    return {"wall": totals["run_training"], "env": totals["step_wait"], "steps": steps}


def main() -> None:
    """Store the sample in a scratch schema, alternate logging off/on, print figures and ratios."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = db_utils.make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    try:
        engine = db_utils.make_engine(url)
        tt_schema.ensure_schema(engine)
        bars = pd.read_csv(SAMPLE, parse_dates=["date"])
        bar_store.upsert_price_bars(engine, bars)
        symbols = ",".join(sorted(bars["symbol"].unique()))
        engine.dispose()
        results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for _ in range(ROUNDS):
            for step_log in (False, True):
                results[step_log].append(one_run(url, Path("/tmp") / schema, symbols, step_log))
        best = {k: min(v, key=lambda r: r["wall"]) for k, v in results.items()}
        off, on = best[False], best[True]
        print(f"PPO, {symbols.count(',') + 1} ETFs, 2 episodes = {off['steps']} env steps, 1 env, torch threads 1 "
              f"(fastest of {ROUNDS})")  # fmt: skip
        print(f"  step log off : {off['wall']:7.2f} s  {off['steps'] / off['wall']:8.0f} env steps/s  (baseline)")
        print(f"  step log on  : {on['wall']:7.2f} s  {on['steps'] / on['wall']:8.0f} env steps/s  "
              f"ratio {on['wall'] / off['wall']:.3f}  (goal <= 1.10)")  # fmt: skip
        print(f"  env share    : {off['env'] / off['wall']:.1%} of training wall time in VecEnv.step_wait "
              f"({off['env'] / off['steps'] * 1e6:.1f} us/step; goal <= 15%)")  # fmt: skip
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    main()
