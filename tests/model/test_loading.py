"""Memory-lean loading: each of 2 FSDP ranks reads exactly its rows of every backbone weight from the folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from published import FAMILIES, build_published_folder
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from vla.model import ModelConfig, build_model, build_sharded_model, pretrained_loader
from vla.train.config import TrainConfig
from vla.train.parallelize import weights_dtype_for
from vla.train.step import build_trainer
from vla.typed_config import ConfigError

WORLD = 2


def model_config(family: str, folder: str, **options) -> ModelConfig:
    return ModelConfig(backbone=family, pretrained_path=folder, image_size=56, num_views=1, window_size=2,
                       head_hidden_size=32, head_num_layers=1, **options)


def local_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, slice]:
    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return tensor.to_local(), slice(offset[0], offset[0] + shape[0])


def check_rank(rank: int, store: str, folders: dict[str, str]) -> None:
    """What a training worker does (vla.train.loop.build_run), then checks this rank's shards."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    cpu = torch.device("cpu")
    train_cfg = TrainConfig(precision="bf16", weights="bf16")  # the memory-lean mode
    dtype = weights_dtype_for(train_cfg)
    try:
        for family, folder in folders.items():
            options = {"lora_rank": 2} if family == "llava" else {}  # adapters built on meta, initialized as peft does
            cfg = model_config(family, folder, **options)
            reference = build_model(cfg, dtype=dtype)  # transformers' own from_pretrained
            expected = {**dict(reference.named_parameters()), **dict(reference.named_buffers())}

            model = build_model(cfg, dtype=dtype, backbone_on_meta=True)
            load_pretrained = pretrained_loader(model)
            trainer = build_trainer(model, train_cfg, cpu, WORLD, total_steps=2, text_len=4)  # parallelizes
            load_pretrained(cpu)

            checked = 0
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                if "lora_B" in name:
                    assert not tensor.to_local().any(), name
                if not name.startswith("backbone.") or "lora_" in name:
                    continue
                if isinstance(tensor, DTensor):
                    local, rows = local_rows(tensor)
                    assert local.dtype == torch.bfloat16, name
                    assert torch.equal(local, expected[name][rows]), f"{family}: rank {rank} rows of {name}"
                else:  # a buffer, computed from the config (transformers may hold a scalar one in bf16)
                    assert torch.equal(tensor.to(expected[name].dtype), expected[name]), f"{family}: {name}"
                checked += 1
            assert checked > 10
            # The optimizer built before loading updates the loaded parameters.
            size = model.image_size
            images = torch.randint(0, 256, (1, 2, 1, 3, size, size), dtype=torch.uint8)
            out = model(images, torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]]))
            out.continuous.float().sum().backward()
            before = model.action_token.full_tensor().clone()
            trainer.optimizer.step()
            assert not torch.equal(model.action_token.full_tensor(), before)
            assert trainer.tokens_per_frame > size // 28
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(400)
def test_each_rank_loads_its_rows_of_every_family_in_the_training_dtype(tmp_path):
    folders = {family: str(build_published_folder(family, tmp_path / family)) for family in FAMILIES}
    mp.spawn(check_rank, args=(str(tmp_path / "store"), folders), nprocs=WORLD, join=True)


def test_a_folder_without_weights_is_a_config_error(tmp_path):
    folder = build_published_folder("kosmos2", tmp_path / "kosmos2")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="kosmos2 has no model.safetensors or model.safetensors.index.json"):
        build_sharded_model(model_config("kosmos2", str(folder)), lambda m: None, torch.device("cpu"), torch.float32)


def test_a_config_that_contradicts_the_weights_is_a_config_error(tmp_path):
    folder = build_published_folder("qwen2vl", tmp_path / "qwen2vl")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 48  # the saved MLP weights are 64 wide
    (folder / "config.json").write_text(json.dumps(config))
    expected = r"gate_proj.weight of shape \[64, 32\], but .*qwen2vl/config.json makes it \[48, 32\]"
    with pytest.raises(ConfigError, match=expected):
        build_sharded_model(model_config("qwen2vl", str(folder)), lambda m: None, torch.device("cpu"), torch.float32)
