"""A tiny model learns a task whose action depends on both the image and the instruction."""

from __future__ import annotations

import pytest
import torch

from vla.model import build_model

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40)}
SIZE = 32


def make_task(tokenizer, count: int, generator: torch.Generator) -> dict:
    """One half of the image red, the other green (random sides); "pick up the <colour> block".

    Pose dim 0 is -1 when the named colour is on the left, +1 on the right (dims 1-5 are 0);
    the gripper is +1 for red, -1 for green. Neither the image nor the instruction alone tells the pose.
    """
    images = torch.zeros(count, 1, 1, 3, SIZE, SIZE, dtype=torch.uint8)
    red_on_left = torch.rand(count, generator=generator) < 0.5
    named_red = torch.rand(count, generator=generator) < 0.5
    red, green = (torch.tensor(COLOURS[c], dtype=torch.uint8).view(3, 1, 1) for c in ("red", "green"))
    for i in range(count):
        left, right = (red, green) if red_on_left[i] else (green, red)
        images[i, 0, 0, :, :, : SIZE // 2] = left
        images[i, 0, 0, :, :, SIZE // 2 :] = right
    actions = torch.zeros(count, 1, 1, 7)
    actions[:, 0, 0, 0] = torch.where(red_on_left == named_red, -1.0, 1.0)
    actions[:, 0, 0, 6] = torch.where(named_red, 1.0, -1.0)
    text = tokenizer([f"pick up the {'red' if r else 'green'} block" for r in named_red], padding=True,
                     add_special_tokens=False, return_tensors="pt")
    return {
        "images": images,
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
        "actions": actions,
        "action_mask": torch.ones(count, 1, 1),
    }


@pytest.mark.timeout(240)
@pytest.mark.xfail(
    run=False,  # ~60-200 s of CPU for a known failure; remove to work on it
    reason="open: in 300 steps the tiny model learns the instruction-only gripper but not the "
    "image-dependent pose (ratio stays ~1.0); see the model report",
)
def test_tiny_model_learns_image_and_instruction_dependent_actions(tiny_config, tokenizer):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    cfg = tiny_config(
        backbone="paligemma", tiny_hidden_size=64, window_size=1, fwd_pred_next_n=1, num_views=1,
        head="lstm", head_hidden_size=64, head_num_layers=1,
    )
    model = build_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    evaluation = make_task(tokenizer, 256, generator)

    for _ in range(300):
        batch = make_task(tokenizer, 32, generator)
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        loss = model.loss(out, batch["actions"], batch["action_mask"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.eval()
    with torch.no_grad():
        out = model(evaluation["images"], evaluation["input_ids"], evaluation["attention_mask"])
        pose_error = model.loss(out, evaluation["actions"], evaluation["action_mask"])["pose_error"].item()
    pose = evaluation["actions"][..., :6]
    mean_baseline = (pose - pose.mean(dim=0)).abs().mean().item()  # predicting the mean action
    ratio = pose_error / mean_baseline
    assert ratio < 0.5, f"pose_error {pose_error:.3f} vs mean baseline {mean_baseline:.3f} (ratio {ratio:.2f})"
