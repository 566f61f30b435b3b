"""The loss is exactly MSE(continuous dims) + lambda_gripper * BCE(binary grippers), both masked, and
the metrics are right, for the 7-DOF arm and for action spaces with no or several grippers."""

from __future__ import annotations

import math

import pytest
import torch

from vla.model import ActionOutput
from vla.model.loss import action_loss


def test_loss_equals_hand_computation():
    # One window, two frames, one future step each; the second frame lies past the episode's end.
    pose = torch.tensor([[[[0.5, 0.0, 0.0, 0.0, 0.0, -0.5]], [[0.9, 0.9, 0.9, 0.9, 0.9, 0.9]]]])
    logits = torch.tensor([[[[2.0]], [[-3.0]]]])
    actions = torch.zeros(1, 2, 1, 7)
    actions[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0])
    actions[0, 1, 0, 6] = -1.0
    mask = torch.tensor([[[1.0], [0.0]]])

    out = action_loss(ActionOutput(pose, logits), actions, mask, lambda_gripper=0.5, binary_grippers=[6])

    mse = (0.5**2 + 1.0**2) / 6  # errors 0.5 and 1.0 over the 6 pose dims of the one valid step
    bce = -math.log(1 / (1 + math.exp(-2.0)))  # label +1 -> 1, logit 2
    assert out["loss_arm"].item() == pytest.approx(mse)
    assert out["loss_gripper"].item() == pytest.approx(bce)
    assert out["loss"].item() == pytest.approx(mse + 0.5 * bce)
    assert out["pose_error"].item() == pytest.approx((0.5 + 1.0) / 6)
    assert out["gripper_accuracy"].item() == pytest.approx(1.0)


def test_masked_steps_do_not_count_and_empty_mask_is_zero():
    pose = torch.zeros(2, 3, 2, 6, requires_grad=True)
    logits = torch.zeros(2, 3, 2, 1)
    actions = torch.ones(2, 3, 2, 7)
    mask = torch.zeros(2, 3, 2)
    out = action_loss(ActionOutput(pose, logits), actions, mask, lambda_gripper=0.01, binary_grippers=[6])
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert pose.grad.abs().sum() == 0
    mask[1, 2, 1] = 1.0
    out = action_loss(ActionOutput(pose, logits), actions, mask, lambda_gripper=0.01, binary_grippers=[6])
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


def test_no_gripper_is_plain_mse_and_reports_no_gripper_accuracy():
    continuous = torch.tensor([[[[0.5, -0.5]]]])
    actions = torch.tensor([[[[0.0, 0.5]]]])
    out = action_loss(ActionOutput(continuous, torch.zeros(1, 1, 1, 0)), actions, torch.ones(1, 1, 1),
                      lambda_gripper=0.5, binary_grippers=[])
    assert out["loss"].item() == pytest.approx((0.25 + 1.0) / 2)
    assert out["loss_gripper"].item() == 0.0 and "gripper_accuracy" not in out


def test_two_binary_grippers_anywhere_in_the_action():
    # 4 dims: gripper at 1 and 3 (a bimanual layout in miniature), continuous at 0 and 2.
    continuous = torch.tensor([[[[0.2, -0.2]]]])
    logits = torch.tensor([[[[3.0, -1.0]]]])  # predicts open, closed
    actions = torch.tensor([[[[0.0, 1.0, 0.0, 1.0]]]])  # labels open, open
    out = action_loss(ActionOutput(continuous, logits), actions, torch.ones(1, 1, 1),
                      lambda_gripper=1.0, binary_grippers=[1, 3])
    bce = (math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(1.0))) / 2
    assert out["loss_arm"].item() == pytest.approx(0.04)
    assert out["loss_gripper"].item() == pytest.approx(bce)
    assert out["gripper_accuracy"].item() == pytest.approx(0.5)
