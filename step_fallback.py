"""Reading a step-log fallback file back into the database: ``python train_mvp.py --load-steps FILE``.

:class:`step_logger.StepLogger` appends rows the database did not take to a JSON-lines file, one item a line
(``kind`` steps, episodes or run, its ``run_id`` and its rows). :func:`load_fallback` checks the whole file first
(valid JSON of another shape, or a run this database lacks, stores nothing), then writes the items in order;
every write is idempotent, so loading a file twice changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

import tt_schema as tables
from settings import ExitCode, UserError
from step_writes import RETRIABLE, STEP_COLUMNS, STEP_SCALARS, first_line, item_rows, write_item


def _restore(record: dict[str, Any]) -> dict[str, Any]:
    """Dates and times of episode rows and run updates back from their ISO text."""
    dated = {"start_date", "end_date", "slice_start", "slice_end"}
    stamped = {"finished_at", "started_at"}
    for row in record.get("rows", []) + ([record["values"]] if "values" in record else []):
        for key in dated & row.keys():
            row[key] = dt.date.fromisoformat(row[key]) if row[key] else None
        for key in stamped & row.keys():
            row[key] = dt.datetime.fromisoformat(row[key]) if row[key] else None
    return record


def _checked(record: Any) -> dict[str, Any]:
    """A fallback record as the logger writes it, restored for :func:`write_item`.

    :raise ValueError: (or KeyError/TypeError) any other shape, e.g. valid JSON from another tool.
    """
    if not isinstance(record, dict) or record.get("kind") not in ("steps", "episodes", "run"):
        raise ValueError("expected an object whose kind is steps, episodes or run")
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("no run_id")
    if record["kind"] == "steps":
        chunk, columns = record["chunk"], set(STEP_COLUMNS) - {"run_id"}
        if not isinstance(chunk, dict) or set(chunk) != columns:
            raise ValueError(f"a steps chunk has exactly the columns {', '.join(sorted(columns))}")
        arrays = {k: np.asarray(chunk[k], dtype=np.float64) for k in ("action", "target_weights", *STEP_SCALARS)}
        arrays |= {k: np.asarray(chunk[k], dtype=np.int64) for k in ("episode", "step")}
        arrays["date"] = np.array([dt.date.fromisoformat(d).isoformat() for d in chunk["date"]])
        wrong = [k for k, a in arrays.items() if a.ndim != (2 if k in ("action", "target_weights") else 1)]
        if wrong or len({len(a) for a in arrays.values()}) != 1:
            raise ValueError(f"steps columns of unequal lengths or wrong dimensions {wrong}")
        return {**record, "chunk": arrays}
    kind = record["kind"]
    table, rows = (tables.episodes, record["rows"]) if kind == "episodes" else (tables.runs, [record["values"]])
    for row in rows if isinstance(rows, list) else [None]:
        if not isinstance(row, dict) or not row.keys() <= set(table.c.keys()) or row.get("run_id", run_id) != run_id:
            raise ValueError(f"{kind} entries are objects of {table.name} columns of run {run_id}")
    return _restore(record)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, checked record) of each line of a fallback file.

    :raise ValueError: the first line that is not a step-log record, naming file and line.
    """
    number = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, _checked(json.loads(line))
    except (KeyError, TypeError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        where = "" if isinstance(exc, UnicodeDecodeError) else f", line {number}"  # decoding reads ahead
        raise ValueError(f"{path}{where}: not a step-log record ({type(exc).__name__}: {exc})") from None


def load_fallback(engine: sa.Engine, path: Path) -> tuple[int, int]:
    """Write a fallback file's items in order (idempotent: safe to run twice).

    The whole file is checked first, so a bad line or a run this database lacks stores nothing.

    :return: (step rows, episode rows) in the file.
    :raise ValueError: a line that is not a step-log record, or one the database rejects.
    :raise UserError: (NOT_FOUND) a run of the file is not in this database's ``tt_runs``.
    """
    runs = {item["run_id"] for _, item in _records(path)}
    with engine.connect() as conn:
        known = set(conn.execute(sa.select(tables.runs.c.run_id).where(tables.runs.c.run_id.in_(runs))).scalars())
    if runs - known:
        raise UserError(f"{path}: run(s) {', '.join(sorted(runs - known))} not found in tt_runs of this database; "
                        "load the file into the database the run was trained against", ExitCode.NOT_FOUND)  # fmt: skip
    steps = episodes = 0
    for number, item in _records(path):
        try:
            write_item(engine, item)
        except RETRIABLE:
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise ValueError(f"{path}, line {number}: rejected by the database ({first_line(exc)})") from None
        steps += item_rows(item)
        episodes += len(item.get("rows", []))
    return steps, episodes
