"""What an ingest run reports: a bounded summary on stdout, every detail in the log file, its ``tt_ingest_runs`` row.

A 10,000-symbol run must not print 30,000 lines: per-symbol lines of one kind (failed symbols, missing dates,
rejected rows) reach stdout up to :data:`CONSOLE_LINES` times, then only the log file; rejected rows are
condensed by ``bar_files.summarize_problems``. docs/ingestion.md describes the log and the run rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

import tt_schema as tables
from bar_files import Problem, summarize_problems
from bar_validation import VALUE_COLUMNS
from settings import ExitCode, UserError

CONSOLE_LINES = 20  # per kind of per-symbol line
STORED_REJECTED_ROWS = 10_000  # rejected rows kept in tt_ingest_runs.errors (all of them go to the log file)
FILE_ONLY: dict[str, Any] = {"to": "file"}  # ``extra=`` of a line for the log file only
CONSOLE_ONLY: dict[str, Any] = {"to": "console"}


class _LogFile(logging.FileHandler):
    """The run's log file. A write that fails mid-run (disk full) is reported once on stderr and ends file
    logging, instead of logging's traceback for every later line."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk fails the last flush too; that was reported already
            super().close()

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            print(f"warning: cannot write the log file {self.baseFilename} ({sys.exc_info()[1]}); "
                  "continuing without it", file=sys.stderr)  # fmt: skip


