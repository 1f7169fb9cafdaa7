"""Daily-bar ingestion: watchlist -> fetch -> validate+store -> coverage -> features -> summary (docs/ingestion.md).

``python mvp_pipeline.py --start 2005-01-03 --end 2025-09-26 --source sample``. Safe to re-run and to schedule
with cron: incremental per symbol, one lock per database, a row in ``tt_ingest_runs`` per run, exit codes in
docs/exit_codes.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from tqdm import tqdm

import bar_store
import bar_validation
import coverage_check
import db_utils
import features
import ingest_log
import run_locks
import tt_schema as tables
import watchlist_loader as wl
from bar_files import Problem
from ibkr_pacing import IbSettings
from settings import REPO_ROOT, CommonSettings, ExitCode, UserError, format_config, parse_command, run_cli, setting

log = logging.getLogger("mvp_pipeline")
LOCK_NAME = "ingest"
FAILED_STATUSES = ("failed", "unknown_symbol", "no_data", "rejected")
_METADATA_COLUMNS = {"ib_con_id", "primary_exchange", "exchange", "currency", "first_available_date", "name"}


@dataclasses.dataclass(frozen=True)
class IngestSettings(IbSettings, CommonSettings):
    """Settings of ``mvp_pipeline.py`` (the IB connection settings are used by ``--source ibkr`` only)."""

    start: dt.date | None = setting(None, "first day wanted, YYYY-MM-DD (required)")
    end: dt.date | None = setting(None, "last day wanted, YYYY-MM-DD, not in the future (required)")
    watchlist: Path = setting(REPO_ROOT / "tensorwatchlist.csv", "watchlist CSV", env="TT_WATCHLIST")
    source: Literal["ibkr", "sample", "csv", "yfinance"] = setting(
        "ibkr", "where bars come from: ibkr (TWS/IB Gateway), sample (bundled), csv (--csv), yfinance", env="TT_SOURCE"
    )
    csv: Path | None = setting(None, "--source csv: a bar file (long, Yahoo, Stooq, ...; gzip ok) or a folder of them")
    date_format: str | None = setting(
        None, "--source csv: strptime format of the file dates, needed only when their day/month order is ambiguous"
    )
    min_coverage: float = setting(0.95, "flag symbols below this fraction of expected sessions", env="TT_MIN_COVERAGE")
    overlap_sessions: int = setting(5, "sample/csv/yfinance: sessions re-fetched before the last stored bar")
    calendar: str = setting(coverage_check.DEFAULT_CALENDAR, "exchange_calendars calendar for expected sessions")
    full_refresh: bool = setting(False, "fetch every symbol from --start, ignoring what is stored")
    flush_rows: int = setting(50_000, "file sources: store after at most this many fetched rows")
    dry_run: bool = setting(False, "fetch and validate only; write nothing to the database")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"--min-coverage must be between 0 and 1, got {self.min_coverage}")
        if self.overlap_sessions < 0 or self.flush_rows < 1:
            raise ValueError("--overlap-sessions must be >= 0 and --flush-rows >= 1")
        if self.date_format is not None:
            _check_date_format(self.date_format)


def _check_date_format(text: str) -> None:
    """A ``strptime`` format that reads back the dates it writes. :raise ValueError: naming the fault."""
    try:
        sample = dt.datetime(2001, 2, 3)
        ok = "%" in text and dt.datetime.strptime(sample.strftime(text), text).date() == sample.date()
    except ValueError as exc:
        raise ValueError(f"--date-format {text!r}: {exc}") from None
    if not ok:
        raise ValueError(f"--date-format {text!r} must give the year, month and day, e.g. %d/%m/%Y")


@dataclasses.dataclass
class SymbolReport:
    """One line of the summary table."""

    symbol: str
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    coverage: float = float("nan")
    status: str = "pending"
    error: str | None = None


def check_dates(settings: IngestSettings, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """``--start``/``--end`` given, in order and not in the future. :raise UserError: (exit code 2)."""
    today = today or dt.date.today()
    if settings.start is None or settings.end is None:
        raise UserError("--start and --end are required (YYYY-MM-DD)")
    if settings.end < settings.start:
        raise UserError(f"--end {settings.end} is before --start {settings.start}")
    if settings.end > today:
        raise UserError(f"--end {settings.end} is in the future (today is {today})")
    return settings.start, settings.end


@dataclasses.dataclass(frozen=True)
class Source:
    """A ready source: its fetch function, whether results may be batched (in-memory files), rows read and, for
    file sources, the rows and files not read."""

    fetch: wl.Fetcher
    batched: bool
    rows_read: int = 0
    read_s: float = 0.0
    problems: tuple[Problem, ...] = ()


def make_source(settings: IngestSettings) -> Source:
    """The source named by ``--source``; file sources are read here, so a bad file fails before any DB work."""
    for name, value in (("--csv", settings.csv), ("--date-format", settings.date_format)):
        if value is not None and settings.source != "csv":
            raise UserError(f"{name} only applies to --source csv (got --source {settings.source})")
    if settings.source in ("sample", "csv"):
        path = settings.csv if settings.source == "csv" else wl.SAMPLE_CSV
        if path is None:
            raise UserError("--source csv needs --csv PATH (a CSV file or a folder of per-symbol CSVs)")
        t0 = time.perf_counter()
        bars, problems = wl.read_bars_file(path, settings.date_format)
        fetch = wl.frame_source(bars, settings.overlap_sessions, str(path), problems)
        return Source(fetch, True, len(bars), time.perf_counter() - t0, tuple(problems))
    if settings.source == "yfinance":
        return Source(wl.yfinance_source(settings.overlap_sessions), False)
    return Source(_ibkr_fetcher(settings), False)


def _ibkr_fetcher(settings: IngestSettings) -> wl.Fetcher:
    import ibkr_source  # here, so that only --source ibkr loads ib_async

    def fetch(entries: list, start: dt.date, end: dt.date, since: dict) -> Iterator[wl.SymbolFetch]:
        return ibkr_source.fetch_price_history_ibkr(entries, start, end, since, settings)

    return fetch


class Ingest:
    """One ingest run over a connected database (the lock is held by the caller)."""

    def __init__(
        self, settings: IngestSettings, engine: sa.Engine, entries: list[wl.WatchlistEntry], source: Source
    ) -> None:
        self.settings, self.engine, self.entries = settings, engine, entries
        self.start, self.end = check_dates(settings)
        self.reports = {e.symbol: SymbolReport(e.symbol) for e in entries}
        self.unread_rows, self.unread_files = self.unread(source.problems)
        self.unread_per_symbol = Counter(p.symbol for p in self.unread_rows)
        self.timings: dict[str, dict[str, float]] = {}
        self.rejected: list[pd.DataFrame] = []
        self.warnings: list[str] = []
        self.changed: set[str] = set()
        self.say = ingest_log.CappedLog(log)  # per-symbol lines: a bounded number on stdout, all in the log file

    def unread(self, problems: Sequence[Problem]) -> tuple[list[Problem], list[Problem]]:
        """The rows and the files a file source could not read, of watchlist symbols or of no known symbol; those
        of other symbols are ignored, like their bars (listed in the log file)."""
        rows: list[Problem] = []
        files: list[Problem] = []
        ignored: list[Problem] = []
        for p in problems:
            if p.symbol is not None and p.symbol not in self.reports:
                ignored.append(p)
            else:
                (rows if p.line else files).append(p)
        if ignored:
            log.info("%d row(s) or file(s) not read, of symbols not in the watchlist: ignored", len(ignored))
            for problem in ignored:
                log.info("ignored, not read: %s", problem, extra=ingest_log.FILE_ONLY)
        return rows, files

    def stage(self, name: str, seconds: float, rows: int) -> None:
        """Record a stage's wall time and row count (rows/s in the benchmark)."""
        self.timings[name] = {"seconds": round(seconds, 4), "rows": int(rows)}

    def incremental_since(self) -> dict[str, dt.date]:
        """Last stored bar per symbol whose stored history already reaches back to its wanted start."""
        if self.settings.full_refresh:
            return {}
        ranges = db_utils.stored_date_ranges(self.engine, list(self.reports))
        first_available = self.first_available()
        wanted = [max(self.start, first_available.get(s) or self.start) for s in ranges.index]
        firsts = coverage_check.sessions_on_or_after(wanted, self.settings.calendar)
        return {
            str(symbol): row["last_date"]
            for (symbol, row), first in zip(ranges.iterrows(), firsts, strict=True)
            if row["first_date"] <= first
        }

    def first_available(self) -> dict[str, dt.date | None]:
        """``tt_symbols.first_available_date`` of the watchlist symbols."""
        t = tables.symbols
        query = sa.select(t.c.symbol, t.c.first_available_date).where(t.c.symbol.in_(list(self.reports)))
        with self.engine.connect() as conn:
            return {r.symbol: r.first_available_date for r in conn.execute(query)}

    def fetch_and_store(self, source: Source) -> None:
        """Pull each symbol from the source and store it promptly (file sources: up to ``flush_rows`` at once)."""
        since = self.incremental_since()
        log.info("fetching %d symbol(s) from %s (%d incremental)", len(self.entries), self.settings.source, len(since))
        pending: list[wl.SymbolFetch] = []
        fetch_s = store_s = 0.0
        rows = pending_rows = 0
        results = iter(source.fetch(self.entries, self.start, self.end, since))
        with tqdm(total=len(self.entries), unit="sym", desc="ingest", disable=None, file=sys.stderr) as bar:
            while True:
                t0 = time.perf_counter()
                item = next(results, None)
                fetch_s += time.perf_counter() - t0
                if item is None:
                    break
                pending.append(item)
                rows += len(item.bars)
                pending_rows += len(item.bars)
                bar.update(1)
                if not source.batched or pending_rows >= self.settings.flush_rows:
                    t0 = time.perf_counter()
                    self.flush(pending, since)
                    store_s += time.perf_counter() - t0
                    pending, pending_rows = [], 0
            t0 = time.perf_counter()
            self.flush(pending, since)
            store_s += time.perf_counter() - t0
        self.stage("fetch", fetch_s, rows)
        self.stage("store", store_s, rows)

    def flush(self, fetched: list[wl.SymbolFetch], since: dict[str, dt.date]) -> None:
        """Validate and store the bars of ``fetched`` in one upsert, then their ``tt_symbols`` metadata."""
        if not fetched:
            return
        frames = [f.bars for f in fetched if len(f.bars)]
        result = bar_store.UpsertResult()
        if frames and not self.settings.dry_run:
            bars = pd.concat(frames, ignore_index=True)
            result = bar_store.upsert_price_bars(self.engine, bars, source=self.settings.source)
        elif frames:
            _, rejected = bar_validation.validate_bars(pd.concat(frames, ignore_index=True))
            result.rejected_rows = rejected
            result.per_symbol = rejected.groupby("symbol").size().to_frame("rejected")
        if len(result.rejected_rows):
            self.rejected.append(result.rejected_rows)
        for f in fetched:
            self.record(f, result, since)
        if not self.settings.dry_run:
            with self.engine.begin() as conn:
                db_utils.upsert_rows(conn, tables.symbols, [self.symbol_row(f) for f in fetched], ["symbol"])

    def record(self, f: wl.SymbolFetch, result: bar_store.UpsertResult, since: dict[str, dt.date]) -> None:
        """Fill the summary line of one fetched symbol."""
        report = self.reports[f.symbol]
        unread = self.unread_per_symbol[f.symbol]  # rows its files hold but could not be read: on every run
        report.fetched = len(f.bars) + unread
        if f.symbol in result.per_symbol.index:
            counts = result.per_symbol.loc[f.symbol]
            for col in ("inserted", "updated", "unchanged", "rejected"):
                setattr(report, col, int(counts.get(col, 0)))
        report.rejected += unread
        if report.inserted or report.updated:
            self.changed.add(f.symbol)
        tried = len(f.bars) or (unread and f.status == wl.FetchStatus.UNKNOWN_SYMBOL)  # rows, not one valid
        if f.symbol in result.not_stored_symbols:
            report.status, report.error = "failed", result.error
        elif tried and report.rejected >= report.fetched:  # nothing stored is a failure, not low coverage
            report.status, report.error = "rejected", f"all {report.fetched} fetched row(s) rejected"
        elif f.status == wl.FetchStatus.STORED or (f.status == wl.FetchStatus.NO_DATA and f.symbol in since):
            report.status = "ok"  # NO_DATA for a stored symbol: nothing new since the last run
        else:
            message = f.error or str(f.status)
            report.status = str(f.status)
            report.error = f"IB error {f.error_code}: {message}" if f.error_code else message
        if report.error:
            self.say("failed symbols", logging.WARNING, "%s: %s", f.symbol, report.error)

    def symbol_row(self, f: wl.SymbolFetch) -> dict[str, Any]:
        """The ``tt_symbols`` row for a fetched symbol: watchlist fields, then what the source reported."""
        entry = next(e for e in self.entries if e.symbol == f.symbol)
        report = self.reports[f.symbol]
        row: dict[str, Any] = {
            "symbol": f.symbol, "name": entry.name or None, "sec_type": entry.sec_type, "exchange": entry.exchange,
            "primary_exchange": entry.primary_exchange or None, "currency": entry.currency,
            "source": self.settings.source, "status": report.status, "last_error": report.error,
            "updated_at": dt.datetime.now(dt.UTC),
        }  # fmt: skip
        meta = {("name" if k == "long_name" else k): v for k, v in f.metadata.items()}
        if f.first_available_date is not None:
            meta["first_available_date"] = f.first_available_date
        row.update({k: v for k, v in meta.items() if k in _METADATA_COLUMNS and v not in (None, "")})
        return row

    def check_coverage(self) -> None:
        """Coverage per symbol; flags and missing dates go to ``tt_symbols`` / ``tt_missing_dates``."""
        t0 = time.perf_counter()
        symbols = list(self.reports)
        windows = coverage_check.coverage_windows(symbols, self.start, self.end, self.first_available())
        stored = coverage_check.read_stored_dates(self.engine, symbols)
        report = coverage_check.compute_coverage(stored, windows, self.settings.min_coverage, self.settings.calendar)
        rows = coverage_check.symbol_rows(report, stored)
        for row in rows:
            line = self.reports[row["symbol"]]
            line.coverage = float("nan") if row["coverage"] is None else row["coverage"]
            if row["below_min_coverage"] and line.status == "ok":
                line.status = "low_coverage"
                self.say("low-coverage symbols", logging.WARNING, "%s: coverage %.1f%% is below --min-coverage",
                         line.symbol, 100 * line.coverage)  # fmt: skip
            row["status"] = line.status
        with self.engine.begin() as conn:
            db_utils.upsert_rows(conn, tables.symbols, rows, ["symbol"])
            added, gone = coverage_check.store_missing_dates(conn, report)
        for text in coverage_check.describe_missing(report):
            self.say("missing-date lines", logging.INFO, "%s", text)
        log.debug("tt_missing_dates: %d added, %d removed", added, gone)
        self.stage("coverage", time.perf_counter() - t0, sum(map(len, stored.values())))

    def check_features(self) -> None:
        """Recompute features for the symbols that changed and report implausibly large daily moves."""
        t0 = time.perf_counter()
        rows = 0
        if self.changed:
            bars = db_utils.read_price_bars(self.engine, sorted(self.changed))
            computed = features.compute_basic_features(bars)
            rows = len(computed)
            moves = features.large_moves(computed)
            for m in moves.head(20).itertuples():
                self.warnings.append(f"{m.symbol} {m.date:%Y-%m-%d}: daily move {m.ret:+.1%} (bad print or split?)")
                log.warning("large move: %s", self.warnings[-1])
            if len(moves) > 20:
                log.warning("... and %d more large moves", len(moves) - 20)
        self.stage("features", time.perf_counter() - t0, rows)

    def summary(self) -> pd.DataFrame:
        """The per-symbol summary table."""
        table = pd.DataFrame([dataclasses.asdict(r) for r in self.reports.values()]).set_index("symbol")
        return table.drop(columns="error")

    def report_rejected(self) -> dict[str, Any]:
        """Report the rows rejected or not read (not fatal): summarized on stdout, each one in the log file; and
        the files not read (exit 3), each one; what ``tt_ingest_runs.errors`` keeps of them."""
        rejected = pd.concat(self.rejected, ignore_index=True) if self.rejected else pd.DataFrame()
        label = str(self.settings.csv) if self.settings.source == "csv" else self.settings.source
        kept = ingest_log.report_rejected(log, rejected, label, self.unread_rows)
        if self.unread_files:
            log.warning("%d file(s) not read:", len(self.unread_files))
        for problem in self.unread_files:
            self.say("files not read", logging.WARNING, "  %s", problem)
        return {**kept, "unread_files": [dataclasses.asdict(p) for p in self.unread_files]}


