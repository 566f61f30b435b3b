"""A video-backed LeRobot v3 dataset streams without conversion: the same windows as streaming its
converted Parquet copy."""

from __future__ import annotations

import numpy as np
import pytest
from test_lerobot import EPISODES, make_lerobot

from vla.data import DataConfig, DataError, build_window_stream, count_windows
from vla.data.converters.lerobot import convert_lerobot

CAMERAS = {"static": "observation.images.top", "wrist": "observation.images.wrist"}


@pytest.mark.timeout(180)
def test_video_dataset_streams_the_windows_of_its_converted_copy(ray_session, tmp_path, tokenizer_dir):
    make_lerobot(tmp_path / "lerobot", "v3.0", video=True)
    convert_lerobot(str(tmp_path / "lerobot"), str(tmp_path / "parquet"), cameras=CAMERAS, val_episodes=1,
                    state_key=None)
    shape = dict(window_size=3, fwd_pred_next_n=2, image_size=16, tokenizer_dir=tokenizer_dir, train=False)
    cfg = DataConfig(path=str(tmp_path / "lerobot"), format="lerobot", lerobot_cameras=CAMERAS,
                     lerobot_val_fraction=0.2, batch_size=4, normalization="mean_std")  # the last episode is val
    video = build_window_stream(cfg, "train", **shape)
    parquet = build_window_stream(DataConfig(path=str(tmp_path / "parquet"), batch_size=4, normalization="mean_std"),
                                  "train", **shape)
    assert video.index.episode_id.tolist() == parquet.index.episode_id.tolist() == list(range(len(EPISODES) - 1))
    streamed = [{k: v.numpy() for k, v in b.items()} for b in video.batches(epoch=0)]
    expected = [{k: v.numpy() for k, v in b.items()} for b in parquet.batches(epoch=0)]
    assert len(streamed) == len(expected) == -(-sum(steps for _, steps in EPISODES[:-1]) // 4)
    for got, want in zip(streamed, expected):
        np.testing.assert_array_equal(got["images"], want["images"])  # the same PyAV frames, same resize
        np.testing.assert_allclose(got["actions"], want["actions"], rtol=1e-5, atol=1e-6)  # same statistics
        for key in ("action_mask", "input_ids", "attention_mask"):
            np.testing.assert_array_equal(got[key], want[key])
    assert count_windows(cfg, "train") == count_windows(parquet.data_cfg, "train") == len(video.plan(epoch=0))
    with pytest.raises(DataError, match="do not match data.cameras"):
        build_window_stream(DataConfig(path=str(tmp_path / "lerobot"), format="lerobot", cameras=["static"]), "train",
                            **shape)
