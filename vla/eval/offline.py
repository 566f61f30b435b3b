"""Offline evaluation: the training loss and action errors of a policy on a held-out split.

The windows come from the training pipeline itself (no augmentation, every window of every
episode), so the numbers are the ones validation during training would report:
``evaluate_offline`` streams the whole split (``build_window_stream``: Ray tasks decode);
``evaluate_offline_local`` reads the first episodes of the split in this process with the
same transforms (``episode_to_windows``; evaluation during training: a few batches, no tasks).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vla.config import Config
from vla.data import build_window_stream, load_metadata
from vla.data.parquet_source import episode_columns, episode_to_windows, split_files
from vla.policy import Policy
from vla.storage import filesystem


@torch.no_grad()
def offline_metrics(policy: Policy, batches: Iterable[dict[str, torch.Tensor]], split: str) -> dict:
    """Loss terms, per-dimension error of the continuous action dimensions and (where the action
    has binary grippers) gripper accuracy over ``batches`` of windows.

    Every metric averages over the predicted steps inside the episodes (``action_mask`` 1).
    Errors are mean absolute errors, in normalized units and in the dataset's units.
    """
    model, device = policy.model, policy.device
    continuous, grippers = model.config.continuous_dims, model.config.binary_grippers
    totals = {"loss": 0.0, "loss_arm": 0.0, "loss_gripper": 0.0}
    abs_error = np.zeros(len(continuous))
    correct = steps = 0.0
    windows = 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        output = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch.get("state"))
        mask = batch["action_mask"].float()
        count = float(mask.sum())
        for key, value in model.loss(output, batch["actions"], mask).items():
            if key in totals:
                totals[key] += float(value) * count
        target = batch["actions"].float()
        error = (output.continuous.float() - target[..., continuous]).abs() * mask[..., None]
        abs_error += error.sum(dim=(0, 1, 2)).cpu().numpy()
        predicted_open = output.gripper_logits.float() > 0
        correct += float(((predicted_open == (target[..., grippers] > 0)).float() * mask[..., None]).sum())
        steps += count
        windows += len(mask)
    steps = max(steps, 1.0)
    per_dim = abs_error / steps
    scale = np.asarray(policy.normalization.action.scale)
    metrics = {
        "split": split,
        "windows": windows,
        "steps": int(steps),
        **{key: value / steps for key, value in totals.items()},
        "pose_error": float(per_dim.mean()),
        "pose_error_per_dim": per_dim.tolist(),
        "pose_error_per_dim_unnormalized": (per_dim * scale).tolist(),
        "pose_dims": list(continuous),
    }
    if grippers:
        metrics["gripper_accuracy"] = correct / (steps * len(grippers))
    return metrics


def evaluate_offline(policy: Policy, run: Config, export_dir: str, split: str, *, batch_size: int = 32,
                     max_batches: int | None = None) -> dict:
    """``offline_metrics`` over the whole ``split`` (or its first ``max_batches``), decoded by Ray tasks."""
    data_cfg = dataclasses.replace(run.data, batch_size=batch_size)
    stream = build_window_stream(
        data_cfg, split, window_size=run.model.window_size, fwd_pred_next_n=run.model.fwd_pred_next_n,
        image_size=policy.model.image_size, tokenizer_dir=export_dir, train=False, normalization=policy.normalization,
    )
    return offline_metrics(policy, itertools.islice(stream.batches(epoch=0), max_batches), split)


def local_batches(run: Config, split: str, policy: Policy, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``split``'s windows in file order, read and transformed in this process as
    ``policy`` was trained (its image size, tokenizer and normalization)."""
    meta = load_metadata(run.data.path)
    fs, _ = filesystem(run.data.path)
    transform = episode_to_windows(run.data, meta, window_size=run.model.window_size,
                                   fwd_pred_next_n=run.model.fwd_pred_next_n, image_size=policy.model.image_size,
                                   tokenizer=policy.preprocessor.tokenize.tokenizer, train=False,
                                   normalization=policy.normalization)
    columns = episode_columns(run.data.cameras, state=bool(policy.state_dim))
    pending: list[dict[str, np.ndarray]] = []
    held = 0
    for file in split_files(run.data.path, meta, split, run.data.cameras):
        for row_group in pq.ParquetFile(fs.open_input_file(file)).iter_batches(
                batch_size=1, columns=columns):
            for windows in transform.windows(pa.Table.from_batches([row_group])):
                pending.append(windows)
                held += len(windows["actions"])
                while held >= batch_size:
                    merged = {key: np.concatenate([p[key] for p in pending]) for key in pending[0]}
                    yield {key: torch.from_numpy(value[:batch_size]) for key, value in merged.items()}
                    pending = [{key: value[batch_size:] for key, value in merged.items()}]
                    held -= batch_size
    if held:
        yield {key: torch.from_numpy(np.concatenate([p[key] for p in pending])) for key in pending[0]}


def evaluate_offline_local(policy: Policy, run: Config, split: str, *, batch_size: int, max_batches: int) -> dict:
    """``offline_metrics`` over the first ``max_batches`` batches of ``split``, without Ray."""
    batches = local_batches(run, split, policy, batch_size)
    return offline_metrics(policy, itertools.islice(batches, max_batches), split)
