"""Offline evaluation: the training loss and action errors of a policy on a held-out split.

The windows come from the training pipeline itself (``build_window_stream(..., train=False)``:
no augmentation, every window of every episode), so the numbers are the ones validation
during training would report, over the whole split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from vla.config import Config
from vla.data import build_window_stream
from vla.policy import Policy


@torch.no_grad()
def evaluate_offline(policy: Policy, run: Config, export_dir: str, split: str, *, batch_size: int = 32,
                     max_batches: int | None = None) -> dict:
    """Loss terms, per-dimension pose error and gripper accuracy over ``split`` (needs Ray).

    Every metric averages over the predicted steps inside the episodes (``action_mask`` 1).
    Pose errors are mean absolute errors, in normalized units and in the dataset's units.
    """
    model, device = policy.model, policy.device
    data_cfg = dataclasses.replace(run.data, batch_size=batch_size)
    dataset = build_window_stream(
        data_cfg, split, window_size=run.model.window_size, fwd_pred_next_n=run.model.fwd_pred_next_n,
        image_size=model.image_size, tokenizer_dir=export_dir, train=False,
    )
    totals = {"loss": 0.0, "loss_arm": 0.0, "loss_gripper": 0.0}
    abs_error = np.zeros(6)
    correct = steps = 0.0
    windows = 0
    for index, batch in enumerate(dataset.batches(epoch=0)):
        if max_batches is not None and index >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        mask = batch["action_mask"].float()
        count = float(mask.sum())
        for key, value in model.loss(output, batch["actions"], mask).items():
            if key in totals:
                totals[key] += float(value) * count
        target = batch["actions"].float()
        abs_error += ((output.pose.float() - target[..., :6]).abs() * mask[..., None]).sum(dim=(0, 1, 2)).cpu().numpy()
        predicted_open = output.gripper_logits.float() > 0
        correct += float(((predicted_open == (target[..., 6] > 0)).float() * mask).sum())
        steps += count
        windows += len(mask)
    steps = max(steps, 1.0)
    per_dim = abs_error / steps
    scale = np.asarray(policy.normalizer.scale)
    return {
        "split": split,
        "windows": windows,
        "steps": int(steps),
        **{key: value / steps for key, value in totals.items()},
        "pose_error": float(per_dim.mean()),
        "pose_error_per_dim": per_dim.tolist(),
        "pose_error_per_dim_unnormalized": (per_dim * scale).tolist(),
        "gripper_accuracy": correct / steps,
    }
