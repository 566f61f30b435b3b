"""Demonstrations of the synthetic pick-up task (``vla.sim``), rolled out by its scripted expert.

With ``action_noise`` > 0 the demonstrations are DART-style (Laskey et al., 2017): the motion
executed is the expert's plus Gaussian noise, the action recorded is the expert's own. The
demonstrations then show how to come back from the small errors a learned policy makes, which
expert-only rollouts never visit. ``show_gripper=False`` writes the hidden-state variant
(``vla.sim.env``: the gripper is only in the state), recorded as ``source: synthetic-hidden-state``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np

from vla.data.episodes import Episode
from vla.data.metadata import DataError, DatasetMetadata
from vla.data.writer import write_dataset
from vla.sim import SimConfig, SyntheticEnv

CAMERAS = ["static", "wrist"]
HIDDEN_STATE_SOURCE = "synthetic-hidden-state"


def rollout(env: SyntheticEnv, seed: int, action_noise: float = 0.0) -> Episode:
    """One expert episode from scene ``seed``: the frame of each step and the expert's action in it.

    ``action_noise``: standard deviation of the noise added to the executed ``dx, dy, dz`` (the
    gripper command is executed as the expert gives it); drawn from a generator of ``seed``.
    """
    noise = np.random.default_rng([seed, 1])
    obs = env.reset(seed)
    frames: dict[str, list[np.ndarray]] = {c: [] for c in CAMERAS}
    actions, states, done = [], [], False
    while not done:
        action = env.expert_action()
        for camera in CAMERAS:
            frames[camera].append(obs["images"][camera])
        actions.append(action)
        states.append(obs["state"])
        executed = action.copy()
        executed[:3] += action_noise * noise.standard_normal(3)
        obs, _, done = env.step(executed)
    return Episode(
        instruction=obs["instruction"],
        actions=np.stack(actions),
        images={c: np.stack(f) for c, f in frames.items()},
        state=np.stack(states),
        episode_id=seed,
    )


def _episodes(seeds: list[tuple[str, int]], sim: SimConfig, action_noise: float) -> Iterator[tuple[str, Episode]]:
    env = SyntheticEnv(sim)
    for split, seed in seeds:
        yield split, rollout(env, seed, action_noise)


def convert_synthetic(
    root: str,
    *,
    episodes: int = 200,
    val_episodes: int = 20,
    seed: int = 0,
    image_size: int = 32,
    parallel: int = 0,
    action_noise: float = 0.0,
    max_shard_bytes: int | None = None,
    show_gripper: bool = True,
) -> DatasetMetadata:
    """Write ``episodes`` training and ``val_episodes`` validation demonstrations into ``root``.

    Episode ``i`` of the whole set uses scene seed ``seed + i`` (so the splits never share a
    scene); ``action_noise`` perturbs the executed motion (module docstring); ``parallel > 1``
    spreads the episodes over that many Ray tasks.
    """
    minimums = (("episodes", episodes, 1), ("val_episodes", val_episodes, 0), ("seed", seed, 0),
                ("image_size", image_size, 8), ("parallel", parallel, 0))
    for name, value, minimum in minimums:
        if value < minimum:
            raise DataError(f"{name}: must be >= {minimum}, got {value}")
    if not 0 <= action_noise <= 1:
        raise DataError(f"action_noise: must be in [0, 1], got {action_noise}")
    sim = SimConfig(image_size=image_size, show_gripper=show_gripper)
    seeds = [("train", seed + i) for i in range(episodes)]
    seeds += [("val", seed + episodes + i) for i in range(val_episodes)]
    jobs_n = max(parallel, 1)
    jobs = [partial(_episodes, seeds[i::jobs_n], sim, action_noise) for i in range(jobs_n)]
    return write_dataset(root, jobs, CAMERAS, parallel=parallel > 1,
                         source="synthetic" if show_gripper else HIDDEN_STATE_SOURCE,
                         desc="synthetic", max_shard_bytes=max_shard_bytes,
                         state_names=["x", "y", "z", "gripper"])
