"""Tensor parallelism of the LM decoder blocks (``train.tensor_parallel_size``), as torchtitan does for Llama.

Each decoder block's attention and MLP input projections are split column-wise across the
``tp`` ranks (each rank holds ``heads / tp`` heads and ``intermediate / tp`` MLP channels),
the output projections row-wise (their partial sums all-reduced), so a block's input and
output stay whole on every rank. The family adapter says which submodule is which
(``Backbone.tensor_parallel_plan()``); families without one cannot use tensor parallelism.
FSDP then shards over the data-parallel dimension of the mesh (``vla.train.parallelize``).

Every rank of a tensor-parallel group must compute on the same batch: ``same_batch_in_group``
hands the group's first rank's batch to the others (their own shard is read and dropped).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from vla.train import collectives
from vla.typed_config import ConfigError

STYLES: dict[str, type[ParallelStyle]] = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
TP_DIM = "tp"


def check_divisible(model: nn.Module, tp_size: int) -> None:
    """Heads and MLP channels split evenly over ``tp_size`` ranks, else a one-line error."""
    backbone = model.backbone
    if backbone.tensor_parallel_plan() is None:
        raise ConfigError(
            f"train.tensor_parallel_size {tp_size}: model.backbone {backbone.family} has no tensor-parallel plan"
        )
    text = backbone.text_config
    for field in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(text, field)
        if value % tp_size:
            raise ConfigError(
                f"train.tensor_parallel_size {tp_size}: must divide the {backbone.family} LM's {field} ({value})"
            )


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Split every LM decoder block of ``model`` over ``tp_mesh`` (before FSDP wraps it)."""
    check_divisible(model, tp_mesh.size())
    plan = {name: STYLES[style]() for name, style in model.backbone.tensor_parallel_plan().items()}
    for block in model.backbone.decoder_blocks():
        parallelize_module(block, tp_mesh, plan)
    model.tp_mesh = tp_mesh


def same_batch_in_group(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` as the first rank of this rank's tensor-parallel group has it (``batch`` without TP)."""
    mesh: DeviceMesh | None = getattr(model, "tp_mesh", None)
    if mesh is None:
        return batch
    group = mesh.get_group()
    source = dist.get_global_rank(group, 0)
    shared = {}
    for key in sorted(batch):
        tensor = batch[key].contiguous()
        shape = collectives.broadcast(torch.tensor(tensor.shape, dtype=torch.int64), src=source, group=group)
        if dist.get_rank() != source:
            tensor = torch.empty(tuple(shape.tolist()), dtype=tensor.dtype, device=collectives.device())
        shared[key] = collectives.broadcast(tensor, src=source, group=group)
    return shared


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for parameters on several meshes; returns the total norm.

    With tensor parallelism the decoder blocks' gradients live on the 2-D mesh and the rest on
    its data-parallel part, which torch's version cannot stack: norm each mesh's gradients
    apart, then combine the (plain) norms.
    """
    by_mesh: dict[DeviceMesh | None, list[nn.Parameter]] = {}
    for param in parameters:
        if param.grad is not None:
            by_mesh.setdefault(getattr(param.grad, "device_mesh", None), []).append(param)
    norms = []
    for params in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.nn.utils.get_total_norm(norms)
    for params in by_mesh.values():
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The dimensions of ``mesh`` FSDP shards (and HSDP replicates) over: all but ``tp``."""
    names = mesh.mesh_dim_names or ()
    if TP_DIM not in names:
        return mesh
    rest = tuple(name for name in names if name != TP_DIM)
    return mesh[rest if len(rest) > 1 else rest[0]]
