"""Storing daily bars: :func:`upsert_price_bars` validates them, then writes only new or changed rows.

PostgreSQL: COPY into a temporary table, then one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the values differ.
SQLite: compare with the stored rows, then a batched upsert. One transaction per batch (docs/database.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io

import numpy as np
import pandas as pd
import sqlalchemy as sa

import tt_schema as tables
from bar_validation import VALUE_COLUMNS, normalized_dates, validate_bars
from db_utils import dbapi_cursor

DEFAULT_BATCH_ROWS = 50_000


@dataclasses.dataclass
class UpsertResult:
    """Outcome of :func:`upsert_price_bars`.

    ``per_symbol`` has one row per symbol with ``inserted, updated, unchanged, rejected``; ``rejected_rows`` has
    ``symbol, date, reason``. When a batch fails, ``error`` says why and ``not_stored_symbols`` lists every symbol
    with rows in that batch or a later one (earlier batches stay committed).
    """

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejected_rows: pd.DataFrame = dataclasses.field(
        default_factory=lambda: pd.DataFrame(columns=["symbol", "date", "reason"])
    )
    per_symbol: pd.DataFrame = dataclasses.field(
        default_factory=lambda: pd.DataFrame(columns=["inserted", "updated", "unchanged", "rejected"])
    )
    error: str | None = None
    not_stored_symbols: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every valid row was stored."""
        return self.error is None


def _batch_frame(bars: pd.DataFrame, rows: np.ndarray, source: str | None) -> pd.DataFrame:
    part = bars.iloc[rows]
    out = pd.DataFrame({"symbol": part["symbol"].astype(str).str.strip().to_numpy()})
    out["date"] = normalized_dates(part["date"]).dt.strftime("%Y-%m-%d").to_numpy()
    for col in VALUE_COLUMNS:
        values = part[col] if col in part.columns else pd.Series(np.nan, index=part.index)
        out[col] = pd.to_numeric(values, errors="coerce").to_numpy("float64")
    out["source"] = part["source"].to_numpy() if "source" in part.columns else source
    return out


_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS tt_prices_stage "
    "(symbol text, date date, open float8, high float8, low float8, close float8, adj_close float8, volume float8, "
    "source text) ON COMMIT DELETE ROWS"
)
_PG_MERGE = """
WITH upserted AS (
  INSERT INTO tt_prices AS p (symbol, date, open, high, low, close, adj_close, volume, source, ingested_at)
  SELECT symbol, date, open, high, low, close, adj_close, volume, source, %(now)s FROM tt_prices_stage
  ON CONFLICT (symbol, date) DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low,
    close = EXCLUDED.close, adj_close = EXCLUDED.adj_close, volume = EXCLUDED.volume, source = EXCLUDED.source,
    ingested_at = EXCLUDED.ingested_at
  WHERE (p.open, p.high, p.low, p.close, p.adj_close, p.volume)
    IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.adj_close, EXCLUDED.volume)
  RETURNING p.symbol, (xmax = 0) AS inserted
)
SELECT symbol, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM upserted GROUP BY symbol
"""


def _store_batch_postgres(conn: sa.Connection, batch: pd.DataFrame, now: dt.datetime) -> pd.DataFrame:
    buffer = io.StringIO()
    batch.to_csv(buffer, header=False, index=False)
    buffer.seek(0)
    with dbapi_cursor(conn) as cursor:
        cursor.execute(_PG_STAGE)
        cursor.copy_expert("COPY tt_prices_stage FROM STDIN WITH (FORMAT csv)", buffer)
        cursor.execute(_PG_MERGE, {"now": now})
        changed = pd.DataFrame(cursor.fetchall(), columns=["symbol", "inserted", "updated"])
    return changed.set_index("symbol")


