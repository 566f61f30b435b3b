"""Configs: typed, validated before anything starts, errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vla.config import Config, load_config
from vla.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = load_config()
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(path) == cfg


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-4", "train.num_workers=4", "model.head=mlp", "data.cameras=[front]", "model.num_views=1"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.num_workers == 4
    assert cfg.model.head == "mlp"
    assert cfg.data.cameras == ["front"]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.learning_rate=1", "train.learning_rate"),  # unknown key
        ("train.num_workers=two", "train.num_workers"),  # wrong type
        ("train.use_gpu=3", "train.use_gpu"),  # not a boolean
        ("model.head=gru", "model.head"),  # not a choice
        ("train.min_lr=1.0", "train.min_lr"),  # above lr
        ("model.window_size=0", "model.window_size"),  # impossible
        ("train.hsdp_replicas=3", "train.hsdp_replicas"),  # does not divide the workers
        ("data.cameras=[a,b,c]", "data.cameras"),  # disagrees with model.num_views
        ("lr", "lr"),  # not key=value
    ],
)
def test_bad_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: -1\n")
    with pytest.raises(ConfigError, match=r"train\.epochs.*bad\.yaml"):
        load_config(path)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    assert isinstance(load_config(path), Config)


def test_cli_dry_run_prints_resolved_config_and_rejects_bad_keys():
    ok = subprocess.run(
        [sys.executable, "pipelines/train.py", "--dry-run", "train.lr=3e-4"], cwd=ROOT, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["train"]["lr"] == pytest.approx(3e-4)
    bad = subprocess.run(
        [sys.executable, "pipelines/train.py", "--dry-run", "train.lrr=1"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "train.lrr" in bad.stderr
