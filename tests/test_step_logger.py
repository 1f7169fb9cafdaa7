"""step_logger: batched writes on both backends, idempotence, and no lost rows through a database outage."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import db_utils
import step_logger
import tt_schema as tables
from pg_proxy import CuttableProxy
from step_fallback import load_fallback
from step_logger import StepLogger
from step_writes import STEP_SCALARS, write_steps

N_ASSETS = 3


def _start_run(engine: sa.Engine, run_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(tables.runs.insert().values(run_id=run_id, status="running", started_at=dt.datetime.now(dt.UTC)))


def _feed(logger: StepLogger, rng: np.random.Generator, first_step: int, n_steps: int, n_envs: int = 2) -> None:
    """Steps ``first_step..first_step+n_steps-1`` of episodes 1..n_envs (one per environment)."""
    for step in range(first_step, first_step + n_steps):
        date = (dt.date(2010, 1, 1) + dt.timedelta(days=step)).isoformat()
        arrays = {k: rng.normal(size=n_envs) for k in STEP_SCALARS}
        logger.add_steps(
            np.arange(1, n_envs + 1), np.full(n_envs, step), [date] * n_envs,
            action=rng.uniform(-1, 1, (n_envs, N_ASSETS)).astype(np.float32),
            target_weights=rng.uniform(0, 0.3, (n_envs, N_ASSETS)), **arrays,
        )  # fmt: skip


def _stored(engine: sa.Engine, run_id: str) -> pd.DataFrame:
    query = sa.select(tables.steps).where(tables.steps.c.run_id == run_id).order_by("episode", "step")
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all())


def _expect_complete(engine: sa.Engine, run_id: str, n_steps: int, n_envs: int = 2) -> pd.DataFrame:
    frame = _stored(engine, run_id)
    assert len(frame) == n_steps * n_envs
    for _, group in frame.groupby("episode"):
        assert group["step"].tolist() == list(range(1, n_steps + 1))
    return frame


def test_round_trip_exact_values(engine: sa.Engine, tmp_path: Path) -> None:
    _start_run(engine, "r1")
    logger = StepLogger(engine, "r1", tmp_path / "fallback.jsonl", batch_rows=64)
    rng = np.random.default_rng(0)
    _feed(logger, rng, 1, 150)
    logger.add_episodes([{"episode": 1, "env_index": 0, "steps": 150, "reward_sum": 1.5}])
    logger.update_run(status="finished", episodes_done=1, total_steps=300)
    report = logger.close()
    assert (report.steps_written, report.episodes_written, report.fallback_file) == (300, 1, None)
    frame = _expect_complete(engine, "r1", 150)
    replay = np.random.default_rng(0)  # regenerate the first step's values and compare exactly
    scalars = {k: replay.normal(size=2) for k in STEP_SCALARS}
    action = replay.uniform(-1, 1, (2, N_ASSETS)).astype(np.float32)
    weights = replay.uniform(0, 0.3, (2, N_ASSETS))
    first = frame[frame["step"] == 1].sort_values("episode")
    assert first["reward"].tolist() == scalars["reward"].tolist()
    stored_action = np.array(first["action"].map(lambda a: a if isinstance(a, list) else json.loads(a)).tolist())
    assert stored_action.astype(np.float32).tolist() == action.tolist()  # float32 actions come back exactly
    targets = np.array(first["target_weights"].map(lambda a: a if isinstance(a, list) else json.loads(a)).tolist())
    if engine.dialect.name == "postgresql":  # the server's shortest exact text
        assert targets.tolist() == weights.tolist()
    else:  # 12 significant digits
        np.testing.assert_allclose(targets, weights, rtol=1e-11, atol=0)
    assert str(first["date"].iloc[0]) == "2010-01-02"
    with engine.connect() as conn:
        run = conn.execute(sa.select(tables.runs)).mappings().one()
        episode = conn.execute(sa.select(tables.episodes)).mappings().one()
    assert (run["status"], run["episodes_done"], run["total_steps"]) == ("finished", 1, 300)
    assert (episode["run_id"], episode["steps"], episode["reward_sum"]) == ("r1", 150, 1.5)


def test_write_steps_twice_stores_each_row_once(engine: sa.Engine, tmp_path: Path) -> None:
    logger = StepLogger(engine, "r2", tmp_path / "f.jsonl", batch_rows=10_000)
    _feed(logger, np.random.default_rng(1), 1, 20)
    chunk = logger._parts  # the caller-side buffer, as the writer would receive it
    merged = {k: np.concatenate([p[k] for p in chunk]) for k in chunk[0]}
    write_steps(engine, "r2", merged)
    write_steps(engine, "r2", merged)  # e.g. a commit whose reply was lost, retried
    logger.close()  # writes the same buffered rows a third time
    _expect_complete(engine, "r2", 20)


def _chunk(**changes: Any) -> dict[str, np.ndarray]:
    """One step of one environment as :func:`write_steps` takes it, with ``changes``."""
    chunk = {"episode": [1], "step": [1], "date": ["2010-01-04"], "action": [[0.5, -1.0, 0.25]],
             "target_weights": [[0.1, 0.2, 0.3]]} | {k: [1.0] for k in STEP_SCALARS}  # fmt: skip
    return {k: np.array(v) for k, v in (chunk | changes).items()}


@pytest.mark.postgres
def test_postgres_stores_the_shortest_exact_json_text(pg_url: str) -> None:
    engine = db_utils.make_engine(pg_url)
    tables.ensure_schema(engine)
    action = np.array([[0.1, -1.0, 0.7]], dtype=np.float32).astype(np.float64)  # as the env hands actions over
    write_steps(engine, "r", _chunk(action=action, target_weights=np.array([[0.1, 1 / 3, 2e-5]])))
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT action::text, target_weights::text, date FROM tt_steps")).one()
    assert tuple(row) == ("[0.1,-1,0.7]", "[0.1,0.3333333333333333,2e-05]", dt.date(2010, 1, 4))
    engine.dispose()


@pytest.mark.parametrize("change", [{"action": [[np.nan, 0, 0]]}, {"target_weights": [[0, np.inf, 0]]}])
def test_non_finite_arrays_are_rejected_not_stored(engine: sa.Engine, change: dict[str, Any]) -> None:
    with pytest.raises(sa.exc.DataError, match="NaN or infinity"):  # not valid JSON, on either backend
        write_steps(engine, "r", _chunk(**change))
    assert _stored(engine, "r").empty


@pytest.mark.postgres
@pytest.mark.parametrize(("change", "fragment"), [({"episode": [2**31]}, "out of range"), ({"date": ["x"]}, "x")])
def test_postgres_rejects_what_the_table_cannot_hold(pg_url: str, change: dict[str, Any], fragment: str) -> None:
    engine = db_utils.make_engine(pg_url)
    tables.ensure_schema(engine)
    with pytest.raises(sa.exc.DataError, match=fragment):  # not wrapped around or crashing the writer thread
        write_steps(engine, "r", _chunk(**change))
    assert _stored(engine, "r").empty
    engine.dispose()


@pytest.fixture
def proxied(pg_url: str) -> Iterator[tuple[CuttableProxy, sa.Engine, sa.Engine]]:
    """(proxy, engine through the proxy, direct engine) on a fresh PostgreSQL schema."""
    url = sa.make_url(db_utils.normalize_url(pg_url))
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    direct = db_utils.make_engine(pg_url)
    tables.ensure_schema(direct)
    through = db_utils.make_engine(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    yield proxy, through, direct
    proxy.cut()
    through.dispose()
    direct.dispose()


@pytest.mark.postgres
def test_outage_then_recovery_loses_nothing(proxied: tuple, tmp_path: Path) -> None:
    proxy, through, direct = proxied
    _start_run(direct, "r3")
    messages: list[str] = []
    logger = StepLogger(
        through, "r3", tmp_path / "f.jsonl", batch_rows=32, retry_pause=(0.05, 0.2), announce=messages.append
    )
    rng = np.random.default_rng(2)
    _feed(logger, rng, 1, 100)
    assert logger.flush(timeout=20)
    proxy.cut()
    _feed(logger, rng, 101, 200)  # training goes on while the database is unreachable
    assert not logger.flush(timeout=1.0)
    assert len(_stored(direct, "r3")) < 600
    proxy.restore()
    assert logger.flush(timeout=30)
    report = logger.close()
    assert report.retries > 0 and report.fallback_file is None
    assert any("unavailable" in m for m in messages) and any("reachable again" in m for m in messages)
    _expect_complete(direct, "r3", 300)


@pytest.mark.postgres
def test_outage_until_the_end_goes_to_the_fallback_file(proxied: tuple, tmp_path: Path) -> None:
    proxy, through, direct = proxied
    _start_run(direct, "r4")
    logger = StepLogger(through, "r4", tmp_path / "f.jsonl", batch_rows=50, retry_pause=(0.05, 0.1), announce=str)
    rng = np.random.default_rng(3)
    _feed(logger, rng, 1, 60)
    assert logger.flush(timeout=20)
    proxy.cut()
    _feed(logger, rng, 61, 90)
    logger.add_episodes([{"episode": 1, "env_index": 0, "steps": 150}])
    logger.update_run(status="finished")
    report = logger.close(timeout=5)
    assert report.fallback_file == tmp_path / "f.jsonl" and report.unwritten_steps == 180
    assert len(_stored(direct, "r4")) == 120
    assert load_fallback(direct, report.fallback_file) == (180, 1)
    assert load_fallback(direct, report.fallback_file) == (180, 1)  # a second load changes nothing
    _expect_complete(direct, "r4", 150)
    with direct.connect() as conn:
        assert conn.execute(sa.select(tables.runs.c.status)).scalar() == "finished"
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.episodes)).scalar() == 1


@pytest.mark.postgres
def test_terminated_backend_is_retried(pg_url: str, tmp_path: Path) -> None:
    engine = db_utils.make_engine(pg_url)
    tables.ensure_schema(engine)
    logger = StepLogger(engine, "r5", tmp_path / "f.jsonl", batch_rows=16, retry_pause=(0.05, 0.2), announce=str)
    rng = np.random.default_rng(4)
    _feed(logger, rng, 1, 40)
    assert logger.flush(timeout=20)
    with engine.connect() as conn:  # the pooled connection the writer uses (it is idle after the flush)
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    admin = db_utils.make_engine(pg_url)
    with admin.begin() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    _feed(logger, rng, 41, 60)
    assert logger.flush(timeout=30)
    assert logger.close().fallback_file is None
    _expect_complete(engine, "r5", 100)
    admin.dispose()
    engine.dispose()


@pytest.mark.postgres
def test_unstorable_batch_is_kept_in_the_file(pg_url: str, tmp_path: Path) -> None:
    engine = db_utils.make_engine(pg_url)
    tables.ensure_schema(engine)
    logger = StepLogger(engine, "r6", tmp_path / "f.jsonl", batch_rows=1000, announce=str)
    arrays = {k: np.zeros(1) for k in STEP_SCALARS}
    logger.add_steps(np.array([1]), np.array([1]), ["2010-01-04"], action=np.array([[np.nan]]),
                     target_weights=np.zeros((1, 1)), **arrays)  # fmt: skip
    report = logger.close()
    assert report.fallback_file is not None and report.unwritten_steps == 1 and report.errors
    line = json.loads(report.fallback_file.read_text().splitlines()[0])
    assert line["kind"] == "steps" and line["chunk"]["step"] == [1]
    engine.dispose()


def _closed_port() -> int:
    """A local TCP port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_outage_retries_after_a_growing_pause_not_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[float] = []
    write = step_logger.write_item

    def counted(engine: sa.Engine, item: dict[str, Any]) -> None:
        attempts.append(time.monotonic())
        write(engine, item)

    monkeypatch.setattr(step_logger, "write_item", counted)
    engine = db_utils.make_engine(f"postgresql://postgres@127.0.0.1:{_closed_port()}/test")
    logger = StepLogger(engine, "r7", tmp_path / "f.jsonl", batch_rows=2, retry_pause=(0.5, 30.0), announce=str)
    rng, batches, started = np.random.default_rng(7), 0, time.monotonic()
    while time.monotonic() - started < 2.0:  # one 2-row batch every few milliseconds, all during the outage
        _feed(logger, rng, batches + 1, 1)
        batches += 1
        time.sleep(0.005)
    during = len(attempts)
    report = logger.close(timeout=10)
    assert batches > 100
    assert 1 <= during <= 4  # at 0 s, then after pauses of 0.5 s and 1 s; not once per batch
    assert report.retries == report.error_count == len(attempts)  # close() adds one last attempt
    assert len(report.errors) == 2 and "127.0.0.1" in report.errors[0]  # first and latest error only
    assert report.unwritten_steps == 2 * batches and report.steps_written == 0
    assert report.fallback_file is not None and sum(1 for _ in report.fallback_file.open()) == batches
    engine.dispose()


