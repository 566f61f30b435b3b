"""Tensor parallelism over 4 CPU ranks (gloo): 2 data-parallel groups x 2 tensor-parallel ranks.

The parallelized model must compute what the plain model computes, and its sharded
checkpoints must load into a model without tensor parallelism and back (DCP reshards).
On the same ranks, HSDP (2 x 2) must compute FSDP's gradients for the same global batch.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from procs import free_port
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from vla.model import ModelConfig, build_model
from vla.model.backbones import tiny_config
from vla.model.tokenizer import build_tiny_tokenizer
from vla.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from vla.train.config import TrainConfig
from vla.train.parallelize import parallelize
from vla.train.schedule import build_scheduler
from vla.train.tensor_parallel import check_divisible, clip_grad_norm, same_batch_in_group
from vla.typed_config import ConfigError

WORLD = 4
TP = 2
MAX_NORM = 0.05
INSTRUCTIONS = ["pick up the red block", "open the drawer", "stack the blocks", "push it left"]


def model_config(backbone: str) -> ModelConfig:
    return ModelConfig(backbone=backbone, tiny_hidden_size=32, tiny_num_layers=1, window_size=2,
                       head_hidden_size=32, num_views=1, image_size=32)


def hf_config(backbone: str):
    """The family's tiny config with heads the tensor-parallel size divides (Gemma's has 1 KV head)."""
    hf = tiny_config(model_config(backbone), build_tiny_tokenizer())
    hf.text_config.num_key_value_heads = TP
    return hf


def make_model(backbone: str, seed: int):
    torch.manual_seed(seed)
    return build_model(model_config(backbone), build_tiny_tokenizer(), hf_config(backbone))


def make_batch(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = build_tiny_tokenizer()([INSTRUCTIONS[seed % 4], INSTRUCTIONS[(seed + 1) % 4]], padding=True,
                                  add_special_tokens=False, return_tensors="pt")
    n, t = 2, cfg.window_size
    return {
        "images": torch.randint(0, 256, (n, t, 1, 3, 32, 32), dtype=torch.uint8, generator=g),
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "actions": torch.rand(n, t, cfg.fwd_pred_next_n, 7, generator=g) * 2 - 1,
        "action_mask": torch.ones(n, t, cfg.fwd_pred_next_n),
    }


def loss_and_output(model, batch):
    output = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    return model.loss(output, batch["actions"], batch["action_mask"])["loss"], output


def parallel(model, tp_size: int):
    parallelize(model, TrainConfig(num_workers=WORLD, tensor_parallel_size=tp_size), torch.device("cpu"), WORLD)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    return optimizer, build_scheduler(optimizer, lr=1e-2, min_lr=0.0, warmup_steps=0, total_steps=10)


def full_state(model) -> dict[str, torch.Tensor]:
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def check_family(backbone: str, rank: int, shared_dir: Path) -> None:
    cfg = model_config(backbone)
    reference = make_model(backbone, seed=0)
    leader = rank - rank % TP  # the first rank of this rank's tensor-parallel group
    batches = {r: make_batch(cfg, seed=r) for r in range(0, WORLD, TP)}
    expected_grads: dict[str, torch.Tensor] = {}
    for r, batch in batches.items():  # FSDP averages over the data-parallel groups
        reference.zero_grad()
        loss, _ = loss_and_output(reference, batch)
        loss.backward()
        for name, p in reference.named_parameters():
            if p.grad is not None:
                expected_grads[name] = expected_grads.get(name, 0) + p.grad / len(batches)
    expected_loss, expected_output = loss_and_output(reference, batches[leader])

    model = make_model(backbone, seed=0)
    optimizer, scheduler = parallel(model, TP)
    batch = same_batch_in_group(model, make_batch(cfg, seed=rank))  # every rank reads its own shard
    loss, output = loss_and_output(model, batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.continuous, expected_output.continuous, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.gripper_logits, expected_output.gripper_logits, rtol=1e-5, atol=1e-6)
    loss.backward()
    for name, p in model.named_parameters():
        if name in expected_grads:
            torch.testing.assert_close(p.grad.full_tensor(), expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        else:
            assert p.grad is None, name
    # Clipping by the global gradient norm, over parameters on two meshes (as the loop clips).
    norm = clip_grad_norm([p for p in model.parameters() if p.requires_grad], MAX_NORM)
    expected_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in expected_grads.values()]))
    torch.testing.assert_close(norm, expected_norm)
    scale = min(1.0, MAX_NORM / (float(expected_norm) + 1e-6))
    for name, p in model.named_parameters():
        if name in expected_grads:
            torch.testing.assert_close(p.grad.full_tensor(), expected_grads[name] * scale, rtol=1e-4, atol=1e-7)
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()

    # TP -> no TP: the same weights; one more identical step keeps them equal (optimizer state too).
    tp_dir, fsdp_dir = shared_dir / f"{backbone}-tp", shared_dir / f"{backbone}-fsdp"
    save_checkpoint(tp_dir, model, optimizer, scheduler, TrainState(step=1))
    plain = make_model(backbone, seed=1)
    plain_optimizer, plain_scheduler = parallel(plain, 1)
    assert load_checkpoint(tp_dir, plain, plain_optimizer, plain_scheduler).step == 1
    assert_states_equal(full_state(plain), full_state(model))
    for m, opt in ((model, optimizer), (plain, plain_optimizer)):
        loss_and_output(m, same_batch_in_group(m, make_batch(cfg, seed=leader)))[0].backward()
        opt.step()
    torch.testing.assert_close(full_state(plain), full_state(model), rtol=1e-4, atol=1e-5)  # Adam, lr 1e-2

    # no TP -> TP
    save_checkpoint(fsdp_dir, plain, plain_optimizer, plain_scheduler, TrainState(step=2))
    split = make_model(backbone, seed=2)
    split_optimizer, split_scheduler = parallel(split, TP)
    load_checkpoint(fsdp_dir, split, split_optimizer, split_scheduler)
    assert_states_equal(full_state(split), full_state(plain))


def check_hsdp_equals_fsdp(rank: int) -> None:
    """HSDP (2 replicas x 2 shards) takes the step FSDP over 4 ranks takes on the same global batch."""
    cfg = model_config("llava")
    grads = []
    for hsdp in (1, 2):
        model = make_model("llava", seed=0)
        parallelize(model, TrainConfig(num_workers=WORLD, hsdp_replicas=hsdp), torch.device("cpu"), WORLD)
        loss_and_output(model, make_batch(cfg, seed=rank))[0].backward()
        grads.append({n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def worker(rank: int, port: int, shared_dir: str, families: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")  # as in training
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for backbone in families:
            check_family(backbone, rank, Path(shared_dir))
            dist.barrier()
        check_hsdp_equals_fsdp(rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tensor_parallel_equals_the_plain_model_and_checkpoints_cross_over():
    with tempfile.TemporaryDirectory() as shared:
        mp.spawn(worker, args=(free_port(), shared, ["paligemma", "qwen2vl", "llava", "qwen2_5_vl", "smolvlm2", "paligemma2"]), nprocs=WORLD, join=True)


@pytest.mark.parametrize(
    ("backbone", "error"),
    [
        ("paligemma", r"train.tensor_parallel_size 2: must divide the paligemma LM's num_key_value_heads \(1\)"),
        ("kosmos2", r"train.tensor_parallel_size 2: model.backbone kosmos2 has no tensor-parallel plan"),
    ],
)
def test_tensor_parallel_refuses_what_it_cannot_split(backbone, error):
    model = build_model(model_config(backbone), build_tiny_tokenizer())
    with pytest.raises(ConfigError, match=error):
        check_divisible(model, TP)


def test_tensor_parallel_size_must_fit_the_workers():
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        TrainConfig(num_workers=4, hsdp_replicas=2, tensor_parallel_size=4).validate()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_training_run_with_tensor_parallelism(ray_session, tiny_run, tmp_path):
    """The whole loop on 4 Ray workers, 2 x 2: steps, clipping, checkpoint, resume and export."""
    from vla.config import load_config
    from vla.model import load_export
    from vla.train.launch import run_training

    overrides = [*tiny_run(tmp_path, "tp"), "model.backbone=qwen2vl", "train.num_workers=4",
                 "train.tensor_parallel_size=2", "train.max_steps=3", "train.checkpoint_every=1",
                 "train.inject_failure_at_step=2", "train.max_failures=1"]
    result = run_training(load_config(None, overrides))
    assert result.metrics["step"] == 3
    exported, _ = load_export(result.export_dir)  # a plain full state dict
    assert all(not hasattr(p, "device_mesh") for p in exported.parameters())
