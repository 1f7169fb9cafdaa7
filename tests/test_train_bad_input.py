"""train_mvp.py under bad input (issue 13): one line and a documented exit code, run records that tell the truth.

Each table row is one bad input: the arguments (``{tmp}`` is the test's folder), files written first, the exit code,
a fragment of the message, and what the database must hold afterwards. Every row runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from stable_baselines3 import PPO

import bar_store
import step_logger
import train_mvp
import tt_schema as tables
from conftest import REPO, TRAINING_SYMBOLS, engine_with_bars, read_table
from settings import ExitCode, run_cli

SYMBOLS = TRAINING_SYMBOLS
FAST = ["--symbols", ",".join(SYMBOLS), "--start", "2010-01-01", "--end", "2011-12-31", "--episode-length", "80",
        "--n-steps", "64", "--batch-size", "32", "--n-epochs", "1", "--seed", "7", "--n-envs", "1"]  # fmt: skip
OTHER_DB_STATE = {"run_id": "20990101-000000-abcdef", "folder": "{tmp}/other", "next_episode": 2, "episodes_done": 1,
                  "total_steps": 80, "settings": {"seed": 7, "symbols": list(SYMBOLS)}}  # fmt: skip
RUN_UPDATE = '{"kind": "run", "run_id": "nope", "values": {"status": "finished"}}'


def cli(engine: sa.Engine, tmp_path: Path, *args: str) -> int:
    """``train_mvp.py ARGS`` as the shell runs it (run_cli: one line on stderr for a user error); later flags win,
    so ``args`` may override the test folders."""
    url = engine.url.render_as_string(hide_password=False)
    folders = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--log-dir", str(tmp_path / "log")]
    return run_cli(train_mvp.main, [*folders, "--database-url", url, *args])


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def counts(engine: sa.Engine) -> dict[str, int]:
    return {t.name: len(read_table(engine, t)) for t in (tables.runs, tables.episodes, tables.steps)}


# ------------------------------------------------------------------------------------------------ before any run

NOTHING = {"tt_runs": 0, "tt_episodes": 0, "tt_steps": 0}


# (id, arguments, files written first {name: text}, exit code, message fragment); "{tmp}" is the test's folder
# fmt: off
BEFORE_ANY_RUN = [
    ("batch-size-0", ["--batch-size", "0"], {}, ExitCode.USAGE, "--batch-size: 0 must be >= 2"),
    ("n-steps-1", ["--n-steps", "1"], {}, ExitCode.USAGE, "--n-steps: 1 must be >= 2"),
    ("torch-threads-0", ["--torch-threads", "0"], {}, ExitCode.USAGE, "--torch-threads: 0 must be >= 1"),
    ("holdout-negative", ["--holdout", "-0.5"], {}, ExitCode.USAGE, "--holdout: -0.5 must be in [0, 1)"),
    ("holdout-1", ["--holdout", "1.0"], {}, ExitCode.USAGE, "--holdout: 1.0 must be in [0, 1)"),
    ("learning-rate-nan", ["--learning-rate", "nan"], {}, ExitCode.USAGE, "--learning-rate: 'nan' is not a number"),
    ("learning-rate-inf", ["--learning-rate", "inf"], {}, ExitCode.USAGE, "--learning-rate: inf must be a finite"),
    ("last-negative", ["--show-run", "latest", "--last", "-5"], {}, ExitCode.USAGE, "--last: -5 must be >= 0"),
    ("episodes-0", ["--episodes", "0"], {}, ExitCode.USAGE, "--episodes: 0 must be >= 1"),
    ("end-before-start", ["--start", "2011-06-01", "--end", "2011-01-01"], {}, ExitCode.USAGE,
     "--end 2011-01-01 is before --start 2011-06-01"),
    ("too-short-slice", ["--start", "2010-01-01", "--end", "2010-03-31"], {}, ExitCode.REFUSED,
     "the settings need at least"),
    ("checkpoint-dir-unwritable", ["--checkpoint-dir", "{tmp}/plain/ckpt"], {"plain": "a file"}, ExitCode.FILESYSTEM,
     "--checkpoint-dir {tmp}/plain/ckpt: cannot create or write the folder"),
    ("log-dir-unwritable", ["--log-dir", "{tmp}/plain/log"], {"plain": "a file"}, ExitCode.FILESYSTEM,
     "--log-dir {tmp}/plain/log: cannot create or write the folder"),
    ("resume-other-database", ["--resume", "{tmp}/other"],
     {"other/final.json": json.dumps(OTHER_DB_STATE), "other/final.zip": "never read"}, ExitCode.NOT_FOUND,
     "not found in tt_runs of this database"),
    ("resume-empty-settings", ["--resume", "{tmp}/other"],
     {"other/final.json": json.dumps({**OTHER_DB_STATE, "settings": {}}), "other/final.zip": "x"}, ExitCode.USAGE,
     "records no settings"),
    ("load-steps-a-list", ["--load-steps", "{tmp}/f.jsonl"], {"f.jsonl": "[1, 2]"}, ExitCode.USAGE,
     "f.jsonl, line 1: not a step-log record"),
    ("load-steps-no-chunk", ["--load-steps", "{tmp}/f.jsonl"],
     {"f.jsonl": RUN_UPDATE + '\n{"kind": "steps", "run_id": "r"}'}, ExitCode.USAGE,
     "f.jsonl, line 2: not a step-log record"),
    ("load-steps-unknown-columns", ["--load-steps", "{tmp}/f.jsonl"],
     {"f.jsonl": '{"kind": "episodes", "run_id": "r", "rows": [{"bogus": 1}]}'}, ExitCode.USAGE,
     "objects of tt_episodes columns"),
    ("load-steps-run-not-in-database", ["--load-steps", "{tmp}/f.jsonl"], {"f.jsonl": RUN_UPDATE},
     ExitCode.NOT_FOUND, "run(s) nope not found in tt_runs of this database"),
]
# fmt: on


@pytest.mark.parametrize(("args", "files", "code", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in BEFORE_ANY_RUN])
def test_refused_before_any_run(
    stored: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], files: dict[str, str],
    code: ExitCode, fragment: str,
) -> None:  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text.replace("{tmp}", str(tmp_path)))
    assert cli(stored, tmp_path, *FAST, *(a.replace("{tmp}", str(tmp_path)) for a in args)) == code
    assert fragment.replace("{tmp}", str(tmp_path)) in one_error_line(capsys)
    assert counts(stored) == NOTHING
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


# ------------------------------------------------------------------------------------------------ resume


def _truncate_model(folder: Path, engine: sa.Engine) -> None:
    model = folder / "final.zip"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def _drop_settings(folder: Path, engine: sa.Engine) -> None:
    state = json.loads((folder / "final.json").read_text())
    del state["settings"]
    (folder / "final.json").write_text(json.dumps(state))


def _revise_a_bar(folder: Path, engine: sa.Engine) -> None:
    p = tables.prices
    with engine.begin() as conn:
        conn.execute(p.update().where(p.c.symbol == "SPY", p.c.date == pd.Timestamp("2011-03-01").date())
                     .values(close=p.c.close * 1.01))  # fmt: skip


def _delete_a_bar(folder: Path, engine: sa.Engine) -> None:
    p = tables.prices
    with engine.begin() as conn:
        conn.execute(p.delete().where(p.c.symbol == "TLT", p.c.date == pd.Timestamp("2011-03-01").date()))


@pytest.mark.parametrize(
    ("damage", "code", "fragment"),
    [
        pytest.param(_truncate_model, ExitCode.USAGE, "final.zip: not a readable model", id="corrupt-zip"),
        pytest.param(_drop_settings, ExitCode.USAGE, "not a checkpoint state (KeyError: 'settings')", id="no-settings"),
        pytest.param(_revise_a_bar, ExitCode.REFUSED, "changed since it started", id="bar-revised"),
        pytest.param(_delete_a_bar, ExitCode.REFUSED, "changed since it started", id="bar-deleted"),
    ],
)
def test_a_refused_resume_leaves_the_finished_run_alone(
    stored: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture, damage: Callable[[Path, sa.Engine], None],
    code: ExitCode, fragment: str,
) -> None:  # fmt: skip
    assert cli(stored, tmp_path, *FAST, "--episodes", "1") == 0
    before = read_table(stored, tables.runs)
    folder = Path(before.iloc[0]["checkpoint_dir"])
    damage(folder, stored)
    capsys.readouterr()
    assert cli(stored, tmp_path, "--resume", str(folder), "--episodes", "1") == code
    assert fragment in one_error_line(capsys)
    after = read_table(stored, tables.runs)
    assert after.iloc[0]["status"] == "finished" and after.astype(str).equals(before.astype(str))
    assert counts(stored) == {"tt_runs": 1, "tt_episodes": 1, "tt_steps": 80}


def test_resume_after_new_bars_trains_on_exactly_the_recorded_slice(
    db_url: str, sample_bars: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    engine = engine_with_bars(db_url, sample_bars[sample_bars["date"] <= "2011-12-31"])
    holdout = [a for a in FAST if a not in ("--end", "2011-12-31")]  # the default slice: stored range minus 20%
    assert cli(engine, tmp_path, *holdout, "--episodes", "1") == 0
    run = read_table(engine, tables.runs).iloc[0]
    assert bar_store.upsert_price_bars(engine, sample_bars[sample_bars["date"] > "2011-12-31"]).ok  # a new year
    capsys.readouterr()
    assert cli(engine, tmp_path, "--resume", run["checkpoint_dir"], "--episodes", "1") == 0
    assert f".. {run['slice_end']}, seed 7" in capsys.readouterr().out  # the environment's last date
    after = read_table(engine, tables.runs).iloc[0]
    assert (after["slice_start"], after["slice_end"]) == (run["slice_start"], run["slice_end"])
    assert after["data_fingerprint"] == run["data_fingerprint"] and after["episodes_done"] == 2
    steps = read_table(engine, tables.steps)
    assert str(steps["date"].max())[:10] <= str(run["slice_end"]) and set(steps["episode"]) == {1, 2}
    engine.dispose()


# ------------------------------------------------------------------------------------------------ during training


def test_a_full_checkpoint_disk_fails_the_run_and_keeps_the_episode(
    stored: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: PPO, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PPO, "save", full)
    assert cli(stored, tmp_path, *FAST, "--episodes", "3") == ExitCode.FILESYSTEM
    assert "No space left on device" in one_error_line(capsys)
    run = read_table(stored, tables.runs).iloc[0]
    assert run["status"] == "failed" and "No space left on device" in run["error"] and not pd.isna(run["finished_at"])
    episodes = read_table(stored, tables.episodes)
    assert episodes["episode"].tolist() == [1] and episodes["steps"].tolist() == [80]  # finished before the save
    assert counts(stored)["tt_steps"] == 80


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(stored: sa.Engine, tmp_path: Path) -> None:
    url = stored.url.render_as_string(hide_password=False)
    command = [sys.executable, "-u", str(REPO / "train_mvp.py"), *FAST, "--episodes", "1000", "--database-url", url,
               "--checkpoint-dir", str(tmp_path / "ckpt"), "--log-dir", str(tmp_path / "log")]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (proc.stdout.readline() or "?").startswith("episode    2"):
            assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == ExitCode.INTERRUPTED and "Traceback" not in err, err
    assert " interrupted: " in out
    run = read_table(stored, tables.runs).iloc[0]
    assert run["status"] == "interrupted" and run["episodes_done"] >= 2
    assert (Path(run["checkpoint_dir"]) / "final.zip").is_file()
    episodes = read_table(stored, tables.episodes)
    cut = episodes["stop_reason"] == "interrupted"  # the episode in progress, unless the signal fell between two
    assert cut.sum() <= 1 and (~cut).sum() == run["episodes_done"]
    assert counts(stored)["tt_steps"] == episodes["steps"].sum() == run["total_steps"]  # every row flushed


# ------------------------------------------------------------------------------------------------ secrets

SECRET_URLS = {  # password forms; the test server trusts local connections, so any password connects
    "raw-at": ("postgres:sekretA@sekretB@", ("sekretA", "sekretB")),
    "percent-40": ("postgres:sekretA%40sekretB@", ("sekretA", "sekretB")),
    "query": ("postgres@", ("sekretC",)),
}


@pytest.mark.postgres
@pytest.mark.parametrize("form", list(SECRET_URLS))
def test_no_password_in_anything_train_prints_stores_or_writes(
    pg_url: str, sample_bars: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch, form: str,
) -> None:  # fmt: skip
    direct = engine_with_bars(pg_url, sample_bars)
    user, secrets = SECRET_URLS[form]
    url = pg_url.replace("postgres@", user, 1) + ("&password=sekretC" if form == "query" else "")
    write = step_logger.write_item

    def reject_steps(engine: sa.Engine, item: dict) -> None:  # rows only in the fallback file: the hint prints
        if item["kind"] == "steps":
            raise sa.exc.DataError("COPY", {}, ValueError("rejected"))
        write(engine, item)

    monkeypatch.setattr(step_logger, "write_item", reject_steps)
    folders = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--log-dir", str(tmp_path / "log")]
    assert run_cli(train_mvp.main, [*FAST, "--episodes", "2", "--database-url", url, *folders]) == ExitCode.PARTIAL
    assert run_cli(train_mvp.main, ["--database-url", url, "--print-config"]) == 0
    printed = capsys.readouterr()
    assert "--database-url <your DATABASE_URL>" in printed.out
    texts = {"stdout": printed.out, "stderr": printed.err}
    texts |= {str(p): p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()}
    texts["tt_runs"] = read_table(direct, tables.runs).to_json(date_format="iso")
    assert any(name.endswith(".jsonl") for name in texts) and any(name.endswith("final.json") for name in texts)
    leaks = [(name, secret) for name, text in texts.items() for secret in secrets if secret in text]
    assert leaks == []
    direct.dispose()
