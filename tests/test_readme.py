"""README.md stays true: every config key documented, the commands it names exist."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from vla.data.config import DataConfig
from vla.model.config import ModelConfig
from vla.train.config import RunConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("config", [ModelConfig, DataConfig, TrainConfig, RunConfig], ids=lambda c: c.__name__)
def test_every_config_key_is_documented(config):
    missing = [f.name for f in dataclasses.fields(config) if f"`{f.name}`" not in README]
    assert not missing, f"README.md does not document {config.__name__} keys {missing}"


def test_files_the_readme_names_exist():
    named = set(re.findall(r"(?:pipelines|configs|tune_spaces|benchmarks|docs)/[\w./-]+\.(?:py|yaml|md)", README))
    assert named, "the README names no files"
    missing = sorted(path for path in named if "NAME" not in path and not (ROOT / path).is_file())
    assert not missing, f"README.md names files that do not exist: {missing}"


def test_quick_start_and_ci_run_the_same_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest tests" in README
    assert ci.strip().splitlines()[-1] == "python -m pytest tests"
