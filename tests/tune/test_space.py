"""Search spaces are checked against the real config before any trial starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vla.config import load_config
from vla.configuration import ConfigError
from vla.tune.runner import SweepError, concurrent_trials, trial_resources
from vla.tune.space import load_space, parse_space

ROOT = Path(__file__).resolve().parents[2]
BASE = load_config().to_dict()


@pytest.mark.parametrize("path", sorted((ROOT / "tune_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_are_valid(path):
    space = load_space(path, BASE)
    assert space.params and space.sweep.num_trials >= 1


def test_presets_expand_into_config_overrides():
    space = load_space(ROOT / "tune_spaces" / "freeze.yaml", BASE)
    assert space.overrides_for({"preset": "frozen_backbone"}) == {"model.freeze_backbone": True, "model.lora_rank": 0}


@pytest.mark.parametrize(
    ("space", "named"),
    [
        ({"params": {"train.learning_rate": {"uniform": [0.1, 0.2]}}}, "train.learning_rate"),
        ({"params": {"train.lr": {"loguniform": [0.0, 1.0]}}}, "train.lr"),
        ({"params": {"train.lr": {"uniform": [0.2, 0.1]}}}, "train.lr"),
        ({"params": {"train.lr": {"normal": [0.1, 0.2]}}}, "train.lr"),
        ({"params": {"model.head": {"choice": ["lstm", "gru"]}}}, "model.head"),
        ({"params": {"preset": {"grid": ["fast"]}}, "presets": {"slow": {"train.lr": 1e-4}}}, "preset"),
        ({"params": {"preset": {"grid": ["bad"]}}, "presets": {"bad": {"model.nope": 1}}}, "model.nope"),
        ({"params": {"train.lr": {"uniform": [0.1, 0.2]}}, "sweep": {"scheduler": "hyperband"}}, "sweep.scheduler"),
        ({"params": {"train.lr": {"uniform": [0.1, 0.2]}}, "sweep": {"num_trial": 3}}, "sweep.num_trial"),
        ({"params": {}}, "params"),
    ],
)
def test_invalid_space_fails_fast_naming_the_key(space, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_space(space, BASE)


def test_invalid_space_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"params": {"train.lrr": {"uniform": [1, 2]}}}))
    with pytest.raises(ConfigError, match=r"train\.lrr.*bad\.yaml"):
        load_space(path, BASE)


def test_concurrency_comes_from_resources():
    cfg = load_config(None, ["train.num_workers=2", "train.cpus_per_worker=0.5"])
    need = trial_resources(cfg.train)
    assert need == {"CPU": pytest.approx(2.1)}
    assert concurrent_trials(need, {"CPU": 8.0}, requested=0) == 3
    assert concurrent_trials(need, {"CPU": 8.0}, requested=2) == 2
    gpu = trial_resources(load_config(None, ["train.num_workers=4", "train.use_gpu=true"]).train)
    assert concurrent_trials(gpu, {"CPU": 64.0, "GPU": 8.0}, requested=0) == 2
    with pytest.raises(SweepError, match="one trial needs"):
        concurrent_trials(gpu, {"CPU": 64.0, "GPU": 2.0}, requested=0)
