"""The training loop that runs in every Ray Train worker.

Per worker: build the model, parallelize it (FSDP2), build the optimizer over the sharded
parameters, resume from Ray Train's latest checkpoint if there is one, then train on this
worker's shard of the streamed windows: gradient accumulation, clipping, warmup + cosine,
validation, sharded checkpoints and, at the end, a consolidated export for inference.
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist
import yaml
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from vla.config import Config, resolve_config
from vla.data import iter_batches
from vla.eval.during_training import CheckpointEvaluator
from vla.model import build_model, count_parameters, save_export
from vla.model.export import NORMALIZATION_FILE, RUN_CONFIG_FILE
from vla.train.checkpoint import TrainState, load_checkpoint, save_checkpoint, state_fingerprint
from vla.train.parallelize import parallelize, reshard
from vla.train.progress import RunLogger, StepTimer
from vla.train.schedule import build_scheduler
from vla.train.storage import exists, is_uri, upload, write_bytes

log = logging.getLogger("vla.train")

EXPORT_DIR = "export"


class InjectedFailure(RuntimeError):
    """Raised by ``train.inject_failure_at_step`` to exercise worker-group restarts."""


def maybe_inject_failure(step: int, inject_at: int, run_dir: str) -> None:
    """Raise once per run at step ``inject_at``; a marker in the run folder makes it once."""
    marker = f"{run_dir}/injected_failure_step{inject_at}"
    if inject_at and step == inject_at and not exists(marker):
        dist.barrier()
        if dist.get_rank() == 0:
            write_bytes(marker, b"")
        dist.barrier()
        raise InjectedFailure(f"train.inject_failure_at_step={step} on rank {dist.get_rank()}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def all_ranks_have(item: Any, device: torch.device) -> bool:
    """True while every rank still has data: FSDP collectives need the same step count on all ranks."""
    flag = torch.tensor([0 if item is None else 1], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def synced(batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches until any rank runs out, so no rank waits in a collective forever."""
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if not all_ranks_have(batch, device):
            return
        yield batch


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    output = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    return model.loss(output, batch["actions"], batch["action_mask"])


@torch.no_grad()
def validate(model: torch.nn.Module, val_shard, cfg: Config, device: torch.device) -> dict[str, float]:
    """Mean validation metrics over the first ``train.val_batches`` batches (same on every rank)."""
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    batches = iter_batches(val_shard, cfg.data, epoch=0)
    for batch in synced(batches, device):
        metrics = forward_loss(model, to_device(batch, device))
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count += 1
        if count >= cfg.train.val_batches:
            break
    reshard(model)
    model.train()
    return {f"val_{key}": total / max(1, count) for key, total in sums.items()}


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
    extra = {NORMALIZATION_FILE: normalization_json, RUN_CONFIG_FILE: yaml.safe_dump(cfg.to_dict(), sort_keys=False)}
    save_export(local, model, state_dict=full, extra_files=extra)
    if is_uri(run_dir):
        upload(local, destination)
    return destination