def _open_log_file(path: Path, first_line: str) -> _LogFile:
    """The log file, proven writable by writing ``first_line``. :raise UserError: ``FILESYSTEM`` when the folder
    cannot be created or the file written (a file in the way, no permission, disk full)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as probe:  # a full disk fails here, not on some later line
            probe.write(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S} INFO {first_line}\n")
        handler = _LogFile(path, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"log folder {path.parent}: cannot write {path.name} ({exc.strerror or exc})",
                        ExitCode.FILESYSTEM) from None  # fmt: skip
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler


@contextlib.contextmanager
def logging_to(log: logging.Logger, log_dir: Path, verbose: bool) -> Iterator[Path]:
    """Log to stdout and append to ``<log_dir>/<logger name>.log`` for the duration of a run."""
    path = Path(log_dir) / f"{log.name}.log"
    to_file = _open_log_file(path, f"{log.name} started (pid {os.getpid()})")
    to_file.addFilter(lambda record: getattr(record, "to", None) != "console")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(lambda record: getattr(record, "to", None) != "file")
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    # ib_async logs every IB error at ERROR, including pacing errors the fetcher handles and reports itself.
    logging.getLogger("ib_async").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    log.addHandler(console)
    log.addHandler(to_file)
    try:
        yield path
    except UserError as exc:  # run_cli prints it on stderr; keep it in the log file too
        to_file.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "error: %s", (exc,), None))
        raise
    finally:
        for handler in (console, to_file):
            log.removeHandler(handler)
            handler.close()


@dataclasses.dataclass
class CappedLog:
    """Per-kind cap on stdout: the first :data:`CONSOLE_LINES` lines of a kind go to stdout and the log file, the
    rest to the log file only; :meth:`close` says how many stdout did not show."""

    log: logging.Logger
    counts: Counter[str] = dataclasses.field(default_factory=Counter)

    def __call__(self, kind: str, level: int, message: str, *args: object) -> None:
        self.counts[kind] += 1
        self.log.log(level, message, *args, extra=FILE_ONLY if self.counts[kind] > CONSOLE_LINES else None)

    def close(self) -> None:
        for kind, n in self.counts.items():
            if n > CONSOLE_LINES:
                self.log.info("... and %d more %s in the log file", n - CONSOLE_LINES, kind, extra=CONSOLE_ONLY)


def log_summary_table(log: logging.Logger, table: pd.DataFrame, failed: tuple[str, ...]) -> None:
    """The per-symbol table: all of it to the log file; to stdout when short, else its failed and flagged rows
    first, at most :data:`CONSOLE_LINES`."""

    def text(frame: pd.DataFrame) -> str:
        return frame.to_string(float_format=lambda v: f"{v:.1%}")

    if len(table) <= CONSOLE_LINES:
        log.info("\n%s", text(table))
        return
    log.info("\n%s", text(table), extra=FILE_ONLY)
    rank = table["status"].map(lambda s: 0 if s in failed else 1 if s != "ok" else 2)
    shown = table.iloc[rank.to_numpy().argsort(kind="stable")[:CONSOLE_LINES]]
    log.info("\n%s\n... %d symbol(s) not shown (the whole table is in the log file)", text(shown),
             len(table) - len(shown), extra=CONSOLE_ONLY)  # fmt: skip


def rejected_problems(rejected: pd.DataFrame, source: str) -> list[Problem]:
    """One problem per rejected row (``bar_validation.validate_bars``): its file and line when the source gave
    them (else the source's name), symbol, reason and the values as given."""

    def shown(value: object) -> str:
        if isinstance(value, dt.date | pd.Timestamp) and not pd.isna(value):
            return f"{value:%Y-%m-%d}"
        return "" if pd.isna(value) else str(value)

    raw = rejected[[c for c in ("date", *VALUE_COLUMNS) if c in rejected]].map(shown).agg(",".join, axis=1)
    files = rejected["file"].astype(str) if "file" in rejected else pd.Series(source, index=rejected.index)
    lines = pd.to_numeric(rejected["line"], errors="coerce").fillna(0) if "line" in rejected else [0] * len(raw)
    return [
        Problem(f, int(n), None if pd.isna(s) else str(s), r, why)
        for f, n, s, r, why in zip(files, lines, rejected["symbol"], raw, rejected["reason"], strict=True)
    ]


def report_rejected(
    log: logging.Logger, rejected: pd.DataFrame, source: str, unread: Sequence[Problem] = ()
) -> dict[str, Any]:
    """Rejected rows, after ``unread`` (the rows a file source could not read): every one to the log file, a summary
    by reason (counts per symbol, first examples) to stdout.

    :return: what ``tt_ingest_runs.errors`` keeps: the total, the summary and the first
        :data:`STORED_REJECTED_ROWS` rows.
    """
    problems = [*unread, *(rejected_problems(rejected, source) if len(rejected) else [])]
    if not problems:
        return {"rejected_total": 0, "rejected_summary": [], "rejected": []}
    for problem in problems:
        log.warning("rejected %s", problem, extra=FILE_ONLY)
    summary = summarize_problems(problems)
    log.warning("%d row(s) rejected (each one is listed in the log file):", len(problems))
    for line in summary:
        log.warning("  %s", line)
    kept = [dataclasses.asdict(p) for p in problems[:STORED_REJECTED_ROWS]]
    return {"rejected_total": len(problems), "rejected_summary": summary, "rejected": kept}


# ---------------------------------------------------------------------------------------------------- run rows


def close_abandoned_runs(engine: sa.Engine, log: logging.Logger) -> None:
    """Runs still ``running`` while this run holds the lock died without closing their row (killed, or the
    database went away): mark them ``abandoned`` so no row claims to be running forever."""
    runs = tables.ingest_runs
    with engine.begin() as conn:
        closed = conn.execute(
            runs.update().where(runs.c.status == "running").values(
                status="abandoned", finished_at=dt.datetime.now(dt.UTC),
                errors={"fatal": "the run ended without recording its outcome (killed, or the database was lost)"},
            )
        ).rowcount  # fmt: skip
    if closed:
        log.warning("marked %d earlier run(s) still 'running' in tt_ingest_runs as abandoned", closed)


def start_run(engine: sa.Engine, arguments: dict[str, str], source: str, start: dt.date, end: dt.date) -> int:
    """Insert the run's ``tt_ingest_runs`` row (status running; ``arguments`` with secrets masked); its run id."""
    record = {"started_at": dt.datetime.now(dt.UTC), "status": "running", "source": source, "start_date": start,
              "end_date": end, "arguments": arguments}  # fmt: skip
    runs = tables.ingest_runs
    with engine.begin() as conn:
        return int(conn.execute(runs.insert().values(**record).returning(runs.c.run_id)).scalar_one())


def finish_run(
    engine: sa.Engine,
    run_id: int,
    table: pd.DataFrame,
    failed_statuses: tuple[str, ...],
    timings: dict[str, dict[str, float]],
    outcome: tuple[str, int, dict[str, Any]],
) -> None:
    """Close the run's row: ``outcome`` (status, exit code, errors), counts from the summary ``table`` (symbols
    with one of ``failed_statuses`` count as failed) and the stage timings."""
    status, code, errors = outcome
    failed = table["status"].isin(failed_statuses)
    values = {
        "finished_at": dt.datetime.now(dt.UTC), "status": status, "exit_code": code, "errors": errors,
        "timings": timings, "symbols_requested": len(table), "symbols_ok": int((~failed).sum()),
        "symbols_failed": int(failed.sum()),
        **{f"rows_{c}": int(table[c].sum()) for c in ("fetched", "inserted", "updated", "unchanged", "rejected")},
    }  # fmt: skip
    with engine.begin() as conn:
        conn.execute(tables.ingest_runs.update().where(tables.ingest_runs.c.run_id == run_id).values(**values))