def test_close_while_the_writer_is_stuck_saves_everything_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck(engine: sa.Engine, item: dict[str, Any]) -> None:  # a database call that hangs, then fails
        entered.set()
        release.wait(10)
        raise sa.exc.OperationalError("COPY", {}, ConnectionError("server closed the connection"))

    monkeypatch.setattr(step_logger, "write_item", stuck)
    engine = db_utils.make_engine(f"sqlite:///{tmp_path / 'unused.db'}")
    logger = StepLogger(engine, "r8", tmp_path / "f.jsonl", batch_rows=2, announce=str)
    rng = np.random.default_rng(8)
    _feed(logger, rng, 1, 1)
    assert entered.wait(10)
    _feed(logger, rng, 2, 40)  # queued behind the stuck write
    logger.update_run(status="finished")
    report = logger.close(timeout=0.2)
    assert report.fallback_file is not None
    records = [json.loads(line) for line in report.fallback_file.read_text().splitlines()]
    assert report.unwritten_steps == 82 and [r["kind"] for r in records] == ["steps"] * 41 + ["run"]
    assert [r["chunk"]["step"][0] for r in records[:-1]] == list(range(1, 42))  # in order
    release.set()
    logger._thread.join(5)
    assert not logger._thread.is_alive()  # the writer stops instead of waiting for items forever
    assert report.fallback_file.read_text().count("\n") == 42  # and adds nothing after close()
    engine.dispose()


