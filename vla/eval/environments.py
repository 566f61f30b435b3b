"""The environments closed-loop evaluation runs in, behind one small interface.

An ``Environment`` is a picklable description (it travels to Ray tasks) with a ``name``, its
``tasks``, ``max_steps``, the ``outcomes`` an episode can end in, the action size and
``make(task, render) -> EvalEnv``; an ``EvalEnv`` has ``reset(seed) -> obs``,
``step(action) -> (obs, success, done)``, ``outcome()`` and ``close()``. Two exist:

- ``SyntheticEnvironment``: the built-in pick-up task (``vla.sim``), one task;
- ``MetaWorldEnvironment``: MetaWorld tasks (``vla.sim.metaworld``).

``environment_for(run)`` picks the one the run's training data came from (the dataset's
``source``), so ``pipelines/evaluate.py``, evaluation during training (``train.eval_every``)
and sweeps scored closed loop (``sweep.closed_loop``) all evaluate through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vla.config import Config
from vla.data import load_metadata
from vla.sim import OUTCOMES as SYNTHETIC_OUTCOMES
from vla.sim import SimConfig, SyntheticEnv
from vla.sim.metaworld import OUTCOMES as METAWORLD_OUTCOMES
from vla.sim.metaworld import MetaWorldConfig, MetaWorldEnv

EVAL_SEED_OFFSET = 1_000_000  # evaluation scenes never coincide with the demonstrations' seeds


class EvalEnv(Protocol):
    def reset(self, seed: int) -> dict: ...

    def step(self, action) -> tuple[dict, bool, bool]: ...

    def outcome(self) -> str: ...

    def close(self) -> None: ...


class Environment(Protocol):
    name: str
    tasks: tuple[str, ...]
    max_steps: int
    outcomes: tuple[str, ...]
    action_dim: int

    def make(self, task: str, render: bool = True) -> EvalEnv: ...


@dataclass(frozen=True)
class EvalEpisode:
    task: str
    seed: int


def evaluation_episodes(env: Environment, episodes: int, seed: int = 0) -> list[EvalEpisode]:
    """``episodes`` episodes over the environment's tasks in turn; the ``k``-th episode of a task
    runs scene ``EVAL_SEED_OFFSET + seed + k`` (never a demonstration's scene)."""
    n = len(env.tasks)
    return [EvalEpisode(env.tasks[i % n], EVAL_SEED_OFFSET + seed + i // n) for i in range(episodes)]


@dataclass(frozen=True)
class SyntheticEnvironment:
    sim: SimConfig
    name: str = "synthetic"
    tasks: tuple[str, ...] = ("pick",)
    outcomes: tuple[str, ...] = SYNTHETIC_OUTCOMES
    action_dim: int = 7

    @property
    def max_steps(self) -> int:
        return self.sim.max_steps

    def make(self, task: str, render: bool = True) -> SyntheticEnv:
        return SyntheticEnv(self.sim)  # rendering the synthetic scene is cheap: always on


@dataclass(frozen=True)
class MetaWorldEnvironment:
    tasks: tuple[str, ...]
    config: MetaWorldConfig = field(default_factory=MetaWorldConfig)
    name: str = "metaworld"
    outcomes: tuple[str, ...] = METAWORLD_OUTCOMES
    action_dim: int = 4

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    def make(self, task: str, render: bool = True) -> MetaWorldEnv:
        return MetaWorldEnv(task, self.config, render)


def environment_for(run: Config, tasks: list[str] | None = None, max_steps: int | None = None) -> Environment:
    """The environment of the run's training data: MetaWorld (its tasks, or ``tasks``; the
    demonstrations' image size and cameras) for a MetaWorld dataset, else the synthetic task at
    the model's image size (its hidden-state variant for a dataset written with the gripper hidden)."""
    from vla.data.converters.metaworld import SOURCE, read_sidecar
    from vla.data.converters.synthetic import HIDDEN_STATE_SOURCE

    source = load_metadata(run.data.path).source if run.data.path else "synthetic"
    if source != SOURCE:
        return SyntheticEnvironment(SimConfig(image_size=run.model.image_size,
                                              show_gripper=source != HIDDEN_STATE_SOURCE))

    generated = read_sidecar(run.data.path)
    config = MetaWorldConfig(image_size=generated["image_size"], cameras=tuple(generated["cameras"]))
    if max_steps is not None:
        config.max_steps = max_steps
    config.validate()
    return MetaWorldEnvironment(tuple(tasks or generated["tasks"]), config)
