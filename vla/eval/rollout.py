"""Closed-loop rollouts on the built-in ``SyntheticEnv``, spread over Ray tasks.

A policy here is anything with ``reset(env_index=None)`` and ``act_batch(observations) -> [E, 7]``
(``vla.policy.Policy`` trained on the task's 7-DOF arm, or the baselines below). Each Ray task builds its
policy from a picklable factory and steps its share of the episodes in lockstep, so a trained
policy encodes all of its environments' frames in one forward pass per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vla.sim import OUTCOMES, SimConfig, SyntheticEnv

CAMERAS = ("static", "wrist")
EVAL_SEED_OFFSET = 1_000_000  # evaluation scenes never coincide with the demonstrations' seeds


class BatchPolicy(Protocol):
    def reset(self, env_index: int | None = None) -> None: ...

    def act_batch(self, observations: list[dict]) -> np.ndarray: ...


PolicyFactory = Callable[[], BatchPolicy]


@dataclass
class RandomPolicy:
    """Uniform actions over the action space ``[-1, 1]^7`` (the gripper closes when dim 6 < 0)."""

    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def reset(self, env_index: int | None = None) -> None:
        return None

    def act_batch(self, observations: list[dict]) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, size=(len(observations), 7)).astype(np.float32)

    def __call__(self) -> RandomPolicy:  # a factory of itself, for Ray tasks
        return RandomPolicy(self.seed)


@dataclass
class ConstantPolicy:
    """The same action at every step (the baseline: the dataset's mean action, gripper open)."""

    action: list[float]

    def reset(self, env_index: int | None = None) -> None:
        return None

    def act_batch(self, observations: list[dict]) -> np.ndarray:
        return np.tile(np.asarray(self.action, np.float32), (len(observations), 1))

    def __call__(self) -> ConstantPolicy:
        return self


@dataclass
class EpisodeResult:
    seed: int
    instruction: str
    success: bool
    steps: int
    outcome: str = ""  # one of vla.sim.OUTCOMES, once the episode has ended
    frames: list[dict[str, np.ndarray]] = field(default_factory=list)  # camera images per step, if recorded


def run_episodes(policy: BatchPolicy, seeds: list[int], sim: SimConfig, record: int = 0) -> list[EpisodeResult]:
    """One episode per scene seed, all stepped together; the first ``record`` keep their frames.

    A finished environment keeps receiving its last observation (its actions are ignored), so
    every environment's history stays aligned with its own steps.
    """
    envs = [SyntheticEnv(sim) for _ in seeds]
    observations = [env.reset(seed) for env, seed in zip(envs, seeds)]
    results = [EpisodeResult(seed, obs["instruction"], False, 0) for seed, obs in zip(seeds, observations)]
    for i in range(min(record, len(seeds))):
        results[i].frames.append(dict(observations[i]["images"]))
    done = [False] * len(envs)
    policy.reset()
    while not all(done):
        actions = policy.act_batch(observations)
        for i, env in enumerate(envs):
            if done[i]:
                continue
            observations[i], success, done[i] = env.step(actions[i])
            results[i].success, results[i].steps = bool(success), results[i].steps + 1
            if done[i]:
                results[i].outcome = env.outcome()
            if i < record:
                results[i].frames.append(dict(observations[i]["images"]))
    return results


def _rollout_task(factory: PolicyFactory, seeds: list[int], sim: SimConfig, record: int) -> list[EpisodeResult]:
    import torch

    torch.set_num_threads(1)  # one CPU per task: tasks run side by side
    return run_episodes(factory(), seeds, sim, record)


def evaluation_seeds(episodes: int, seed: int = 0) -> list[int]:
    return [EVAL_SEED_OFFSET + seed + i for i in range(episodes)]


def rollout_in_parallel(factories: dict[str, PolicyFactory], seeds: list[int], sim: SimConfig, *,
                        tasks_per_policy: int = 2, record: int = 3) -> dict[str, list[EpisodeResult]]:
    """Every policy on the same scenes, as ``tasks_per_policy`` Ray tasks each (all submitted at once).

    The first ``record`` episodes of each policy keep their frames (for image strips).
    """
    import ray

    task = ray.remote(num_cpus=1)(_rollout_task)
    size = math.ceil(len(seeds) / max(1, tasks_per_policy))
    chunks = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    futures = {name: [task.remote(factory, chunk, sim, max(0, record - k * size)) for k, chunk in enumerate(chunks)]
               for name, factory in factories.items()}
    return {name: [r for part in ray.get(refs) for r in part] for name, refs in futures.items()}


def wilson_interval(successes: int, episodes: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate."""
    if episodes == 0:
        return 0.0, 0.0
    p = successes / episodes
    centre = (p + z * z / (2 * episodes)) / (1 + z * z / episodes)
    half = z * math.sqrt(p * (1 - p) / episodes + z * z / (4 * episodes**2)) / (1 + z * z / episodes)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(results: list[EpisodeResult]) -> dict:
    """Success rate, its 95% interval, counts, episode lengths and outcomes of one policy's episodes."""
    successes = sum(r.success for r in results)
    lengths = [r.steps for r in results if r.success]
    return {
        "success_rate": successes / max(1, len(results)),
        "success_ci95": list(wilson_interval(successes, len(results))),
        "successes": successes,
        "episodes": len(results),
        "mean_steps": float(np.mean([r.steps for r in results])) if results else 0.0,
        "mean_steps_to_success": float(np.mean(lengths)) if lengths else None,
        "outcomes": {outcome: sum(r.outcome == outcome for r in results) for outcome in OUTCOMES},
    }
