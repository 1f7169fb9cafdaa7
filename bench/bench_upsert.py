"""Benchmark: storing the 505-symbol scale set into PostgreSQL with upsert_price_bars vs pandas.to_sql.

Prints rows/s for a fresh upsert and an unchanged re-upsert beside ``DataFrame.to_sql(method="multi")`` and a bare
COPY measured in the same run, as ratios (the machine is shared and noisy), plus peak Python memory while storing.

    .venv/bin/python -m bench.bench_upsert [--url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import io
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

import bar_store
import bar_validation
import db_utils
import tt_schema

SCALE_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "scale_daily_bars.csv.gz"


def timed(label: str, rows: int, action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds:7.2f} s  {rows / seconds:>10,.0f} rows/s")
    return rows / seconds


def fresh_schema(admin: sa.Engine, url: str) -> tuple[str, sa.Engine]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine = db_utils.make_engine(f"{url}?options=-csearch_path%3D{schema}")
    tt_schema.ensure_schema(engine)
    return schema, engine


def bare_copy(engine: sa.Engine, bars: pd.DataFrame) -> None:
    buffer = io.StringIO()
    bars.to_csv(buffer, header=False, index=False, columns=["symbol", "date", *bar_validation.VALUE_COLUMNS])
    buffer.seek(0)
    with engine.begin() as conn, db_utils.dbapi_cursor(conn) as cursor:
        cursor.copy_expert(
            "COPY tt_prices (symbol, date, open, high, low, close, adj_close, volume) FROM STDIN WITH (FORMAT csv)",
            buffer,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    bars = pd.read_csv(SCALE_CSV)
    valid = bars[bar_validation.validate_bars(bars)[0]]
    n = len(bars)
    admin = db_utils.make_engine(args.url)
    schemas = []
    try:
        print(f"scale set: {n:,} rows, {bars['symbol'].nunique()} symbols; PostgreSQL {args.url}")
        schema, engine = fresh_schema(admin, args.url)
        schemas.append(schema)
        fresh = timed("upsert_price_bars, fresh insert", n, lambda: bar_store.upsert_price_bars(engine, bars))
        again = timed("upsert_price_bars, unchanged re-upsert", n, lambda: bar_store.upsert_price_bars(engine, bars))
        schema, engine = fresh_schema(admin, args.url)
        schemas.append(schema)
        tracemalloc.start()
        bar_store.upsert_price_bars(engine, bars)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        schema, engine = fresh_schema(admin, args.url)
        schemas.append(schema)
        copy = timed("baseline: bare COPY (no validation/upsert)", len(valid), lambda: bare_copy(engine, valid))
        schema, engine = fresh_schema(admin, args.url)
        schemas.append(schema)
        to_sql = timed(
            'baseline: DataFrame.to_sql(method="multi")',
            len(valid),
            lambda: valid.to_sql("tt_prices", engine, if_exists="append", index=False, method="multi", chunksize=1000),
        )
        size = bars.memory_usage(deep=True).sum()
        print()
        print(f"fresh upsert       = {fresh / to_sql:5.1f}x to_sql   (goal >= 10x); {fresh / copy:4.2f}x bare COPY")
        print(f"unchanged upsert   = {again / fresh:5.2f}x the fresh upsert (goal > 1x)")
        print(
            f"peak Python memory = {peak / size:5.2f}x the input DataFrame ({peak / 1e6:.0f} MB / {size / 1e6:.0f} MB)"
        )
    finally:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))


if __name__ == "__main__":
    main()
