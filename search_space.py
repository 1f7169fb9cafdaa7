"""The search space of a sweep (``tune_mvp.py --config SPACE.yaml``): read, checked against a settings class.

A space file is a YAML (or JSON) mapping with two keys::

    fixed:                # settings every trial trains with (train_mvp.py's names, - or _)
      timesteps: 20000
      seeds: 2
    space:                # settings each trial samples
      learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      n_epochs: {type: int, low: 1, high: 5}
      net_arch: {type: categorical, choices: ["64,64", "128,128"]}

Everything is checked before any trial runs: each name is a setting of the class, fixed values convert to its
type, bounds are ordered, and the fixed settings with each bound and each choice make valid settings (the
class's own checks run). Every problem is one line naming the file and the key (docs/tuning.md). Also: a trial's
sample of the dimensions (:func:`sample`) and settings as command-line flags (:func:`train_flags`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from settings import UserError, convert, load_config_file, resolve

if TYPE_CHECKING:
    import optuna

KINDS = ("float", "int", "categorical")
_KEYS = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "log"}}
_KEYS["categorical"] = {"type", "choices"}
# A sampled bound or choice must be a plain value: Optuna stores categorical choices as None, bool, int, float or
# str (a tuple setting such as net_arch is written as text, "64,64").
_PLAIN = (bool, int, float, str, type(None))


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One sampled setting: a float or int range (``log``: sampled on a log scale) or a list of choices."""

    name: str
    kind: Literal["float", "int", "categorical"]
    low: float = 0.0  # low, high and log: float and int only; choices: categorical only
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def extremes(self) -> tuple[Any, ...]:
        """The values the checks try: both bounds, or every choice."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """A checked space file: its fixed settings (converted to the settings' types) and sampled dimensions."""

    path: Path
    fixed: Mapping[str, Any]
    dimensions: tuple[Dimension, ...]

    def values(self, sampled: Mapping[str, Any]) -> dict[str, Any]:
        """One trial's settings: the fixed ones and the sampled ones (``{name: value}``)."""
        return {**self.fixed, **sampled}

    def document(self) -> dict[str, Any]:
        """The space as JSON (a study user attribute): workers joining a study must bring the same space."""
        doc = {"fixed": dict(self.fixed), "space": [dataclasses.asdict(d) for d in self.dimensions]}
        return dict(json.loads(json.dumps(doc, default=str)))


def sample(trial: optuna.Trial, dimensions: Iterable[Dimension]) -> dict[str, Any]:
    """The trial's value of every dimension (a re-queued trial gets its original values back)."""
    params: dict[str, Any] = {}
    for d in dimensions:
        if d.kind == "categorical":
            params[d.name] = trial.suggest_categorical(d.name, d.choices)
        elif d.kind == "int":
            params[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
        else:
            params[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
    return params


def train_flags(values: Mapping[str, Any]) -> str:
    """The command-line flags that set ``values`` (``{setting: value}``), shell-quoted."""
    flags = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            flags += [flag, shlex.quote(text)]
    return " ".join(flags)


def _names(section: Any, where: str) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise UserError(f"{where}: expected a mapping of setting: value, got {type(section).__name__}")
    return {str(k).replace("-", "_"): v for k, v in section.items()}


def _dimension(path: Path, name: str, spec: Any, tp: Any) -> Dimension:
    """One ``space`` entry, checked on its own (kind, keys, bounds)."""
    where = f"space file {path}: space.{name}"
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a mapping such as {{type: float, low: 0.1, high: 1}}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise UserError(f"{where}: type must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(map(str, set(spec) - _KEYS[kind]))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} for type {kind}; expected "
                        f"{', '.join(sorted(_KEYS[kind]))}")  # fmt: skip
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list")
        if not all(isinstance(c, _PLAIN) for c in choices) or len({repr(c) for c in choices}) < len(choices):
            raise UserError(f"{where}: choices must be distinct numbers, text, true/false or null (write a list "
                            'setting as text: "64,64")')  # fmt: skip
        return Dimension(name, kind, choices=tuple(choices))
    if tp not in {"float": (float, float | None), "int": (int, int | None)}[kind]:
        fits = "int or categorical" if tp in (int, int | None) else "categorical"
        raise UserError(f"{where}: type {kind} does not fit this setting; use {fits}")
    cast = float if kind == "float" else int
    try:  # text is parsed as a flag's would be: YAML reads 1e-5 (no dot) as text
        low, high = (convert(spec.get(key), cast, f"space.{name}.{key}") for key in ("low", "high"))
    except UserError as exc:
        raise UserError(f"space file {path}: {exc}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserError(f"{where}: low and high must be finite, got {low!r} and {high!r}")
    if not low < high:
        raise UserError(f"{where}: low {low!r} must be below high {high!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise UserError(f"{where}: a log scale needs low > 0, got {low!r}")
    return Dimension(name, kind, low=low, high=high, log=log)


def _check_settings(cls: type, values: Mapping[str, Any], where: str) -> None:
    """Build ``cls`` from ``values`` alone (no environment, no ``.env``) so its own checks run now."""
    try:
        resolve(cls, dict(values), environ={}, dotenv={})
    except UserError as exc:
        raise UserError(f"{where}: {exc}", exc.exit_code) from None


def load_space(path: Path, cls: type, refused: Mapping[str, str], not_sampled: Mapping[str, str]) -> SearchSpace:
    """Read and check a space file against the settings dataclass ``cls``.

    :param refused: settings a space file may not name at all, each with why.
    :param not_sampled: settings it may fix but not sample, each with why.
    :raise UserError: (USAGE) one line naming the file and the key: a name that is not a setting of ``cls`` or is
        refused, a value of the wrong type, a bad bound or choice, fixed settings that together (or with a
        bound or a choice) fail ``cls``'s checks.
    """
    data = load_config_file(path)
    unknown = sorted(set(data) - {"fixed", "space"})
    if unknown:
        raise UserError(f"space file {path}: unknown top-level key(s) {', '.join(unknown)}; expected fixed and space")
    fixed, space = (_names(data.get(key), f"space file {path}: {key}") for key in ("fixed", "space"))
    if not space:
        raise UserError(f"space file {path}: space: nothing to sample; name at least one setting under space:")
    hints = typing.get_type_hints(cls)
    for section, names, rules in (("fixed", fixed, refused), ("space", space, {**not_sampled, **refused})):
        for name in names:
            if name not in hints:
                raise UserError(f"space file {path}: {section}.{name}: not a setting of this command")
            if name in rules:
                raise UserError(f"space file {path}: {section}.{name}: {rules[name]}")
    both = sorted(set(fixed) & set(space))
    if both:
        raise UserError(f"space file {path}: {', '.join(both)}: both fixed and sampled; keep one")
    try:
        converted = {name: convert(value, hints[name], f"fixed.{name}") for name, value in fixed.items()}
    except UserError as exc:
        raise UserError(f"space file {path}: {exc}") from None
    _check_settings(cls, converted, f"space file {path}: fixed")
    dimensions = tuple(_dimension(path, name, spec, hints[name]) for name, spec in space.items())
    for dim in dimensions:
        for value in dim.extremes():
            _check_settings(cls, {**converted, dim.name: value}, f"space file {path}: space.{dim.name} = {value!r}")
    return SearchSpace(path, converted, dimensions)
