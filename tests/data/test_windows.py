"""Windows: cut from one episode only, masked and padded at its end, same through Ray Data."""

from __future__ import annotations

import numpy as np
import pytest
from episode_factories import MARKER_LENGTHS

from vla.data import DataConfig, build_window_dataset, count_windows, iter_batches
from vla.data.transforms import CutWindows

T, N = 3, 2


def check_window(images: np.ndarray, actions: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """Assert a marker window is consistent; returns (episode, start step)."""
    episode = round(actions[0, 0, 0] * 100)
    start = round(actions[0, 0, 1] * 100)
    steps = MARKER_LENGTHS[episode]
    assert np.allclose(actions[..., 0], episode / 100)  # never another episode's step
    assert (images[:, 0, 0] == 10 * episode).all() and (images[:, 1, 0] == 255 - 10 * episode).all()
    for t in range(T):
        frame = min(start + t, steps - 1)  # past the end the last frame repeats
        assert (images[t, 0, 1] == frame).all()
        for n in range(N):
            step = start + t + n
            assert mask[t, n] == (1.0 if step < steps else 0.0)
            assert actions[t, n, 1] == pytest.approx(min(step, steps - 1) / 100)
    return episode, start


def test_cut_windows_every_start_with_masks_at_the_end():
    actions = np.arange(4 * 7, dtype=np.float32).reshape(4, 7)
    images = np.arange(4).reshape(4, 1, 1, 1, 1) * np.ones((4, 2, 3, 2, 2), np.uint8)
    row = {"actions": actions, "images": images, "input_ids": np.ones(5, np.int64),
           "attention_mask": np.ones(5, np.int64), "episode_id": 9}
    out = CutWindows(window_size=3, fwd_pred_next_n=2)(row)
    assert out["images"].shape == (4, 3, 2, 3, 2, 2) and out["actions"].shape == (4, 3, 2, 7)
    np.testing.assert_array_equal(out["images"][:, :, 0, 0, 0, 0], [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3]])
    np.testing.assert_array_equal(out["action_mask"][2], [[1, 1], [1, 0], [0, 0]])
    np.testing.assert_array_equal(out["actions"][3, :, :, 0], np.full((3, 2), actions[3, 0]))
    assert CutWindows(3, 2, stride=2)(row)["start"].tolist() == [0, 2]


@pytest.mark.timeout(120)
def test_ray_windows_never_mix_episodes_and_cover_every_start(ray_session, marker_dataset, tokenizer_dir):
    cfg = DataConfig(path=marker_dataset, normalization="none", batch_size=4, shuffle_buffer=8)
    ds = build_window_dataset(cfg, "train", window_size=T, fwd_pred_next_n=N, image_size=16,
                              tokenizer_dir=tokenizer_dir, train=True)
    seen = []
    for batch in iter_batches(ds, cfg, epoch=0):
        assert batch["images"].dtype.is_floating_point is False and batch["images"].shape[1:] == (T, 2, 3, 16, 16)
        assert batch["input_ids"].shape[1] == cfg.max_text_len
        for images, actions, mask in zip(batch["images"].numpy(), batch["actions"].numpy(),
                                         batch["action_mask"].numpy()):
            seen.append(check_window(images, actions, mask))
    assert sorted(seen) == [(e, s) for e, steps in enumerate(MARKER_LENGTHS) for s in range(steps)]
    assert count_windows(cfg, "train") == len(seen)


@pytest.mark.timeout(120)
def test_augmented_windows_resize_and_stay_uint8(ray_session, synthetic_dataset, tokenizer_dir):
    cfg = DataConfig(path=synthetic_dataset, shift_static=2, shift_wrist=1, color_jitter=0.2,
                     batch_size=16, max_text_len=12)
    ds = build_window_dataset(cfg, "val", window_size=4, fwd_pred_next_n=3, image_size=24,
                              tokenizer_dir=tokenizer_dir, train=True)
    batch = next(iter(iter_batches(ds, cfg, epoch=1)))
    assert batch["images"].shape == (16, 4, 2, 3, 24, 24)
    assert batch["actions"].shape == (16, 4, 3, 7) and batch["action_mask"].shape == (16, 4, 3)
    assert batch["input_ids"].shape == (16, 12) and batch["attention_mask"].dtype.is_floating_point is False
    assert set(batch["actions"][..., 6].unique().tolist()) <= {-1.0, 1.0}
    assert batch["actions"][..., :6].abs().max() <= 1.0
