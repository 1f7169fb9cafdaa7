"""Settings precedence, config files, masking and the CLI wrapper."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from settings import (
    CommonSettings,
    ExitCode,
    UserError,
    add_arguments,
    format_config,
    resolve,
    run_cli,
    setting,
)


@dataclasses.dataclass(frozen=True)
class DemoSettings(CommonSettings):
    episodes: int = setting(3, "episodes", env="TT_EPISODES")
    target_vol: float = setting(0.1, "target vol", env="TT_TARGET_VOL")
    mode: Literal["a", "b"] = setting("a", "mode")
    windows: tuple[int, ...] = setting((20, 60), "windows")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, DemoSettings)
    return parser.parse_args(argv)


def test_precedence_flag_over_config_over_env_over_dotenv_over_default(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("episodes: 7\ntarget_vol: 0.2\n")
    environ = {"TT_EPISODES": "5", "TT_TARGET_VOL": "0.3"}
    dotenv = {"TT_EPISODES": "4", "TT_TARGET_VOL": "0.4", "DATABASE_URL": "postgresql://u:pw@h/db"}

    settings, sources = resolve(
        DemoSettings, parse(["--episodes", "9", "--config", str(config)]), environ=environ, dotenv=dotenv
    )
    assert (settings.episodes, sources["episodes"]) == (9, "flag")
    assert (settings.target_vol, sources["target_vol"]) == (0.2, f"config {config}")
    assert settings.database_url == "postgresql://u:pw@h/db" and sources["database_url"] == ".env DATABASE_URL"
    assert (settings.mode, sources["mode"]) == ("a", "default")

    settings, sources = resolve(DemoSettings, parse([]), environ=environ, dotenv=dotenv)
    assert (settings.episodes, sources["episodes"]) == (5, "env TT_EPISODES")
    settings, _ = resolve(DemoSettings, parse([]), environ={}, dotenv=dotenv)
    assert settings.episodes == 4
    settings, _ = resolve(DemoSettings, parse([]), environ={}, dotenv={})
    assert settings.episodes == 3


def test_types_are_converted_and_bad_values_name_the_setting() -> None:
    settings, _ = resolve(DemoSettings, parse(["--windows", "5,10", "--mode", "b", "--verbose"]), environ={}, dotenv={})
    assert settings.windows == (5, 10) and settings.mode == "b" and settings.verbose is True
    with pytest.raises(UserError, match="--episodes.*'many'"):
        resolve(DemoSettings, {"episodes": "many"}, environ={}, dotenv={})
    with pytest.raises(UserError, match="--mode.*'c'"):
        resolve(DemoSettings, {"mode": "c"}, environ={}, dotenv={})


def test_config_file_errors_name_file_and_line(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("episodes: 3\ntarget_vol: [0.1\n")
    with pytest.raises(UserError, match=r"bad\.yaml, line 3"):
        resolve(DemoSettings, parse(["--config", str(bad_yaml)]), environ={}, dotenv={})
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{\n"episodes": 3,\n}\n')
    with pytest.raises(UserError, match=r"bad\.json, line 3"):
        resolve(DemoSettings, parse(["--config", str(bad_json)]), environ={}, dotenv={})
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"episodes": 3, "epsiodes": 4}')
    with pytest.raises(UserError, match="unknown setting.*epsiodes"):
        resolve(DemoSettings, parse(["--config", str(unknown)]), environ={}, dotenv={})
    with pytest.raises(UserError, match="missing.yaml: cannot read"):
        resolve(DemoSettings, parse(["--config", str(tmp_path / "missing.yaml")]), environ={}, dotenv={})


def test_printed_configuration_never_shows_the_password() -> None:
    settings, sources = resolve(
        DemoSettings, {}, environ={"DATABASE_URL": "postgresql://trader:s3cr3t@db.example:5432/tt"}, dotenv={}
    )
    text = format_config(settings, sources)
    assert "s3cr3t" not in text
    assert "postgresql://trader:***@db.example:5432/tt" in text
    assert "(env DATABASE_URL)" in text
    for url in ("postgresql://bob@db/tt?password=hunter2", "postgresql://bob@db/tt?sslmode=require&PASSWORD=hunter2"):
        settings, _ = resolve(DemoSettings, {"database_url": url}, environ={}, dotenv={})
        shown = format_config(settings)
        assert "hunter2" not in shown and "password=***" in shown.lower()


def test_run_cli_turns_user_errors_into_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    def failing(_argv: list[str] | None) -> int:
        raise UserError("watchlist x.csv, line 3: bad symbol", ExitCode.USAGE)

    assert run_cli(failing, []) == 2
    assert "error: watchlist x.csv, line 3: bad symbol" in capsys.readouterr().err

    def interrupted(_argv: list[str] | None) -> int:
        raise KeyboardInterrupt

    assert run_cli(interrupted, []) == 130
