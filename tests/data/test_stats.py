"""Streaming statistics match numpy; every normalization mode inverts and leaves binary grippers alone."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vla.data import DataConfig, Normalization, Normalizer, load_metadata
from vla.data.stats import HISTOGRAM_BINS, action_stats


def all_actions(root: str, split: str) -> np.ndarray:
    meta = load_metadata(root)
    rows = [a for s in meta.splits[split].shards for a in pq.read_table(f"{root}/{s.file}")["actions"].to_pylist()]
    return np.concatenate([np.asarray(r, np.float64) for r in rows])


def assert_stats_match(stats, data: np.ndarray) -> None:
    bin_width = (data.max(0) - data.min(0)) / HISTOGRAM_BINS
    assert stats.count == len(data)
    np.testing.assert_allclose(stats.min, data.min(0), atol=1e-6)
    np.testing.assert_allclose(stats.max, data.max(0), atol=1e-6)
    np.testing.assert_allclose(stats.mean, data.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats.std, data.std(0), atol=1e-6)
    for q, values in ((0.01, stats.q01), (0.99, stats.q99)):
        assert (np.abs(np.asarray(values) - np.quantile(data, q, axis=0)) <= bin_width + 1e-6).all()


def test_stats_of_written_dataset_match_numpy(synthetic_dataset):
    meta = load_metadata(synthetic_dataset)
    for split in ("train", "val"):
        assert_stats_match(meta.splits[split].action_stats, all_actions(synthetic_dataset, split))


def test_streaming_stats_match_numpy_on_skewed_chunks():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.normal(size=(4000, 7)), rng.exponential(3.0, size=(2000, 7))])
    data[:, 3] = 0.0  # a constant dimension
    chunks = lambda: (data[i:i + 333] for i in range(0, len(data), 333))  # noqa: E731
    assert_stats_match(action_stats(chunks), data)


@pytest.mark.parametrize("mode", ["clip", "quantile", "mean_std", "none"])
def test_normalizer_modes_invert_and_never_touch_the_gripper(synthetic_dataset, mode):
    meta = load_metadata(synthetic_dataset)
    norm = Normalization.from_metadata(meta, DataConfig(normalization=mode, clip_bound=0.65), use_state=False).action
    actions = all_actions(synthetic_dataset, "train").astype(np.float32)
    out = norm.normalize(actions)
    np.testing.assert_array_equal(out[:, 6], actions[:, 6])
    if norm.clip:
        assert np.abs(out[:, :6]).max() <= 1.0
    inside = np.abs(actions[:, :6]) <= 0.65 if mode == "clip" else np.ones_like(actions[:, :6], bool)
    if mode == "quantile":
        q01, q99 = np.asarray(meta.splits["train"].action_stats.q01[:6]), meta.splits["train"].action_stats.q99[:6]
        inside = (actions[:, :6] >= q01) & (actions[:, :6] <= np.asarray(q99))
    back = norm.unnormalize(out)
    np.testing.assert_allclose(back[:, :6][inside], actions[:, :6][inside], atol=1e-5)
    restored = Normalizer.from_dict(norm.to_dict())
    assert restored == norm
    torch.testing.assert_close(restored.normalize(torch.from_numpy(actions)), torch.from_numpy(out))


def test_clip_mode_scales_the_bound_to_one():
    norm = Normalizer.from_stats(None, "clip", range(6), clip_bound=0.65)
    out = norm.normalize(np.array([[0.65, -0.325, 2.0, 0, 0, 0, -1.0]], np.float32))
    np.testing.assert_allclose(out, [[1.0, -0.5, 1.0, 0, 0, 0, -1.0]])


def test_state_stats_and_normalization_travel_together(synthetic_dataset):
    meta = load_metadata(synthetic_dataset)
    states = np.concatenate([np.asarray(r, np.float64) for s in meta.splits["train"].shards
                             for r in pq.read_table(f"{synthetic_dataset}/{s.file}")["state"].to_pylist()])
    assert_stats_match(meta.splits["train"].state_stats, states)
    normalization = Normalization.from_metadata(meta, DataConfig(), use_state=True)
    normalized = normalization.state.normalize(states.astype(np.float32))
    np.testing.assert_allclose(normalized.mean(0)[:3], 0.0, atol=1e-4)  # mean_std by default
    assert Normalization.from_dict(normalization.to_dict()) == normalization


def test_a_normalization_file_written_before_states_reads_as_the_arm_pose():
    legacy = {"mode": "clip", "offset": [0.0] * 6, "scale": [0.65] * 6, "clip": True}
    normalization = Normalization.from_dict(legacy)
    assert normalization.state is None and normalization.action.normalized_dims == list(range(6))
    out = normalization.action.normalize(np.array([[0.65, 0, 0, 0, 0, 0, -1.0]], np.float32))
    np.testing.assert_allclose(out, [[1.0, 0, 0, 0, 0, 0, -1.0]])
