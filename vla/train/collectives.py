"""Every collective a training worker issues, on the trainer's device.

Ray Train gives GPU workers the NCCL backend, which reduces and broadcasts CUDA tensors only
and serializes object collectives (``all_gather_object``, ``broadcast_object_list``) through
the *current* CUDA device. ``use_device`` (``build_trainer`` calls it with the trainer's
device) records that device and makes it current; each function below moves its tensor there
first and makes it current again before an object collective. CPU workers (gloo) take the same
path with the CPU as the device. Outside a process group every function acts as world size 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

_device = torch.device("cpu")


def use_device(device: torch.device) -> None:
    """Issue this process's collectives on ``device``; a CUDA device becomes the current one."""
    global _device
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    _device = device
    _make_current()


def device() -> torch.device:
    return _device


def _make_current() -> None:
    if _device.type == "cuda":
        torch.cuda.set_device(_device)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over every rank, on the trainer's device."""
    tensor = tensor.to(_device)
    if _active():
        dist.all_reduce(tensor)
    return tensor


def broadcast(tensor: torch.Tensor, src: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` (same shape and dtype on every rank), on the trainer's device."""
    tensor = tensor.to(_device)
    if _active():
        dist.broadcast(tensor, src=src, group=group)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not _active():
        return [obj]
    _make_current()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank."""
    if not _active():
        return obj
    _make_current()
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (on the trainer's GPU under NCCL)."""
    if not _active():
        return
    _make_current()
    dist.barrier(device_ids=[_device.index] if _device.type == "cuda" else None)
