"""Every family: forward shapes, backward reaching every trainable parameter, structure for FSDP."""

from __future__ import annotations

import torch

from vla.model import count_parameters


def test_forward_backward_reaches_every_trainable_parameter(make_model, make_batch, family):
    model = make_model(**family)
    batch = make_batch(model.config)
    out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    assert out.continuous.shape == (3, 3, 2, 6)
    assert out.gripper_logits.shape == (3, 3, 2, 1)
    assert out.continuous.abs().max() <= 1.0
    # Not views: FSDP2 warns on a wrapped module returning one (an in-place change skips its hook).
    assert not out.continuous._is_view() and not out.gripper_logits._is_view()
    metrics = model.loss(out, batch["actions"], batch["action_mask"])
    assert set(metrics) == {"loss", "loss_arm", "loss_gripper", "pose_error", "gripper_accuracy"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())
    metrics["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_structure_for_parallelism_and_freezing(make_model, family):
    model = make_model(**family)
    backbone = model.backbone
    assert len(backbone.decoder_blocks()) == 2 and len(backbone.vision_blocks()) == 2
    assert backbone.hidden_size == 32 and model.image_size == 32
    with torch.no_grad():  # the token count read off the config is the tower's (LLaVA-SigLIP keeps every patch)
        assert backbone.vision_tokens(32) == backbone.encode_images(torch.zeros(1, 3, 32, 32)).shape[1]
    # Every backbone parameter sits in exactly one freeze group (text embeddings inside the LM count once).
    groups = backbone.module_groups()
    ids = {name: {id(p) for m in modules for p in m.parameters()} for name, modules in groups.items()}
    ids["language_model"] -= ids["text_embedding"]
    unused = {id(p) for m in backbone.unused_modules() for p in m.parameters()}
    everything = {id(p) for p in backbone.parameters()}
    assert ids["vision"] | ids["text_embedding"] | ids["language_model"] | unused == everything
    assert not ids["vision"] & ids["language_model"] and not ids["vision"] & ids["text_embedding"]
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total == sum(p.numel() for p in model.parameters())


def test_head_choice_and_latent_tokens(make_model, make_batch):
    model = make_model(head="mlp", latent_num=2)
    batch = make_batch(model.config)
    features = model.action_features(batch["images"], batch["input_ids"], batch["attention_mask"])
    assert features.shape == (3, 3, 2, 32)
    # The MLP head has no history: a frame's output does not depend on the frames before it.
    out_all = model.head(features)
    out_last = model.head(features[:, -1:])
    torch.testing.assert_close(out_all.continuous[:, -1:], out_last.continuous)


def test_images_of_another_size_are_resized(make_model, make_batch, tiny_config):
    model = make_model().eval()
    cfg = tiny_config(image_size=48)
    batch = make_batch(cfg, batch=1)
    out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    assert out.continuous.shape == (1, 3, 2, 6)
