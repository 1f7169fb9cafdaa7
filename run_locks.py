"""Run locks: at most one run of a command per database (cron and a manual run, or two cron runs, never overlap).

PostgreSQL: a session advisory lock. SQLite: ``flock`` on a file beside the database file. Either way a second
run is refused at once (``ExitCode.LOCKED``) rather than queued. docs/ingestion.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from settings import ExitCode, UserError


@contextlib.contextmanager
def run_lock(engine: sa.Engine, name: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock named ``name`` for the duration of a run.

    PostgreSQL: a session advisory lock on a dedicated connection. SQLite: ``flock`` on a file next to the
    database. A second run raises :class:`UserError` with ``ExitCode.LOCKED`` at once instead of waiting.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            # Keyed by schema too, so separate schemas of one database (and parallel tests) do not collide.
            key = conn.execute(sa.text("SELECT hashtext(:n || '@' || current_schema())"), {"n": name}).scalar()
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            conn.commit()
            if not got:
                raise UserError(
                    f"another run holds the lock {name!r} on this PostgreSQL database; this run did nothing "
                    "(wait for it to finish, or look for a stuck process)",
                    ExitCode.LOCKED,
                )
            try:
                yield
            finally:
                # A lost connection has released the session lock already; its error must not replace the
                # run's own (which says the database went away: exit 10).
                with contextlib.suppress(sa.exc.SQLAlchemyError):
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
        return
    db_path = Path(engine.url.database or "memory")
    handle = _take_lock_file(db_path.with_name(f"{db_path.name}.{name}.lock"))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # the flock is what matters; the holder note is a courtesy
            handle.seek(0)
            handle.truncate()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _take_lock_file(path: Path) -> IO[str]:
    """``path`` opened, flock-ed and holding this process's id.

    :raise UserError: ``LOCKED`` when another process holds it; ``FILESYSTEM`` when it cannot be written (a folder
        in the way, no permission, disk full).
    """

    def cannot_write(exc: OSError) -> UserError:
        return UserError(f"cannot write the lock file {path}: {exc.strerror or exc}; this run did nothing",
                         ExitCode.FILESYSTEM)  # fmt: skip

    try:
        handle = open(path, "a+")  # noqa: SIM115  (closed by run_lock)
    except OSError as exc:
        raise cannot_write(exc) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown process"
        handle.close()
        raise UserError(
            f"another run holds the lock {path} ({holder}); this run did nothing", ExitCode.LOCKED
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {dt.datetime.now().isoformat(timespec='seconds')}")
        handle.flush()
    except OSError as exc:
        handle.close()  # closing releases the flock
        raise cannot_write(exc) from None
    return handle
