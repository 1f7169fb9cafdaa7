"""Documentation that must match the code: every environment variable a setting reads is in .env.example."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import evaluate_mvp
import mvp_pipeline
import train_mvp

REPO = Path(__file__).resolve().parent.parent


def declared_env_vars() -> set[str]:
    classes = (mvp_pipeline.IngestSettings, train_mvp.TrainSettings, evaluate_mvp.EvaluateSettings)
    return {f.metadata["env"] for cls in classes for f in dataclasses.fields(cls) if f.metadata.get("env")}


def test_env_example_lists_exactly_the_environment_variables_the_settings_read() -> None:
    text = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert declared_env_vars() == listed
