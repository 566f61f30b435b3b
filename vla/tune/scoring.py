"""What each trial tells Tune: the Train reports, each checkpointed one scored by closed-loop
success in the environment of the training data (the built-in simulator or MetaWorld,
``vla.eval.environments``) when the sweep asks for it (``sweep.closed_loop``, or the
metric ``eval_success_rate``).

The score is one Ray task (``vla.eval.checkpoint.evaluate_checkpoint``, ``train.eval.episodes``
episodes of the checkpoint just reported), scheduled by ``vla.eval.scheduler`` as training's own
evaluations are, beside the trial's workers, from the trial's Train controller: the workers keep
training while it runs (they wait only if they reach their next report first). ASHA sees the
score in the same report as the checkpoint it scored. A report without the sweep's metric
(e.g. before the first score, or after a failed one) is not forwarded to Tune.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from vla.config import Config
from vla.eval.scheduler import CheckpointEvaluator
from vla.model.checkpoint import TRAIN_STATE_FILE
from vla.storage import exists, filesystem

CHECKPOINT_PREFIX = "checkpoint_step"  # the folder names vla.train.loop reports checkpoints under


class SweepReportCallback(TuneReportCallback):
    """``TuneReportCallback`` that adds the closed-loop score of each reported checkpoint (the one
    evaluation scheduler, ``vla.eval.scheduler``, waited for at once) and forwards only scored
    reports."""

    def __init__(self, metric: str, run_dir: str, cfg: Config, score: bool) -> None:
        super().__init__()
        self.metric = metric
        self.run_dir = run_dir
        self.cfg = cfg
        self.score = score
        self.evaluator: CheckpointEvaluator | None = None  # built in the controller, where it runs
        self.latest_score: dict[str, float] = {}

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint: ray.train.Checkpoint | None):
        report = dict(metrics[0])
        if checkpoint is not None:
            report[CHECKPOINT_PATH_KEY] = checkpoint.path
            if self.score:
                self.score_now(int(report.get("step", 0)), checkpoint)
        report.update(self.latest_score)
        if self.metric in report:
            self._training_actor_item_queue.put(report)

    def score_now(self, step: int, checkpoint: ray.train.Checkpoint) -> None:
        """Closed-loop success of ``checkpoint`` (a Ray task on ``train.eval.cpus``); a failed
        score leaves the report unscored and the trial goes on."""
        if self.evaluator is None:
            self.evaluator = CheckpointEvaluator(self.cfg, self.run_dir, self.keep_score, offline=False, calvin=False)
        self.latest_score = {}
        self.evaluator.offer(step, checkpoint)
        self.evaluator.finish(step)

    def keep_score(self, step: int, metrics: dict[str, float], reported_at_step: int) -> None:
        if "eval_failed" not in metrics:
            self.latest_score = metrics


def finished_step(run_dir: str) -> int:
    """The step of the run's latest complete checkpoint (0 without one)."""
    fs, inner = filesystem(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    steps = [int(name.removeprefix(CHECKPOINT_PREFIX)) for name in (info.base_name for info in infos)
             if name.startswith(CHECKPOINT_PREFIX) and name.removeprefix(CHECKPOINT_PREFIX).isdigit()
             and exists(f"{run_dir}/{name}/{TRAIN_STATE_FILE}")]
    return max(steps, default=0)
