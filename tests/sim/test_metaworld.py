"""MetaWorld behind the simulator interface: task lists, seeded scenes, the scripted experts,
the OpenGL check and the demonstration converter's refusals (before any work is done)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vla.sim.metaworld import (  # first: it sets MUJOCO_GL before mujoco is imported
    INSTRUCTIONS,
    MT10,
    MT50,
    MetaWorldEnv,
    MetaWorldError,
    resolve_tasks,
)

pytest.importorskip("metaworld", reason="pip install -e '.[metaworld]'")

from vla.data import DataError  # noqa: E402
from vla.data.converters.metaworld import MetaWorldData, convert_metaworld, demonstrate_slots  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_task_lists_are_the_benchmarks_and_every_task_has_an_expert_and_an_instruction():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3
    from metaworld.policies import ENV_POLICY_MAP

    assert list(MT10) == list(MT10_V3) and set(MT50) == set(ALL_V3_ENVIRONMENTS) and len(MT50) == 50
    assert set(INSTRUCTIONS) <= set(ENV_POLICY_MAP)
    assert resolve_tasks("MT10") == list(MT10) and resolve_tasks("push-v3, reach-v3,push-v3") == ["push-v3", "reach-v3"]
    with pytest.raises(MetaWorldError, match=r"unknown MetaWorld task 'reach'; valid: MT10, MT50, assembly-v3"):
        resolve_tasks("reach")


def test_a_seed_fixes_the_scene_and_the_expert_solves_it():
    env = MetaWorldEnv("push-v3")
    first, other = env.reset(5), env.reset(6)
    for _ in range(10):
        env.step(env.expert_action())
    again = MetaWorldEnv("push-v3").reset(5)  # another env, and this one after an episode: the same frames
    env.reset(5)
    assert set(first["images"]) == {"corner2", "gripperPOV"} and first["images"]["corner2"].shape == (64, 64, 3)
    for camera in first["images"]:
        assert np.array_equal(first["images"][camera], again["images"][camera])
        assert np.array_equal(first["images"][camera], env.observation()["images"][camera])
    assert not np.array_equal(first["images"]["corner2"], other["images"]["corner2"])  # the puck moved
    assert first["state"].shape == (4,) and first["instruction"] == "Push the puck to a goal"
    done = False
    while not done:
        _, success, done = env.step(env.expert_action())
    assert success and env.outcome() == "success" and env.steps < 100
    env.close()


def test_demonstrations_are_reproducible_and_success_only():
    data = MetaWorldData(["reach-v3"], episodes_per_task=1, val_episodes_per_task=1, image_size=16, action_noise=0.3)
    slots = [("reach-v3", 0), ("reach-v3", 1)]
    (first, failed), (again, _) = demonstrate_slots(data, slots), demonstrate_slots(data, slots)
    assert [split for split, _ in first] == ["train", "val"] and failed["reach-v3"]["lost_slots"] == 0
    for (_, a), (_, b) in zip(first, again):
        assert a.episode_id == b.episode_id and np.array_equal(a.actions, b.actions)
        assert np.array_equal(a.images["gripperPOV"], b.images["gripperPOV"])
        assert a.actions.shape[1] == 4 and a.state.shape == (len(a.actions), 4)


@pytest.mark.parametrize("changes, message", [
    ({"episodes_per_task": 0}, "--episodes-per-task: must be >= 1, got 0"),
    ({"image_size": -4}, "--image-size: must be >= 8, got -4"),
    ({"action_noise": 2.0}, "--action-noise: must be in [0, 1], got 2.0"),
    ({"seed": 999_990}, "--seed: demonstration seeds would reach"),
])
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, changes, message):
    data = MetaWorldData(["reach-v3"], **{"episodes_per_task": 2, **changes})
    with pytest.raises(DataError) as err:
        convert_metaworld(str(tmp_path / "out"), data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_an_expert_that_never_succeeds_is_reported_not_retried_forever(tmp_path):
    data = MetaWorldData(["reach-v3"], episodes_per_task=2, val_episodes_per_task=0, max_attempts=2, max_steps=3)
    with pytest.raises(DataError, match="solved none of its 4 attempts on reach-v3"):
        convert_metaworld(str(tmp_path / "out"), data)
    assert not (tmp_path / "out").exists()


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / "prepare_data.py"), *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_the_cli_names_the_valid_tasks_and_the_gl_packages_in_one_line_before_ray(tmp_path):
    out = str(tmp_path / "out")
    unknown = run_cli("metaworld", out, "--tasks", "reach-v3,pushh-v3", "--episodes-per-task", "2")
    assert unknown.returncode == 1 and "unknown MetaWorld task 'pushh-v3'; valid: MT10, MT50" in unknown.stderr
    no_gl = run_cli("metaworld", out, "--tasks", "reach-v3", "--episodes-per-task", "2", MUJOCO_GL="nonexistent")
    lines = no_gl.stderr.strip().splitlines()
    assert no_gl.returncode == 1 and len(lines) == 1, no_gl.stderr
    assert "libegl1 libegl-mesa0 libgl1-mesa-dri" in lines[0] and "libosmesa6" in lines[0]
    assert "ray" not in no_gl.stderr.lower() and not Path(out).exists()
