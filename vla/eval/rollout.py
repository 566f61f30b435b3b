"""Closed-loop rollouts in an evaluation environment (``vla.eval.environments``: the built-in
synthetic task or MetaWorld), spread over Ray tasks.

A policy here is anything with ``reset(env_index=None)`` and ``act_batch(observations) -> [E, D]``
(``vla.policy.Policy`` trained on the environment's action space, or the baselines below). Each Ray task builds its
policy from a picklable factory and steps its share of the episodes in lockstep, so a trained
policy encodes all of its environments' frames in one forward pass per step. A policy whose
``observes`` is False (the baselines) gets no rendered images, except in recorded episodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from vla.eval.environments import Environment, EvalEpisode


class BatchPolicy(Protocol):
    def reset(self, env_index: int | None = None) -> None: ...

    def act_batch(self, observations: list[dict]) -> np.ndarray: ...


PolicyFactory = Callable[[], BatchPolicy]


@dataclass
class RandomPolicy:
    """Uniform actions over the action space ``[-1, 1]^dim`` (a binary gripper closes when < 0)."""

    seed: int = 0
    dim: int = 7
    observes = False  # acts blind: its environments need not render

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def reset(self, env_index: int | None = None) -> None:
        return None

    def act_batch(self, observations: list[dict]) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, size=(len(observations), self.dim)).astype(np.float32)

    def __call__(self) -> RandomPolicy:  # a factory of itself, for Ray tasks
        return RandomPolicy(self.seed, self.dim)


@dataclass
class ConstantPolicy:
    """The same action at every step (the baseline: the dataset's mean action, gripper open)."""

    action: list[float]
    observes = False  # acts blind: its environments need not render

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
    outcome: str = ""  # one of the environment's outcomes, once the episode has ended
    frames: list[dict[str, np.ndarray]] = field(default_factory=list)  # camera images per step, if recorded
    task: str = ""


def run_episodes(policy: BatchPolicy, episodes: list[EvalEpisode], env: Environment,
                 record: int = 0) -> list[EpisodeResult]:
    """The episodes, all stepped together; the first ``record`` keep their frames.

    A finished environment keeps receiving its last observation (its actions are ignored), so
    every environment's history stays aligned with its own steps.
    """
    observes = getattr(policy, "observes", True)
    envs = [env.make(e.task, render=observes or i < record) for i, e in enumerate(episodes)]
    observations = [sim.reset(e.seed) for sim, e in zip(envs, episodes)]
    results = [EpisodeResult(e.seed, obs["instruction"], False, 0, task=e.task)
               for e, obs in zip(episodes, observations)]
    for i in range(min(record, len(episodes))):
        results[i].frames.append(dict(observations[i]["images"]))
    done = [False] * len(envs)
    policy.reset()
    while not all(done):
        actions = policy.act_batch(observations)
        for i, sim in enumerate(envs):
            if done[i]:
                continue
            observations[i], success, done[i] = sim.step(actions[i])
            results[i].success, results[i].steps = bool(success), results[i].steps + 1
            if done[i]:
                results[i].outcome = sim.outcome()
                sim.close()
            if i < record:
                results[i].frames.append(dict(observations[i]["images"]))
    return results


def _rollout_task(factory: PolicyFactory, episodes: list[EvalEpisode], env: Environment,
                  record: int) -> list[EpisodeResult]:
    import torch

    torch.set_num_threads(1)  # one CPU per task: tasks run side by side
    return run_episodes(factory(), episodes, env, record)


def rollout_in_parallel(factories: dict[str, PolicyFactory], episodes: list[EvalEpisode], env: Environment, *,
                        tasks_per_policy: int = 2, record: int = 3) -> dict[str, list[EpisodeResult]]:
    """Every policy on the same scenes, as ``tasks_per_policy`` Ray tasks each (all submitted at once).

    The first ``record`` episodes of each policy keep their frames (for image strips).
    """
    import ray

    task = ray.remote(num_cpus=1)(_rollout_task)
    size = math.ceil(len(episodes) / max(1, tasks_per_policy))
    chunks = [episodes[i:i + size] for i in range(0, len(episodes), size)]
    futures = {name: [task.remote(factory, chunk, env, max(0, record - k * size)) for k, chunk in enumerate(chunks)]
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


def success_counts(results: list[EpisodeResult]) -> dict:
    """Success rate, its 95% interval and the counts of some episodes."""
    successes = sum(r.success for r in results)
    return {
        "success_rate": successes / max(1, len(results)),
        "success_ci95": list(wilson_interval(successes, len(results))),
        "successes": successes,
        "episodes": len(results),
    }


def summarize(results: list[EpisodeResult], outcomes: tuple[str, ...]) -> dict:
    """Success rate, its 95% interval, counts, episode lengths, outcomes and per-task success of
    one policy's episodes."""
    lengths = [r.steps for r in results if r.success]
    tasks = dict.fromkeys(r.task for r in results)
    return {
        **success_counts(results),
        "mean_steps": float(np.mean([r.steps for r in results])) if results else 0.0,
        "mean_steps_to_success": float(np.mean(lengths)) if lengths else None,
        "outcomes": {outcome: sum(r.outcome == outcome for r in results) for outcome in outcomes},
        "per_task": {task: success_counts([r for r in results if r.task == task]) for task in tasks},
    }
