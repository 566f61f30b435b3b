"""Gradients reach exactly the parts the options say: vision, text embeddings, LM (or its LoRA adapters)."""

from __future__ import annotations

import pytest
import torch

from vla.model.trainable import is_lora_parameter

OPTIONS = [
    pytest.param({}, {"vision", "text_embedding", "language_model"}, id="everything"),
    pytest.param({"freeze_backbone": True}, {"vision", "text_embedding"}, id="freeze_backbone"),
    pytest.param(
        {"freeze_backbone": True, "train_vision": False, "train_text_embedding": False}, set(), id="frozen_vlm"
    ),
    pytest.param({"train_vision": False}, {"text_embedding", "language_model"}, id="no_vision"),
    pytest.param({"train_text_embedding": False}, {"vision", "language_model"}, id="no_text_embedding"),
    pytest.param({"lora_rank": 4, "train_vision": False}, {"text_embedding", "lora"}, id="lora"),
]


def _parameter_groups(model) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    backbone = model.backbone
    named = dict(backbone.named_parameters())
    owner = {}
    for group in ("language_model", "vision", "text_embedding"):  # later groups win (embeddings sit in the LM)
        for module in backbone.module_groups()[group]:
            for p in module.parameters():
                owner[id(p)] = group
    for module in backbone.unused_modules():
        for p in module.parameters():
            owner[id(p)] = "unused"
    groups: dict[str, list] = {}
    for name, p in named.items():
        group = "lora" if is_lora_parameter(name) else owner[id(p)]
        groups.setdefault(group, []).append((name, p))
    return groups


@pytest.mark.parametrize("options,trained", OPTIONS)
def test_gradients_reach_exactly_the_trained_groups(make_model, make_batch, family, options, trained):
    model = make_model(**family, **options)
    batch = make_batch(model.config)
    out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    model.loss(out, batch["actions"], batch["action_mask"])["loss"].backward()

    groups = _parameter_groups(model)
    assert ("lora" in groups) == ("lora" in trained)
    for group, params in groups.items():
        expected = group in trained
        for name, p in params:
            assert p.requires_grad == expected, f"{group}: {name}"
            assert (p.grad is not None) == expected, f"{group}: {name}"
        if expected and group != "lora":  # LoRA's A matrices get zero gradients while B is still zero
            assert any(p.grad.abs().sum() > 0 for _, p in params), group
    # The action token and the head always train.
    assert model.action_token.grad is not None and model.action_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.head.parameters())


def test_lora_moves_only_adapters_in_the_lm(make_model, make_batch):
    model = make_model(lora_rank=4, train_vision=False, train_text_embedding=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for seed in range(2):
        batch = make_batch(model.config, seed=seed)
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        model.loss(out, batch["actions"], batch["action_mask"])["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved, "nothing trained"
    backbone_moved = {name for name in moved if name.startswith("backbone.")}
    assert backbone_moved and all(is_lora_parameter(name) for name in backbone_moved)
    lm_names = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    assert {name for name in lm_names if is_lora_parameter(name)} == backbone_moved
    assert "action_token" in moved and any(name.startswith("head.") for name in moved)
