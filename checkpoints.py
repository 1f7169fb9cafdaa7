"""Training checkpoints: the run state saved beside each PPO model, written and read back for ``--resume``.

A checkpoint is ``<name>.zip`` (the Stable-Baselines3 model), ``<name>.json`` (:class:`TrainingState`, plus
the model file name and when it was saved) and, when the run normalized observations or rewards,
``<name>.vecnormalize.pkl`` (SB3 ``VecNormalize`` statistics: the policy only makes sense behind them) in the run's
folder; ``final`` is written when training ends, ``episode_NNNNN`` after episodes. Saving needs only the
objects' ``save(path)``; Stable-Baselines3 is imported only by the functions that load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from settings import ExitCode, UserError

FINAL = "final"  # name of the checkpoint written when training ends (also when interrupted or failed)
CLIP_OBS = 5.0  # normalized observations are clipped to +-CLIP_OBS standard deviations
# What a run or checkpoint stored before these settings existed trained with (their defaults changed, issue 12).
LEGACY_SETTINGS: dict[str, Any] = {"action_map": "clip", "return_windows": (), "norm_obs": False,
                                   "norm_reward": False}  # fmt: skip


def normalization_path(checkpoint: Path) -> Path:
    """The VecNormalize statistics saved beside checkpoint ``X.zip``: ``X.vecnormalize.pkl``."""
    return Path(checkpoint).with_suffix(".vecnormalize.pkl")


class Saveable(Protocol):
    """What a checkpoint needs of a model (Stable-Baselines3's ``BaseAlgorithm.save``)."""

    def save(self, path: str) -> None: ...


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


def save_checkpoint(
    model: Saveable, state: TrainingState, name: str, keep: int, normalizer: Saveable | None = None
) -> Path:
    """Write ``name.zip``, ``name.json`` (and ``name.vecnormalize.pkl`` from ``normalizer``) in the run's folder;
    keep only the ``keep`` latest per-episode ones.

    The files are written under temporary names and renamed, so a full disk never leaves a truncated one.

    :raise UserError: (FILESYSTEM) the folder cannot be created or written (full disk, not a folder), naming it.
    """
    folder = state.folder
    model_tmp, state_tmp, stats_tmp = (folder / f"{name}.{suffix}" for suffix in ("tmp.zip", "json.tmp", "pkl.tmp"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        model.save(str(model_tmp))
        if normalizer is not None:
            normalizer.save(str(stats_tmp))
            stats_tmp.replace(normalization_path(folder / f"{name}.zip"))
        state_tmp.write_text(state.to_json(f"{name}.zip"))
        model_tmp.replace(folder / f"{name}.zip")
        state_tmp.replace(folder / f"{name}.json")
    except OSError as exc:
        for tmp in (model_tmp, state_tmp, stats_tmp):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise UserError(f"checkpoint {name} in {folder}: cannot write ({exc.strerror or exc}); free space or choose "
                        "another --checkpoint-dir", ExitCode.FILESYSTEM) from None  # fmt: skip
    for old in sorted(folder.glob("episode_*.json"))[: -keep or None] if name != FINAL else []:
        old.unlink()
        old.with_suffix(".zip").unlink(missing_ok=True)
        normalization_path(old).unlink(missing_ok=True)
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
    if not state.settings:  # resuming with default settings would silently train another configuration
        raise UserError(f"checkpoint {state_file} records no settings: the run cannot be resumed as configured",
                        ExitCode.USAGE)  # fmt: skip
    return state, state_file.with_suffix(".zip")


def load_model(path: Path, env: Any = None) -> Any:
    """The Stable-Baselines3 PPO model saved at ``path`` (attached to ``env`` if given).

    :raise UserError: (USAGE) the file is not a readable model (corrupt or truncated zip, or made for other
        observations or actions than ``env``'s), naming it.
    """
    from stable_baselines3 import PPO

    try:
        return PPO.load(path, env=env, device="cpu")
    except Exception as exc:  # a damaged file fails in any of zipfile, zlib, torch or SB3, each with its own type
        detail = (str(exc).strip() or "no detail").splitlines()[0]
        raise UserError(f"checkpoint {path}: not a readable model ({type(exc).__name__}: {detail})",
                        ExitCode.USAGE) from None  # fmt: skip


def load_normalization(checkpoint: Path, env: Any) -> Any:
    """``env`` behind the VecNormalize statistics saved with ``checkpoint`` (to continue training with them).

    :raise UserError: (NOT_FOUND) the statistics file is missing, naming it.
    """
    from stable_baselines3.common.vec_env import VecNormalize

    return VecNormalize.load(str(_normalization_file(checkpoint)), env)


def load_normalizer(checkpoint: Path) -> Callable[[Any], Any]:
    """The observation normalization saved with ``checkpoint``, frozen (what the policy reads, for later use).

    :raise UserError: (NOT_FOUND) the statistics file is missing, (USAGE) it is not VecNormalize statistics.
    """
    import stable_baselines3.common.vec_env as vec_env

    path = _normalization_file(checkpoint)
    with path.open("rb") as file:
        try:
            normalizer = pickle.load(file)  # the project's own file: VecNormalize pickled without its environment
        except Exception as exc:  # a damaged pickle fails in pickle, numpy or SB3, each with its own type
            raise UserError(f"{path}: not readable normalization statistics ({type(exc).__name__})") from None
    if not isinstance(normalizer, vec_env.VecNormalize):
        raise UserError(f"{path}: not normalization statistics (a {type(normalizer).__name__})")
    normalizer.training = False
    return normalizer.normalize_obs


def _normalization_file(checkpoint: Path) -> Path:
    path = normalization_path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {checkpoint} was trained on normalized observations or rewards, but their "
                        f"statistics {path} are missing: restore the file beside the checkpoint",
                        ExitCode.NOT_FOUND)  # fmt: skip
    return path
