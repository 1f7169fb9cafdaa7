"""train_mvp.py end to end on small slices: step log completeness, checkpoints, resume, outage, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import bar_store
import db_utils
import train_mvp
import training_run
import tt_schema as tables
from checkpoints import FINAL
from conftest import SAMPLE_CSV, TRAINING_SYMBOLS, read_table, run_train
from pg_proxy import CuttableProxy
from settings import ExitCode, UserError

SYMBOLS = TRAINING_SYMBOLS
# Tiny PPO and 80-step episodes on 2010-2011 (about 400 training sessions after the 20% holdout).
FAST = ["--symbols", ",".join(SYMBOLS), "--start", "2010-01-01", "--end", "2011-12-31", "--episode-length", "80",
        "--n-steps", "64", "--batch-size", "32", "--n-epochs", "1", "--seed", "7", "--n-envs", "1"]  # fmt: skip


def _train(engine: sa.Engine, tmp_path: Path, *extra: str) -> int:
    return run_train(engine, tmp_path, *FAST, *extra)


def _check_log(engine: sa.Engine, episodes: int) -> tuple[pd.Series, pd.DataFrame]:
    """Every episode's steps are 1..steps, its reward sum is the sum of its step rewards; returns run, episodes."""
    run = read_table(engine, tables.runs).iloc[-1]
    eps = read_table(engine, tables.episodes).sort_values("episode", ignore_index=True)
    steps = read_table(engine, tables.steps)
    assert eps["episode"].tolist() == list(range(1, episodes + 1))
    assert len(steps) == eps["steps"].sum() == run["total_steps"]
    for _, ep in eps.iterrows():
        mine = steps[steps["episode"] == ep["episode"]].sort_values("step")
        assert mine["step"].tolist() == list(range(1, ep["steps"] + 1))
        assert mine["reward"].sum() == pytest.approx(ep["reward_sum"], rel=1e-12, abs=1e-12)
        assert mine["net_worth"].iloc[-1] == ep["net_worth_end"]
    return run, eps


def test_two_episodes(stored: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _train(stored, tmp_path, "--episodes", "2") == 0
    run, eps = _check_log(stored, 2)
    assert (run["status"], run["episodes_done"], run["seed"]) == ("finished", 2, 7)
    assert run["symbols"] == list(SYMBOLS) and len(run["data_fingerprint"]) == 64
    assert str(run["slice_end"]) <= "2011-12-31" and run["config"]["env"]["episode_length"] == 80
    assert (eps["steps"] == 80).all() and set(eps["stop_reason"]) <= {"episode_length", "max_drawdown"}
    folder = Path(run["checkpoint_dir"])
    assert {p.name for p in folder.iterdir()} >= {"final.zip", "final.json", "episode_00001.zip", "episode_00002.zip"}
    assert json.loads((folder / "final.json").read_text())["next_episode"] == 3
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("episode ")]
    assert len(lines) == 2 and lines[1].startswith("episode    2  steps    80") and "steps/s" in lines[1]
    assert "finished: 2 episode(s), 160 env steps" in out


def test_timesteps_budget_and_normalization_saved_with_every_checkpoint(stored: sa.Engine, tmp_path: Path) -> None:
    """--timesteps is SB3's total_timesteps: whole rollouts of n_envs x n_steps until it is reached."""
    assert _train(stored, tmp_path, "--timesteps", "300", "--n-envs", "2") == 0  # 3 rollouts of 2 x 64
    run = read_table(stored, tables.runs).iloc[-1]
    assert (run["status"], run["total_steps"]) == ("finished", 384)
    assert len(read_table(stored, tables.steps)) == 384 and run["config"]["train"]["norm_obs"]
    folder = Path(run["checkpoint_dir"])
    zips = sorted(p.stem for p in folder.glob("*.zip"))
    assert zips and sorted(p.name.split(".")[0] for p in folder.glob("*.vecnormalize.pkl")) == zips


def test_holdout_tail_is_never_trained_on(stored: sa.Engine, tmp_path: Path) -> None:
    url = stored.url.render_as_string(hide_password=False)
    code = train_mvp.main(["--symbols", "SPY,TLT", "--episode-length", "80", "--n-steps", "64", "--batch-size",
                           "32", "--n-epochs", "1", "--n-envs", "1", "--database-url", url, "--checkpoint-dir",
                           str(tmp_path), "--log-dir", str(tmp_path), "--episodes", "1", "--no-step-log"])  # fmt: skip
    assert code == 0
    run = read_table(stored, tables.runs).iloc[0]
    dates = pd.read_csv(SAMPLE_CSV, usecols=["date", "symbol"]).query("symbol == 'SPY' and date >= '2009-06-01' "
                                                                   "and date <= '2012-12-31'")["date"]  # fmt: skip
    assert str(run["slice_end"]) == sorted(dates)[int(len(dates) * 0.8) - 1]
    assert read_table(stored, tables.steps).empty and len(read_table(stored, tables.episodes)) == 1


def test_resume_continues_numbering_and_log(stored: sa.Engine, tmp_path: Path) -> None:
    assert _train(stored, tmp_path, "--episodes", "1") == 0
    folder = Path(read_table(stored, tables.runs).iloc[0]["checkpoint_dir"])
    url = stored.url.render_as_string(hide_password=False)
    assert train_mvp.main(["--resume", str(folder / "final.zip"), "--episodes", "2", "--database-url", url]) == 0
    run, _ = _check_log(stored, 3)
    assert (run["status"], run["episodes_done"]) == ("finished", 3) and len(read_table(stored, tables.runs)) == 1
    # an older checkpoint is refused: episodes 2 and 3 were recorded after it
    with pytest.raises(UserError) as err:
        train_mvp.main(["--resume", str(folder / "episode_00001.zip"), "--episodes", "1", "--database-url", url])
    assert err.value.exit_code == ExitCode.REFUSED and "latest checkpoint" in str(err.value)