def _store_batch_sqlite(conn: sa.Connection, batch: pd.DataFrame, now: dt.datetime) -> pd.DataFrame:
    # Compare with what is stored first, so unchanged rows are neither rewritten nor counted as updates.
    keys = pd.DataFrame({"symbol": batch["symbol"].unique()})
    stored = pd.read_sql_query(
        sa.select(tables.prices.c.symbol, tables.prices.c.date, *(tables.prices.c[c] for c in VALUE_COLUMNS))
        .where(tables.prices.c.symbol.in_(keys["symbol"].tolist()))
        .where(tables.prices.c.date.between(batch["date"].min(), batch["date"].max())),
        conn,
        dtype={c: "float64" for c in VALUE_COLUMNS},
    )
    stored["date"] = stored["date"].astype(str)
    merged = batch.merge(stored, how="left", on=["symbol", "date"], suffixes=("", "_old"), indicator=True)
    is_new = (merged["_merge"] == "left_only").to_numpy()
    differs = np.zeros(len(merged), dtype=bool)
    for col in VALUE_COLUMNS:
        new, old = merged[col].to_numpy(), merged[f"{col}_old"].to_numpy()
        differs |= ~((new == old) | (np.isnan(new) & np.isnan(old)))
    write = merged[is_new | differs]
    if len(write):
        stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        rows = write[["symbol", "date", *VALUE_COLUMNS, "source"]].astype(object).where(write.notna(), None)
        conn.exec_driver_sql(
            "INSERT INTO tt_prices (symbol, date, open, high, low, close, adj_close, volume, source, ingested_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (symbol, date) DO UPDATE SET open = excluded.open, "
            "high = excluded.high, low = excluded.low, close = excluded.close, adj_close = excluded.adj_close, "
            "volume = excluded.volume, source = excluded.source, ingested_at = excluded.ingested_at",
            [(*row, stamp) for row in rows.itertuples(index=False, name=None)],
        )
    counts = pd.DataFrame({"symbol": merged["symbol"], "inserted": is_new, "updated": differs & ~is_new})
    return counts.groupby("symbol").sum()


def upsert_price_bars(
    engine: sa.Engine, bars: pd.DataFrame, *, source: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS
) -> UpsertResult:
    """Validate and store daily bars into ``tt_prices``, one transaction per batch.

    :param bars: columns ``symbol, date, open, high, low, close, adj_close, volume`` (``adj_close`` may be null,
        an optional ``source`` column overrides ``source``).
    :param source: value for the ``source`` column.
    :param batch_rows: rows per transaction (PostgreSQL: COPY into a temp table, then one INSERT ... ON CONFLICT
        DO UPDATE ... WHERE the values differ; SQLite: compare with stored rows, then a batched upsert).
    :return: counts of inserted, updated, unchanged and rejected rows (see :class:`UpsertResult`).
    """
    bars = bars.reset_index(drop=True)
    valid, rejected = validate_bars(bars)
    result = UpsertResult(rejected=len(rejected), rejected_rows=rejected)
    store = _store_batch_postgres if engine.dialect.name == "postgresql" else _store_batch_sqlite
    valid_rows = np.flatnonzero(valid)
    counts: list[pd.DataFrame] = []
    now = dt.datetime.now(dt.UTC)
    for start in range(0, len(valid_rows), batch_rows):
        batch = _batch_frame(bars, valid_rows[start : start + batch_rows], source)
        try:
            with engine.begin() as conn:
                changed = store(conn, batch, now)
        except (sa.exc.SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:
            result.error = f"storing batch {start // batch_rows + 1} failed: {str(getattr(exc, 'orig', exc)).strip()}"
            result.not_stored_symbols = sorted(set(bars["symbol"].iloc[valid_rows[start:]].astype(str)))
            break
        sizes = batch.groupby("symbol").size().rename("rows")
        counts.append(changed.reindex(sizes.index, fill_value=0).join(sizes))
    result.per_symbol = _per_symbol_counts(counts, rejected)
    result.inserted = int(result.per_symbol["inserted"].sum())
    result.updated = int(result.per_symbol["updated"].sum())
    result.unchanged = int(result.per_symbol["unchanged"].sum())
    return result


def _per_symbol_counts(counts: list[pd.DataFrame], rejected: pd.DataFrame) -> pd.DataFrame:
    columns = ["inserted", "updated", "unchanged", "rejected"]
    if counts:
        stored = pd.concat(counts).groupby(level=0).sum()
        stored["unchanged"] = stored.pop("rows") - stored["inserted"] - stored["updated"]
    else:
        stored = pd.DataFrame(columns=["inserted", "updated", "unchanged"], dtype="int64")
    rejected_counts = rejected.groupby(rejected["symbol"].astype(str)).size().rename("rejected")
    out = stored.join(rejected_counts, how="outer").fillna(0).astype("int64")
    out.index.name = "symbol"
    return out.reindex(columns=columns)
