"""The training objective: masked MSE on the pose + lambda_gripper * masked BCE on the gripper."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vla.model.heads import ActionOutput


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (broadcast over trailing dims); 0 when nothing counts."""
    mask = mask.reshape(mask.shape + (1,) * (values.dim() - mask.dim())).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def action_loss(
    output: ActionOutput, actions: torch.Tensor, action_mask: torch.Tensor, lambda_gripper: float
) -> dict[str, torch.Tensor]:
    """Loss terms and metrics for ``actions [B, T, N, 7]`` (pose dims 0-5, gripper in {-1, +1}).

    ``action_mask [B, T, N]`` is 1 where the step lies inside the episode; only those count.
    """
    mask = action_mask.to(output.pose.dtype)
    pose_target = actions[..., :6].to(output.pose.dtype)
    gripper_target = (actions[..., 6] > 0).to(output.gripper_logits.dtype)  # {-1, +1} -> {0, 1}

    loss_arm = _masked_mean((output.pose - pose_target) ** 2, mask)
    bce = F.binary_cross_entropy_with_logits(output.gripper_logits, gripper_target, reduction="none")
    loss_gripper = _masked_mean(bce, mask)
    with torch.no_grad():
        pose_error = _masked_mean((output.pose - pose_target).abs(), mask)
        correct = ((output.gripper_logits > 0).to(mask.dtype) == gripper_target).to(mask.dtype)
        gripper_accuracy = _masked_mean(correct, mask)
    return {
        "loss": loss_arm + lambda_gripper * loss_gripper,
        "loss_arm": loss_arm,
        "loss_gripper": loss_gripper,
        "pose_error": pose_error,
        "gripper_accuracy": gripper_accuracy,
    }
