"""The database schema: one SQLAlchemy Core ``MetaData`` for every table, a schema version, in-place upgrades.

The lowest layer of the database code: it imports no project module. :func:`ensure_schema` is applied by
``db_utils.connect`` (every command) and by ``python create_tt_tables.py``. Upgrades are additive and automatic:
missing tables are created and missing columns added (always nullable), then any explicit step registered in
:data:`UPGRADE_STEPS` for a newer version runs; the version reached is recorded in ``tt_schema_version``. On an
up-to-date database nothing is written. docs/database.md explains the policy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import sqlalchemy as sa

SCHEMA_VERSION = 3  # 2: tt_signals and tt_shadow (issue 15); 3: run groups (seeds, walk-forward folds, sweeps)

metadata = sa.MetaData()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


schema_version = sa.Table(
    "tt_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, default=_now),
    sa.Column("description", sa.Text),
)

prices = sa.Table(
    "tt_prices",
    metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("open", sa.Double, nullable=False),
    sa.Column("high", sa.Double, nullable=False),
    sa.Column("low", sa.Double, nullable=False),
    sa.Column("close", sa.Double, nullable=False),
    sa.Column("adj_close", sa.Double),
    sa.Column("volume", sa.Double, nullable=False),
    sa.Column("source", sa.String(16)),
    sa.Column("ingested_at", sa.DateTime(timezone=True)),
)

symbols = sa.Table(
    "tt_symbols",
    metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("sec_type", sa.String(8)),
    sa.Column("exchange", sa.String(32)),
    sa.Column("primary_exchange", sa.String(32)),
    sa.Column("currency", sa.String(8)),
    sa.Column("source", sa.String(16)),
    sa.Column("ib_con_id", sa.BigInteger),
    sa.Column("first_available_date", sa.Date),
    sa.Column("first_date", sa.Date),
    sa.Column("last_date", sa.Date),
    sa.Column("expected_bars", sa.Integer),
    sa.Column("stored_bars", sa.Integer),
    sa.Column("missing_bars", sa.Integer),
    sa.Column("coverage", sa.Double),
    sa.Column("below_min_coverage", sa.Boolean),
    sa.Column("coverage_checked_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(24)),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

missing_dates = sa.Table(
    "tt_missing_dates",
    metadata,
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
)

ingest_runs = sa.Table(
    "tt_ingest_runs",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("source", sa.String(16)),
    sa.Column("start_date", sa.Date),
    sa.Column("end_date", sa.Date),
    sa.Column("arguments", sa.JSON),
    sa.Column("symbols_requested", sa.Integer),
    sa.Column("symbols_ok", sa.Integer),
    sa.Column("symbols_failed", sa.Integer),
    sa.Column("rows_fetched", sa.Integer),
    sa.Column("rows_inserted", sa.Integer),
    sa.Column("rows_updated", sa.Integer),
    sa.Column("rows_unchanged", sa.Integer),
    sa.Column("rows_rejected", sa.Integer),
    sa.Column("errors", sa.JSON),
    sa.Column("timings", sa.JSON),
    sa.Column("exit_code", sa.Integer),
)

runs = sa.Table(
    "tt_runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("backend", sa.String(16)),
    sa.Column("config", sa.JSON),
    sa.Column("seed", sa.Integer),
    sa.Column("symbols", sa.JSON),
    sa.Column("slice_start", sa.Date),
    sa.Column("slice_end", sa.Date),
    sa.Column("data_fingerprint", sa.String(64)),
    sa.Column("package_versions", sa.JSON),
    sa.Column("code_version", sa.String(64)),
    sa.Column("checkpoint_dir", sa.Text),
    sa.Column("episodes_done", sa.Integer),
    sa.Column("total_steps", sa.BigInteger),
    sa.Column("error", sa.Text),
    # A run trained as part of a group (train_mvp.py --seeds/--folds, tune_mvp.py): its group, its walk-forward
    # fold (None: no folds) and the sessions it is judged on (None: the held-out tail after its slice).
    sa.Column("group_id", sa.String(64), index=True),
    sa.Column("fold", sa.Integer),
    sa.Column("test_start", sa.Date),
    sa.Column("test_end", sa.Date),
)

groups = sa.Table(
    "tt_groups",
    metadata,
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "seeds" or "walk_forward"
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running / finished / failed / interrupted
    sa.Column("config", sa.JSON),  # the shared training settings, the seeds and the fold plan
    sa.Column("study", sa.String(128)),  # tune_mvp.py: the Optuna study and trial number it ran for
    sa.Column("trial", sa.Integer),
)

group_evaluations = sa.Table(
    "tt_group_evaluations",
    metadata,
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("policy", sa.String(32), primary_key=True),
    sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("slice_start", sa.Date),  # first and last out-of-sample session over all folds
    sa.Column("slice_end", sa.Date),
    sa.Column("iqm_sharpe", sa.Double),  # interquartile mean of the per-seed, per-fold Sharpe ratios
    sa.Column("iqm_low", sa.Double),
    sa.Column("iqm_high", sa.Double),
    sa.Column("stitched_sharpe", sa.Double),  # Sharpe of the stitched out-of-sample curve (agent: median seed)
    sa.Column("document", sa.JSON),  # the whole group evaluation (evaluate_mvp.py --group --json)
)

group_curves = sa.Table(
    "tt_group_curves",
    metadata,
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("policy", sa.String(32), primary_key=True),
    sa.Column("seed", sa.BigInteger, primary_key=True),  # the agent's training seed (--seed < 2**31); baselines: -1
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("fold", sa.Integer),
    sa.Column("daily_return", sa.Double, nullable=False),
    sa.Column("net_worth", sa.Double, nullable=False),  # stitched: each fold continues from the last one's end
)

episodes = sa.Table(
    "tt_episodes",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("episode", sa.Integer, primary_key=True),
    sa.Column("env_index", sa.Integer),
    sa.Column("steps", sa.Integer, nullable=False),
    sa.Column("start_date", sa.Date),
    sa.Column("end_date", sa.Date),
    sa.Column("reward_sum", sa.Double),
    sa.Column("net_worth_start", sa.Double),
    sa.Column("net_worth_end", sa.Double),
    sa.Column("max_drawdown", sa.Double),
    sa.Column("stop_reason", sa.String(24)),
    sa.Column("wall_time_s", sa.Double),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

steps = sa.Table(
    "tt_steps",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("episode", sa.Integer, primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("date", sa.Date),
    sa.Column("action", sa.JSON),
    sa.Column("target_weights", sa.JSON),
    sa.Column("reward", sa.Double),
    sa.Column("net_worth", sa.Double),
    sa.Column("cash", sa.Double),
    sa.Column("drawdown", sa.Double),
    sa.Column("turnover", sa.Double),
    sa.Column("fees", sa.Double),
)

evaluations = sa.Table(
    "tt_evaluations",
    metadata,
    sa.Column("evaluation_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("policy", sa.String(48), nullable=False),
    sa.Column("slice_start", sa.Date),
    sa.Column("slice_end", sa.Date),
    sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("total_return", sa.Double),
    sa.Column("cagr", sa.Double),
    sa.Column("annual_volatility", sa.Double),
    sa.Column("sharpe", sa.Double),
    sa.Column("sortino", sa.Double),
    sa.Column("max_drawdown", sa.Double),
    sa.Column("calmar", sa.Double),
    sa.Column("turnover", sa.Double),
    sa.Column("fees_paid", sa.Double),
    sa.Column("avg_gross_exposure", sa.Double),
    sa.Column("days_stopped", sa.Integer),
    sa.Column("final_net_worth", sa.Double),
    sa.Column("metrics", sa.JSON),
)

signals = sa.Table(
    "tt_signals",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("as_of", sa.Date, primary_key=True),  # the close the targets were computed at
    sa.Column("symbol", sa.String(32), primary_key=True),
    sa.Column("target_weight", sa.Double, nullable=False),  # what to hold from the next fill on
    sa.Column("raw_weight", sa.Double),  # the action map's weight, before vol targeting
    sa.Column("scale", sa.Double),  # vol-targeting factor applied to the raw weight
    sa.Column("capped_weight", sa.Double),  # after the per-asset and gross caps (= target_weight)
    sa.Column("previous_weight", sa.Double),  # the shadow portfolio's weight at the as-of close
    sa.Column("close", sa.Double),  # stored close at as_of, for the advisory trade list
)

shadow = sa.Table(
    "tt_shadow",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),  # the close the day ends at
    sa.Column("daily_return", sa.Double, nullable=False),
    sa.Column("net_worth", sa.Double, nullable=False),
    sa.Column("turnover", sa.Double, nullable=False),
    sa.Column("fees", sa.Double, nullable=False),
    sa.Column("signal_as_of", sa.Date),  # the signal traded that day (None: no signal, the portfolio held)
)

# Version -> step run inside the upgrade transaction after the additive pass; for changes that adding
# tables and nullable columns cannot express (renames, backfills). Versions 2 and 3 only added tables and
# nullable columns: no step.
UPGRADE_STEPS: dict[int, Callable[[sa.Connection], None]] = {}


def current_version(conn: sa.Connection) -> int:
    """Highest recorded schema version; 0 for a database without version table (created before versioning)."""
    if not sa.inspect(conn).has_table(schema_version.name):
        return 0
    return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)


def _add_missing_columns(conn: sa.Connection) -> list[str]:
    inspector = sa.inspect(conn)
    added = []
    for table in metadata.sorted_tables:
        existing = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in existing:
                continue
            type_sql = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {type_sql}'))
            added.append(f"{table.name}.{column.name}")
    return added


class SchemaRefused(Exception):
    """The live database cannot be brought to this schema without a decision only its owner can make."""


def _keyless_tables(conn: sa.Connection, present: list[sa.Table]) -> list[sa.Table]:
    """Tables that exist without their primary key (nor a unique index on its columns): created by hand or by a
    release before keys, every upsert into them fails."""
    inspector = sa.inspect(conn)
    live = inspector.get_multi_pk_constraint(filter_names=[t.name for t in present])
    keyless = []
    for table in present:
        wanted = [c.name for c in table.primary_key]
        key = live.get((None, table.name))
        if not wanted or (key and key["constrained_columns"]):
            continue
        indexes = inspector.get_indexes(table.name) + inspector.get_unique_constraints(table.name)
        if not any(i.get("unique", True) and i["column_names"] == wanted for i in indexes):
            keyless.append(table)
    return keyless


def _add_primary_key(conn: sa.Connection, table: sa.Table) -> str:
    """Add ``table``'s key (PostgreSQL: the primary key; SQLite, which cannot add one: a unique index, which upserts
    use alike). :raise SchemaRefused: when rows break it (duplicates or nulls), naming how many and a few."""
    columns = [c.name for c in table.primary_key]
    keys = ", ".join(columns)
    clashes = conn.execute(sa.text(
        f"SELECT {keys}, count(*) AS n FROM {table.name} GROUP BY {keys} "
        f"HAVING count(*) > 1 OR {' OR '.join(f'{c} IS NULL' for c in columns)} ORDER BY n DESC LIMIT 6"
    )).all()  # fmt: skip
    if clashes:
        shown = "; ".join(f"{', '.join(map(str, row[:-1]))} x{row[-1]}" for row in clashes[:5])
        raise SchemaRefused(
            f"{table.name} has no primary key ({keys}) and cannot get one: rows share a key or lack one (e.g. "
            f"{shown}{' ...' if len(clashes) > 5 else ''}). Delete the extra copies, then run again"
        )
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD PRIMARY KEY ({keys})"))
    else:
        conn.execute(sa.text(f"CREATE UNIQUE INDEX {table.name}_key ON {table.name} ({keys})"))
    return f"added the key of {table.name} ({keys})"


def ensure_schema(engine: sa.Engine) -> list[str]:
    """Create or upgrade the schema in place, in one transaction; return what changed (empty when nothing did).

    :raise SchemaRefused: (nothing changed) when a table without its primary key has rows that break it.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialize concurrent first runs (cron + a manual run) on the same database.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7263541)"))
        before = current_version(conn)
        inspector = sa.inspect(conn)
        missing = [t for t in metadata.sorted_tables if not inspector.has_table(t.name)]
        keyless = _keyless_tables(conn, [t for t in metadata.sorted_tables if t not in missing])
        if before == SCHEMA_VERSION and not missing and not keyless:
            return []
        metadata.create_all(conn, tables=missing)
        changes = [f"created table {t.name}" for t in missing]
        changes += [f"added column {c}" for c in _add_missing_columns(conn)]
        changes += [_add_primary_key(conn, t) for t in keyless]
        for version in range(before + 1, SCHEMA_VERSION + 1):
            if version in UPGRADE_STEPS:
                UPGRADE_STEPS[version](conn)
                changes.append(f"ran upgrade step {version}")
        if before < SCHEMA_VERSION:
            conn.execute(
                schema_version.insert().values(
                    version=SCHEMA_VERSION, applied_at=_now(), description=f"upgraded from version {before}"
                )
            )
            changes.append(f"schema version {before} -> {SCHEMA_VERSION}")
        return changes
