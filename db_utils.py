"""Database access: engine from ``DATABASE_URL``, a fail-fast connection check, reads and row upserts.

PostgreSQL (psycopg2) for real deployments; an embedded SQLite file when ``DATABASE_URL`` is unset. Every write
is a transaction. Storing price bars (validated, unchanged rows never rewritten) is ``bar_store.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import io
import json
import math
import os
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

import tt_schema as tables
from bar_validation import VALUE_COLUMNS
from settings import ExitCode, UserError, mask_secret, scrub_secrets, split_url

# ---------------------------------------------------------------------------------------------------- engine


_DRIVERS = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "postgresql+psycopg2": "postgresql+psycopg2",
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
}
_URL_FORMS = "postgresql://user:password@host:5432/db or sqlite:////absolute/path.sqlite"


def database_url(settings: Any) -> tuple[str, bool]:
    """The database URL to use and whether it is the embedded SQLite default (:func:`make_engine` picks the
    driver). :raise UserError: (exit code 2, the value never echoed) when ``DATABASE_URL`` is not a URL of a
    supported database."""
    url = (getattr(settings, "database_url", None) or "").strip()
    if not url:
        return f"sqlite:///{Path(settings.sqlite_path).expanduser().resolve()}", True
    check_url(url)
    return url, False


def check_url(url: str) -> None:
    """Refuse what is not a URL of a supported database with one line that never shows the password.

    :raise UserError: (exit code 2) for a libpq ``key=value`` string, text that is not a URL, another database
        (``mysql://``), or a password whose end cannot be told (a raw ``/``, ``?`` or ``#`` in it).
    """
    parts = split_url(url)
    if parts is None:
        if "=" in url:
            raise UserError(f"DATABASE_URL: libpq key=value connection strings are not supported; write a URL: "
                            f"{_URL_FORMS} (percent-encode special characters in the password)")  # fmt: skip
        raise UserError(f"DATABASE_URL is not a URL: expected {_URL_FORMS}")
    scheme = parts.head[:-3].lower()
    if scheme not in _DRIVERS:
        raise UserError(f"DATABASE_URL: unsupported database {scheme!r}; expected {_URL_FORMS}")
    if parts.ambiguous and not scheme.startswith("sqlite"):
        raise UserError("DATABASE_URL: cannot tell where the password ends; percent-encode / ? # @ in it "
                        "(%2F %3F %23 %40)")  # fmt: skip


def normalize_url(url: str) -> str:
    """Give ``postgresql://`` and ``postgres://`` URLs the psycopg2 driver (SQLAlchemy 2.1 would pick psycopg 3),
    and percent-encode the credentials, so a raw ``@`` in a password (``user:pa@ss@host``) is the password's,
    not the host's."""
    parts = split_url(url)
    if parts is None or parts.ambiguous:
        return url
    head = _DRIVERS.get(parts.head[:-3].lower(), parts.head[:-3]) + "://"
    if parts.user is None:
        return head + parts.rest
    user = urllib.parse.quote(urllib.parse.unquote(parts.user), safe="")
    password = "" if parts.password is None else ":" + urllib.parse.quote(urllib.parse.unquote(parts.password), safe="")
    return f"{head}{user}{password}@{parts.rest}"


def strict_json(value: Any) -> str:
    """JSON text every database accepts: NaN and infinities become null (``json.dumps`` writes a bare ``NaN``,
    which PostgreSQL refuses); numpy scalars become Python numbers."""

    def finite(v: Any) -> Any:
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        return [finite(x) for x in v] if isinstance(v, list | tuple) else v

    return json.dumps(finite(value), allow_nan=False, default=str)


def make_engine(url: str) -> sa.Engine:
    """Create an engine with settings fit for this project (connect timeout, SQLite WAL and busy timeout)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            _make_folder(Path(path).parent, url)
        engine = sa.create_engine(url, connect_args={"timeout": 30}, json_serializer=strict_json)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # Keepalives make a silently dropped network path fail within ~25 s instead of hanging a write for hours.
    connect_args = (
        {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
        if url.startswith("postgresql")
        else {}
    )
    return sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True, json_serializer=strict_json)


def _make_folder(folder: Path, url: str) -> None:
    """Create the SQLite file's folder; a read-only place is exit 13, a file in the way exit 14 (not a traceback)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        read_only = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        code = ExitCode.DB_READONLY if read_only else ExitCode.DB_ERROR
        what = "is read-only" if read_only else "cannot be created"
        raise UserError(f"SQLite database {url}: its folder {what} ({exc.strerror})", code) from None


_PG_PROBLEMS: tuple[tuple[tuple[str, ...], ExitCode, str], ...] = (
    (("does not exist",), ExitCode.DB_MISSING, "database does not exist"),
    (
        ("password authentication failed", "no password supplied", "pg_hba.conf", "role", "authentication"),
        ExitCode.DB_AUTH,
        "authentication failed",
    ),
    (
        ("could not connect", "connection refused", "could not translate host", "timeout expired", "unreachable",
         "no route to host", "connection to server", "server closed the connection", "connection already closed",
         "could not receive data", "could not send data", "terminating connection", "ssl syscall error"),
        ExitCode.DB_UNREACHABLE,
        "host unreachable or connection lost",
    ),
)  # fmt: skip


def classify_connection_error(url: str, exc: BaseException) -> UserError:
    """Turn a driver error at connect time into a :class:`UserError` naming the problem and its exit code."""
    text = scrub_secrets(str(getattr(exc, "orig", exc) or exc).strip(), url)
    lowered = text.lower()
    shown = mask_secret(url)
    if url.startswith("sqlite"):
        # A new file in a read-only folder is "unable to open", not "readonly".
        new_in_read_only = "unable to open" in lowered and not os.access(
            Path(str(sa.make_url(url).database)).parent, os.W_OK
        )
        if "readonly" in lowered or "read-only" in lowered or new_in_read_only:
            return UserError(f"database {shown} is read-only: {text}", ExitCode.DB_READONLY)
        return UserError(f"cannot open SQLite database {shown}: {text}", ExitCode.DB_ERROR)
    for needles, code, what in _PG_PROBLEMS:
        if code == ExitCode.DB_MISSING and "database" not in lowered:
            continue
        if any(n in lowered for n in needles):
            return UserError(f"database {shown}: {what}: {text.splitlines()[0]}", code)
    return UserError(f"database {shown}: {text.splitlines()[0] if text else type(exc).__name__}", ExitCode.DB_ERROR)


def raw_url(engine: sa.Engine) -> str:
    """The engine's URL with its password: only ever for :func:`mask_secret`, :func:`scrub_secrets`, the error
    classification below and Optuna's ``RDBStorage`` (tune_mvp.py connects it to the same database), never to be
    shown as it is."""
    return engine.url.render_as_string(hide_password=False)


def engine_error(engine: sa.Engine, exc: BaseException) -> UserError:
    """:func:`classify_connection_error` for an error raised through ``engine``."""
    return classify_connection_error(raw_url(engine), exc)


def check_connection(engine: sa.Engine) -> None:
    """Connect once and check the database accepts writes; raise :class:`UserError` naming the problem if not."""
    url = raw_url(engine)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                read_only = conn.execute(sa.text("SELECT current_setting('transaction_read_only')")).scalar()
                if read_only == "on" or conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar():
                    raise UserError(f"database {mask_secret(url)} is read-only", ExitCode.DB_READONLY)
            else:
                # A rolled-back header write proves the file accepts writes (root ignores file permissions,
                # and BEGIN IMMEDIATE alone succeeds on a read-only WAL connection).
                version = conn.exec_driver_sql("PRAGMA user_version").scalar()
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    conn.exec_driver_sql(f"PRAGMA user_version = {int(version or 0)}")
                finally:
                    conn.exec_driver_sql("ROLLBACK")
    except sa.exc.SQLAlchemyError as exc:
        raise classify_connection_error(url, exc) from None


def connect(settings: Any, *, create_schema: bool = True, announce: Any = print) -> sa.Engine:
    """Engine for ``settings.database_url`` (embedded SQLite when unset), checked, with the schema up to date."""
    url, embedded = database_url(settings)
    if embedded:
        announce(f"Using embedded SQLite database at {sa.make_url(url).database} (set DATABASE_URL for PostgreSQL)")
    engine = make_engine(url)
    check_connection(engine)
    if create_schema:
        changes = apply_schema(engine)
        if changes:
            fresh = f"schema version 0 -> {tables.SCHEMA_VERSION}" in changes and all(
                c.startswith("created table") for c in changes[:-1]
            )
            announce(f"Database schema version {tables.SCHEMA_VERSION} created" if fresh else "Database schema: "
                     + "; ".join(changes))  # fmt: skip
    return engine


def apply_schema(engine: sa.Engine) -> list[str]:
    """:func:`tt_schema.ensure_schema`, with a database refusal (e.g. no permission to create tables) or a table
    that cannot get its key turned into a :class:`UserError` with a database exit code instead of a traceback."""
    try:
        return tables.ensure_schema(engine)
    except tables.SchemaRefused as exc:
        raise UserError(f"database {mask_secret(raw_url(engine))}: {exc}",
                        ExitCode.DB_ERROR) from None  # fmt: skip
    except sa.exc.SQLAlchemyError as exc:
        raise engine_error(engine, exc) from None


# ---------------------------------------------------------------------------------------------------- reads


def read_price_bars(
    engine: sa.Engine | sa.Connection,
    symbols: Sequence[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> pd.DataFrame:
    """Stored bars in long format (``symbol, date, open, high, low, close, adj_close, volume``), sorted by
    symbol then date; ``date`` as ``datetime64``. ``start``/``end`` are inclusive."""
    p = tables.prices
    query = sa.select(p.c.symbol, p.c.date, *(p.c[c] for c in VALUE_COLUMNS)).order_by(p.c.symbol, p.c.date)
    if symbols is not None:
        query = query.where(p.c.symbol.in_(list(symbols)))
    if start is not None:
        query = query.where(p.c.date >= start)
    if end is not None:
        query = query.where(p.c.date <= end)
    with _connection(engine) as conn:
        if conn.dialect.name == "postgresql":  # COPY is ~3x faster than fetching rows through the driver
            sql = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
            buffer = io.StringIO()
            with dbapi_cursor(conn) as cursor:
                cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", buffer)
            buffer.seek(0)
            names = ["symbol", "date", *VALUE_COLUMNS]
            # Only COPY's empty field is NULL: tickers such as NA or NAN must stay text.
            frame = pd.read_csv(
                buffer, names=names, dtype={"symbol": str, **dict.fromkeys(VALUE_COLUMNS, "float64")},
                keep_default_na=False, na_values=[""],
            )  # fmt: skip
        else:
            frame = pd.read_sql_query(query, conn, dtype=dict.fromkeys(VALUE_COLUMNS, "float64"))
    frame["date"] = pd.to_datetime(frame["date"])
    frame["symbol"] = frame["symbol"].astype(str)
    return frame


def stored_date_ranges(engine: sa.Engine | sa.Connection, symbols: Iterable[str] | None = None) -> pd.DataFrame:
    """First date, last date and bar count per stored symbol (index ``symbol``)."""
    p = tables.prices
    query = sa.select(
        p.c.symbol, sa.func.min(p.c.date).label("first_date"), sa.func.max(p.c.date).label("last_date"),
        sa.func.count().label("bars"),
    ).group_by(p.c.symbol)  # fmt: skip
    if symbols is not None:
        query = query.where(p.c.symbol.in_(list(symbols)))
    with _connection(engine) as conn:
        rows = conn.execute(query).all()
    frame = pd.DataFrame(rows, columns=["symbol", "first_date", "last_date", "bars"]).set_index("symbol")
    for col in ("first_date", "last_date"):
        frame[col] = pd.to_datetime(frame[col]).dt.date
    return frame


@dataclasses.dataclass(frozen=True)
class TrainingBars:
    """Stored bars for training: ``bars`` (long format, :func:`read_price_bars`), the ``symbols`` they contain,
    the ``flagged`` symbols (below the minimum coverage at the last ingest) with their coverage, and the requested
    symbols that have no usable bars (``missing``)."""

    bars: pd.DataFrame
    symbols: tuple[str, ...]
    flagged: dict[str, float | None]
    missing: tuple[str, ...] = ()


def load_training_bars(
    engine: sa.Engine,
    symbols: Sequence[str] | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    *,
    include_flagged: bool = False,
) -> TrainingBars:
    """The one way training and evaluation read stored bars: flagged (low-coverage) symbols are left out unless
    asked for.

    :param engine: database engine (:func:`connect`).
    :param symbols: symbols wanted; None = every stored symbol.
    :param start: first date (inclusive), None = from the first stored bar.
    :param end: last date (inclusive), None = to the last stored bar.
    :param include_flagged: keep symbols flagged below ``--min-coverage`` by the ingest run.
    """
    s = tables.symbols
    query = sa.select(s.c.symbol, s.c.coverage).where(s.c.below_min_coverage.is_(True))
    if symbols is not None:
        query = query.where(s.c.symbol.in_(list(symbols)))
    with engine.connect() as conn:
        flagged = {row.symbol: row.coverage for row in conn.execute(query)}
    wanted = None if symbols is None else [x for x in symbols if include_flagged or x not in flagged]
    bars = read_price_bars(engine, wanted, start, end)
    if symbols is None and not include_flagged:
        bars = bars[~bars["symbol"].isin(list(flagged))].reset_index(drop=True)
    used = tuple(sorted(bars["symbol"].unique()))
    missing = tuple(sorted(set(wanted or ()) - set(used)))
    return TrainingBars(bars, used, flagged, missing)


def upsert_rows(
    conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], key_columns: Sequence[str]
) -> None:
    """Insert rows or update the given columns of existing ones (``ON CONFLICT DO UPDATE`` on both dialects)."""
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite

    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    by_shape: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        by_shape.setdefault(tuple(sorted(row)), []).append(row)
    for shape, group in by_shape.items():
        stmt = insert(table)
        updates = {c: stmt.excluded[c] for c in shape if c not in key_columns}
        stmt = stmt.on_conflict_do_update(index_elements=list(key_columns), set_=updates) if updates else (
            stmt.on_conflict_do_nothing(index_elements=list(key_columns))
        )  # fmt: skip
        conn.execute(stmt, list(group))


@contextlib.contextmanager
def dbapi_cursor(conn: sa.Connection) -> Iterator[Any]:
    """The driver's own cursor on ``conn`` (for COPY, which SQLAlchemy does not wrap), closed afterwards."""
    cursor = conn.connection.cursor()  # the pool's proxy returns the driver's cursor itself
    try:
        yield cursor
    finally:
        cursor.close()


@contextlib.contextmanager
def _connection(engine: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    if isinstance(engine, sa.Connection):
        yield engine
    else:
        with engine.connect() as conn:
            yield conn
