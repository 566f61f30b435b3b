"""Evaluation while training runs: checkpoints go to a Ray task beside the FSDP workers,
training never waits for it, results land in metrics.jsonl tagged with the step they scored."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import ray.train

from vla.config import load_config
from vla.eval.during_training import CheckpointEvaluator
from vla.train.launch import run_training
from vla.train.progress import PLOT_FILE, RunLogger, plot_metrics

EVAL = ["train.eval.episodes=4", "train.eval.offline_batches=1", "train.eval.cpus=0.5"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_checkpoints_are_evaluated_at_their_steps_while_training_goes_on(ray_session, tiny_run, tmp_path):
    cfg = load_config(None, [*tiny_run(tmp_path, "evaluated"), "train.max_steps=8", "train.val_every=0",
                             "train.checkpoint_every=2", "train.eval_every=4", *EVAL])
    result = run_training(cfg)

    lines = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in lines if "eval_success_rate" in r]
    assert [r["step"] for r in evaluations] == [4, 8], evaluations  # every eval_every-th step's checkpoint
    for record in evaluations:
        assert 0.0 <= record["eval_success_rate"] <= 1.0 and record["eval_episodes"] == 4
        assert record["eval_success_ci_low"] <= record["eval_success_rate"] <= record["eval_success_ci_high"]
        assert record["eval_offline_loss"] > 0 and 0.0 <= record["eval_offline_gripper_accuracy"] <= 1.0
        assert record["eval_reported_at_step"] >= record["step"]
    # Training did not wait: steps after 4 were logged before the step-4 evaluation came back.
    first_eval = lines.index(evaluations[0])
    assert any(r.get("step", 0) > 4 and "loss" in r for r in lines[:first_eval]), lines
    assert not [r for r in lines if "eval_failed" in r]
    assert plot_width(Path(result.run_dir) / PLOT_FILE) == SUCCESS_PANEL_WIDTH  # the run's one plot shows them


SUCCESS_PANEL_WIDTH = 1500  # px: metrics.png grows a third (closed-loop success) panel beside loss and pose error


def plot_width(path: Path) -> int:
    return matplotlib.image.imread(path).shape[1]


def test_the_run_plot_shows_evaluations_at_the_step_they_scored_and_nothing_else_without_them(tmp_path):
    training = [{"step": s, "loss": 1.0 / s, "pose_error": 0.5 / s} for s in (10, 20, 30, 40)]
    evaluation = [{"step": s, "eval_success_rate": 0.25, "eval_success_ci_low": 0.1, "eval_success_ci_high": 0.5,
                   "eval_offline_loss": 0.2, "eval_reported_at_step": s + 5} for s in (20, 40)]
    plain, evaluated = tmp_path / "plain.jsonl", tmp_path / "evaluated.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in training))
    evaluated.write_text("".join(json.dumps(r) + "\n" for r in training + evaluation))
    assert plot_width(plot_metrics(plain, tmp_path / "plain.png")) == 1000
    assert plot_width(plot_metrics(evaluated, tmp_path / "evaluated.png")) == SUCCESS_PANEL_WIDTH


@pytest.mark.timeout(120)
def test_a_failed_evaluation_is_logged_and_never_raises(ray_session, tiny_run, tmp_path):
    cfg = load_config(None, [*tiny_run(tmp_path, "failing"), "train.checkpoint_every=2", "train.eval_every=2",
                             "run.wandb_mode=disabled", *EVAL])
    run_dir = tmp_path / "failing"
    evaluator = CheckpointEvaluator(cfg, str(run_dir), RunLogger(str(run_dir), "failing", "vla", "disabled", {}))
    evaluator.pending = (2, ray.train.Checkpoint(str(tmp_path / "no-such-checkpoint")))
    evaluator.poll(3)
    assert evaluator.in_flight is not None  # started, not waited for
    evaluator.finish(4)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 2, "eval_failed": 1.0, "eval_reported_at_step": 4}]
