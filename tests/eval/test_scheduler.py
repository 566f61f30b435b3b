"""The evaluation scheduler: while training runs, checkpoints go to a Ray task beside the FSDP
workers, training never waits for it, results land in metrics.jsonl tagged with the step they
scored and in the run's plot at that step."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
import ray.train

from vla.config import load_config
from vla.eval.scheduler import CheckpointEvaluator
from vla.plots import draw_run_metrics, plot_run_metrics
from vla.train.launch import run_training
from vla.train.progress import PLOT_FILE, RunLogger, read_metrics

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
    records = read_metrics(Path(result.run_dir) / "metrics.jsonl")
    assert drawn(records, 3)["success"].tolist() == [[r["step"], r["eval_success_rate"]] for r in evaluations]


SUCCESS_PANEL_WIDTH = 1500  # px: metrics.png grows a third (closed-loop success) panel beside loss and pose error


def plot_width(path: Path) -> int:
    return matplotlib.image.imread(path).shape[1]


def drawn(records: list[dict], panels: int) -> dict[str, np.ndarray]:
    """The points ``draw_run_metrics`` puts on each curve (by label): x = step, y = value."""
    fig, axes = plt.subplots(1, panels)
    try:
        draw_run_metrics(list(axes), records)
        points = {line.get_label(): line.get_xydata() for ax in axes for line in ax.get_lines()
                  if not line.get_label().startswith("_")}
        success = axes[2].containers[0] if panels > 2 else None  # the errorbar: its line, caps and bars
        if success is not None:
            points["success"] = success.lines[0].get_xydata()
            bars = success.lines[2][0].get_segments()
            points["success_interval"] = np.array([[segment[0][1], segment[1][1]] for segment in bars])
        return points
    finally:
        plt.close(fig)


def test_the_run_plot_puts_each_evaluation_at_the_step_it_scored(tmp_path):
    training = [{"step": s, "loss": 1.0 / s, "pose_error": 0.5 / s} for s in (10, 20, 30, 40)]
    evaluation = [{"step": s, "eval_success_rate": rate, "eval_success_ci_low": rate - 0.1,
                   "eval_success_ci_high": rate + 0.2, "eval_offline_loss": 0.2 * rate, "eval_reported_at_step": s + 5}
                  for s, rate in ((20, 0.25), (40, 0.5))]
    plain = drawn(training, 2)
    assert set(plain) == {"loss", "pose_error"}
    assert plain["loss"].tolist() == [[s, 1.0 / s] for s in (10, 20, 30, 40)]
    points = drawn(training + evaluation, 3)
    assert points["success"].tolist() == [[20, 0.25], [40, 0.5]]  # the step scored, not the step reported at
    assert np.allclose(points["success_interval"], [[0.15, 0.45], [0.4, 0.7]])
    assert points["eval_offline_loss"].tolist() == [[20, 0.05], [40, 0.1]]
    assert points["loss"].tolist() == plain["loss"].tolist()  # evaluations add no training points
    assert plot_width(plot_run_metrics(training, tmp_path / "plain.png")) == 1000
    assert plot_width(plot_run_metrics(training + evaluation, tmp_path / "evaluated.png")) == SUCCESS_PANEL_WIDTH


@pytest.mark.timeout(120)
def test_a_failed_evaluation_is_logged_and_never_raises(ray_session, tiny_run, tmp_path):
    cfg = load_config(None, [*tiny_run(tmp_path, "failing"), "train.checkpoint_every=2", "train.eval_every=2",
                             "run.wandb_mode=disabled", *EVAL])
    run_dir = tmp_path / "failing"
    logger = RunLogger(str(run_dir), "failing", "vla", "disabled", {})
    evaluator = CheckpointEvaluator(cfg, str(run_dir), logger.record_evaluation)
    evaluator.offer(2, ray.train.Checkpoint(str(tmp_path / "no-such-checkpoint")))
    evaluator.poll(3)
    assert evaluator.in_flight is not None  # started, not waited for
    evaluator.finish(4)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records == [{"step": 2, "eval_failed": 1.0, "eval_reported_at_step": 4}]
