"""Bad input and faults, as a hostile new user would try them, through ``mvp_pipeline.main`` on SQLite and PostgreSQL.

Each row of :data:`CASES`: what is given, the exit code, a fragment of the one-line message, and what must (and must
not) be in the database afterwards. No run row may stay ``running``; no password may appear anywhere.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import db_utils
import ingest_log
import mvp_pipeline
import tt_schema as tables
import watchlist_loader as wl
from conftest import SAMPLE_CSV
from pg_proxy import CuttableProxy
from settings import REPO_ROOT, ExitCode, run_cli

JANUARY = ("--start", "2020-01-02", "--end", "2020-01-31")  # 21 sessions
SECRET = "Zx9secret"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Logs into the test's folder, no stray settings from the environment."""
    monkeypatch.setenv("TT_LOG_DIR", str(tmp_path / "log"))
    for name in ("TT_SOURCE", "TT_WATCHLIST", "TT_MIN_COVERAGE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str
    log: str


def ingest(capsys: pytest.CaptureFixture[str], url: str, *argv: str, log_dir: Path | None = None) -> Outcome:
    capsys.readouterr()
    code = run_cli(mvp_pipeline.main, ["--database-url", url, *argv])
    out, err = capsys.readouterr()
    log_file = (log_dir or Path(os.environ["TT_LOG_DIR"])) / "mvp_pipeline.log"
    text = log_file.read_text() if log_file.is_file() and not log_file.is_symlink() else ""
    return Outcome(code, out, err, text)


def january_csv(folder: Path, edit: Callable[[pd.DataFrame], None] | None = None) -> Path:
    """SPY and QQQ bars of January 2020 (21 sessions each) as a long CSV, after ``edit``."""
    sample = pd.read_csv(SAMPLE_CSV)
    bars = sample[sample["symbol"].isin(["SPY", "QQQ"]) & sample["date"].between("2020-01-02", "2020-01-31")]
    bars = bars.astype({"volume": "float64"}).reset_index(drop=True)
    if edit is not None:
        edit(bars)
    path = folder / "bars.csv"
    bars.to_csv(path, index=False)
    (folder / "watchlist.csv").write_text("symbol\nSPY\nQQQ\n")
    return path


def csv_args(folder: Path, edit: Callable[[pd.DataFrame], None] | None = None) -> list[str]:
    path = january_csv(folder, edit)
    return ["--source", "csv", "--csv", str(path), "--watchlist", str(folder / "watchlist.csv"), *JANUARY]


@dataclasses.dataclass(frozen=True)
class Stored:
    """What the database holds after a run; ``prices`` None = the schema was never created."""

    prices: int | None
    runs: tuple[str, ...] = ()
    symbols: dict[str, str] = dataclasses.field(default_factory=dict)
    text: str = ""  # every stored run row and symbol row as text, to grep for secrets


def stored(url: str) -> Stored:
    if url.startswith("sqlite") and not Path(sa.make_url(url).database or "").exists():
        return Stored(None)
    engine = db_utils.make_engine(url)
    try:
        if not sa.inspect(engine).has_table("tt_prices"):
            return Stored(None)
        with engine.connect() as conn:
            prices = conn.execute(sa.select(sa.func.count()).select_from(tables.prices)).scalar()
            runs = conn.execute(sa.select(tables.ingest_runs).order_by(tables.ingest_runs.c.run_id)).mappings().all()
            symbols = conn.execute(sa.select(tables.symbols)).mappings().all()
    finally:
        engine.dispose()
    text = " ".join(str(dict(r)) for r in [*runs, *symbols])
    return Stored(int(prices or 0), tuple(r["status"] for r in runs), {s["symbol"]: s["status"] for s in symbols}, text)


# ---------------------------------------------------------------------------------------------------- the table

Prepare = Callable[[Path, str], tuple[str, list[str]]]  # (folder, database URL) -> (URL to use, argv)


def bad_url(url: str) -> Prepare:
    return lambda folder, _db: (url, ["--source", "sample", *JANUARY])


def with_args(*argv: str) -> Prepare:
    return lambda folder, db: (db, ["--source", "sample", *JANUARY, *argv])  # later flags win


def config(content: bytes) -> Prepare:
    def prepare(folder: Path, db: str) -> tuple[str, list[str]]:
        (folder / "run.yaml").write_bytes(content)
        return db, ["--config", str(folder / "run.yaml"), "--source", "sample", *JANUARY]

    return prepare


def log_dir_is_a_file(folder: Path, db: str) -> tuple[str, list[str]]:
    (folder / "afile").write_text("")
    return db, ["--log-dir", str(folder / "afile"), "--source", "sample", *JANUARY]


def log_disk_full(folder: Path, db: str) -> tuple[str, list[str]]:
    (folder / "full").mkdir()
    (folder / "full" / "mvp_pipeline.log").symlink_to("/dev/full")  # every write: ENOSPC
    return db, ["--log-dir", str(folder / "full"), "--source", "sample", *JANUARY]


def non_finite(folder: Path, db: str) -> tuple[str, list[str]]:
    def edit(bars: pd.DataFrame) -> None:
        spy = bars.index[bars["symbol"] == "SPY"]
        for row, (col, value) in zip(spy[:7], [("open", np.inf), ("high", np.inf), ("low", -np.inf),
                                                ("close", np.inf), ("adj_close", np.inf), ("volume", np.inf),
                                                ("close", -np.inf)], strict=True):  # fmt: skip
            bars.loc[row, col] = value

    argv = csv_args(folder, edit)
    path = Path(argv[3])
    path.write_text(path.read_text().replace(",inf,", ",1e309,", 1))  # as a file may write it
    return db, argv


def all_rejected(folder: Path, db: str) -> tuple[str, list[str]]:
    def edit(bars: pd.DataFrame) -> None:
        bars.loc[bars["symbol"] == "QQQ", "close"] = -1.0

    return db, csv_args(folder, edit)


def corrupt_gzip(folder: Path, db: str) -> tuple[str, list[str]]:
    argv = csv_args(folder)
    path = folder / "bars.csv.gz"
    path.write_bytes(gzip.compress(Path(argv[3]).read_bytes())[:300])  # truncated, as by a broken download
    argv[3] = str(path)
    return db, argv


def day_month_dates(*extra: str) -> Prepare:
    """SPY and QQQ, 2020-01-02 .. 2020-01-10 (7 sessions each), dates written D/M/YYYY: no day above 12."""

    def prepare(folder: Path, db: str) -> tuple[str, list[str]]:
        argv = csv_args(folder)
        bars = pd.read_csv(argv[3])
        bars = bars[bars["date"] <= "2020-01-10"]
        bars.assign(date=pd.to_datetime(bars["date"]).dt.strftime("%d/%m/%Y")).to_csv(argv[3], index=False)
        return db, [*argv[:6], "--start", "2020-01-02", "--end", "2020-01-10", *extra]

    return prepare


def yahoo_folder(bad: dict[str, bytes]) -> Prepare:
    """SPY.csv and QQQ.csv in the Yahoo layout (January 2020), plus the files in ``bad``."""

    def prepare(folder: Path, db: str) -> tuple[str, list[str]]:
        argv = csv_args(folder)
        bars = pd.read_csv(argv[3]).rename(columns=str.title).rename(columns={"Adj_Close": "Adj Close"})
        files = folder / "files"
        files.mkdir()
        for symbol, rows in bars.groupby("Symbol"):
            rows.drop(columns="Symbol").to_csv(files / f"{symbol}.csv", index=False)
        for name, data in bad.items():
            (files / name).write_bytes(data)
        argv[3] = str(files)
        return db, argv

    return prepare


YAHOO_SPY = b"Date,Open,High,Low,Close,Volume\n2020-01-02,1.5,2,1,1.75,100\n"


def lock_in_the_way(target: str) -> Prepare:
    def prepare(folder: Path, db: str) -> tuple[str, list[str]]:
        lock = Path(f"{sa.make_url(db).database}.ingest.lock")
        if target == "folder":
            lock.mkdir(parents=True)
        else:
            lock.symlink_to("/dev/full")
        return db, ["--source", "sample", *JANUARY]

    return prepare


def sqlite_under_a_file(folder: Path, db: str) -> tuple[str, list[str]]:
    (folder / "afile").write_text("")
    return f"sqlite:///{folder / 'afile' / 'x.sqlite'}", ["--source", "sample", *JANUARY]


def read_only_sqlite(folder: Path, db: str) -> tuple[str, list[str]]:
    path = sa.make_url(db).database
    db_utils.apply_schema(db_utils.make_engine(db))
    return f"sqlite:///file:{path}?mode=ro&uri=true", ["--source", "sample", *JANUARY]


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    prepare: Prepare
    code: ExitCode
    fragment: str
    prices: int | None  # rows in tt_prices afterwards; None: the schema was never created
    runs: tuple[str, ...] = ()  # tt_ingest_runs statuses afterwards
    symbols: dict[str, str] = dataclasses.field(default_factory=dict)  # some tt_symbols statuses afterwards
    absent: tuple[str, ...] = ()  # never in stdout, stderr, the log file or the database
    only: str | None = None  # "sqlite" or "postgresql" when the case exists on one backend only


# fmt: off
CASES = [
    Case("url-not-a-url", bad_url("notaurl"), ExitCode.USAGE, "DATABASE_URL is not a URL", None),
    Case("url-one-slash", bad_url("postgresql:/broken"), ExitCode.USAGE, "DATABASE_URL is not a URL", None),
    Case("url-mysql", bad_url(f"mysql://u:{SECRET}@h/db"), ExitCode.USAGE, "unsupported database 'mysql'", None,
         absent=(SECRET,)),
    Case("url-libpq", bad_url(f"host=127.0.0.1 password={SECRET} dbname=test"), ExitCode.USAGE,
         "key=value connection strings are not supported", None, absent=(SECRET,)),
    Case("url-raw-slash", bad_url("postgresql://u:Zx9/secret@127.0.0.1/db"), ExitCode.USAGE,
         "cannot tell where the password ends", None, absent=("Zx9", "secret")),
    Case("url-raw-at", bad_url("postgresql://postgres:Zx9@secret@127.0.0.1:1/test"), ExitCode.DB_UNREACHABLE,
         "port 1 failed", None, absent=("Zx9", "secret")),
    Case("ib-port-range", with_args("--ib-port", "70000"), ExitCode.USAGE,
         "--ib-port: 70000 is outside the allowed range 1..65535", None),
    Case("config-float-for-int", config(b"overlap_sessions: 2.7\n"), ExitCode.USAGE,
         "--overlap-sessions: expected a whole number, got float 2.7", None),
    Case("config-list-for-path", config(b"watchlist: [a, b]\n"), ExitCode.USAGE,
         "--watchlist: expected a path, got list ['a', 'b']", None),
    Case("config-not-utf8", config(b"min_coverage: 0.5\n# caf\xe9\n"), ExitCode.USAGE, "not UTF-8 text", None),
    Case("log-dir-is-a-file", log_dir_is_a_file, ExitCode.FILESYSTEM, "cannot write mvp_pipeline.log", None),
    Case("log-disk-full", log_disk_full, ExitCode.FILESYSTEM, "No space left on device", None),
    Case("non-finite-values", non_finite, ExitCode.PARTIAL, "non-finite close: 2 in 1 symbol(s) (SPY 2)", 35,
         ("partial",), {"SPY": "low_coverage", "QQQ": "ok"}),
    Case("csv-corrupt-gzip", corrupt_gzip, ExitCode.USAGE, "bars.csv.gz: corrupt or truncated gzip file", None),
    Case("csv-ambiguous-dates", day_month_dates(), ExitCode.USAGE,
         "the dates ('02/01/2020') could be day/month or month/day; pass --date-format", None),
    Case("csv-date-format-given", day_month_dates("--date-format", "%d/%m/%Y"), ExitCode.OK, "2 ok; 14 fetched", 14,
         ("finished",), {"SPY": "ok", "QQQ": "ok"}),
    Case("csv-date-format-not-a-date", day_month_dates("--date-format", "%Y"), ExitCode.USAGE,
         "--date-format '%Y' must give the year, month and day", None),
    Case("csv-date-format-bad-directive", day_month_dates("--date-format", "%d/%Q"), ExitCode.USAGE,
         "--date-format '%d/%Q': 'Q' is a bad directive", None),
    Case("date-format-without-csv", with_args("--date-format", "%d/%m/%Y"), ExitCode.USAGE,
         "--date-format only applies to --source csv", None),
    Case("csv-folder-corrupt-gzip", yahoo_folder({"QQQ (1).csv.gz": gzip.compress(YAHOO_SPY)[:30], "IWM.csv": b""}),
         ExitCode.PARTIAL, "QQQ (1).csv.gz: QQQ: corrupt or truncated gzip file", 42, ("partial",),
         {"SPY": "ok", "QQQ": "ok"}),  # IWM: not in the watchlist, ignored
    Case("csv-folder-conflict", yahoo_folder({"spy.csv": YAHOO_SPY}), ExitCode.PARTIAL,
         "SPY: conflicting files for one symbol", 21, ("partial",), {"SPY": "failed", "QQQ": "ok"}),
    Case("all-rows-rejected", all_rejected, ExitCode.PARTIAL, "QQQ: all 21 fetched row(s) rejected", 21,
         ("partial",), {"SPY": "ok", "QQQ": "rejected"}),
    Case("source-refused-after-run-start", with_args("--ib-port", "1", "--ib-connect-timeout", "2", "--source",
         "ibkr"), ExitCode.SOURCE_UNAVAILABLE, "cannot connect to TWS / IB Gateway", 0, ("failed",)),
    Case("lock-file-is-a-folder", lock_in_the_way("folder"), ExitCode.FILESYSTEM, "cannot write the lock file", 0,
         only="sqlite"),
    Case("lock-file-disk-full", lock_in_the_way("full"), ExitCode.FILESYSTEM, "cannot write the lock file", 0,
         only="sqlite"),
    Case("sqlite-folder-is-a-file", sqlite_under_a_file, ExitCode.DB_ERROR, "its folder cannot be created", None,
         only="sqlite"),
    Case("sqlite-read-only", read_only_sqlite, ExitCode.DB_READONLY, "is read-only", 0, only="sqlite"),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case, db_url: str, env: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    if case.only not in (None, backend):
        pytest.skip(f"{case.id} is a {case.only} case")
    url, argv = case.prepare(env, db_url)
    got = ingest(capsys, url, *argv)
    assert got.code == case.code, got.err + got.out[-2000:]
    assert case.fragment in got.err + got.out and "Traceback" not in got.err
    if got.code not in (ExitCode.OK, ExitCode.PARTIAL):
        assert len(got.err.strip().splitlines()) == 1, got.err  # one line naming the cause
    after = stored(db_url)
    assert (after.prices, after.runs) == (case.prices, case.runs)
    assert {s: after.symbols.get(s) for s in case.symbols} == case.symbols
    for secret in case.absent:
        assert secret not in got.out + got.err + got.log + after.text


# ---------------------------------------------------------------------------------------------------- beyond the table


def test_non_finite_values_are_never_stored(db_url: str, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, argv = non_finite(env, db_url)
    assert "1e309" in Path(argv[3]).read_text()
    assert ingest(capsys, db_url, *argv).code == ExitCode.PARTIAL  # the rest is stored, the rejects reported
    bars = db_utils.read_price_bars(db_utils.make_engine(db_url))
    assert len(bars) == 35 and np.isfinite(bars[["open", "high", "low", "close", "volume"]].to_numpy()).all()


def test_stored_json_is_strict_so_postgresql_accepts_nan(engine: sa.Engine) -> None:
    assert db_utils.strict_json({"a": float("nan"), "b": [np.float64("inf"), np.int64(3)]}) == (
        '{"a": null, "b": [null, 3]}'
    )
    with engine.begin() as conn:  # a bare NaN in the JSON made PostgreSQL refuse the run update
        conn.execute(tables.ingest_runs.insert().values(started_at=pd.Timestamp.now(tz="UTC"), status="x",
                                                        errors={"rejected": [{"close": float("nan")}]}))  # fmt: skip
        errors = conn.execute(sa.select(tables.ingest_runs.c.errors)).scalar()
    assert (json.loads(errors) if isinstance(errors, str) else errors) == {"rejected": [{"close": None}]}


def test_old_prices_table_without_key_is_upgraded_or_refused(
    db_url: str, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = db_utils.make_engine(db_url)
    old = sa.MetaData()  # what an old release or a hand-made table looks like: the columns, no primary key
    sa.Table("tt_prices", old, *(sa.Column(c.name, c.type) for c in tables.prices.columns)).create(engine)
    row = "('SPY', '2020-01-02', 1, 1, 1, 1, 1, 1, 'x', NULL)"
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO tt_prices VALUES {row}, {row}"))
    got = ingest(capsys, db_url, *csv_args(env))
    assert got.code == ExitCode.DB_ERROR and "tt_prices has no primary key (symbol, date)" in got.err
    assert "SPY, 2020-01-02 x2" in got.err
    with engine.connect() as conn:  # refused: not recorded as upgraded
        assert tables.current_version(conn) == 0
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tt_prices"))
    got = ingest(capsys, db_url, *csv_args(env))
    assert got.code == ExitCode.OK and "added the key of tt_prices (symbol, date)" in got.out
    assert stored(db_url).prices == 42
    assert ingest(capsys, db_url, *csv_args(env)).code == ExitCode.OK  # the upsert works on the added key
    engine.dispose()


@pytest.mark.postgres
def test_database_lost_mid_ingest_exits_10_and_the_next_run_closes_the_row(
    pg_url: str, env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sa.make_url(db_utils.normalize_url(pg_url))
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    make_source = mvp_pipeline.make_source

    def cut_after_first_symbol(settings: mvp_pipeline.IngestSettings) -> mvp_pipeline.Source:
        source = make_source(settings)

        def fetch(entries: list, start: dt.date, end: dt.date, since: dict) -> Iterator[wl.SymbolFetch]:
            for i, item in enumerate(source.fetch(entries, start, end, since)):
                if i == 1:
                    proxy.cut()  # the server goes away while the lock is held and the run row is open
                yield item

        return dataclasses.replace(source, fetch=fetch, batched=False)

    monkeypatch.setattr(mvp_pipeline, "make_source", cut_after_first_symbol)
    got = ingest(capsys, through, *csv_args(env))
    assert got.code == ExitCode.DB_UNREACHABLE, got.err
    assert "Traceback" not in got.err and "connection lost" in got.err
    assert stored(pg_url).runs == ("running",)  # nothing could be written once the server was gone
    monkeypatch.setattr(mvp_pipeline, "make_source", make_source)
    proxy.restore()
    got = ingest(capsys, through, *csv_args(env))
    assert (
        got.code == ExitCode.OK and "marked 1 earlier run(s) still 'running' in tt_ingest_runs as abandoned" in got.out
    )
    assert stored(pg_url).runs == ("abandoned", "finished")
    proxy.cut()


@pytest.mark.postgres
@pytest.mark.parametrize(
    "form",
    [
        "postgresql://postgres:Zx9@secret@{where}",
        "postgresql://postgres:Zx9%40secret@{where}",
        "postgresql://postgres@{where}&password=Zx9secret",
    ],
)
def test_no_password_is_ever_shown_or_stored(
    form: str, pg_url: str, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The test server trusts local connections, so a run with any password goes through and records everything.
    parsed = sa.make_url(pg_url)
    where = pg_url.split("@", 1)[1]  # host:port/database?options=... (the fresh schema)
    url = form.format(where=where)
    outputs = [ingest(capsys, url, *csv_args(env)), ingest(capsys, url, "--print-config")]
    unreachable = url.replace(f"{parsed.host}:{parsed.port}", "127.0.0.1:1")
    outputs.append(ingest(capsys, unreachable, *csv_args(env)))
    assert [o.code for o in outputs] == [ExitCode.OK, ExitCode.OK, ExitCode.DB_UNREACHABLE]
    shown = " ".join(o.out + o.err + o.log for o in outputs) + stored(pg_url).text
    assert "***" in shown and "postgres" in shown
    for fragment in ("Zx9", "secret", "%40"):
        assert fragment not in shown


def test_ten_thousand_symbols_print_a_summary_not_thirty_thousand_lines(
    sqlite_url: str, env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    symbols = [f"S{i:04d}" for i in range(10_000)]
    days = pd.bdate_range("2020-01-06", "2020-01-08")
    bars = pd.DataFrame({"symbol": np.repeat(symbols, 3), "date": np.tile(days.strftime("%Y-%m-%d"), 10_000),
                         "open": -1.0, "high": 2.0, "low": 1.0, "close": 1.5, "volume": 100.0})  # fmt: skip
    bars.to_csv(env / "bars.csv.gz", index=False)
    (env / "watchlist.csv").write_text("symbol\n" + "\n".join(symbols) + "\n")
    argv = ["--source", "csv", "--csv", str(env / "bars.csv.gz"), "--watchlist", str(env / "watchlist.csv")]
    got = ingest(capsys, sqlite_url, *argv, "--start", "2020-01-06", "--end", "2020-01-08")
    assert got.code == ExitCode.PARTIAL
    assert len(got.out.splitlines()) < 100, got.out[:3000]
    assert "non-positive price: 30000 in 10000 symbol(s)" in got.out
    assert "10000 symbol(s): 10000 rejected; 30000 fetched" in got.out and "30000 rejected -> exit 3" in got.out
    assert got.log.count("rejected ") >= 30_000 and got.log.count(": all 3 fetched row(s) rejected") == 10_000


def test_a_log_file_filling_up_mid_run_warns_once_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger("fill_test")
    with ingest_log.logging_to(logger, tmp_path, verbose=False):
        handler = next(h for h in logger.handlers if isinstance(h, logging.FileHandler))
        assert handler.stream is not None
        handler.stream.close()
        handler.stream = open("/dev/full", "w")  # noqa: SIM115  (the disk fills up now; the handler closes it)
        for i in range(3):
            logger.info("line %d", i)
    out, err = capsys.readouterr()
    assert out.count("line") == 3 and err.count("cannot write the log file") == 1 and "Traceback" not in err


def test_documented_cron_line_works_on_a_fresh_checkout(tmp_path: Path) -> None:
    doc = (REPO_ROOT / "docs" / "ingestion.md").read_text()
    line = next(x for x in doc.splitlines() if x.startswith("15 23 * * 1-5"))
    command = line.split("  ", 1)[1].replace("\\%", "%")
    fresh = tmp_path / "checkout"  # no var/ yet, as after git clone
    fresh.mkdir()
    (fresh / "watchlist.csv").write_text("symbol\nSPY\n")
    command = (command.replace("cd /opt/tt", f"cd {fresh}")
               .replace("DATABASE_URL=postgresql://tt@db/tt", f"DATABASE_URL=sqlite:///{fresh / 'tt.sqlite'}")
               .replace(".venv/bin/python mvp_pipeline.py", f"{sys.executable} {REPO_ROOT / 'mvp_pipeline.py'}")
               .replace("mail -s ingest ops@example.com", "cat"))  # fmt: skip
    environ = {**os.environ, "TT_SOURCE": "sample", "TT_WATCHLIST": "watchlist.csv", "TT_LOG_DIR": "var/log"}
    environ.pop("DATABASE_URL", None)
    done = subprocess.run(["sh", "-c", command], env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    assert "-> exit 0 (OK)" in (fresh / "var" / "log" / "cron.out").read_text()