def run(settings: IngestSettings, engine: sa.Engine, entries: list[wl.WatchlistEntry], source: Source) -> int:
    """Run the stages after the watchlist and the source are ready; return the exit code."""
    started = time.perf_counter()
    job = Ingest(settings, engine, entries, source)
    job.stage("read", source.read_s, source.rows_read)
    run_id = None if settings.dry_run else _open_run(engine, settings, job)
    code, status, errors = ExitCode.ERROR, "failed", {}
    try:
        job.fetch_and_store(source)
        rejected = job.report_rejected()
        if not settings.dry_run:
            job.check_coverage()
            job.check_features()
        job.say.close()
        table = job.summary()
        ingest_log.log_summary_table(log, table, FAILED_STATUSES)
        # a rejected or unreadable row is reported with exit 3 too (issue 13): the valid rest is stored
        partial = table["status"].isin(FAILED_STATUSES).any() or job.unread_files or table["rejected"].sum() > 0
        code = ExitCode.PARTIAL if partial else ExitCode.OK
        status = "finished" if code == ExitCode.OK else "partial"
        failed = {s: r.error for s, r in job.reports.items() if r.status in FAILED_STATUSES}
        errors = {"failed": failed, **rejected, "warnings": job.warnings}
        _log_totals(table, code, settings.dry_run)
        return int(code)
    except UserError as exc:
        code, errors = exc.exit_code, {"fatal": str(exc)}
        raise
    except (sa.exc.SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:  # a database exit code, no traceback
        error = _database_error(engine, exc)
        code, errors = error.exit_code, {"fatal": str(error)}
        raise error from None
    except KeyboardInterrupt:
        code, errors = ExitCode.INTERRUPTED, {"fatal": "interrupted"}
        raise
    except Exception as exc:
        errors = {"fatal": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        job.stage("total", time.perf_counter() - started, int(job.summary()["fetched"].sum()))
        if run_id is not None:
            try:
                outcome = (status, int(code), errors)
                ingest_log.finish_run(engine, run_id, job.summary(), FAILED_STATUSES, job.timings, outcome)
            except (sa.exc.SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:  # keep the run's own error
                log.warning("could not record the outcome in tt_ingest_runs (the next run marks it abandoned): %s",
                            str(exc).splitlines()[0])  # fmt: skip


def _open_run(engine: sa.Engine, settings: IngestSettings, job: Ingest) -> int:
    """Close rows of runs that died, then open this run's ``tt_ingest_runs`` row (arguments masked); its id."""
    try:
        ingest_log.close_abandoned_runs(engine, log)
        arguments = dict(line.split(" = ", 1) for line in format_config(settings).splitlines())
        return ingest_log.start_run(engine, arguments, settings.source, job.start, job.end)
    except (sa.exc.SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:
        raise _database_error(engine, exc) from None


def _database_error(engine: sa.Engine, exc: Exception) -> UserError:
    return db_utils.engine_error(engine, exc)


def _log_totals(table: pd.DataFrame, code: ExitCode, dry_run: bool) -> None:
    totals = table[["fetched", "inserted", "updated", "unchanged", "rejected"]].sum()
    log.info(
        "%s%d symbol(s): %s; %s -> exit %d (%s)", "dry run, nothing written: " if dry_run else "", len(table),
        ", ".join(f"{n} {s}" for s, n in table["status"].value_counts().items()),
        ", ".join(f"{v} {k}" for k, v in totals.items()), int(code), code.name,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse settings and run the ingest pipeline; see docs/ingestion.md."""
    settings = parse_command(IngestSettings, argv, "Ingest daily bars for the watchlist (docs/ingestion.md).")
    if settings is None:
        return 0
    with ingest_log.logging_to(log, settings.log_dir, settings.verbose) as log_path:
        check_dates(settings)
        db_utils.database_url(settings)  # a malformed DATABASE_URL is refused before any file is read
        entries = wl.load_watchlist(settings.watchlist)
        coverage_check.get_calendar(settings.calendar, settings.start)
        source = make_source(settings)
        log.info("watchlist %s: %d symbol(s); log file %s", settings.watchlist, len(entries), log_path)
        engine = db_utils.connect(settings, announce=log.info)
        try:
            with contextlib.nullcontext() if settings.dry_run else run_locks.run_lock(engine, LOCK_NAME):
                return run(settings, engine, entries, source)
        finally:
            engine.dispose()


def cli() -> int:
    """The ``mvp-pipeline`` console script (pyproject.toml): ``main`` with user errors as one line."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
