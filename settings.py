"""Configuration shared by every command: settings, their precedence, exit codes and the CLI wrapper.

Precedence, highest first: command-line flags > ``--config FILE`` (JSON or YAML) > environment variables >
``.env`` (python-dotenv) > defaults. A config file named on the command line counts as part of the command
line, so it beats the environment; an explicit flag beats both.

Each command describes its settings as a frozen dataclass whose fields carry metadata (help text, the
environment variable that may set them, whether they are secret). :func:`add_arguments` turns such a
dataclass into argparse flags and :func:`resolve` builds the effective, immutable configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import re
import sys
import tempfile
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent


class ExitCode(IntEnum):
    """Exit codes of every command (documented in docs/exit_codes.md)."""

    OK = 0
    ERROR = 1  # unexpected internal error: a bug, reported with a traceback
    USAGE = 2  # bad flag, setting, config file, DATABASE_URL, watchlist, date or input file
    PARTIAL = 3  # some symbols failed; the others were stored
    LOCKED = 4  # another run holds the pipeline lock
    SOURCE_UNAVAILABLE = 5  # data source unreachable or not installed
    REFUSED = 6  # training/evaluation refused: the data does not fit the request
    NOT_FOUND = 7  # run id or checkpoint not found
    FILESYSTEM = 8  # a local file or folder cannot be written: not a folder, no permission, disk full
    DB_UNREACHABLE = 10  # database host unreachable / connection refused / connection lost
    DB_AUTH = 11  # database authentication failed
    DB_MISSING = 12  # database does not exist
    DB_READONLY = 13  # database is read-only
    DB_ERROR = 14  # any other database failure
    INTERRUPTED = 130  # Ctrl-C


class UserError(Exception):
    """An error the user can fix; printed without a traceback, exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def unwritable_folder(flag: str, folder: Path, exc: OSError) -> UserError:
    """The one-line FILESYSTEM error for a folder that cannot be created or written: the flag, folder, OS reason."""
    return UserError(f"{flag} {folder}: cannot create or write the folder ({exc.strerror or exc})", ExitCode.FILESYSTEM)


def writable_folder(folder: Path, flag: str) -> Path:
    """Create ``folder`` and prove a file can be written in it, before any long work or record.

    :raise UserError: (FILESYSTEM) see :func:`unwritable_folder`.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise unwritable_folder(flag, folder, exc) from None
    return folder


def setting(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    secret: bool = False,
    flag: bool = True,
    bounds: tuple[float | None, float | None] | None = None,
) -> Any:
    """Declare a dataclass field as a setting.

    :param default: value when nothing else sets it (a list/dict default must be a tuple or None).
    :param help: one line shown by ``--help`` and by the effective-configuration printout.
    :param env: environment variable (also read from ``.env``) that may set it.
    :param secret: mask the value when printing (URLs keep everything but the password).
    :param flag: expose it as a command-line flag.
    :param bounds: (lowest, highest) allowed value, inclusive; None = open on that side.
    """
    metadata = {"help": help, "env": env, "secret": secret, "flag": flag, "bounds": bounds}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """Settings every command has."""

    database_url: str | None = setting(
        None,
        "SQLAlchemy/PostgreSQL URL, e.g. postgresql://user:pass@host:5432/db; unset = embedded SQLite file",
        env="DATABASE_URL",
        secret=True,
    )
    sqlite_path: Path = setting(
        REPO_ROOT / "var" / "tt_mvp.sqlite",
        "embedded SQLite file when DATABASE_URL is unset",
        env="TT_SQLITE_PATH",
    )
    log_dir: Path = setting(REPO_ROOT / "var" / "log", "folder for log files", env="TT_LOG_DIR")
    verbose: bool = setting(False, "more detail on stdout")


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def parse_date(text: str, what: str = "date") -> dt.date:
    """Parse ``YYYY-MM-DD`` with an error that names the setting and the bad value."""
    if isinstance(text, dt.date):
        return text
    try:
        return dt.date.fromisoformat(str(text).strip())
    except ValueError:
        raise UserError(f"{what}: {text!r} is not a date in YYYY-MM-DD form") from None


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", Path: "a path"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _wrong_kind(name: str, value: Any, what: str) -> UserError:
    return UserError(f"setting {name}: expected {what}, got {type(value).__name__} {value!r}")


def _scalar(value: Any, inner: Any, name: str) -> Any:
    """One value of a plain type: text is parsed; a config file's numbers, lists and mappings must already be of
    the right kind (2.7 is not a whole number, a list is not a path) instead of being coerced."""
    if inner is bool:
        text = value.strip().lower() if isinstance(value, str) else None
        if isinstance(value, bool) or text in _TRUE + _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
        raise _wrong_kind(name, value, _KINDS[bool])
    if isinstance(value, bool | list | tuple | dict) or (inner in (str, Path) and not isinstance(value, str | Path)):
        raise _wrong_kind(name, value, _KINDS.get(inner, getattr(inner, "__name__", str(inner))))
    if inner is int and isinstance(value, float):
        if not value.is_integer():
            raise _wrong_kind(name, value, _KINDS[int])
        return int(value)
    if inner is float and math.isnan(float(value)):
        raise UserError(f"setting {name}: {value!r} is not a number")
    if inner is Path:
        return Path(value).expanduser()
    return inner(value.strip() if isinstance(value, str) and inner is not str else value)


def convert(value: Any, tp: Any, name: str) -> Any:
    """Convert a raw string/JSON/YAML value to the field type ``tp``; errors name the setting."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise UserError(f"setting {name}: a value is required")
    origin = typing.get_origin(inner)
    try:
        if inner is dt.date:
            return parse_date(value, f"setting {name}")
        if origin is Literal:
            choices = typing.get_args(inner)
            if value not in choices:
                raise UserError(f"setting {name}: {value!r} is not one of {', '.join(map(str, choices))}")
            return value
        if origin is tuple:
            if isinstance(value, dict):
                raise _wrong_kind(name, value, "a list")
            item_type = typing.get_args(inner)[0]
            items = value if isinstance(value, list | tuple) else re.split(r"[,\s]+", str(value).strip())
            return tuple(convert(v, item_type, name) for v in items if v != "")
        return _scalar(value, inner, name)
    except UserError:
        raise
    except (TypeError, ValueError):
        raise UserError(f"setting {name}: {value!r} is not a valid {getattr(inner, '__name__', inner)}") from None


