"""The training loop that runs in every Ray Train worker, in the shape of torchtitan's ``train.py``.

Per worker: build the model and its ``Trainer`` (``vla.train.step``: activation checkpointing,
compile, FSDP2, the optimizer over the sharded parameters), resume from Ray Train's latest
checkpoint if there is one, then repeat ``train_step`` (gradient accumulation over
micro-batches, clipping, the optimizer and the schedule), ``maybe_log``, ``maybe_validate`` and
``maybe_checkpoint`` until the last step; at the end, a consolidated export for inference.

No step waits for the device needlessly: losses and metrics stay on the device as detached
sums and are reduced across ranks and read on the host only on the steps that log, validate
or report. There is no per-batch "does every rank still have data" all-reduce:
each rank's plan of the training and validation splits (``vla.data.WindowStream``) holds the
same number of windows, hence of batches, and all ranks leave an epoch after the same batch (a
resumed run skips the same ``batch_in_epoch`` on each, without decoding them).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from vla.config import Config, resolve_config
from vla.eval.scheduler import CheckpointEvaluator
from vla.model import build_model, count_parameters, pretrained_loader, save_export
from vla.storage import exists, is_uri, upload, write_bytes
from vla.train import collectives
from vla.train.checkpoint import TrainState, choose_resume_checkpoint, load_checkpoint, save_checkpoint
from vla.train.faults import maybe_kill_after_checkpoint
from vla.train.parallelize import reshard, weights_dtype_for
from vla.train.progress import MetricSums, RunLogger
from vla.train.step import Batch, Trainer, build_trainer, forward_loss, to_device, train_step

log = logging.getLogger("vla.train")

EXPORT_DIR = "export"


class InjectedFailure(RuntimeError):
    """Raised by ``train.inject_failure_at_step`` to exercise worker-group restarts."""


def maybe_inject_failure(step: int, inject_at: int, run_dir: str) -> None:
    """Raise once per run at step ``inject_at``; a marker in the run folder makes it once."""
    marker = f"{run_dir}/injected_failure_step{inject_at}"
    if inject_at and step == inject_at and not exists(marker):
        collectives.barrier()
        if dist.get_rank() == 0:
            write_bytes(marker, b"")
        collectives.barrier()
        raise InjectedFailure(f"train.inject_failure_at_step={step} on rank {dist.get_rank()}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """One worker's run: the step's ``Trainer`` plus what the loop logs, validates and reports."""

    cfg: Config
    run_dir: str
    total_steps: int
    trainer: Trainer
    logger: RunLogger | None  # rank 0 only
    base_metrics: dict[str, float] = field(default_factory=dict)  # parameter counts, reported always
    last_logged: dict[str, float] = field(default_factory=dict)
    last_val: dict[str, float] = field(default_factory=dict)
    last_checkpoint_step: int = -1

    @property
    def state(self) -> TrainState:
        return self.trainer.state

    def is_step(self, every: int) -> bool:
        """True on every ``every``-th step (never when ``every`` is 0)."""
        return bool(every) and self.state.step % every == 0

    def report_metrics(self) -> dict[str, float]:
        """What ``ray.train.report`` gets: position, parameter counts, the last training and validation means."""
        return {"step": self.state.step, "epoch": self.state.epoch, **self.base_metrics, **self.last_logged, **self.last_val}


def batch_stream(run: Run, train_shard) -> Iterator[Batch]:
    """Micro-batches over the epochs, from the resumed position on; keeps the train state's
    ``epoch`` and ``batch_in_epoch`` on the next batch to take."""
    state, tcfg = run.state, run.cfg.train
    while tcfg.max_steps or state.epoch < tcfg.epochs:
        batches = train_shard.batches(epoch=state.epoch, rank=dist.get_rank(), world_size=dist.get_world_size(),
                                      skip=state.batch_in_epoch)
        for batch in batches:
            state.batch_in_epoch += 1
            yield batch
        state.epoch += 1
        state.batch_in_epoch = 0


def maybe_log(run: Run) -> None:
    """On log steps: means over every micro-batch of every rank since the last log, and the timing.

    Steps that report to Ray Train (validation, checkpoint, last) log too, so every report
    carries the training metrics of its own step.
    """
    trainer, step, tcfg = run.trainer, run.state.step, run.cfg.train
    reports = run.is_step(tcfg.val_every) or run.is_step(tcfg.checkpoint_every) or step == run.total_steps
    if not (run.is_step(tcfg.log_every) or reports):
        return
    metrics = {**trainer.micro_metrics.mean_over_ranks(), **trainer.step_metrics.mean_over_ranks(), "lr": trainer.lr}
    metrics.update(trainer.timer.window(run.total_steps - step))
    run.last_logged = metrics
    if run.logger is not None:
        run.logger.log(step, metrics)
        run.logger.progress(step, run.total_steps, metrics)


@torch.no_grad()
def validate(trainer: Trainer, val_shard, cfg: Config) -> dict[str, float]:
    """Validation metrics over ``train.val_batches`` batches, split between the ranks: means over
    every predicted step inside an episode, as ``vla.eval.offline`` defines them.

    Each rank evaluates ``ceil(val_batches / world_size)`` batches of its own shard of the
    split; the sums are reduced across ranks once.
    """
    model = trainer.model
    per_rank = math.ceil(cfg.train.val_batches / trainer.world_size)
    sums = MetricSums()
    model.eval()
    batches = val_shard.batches(epoch=0, rank=dist.get_rank(), world_size=trainer.world_size)
    for batch in itertools.islice(batches, per_rank):
        batch = to_device(batch, trainer.device)
        sums.add(forward_loss(model, batch), weight=batch["action_mask"].sum())  # a mean over predicted steps
    reshard(model)
    model.train()
    return {f"val_{key}": value for key, value in sums.mean_over_ranks().items()}


def maybe_validate(run: Run, val_shard) -> bool:
    """On validation steps: validate, log, and keep the result for the reports; True if it ran."""
    if not run.is_step(run.cfg.train.val_every):
        return False
    with run.trainer.timer.excluded():
        run.last_val = validate(run.trainer, val_shard, run.cfg)
    if run.logger is not None:
        run.logger.log(run.state.step, run.last_val)
        run.logger.progress(run.state.step, run.total_steps, run.last_val)
    return True


def checkpoint_and_report(run: Run) -> None:
    """Save a sharded checkpoint (every rank) and hand it to Ray Train with the metrics.

    Rank 0 logs how long the save took (``checkpoint_save_s``: every rank's shards written to a
    local folder), how long Ray took to persist it to the run's storage (``checkpoint_report_s``)
    and the size of all ranks' files (``checkpoint_gb``).
    """
    trainer, state = run.trainer, run.state
    with tempfile.TemporaryDirectory(prefix="vla_ckpt_") as tmp:
        start = time.perf_counter()
        size = save_checkpoint(Path(tmp), trainer.model, trainer.optimizer, trainer.scheduler, state)
        saved = time.perf_counter()
        ray.train.report(
            run.report_metrics(),
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_step{state.step:07d}",
        )
        reported = time.perf_counter()
    run.last_checkpoint_step = state.step
    if run.logger is not None:
        run.logger.log(state.step, {"checkpoint_save_s": saved - start, "checkpoint_report_s": reported - saved,
                                    "checkpoint_gb": size / 1e9})
        run.logger.sync()


def maybe_checkpoint(run: Run, validated: bool) -> None:
    """Checkpoint (and report) on checkpoint steps and the last step; else report after a validation.

    Every rank reports on the same steps, as Ray Train requires.
    """
    if run.is_step(run.cfg.train.checkpoint_every) or run.state.step == run.total_steps:
        with run.trainer.timer.excluded():
            checkpoint_and_report(run)
        maybe_kill_after_checkpoint(run.state.step, run.cfg.train.inject_kill_at_step, run.run_dir)
    elif validated:
        ray.train.report(run.report_metrics())


def export_policy(model: torch.nn.Module, cfg: Config, run_dir: str, normalization_json: str) -> str | None:
    """Gather the full state dict (a collective) and write the inference export on rank 0.

    Beside the model it holds the action statistics and the run's full config (cameras,
    instruction length), so a policy preprocesses observations exactly as training did.
    """
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    destination = f"{run_dir}/{EXPORT_DIR}"
    local = Path(tempfile.mkdtemp(prefix="vla_export_")) if is_uri(run_dir) else Path(destination)
    save_export(local, model, state_dict=full, run_config=cfg.to_dict(), normalization=json.loads(normalization_json))
    if is_uri(run_dir):
        upload(local, destination)
    return destination


def build_run(cfg: Config, run_dir: str, total_steps: int, rank: int, world_size: int) -> Run:
    """Model, parallelism, optimizer, schedule and loss scaler; resumed from Ray Train's latest checkpoint."""
    tcfg = cfg.train
    device = torch.device("cuda", torch.cuda.current_device()) if tcfg.use_gpu else torch.device("cpu")
    seed_everything(tcfg.seed)
    # A pretrained backbone is built on meta and each rank reads its shards once parallelized (vla.model.loading).
    model = build_model(cfg.model, dtype=weights_dtype_for(tcfg),
                        backbone_on_meta=cfg.model.pretrained_path is not None)
    load_pretrained = pretrained_loader(model)
    trainable, total = count_parameters(model)
    trainer = build_trainer(model, tcfg, device, world_size, total_steps=total_steps, text_len=cfg.data.max_text_len)
    load_pretrained(device)
    logger = None
    if rank == 0:
        logger = RunLogger(run_dir, cfg.run.name, cfg.run.wandb_project, cfg.run.wandb_mode, cfg.to_dict())
    run = Run(cfg=cfg, run_dir=run_dir, total_steps=total_steps, trainer=trainer, logger=logger)
    run.base_metrics = {
        "trainable_params": trainable,
        "total_params": total,
        "local_param_numel": sum(p.to_local().numel() for p in model.parameters()),
    }
    resume(run, rank)
    if logger is not None:
        log.info(
            "%s at step %d of %d on %d %s worker(s): %d of %d parameters trainable, %d LM tokens per frame",
            "resuming" if run.state.step else "starting", run.state.step, total_steps, world_size,
            device.type, trainable, total, trainer.tokens_per_frame,
        )
    return run


