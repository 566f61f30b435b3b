"""The training step itself, on real FSDP2 over 2 gloo CPU processes (no Ray): gradient
accumulation, activation checkpointing, fp16/bf16, HSDP, sharded validation and the
cross-rank metric means. Each test spawns its processes once and checks several things."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import FSDPModule

from vla.config import Config
from vla.model import build_model
from vla.model.config import ModelConfig
from vla.train.config import TrainConfig
from vla.train.loop import validate
from vla.train.schedule import build_scheduler
from vla.train.step import Trainer, build_trainer, forward_loss, train_step

WORLD = 2
TINY = ModelConfig(
    tiny_hidden_size=32, tiny_num_layers=1, image_size=16, window_size=2, head_hidden_size=32, head_num_layers=1
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn, port: int, world: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int = WORLD) -> None:
    """Run ``fn(rank)`` in ``world`` gloo processes; a rank's exception fails the test with its traceback."""
    mp.spawn(_worker, args=(fn, free_port(), world), nprocs=world, join=True)


def make_batch(seed: int, size: int, cfg: ModelConfig = TINY) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, v, px = cfg.window_size, cfg.num_views, cfg.image_size
    actions = torch.rand(size, t, 1, 7, generator=g) * 2 - 1
    actions[..., 6] = actions[..., 6].sign()
    ids = torch.randint(3, 100, (size, 8), generator=g)
    return {
        "images": torch.randint(0, 256, (size, t, v, 3, px, px), dtype=torch.uint8, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "actions": actions,
        "action_mask": torch.ones(size, t, 1),
    }


def make_trainer(train: TrainConfig, sgd: bool = False, world: int = WORLD) -> Trainer:
    """The platform's ``Trainer`` over a seeded tiny model on the WORLD ranks.

    ``sgd`` swaps AdamW for SGD, for the exactness checks: its update is linear in the
    gradient, Adam's first update hardly depends on the gradient's scale.
    """
    torch.manual_seed(0)
    trainer = build_trainer(build_model(TINY), train, torch.device("cpu"), world, total_steps=100, text_len=8)
    if sgd:
        optimizer = torch.optim.SGD(trainer.params, lr=train.lr)
        scheduler = build_scheduler(optimizer, lr=train.lr, min_lr=0.0, warmup_steps=0, total_steps=100)
        trainer = dataclasses.replace(trainer, optimizer=optimizer, scheduler=scheduler)
    return trainer


def logged_loss(trainer: Trainer) -> float:
    """The loss a log line shows: the mean over micro-batches and ranks since the last read."""
    return trainer.micro_metrics.mean_over_ranks()["loss"]


def compute_dtype(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype of the first LM block's weights while a forward runs (FSDP's mixed precision)."""
    linear = next(m for m in model.backbone.decoder_blocks()[0].modules() if isinstance(m, torch.nn.Linear))
    seen = []
    handle = linear.register_forward_pre_hook(lambda module, args: seen.append(module.weight.dtype))
    with torch.no_grad():
        forward_loss(model, batch)
    handle.remove()
    return seen[0]


def full_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.full_tensor().clone() for name, p in model.named_parameters() if p.grad is not None}


# --- gradient accumulation and the logged means ---------------------------------------------


def _accumulation(rank: int) -> None:
    # Each rank holds its own 4 windows: one step over them whole, or as 2 micro-batches of 2.
    batch = make_batch(seed=rank, size=4)
    halves = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]
    whole = make_trainer(TrainConfig(lr=0.5, grad_accum_steps=1, grad_clip=0.0), sgd=True)
    accumulated = make_trainer(TrainConfig(lr=0.5, grad_accum_steps=2, grad_clip=0.0), sgd=True)
    before = full_params(whole.model)
    trainable = {name for name, p in whole.model.named_parameters() if p.requires_grad}
    assert train_step(whole, iter([batch]))
    assert train_step(accumulated, iter(halves))
    assert accumulated.state.step == whole.state.step == 1
    after_whole, after_accumulated = full_params(whole.model), full_params(accumulated.model)
    for name, value in after_whole.items():
        torch.testing.assert_close(after_accumulated[name], value, rtol=1e-4, atol=1e-6, msg=name)
    moved = {name for name in trainable if not torch.equal(after_whole[name], before[name])}
    assert len(moved) > 0.9 * len(trainable), "the step changed (almost) every trainable parameter"

    # The logged loss is the mean over the micro-batches and the ranks: the loss of all 8 windows.
    logged_whole, logged_accumulated = logged_loss(whole), logged_loss(accumulated)
    torch.testing.assert_close(logged_accumulated, logged_whole, rtol=1e-4, atol=0)
    both = {k: torch.cat([make_batch(seed=r, size=4)[k] for r in range(WORLD)]) for k in batch}
    with torch.no_grad():
        expected = float(forward_loss(whole_reference(), both)["loss"]) if rank == 0 else None
    if rank == 0:
        torch.testing.assert_close(logged_whole, expected, rtol=1e-4, atol=0)
    # The data ran out before a step's last micro-batch: no step, no partial update.
    assert not train_step(accumulated, iter(halves[:1]))
    assert accumulated.state.step == 1
    for name, value in full_params(accumulated.model).items():
        torch.testing.assert_close(value, after_accumulated[name], rtol=0, atol=0)


def whole_reference() -> torch.nn.Module:
    """The unsharded model both trainers started from (same seed)."""
    torch.manual_seed(0)
    return build_model(TINY).eval()


def test_gradient_accumulation_equals_one_big_batch_and_logs_the_mean_over_ranks():
    run_ranks(_accumulation)


# --- activation checkpointing, whole-model FSDP units, fp16 and bf16 --------------------------


def _checkpointing_and_precision(rank: int) -> None:
    batch = make_batch(seed=10 + rank, size=2)
    grads = []
    for variant in (TrainConfig(), TrainConfig(activation_checkpointing=True), TrainConfig(fsdp_unit="model")):
        trainer = make_trainer(variant)
        units = [m for m in trainer.model.modules() if isinstance(m, FSDPModule)]
        blocks = len(trainer.model.backbone.vision_blocks()) + len(trainer.model.backbone.decoder_blocks())
        assert len(units) == (2 if variant.fsdp_unit == "model" else blocks + 2)  # + the head and the root
        forward_loss(trainer.model, batch)["loss"].backward()
        grads.append(full_grads(trainer.model))
    assert grads[0].keys() == grads[1].keys() == grads[2].keys() and len(grads[0]) > 10
    vision = [name for name in grads[0] if "vision" in name]
    assert vision, "the vision tower trains, so checkpointing it is exercised"
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(grads[2][name], grad, rtol=1e-5, atol=1e-7, msg=name)

    for precision in ("bf16", "fp16"):
        trainer = make_trainer(TrainConfig(precision=precision, lr=5e-3))
        losses = []
        for _ in range(8):
            assert train_step(trainer, iter([batch]))
            losses.append(logged_loss(trainer))
        assert losses[-1] < 0.8 * losses[0], (precision, losses)
        assert compute_dtype(trainer.model, batch) == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if precision == "fp16":
            # The loss really was scaled: the scaler holds a scale far above 1 and took the steps.
            assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 1.0
        else:
            assert not trainer.scaler.is_enabled()


def test_checkpointing_and_whole_model_units_keep_gradients_and_bf16_fp16_runs_learn():
    run_ranks(_checkpointing_and_precision)


# --- HSDP and sharded validation --------------------------------------------------------------


class Batches:
    """A validation stream as ``validate`` reads it (``WindowStream.batches``), from tensors."""

    def __init__(self, items: list[dict[str, torch.Tensor]]):
        self.items = items
        self.taken = 0

    def batches(self, **_):
        for batch in self.items:
            self.taken += 1
            yield batch


def _hsdp_and_validation(rank: int) -> None:
    train_cfg = TrainConfig(hsdp_replicas=2, lr=1e-3, val_batches=4)
    trainer = make_trainer(train_cfg)
    mesh = next(trainer.model.backbone.decoder_blocks()[0].parameters()).device_mesh
    assert mesh.mesh_dim_names == ("replicate", "shard") and tuple(mesh.shape) == (2, 1)
    batch = make_batch(seed=20 + rank, size=2)
    losses = []
    for _ in range(6):
        assert train_step(trainer, iter([batch]))
        losses.append(logged_loss(trainer))
    assert losses[-1] < losses[0], losses
    # Replicas stay identical: every rank holds the same full weights.
    params = torch.cat([p.to_local().detach().flatten() for p in trainer.model.parameters()])
    gathered = [torch.empty_like(params) for _ in range(WORLD)]
    dist.all_gather(gathered, params)
    torch.testing.assert_close(gathered[0], gathered[1], rtol=0, atol=0)

    # Validation: each rank evaluates 2 of the 4 batches of its own shard; the result is the
    # mean over every predicted step of all 4 (2 per rank), as offline evaluation defines it (a
    # batch whose episode ended early weighs its steps, not 1), the same on every rank.
    shard = Batches([make_batch(seed=100 + 10 * rank + i, size=2) for i in range(3)])
    shard.items[1]["action_mask"][:, 1:] = 0  # the last frame's target lies past the episode's end
    metrics = validate(trainer, shard, Config(model=TINY, train=train_cfg))
    assert shard.taken == 2
    with torch.no_grad():
        steps = torch.stack([b["action_mask"].sum() for b in shard.items[:2]])
        losses = torch.stack([forward_loss(trainer.model.eval(), b)["loss"] for b in shard.items[:2]])
    totals = torch.stack([(losses * steps).sum(), steps.sum()])
    dist.all_reduce(totals)
    torch.testing.assert_close(metrics["val_loss"], float(totals[0] / totals[1]), rtol=1e-5, atol=0)
    both = [torch.empty(()) for _ in range(WORLD)]
    dist.all_gather(both, torch.tensor(metrics["val_loss"]))
    assert float(both[0]) == float(both[1])


def test_hsdp_2x1_trains_and_validation_is_split_between_ranks():
    run_ranks(_hsdp_and_validation)


def test_config_rejects_unknown_precision_optimizer_and_compile():
    from vla.config import load_config
    from vla.typed_config import ConfigError

    for override in ("train.precision=fp8", "train.optimizer=sgd", "train.compile=maybe", "train.fsdp_unit=layer"):
        with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="fsdp_unit: model gathers every block at once"):
        load_config(None, ["train.fsdp_unit=model", "train.tensor_parallel_size=2"])
    cfg = load_config(None, ["train.compile=off", "train.precision=fp16", "train.optimizer=adamw_fused"])
    assert cfg.train.compile is False and dataclasses.asdict(cfg.train)["precision"] == "fp16"


# --- torch.compile per block, before sharding ---------------------------------------------------


def _compiled(rank: int) -> None:
    from torch._dynamo.utils import counters

    batch = make_batch(seed=30, size=2)
    losses = {}
    for compiled in (False, True):
        trainer = make_trainer(TrainConfig(compile=compiled, activation_checkpointing=True), world=1)
        losses[compiled] = []
        for _ in range(3):
            assert train_step(trainer, iter([batch]))
            losses[compiled].append(logged_loss(trainer))
    # One graph per kind of block (the vision block and the LM block), no graph breaks: the
    # blocks really compiled, which they do not when compiled after fully_shard.
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"], dict(counters["stats"])
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-4, atol=0)


@pytest.mark.timeout(400)
def test_blocks_compiled_before_sharding_train_like_eager():
    """One process (compiling costs ~40 s of CPU); train.compile=true on CPU, as auto does on CUDA."""
    run_ranks(_compiled, world=1)