def _reject_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every step batch is refused for its content (not an outage): it goes to the fallback file at once."""
    write = step_logger.write_item

    def reject(engine: sa.Engine, item: dict[str, Any]) -> None:
        if item["kind"] == "steps":
            raise sa.exc.DataError("COPY", {}, ValueError("rejected"))
        write(engine, item)

    monkeypatch.setattr(step_logger, "write_item", reject)


def test_an_unwritable_fallback_file_counts_the_lost_rows(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "plain").write_text("a file, not a folder")
    _start_run(engine, "r9")
    _reject_steps(monkeypatch)
    logger = StepLogger(engine, "r9", tmp_path / "plain" / "f.jsonl", batch_rows=4, announce=lambda _: None)
    _feed(logger, np.random.default_rng(9), 1, 10)
    logger.update_run(status="finished")
    report = logger.close(timeout=10)  # the writer survived the failed file writes: the run update is stored
    assert (report.lost_steps, report.unwritten_steps, report.fallback_file) == (20, 0, None)
    assert report.errors[-1] == f"cannot write the fallback file {tmp_path / 'plain' / 'f.jsonl'}: File exists"
    with engine.connect() as conn:
        assert conn.execute(sa.select(tables.runs.c.status)).scalar() == "finished"


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("not json", "line 3: not a step-log record (JSONDecodeError"),
        ('{"kind": "steps", "run_id": "r10", "chunk": {"episode": [1]}}', "line 3: not a step-log record"),
        ('{"kind": "run", "run_id": "r10", "values": {"nonsense": 1}}', "objects of tt_runs columns"),
        ('{"kind": "episodes", "run_id": "other", "rows": [{"run_id": "r10", "episode": 1}]}', "of run other"),
    ],
)
def test_a_fallback_file_with_one_bad_line_stores_nothing(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_line: str, fragment: str
) -> None:
    _start_run(engine, "r10")
    _reject_steps(monkeypatch)
    logger = StepLogger(engine, "r10", tmp_path / "f.jsonl", batch_rows=4, announce=lambda _: None)
    _feed(logger, np.random.default_rng(10), 1, 4)
    path = logger.close().fallback_file
    monkeypatch.undo()
    assert path is not None
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # two 4-row batches
    path.write_text("\n".join([*lines, bad_line]) + "\n")
    with pytest.raises(ValueError, match=re.escape(fragment)):
        load_fallback(engine, path)
    assert _stored(engine, "r10").empty
    path.write_text("\n".join(lines) + "\n")
    assert load_fallback(engine, path) == (8, 0)
    _expect_complete(engine, "r10", 4)
