"""Demonstrations of the synthetic pick-up task (``vla.sim``), rolled out by its scripted expert."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np

from vla.data.episodes import Episode
from vla.data.metadata import DataError, DatasetMetadata
from vla.data.writer import write_dataset
from vla.sim import SimConfig, SyntheticEnv

CAMERAS = ["static", "wrist"]


def rollout(env: SyntheticEnv, seed: int) -> Episode:
    """One expert episode from scene ``seed``: the frame of each step and the action taken in it."""
    obs = env.reset(seed)
    frames: dict[str, list[np.ndarray]] = {c: [] for c in CAMERAS}
    actions, states, done = [], [], False
    while not done:
        action = env.expert_action()
        for camera in CAMERAS:
            frames[camera].append(obs["images"][camera])
        actions.append(action)
        states.append(obs["state"])
        obs, _, done = env.step(action)
    return Episode(
        instruction=obs["instruction"],
        actions=np.stack(actions),
        images={c: np.stack(f) for c, f in frames.items()},
        state=np.stack(states),
        episode_id=seed,
    )


def _episodes(seeds: list[tuple[str, int]], sim: SimConfig) -> Iterator[tuple[str, Episode]]:
    env = SyntheticEnv(sim)
    for split, seed in seeds:
        yield split, rollout(env, seed)


def convert_synthetic(
    root: str,
    *,
    episodes: int = 200,
    val_episodes: int = 20,
    seed: int = 0,
    image_size: int = 32,
    parallel: int = 0,
    max_shard_bytes: int | None = None,
) -> DatasetMetadata:
    """Write ``episodes`` training and ``val_episodes`` validation demonstrations into ``root``.

    Episode ``i`` of the whole set uses scene seed ``seed + i`` (so the splits never share a
    scene); ``parallel > 1`` spreads the episodes over that many Ray tasks.
    """
    minimums = (("episodes", episodes, 1), ("val_episodes", val_episodes, 0), ("seed", seed, 0),
                ("image_size", image_size, 8), ("parallel", parallel, 0))
    for name, value, minimum in minimums:
        if value < minimum:
            raise DataError(f"{name}: must be >= {minimum}, got {value}")
    sim = SimConfig(image_size=image_size)
    seeds = [("train", seed + i) for i in range(episodes)]
    seeds += [("val", seed + episodes + i) for i in range(val_episodes)]
    jobs_n = max(parallel, 1)
    jobs = [partial(_episodes, seeds[i::jobs_n], sim) for i in range(jobs_n)]
    return write_dataset(root, jobs, CAMERAS, parallel=parallel > 1, source="synthetic",
                         desc="synthetic", max_shard_bytes=max_shard_bytes)
