"""CALVIN's long-horizon protocol: the chain logic on a stand-in env, the real env when installed."""

from __future__ import annotations

import numpy as np
import pytest

from vla.eval.calvin import calvin_available, calvin_observation, run_chain, summarize_chains


class CountingEnv:
    """A stand-in CALVIN env: a subtask is done after ``needed[subtask]`` steps (None: never)."""

    def __init__(self, needed: dict[str, int | None]):
        self.needed = needed
        self.steps = 0
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def get_obs(self) -> dict:
        image = np.zeros((8, 8, 3), np.uint8)
        return {"rgb_obs": {"rgb_static": image, "rgb_gripper": image}}

    def get_info(self) -> dict:
        return {"steps": self.steps}

    def step(self, action):
        self.steps += 1
        return self.get_obs(), 0.0, False, {"steps": self.steps}


class Oracle:
    def __init__(self, needed: dict[str, int | None]):
        self.needed = needed

    def get_task_info_for_set(self, start_info: dict, info: dict, tasks: set[str]) -> set[str]:
        (task,) = tasks
        needed = self.needed[task]
        return {task} if needed is not None and info["steps"] - start_info["steps"] >= needed else set()


class RecordingPolicy:
    def __init__(self):
        self.instructions: list[str] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def act(self, observation: dict) -> np.ndarray:
        assert set(observation["images"]) == {"static", "wrist"}
        self.instructions.append(observation["instruction"])
        return np.zeros(7, np.float32)


def test_chain_stops_at_its_first_failure_and_resets_the_policy_per_subtask():
    needed = {"open_drawer": 3, "lift_red_block": 5, "push_pink": None, "turn_on_led": 1, "stack": 1}
    annotations = {task: [f"please {task}", "other wording"] for task in needed}
    env, policy = CountingEnv(needed), RecordingPolicy()
    done = run_chain(env, policy, Oracle(needed), env.reset, list(needed), annotations, ep_len=10)
    assert done == 2
    assert env.resets == 1 and policy.resets == 3  # reset for every subtask tried
    assert policy.instructions == ["please open_drawer"] * 3 + ["please lift_red_block"] * 5 + ["please push_pink"] * 10


def test_summary_is_calvins_success_in_a_row_and_average_length():
    summary = summarize_chains([0, 1, 5, 2])
    assert summary["chains"] == 4
    assert summary["success_rates"] == [0.75, 0.5, 0.25, 0.25, 0.25]
    assert summary["average_length"] == 2.0


def test_observation_uses_the_calvin_converters_camera_names():
    static, gripper = np.zeros((200, 200, 3), np.uint8), np.ones((84, 84, 3), np.uint8)
    obs = calvin_observation({"rgb_obs": {"rgb_static": static, "rgb_gripper": gripper}}, "open the drawer")
    assert obs["images"]["static"] is static and obs["images"]["wrist"] is gripper


def test_real_calvin_env_when_installed():
    pytest.importorskip("calvin_env", reason="CALVIN is an optional dependency (github.com/mees/calvin)")
    pytest.importorskip("calvin_agent", reason="CALVIN's evaluation helpers come with calvin_agent")
    assert calvin_available()
