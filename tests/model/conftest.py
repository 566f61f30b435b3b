"""Tiny models and batches shared by the model tests."""

from __future__ import annotations

import pytest
import torch

from vla.model import ModelConfig, build_model
from vla.model.tokenizer import build_tiny_tokenizer

# Every supported family; LLaVA once with each tower. A test taking ``family`` runs for each.
FAMILIES = [
    pytest.param({"backbone": "paligemma"}, id="paligemma"),
    pytest.param({"backbone": "kosmos2"}, id="kosmos2"),
    pytest.param({"backbone": "llava", "tiny_vision_tower": "clip"}, id="llava-clip"),
    pytest.param({"backbone": "llava", "tiny_vision_tower": "siglip"}, id="llava-siglip"),
    pytest.param({"backbone": "qwen2vl"}, id="qwen2vl"),
    pytest.param({"backbone": "qwen2_5_vl"}, id="qwen2_5_vl"),
    pytest.param({"backbone": "smolvlm2"}, id="smolvlm2"),
    pytest.param({"backbone": "paligemma2"}, id="paligemma2"),
]

INSTRUCTIONS = ["pick up the red block", "open the drawer", "lift the pink block from the table and stack it"]


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(params=FAMILIES)
def family(request) -> dict:
    return request.param


def _tiny_config(**overrides) -> ModelConfig:
    """A small config: 32 px images, 2 views, window 3, 2 future steps, a 32-wide head."""
    base = dict(
        tiny_hidden_size=32, window_size=3, fwd_pred_next_n=2, head_hidden_size=32, num_views=2, image_size=32
    )
    return ModelConfig(**(base | overrides))


def _make_batch(tokenizer, cfg: ModelConfig, batch: int = 3, frames: int | None = None, seed: int = 0) -> dict:
    """A batch as vla.data yields it: right-padded instructions of different lengths, uint8 images."""
    g = torch.Generator().manual_seed(seed)
    t = frames or cfg.window_size
    n = cfg.fwd_pred_next_n
    text = tokenizer([INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch)], padding=True,
                     add_special_tokens=False, return_tensors="pt")
    actions = torch.rand(batch, t, n, cfg.action_dim, generator=g) * 2 - 1
    grippers = cfg.binary_grippers
    actions[..., grippers] = torch.where(actions[..., grippers] > 0, 1.0, -1.0)
    mask = torch.ones(batch, t, n)
    mask[0, -1, -1] = 0.0  # one step past an episode's end
    state = {"state": torch.randn(batch, t, cfg.state_dim, generator=g)} if cfg.state_dim else {}
    return {
        **state,
        "images": torch.randint(0, 256, (batch, t, cfg.num_views, 3, cfg.image_size, cfg.image_size),
                                dtype=torch.uint8, generator=g),
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "actions": actions,
        "action_mask": mask,
    }


@pytest.fixture
def tiny_config():
    """``tiny_config(**overrides) -> ModelConfig``."""
    return _tiny_config


@pytest.fixture
def make_model(tokenizer):
    """``make_model(**config_overrides) -> VLAModel``, seeded."""

    def make(**overrides):
        torch.manual_seed(0)
        return build_model(_tiny_config(**overrides), tokenizer)

    return make


@pytest.fixture
def make_batch(tokenizer):
    """``make_batch(cfg, batch=3, frames=None, seed=0) -> dict`` of batch tensors."""

    def make(cfg: ModelConfig, **kwargs) -> dict:
        return _make_batch(tokenizer, cfg, **kwargs)

    return make
