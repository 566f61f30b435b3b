"""One training step in pure torch: what the Ray Train loop runs and the GPU benchmark times.

``build_trainer`` parallelizes a model and builds its optimizer, schedule and loss scaler;
``train_step`` takes one optimizer step over ``train.grad_accum_steps`` micro-batches. No step
waits for the device: losses, metrics and the gradient norm stay on it as detached sums
(``MetricSums``) until a caller reads them. ``build_trainer`` makes the trainer's device the one
every collective of ``vla.train.collectives`` runs on.

Imports neither Ray nor ``vla.data``: the GPU benchmark runs it where Ray is not installed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from vla.train import collectives
from vla.train.checkpoint import TrainState
from vla.train.config import TrainConfig
from vla.train.parallelize import build_grad_scaler, parallelize
from vla.train.progress import MetricSums, StepTimer, lm_tokens_per_frame
from vla.train.schedule import build_optimizer, build_scheduler
from vla.train.tensor_parallel import clip_grad_norm, same_batch_in_group

Batch = dict[str, torch.Tensor]


@dataclass
class Trainer:
    """The parallelized model and everything a step updates."""

    train_cfg: TrainConfig
    device: torch.device
    world_size: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: ShardedGradScaler
    tokens_per_frame: int  # the LM's tokens per frame at the data's instruction length
    timer: StepTimer
    state: TrainState = field(default_factory=TrainState)
    # On-device sums since they were last read: per micro-batch (losses) and per step (grad norm)
    micro_metrics: MetricSums = field(default_factory=MetricSums)
    step_metrics: MetricSums = field(default_factory=MetricSums)
    lr: float = 0.0  # the learning rate the last step used

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def build_trainer(
    model: torch.nn.Module, train_cfg: TrainConfig, device: torch.device, world_size: int, *,
    total_steps: int, text_len: int,
) -> Trainer:
    """Parallelize ``model`` (compile, checkpointing, FSDP2), then build the optimizer over the
    sharded trainable parameters, the schedule over ``total_steps`` and the loss scaler."""
    collectives.use_device(device)
    tokens_per_frame = lm_tokens_per_frame(model, text_len)
    parallelize(model, train_cfg, device, world_size)
    optimizer = build_optimizer((p for p in model.parameters() if p.requires_grad), train_cfg, device)
    scheduler = build_scheduler(
        optimizer, lr=train_cfg.lr, min_lr=train_cfg.min_lr, warmup_steps=train_cfg.warmup_steps,
        total_steps=total_steps,
    )
    return Trainer(
        train_cfg=train_cfg, device=device, world_size=world_size, model=model, optimizer=optimizer,
        scheduler=scheduler, scaler=build_grad_scaler(train_cfg, device), tokens_per_frame=tokens_per_frame,
        timer=StepTimer(device),
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward_loss(model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    batch = same_batch_in_group(model, batch)  # tensor parallelism: one batch per group
    output = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch.get("state"), batch["actions"])
    return model.loss(output, batch["actions"], batch["action_mask"])


def forward_backward(trainer: Trainer, batch: Batch) -> None:
    """One micro-batch: forward, loss scaled for accumulation (and fp16), backward; metrics kept on device."""
    batch = to_device(batch, trainer.device)
    metrics = forward_loss(trainer.model, batch)
    trainer.scaler.scale(metrics["loss"] / trainer.train_cfg.grad_accum_steps).backward()
    trainer.micro_metrics.add(metrics)
    b, t = batch["images"].shape[:2]
    trainer.state.samples_seen += b * trainer.world_size
    trainer.timer.computed(b * trainer.world_size, b * t * trainer.tokens_per_frame * trainer.world_size)


def optimizer_step(trainer: Trainer) -> None:
    """Unscale (fp16), clip, step the optimizer and the schedule; the gradient norm stays on device."""
    trainer.scaler.unscale_(trainer.optimizer)
    grad_norm = clip_grad_norm(trainer.params, trainer.train_cfg.grad_clip or math.inf)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    trainer.lr = trainer.scheduler.get_last_lr()[0]  # the rate this step uses
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scheduler.step()
    trainer.step_metrics.add({"grad_norm": grad_norm})


def train_step(trainer: Trainer, batches: Iterator[Batch]) -> bool:
    """One optimizer step over ``grad_accum_steps`` micro-batches; False if the data ran out first.

    Gradients are reduced across ranks only on the last micro-batch of the step.
    """
    accum = trainer.train_cfg.grad_accum_steps
    for micro in range(accum):
        batch = trainer.timer.next_batch(batches)
        if batch is None:
            trainer.optimizer.zero_grad(set_to_none=True)
            return False
        trainer.model.set_requires_gradient_sync(micro == accum - 1)
        forward_backward(trainer, batch)
    optimizer_step(trainer)
    trainer.state.step += 1
    trainer.timer.step_done()
    return True
