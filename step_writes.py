"""How step-log batches reach the database: ``tt_steps`` rows by binary ``COPY`` (PostgreSQL) or ``executemany``
(SQLite), episode rows and run updates, each in its own idempotent transaction.

Used by :class:`step_logger.StepLogger`'s writer thread and by :func:`step_fallback.load_fallback`. The PostgreSQL
path builds a whole batch in ``COPY``'s binary format with numpy (no per-row Python, which would hold the GIL
beside the training loop) and lets the server write the JSON columns; docs/training.md, Speed.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import sqlalchemy as sa

import tt_schema as tables
from db_utils import dbapi_cursor, upsert_rows

STEP_SCALARS = ("reward", "net_worth", "cash", "drawdown", "turnover", "fees")
STEP_COLUMNS = ("run_id", "episode", "step", "date", "action", "target_weights", *STEP_SCALARS)
# Errors worth retrying: the server or the path to it went away, or SQLite is locked by another writer.
RETRIABLE = (sa.exc.OperationalError, sa.exc.InterfaceError)

# SQLite's JSON arrays: 9 significant digits give float32 actions back exactly; target weights keep 12 (error
# below 1e-12 of the weight). Scalars use repr(), the shortest exact round trip.
_DIGITS = {np.dtype(np.float32): "%.9g", np.dtype(np.float64): "%.12g"}


def _json_rows(matrix: np.ndarray) -> list[str]:
    """One JSON array text per row, formatted by a single C-level ``%`` over the whole matrix."""
    matrix = np.atleast_2d(matrix)
    if matrix.dtype not in _DIGITS:
        matrix = matrix.astype(np.float64)
    row = "[" + ",".join([_DIGITS[matrix.dtype]] * matrix.shape[1]) + "]\n"
    return ((row * len(matrix)) % tuple(matrix.ravel().tolist())).split("\n")[:-1]


def _step_table(run_id: str, chunk: Mapping[str, Any]) -> np.ndarray:
    """The chunk as an object array of :data:`STEP_COLUMNS` (Python ints, floats and strings)."""
    table = np.empty((len(chunk["step"]), len(STEP_COLUMNS)), dtype=object)
    table[:, 0] = run_id
    for i, key in enumerate(("episode", "step", "date"), start=1):
        table[:, i] = np.asarray(chunk[key]).tolist()
    table[:, 4] = _json_rows(chunk["action"])
    table[:, 5] = _json_rows(chunk["target_weights"])
    for i, key in enumerate(STEP_SCALARS, start=6):
        table[:, i] = np.asarray(chunk[key], dtype=np.float64).tolist()
    return table


# PostgreSQL gets a chunk as one binary COPY into a temporary table of numbers and float8 arrays, built by a few
# numpy assignments; the server writes the JSON (array_to_json: the shortest text that reads back exactly) while
# moving the rows into tt_steps. Formatting the rows as text in Python instead held the GIL ~13 us a row, beside the
# training loop. Integers travel as bigint, so the server (not a silent numpy wrap-around) rejects values out of
# the table's range. A plain INSERT costs the server ~15% less than ON CONFLICT DO NOTHING, which is kept for the
# rare batch some of whose rows are stored already.
_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS tt_steps_stage (run_id text, episode bigint, step bigint, date date, "
    f"action float8[], target_weights float8[], {', '.join(f'{k} float8' for k in STEP_SCALARS)}) ON COMMIT DELETE ROWS"
)
_PG_COPY = (b"PGCOPY\n\xff\r\n\x00" + bytes(8), b"\xff\xff")  # signature, flags, no extension; end marker
_FLOAT8_OID = 701
_COLUMNS = ", ".join(STEP_COLUMNS)


def _copy_buffer(run_id: str, chunk: Mapping[str, Any]) -> bytes:
    """The chunk in PostgreSQL's binary COPY format for ``tt_steps_stage``: one numpy record per row (each
    field is its byte length, then its big-endian value; an array field adds a header and a length per item)."""
    days = np.asarray(chunk["date"], dtype="datetime64[D]") - np.datetime64("2000-01-01", "D")
    if np.isnat(days).any():
        raise ValueError("a step without a date")
    name, widths = run_id.encode(), {k: np.shape(chunk[k])[1] for k in ("action", "target_weights")}
    layout: list[tuple[Any, ...]] = [("fields", ">i2")]
    for key, kind in (("run_id", f"S{len(name)}"), ("episode", ">i8"), ("step", ">i8"), ("date", ">i4")):
        layout += [(f"{key}_size", ">i4"), (key, kind)]
    for key, width in widths.items():
        layout += [(f"{key}_size", ">i4"), (f"{key}_head", ">i4", (5,)), (key, [("size", ">i4"), ("x", ">f8")], width)]
    layout += [item for key in STEP_SCALARS for item in ((f"{key}_size", ">i4"), (key, ">f8"))]
    rows = np.empty(len(days), np.dtype(layout))
    rows["fields"] = len(STEP_COLUMNS)
    for key in ("run_id", "episode", "step", "date", *STEP_SCALARS):
        rows[f"{key}_size"] = rows.dtype[key].itemsize
        rows[key] = name if key == "run_id" else days if key == "date" else chunk[key]
    for key, width in widths.items():
        rows[f"{key}_size"] = 20 + 12 * width
        rows[f"{key}_head"] = (1, 0, _FLOAT8_OID, width, 1)  # 1 dimension, no NULLs, float8, size, lower bound
        rows[key]["size"], rows[key]["x"] = 8, chunk[key]
    return _PG_COPY[0] + rows.tobytes() + _PG_COPY[1]


def _pg_insert(chunk: Mapping[str, Any]) -> str:
    """Stage to ``tt_steps``; arrays of float32 values (the policy's actions) as float32's shortest text."""
    arrays = []
    for key in ("action", "target_weights"):
        with np.errstate(over="ignore"):
            single = np.array_equal(np.asarray(chunk[key], dtype=np.float32), chunk[key])
        arrays.append(f"array_to_json({key}::real[])" if single else f"array_to_json({key})")
    selected = ", ".join(["run_id", "episode", "step", "date", *arrays, *STEP_SCALARS])
    return f"INSERT INTO tt_steps ({_COLUMNS}) SELECT {selected} FROM tt_steps_stage"


def _pg_write(engine: sa.Engine, data: bytes, insert: str) -> None:
    with _raw_cursor(engine) as cursor:
        cursor.execute(_PG_STAGE)
        cursor.copy_expert(f"COPY tt_steps_stage ({_COLUMNS}) FROM STDIN WITH (FORMAT binary)", io.BytesIO(data))
        cursor.execute(insert)


def _encoded(engine: sa.Engine, run_id: str, chunk: Mapping[str, Any]) -> bytes | list[tuple[Any, ...]]:
    """The chunk as the backend takes it: binary COPY data (PostgreSQL) or parameter tuples (SQLite).

    :raise sa.exc.DataError: content no database could store (NaN or infinity in the JSON arrays, a date that is
        not ISO text): a rejected batch, not a crash of the writer thread.
    """
    try:
        if not all(np.isfinite(chunk[k]).all() for k in ("action", "target_weights")):
            raise ValueError("NaN or infinity in action or target_weights (not valid JSON)")
        if engine.dialect.name == "postgresql":
            return _copy_buffer(run_id, chunk)
        return list(map(tuple, _step_table(run_id, chunk).tolist()))
    except (TypeError, ValueError) as exc:
        raise sa.exc.DataError("write tt_steps", None, exc) from exc


def write_steps(engine: sa.Engine, run_id: str, chunk: Mapping[str, Any]) -> None:
    """Write a column chunk of steps in one transaction; rows already stored are left alone.

    :param chunk: arrays of equal length: ``episode, step, date`` (ISO strings), ``action, target_weights``
        (2-D) and the :data:`STEP_SCALARS`.
    """
    if not len(chunk["step"]):
        return
    rows = _encoded(engine, run_id, chunk)
    if isinstance(rows, bytes):
        try:
            _pg_write(engine, rows, _pg_insert(chunk))
        except sa.exc.IntegrityError:  # some rows stored already (a commit whose reply was lost, a file loaded twice)
            _pg_write(engine, rows, _pg_insert(chunk) + " ON CONFLICT DO NOTHING")
        return
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO tt_steps ({_COLUMNS}) VALUES ({', '.join('?' * len(STEP_COLUMNS))}) ON CONFLICT DO NOTHING",
            rows,
        )


@contextlib.contextmanager
def _raw_cursor(engine: sa.Engine) -> Iterator[Any]:
    """A DBAPI cursor inside one transaction; driver errors come out as SQLAlchemy's classes, as elsewhere."""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        with engine.begin() as conn, dbapi_cursor(conn) as cursor:
            yield cursor
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(None, None, exc, dbapi_error) from exc


def write_item(engine: sa.Engine, item: dict[str, Any]) -> None:
    """Store one queued item (``kind`` steps, episodes or run) in its own transaction; a run update applies only
    while the run is ``running`` (a resumed run is set back to it first): one declared dead meanwhile
    (``run_groups.abandon_trial_groups``) keeps its ``failed``."""
    kind = item["kind"]
    if kind == "steps":
        write_steps(engine, item["run_id"], item["chunk"])
        return
    with engine.begin() as conn:
        if kind == "episodes":
            upsert_rows(conn, tables.episodes, item["rows"], ("run_id", "episode"))
        else:
            r = tables.runs
            conn.execute(
                r.update().where(r.c.run_id == item["run_id"], r.c.status == "running").values(**item["values"])
            )


def item_rows(item: dict[str, Any]) -> int:
    """Step rows in an item (0 for episode rows and run updates)."""
    return len(item["chunk"]["step"]) if item["kind"] == "steps" else 0


def first_line(exc: BaseException) -> str:
    """The first line of a (database) error's text, for one-line messages."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
