"""Apply tensor parallelism, activation checkpointing, torch.compile and FSDP2 (torchtitan's order).

The model knows nothing of parallelism; this is the one place that does:
0. tensor parallelism of each LM decoder block over the mesh's ``tp`` dimension (optional,
   ``vla.train.tensor_parallel``),
1. activation checkpointing on each vision and LM block (optional),
2. ``torch.compile`` on each of those blocks (optional; before sharding, or nothing compiles),
3. ``fully_shard`` on every vision block and decoder block (``train.fsdp_unit`` block),
4. ``fully_shard`` on the policy head with an fp32 policy (an LSTM in bf16 fails on fp32 inputs),
5. ``fully_shard`` on the root for what is left (embeddings, projector, action token; with
   ``train.fsdp_unit`` model also the blocks: one all-gather and one reduce-scatter per step
   for all of them, kept gathered from forward to backward).
Build the optimizer after this, over the sharded parameters (``vla.train.schedule``).

Every module sharded here returns a tensor or a NamedTuple (``ActionOutput``): FSDP2 registers
its pre-backward hooks on the tensors it finds in the output pytree, and before torch 2.13 it
finds none inside a dataclass.

Imports neither Ray nor ``vla.data``: the GPU benchmark runs it where Ray is not installed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from vla.train.config import TrainConfig
from vla.train.tensor_parallel import TP_DIM, apply_tensor_parallel, data_parallel_mesh

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def param_dtype_for(train_cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """bf16 compute on GPU, fp32 on CPU, unless the config says otherwise."""
    if train_cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return PRECISIONS[train_cfg.precision]


def weights_dtype_for(train_cfg: TrainConfig) -> torch.dtype:
    """The dtype of the sharded weights the optimizer updates (``train.weights``)."""
    return PRECISIONS[train_cfg.weights]


def compile_enabled(train_cfg: TrainConfig, device: torch.device) -> bool:
    """``train.compile``, with auto resolved: on for CUDA, off on CPU."""
    return device.type == "cuda" if train_cfg.compile == "auto" else bool(train_cfg.compile)


def build_grad_scaler(train_cfg: TrainConfig, device: torch.device) -> ShardedGradScaler:
    """Loss scaling for fp16 (a pass-through otherwise).

    The sharded scaler unscales each rank's gradient shards and all-reduces the inf/NaN flag,
    so every rank skips (or takes) the same steps.
    """
    fp16 = param_dtype_for(train_cfg, device) == torch.float16
    return ShardedGradScaler(device=device.type, enabled=fp16)


def build_mesh(train_cfg: TrainConfig, device: torch.device, world_size: int) -> DeviceMesh:
    """1-D mesh for FSDP; 2-D (replicate x shard) for HSDP across ``hsdp_replicas`` groups.

    With ``tensor_parallel_size`` > 1 a last ``tp`` dimension (neighbouring ranks) is added.
    """
    tp = train_cfg.tensor_parallel_size
    shape, names = (world_size // tp,), ("shard",)
    if train_cfg.hsdp_replicas > 1:
        shape = (train_cfg.hsdp_replicas, world_size // tp // train_cfg.hsdp_replicas)
        names = ("replicate", "shard")
    if tp > 1:
        shape, names = (*shape, tp), (*names, TP_DIM)
    return init_device_mesh(device.type, shape, mesh_dim_names=names)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The vision tower's blocks, then the LM's: the units of checkpointing, compiling and sharding."""
    return [*model.backbone.vision_blocks(), *model.backbone.decoder_blocks()]


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each vision and LM block's activations in backward instead of storing them."""
    for block in transformer_blocks(model):
        checkpoint(block)


def apply_compile(model: nn.Module) -> None:
    """Compile each block in place (``nn.Module.compile``); must come before ``fully_shard``."""
    for block in transformer_blocks(model):
        block.compile()


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype, unit: str) -> None:
    """Shard each block (``unit`` block), then the head (fp32), then the root.

    With ``unit`` model the blocks stay in the root's unit and the head keeps its gathered
    weights until backward: per step two all-gathers and two reduce-scatters in all.
    """
    mixed = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    full = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    if unit == "block":
        for block in transformer_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=mixed)
    fully_shard(model.head, mesh=mesh, mp_policy=full, reshard_after_forward=unit == "block")
    fully_shard(model, mesh=mesh, mp_policy=mixed)


def parallelize(model: nn.Module, train_cfg: TrainConfig, device: torch.device, world_size: int) -> nn.Module:
    """Tensor parallelism, activation checkpointing and compiling (as configured), then FSDP2 over
    the data-parallel ranks."""
    mesh = build_mesh(train_cfg, device, world_size)
    if train_cfg.tensor_parallel_size > 1:
        apply_tensor_parallel(model, mesh[TP_DIM])
    if train_cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile_enabled(train_cfg, device):
        apply_compile(model)
    apply_fsdp(model, data_parallel_mesh(mesh), param_dtype_for(train_cfg, device), train_cfg.fsdp_unit)
    return model


def reshard(model: nn.Module) -> None:
    """Free the unsharded parameters a no-grad forward leaves behind (FSDP2 keeps the root's).

    Call after evaluation: checkpoints and exports must see the sharded parameters.
    """
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
