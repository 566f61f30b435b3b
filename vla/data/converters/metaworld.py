"""Demonstrations of MetaWorld tasks (``vla.sim.metaworld``) by their scripted experts.

Every demonstration slot ``i`` of a task (``episodes_per_task`` training slots, then
``val_episodes_per_task`` validation ones) tries the scene seeds ``seed + i``,
``seed + i + slots``, ``seed + i + 2 * slots``, ... (``max_attempts`` of them): the first scene
the expert solves is kept, the failed attempts are dropped and counted. Each attempt is first
run without rendering (physics only, ~1 ms a step) and rendered only when it succeeded, so a
failing expert costs little and a task whose expert never succeeds is reported, not retried
forever. Seeds stay below ``vla.eval.rollout.EVAL_SEED_OFFSET``: evaluation never replays a
demonstrated scene. The output depends on the arguments only, not on ``parallel``.

With ``action_noise`` > 0 the demonstrations are DART-style as the synthetic ones: the motion
executed is the expert's ``dx, dy, dz`` plus Gaussian noise (from a generator of the scene seed),
the action recorded is the expert's own.

Beside ``metadata.json`` the dataset root holds ``metaworld.json`` (``SIDECAR``): the tasks,
seeds, image size, cameras and the failed attempts per task. The evaluation reads it to run
the tasks of the training data in the same conditions.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from vla.action_space import ActionSpace
from vla.data.episodes import Episode
from vla.data.metadata import DataError, DatasetMetadata
from vla.data.writer import EpisodeWriter
from vla.sim.metaworld import (
    ACTION_NAMES,
    CAMERAS,
    INSTRUCTIONS,
    MAX_PATH_LENGTH,
    MT50,
    STATE_NAMES,
    MetaWorldConfig,
    MetaWorldEnv,
    MetaWorldError,
    check_gl,
    resolve_tasks,
)
from vla.storage import filesystem

log = logging.getLogger("vla.data")

SOURCE = "metaworld"
SIDECAR = "metaworld.json"
SEED_LIMIT = 1_000_000  # vla.eval.rollout.EVAL_SEED_OFFSET: evaluation scenes start here
EPISODE_ID_STRIDE = SEED_LIMIT  # episode id = task index * stride + scene seed (unique per split)
# dx, dy, dz and the gripper effort, which is continuous (the experts hold 0, 0.6, 1, -1): regressed
ACTION_SPACE = ActionSpace(dim=4, names=ACTION_NAMES, binary_grippers=(), continuous_grippers=(3,))


@dataclass
class MetaWorldData:
    """What ``prepare_data.py metaworld`` generates (validated before any resource is taken)."""

    tasks: list[str]
    episodes_per_task: int = 40
    val_episodes_per_task: int = 2
    seed: int = 0
    image_size: int = 64
    action_noise: float = 0.0
    max_attempts: int = 3
    max_steps: int = MAX_PATH_LENGTH  # an attempt not solved within this many steps fails
    cameras: list[str] = field(default_factory=lambda: list(CAMERAS))

    def validate(self) -> None:
        minimums = (("--episodes-per-task", self.episodes_per_task, 1), ("--val-episodes-per-task",
                    self.val_episodes_per_task, 0), ("--seed", self.seed, 0), ("--image-size", self.image_size, 8),
                    ("--max-attempts", self.max_attempts, 1))
        for flag, value, minimum in minimums:
            if value < minimum:
                raise DataError(f"{flag}: must be >= {minimum}, got {value}")
        if not 1 <= self.max_steps <= MAX_PATH_LENGTH:
            raise DataError(f"--max-steps: must be in [1, {MAX_PATH_LENGTH}], got {self.max_steps}")
        if not 0 <= self.action_noise <= 1:
            raise DataError(f"--action-noise: must be in [0, 1], got {self.action_noise}")
        last = self.seed_of(self.slots - 1, self.max_attempts - 1)
        if last >= SEED_LIMIT:
            raise DataError(f"--seed: demonstration seeds would reach {last}, past {SEED_LIMIT - 1} "
                            f"(evaluation scenes start at {SEED_LIMIT})")

    @property
    def slots(self) -> int:
        return self.episodes_per_task + self.val_episodes_per_task

    def seed_of(self, slot: int, attempt: int) -> int:
        return self.seed + slot + attempt * self.slots

    def split_of(self, slot: int) -> str:
        return "train" if slot < self.episodes_per_task else "val"


def rollout(env: MetaWorldEnv, seed: int, action_noise: float) -> tuple[bool, list[dict], list[np.ndarray]]:
    """One expert episode of scene ``seed`` (until success or the env's ``max_steps``): whether it
    succeeded, the observation before each step and the expert's action in it."""
    noise = np.random.default_rng([seed, 1])
    obs = env.reset(seed)
    observations, actions, done, success = [], [], False, False
    while not done:
        action = env.expert_action()
        observations.append(obs)
        actions.append(action)
        executed = action.copy()
        executed[:3] += action_noise * noise.standard_normal(3)
        obs, success, done = env.step(executed)
    return success, observations, actions


def demonstrate(env: MetaWorldEnv, data: MetaWorldData, slot: int) -> tuple[Episode | None, int]:
    """The demonstration of ``slot`` and the failed attempts before it (None: every attempt failed)."""
    for attempt in range(data.max_attempts):
        seed = data.seed_of(slot, attempt)
        env.rendering = False
        if not rollout(env, seed, data.action_noise)[0]:
            continue
        env.rendering = True
        success, observations, actions = rollout(env, seed, data.action_noise)
        assert success, f"{env.task} seed {seed}: the rendered replay of a solved scene failed"
        episode = Episode(
            instruction=env.instruction,
            actions=np.stack(actions),
            images={c: np.stack([o["images"][c] for o in observations]) for c in data.cameras},
            state=np.stack([o["state"] for o in observations]),
            episode_id=MT50.index(env.task) * EPISODE_ID_STRIDE + seed,
        )
        return episode, attempt
    return None, data.max_attempts


def demonstrate_slots(data: MetaWorldData, slots: list[tuple[str, int]]) -> tuple[list[tuple[str, Episode]], dict]:
    """Demonstrations of ``(task, slot)`` pairs, in order; also the failed attempts and lost slots per task."""
    import torch

    torch.set_num_threads(1)
    envs: dict[str, MetaWorldEnv] = {}
    config = MetaWorldConfig(image_size=data.image_size, max_steps=data.max_steps, cameras=tuple(data.cameras))
    episodes, failed = [], {}
    for task, slot in slots:
        env = envs.get(task) or envs.setdefault(task, MetaWorldEnv(task, config))
        episode, failures = demonstrate(env, data, slot)
        counts = failed.setdefault(task, {"failed_attempts": 0, "lost_slots": 0})
        counts["failed_attempts"] += failures
        counts["lost_slots"] += episode is None
        if episode is not None:
            episodes.append((data.split_of(slot), episode))
    for env in envs.values():
        env.close()
    return episodes, failed


def _jobs(data: MetaWorldData, parallel: int) -> Iterator[tuple[list[tuple[str, Episode]], dict]]:
    """Results of every slot, in order and a few slots at a time: in this process, or as Ray tasks
    of which ``parallel`` run at once."""
    slots = [(task, slot) for task in data.tasks for slot in range(data.slots)]
    size = max(1, math.ceil(len(slots) / (4 * max(parallel, 1))))
    chunks = [slots[i:i + size] for i in range(0, len(slots), size)]
    bar = tqdm(total=len(slots), desc="metaworld demonstrations", unit="slot")
    if parallel <= 1:
        for chunk in chunks:
            yield demonstrate_slots(data, chunk)
            bar.update(len(chunk))
        return
    import ray

    if not ray.is_initialized():  # only now, once every argument has been checked
        ray.init(log_to_driver=False)
    task = ray.remote(num_cpus=1)(demonstrate_slots)
    pending = deque(task.remote(data, chunk) for chunk in chunks[:parallel])
    for k, chunk in enumerate(chunks):  # in order: the dataset does not depend on which task finished first
        result = ray.get(pending.popleft())
        if k + parallel < len(chunks):
            pending.append(task.remote(data, chunks[k + parallel]))
        bar.update(len(chunk))
        yield result


def convert_metaworld(root: str, data: MetaWorldData, *, parallel: int = 0,
                      max_shard_bytes: int | None = None) -> tuple[DatasetMetadata, dict]:
    """Write the demonstrations of ``data`` into ``root``; returns the metadata and the sidecar.

    Refuses bad arguments, a missing package or OpenGL before any work (one line); raises
    ``DataError`` naming the task when its expert solved none of its attempts.
    """
    data.validate()
    if parallel < 0:
        raise DataError(f"--parallel: must be >= 0, got {parallel}")
    try:
        check_gl()
    except MetaWorldError as err:
        raise DataError(str(err)) from None
    writer_args = {"max_shard_bytes": max_shard_bytes} if max_shard_bytes else {}
    failed: dict[str, dict] = {task: {"failed_attempts": 0, "lost_slots": 0} for task in data.tasks}
    written = {task: 0 for task in data.tasks}
    with EpisodeWriter(root, data.cameras, source=SOURCE, action_space=ACTION_SPACE, state_names=list(STATE_NAMES),
                       **writer_args) as writer:
        for episodes, counts in _jobs(data, parallel):
            for split, episode in episodes:
                writer.write(episode, split)
                written[task_of(episode)] += 1
            for task, count in counts.items():
                for key, value in count.items():
                    failed[task][key] += value
        hopeless = [task for task, n in written.items() if n == 0]
        if hopeless:  # leaving the block with an exception discards the staged dataset
            raise DataError(f"the scripted expert solved none of its {data.slots * data.max_attempts} attempts on "
                            f"{', '.join(hopeless)}; leave it out of --tasks or raise --max-attempts")
    sidecar = {**asdict(data), "instructions": {t: INSTRUCTIONS[t] for t in data.tasks},
               "episodes_written": written, "failures": failed}
    write_sidecar(root, sidecar)
    for task, counts in failed.items():
        if counts["failed_attempts"]:
            log.info("%s: %d failed demonstration(s) dropped, %d slot(s) left without one", task,
                     counts["failed_attempts"], counts["lost_slots"])
    return writer.meta, sidecar


def task_of(episode: Episode) -> str:
    return MT50[int(episode.episode_id) // EPISODE_ID_STRIDE]


def write_sidecar(root: str, sidecar: dict) -> None:
    fs, path = filesystem(root)
    with fs.open_output_stream(f"{path}/{SIDECAR}") as f:
        f.write(json.dumps(sidecar, indent=2).encode())


def read_sidecar(root: str) -> dict:
    """``metaworld.json`` of a MetaWorld dataset root; a missing one is a ``DataError`` naming it."""
    fs, path = filesystem(root)
    try:
        with fs.open_input_stream(f"{path}/{SIDECAR}") as f:
            return json.loads(f.read())
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise DataError(f"{root.rstrip('/')}/{SIDECAR}: cannot be read ({type(err).__name__}); "
                        f"regenerate the dataset with prepare_data.py metaworld") from None


def parse_tasks(text: str) -> list[str]:
    """``--tasks`` as a list of task names; an unknown name is a ``DataError`` listing the valid ones."""
    try:
        return resolve_tasks(text)
    except MetaWorldError as err:
        raise DataError(str(err)) from None
