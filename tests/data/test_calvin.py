"""CALVIN layout -> Parquet: every annotated frame, instruction and action survives."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from episode_factories import CALVIN_SEGMENTS, make_calvin

from vla.data import load_metadata, validate_dataset
from vla.data.converters.calvin import convert_calvin
from vla.data.episodes import decode_image


def read_rows(root: str, split: str) -> list[dict]:
    meta = load_metadata(root)
    rows = []
    for shard in meta.splits[split].shards:
        rows += pq.read_table(f"{root}/{shard.file}").to_pylist()
    return sorted(rows, key=lambda r: r["episode_id"])


def test_calvin_round_trip_keeps_every_annotated_frame(tmp_path):
    frames = make_calvin(tmp_path / "calvin")
    out = str(tmp_path / "parquet")
    meta = convert_calvin(str(tmp_path / "calvin"), out, max_shard_bytes=4000)

    assert meta.source == "calvin" and meta.state_dim == 15
    assert {c: (i.height, i.width) for c, i in meta.cameras.items()} == {"static": (20, 20), "wrist": (12, 12)}
    for folder, split in (("training", "train"), ("validation", "val")):
        segments = CALVIN_SEGMENTS[folder]
        rows = read_rows(out, split)
        assert len(rows) == len(segments) == meta.splits[split].episodes
        assert meta.splits[split].steps == sum(e - s + 1 for _, s, e in segments)
        for row, (text, start, end) in zip(rows, segments):
            assert row["instruction"] == text
            assert row["step_ids"] == list(range(start, end + 1))
            for step, frame_id in enumerate(row["step_ids"]):
                frame = frames[folder][frame_id]
                np.testing.assert_array_equal(row["actions"][step], frame["rel_actions"].astype(np.float32))
                np.testing.assert_array_equal(row["state"][step], frame["robot_obs"].astype(np.float32))
                np.testing.assert_array_equal(decode_image(row["image_static"][step]), frame["rgb_static"])
                np.testing.assert_array_equal(decode_image(row["image_wrist"][step]), frame["rgb_gripper"])
    assert len(meta.splits["train"].shards) > 1  # small shards: several files, episodes whole
    assert validate_dataset(out) == []


def test_calvin_conversion_in_parallel_ray_tasks_matches(tmp_path, ray_session):
    make_calvin(tmp_path / "calvin")
    serial, parallel = str(tmp_path / "serial"), str(tmp_path / "parallel")
    convert_calvin(str(tmp_path / "calvin"), serial)
    meta = convert_calvin(str(tmp_path / "calvin"), parallel, parallel=2)
    assert [s.file for s in meta.splits["train"].shards] == ["train/part-00000.parquet", "train/part-00001.parquet"]
    for split in ("train", "val"):
        a, b = read_rows(serial, split), read_rows(parallel, split)
        assert [r["step_ids"] for r in a] == [r["step_ids"] for r in b]
        assert [r["actions"] for r in a] == [r["actions"] for r in b]
    serial_stats = load_metadata(serial).splits["train"].action_stats
    for key in ("min", "max", "mean", "std", "q01", "q99"):
        np.testing.assert_allclose(getattr(serial_stats, key), getattr(meta.splits["train"].action_stats, key))
    assert validate_dataset(parallel) == []