def _checkpoint_and_report(
    model, optimizer, scheduler, state: TrainState, metrics: dict[str, float], logger: RunLogger | None
) -> None:
    fingerprint = state_fingerprint(model, optimizer)
    if logger is not None:
        logger.log(state.step, {"checkpoint_fingerprint": fingerprint})
    with tempfile.TemporaryDirectory(prefix="vla_ckpt_") as tmp:
        save_checkpoint(Path(tmp), model, optimizer, scheduler, state)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_step{state.step:07d}",
        )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config`` is built by ``vla.train.launch``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = resolve_config(loop_config["config"])
    tcfg = cfg.train
    run_dir: str = loop_config["run_dir"]
    total_steps: int = loop_config["total_steps"]
    rank = ray.train.get_context().get_world_rank()
    world_size = ray.train.get_context().get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if tcfg.use_gpu else torch.device("cpu")
    seed_everything(tcfg.seed)

    model = build_model(cfg.model)
    trainable, total = count_parameters(model)
    parallelize(model, tcfg, device, world_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tcfg.lr, betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    scheduler = build_scheduler(
        optimizer, lr=tcfg.lr, min_lr=tcfg.min_lr, warmup_steps=tcfg.warmup_steps, total_steps=total_steps
    )

    state = TrainState()
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as directory:
            state = load_checkpoint(Path(directory), model, optimizer, scheduler)
    seed_everything(tcfg.seed + 1000 * rank + state.step)
    fingerprint = state_fingerprint(model, optimizer) if resumed is not None else None

    logger = None
    if rank == 0:
        logger = RunLogger(run_dir, cfg.run.name, cfg.run.wandb_project, cfg.run.wandb_mode, cfg.to_dict())
        if fingerprint is not None:
            logger.log(state.step, {"resumed_fingerprint": fingerprint})
        log.info(
            "%s at step %d of %d on %d %s worker(s): %d of %d parameters trainable",
            "resuming" if resumed is not None else "starting", state.step, total_steps, world_size,
            device.type, trainable, total,
        )
    evaluator = CheckpointEvaluator.for_rank(rank, cfg, run_dir, logger)  # train.eval_every
    shard_numel = sum(p.to_local().numel() for p in model.parameters())
    base_metrics = {"trainable_params": trainable, "total_params": total, "local_param_numel": shard_numel}

    train_shard = ray.train.get_dataset_shard(cfg.data.train_split)
    val_shard = ray.train.get_dataset_shard(cfg.data.val_split) if tcfg.val_every else None
    timer = StepTimer()
    last_val: dict[str, float] = {}
    window_metrics: dict[str, float] = {}
    last_checkpoint_step = -1
    micro = 0
    model.train()

    while state.step < total_steps and (tcfg.max_steps or state.epoch < tcfg.epochs):
        batches = iter_batches(train_shard, cfg.data, epoch=state.epoch)
        for _ in range(state.batch_in_epoch):
            next(batches, None)
        for batch in synced(batches, device):
            timer.data_ready()
            batch = to_device(batch, device)
            micro += 1
            last_micro = micro % tcfg.grad_accum_steps == 0
            model.set_requires_gradient_sync(last_micro)
            metrics = forward_loss(model, batch)
            (metrics["loss"] / tcfg.grad_accum_steps).backward()
            state.batch_in_epoch += 1
            state.samples_seen += batch["images"].shape[0] * world_size
            timer.computed(batch["images"].shape[0] * world_size, batch["input_ids"].numel() * world_size)
            if not last_micro:
                continue

            grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip or float("inf"))
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            timer.step_done()
            maybe_inject_failure(state.step, tcfg.inject_failure_at_step, run_dir)
            if evaluator is not None:
                evaluator.poll(state.step)

            window_metrics = {k: float(v) for k, v in metrics.items()}
            window_metrics["lr"] = lr
            window_metrics["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            if state.step % tcfg.log_every == 0 or state.step == total_steps:
                window_metrics.update(timer.window(total_steps - state.step))
                if logger is not None:
                    logger.log(state.step, window_metrics)
                    logger.progress(state.step, total_steps, window_metrics)

            report = {"step": state.step, "epoch": state.epoch, **base_metrics, **window_metrics}
            if tcfg.val_every and state.step % tcfg.val_every == 0:
                last_val = validate(model, val_shard, cfg, device)
                if logger is not None:
                    logger.log(state.step, last_val)
                    logger.progress(state.step, total_steps, last_val)
            report.update(last_val)
            is_checkpoint_step = tcfg.checkpoint_every and state.step % tcfg.checkpoint_every == 0
            if is_checkpoint_step or state.step == total_steps:
                _checkpoint_and_report(model, optimizer, scheduler, state, report, logger)
                last_checkpoint_step = state.step
                if evaluator is not None:
                    evaluator.offer(state.step, tcfg.eval_every)
                if logger is not None:
                    logger.sync()
            elif tcfg.val_every and state.step % tcfg.val_every == 0:
                ray.train.report(report)
            if state.step >= total_steps:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0

    if last_checkpoint_step != state.step and state.step < total_steps:
        report = {"step": state.step, "epoch": state.epoch, **base_metrics, **window_metrics, **last_val}
        _checkpoint_and_report(model, optimizer, scheduler, state, report, logger)
    if cfg.run.export:
        destination = export_policy(model, cfg, run_dir, loop_config["normalization_json"])
        if destination is not None:
            log.info("exported the policy to %s", destination)
    if evaluator is not None:
        evaluator.finish(state.step)
    if logger is not None:
        log.info("metrics plot: %s", logger.finish())
