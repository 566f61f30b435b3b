"""Search spaces are checked against the real config before any trial starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vla.cli.tune import main as tune_main
from vla.config import load_config
from vla.tune.runner import SweepError, concurrent_trials, local_cpus, trial_resources
from vla.tune.space import load_space, load_sweep, parse_space
from vla.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE = load_config(None, ["train.val_every=10", "train.max_steps=100", "train.checkpoint_every=50"]).to_dict()
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_shipped_spaces_are_valid(path):
    space = load_space(path, BASE)
    assert space.params and space.sweep.num_trials >= 1


def scored_on_the_builtin_task(path: Path) -> bool:
    """A space whose metric is closed-loop success on the simulator, so for the demo's task only."""
    return yaml.safe_load(path.read_text()).get("sweep", {}).get("metric") == "eval_success_rate"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("path", [p for p in SPACES if not scored_on_the_builtin_task(p)], ids=lambda p: p.name)
def test_shipped_spaces_sweep_every_shipped_config(path, config):
    space, cfg = load_sweep(path, config)
    assert space.sweep.metric == "val_loss" and cfg.train.val_every > 0


@pytest.mark.parametrize("path", [p for p in SPACES if scored_on_the_builtin_task(p)], ids=lambda p: p.name)
def test_closed_loop_scored_spaces_sweep_the_demo(path):
    space, cfg = load_sweep(path, ROOT / "configs" / "demo.yaml")
    assert space.sweep.mode == "max" and space.sweep.scores_closed_loop and cfg.data.path == ""


def test_the_demo_sweep_is_sized_for_two_cores():
    """The documented command (docs/sweeps.md: `--space tune_spaces/default.yaml`, nothing else) used to run 16 trials
    of the full 2400-step demo (hours), and one trial needed 2.1 CPUs of a 2-CPU machine."""
    space, cfg = load_sweep(ROOT / "tune_spaces" / "default.yaml", ROOT / "configs" / "demo.yaml")
    assert space.sweep.num_trials * cfg.train.max_steps <= 2400  # at most one demo run of steps in all
    assert cfg.train.val_every and cfg.train.checkpoint_every and space.sweep.scores_closed_loop
    assert space.sweep.grace_period <= cfg.train.max_steps
    need = trial_resources(cfg.train, space.sweep.scores_closed_loop)
    assert concurrent_trials(need, {"CPU": float(local_cpus(need, cores=2))}, requested=0) == 1


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["train.val_every=0"], r"never report val_loss: train\.val_every is 0"),
        (["sweep.metric=val_los"], r"'val_los' is not a metric the trials report"),
        (["sweep.metric=eval_success_rate", "sweep.mode=max", "train.eval.episodes=0"],
         r"never report eval_success_rate: train\.eval\.episodes is 0"),
        (["sweep.closed_loop=false", "sweep.metric=eval_success_ci_low", "sweep.mode=max", "train.eval.episodes=0"],
         "never report eval_success_ci_low"),
        (["sweep.metric=eval_success_rate"], r"sweep\.mode: eval_success_rate is better when higher"),
        (["sweep.grace_period=601"], r"sweep\.grace_period: 601 steps is longer than a trial's run \(600 steps\)"),
        (["train.val_every=700"], r"train\.val_every: 700 is longer than a trial's run"),
        (["sweep.num_trial=3"], r"sweep\.num_trial"),
        (["sweep.trial={train.max_step: 5}"], r"sweep\.trial: .*train\.max_step"),
    ],
)
def test_a_sweep_the_trials_cannot_run_fails_before_any_trial_naming_why(overrides, named, capsys):
    """A metric never reported used to train the first trial fully, then fail in Tune; a grace
    period past the run's end passed --dry-run, then raised a bare AssertionError."""
    assert tune_main(["--space", str(ROOT / "tune_spaces" / "default.yaml"), "--dry-run", *overrides]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert re.search(named, error), error


def test_sweep_settings_are_overridden_on_the_command_line(capsys):
    overrides = ["sweep.num_trials=2", "sweep.grace_period=50", "sweep.search=grid", "train.lr=1e-4"]
    assert tune_main(["--space", str(ROOT / "tune_spaces" / "lr_gripper.yaml"), "--dry-run", *overrides]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sweep"]["num_trials"] == 2 and printed["sweep"]["grace_period"] == 50
    assert printed["sweep"]["search"] == "grid" and printed["base_config"]["train"]["lr"] == 1e-4
    # the demo config's own sweep section sized the trials; command-line config overrides win over it
    assert printed["base_config"]["train"]["max_steps"] == 600
    assert tune_main(["--space", str(ROOT / "tune_spaces" / "lr_gripper.yaml"), "--dry-run",
                      "train.max_steps=50", "train.val_every=25", "sweep.grace_period=10"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["base_config"]["train"]["max_steps"] == 50


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