def resume(run: Run, rank: int) -> None:
    """Load Ray Train's latest checkpoint, if any, and seed this rank for the position reached."""
    trainer = run.trainer
    start = time.perf_counter()
    resumed = choose_resume_checkpoint(run.run_dir, ray.train.get_checkpoint())
    if resumed is not None:
        with ray.train.Checkpoint(resumed).as_directory() as directory:
            trainer.state = load_checkpoint(Path(directory), trainer.model, trainer.optimizer, trainer.scheduler)
    if run.logger is not None:
        run.logger.cut_after(run.state.step)
        if resumed is not None:  # the record of a resume: the step it resumed at, and the load's time
            run.logger.log(run.state.step, {"checkpoint_load_s": time.perf_counter() - start})
    seed_everything(run.cfg.train.seed + 1000 * rank + run.state.step)


def checkpoint_evaluator(run: Run) -> CheckpointEvaluator | None:
    """Rank 0's scheduler of evaluations when ``train.eval_every`` is on; its results go to the
    run's record (``RunLogger.record_evaluation``)."""
    if run.logger is None or not run.cfg.train.eval_every:
        return None
    return CheckpointEvaluator(run.cfg, run.run_dir, run.logger.record_evaluation)


def maybe_evaluate(run: Run, evaluator: CheckpointEvaluator) -> None:
    """After every optimizer step: collect or start evaluations, and offer the checkpoint just
    reported when its step is a multiple of ``train.eval_every``."""
    step = run.state.step
    evaluator.poll(step)
    if run.last_checkpoint_step == step and step % run.cfg.train.eval_every == 0:
        evaluator.offer(step, ray.train.get_checkpoint())  # the checkpoint just reported, as persisted


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config`` is built by ``vla.train.launch``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = resolve_config(loop_config["config"])
    run_dir: str = loop_config["run_dir"]
    context = ray.train.get_context()
    run = build_run(cfg, run_dir, loop_config["total_steps"], context.get_world_rank(), context.get_world_size())
    train_shard = loop_config["streams"][cfg.data.train_split]  # vla.data.WindowStream
    val_shard = loop_config["streams"][cfg.data.val_split] if cfg.train.val_every else None
    batches = batch_stream(run, train_shard)
    evaluator = checkpoint_evaluator(run)
    run.trainer.model.train()

    while run.state.step < run.total_steps and train_step(run.trainer, batches):
        maybe_inject_failure(run.state.step, cfg.train.inject_failure_at_step, run_dir)
        maybe_log(run)
        validated = maybe_validate(run, val_shard)
        maybe_checkpoint(run, validated)
        if evaluator is not None:
            maybe_evaluate(run, evaluator)

    ran_out = run.state.step < run.total_steps  # the data ended before the last step
    if ran_out and run.last_checkpoint_step != run.state.step:
        checkpoint_and_report(run)
    if cfg.run.export:
        start = time.perf_counter()
        destination = export_policy(run.trainer.model, cfg, run_dir, loop_config["normalization_json"])
        if destination is not None:
            run.logger.log(run.state.step, {"export_s": time.perf_counter() - start})
            log.info("exported the policy to %s", destination)
    if evaluator is not None:
        evaluator.finish(run.state.step)
    if run.logger is not None:
        log.info("metrics plot: %s", run.logger.finish())
