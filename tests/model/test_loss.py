"""The loss is exactly MSE(pose) + lambda_gripper * BCE(gripper), both masked, and the metrics are right."""

from __future__ import annotations

import math

import pytest
import torch

from vla.model import ActionOutput
from vla.model.loss import action_loss


def test_loss_equals_hand_computation():
    # One window, two frames, one future step each; the second frame lies past the episode's end.
    pose = torch.tensor([[[[0.5, 0.0, 0.0, 0.0, 0.0, -0.5]], [[0.9, 0.9, 0.9, 0.9, 0.9, 0.9]]]])
    logits = torch.tensor([[[2.0], [-3.0]]])
    actions = torch.zeros(1, 2, 1, 7)
    actions[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0])
    actions[0, 1, 0, 6] = -1.0
    mask = torch.tensor([[[1.0], [0.0]]])

    out = action_loss(ActionOutput(pose, logits), actions, mask, lambda_gripper=0.5)

    mse = (0.5**2 + 1.0**2) / 6  # errors 0.5 and 1.0 over the 6 pose dims of the one valid step
    bce = -math.log(1 / (1 + math.exp(-2.0)))  # label +1 -> 1, logit 2
    assert out["loss_arm"].item() == pytest.approx(mse)
    assert out["loss_gripper"].item() == pytest.approx(bce)
    assert out["loss"].item() == pytest.approx(mse + 0.5 * bce)
    assert out["pose_error"].item() == pytest.approx((0.5 + 1.0) / 6)
    assert out["gripper_accuracy"].item() == pytest.approx(1.0)


def test_masked_steps_do_not_count_and_empty_mask_is_zero():
    pose = torch.zeros(2, 3, 2, 6, requires_grad=True)
    logits = torch.zeros(2, 3, 2)
    actions = torch.ones(2, 3, 2, 7)
    mask = torch.zeros(2, 3, 2)
    out = action_loss(ActionOutput(pose, logits), actions, mask, lambda_gripper=0.01)
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert pose.grad.abs().sum() == 0
    mask[1, 2, 1] = 1.0
    out = action_loss(ActionOutput(pose, logits), actions, mask, lambda_gripper=0.01)
    assert out["loss_arm"].item() == pytest.approx(1.0)
    assert out["loss_gripper"].item() == pytest.approx(math.log(2))
    assert out["gripper_accuracy"].item() == 0.0  # logit 0 predicts closed, the label is open


def test_model_loss_uses_the_configured_lambda(make_model, make_batch):
    model = make_model(lambda_gripper=0.25)
    batch = make_batch(model.config)
    out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    metrics = model.loss(out, batch["actions"], batch["action_mask"])
    expected = metrics["loss_arm"] + 0.25 * metrics["loss_gripper"]
    torch.testing.assert_close(metrics["loss"], expected)
