"""The training objective: masked MSE over the continuous action dimensions + lambda_gripper *
masked BCE over the binary grippers (on the 7-DOF arm: pose dims 0-5 and the gripper, dim 6).

Head ``l1_chunk`` takes the L1 distance instead of the squared one; the flow head in training is
scored on its velocity (pi0's flow-matching loss). The gripper term is the same for every head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vla.model.heads import ActionOutput, FlowTraining


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (broadcast over trailing dims); 0 when nothing counts."""
    mask = mask.reshape(mask.shape + (1,) * (values.dim() - mask.dim())).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def action_loss(
    output: ActionOutput | FlowTraining, actions: torch.Tensor, action_mask: torch.Tensor, lambda_gripper: float,
    binary_grippers: list[int], l1: bool = False,
) -> dict[str, torch.Tensor]:
    """Loss terms and metrics for ``actions [B, T, N, D]`` whose ``binary_grippers`` dims hold -1 / +1.

    ``action_mask [B, T, N]`` is 1 where the step lies inside the episode; only those count.
    ``loss_arm``: the mean squared error of the continuous dims (``l1``: the mean absolute error),
    or for a ``FlowTraining`` output the mean squared velocity error |v - (eps - a)|^2 (then no
    ``pose_error``: nothing was generated). ``gripper_accuracy`` is only reported when the action
    has binary grippers.
    """
    mask = action_mask.to(output.gripper_logits.dtype)
    if isinstance(output, FlowTraining):
        loss_arm, metrics = _masked_mean(output.velocity_error**2, mask), {}
    else:
        continuous_dims = [i for i in range(actions.shape[-1]) if i not in binary_grippers]
        error = output.continuous - actions[..., continuous_dims].to(output.continuous.dtype)
        loss_arm = _masked_mean(error.abs() if l1 else error**2, mask)
        with torch.no_grad():
            metrics = {"pose_error": _masked_mean(error.abs(), mask)}
    loss = loss_arm
    loss_gripper = loss_arm.new_zeros(())
    if binary_grippers:
        gripper_target = (actions[..., binary_grippers] > 0).to(output.gripper_logits.dtype)  # {-1, +1} -> {0, 1}
        bce = F.binary_cross_entropy_with_logits(output.gripper_logits, gripper_target, reduction="none")
        loss_gripper = _masked_mean(bce, mask)
        loss = loss + lambda_gripper * loss_gripper
        with torch.no_grad():
            correct = ((output.gripper_logits > 0).to(mask.dtype) == gripper_target).to(mask.dtype)
            metrics["gripper_accuracy"] = _masked_mean(correct, mask)
    return {"loss": loss, "loss_arm": loss_arm, "loss_gripper": loss_gripper, **metrics}
