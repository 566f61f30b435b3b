"""A real sweep on the local Ray cluster: 4 trials, each a TorchTrainer run, ASHA on val_loss."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
import torch
import yaml

from vla.config import load_config
from vla.model import ActionStepper, load_export
from vla.tune.report import write_report
from vla.tune.runner import make_sweep, run_sweep
from vla.tune.space import parse_space

SPACE = {
    "presets": {
        "full": {"model.freeze_backbone": False},
        "frozen_backbone": {"model.freeze_backbone": True},
    },
    "params": {
        "preset": {"grid": ["full", "frozen_backbone"]},
        # A sane and an absurd learning rate: ASHA has something to stop.
        "train.lr": {"grid": [3.0e-3, 5.0]},
    },
    "sweep": {"num_trials": 1, "search": "grid", "grace_period": 2, "reduction_factor": 2, "max_concurrent_trials": 2},
}


def wait_for_free_cpus(total: float, timeout_s: float = 60) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free = ray.available_resources().get("CPU", 0.0)
        if free >= total:
            return free
        time.sleep(1)
    return ray.available_resources().get("CPU", 0.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_four_trial_sweep_stops_early_reports_and_exports_the_best(ray_session, tiny_run, tmp_path):
    overrides = tiny_run(tmp_path, "base") + [
        "train.num_workers=1", "train.max_steps=8", "train.val_every=2", "train.checkpoint_every=4",
    ]
    base = load_config(None, overrides)
    sweep = make_sweep("test-sweep", parse_space(SPACE, base.to_dict()), base)
    report = write_report(run_sweep(sweep), sweep)

    rows = report.rows
    assert len(rows) == 4
    assert not [r for r in rows if r.status == "error"]
    assert any(r.status == "stopped early" for r in rows), [(r.params, r.steps) for r in rows]
    assert any(r.status == "completed" for r in rows)
    # Presets change what trains, and each trial says so.
    trainable = {r.params["preset"]: r.trainable_params for r in rows}
    assert trainable["frozen_backbone"] < trainable["full"]
    # Stopped trials gave their workers back.
    assert wait_for_free_cpus(ray.cluster_resources()["CPU"]) == ray.cluster_resources()["CPU"]

    # The results: table, plot, best config that reproduces the best trial, its policy acts.
    directory = Path(sweep.directory)
    assert (directory / "trials.csv").read_text().count("\n") == 5
    assert (directory / "sweep.png").stat().st_size > 0
    best = report.best
    assert best.status == "completed"  # the best of the trials that ran to the end
    assert best.metric == min(r.metric for r in rows if r.status == "completed")
    best_cfg = load_config(report.best_config)
    assert best_cfg.train.lr == pytest.approx(best.params["train.lr"])
    assert best_cfg.model.freeze_backbone == (best.params["preset"] == "frozen_backbone")
    assert yaml.safe_load(Path(report.best_config).read_text())["run"]["name"] == "test-sweep-best"
    model, model_cfg = load_export(report.export_dir)
    images = torch.randint(0, 256, (1, model_cfg.num_views, 3, 32, 32), dtype=torch.uint8)
    action = ActionStepper(model.eval()).step(images, torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long))
    assert action.shape == (1, 7) and torch.isfinite(action).all()
