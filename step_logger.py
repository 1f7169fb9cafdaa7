"""Buffered, batched, outage-proof writes of ``tt_steps``, ``tt_episodes`` and ``tt_runs`` updates.

The training loop hands over numpy arrays (one entry per environment) and returns at once; a background
writer thread turns them into batches (``COPY`` on PostgreSQL, one ``executemany`` on SQLite) so the database
round trips overlap with the policy's torch work. When the database fails with a connection-type error the
batches stay in memory, in order, and are retried with a growing pause; training never waits for the database.
Rows still unwritten when the logger closes (or beyond ``max_pending_rows`` during a long outage) are appended
to a JSON-lines fallback file, which :func:`step_fallback.load_fallback` (``python train_mvp.py --load-steps
FILE``) writes later. Every write is idempotent (``ON CONFLICT DO NOTHING`` / upsert), so a batch whose commit
was lost in flight, or a file loaded twice, never duplicates a row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import ArrayLike

from db_utils import raw_url
from settings import scrub_secrets
from step_writes import RETRIABLE, STEP_SCALARS, first_line, item_rows, write_item

INBOX_ITEMS = 64  # queued items before the caller waits for the writer (only while it is busy writing)


@dataclasses.dataclass
class LoggerReport:
    """What a :class:`StepLogger` wrote, and where the rest went."""

    steps_written: int = 0
    episodes_written: int = 0
    retries: int = 0
    unwritten_steps: int = 0
    fallback_file: Path | None = None
    lost_steps: int = 0  # step rows neither stored nor saved (the fallback file could not be written)
    errors: list[str] = dataclasses.field(default_factory=list)  # the first and the latest error only
    error_count: int = 0

    def add_error(self, text: str) -> None:
        """Count an error; keep only the first and the latest text, so a long outage cannot grow the report."""
        self.error_count += 1
        self.errors[1 if self.errors else 0 :] = [text]


# ------------------------------------------------------------------------------------------------ fallback


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def append_fallback(path: Path, items: Iterable[dict[str, Any]]) -> None:
    """Append items (one JSON object a line) to the fallback file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for item in items:
            record = {k: v for k, v in item.items() if k != "chunk"}
            if "chunk" in item:
                record["chunk"] = {k: _jsonable(v) for k, v in item["chunk"].items()}
            if "values" in item:
                record["values"] = {k: _jsonable(v) for k, v in item["values"].items()}
            if "rows" in item:
                record["rows"] = [{k: _jsonable(v) for k, v in row.items()} for row in item["rows"]]
            handle.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------ the logger


