"""Windows: cut from one episode only, masked and padded at its end, the same through the Ray stream;
the stream repeats itself exactly and resumes without decoding what it skips."""

from __future__ import annotations

import numpy as np
import pytest
from episode_factories import MARKER_LENGTHS

from vla.data import DataConfig, DataError, build_window_stream, count_windows
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
           "attention_mask": np.ones(5, np.int64)}
    out = CutWindows(window_size=3, fwd_pred_next_n=2)(row)
    assert out["images"].shape == (4, 3, 2, 3, 2, 2) and out["actions"].shape == (4, 3, 2, 7)
    np.testing.assert_array_equal(out["images"][:, :, 0, 0, 0, 0], [[0, 1, 2], [1, 2, 3], [2, 3, 3], [3, 3, 3]])
    np.testing.assert_array_equal(out["action_mask"][2], [[1, 1], [1, 0], [0, 0]])
    np.testing.assert_array_equal(out["actions"][3, :, :, 0], np.full((3, 2), actions[3, 0]))
    assert CutWindows(3, 2, stride=2)(row)["start"].tolist() == [0, 2]


def stream(cfg: DataConfig, tokenizer_dir: str, split: str = "train", train: bool = True):
    return build_window_stream(cfg, split, window_size=T, fwd_pred_next_n=N, image_size=16,
                               tokenizer_dir=tokenizer_dir, train=train)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stride", [1, 2])
def test_ray_windows_never_mix_episodes_and_cover_every_start(ray_session, marker_dataset, tokenizer_dir, stride):
    cfg = DataConfig(path=marker_dataset, normalization="none", batch_size=4, open_episodes=2, stride=stride)
    seen = []
    for batch in stream(cfg, tokenizer_dir).batches(epoch=0):
        assert batch["images"].dtype.is_floating_point is False and batch["images"].shape[1:] == (T, 2, 3, 16, 16)
        assert batch["input_ids"].shape[1] == cfg.max_text_len
        for images, actions, mask in zip(batch["images"].numpy(), batch["actions"].numpy(),
                                         batch["action_mask"].numpy()):
            seen.append(check_window(images, actions, mask))
    assert sorted(seen) == [(e, s) for e, steps in enumerate(MARKER_LENGTHS) for s in range(0, steps, stride)]
    assert count_windows(cfg, "train") == len(seen)


@pytest.mark.timeout(120)
def test_augmented_windows_resize_and_stay_uint8(ray_session, synthetic_dataset, tokenizer_dir):
    cfg = DataConfig(path=synthetic_dataset, shift_static=2, shift_wrist=1, color_jitter=0.2,
                     batch_size=16, max_text_len=12)
    windows = build_window_stream(cfg, "val", window_size=4, fwd_pred_next_n=3, image_size=24,
                                  tokenizer_dir=tokenizer_dir, train=True)
    batch = next(windows.batches(epoch=1))
    assert batch["images"].shape == (16, 4, 2, 3, 24, 24)
    assert batch["actions"].shape == (16, 4, 3, 7) and batch["action_mask"].shape == (16, 4, 3)
    assert batch["input_ids"].shape == (16, 12) and batch["attention_mask"].dtype.is_floating_point is False
    assert set(batch["actions"][..., 6].unique().tolist()) <= {-1.0, 1.0}
    assert batch["actions"][..., :6].abs().max() <= 1.0


def as_numpy(batches) -> list[dict[str, np.ndarray]]:
    return [{key: value.numpy() for key, value in batch.items()} for batch in batches]


@pytest.mark.timeout(120)
def test_the_stream_repeats_itself_exactly_and_resumes_mid_epoch(ray_session, synthetic_dataset, tokenizer_dir):
    cfg = DataConfig(path=synthetic_dataset, batch_size=8, shift_static=3, shift_wrist=2, color_jitter=0.2,
                     open_episodes=3, seed=7)
    windows = stream(cfg, tokenizer_dir)
    first = as_numpy(windows.batches(epoch=1, rank=1, world_size=2))
    again = as_numpy(windows.batches(epoch=1, rank=1, world_size=2, skip=3))
    assert len(again) == len(first) - 3 > 0
    for a, b in zip(first[3:], again):  # the same windows, augmented the same way
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    other = as_numpy(windows.batches(epoch=2, rank=1, world_size=2))
    assert not np.array_equal(other[0]["actions"], first[0]["actions"])


