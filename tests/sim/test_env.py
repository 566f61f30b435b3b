"""The synthetic task: the expert solves it, seeds reproduce it, the target changes what happens."""

from __future__ import annotations

import numpy as np

from vla.sim import COLOURS, SimConfig, SyntheticEnv


def run_expert(env: SyntheticEnv, seed: int) -> tuple[bool, int, list[dict]]:
    obs, observations, done, success = env.reset(seed), [], False, False
    while not done:
        observations.append(obs)
        obs, success, done = env.step(env.expert_action())
    return success, len(observations), observations


def test_expert_succeeds_on_most_seeds_in_15_to_30_steps():
    env = SyntheticEnv()
    results = [run_expert(env, seed)[:2] for seed in range(50)]
    assert sum(ok for ok, _ in results) >= 48
    lengths = [n for _, n in results]
    assert 12 <= np.mean(lengths) <= 30 and max(lengths) <= env.cfg.max_steps


def test_same_seed_same_episode_other_seed_other_scene():
    env_a, env_b = SyntheticEnv(), SyntheticEnv()
    _, _, obs_a = run_expert(env_a, 7)
    _, _, obs_b = run_expert(env_b, 7)
    assert len(obs_a) == len(obs_b)
    for a, b in zip(obs_a, obs_b):
        assert a["instruction"] == b["instruction"]
        np.testing.assert_array_equal(a["images"]["static"], b["images"]["static"])
        np.testing.assert_array_equal(a["images"]["wrist"], b["images"]["wrist"])
        np.testing.assert_array_equal(a["state"], b["state"])
    assert not np.array_equal(env_a.reset(8)["images"]["static"], env_b.reset(7)["images"]["static"])


def test_observation_format_and_image_size():
    obs = SyntheticEnv(SimConfig(image_size=48)).reset(0)
    for camera in ("static", "wrist"):
        assert obs["images"][camera].shape == (48, 48, 3) and obs["images"][camera].dtype == np.uint8
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (4,)
    assert obs["instruction"].startswith("pick up the ") and obs["instruction"].endswith(" block")


def test_the_target_decides_where_the_expert_goes_and_what_the_cameras_see():
    env = SyntheticEnv()
    env.reset(3)
    finals = {}
    for target in range(len(env.blocks)):
        env.reset(3)
        env.target = target
        colour = env.blocks[target].colour
        assert colour in env.instruction
        obs, done = env.observation(), False
        while not done:
            obs, success, done = env.step(env.expert_action())
        assert success
        # the lifted block hangs under the wrist camera
        wrist = obs["images"]["wrist"]
        assert (wrist == np.array(COLOURS[colour], np.uint8)).all(axis=-1).any()
        finals[target] = obs["images"]["static"]
    assert not np.array_equal(finals[0], finals[1])


def test_closing_away_from_the_target_grasps_nothing_and_the_expert_recovers():
    env = SyntheticEnv()
    env.reset(5)
    close = np.array([0, 0, 0, 0, 0, 0, -1.0])
    _, success, _ = env.step(close)  # closing high above the table grasps nothing
    assert env.held is None and not success
    done = False
    while not done:
        _, success, done = env.step(env.expert_action())
    assert success


def test_noisy_demonstrations_record_the_experts_action_in_the_states_the_noise_reached():
    from vla.data.converters.synthetic import convert_synthetic, rollout
    from vla.data.metadata import DataError

    env = SyntheticEnv()
    clean = [rollout(env, seed) for seed in range(20)]
    noisy = [rollout(env, seed, action_noise=0.5) for seed in range(20)]
    assert sum(not np.array_equal(c.state, n.state) for c, n in zip(clean, noisy)) >= 18
    replay = rollout(env, 3, action_noise=0.5)  # a seed's noise is drawn from that seed alone
    np.testing.assert_array_equal(replay.actions, noisy[3].actions)
    for episode in noisy[:5]:  # replayed: in every recorded state the label is the expert's action there
        seed, noise = int(episode.episode_id), np.random.default_rng([int(episode.episode_id), 1])
        env.reset(seed)
        for state, label in zip(episode.state, episode.actions):
            np.testing.assert_array_equal(env.observation()["state"], state)
            np.testing.assert_array_equal(env.expert_action(), label)
            executed = label.copy()
            executed[:3] += 0.5 * noise.standard_normal(3)
            env.step(executed)
    assert sum(len(n.actions) for n in noisy) > sum(len(c.actions) for c in clean)  # detours
    try:
        convert_synthetic("unused", action_noise=1.5)
    except DataError as err:
        assert "action_noise" in str(err)
    else:
        raise AssertionError("action_noise 1.5 was accepted")


def test_outcome_tells_failures_apart_by_what_was_grasped():
    def expert_until(env: SyntheticEnv, stop) -> None:
        done = False
        while not done and not stop(env):
            _, _, done = env.step(env.expert_action())

    env = SyntheticEnv()
    env.reset(3)
    assert env.outcome() == "grasped nothing"
    expert_until(env, lambda e: e.held is not None)
    assert env.held == env.target and env.outcome() == "grasped the target, not lifted"
    expert_until(env, lambda e: False)
    assert env.outcome() == "success"

    env.reset(3)
    asked, env.target = env.target, (env.target + 1) % len(env.blocks)  # the expert picks another block ...
    expert_until(env, lambda e: e.held is not None)
    env.target = asked  # ... than the instruction asked for
    assert env.held != asked and env.outcome() == "picked another block"
    env.reset(3)
    assert env.grasped == set() and env.outcome() == "grasped nothing"  # a new episode forgets the last