def _check_bounds(value: Any, bounds: tuple[float | None, float | None] | None, name: str) -> None:
    if bounds is None or value is None:
        return
    low, high = bounds
    if (low is not None and value < low) or (high is not None and value > high):
        shown = f"{'' if low is None else low}..{'' if high is None else high}"
        raise UserError(f"setting {name}: {value!r} is outside the allowed range {shown}")


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = ()) -> None:
    """Add one flag per setting of ``cls`` (defaults suppressed so :func:`resolve` can tell what was given)."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag", True) or f.name in exclude:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        env = f.metadata.get("env")
        help_text = f.metadata.get("help", "") + (f" [env {env}]" if env else "")
        if f.metadata.get("bounds"):
            help_text += " (range {}..{})".format(*("" if b is None else b for b in f.metadata["bounds"]))
        if not f.metadata.get("secret"):
            help_text += f" (default: {f.default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is Literal:
            kwargs["choices"] = typing.get_args(tp)
        parser.add_argument(_flag_name(f.name), **kwargs)
    parser.add_argument("--config", dest="config_file", type=Path, default=None, help="JSON or YAML file of settings")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective configuration (secrets masked) and exit"
    )


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON or YAML mapping; syntax errors name the file and line."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"config file {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                        f"{exc.start}); save it as UTF-8") from None  # fmt: skip
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"config file {path}, line {exc.lineno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {path}{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: expected a mapping of setting: value at the top level")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def dotenv_file(cwd: Path | None = None) -> Path | None:
    """``.env`` in the working directory, else in the repository root; None when there is neither."""
    for folder in (cwd or Path.cwd(), REPO_ROOT):
        if (folder / ".env").is_file():
            return folder / ".env"
    return None


def read_dotenv(path: Path | None) -> dict[str, str]:
    """The variables a ``.env`` file sets (python-dotenv syntax); {} for None."""
    from dotenv import dotenv_values

    if path is None:
        return {}
    try:
        return {k: v for k, v in dotenv_values(path, encoding="utf-8").items() if v is not None}
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or 'not UTF-8 text'})") from None


def resolve(
    cls: type,
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    dotenv: Mapping[str, str] | None = None,
    dotenv_dir: Path = REPO_ROOT,
) -> tuple[Any, dict[str, str]]:
    """Build the effective settings object and where each value came from.

    :param dotenv: ``.env`` values; None = read :func:`dotenv_file`. Relative paths in them are relative to the
        folder of that file (``dotenv_dir`` when ``dotenv`` is given), not to the working directory, so the
        repository's ``.env`` means the same from any folder (cron).
    :return: (instance of ``cls``, {field name: "flag" | "config FILE" | "env VAR" | ".env VAR" | "default"}).
    """
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else (args or {}))
    config_path = given.pop("config_file", None)
    given.pop("print_config", None)
    file_values = load_config_file(Path(config_path)) if config_path else {}
    environ = os.environ if environ is None else environ
    if dotenv is None:
        env_file = dotenv_file()
        dotenv, dotenv_dir = read_dotenv(env_file), env_file.parent if env_file else dotenv_dir
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise UserError(f"config file {config_path}: unknown setting(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        env = f.metadata.get("env")
        if f.name in given:
            raw, source = given[f.name], "flag"
        elif f.name in file_values:
            raw, source = file_values[f.name], f"config {config_path}"
        elif env and env in environ:
            raw, source = environ[env], f"env {env}"
        elif env and env in dotenv:
            raw, source = dotenv[env], f".env {env}"
        else:
            values[f.name], sources[f.name] = f.default, "default"
            continue
        value = convert(raw, hints[f.name], _flag_name(f.name))
        if source.startswith(".env") and isinstance(value, Path) and not value.is_absolute():
            value = dotenv_dir / value
        _check_bounds(value, f.metadata.get("bounds"), _flag_name(f.name))
        values[f.name], sources[f.name] = value, source
    try:
        return cls(**values), sources
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid settings: {exc}") from None


_URL_HEAD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_PASSWORD_PARAM = re.compile(r"([?&\s]|^)(password\s*=\s*)('[^']*'|[^&#\s]*)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class UrlParts:
    """A URL cut at its credentials: ``head`` (``scheme://``), ``user`` and ``password`` as written (None when
    absent) and ``rest`` (host, port, path, query). ``ambiguous``: an ``@`` after the host part but none in it
    (a password with a raw ``/``, ``?`` or ``#``), so where the password ends cannot be told."""

    head: str
    user: str | None
    password: str | None
    rest: str
    ambiguous: bool = False


def split_url(text: str) -> UrlParts | None:
    """Cut ``text`` at its credentials: everything up to the LAST ``@`` before the host is user and password, so a
    raw ``@`` in a password (``user:pa@ss@host``) stays in the password. None when ``text`` is not a URL."""
    head = _URL_HEAD.match(text)
    if head is None:
        return None
    rest = text[head.end() :]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    at = authority.rfind("@")
    if at >= 0:
        user, colon, password = authority[:at].partition(":")
        return UrlParts(head.group(), user, password if colon else None, rest[at + 1 :])
    path, _, query = rest[len(authority) :].partition("?")
    names = (item.partition("=")[0] for item in query.split("&"))
    return UrlParts(head.group(), None, None, rest, "@" in path or any("@" in name for name in names))


def mask_secret(value: Any) -> str:
    """Hide a secret: URLs keep scheme, user, host and database, but not a password (``user:pass@``, a raw ``@``
    in it, or ``?password=``); an ambiguous URL keeps only its scheme; everything else becomes ``***``."""
    if value is None:
        return "None"
    parts = split_url(str(value))
    if parts is None:
        return "***"
    if parts.ambiguous:
        return parts.head + "***"
    user = "" if parts.user is None else parts.user + (":***" if parts.password is not None else "") + "@"
    return _PASSWORD_PARAM.sub(r"\1\2***", parts.head + user + parts.rest)


def scrub_secrets(text: str, secret: str | None) -> str:
    """``text`` (e.g. a driver's error message) with every form of the password in ``secret`` (a URL or a libpq
    ``key=value`` string: as written and percent-decoded) replaced by ``***``."""
    if not secret:
        return text
    parts = split_url(secret)
    found = [parts.password] if parts is not None and parts.password else []
    found += [m.group(3).strip("'") for m in _PASSWORD_PARAM.finditer(secret)]
    for form in sorted({f for p in found for f in (p, urllib.parse.unquote(p)) if f}, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def format_config(settings: Any, sources: Mapping[str, str] | None = None) -> str:
    """One line per setting, ``name = value   (source)``, secrets masked."""
    lines = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        shown = mask_secret(value) if f.metadata.get("secret") else repr(value)
        origin = f"   ({sources[f.name]})" if sources and f.name in sources else ""
        lines.append(f"{f.name} = {shown}{origin}")
    return "\n".join(lines)


def parse_command(cls: type, argv: list[str] | None, description: str) -> Any | None:
    """Parse a command's flags into its effective settings.

    :return: the settings object, or None when ``--print-config`` was given (the configuration has then been
        printed, secrets masked, and the command should exit 0).
    """
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser, cls)
    args = parser.parse_args(argv)
    config, sources = resolve(cls, args)
    if args.print_config:
        print(format_config(config, sources))
        return None
    return config


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command's ``main``: user errors print one clear line and their exit code; Ctrl-C exits 130."""
    try:
        return int(main(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
