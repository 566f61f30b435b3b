"""A real sweep on the local Ray cluster: 4 trials, each a TorchTrainer run, ASHA on val_loss."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml

from vla.config import load_config
from vla.model import ActionStepper, load_export
from vla.tune.report import write_report
from vla.tune.runner import SweepError, make_sweep, run_sweep
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
    assert model_cfg.state_dim == 4  # the synthetic robot's (x, y, z, gripper), read by default
    chunk = ActionStepper(model.eval()).step(images, torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long),
                                             state=torch.zeros(1, model_cfg.state_dim))
    assert chunk.shape == (1, model_cfg.fwd_pred_next_n, 7) and torch.isfinite(chunk).all()


CLOSED_LOOP_SPACE = {
    # A sane and an absurd learning rate, scored by closed-loop success: ASHA prunes on it.
    "params": {"train.lr": {"grid": [3.0e-3, 5.0]}},
    "sweep": {"num_trials": 1, "search": "grid", "metric": "eval_success_rate", "mode": "max",
              "grace_period": 2, "reduction_factor": 2, "max_concurrent_trials": 2},
}


def forget_final_result(sweep_dir: Path, trial: str) -> None:
    """Tune's saved state as when the sweep failed after ``trial`` had trained to the end but
    before Tune recorded its result (Tune raising on the result did that): the trial errored,
    no result kept. Re-running the sweep runs the trial again; its training resumes at the end."""
    state_file = max(sweep_dir.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    for entry in state["trial_data"]:
        trial_state, run_metadata = json.loads(entry[0]), json.loads(entry[1])
        if trial_state["trial_id"] in trial:
            trial_state["status"] = "ERROR"
            run_metadata["last_result"] = {}
            entry[:] = [json.dumps(trial_state), json.dumps(run_metadata)]
    state_file.write_text(json.dumps(state))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_trials_scored_by_closed_loop_success_and_a_rerun_keeps_the_finished_trial(ray_session, tiny_run,
                                                                                        tmp_path):
    overrides = tiny_run(tmp_path, "base") + [
        "train.num_workers=1", "train.max_steps=4", "train.val_every=2", "train.checkpoint_every=2",
        "train.eval.episodes=4", "train.eval.cpus=0.25",
    ]
    base = load_config(None, overrides)
    sweep = make_sweep("closed-loop", parse_space(CLOSED_LOOP_SPACE, base.to_dict()), base)
    report = write_report(run_sweep(sweep), sweep)

    rows = {row.params["train.lr"]: row for row in report.rows}
    assert len(rows) == 2 and not [r for r in rows.values() if r.status == "error"]
    for row in rows.values():  # each trial was scored closed loop and validated, and the table shows both
        assert 0.0 <= row.metric <= 1.0 and row.metric == row.scores["eval_success_rate"]
        assert row.scores["val_loss"] > 0 and row.checkpoint
    assert report.agreement["trials"] == 2 and report.agreement["metrics"] == ["val_loss", "eval_success_rate"]
    header = (Path(sweep.directory) / "trials.csv").read_text().splitlines()[0]
    assert header.startswith("trial,train.lr,eval_success_rate,val_loss,steps")

    # Re-running after a failure used to list the fully trained trial as stopped early, with no metric.
    finished = rows[3.0e-3]
    assert finished.status == "completed"
    forget_final_result(Path(sweep.directory), finished.trial)
    again = {row.params["train.lr"]: row for row in write_report(run_sweep(sweep), sweep).rows}
    assert again[3.0e-3].status == "completed" and again[3.0e-3].steps == 4
    assert again[3.0e-3].metric == finished.metric and again[3.0e-3].scores["val_loss"] == finished.scores["val_loss"]

    # The folder now holds this sweep: the same command, or one that only changes how many trials
    # run at once, resumes it; one that changes what trials run is refused, naming what differs
    # (it used to resume silently and report the old trials as the new sweep's).
    assert make_sweep("closed-loop", parse_space(CLOSED_LOOP_SPACE, base.to_dict()), base).directory == sweep.directory
    one_at_a_time = {**CLOSED_LOOP_SPACE, "sweep": {**CLOSED_LOOP_SPACE["sweep"], "max_concurrent_trials": 1}}
    make_sweep("closed-loop", parse_space(one_at_a_time, base.to_dict()), base)
    longer = load_config(None, overrides + ["train.max_steps=6"])
    with pytest.raises(SweepError, match=r"defined otherwise \(base_config\.train\.max_steps: 4 -> 6\)"):
        make_sweep("closed-loop", parse_space(CLOSED_LOOP_SPACE, longer.to_dict()), longer)
