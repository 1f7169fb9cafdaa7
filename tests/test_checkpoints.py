"""Checkpoint state files: written and read back, older files still load, a broken one is a usage error."""

from __future__ import annotations

import errno
import json
import zipfile
from pathlib import Path

import pytest

from checkpoints import (
    FINAL,
    TrainingState,
    load_model,
    load_normalizer,
    normalization_path,
    read_checkpoint,
    save_checkpoint,
)
from settings import ExitCode, UserError

# final.json as train_mvp.py wrote it before the state became a dataclass (keys in that order)
OLD_STATE = """{
 "run_id": "20250101-120000-ab12cd",
 "folder": "/data/checkpoints/20250101-120000-ab12cd",
 "next_episode": 4,
 "episodes_done": 3,
 "total_steps": 240,
 "settings": {"episodes": 3, "symbols": ["SPY", "TLT"], "start": "2010-01-01", "database_url": "***"},
 "model": "final.zip",
 "saved_at": "2025-01-01T12:05:00+00:00"
}"""


class FakeModel:
    """Stands in for a Stable-Baselines3 model: ``save`` writes a file."""

    def save(self, path: str) -> None:
        Path(path).write_bytes(b"zip")


def test_a_state_file_written_before_the_dataclass_still_loads() -> None:
    state = TrainingState.from_json(OLD_STATE)
    assert state == TrainingState(
        run_id="20250101-120000-ab12cd",
        folder=Path("/data/checkpoints/20250101-120000-ab12cd"),
        next_episode=4,
        episodes_done=3,
        total_steps=240,
        settings={"episodes": 3, "symbols": ["SPY", "TLT"], "start": "2010-01-01", "database_url": "***"},
    )


def test_saved_state_has_the_old_keys_and_reads_back(tmp_path: Path) -> None:
    state = TrainingState("run-1", tmp_path / "run-1", 3, 2, 160, {"seed": 7, "watchlist": tmp_path / "w.csv"})
    zip_path = save_checkpoint(FakeModel(), state, FINAL, keep=3)
    text = (tmp_path / "run-1" / "final.json").read_text()
    assert list(json.loads(text)) == list(json.loads(OLD_STATE))
    read, model = read_checkpoint(tmp_path / "run-1")  # a folder means its final checkpoint
    assert model == zip_path and read.folder == state.folder and read.next_episode == 3
    assert read.settings == {"seed": 7, "watchlist": str(tmp_path / "w.csv")}


def test_only_the_latest_episode_checkpoints_are_kept(tmp_path: Path) -> None:
    state = TrainingState("run-1", tmp_path, settings={"seed": 7})
    for episode in range(1, 6):
        save_checkpoint(FakeModel(), state, f"episode_{episode:05d}", keep=2)
    save_checkpoint(FakeModel(), state, FINAL, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "episode_00004.json", "episode_00004.zip", "episode_00005.json", "episode_00005.zip", "final.json",
        "final.zip",
    ]  # fmt: skip
    assert read_checkpoint(tmp_path / "episode_00005.zip")[0] == state


def test_normalization_statistics_are_saved_beside_the_model_and_pruned_with_it(tmp_path: Path) -> None:
    state = TrainingState("run-1", tmp_path, settings={"seed": 7})
    for episode in range(1, 4):
        save_checkpoint(FakeModel(), state, f"episode_{episode:05d}", keep=1, normalizer=FakeModel())
    assert sorted(p.name for p in tmp_path.glob("*.pkl")) == ["episode_00003.vecnormalize.pkl"]
    assert normalization_path(tmp_path / "episode_00003.zip").read_bytes() == b"zip"


def test_missing_or_foreign_normalization_statistics_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="final.vecnormalize.pkl are missing") as missing:
        load_normalizer(tmp_path / "final.zip")
    assert missing.value.exit_code == ExitCode.NOT_FOUND
    normalization_path(tmp_path / "final.zip").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not readable normalization statistics"):
        load_normalizer(tmp_path / "final.zip")


NO_SETTINGS = '{"run_id": "x", "folder": "f", "next_episode": 2, "episodes_done": 1, "total_steps": 80'


@pytest.mark.parametrize(
    "text",
    [
        '{"run_id": "x"',
        '{"run_id": "x", "folder": "f"}',
        "[1, 2]",
        NO_SETTINGS + "}",
        NO_SETTINGS + ', "settings": {}}',
    ],
)
def test_a_broken_state_file_is_a_usage_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "final.json").write_text(text)
    (tmp_path / "final.zip").write_bytes(b"zip")
    with pytest.raises(UserError) as err:
        read_checkpoint(tmp_path / "final.json")
    assert err.value.exit_code == ExitCode.USAGE and "final.json" in str(err.value)


class FullDisk:
    """A model whose save writes part of the file, then fails as on a full disk."""

    def save(self, path: str) -> None:
        Path(path).write_bytes(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    state = TrainingState("run-1", tmp_path, settings={"seed": 7})
    save_checkpoint(FakeModel(), state, FINAL, keep=3)
    with pytest.raises(UserError) as err:
        save_checkpoint(FullDisk(), TrainingState("run-1", tmp_path, 9, 8, 640, {"seed": 7}), FINAL, keep=3)
    assert err.value.exit_code == ExitCode.FILESYSTEM and "No space left on device" in str(err.value)
    assert "--checkpoint-dir" in str(err.value) and str(tmp_path) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.json", "final.zip"]  # no temporary files left
    assert read_checkpoint(tmp_path)[0] == state and (tmp_path / "final.zip").read_bytes() == b"zip"


def test_an_unwritable_folder_is_a_filesystem_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError) as err:
        save_checkpoint(FakeModel(), TrainingState("run-1", tmp_path / "file" / "run-1"), FINAL, keep=3)
    assert err.value.exit_code == ExitCode.FILESYSTEM and "Not a directory" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04truncated"])
def test_a_corrupt_model_file_is_one_usage_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "final.zip").write_bytes(content)
    with pytest.raises(UserError) as err:
        load_model(tmp_path / "final.zip")
    assert err.value.exit_code == ExitCode.USAGE and "not a readable model" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_model_zip_without_the_model_is_one_usage_error(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "final.zip", "w") as archive:
        archive.writestr("data", "{}")
    with pytest.raises(UserError) as err:
        load_model(tmp_path / "final.zip")
    assert err.value.exit_code == ExitCode.USAGE and "final.zip" in str(err.value)
