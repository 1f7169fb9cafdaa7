"""Settings precedence, config files, masking and the CLI wrapper."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Literal

import pytest

from settings import (
    CommonSettings,
    ExitCode,
    UserError,
    add_arguments,
    format_config,
    mask_secret,
    resolve,
    run_cli,
    scrub_secrets,
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


def test_config_values_of_the_wrong_kind_are_refused_not_coerced(tmp_path: Path) -> None:
    for text, message in [
        ("episodes: 2.7", "--episodes: expected a whole number, got float 2.7"),
        ("episodes: true", "--episodes: expected a whole number, got bool True"),
        ("target_vol: .nan", "--target-vol: nan is not a number"),
        ("sqlite_path: [a, b]", "--sqlite-path: expected a path, got list ['a', 'b']"),
        ("windows: {a: 1}", "--windows: expected a list, got dict"),
        ("verbose: 1", "--verbose: expected true or false, got int 1"),
    ]:
        path = tmp_path / "c.yaml"
        path.write_text(text + "\n")
        with pytest.raises(UserError, match=re.escape(message)):
            resolve(DemoSettings, parse(["--config", str(path)]), environ={}, dotenv={})
    path.write_text("episodes: 4.0\ntarget_vol: 1\nwindows: [5, 10]\n")  # exact values of the right kind
    settings, _ = resolve(DemoSettings, parse(["--config", str(path)]), environ={}, dotenv={})
    assert (settings.episodes, settings.target_vol, settings.windows) == (4, 1.0, (5, 10))
    path.write_bytes(b"episodes: 3 # caf\xe9\n")
    with pytest.raises(UserError, match="not UTF-8 text"):
        resolve(DemoSettings, parse(["--config", str(path)]), environ={}, dotenv={})


def test_bounds_are_checked_and_shown_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    @dataclasses.dataclass(frozen=True)
    class Ported:
        port: int = setting(4002, "port", bounds=(1, 65535))

    assert resolve(Ported, {"port": "65535"}, environ={}, dotenv={})[0].port == 65535
    with pytest.raises(UserError, match=r"--port: 70000 is outside the allowed range 1\.\.65535"):
        resolve(Ported, {"port": "70000"}, environ={}, dotenv={})
    parser = argparse.ArgumentParser()
    add_arguments(parser, Ported)
    assert "(range 1..65535)" in parser.format_help()
    add_arguments(parser := argparse.ArgumentParser(), CommonSettings)
    text = " ".join(parser.format_help().split())
    assert "when DATABASE_URL is unset [env TT_SQLITE_PATH]" in text and "unset)" not in text  # no stray ")"


def test_relative_paths_in_dotenv_are_relative_to_its_folder_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / ".env").write_text("TT_LOG_DIR=var/log\nTT_SQLITE_PATH=/abs/db.sqlite\n")
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr("settings.REPO_ROOT", project)  # the repository's .env, run from another folder (cron)
    settings, sources = resolve(CommonSettings, {}, environ={})
    assert settings.log_dir == project / "var" / "log" and sources["log_dir"] == ".env TT_LOG_DIR"
    assert settings.sqlite_path == Path("/abs/db.sqlite")
    settings, _ = resolve(CommonSettings, {}, environ={"TT_LOG_DIR": "var/log"})
    assert settings.log_dir == Path("var/log")  # the environment and flags stay relative to the working directory


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://trader:Zq@9x@db.example:5432/tt", "Zq@9x"),
        ("postgresql://trader:Zq%409x@db.example:5432/tt", "Zq%409x"),
        ("postgresql://trader@db.example:5432/tt?sslmode=require&password=Zq@9x", "Zq@9x"),
    ],
)
def test_masking_takes_everything_up_to_the_last_at_as_credentials(url: str, password: str) -> None:
    shown = mask_secret(url)
    assert "Zq" not in shown and "9x" not in shown and "trader" in shown and "db.example:5432/tt" in shown
    assert scrub_secrets(f"could not translate host name {password!r}; Zq@9x", url) == (
        "could not translate host name '***'; ***"
    )
    assert mask_secret(f"host=db password={password}") == "***"
    assert mask_secret("postgresql://trader:Zq/9x@db/tt") == "postgresql://***"  # ambiguous: only the scheme