@pytest.mark.timeout(120)
def test_resuming_never_decodes_the_episodes_it_skips(ray_session, marker_dataset, tokenizer_dir, tmp_path):
    """An undecodable frame in an episode that only the skipped batches use: resuming past them
    runs clean, reading the whole epoch raises."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = shutil.copytree(marker_dataset, tmp_path / "ds")
    cfg = DataConfig(path=str(root), normalization="none", batch_size=2, open_episodes=1)
    windows = stream(cfg, tokenizer_dir, train=False)  # stored order: episode 0 (3 windows) first
    file, row_group, row = windows.index.addresses[0]
    assert row_group == 0
    table = pq.read_table(file)
    rows = table.to_pylist()
    rows[row]["image_static"][1] = b"\x89PNG garbage"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), file)
    assert [int(e) for e in windows.plan(epoch=0).episode[:4]] == [0, 0, 0, 1]
    resumed = as_numpy(windows.batches(epoch=0, skip=2))  # batches 0-1 hold windows 0-3
    assert round(float(resumed[0]["actions"][0, 0, 0, 0]) * 100) == 1
    with pytest.raises(DataError, match=r"episode 0, field image_static\[1\]: image does not decode"):
        as_numpy(windows.batches(epoch=0))


def test_decoded_margin_replicates_the_edges_as_np_pad_does():
    from vla.data.episodes import encode_image
    from vla.data.transforms import DecodeImages

    frames = np.random.default_rng(0).integers(0, 255, (4, 9, 11, 3), dtype=np.uint8)
    row = {"episode_id": 0, "image_static": [encode_image(f, "png") for f in frames]}
    for margin in (1, 3):
        images = DecodeImages(["static"], 11, margin=margin)(row)["images"]  # resized to 11 x 11
        resized = DecodeImages(["static"], 11)(row)["images"]
        padded = np.pad(resized, ((0, 0), (0, 0), (0, 0), (margin, margin), (margin, margin)), mode="edge")
        np.testing.assert_array_equal(images, padded)


def test_batched_windows_are_padded_and_cropped_frames_of_their_episode():
    from vla.data.episodes import encode_image
    from vla.data.transforms import DecodeImages, RandomShift, WindowBatcher

    rng = np.random.default_rng(0)
    steps, pads = 5, [2, 1]
    frames = rng.integers(0, 255, (2, steps, 12, 12, 3), dtype=np.uint8)  # [V, S, H, W, 3]
    row = {"episode_id": 0, **{f"image_{c}": [encode_image(f, "png") for f in frames[v]]
                               for v, c in enumerate(["static", "wrist"])}}
    episode = {**DecodeImages(["static", "wrist"], 12, margin=2)(row),
               "actions": rng.normal(size=(steps, 7)).astype(np.float32),
               "input_ids": np.arange(4), "attention_mask": np.ones(4, np.int64)}
    batch = WindowBatcher(CutWindows(3, 2), RandomShift(pads), None, seed=3, margin=2)(
        [episode] * steps, list(range(steps)), [7] * steps, 1)
    shifts = set()
    for start in range(steps):
        offsets = RandomShift(pads).offsets(np.random.default_rng([3, 1, 7, start]))  # the window's own generator
        frame = np.minimum(start + np.arange(3), steps - 1)
        for v, ((dy, dx), pad) in enumerate(zip(offsets, pads)):
            padded = np.pad(frames[v, frame].transpose(0, 3, 1, 2), ((0, 0), (0, 0), (pad, pad), (pad, pad)),
                            mode="edge")
            np.testing.assert_array_equal(batch["images"][start, :, v],
                                          padded[..., pad + dy:pad + dy + 12, pad + dx:pad + dx + 12])
            shifts.add((dy, dx))
    assert len(shifts) > 2


def test_a_shift_wider_than_the_decoded_margin_is_refused():
    from vla.data.transforms import RandomShift, WindowBatcher

    with pytest.raises(ValueError, match="margin of at least that"):
        WindowBatcher(CutWindows(3, 2), RandomShift([4, 2]), None, seed=0, margin=2)
