"""The step API matches the batched forward; exports and pretrained directories load back exactly."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from vla.model import ActionStepper, build_model, load_export, save_export
from vla.model.backbones import BACKBONES
from vla.model.backbones import tiny_config as tiny_hf_config
from vla.model.export import read_normalization, read_run_config
from vla.model.heads import join_actions


def _episode(make_batch, cfg, frames: int):
    """One batch of 2 environments over ``frames`` steps (instructions of different lengths)."""
    return make_batch(cfg, batch=2, frames=frames, seed=3)


SPACES = {
    "arm": {},
    # ALOHA-like: 14 values, binary grippers at 6 and 13, the state read by the head
    "bimanual-state": {"action_dim": 14, "binary_grippers": [6, 13], "state_dim": 14},
    "state-token": {"state_dim": 5, "state_input": "token"},  # the state as one LM token before [LRN]
    "pusht": {"action_dim": 2, "binary_grippers": []},  # no gripper at all
}


# Every head; l1_chunk reads one action query token per chunk step (fwd_pred_next_n is 2 here).
HEADS = {"lstm": {}, "mlp": {}, "l1_chunk": {"latent_num": 2}, "flow": {}}


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
@pytest.mark.parametrize("head", HEADS)
def test_step_api_equals_batched_forward_also_when_sliding(make_model, make_batch, head, space):
    model = make_model(head=head, **HEADS[head], **space).eval()  # window_size 3
    episode = _episode(make_batch, model.config, frames=6)
    state = episode.get("state")
    stepper = ActionStepper(model)
    stepper.reset()
    for k in range(6):
        chunk = stepper.step(episode["images"][:, k], episode["input_ids"], episode["attention_mask"],
                             None if state is None else state[:, k])
        start = max(0, k - 2)  # the training window that ends at frame k
        with torch.no_grad():
            out = model(episode["images"][:, start : k + 1], episode["input_ids"], episode["attention_mask"],
                        None if state is None else state[:, start : k + 1])
        expected = join_actions(out, model.config)[:, -1]
        assert chunk.shape == (2, model.config.fwd_pred_next_n, model.config.action_dim)
        torch.testing.assert_close(chunk, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("state_input", ["head", "token"])
def test_the_state_changes_the_action_and_is_required(make_model, make_batch, state_input):
    model = make_model(state_dim=3, state_input=state_input).eval()
    batch = make_batch(model.config)
    args = (batch["images"], batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        a, b = model(*args, batch["state"]), model(*args, batch["state"] + 1.0)
    assert not torch.allclose(a.continuous, b.continuous)
    with pytest.raises(ValueError, match="state: the model reads a state of 3 values"):
        model(*args)
    model.train()
    model.loss(model(*args, batch["state"]), batch["actions"], batch["action_mask"])["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_reset_forgets_the_history(make_model, make_batch):
    model = make_model().eval()
    episode = _episode(make_batch, model.config, frames=2)
    stepper = ActionStepper(model)
    first = stepper.step(episode["images"][:, 0], episode["input_ids"], episode["attention_mask"])
    stepper.step(episode["images"][:, 1], episode["input_ids"], episode["attention_mask"])
    stepper.reset()
    again = stepper.step(episode["images"][:, 0], episode["input_ids"], episode["attention_mask"])
    torch.testing.assert_close(first, again)


@pytest.mark.parametrize("options", [{"backbone": "paligemma"}, {"backbone": "kosmos2", "lora_rank": 2}],
                         ids=["paligemma", "kosmos2-lora"])
def test_save_then_load_gives_identical_outputs(make_model, make_batch, tokenizer, tmp_path, options):
    model = make_model(**options).eval()
    with torch.no_grad():
        model.action_token.add_(1.0)  # not the initial values
    save_export(tmp_path, model, run_config={"run": {"name": "r"}}, normalization={"mode": "none"})
    assert {"model.safetensors", "model_config.json", "backbone_config.json", "normalization.json", "config.yaml"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert read_run_config(tmp_path) == {"run": {"name": "r"}} and read_normalization(tmp_path) == {"mode": "none"}
    loaded, cfg = load_export(tmp_path)
    assert cfg == model.config and not loaded.training
    batch = make_batch(model.config)
    with torch.no_grad():
        a = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        b = loaded(batch["images"], batch["input_ids"], batch["attention_mask"])
    assert torch.equal(a.continuous, b.continuous) and torch.equal(a.gripper_logits, b.gripper_logits)
    saved_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert saved_tokenizer("pick up the red block")["input_ids"] == tokenizer("pick up the red block")["input_ids"]


def test_from_pretrained_local_directory(tokenizer, tiny_config, make_batch, tmp_path, family):
    """A Hugging Face directory (save_pretrained of a tiny VLM + tokenizer) loads with no network."""
    cfg = tiny_config(**family)
    torch.manual_seed(1)
    vlm = BACKBONES[cfg.backbone].hf_model_class(tiny_hf_config(cfg, tokenizer))
    vlm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.5] * 3}))

    model = build_model(tiny_config(**family, pretrained_path=str(tmp_path))).eval()
    assert model.image_mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    original = vlm.state_dict()
    for name, value in model.backbone.state_dict().items():  # every weight came from the directory
        matches = [k for k in original if k.endswith(name.split(".", 1)[1])]
        assert any(torch.equal(original[k], value) for k in matches), name
    batch = make_batch(model.config, batch=1)
    with torch.no_grad():
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    assert torch.isfinite(out.continuous).all()
