"""What each trial tells Tune: the Train reports, each checkpointed one scored by closed-loop
success in the environment of the training data (the built-in simulator or MetaWorld,
``vla.eval.environments``) when the sweep asks for it (``sweep.closed_loop``, or the
metric ``eval_success_rate``).

The score is one Ray task (``vla.eval.checkpoint.evaluate_checkpoint``, ``train.eval.episodes``
episodes of the checkpoint just reported) beside the trial's workers, run from the trial's
Train controller: the workers keep training while it runs (they wait only if they reach
their next report first). ASHA sees the score in the same report as the checkpoint it scored.
A report without the sweep's metric (e.g. before the first score) is not forwarded to Tune.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from vla.config import Config
from vla.eval.checkpoint import evaluate_checkpoint
from vla.storage import exists, filesystem
from vla.train.checkpoint import TRAIN_STATE_FILE

log = logging.getLogger("vla.tune")

CHECKPOINT_PREFIX = "checkpoint_step"  # the folder names vla.train.loop reports checkpoints under


def score_checkpoint(checkpoint: ray.train.Checkpoint, run_dir: str, cfg: Config) -> dict[str, float]:
    """Closed-loop success of ``checkpoint`` (a Ray task on ``train.eval.cpus``); {} if it failed."""
    task = ray.remote(num_cpus=cfg.train.eval.cpus, num_gpus=cfg.train.eval.gpus, max_retries=0,
                      scheduling_strategy="DEFAULT")(evaluate_checkpoint)  # beside the trial, not in its bundles
    try:
        return ray.get(task.remote(checkpoint, run_dir, cfg.to_dict(), offline=False, calvin=False),
                       timeout=cfg.train.eval.timeout_s)
    except Exception as err:  # a failed score leaves the report unscored; the trial goes on
        log.warning("closed-loop score of %s failed: %s: %s", checkpoint.path, type(err).__name__, err)
        return {}


class SweepReportCallback(TuneReportCallback):
    """``TuneReportCallback`` that adds the closed-loop score and forwards only scored reports."""

    def __init__(self, metric: str, run_dir: str, cfg: Config, score: bool) -> None:
        super().__init__()
        self.metric = metric
        self.run_dir = run_dir
        self.cfg = cfg
        self.score = score
        self.latest_score: dict[str, float] = {}

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint: ray.train.Checkpoint | None):
        report = dict(metrics[0])
        if checkpoint is not None:
            report[CHECKPOINT_PATH_KEY] = checkpoint.path
            if self.score:
                self.latest_score = score_checkpoint(checkpoint, self.run_dir, self.cfg)
        report.update(self.latest_score)
        if self.metric in report:
            self._training_actor_item_queue.put(report)


def finished_step(run_dir: str) -> int:
    """The step of the run's latest complete checkpoint (0 without one)."""
    fs, inner = filesystem(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    steps = [int(name.removeprefix(CHECKPOINT_PREFIX)) for name in (info.base_name for info in infos)
             if name.startswith(CHECKPOINT_PREFIX) and name.removeprefix(CHECKPOINT_PREFIX).isdigit()
             and exists(f"{run_dir}/{name}/{TRAIN_STATE_FILE}")]
    return max(steps, default=0)
