"""Evaluate a training checkpoint (not an export): what evaluation during training and the
closed-loop score of sweep trials run, as one Ray task beside the training workers.

The sharded DCP checkpoint is loaded into a single unsharded model (DCP reshards on load),
wrapped in the same ``Policy`` an export gives, and measured:
- closed loop: ``train.eval.episodes`` episodes in the environment of the training data (the
  built-in simulator, or MetaWorld for MetaWorld data: ``vla.eval.environments``), in lockstep;
- offline: the first ``train.eval.offline_batches`` batches of the validation split;
- CALVIN's long-horizon protocol when ``train.eval.calvin_dataset`` is set and calvin_env is installed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import ray.train
import torch

from vla.config import Config, resolve_config
from vla.eval.calvin import calvin_available, evaluate_calvin
from vla.eval.environments import environment_for, evaluation_episodes
from vla.eval.offline import evaluate_offline_local
from vla.eval.rollout import run_episodes, summarize
from vla.eval.settings import CheckpointEvalConfig
from vla.model.export import NORMALIZATION_FILE
from vla.plots import SUCCESS_KEY
from vla.policy.policy import Policy
from vla.storage import read_bytes

log = logging.getLogger("vla.eval")

def closed_loop_metrics(policy: Policy, run: Config, settings: CheckpointEvalConfig) -> dict[str, float]:
    """Success (with its 95% interval, and per task when the environment has several) in the
    environment of the run's training data (``vla.eval.environments.environment_for``)."""
    env = environment_for(run)
    summary = summarize(run_episodes(policy, evaluation_episodes(env, settings.episodes, settings.seed), env),
                        env.outcomes)
    low, high = summary["success_ci95"]
    per_task = {f"eval_success_{task}": result["success_rate"] for task, result in summary["per_task"].items()}
    return {SUCCESS_KEY: summary["success_rate"], "eval_success_ci_low": low, "eval_success_ci_high": high,
            "eval_episodes": summary["episodes"], "eval_mean_steps": summary["mean_steps"],
            **(per_task if len(env.tasks) > 1 else {})}


def evaluate_checkpoint(checkpoint: ray.train.Checkpoint, run_dir: str, run_dict: dict, *, offline: bool = True,
                        calvin: bool = True) -> dict[str, float]:
    """Every evaluation ``train.eval`` asks for, of a reported training checkpoint (local or on
    object storage) of the run in ``run_dir``; metrics named ``eval_*``."""
    start = time.perf_counter()
    torch.set_num_threads(1)
    run = resolve_config(run_dict)
    settings = run.train.eval
    normalization = json.loads(read_bytes(f"{run_dir}/{NORMALIZATION_FILE}"))
    device = "cuda" if settings.gpus > 0 and torch.cuda.is_available() else "cpu"
    with checkpoint.as_directory() as local:
        policy = Policy.from_checkpoint(Path(local), run, normalization, device)
    metrics: dict[str, float] = {}
    if settings.episodes:
        metrics.update(closed_loop_metrics(policy, run, settings))
    if offline and settings.offline_batches:
        result = evaluate_offline_local(policy, run, run.data.val_split, batch_size=run.data.batch_size,
                                        max_batches=settings.offline_batches)
        metrics.update({f"eval_offline_{key}": result[key]
                        for key in ("loss", "loss_arm", "loss_gripper", "pose_error", "gripper_accuracy")
                        if key in result})
    if calvin and settings.calvin_dataset:
        if calvin_available():
            result = evaluate_calvin(policy, settings.calvin_dataset, chains=settings.calvin_chains)
            metrics["eval_calvin_average_length"] = result["average_length"]
            metrics.update({f"eval_calvin_success_{k + 1}": rate for k, rate in enumerate(result["success_rates"])})
        else:
            log.info("train.eval.calvin_dataset is set but calvin_env is not installed: CALVIN skipped")
    metrics["eval_duration_s"] = time.perf_counter() - start
    return metrics
