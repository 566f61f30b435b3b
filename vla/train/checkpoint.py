"""Sharded checkpoints with torch.distributed.checkpoint (DCP), reported to Ray Train.

Layout of one checkpoint folder (Ray merges every rank's folder into it):
    .metadata, __<rank>_0.distcp    model + optimizer shards (DCP)
    rng_rank<r>.pt                  each rank's RNG states
    train_state.json                step, epoch, data position, scheduler; written last, by rank 0

``train_state.json`` is the completeness marker: a folder without it was not completely
written and is refused, so a partial checkpoint is never resumed from.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

TRAIN_STATE_FILE = "train_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or does not match the run."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch
    samples_seen: int = 0  # windows seen by all ranks together


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


@torch.no_grad()
def state_fingerprint(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """A sum over every parameter and optimizer-state element (all ranks): equal states, equal sums.

    Logged at each save and each resume so a resumed run can be checked to continue from
    exactly the state that was saved.
    """
    total = torch.zeros((), dtype=torch.float64)
    for param in model.parameters():
        total += _local(param).detach().double().abs().sum().cpu()
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += _local(value).double().abs().sum().cpu()
    dist.all_reduce(total)
    return float(total)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
) -> None:
    """Every rank calls this with its own empty ``directory``; rank 0 gets the metadata."""
    rank = dist.get_rank()
    sharded = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    dcp.save(sharded, checkpoint_id=str(directory))
    torch.save(_rng_state(), directory / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        record = {"train_state": asdict(state), "scheduler": scheduler.state_dict(), "world_size": dist.get_world_size()}
        (directory / TRAIN_STATE_FILE).write_text(json.dumps(record, indent=1))


def read_train_state(directory: Path) -> dict:
    """The ``train_state.json`` record of a complete checkpoint; ``CheckpointError`` otherwise."""
    marker = directory / TRAIN_STATE_FILE
    if not (directory / ".metadata").is_file() or not marker.is_file():
        raise CheckpointError(
            f"checkpoint {directory} is incomplete (no .metadata or {TRAIN_STATE_FILE}): "
            "it was not completely written and will not be resumed from"
        )
    return json.loads(marker.read_text())


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Restore model, optimizer, scheduler and RNG in place (any world size); return the train state."""
    record = read_train_state(directory)
    sharded = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    dcp.load(sharded, checkpoint_id=str(directory))
    set_model_state_dict(model, sharded["model"])
    set_optimizer_state_dict(model, optimizer, sharded["optimizer"])
    scheduler.load_state_dict(record["scheduler"])
    rng_file = directory / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**record["train_state"])
