"""The optimizer (AdamW over the sharded parameters) and its learning-rate schedule: linear
warmup, then cosine decay to a minimum learning rate."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from vla.train.config import TrainConfig

# How each ``train.optimizer`` choice runs AdamW's update (all give the same result).
ADAMW_IMPLEMENTATIONS = {
    "adamw_fused": {"fused": True},  # one kernel over all parameters (CUDA; CPU too in torch >= 2.4)
    "adamw_foreach": {"foreach": True},  # multi-tensor ops, a few kernels per parameter group
    "adamw": {"foreach": False},  # one parameter at a time
}


def optimizer_choice(train_cfg: TrainConfig, device: torch.device) -> str:
    """``train.optimizer``, with auto resolved: fused on CUDA, foreach elsewhere."""
    if train_cfg.optimizer != "auto":
        return train_cfg.optimizer
    return "adamw_fused" if device.type == "cuda" else "adamw_foreach"


def build_optimizer(
    params: Iterable[torch.nn.Parameter], train_cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """The run's AdamW over ``params`` (build it after ``parallelize``, over the sharded parameters)."""
    return torch.optim.AdamW(
        list(params),
        lr=train_cfg.lr,
        betas=train_cfg.betas,
        weight_decay=train_cfg.weight_decay,
        **ADAMW_IMPLEMENTATIONS[optimizer_choice(train_cfg, device)],
    )


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``lr_factor``; its state dict goes into every checkpoint."""
    min_ratio = min_lr / lr

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
