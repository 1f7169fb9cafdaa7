"""Training checkpoints: the run state saved beside each PPO model, written and read back for ``--resume``.

A checkpoint is ``<name>.zip`` (the Stable-Baselines3 model) and ``<name>.json`` (:class:`TrainingState`, plus
the model file name and when it was saved) in the run's folder; ``final`` is written when training ends,
``episode_NNNNN`` after each episode. No Stable-Baselines3 import: the model only needs a ``save(path)`` method.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, Protocol

from settings import ExitCode, UserError

FINAL = "final"  # name of the checkpoint written when training ends (also when interrupted or failed)


class Saveable(Protocol):
    """What a checkpoint needs of a model (Stable-Baselines3's ``BaseAlgorithm.save``)."""

    def save(self, path: Path) -> None: ...


@dataclasses.dataclass
class TrainingState:
    """A run's progress, updated as training goes and saved with every checkpoint (what --resume continues)."""

    run_id: str
    folder: Path  # the run's checkpoint folder
    next_episode: int = 1  # number of the next episode to start
    episodes_done: int = 0  # episodes completed (not those cut by an interruption)
    total_steps: int = 0  # environment steps, all environments together
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # every setting of the run, secrets masked

    def to_json(self, model: str) -> str:
        """The JSON text of ``<name>.json``: the fields, the model file name and the save time."""
        record = {**dataclasses.asdict(self), "folder": str(self.folder), "model": model,
                  "saved_at": dt.datetime.now(dt.UTC).isoformat()}  # fmt: skip
        return json.dumps(record, indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> TrainingState:
        """The state in a checkpoint's JSON text (keys it does not know, like ``model``, are ignored).

        :raise ValueError: not JSON (:class:`json.JSONDecodeError`), or not a checkpoint's state.
        """
        record = json.loads(text)
        try:
            return cls(run_id=str(record["run_id"]), folder=Path(record["folder"]),
                       next_episode=int(record["next_episode"]), episodes_done=int(record["episodes_done"]),
                       total_steps=int(record["total_steps"]), settings=dict(record["settings"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint state ({type(exc).__name__}: {exc})") from None


def save_checkpoint(model: Saveable, state: TrainingState, name: str, keep: int) -> Path:
    """Write ``name.zip`` and ``name.json`` in the run's folder; keep only the ``keep`` latest per-episode ones."""
    folder = state.folder
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / f"{name}.zip")
    tmp = folder / f"{name}.json.tmp"
    tmp.write_text(state.to_json(f"{name}.zip"))
    tmp.replace(folder / f"{name}.json")  # atomic: a crash never leaves a half-written state file
    for old in sorted(folder.glob("episode_*.json"))[: -keep or None] if name != FINAL else []:
        old.unlink()
        old.with_suffix(".zip").unlink(missing_ok=True)
    return folder / f"{name}.zip"


def read_checkpoint(path: Path) -> tuple[TrainingState, Path]:
    """The state and model path of a checkpoint given as .zip, .json or run folder (its latest checkpoint)."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / f"{FINAL}.json"] if (path / f"{FINAL}.json").is_file() else []
        candidates = candidates or sorted(path.glob("episode_*.json"))[-1:]
        path = candidates[0] if candidates else path / f"{FINAL}.json"
    state_file = path.with_suffix(".json")
    if not state_file.is_file() or not state_file.with_suffix(".zip").is_file():
        raise UserError(f"checkpoint {path} not found (expected {state_file.name} and its .zip)", ExitCode.NOT_FOUND)
    try:
        state = TrainingState.from_json(state_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"checkpoint {state_file}, line {exc.lineno}: {exc.msg}", ExitCode.USAGE) from None
    except ValueError as exc:
        raise UserError(f"checkpoint {state_file}: {exc}", ExitCode.USAGE) from None
    return state, state_file.with_suffix(".zip")
