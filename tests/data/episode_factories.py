"""Builders of tiny episodes and source folders for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vla.data import Episode

# Two CALVIN splits; frame ids start far from 0 and have gaps between the segments.
CALVIN_SEGMENTS = {
    "training": [("open the drawer", 358656, 358663), ("push the red block", 358670, 358675),
                 ("lift the pink block", 360001, 360009)],
    "validation": [("turn on the light", 53819, 53824)],
}


def make_calvin(root: Path) -> dict:
    """Write a CALVIN-layout folder; returns {split: {frame_id: frame dict}} for checking."""
    rng = np.random.default_rng(0)
    frames = {}
    for split, segments in CALVIN_SEGMENTS.items():
        folder = root / split
        (folder / "lang_annotations").mkdir(parents=True)
        frames[split] = {}
        for _, start, end in segments:
            for frame in range(start, end + 1):
                rel = rng.uniform(-1, 1, 7)  # float64, as the real debug split stores it
                rel[6] = rng.choice([-1.0, 1.0])
                data = {
                    "rgb_static": rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),
                    "rgb_gripper": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
                    "rel_actions": rel,
                    "actions": rng.normal(size=7),
                    "robot_obs": rng.normal(size=15),
                    "scene_obs": rng.normal(size=24),
                }
                np.savez(folder / f"episode_{frame:07d}.npz", **data)
                frames[split][frame] = data
        ann = {
            "language": {"ann": [s[0] for s in segments], "task": ["task"] * len(segments),
                         "emb": np.zeros((len(segments), 1, 8), np.float32)},
            "info": {"indx": [(s[1], s[2]) for s in segments], "episodes": []},
        }
        np.save(folder / "lang_annotations" / "auto_lang_ann.npy", ann, allow_pickle=True)
    return frames


def marker_episode(index: int, steps: int, size: int = 16) -> Episode:
    """Actions and images that say which episode and step they come from:
    action = (episode / 100, step / 100, 0, 0, 0, 0, gripper), frames of one solid colour
    per episode whose green channel is the step."""
    actions = np.zeros((steps, 7), np.float32)
    actions[:, 0] = index / 100
    actions[:, 1] = np.arange(steps) / 100
    actions[:, 6] = np.where(np.arange(steps) % 2, -1.0, 1.0)
    frames = np.zeros((steps, size, size, 3), np.uint8)
    frames[..., 0] = 10 * index
    frames[..., 1] = np.arange(steps)[:, None, None]
    return Episode(instruction=f"episode {index}", actions=actions,
                   images={"static": frames, "wrist": 255 - frames}, episode_id=index)


MARKER_LENGTHS = [3, 7, 5, 1, 9, 4]