class StepLogger:
    """Collects steps, episodes and run updates on the caller's thread; a writer thread stores them."""

    def __init__(
        self,
        engine: sa.Engine,
        run_id: str,
        fallback_path: Path,
        *,
        batch_rows: int = 4096,
        max_pending_rows: int = 1_000_000,
        retry_pause: tuple[float, float] = (0.5, 30.0),
        announce: Callable[[str], object] = print,
    ) -> None:
        """:param fallback_path: JSON-lines file for rows the database did not take (created only if needed).
        :param batch_rows: step rows per batch handed to the writer.
        :param max_pending_rows: step rows kept in memory during an outage before the oldest spill to the file.
        :param retry_pause: first and longest pause between retries (doubling), in seconds.
        :param announce: where outage and recovery messages go.
        """
        self.engine, self.run_id, self.fallback_path = engine, run_id, fallback_path
        self.batch_rows, self.max_pending_rows = batch_rows, max_pending_rows
        self.retry_pause, self.announce = retry_pause, announce
        self.report = LoggerReport()
        self._parts: list[dict[str, Any]] = []
        self._buffered = 0
        # Every item is always in the inbox or the pending list, both guarded by this one lock, so close() sees
        # all of them even when the writer is stuck in a database call.
        self._inbox: deque[dict[str, Any] | None] = deque()
        self._pending: deque[dict[str, Any]] = deque()
        self._pending_rows = 0
        self._closed = False
        self._lock = threading.Condition()
        self._flushes: list[threading.Event] = []  # flush() calls waiting for the next complete write
        self._thread = threading.Thread(target=self._run, name="step-logger", daemon=True)
        self._thread.start()

    # --- caller side (hot path: no formatting, no I/O)
    def add_steps(self, episode: ArrayLike, step: ArrayLike, dates: ArrayLike, **arrays: ArrayLike) -> None:
        """Record one step of every environment: arrays of length B (``action, target_weights`` are (B, N)).

        :param arrays: ``action``, ``target_weights`` and each of :data:`STEP_SCALARS`.
        """
        part = {"episode": np.array(episode), "step": np.array(step), "date": np.array(dates)}
        part.update({k: np.array(arrays[k]) for k in ("action", "target_weights", *STEP_SCALARS)})
        self._parts.append(part)
        self._buffered += len(part["step"])
        if self._buffered >= self.batch_rows:
            self._push_steps()

    def add_episodes(self, rows: list[dict[str, Any]]) -> None:
        """Record finished episodes (``tt_episodes`` columns); their buffered steps are queued first."""
        self._push_steps()
        self._put({"kind": "episodes", "run_id": self.run_id, "rows": [{"run_id": self.run_id, **r} for r in rows]})

    def update_run(self, **values: Any) -> None:
        """Queue an update of this run's ``tt_runs`` row (e.g. ``episodes_done``, ``status``)."""
        self._push_steps()
        self._put({"kind": "run", "run_id": self.run_id, "values": values})

    def _push_steps(self) -> None:
        if not self._parts:
            return
        parts, self._parts, self._buffered = self._parts, [], 0
        chunk = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        self._put({"kind": "steps", "run_id": self.run_id, "chunk": chunk})

    def _put(self, item: dict[str, Any] | None) -> None:
        with self._lock:
            if item is not None:  # the stop signal never waits: the writer may be stuck in a database call
                self._lock.wait_for(lambda: len(self._inbox) < INBOX_ITEMS or self._closed)
            self._inbox.append(item)
            self._lock.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Queue what is buffered and wait until all of it is stored; False on timeout (e.g. during an outage)."""
        self._push_steps()
        done = threading.Event()
        self._put({"kind": "flush", "done": done})
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> LoggerReport:
        """Flush, stop the writer, and save whatever is still unwritten to the fallback file.

        :param timeout: how long to keep retrying an unreachable database before giving up to the file.
        """
        self._push_steps()
        self._put(None)
        self._thread.join(timeout)
        with self._lock:  # a writer still in a database call finds the lists empty and stops
            self._closed = True
            queued = [i for i in self._inbox if i is not None and i["kind"] != "flush"]
            leftovers = [*self._pending, *queued]
            self._pending.clear()
            self._inbox.clear()
            self._pending_rows = 0
            if leftovers:
                self._spill(leftovers)
            self._lock.notify_all()
        return self.report

    # --- writer thread
    def _spill(self, items: list[dict[str, Any]]) -> None:
        rows = sum(item_rows(i) for i in items)
        try:
            append_fallback(self.fallback_path, items)
        except OSError as exc:  # full or unwritable --log-dir: count the loss instead of killing the writer
            self.report.lost_steps += rows
            self.report.add_error(f"cannot write the fallback file {self.fallback_path}: {exc.strerror or exc}")
            return
        self.report.fallback_file = self.fallback_path
        self.report.unwritten_steps += rows

    def _take(self, deadline: float | None) -> bool:
        """Move queued items to the pending list, first waiting for one until ``deadline`` (monotonic; None: no
        limit); False once the stop signal came."""
        running = True
        with self._lock:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            self._lock.wait_for(lambda: self._inbox or self._closed, timeout)
            while self._inbox:
                item = self._inbox.popleft()
                if item is None:
                    running = False
                elif item["kind"] == "flush":
                    self._flushes.append(item["done"])
                else:
                    self._pending.append(item)
                    self._pending_rows += item_rows(item)
            self._lock.notify_all()
        return running

    def _run(self) -> None:
        pause, retry_at, running = 0.0, None, True
        while running or self._pending:
            running = self._take(retry_at) and running
            if self._closed:
                return  # close() gave up waiting and saved everything
            if running and retry_at is not None and time.monotonic() < retry_at:
                self._limit_memory()
                continue  # pausing after a failed write: keep taking items, leave the database alone
            if self._write_pending():
                if pause:
                    self.announce(f"step log: database reachable again; {self.report.retries} retries so far")
                pause, retry_at = 0.0, None
                for done in self._flushes:
                    done.set()
                self._flushes.clear()
            else:
                if not running:
                    return  # close() saves what is left
                pause = min(max(pause * 2, self.retry_pause[0]), self.retry_pause[1])
                retry_at = time.monotonic() + pause
                self._limit_memory()

    def _write_pending(self) -> bool:
        """Write pending items in order; True when all are stored (or were unwritable and went to the file)."""
        while (item := next(iter(self._pending), None)) is not None:  # close() may empty the list meanwhile
            try:
                write_item(self.engine, item)
            except RETRIABLE as exc:
                self.report.retries += 1
                if self.report.retries == 1 or not self.report.errors:
                    self.announce(f"step log: database unavailable, keeping rows and retrying: {self._text(exc)}")
                self.report.add_error(self._text(exc))
                return False
            except sa.exc.SQLAlchemyError as exc:  # not an outage: retrying cannot help, keep the rows
                self.report.add_error(self._text(exc))
                self.announce(
                    f"step log: batch rejected by the database, saved to {self.fallback_path}: {self._text(exc)}"
                )
                with self._lock:
                    self._spill([item])
            else:
                if item["kind"] == "steps":
                    self.report.steps_written += item_rows(item)
                self.report.episodes_written += len(item.get("rows", []))
            with self._lock:
                if self._pending and self._pending[0] is item:
                    self._pending.popleft()
                    self._pending_rows -= item_rows(item)
        return True

    def _text(self, exc: BaseException) -> str:
        """The error's first line, without the database password (a driver may echo parts of the URL)."""
        return scrub_secrets(first_line(exc), raw_url(self.engine))

    def _limit_memory(self) -> None:
        with self._lock:
            spilled = []
            while self._pending_rows > self.max_pending_rows and len(self._pending) > 1:
                item = self._pending.popleft()
                self._pending_rows -= item_rows(item)
                spilled.append(item)
            if spilled:
                self._spill(spilled)