def test_ctrl_c_checkpoints_flushes_and_resumes(
    stored: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = training_run.EpisodeCallback.checkpoint

    def interrupt_after_first(self: training_run.EpisodeCallback, name: str) -> Path:
        path = checkpoint(self, name)
        if name != FINAL:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(training_run.EpisodeCallback, "checkpoint", interrupt_after_first)
    assert _train(stored, tmp_path, "--episodes", "3") == ExitCode.INTERRUPTED
    run, _ = _check_log(stored, 1)
    assert (run["status"], run["episodes_done"]) == ("interrupted", 1)
    assert (Path(run["checkpoint_dir"]) / "final.zip").is_file()
    monkeypatch.undo()
    url = stored.url.render_as_string(hide_password=False)
    assert train_mvp.main(["--resume", run["checkpoint_dir"], "--episodes", "1", "--database-url", url]) == 0
    assert _check_log(stored, 2)[0]["status"] == "finished"


def test_parallel_envs_number_episodes_in_start_order(stored: sa.Engine, tmp_path: Path) -> None:
    assert _train(stored, tmp_path, "--episodes", "3", "--n-envs", "2") == 0
    run, eps = _check_log(stored, 4)  # both environments finish together: 4 episodes complete at once
    assert run["episodes_done"] == 4 and sorted(eps["env_index"].tolist()) == [0, 0, 1, 1]


def test_same_seed_same_rewards(stored: sa.Engine, tmp_path: Path) -> None:
    assert _train(stored, tmp_path / "a", "--episodes", "2") == 0
    assert _train(stored, tmp_path / "b", "--episodes", "2") == 0
    eps = read_table(stored, tables.episodes)
    first, second = (g.sort_values("episode")["reward_sum"].tolist() for _, g in eps.groupby("run_id"))
    assert first == second  # bit-identical: single-threaded deterministic torch on CPU


def test_show_run(stored: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _train(stored, tmp_path, "--episodes", "1") == 0
    capsys.readouterr()
    url = stored.url.render_as_string(hide_password=False)
    assert train_mvp.main(["--show-run", "latest", "--last", "5", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "finished, 1 episodes, 80 steps" in out and "last 5 steps" in out
    assert out.split("last 5 steps:")[1].count("\n") == 1 + 5 + 1  # header, 5 rows, trailing newline
    with pytest.raises(UserError) as err:
        train_mvp.main(["--show-run", "nope", "--database-url", url])
    assert err.value.exit_code == ExitCode.NOT_FOUND


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--symbols", "SPY,ZZZZ"], ExitCode.REFUSED, "ZZZZ"),
        (["--start", "2030-01-01", "--end", "2030-12-31"], ExitCode.REFUSED, "no stored bars"),
        (["--start", "2010-01-01", "--end", "2010-03-31"], ExitCode.REFUSED, "dates"),
        (["--resume", "/nonexistent/final.zip"], ExitCode.NOT_FOUND, "not found"),
        (["--symbols", "SP$Y"], ExitCode.USAGE, "SP$Y"),
    ],
)
def test_refusals(stored: sa.Engine, tmp_path: Path, extra: list[str], code: ExitCode, needle: str) -> None:
    with pytest.raises(UserError) as err:
        _train(stored, tmp_path, *extra)
    assert err.value.exit_code == code and needle in str(err.value)
    assert read_table(stored, tables.steps).empty


def test_flagged_symbols_refused_unless_forced(stored: sa.Engine, tmp_path: Path) -> None:
    with stored.begin() as conn:
        conn.execute(tables.symbols.insert().values(symbol="TLT", coverage=0.5, below_min_coverage=True))
    with pytest.raises(UserError) as err:
        _train(stored, tmp_path, "--episodes", "1")
    assert err.value.exit_code == ExitCode.REFUSED and "TLT" in str(err.value)
    assert _train(stored, tmp_path, "--episodes", "1", "--force") == 0


@pytest.mark.postgres
def test_outage_mid_run_rows_land_in_fallback_file(
    pg_url: str, sample_bars: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    direct = db_utils.make_engine(pg_url)
    tables.ensure_schema(direct)
    assert bar_store.upsert_price_bars(direct, sample_bars).ok
    url = sa.make_url(db_utils.normalize_url(pg_url))
    proxy = CuttableProxy((str(url.host), url.port or 5432))
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    checkpoint = training_run.EpisodeCallback.checkpoint

    def cut_after_first(self: training_run.EpisodeCallback, name: str) -> Path:
        if self.state.episodes_done == 1:
            proxy.cut()  # the database becomes unreachable after episode 1; training must go on
        return checkpoint(self, name)

    monkeypatch.setattr(training_run.EpisodeCallback, "checkpoint", cut_after_first)
    code = train_mvp.main([*FAST, "--episodes", "3", "--database-url", through, "--checkpoint-dir",
                           str(tmp_path), "--log-dir", str(tmp_path / "log")])  # fmt: skip
    assert code == ExitCode.PARTIAL  # trained, but the database is incomplete until the file is loaded
    out = capsys.readouterr().out
    files = list((tmp_path / "log").glob("steps_*.jsonl"))
    assert len(files) == 1 and f"--load-steps {files[0]}" in out
    assert read_table(direct, tables.runs).iloc[0]["status"] == "running"  # the final update is in the file
    assert train_mvp.main(["--load-steps", str(files[0]), "--database-url", pg_url]) == 0
    run, _ = _check_log(direct, 3)
    assert (run["status"], run["episodes_done"]) == ("finished", 3)
    direct.dispose()
