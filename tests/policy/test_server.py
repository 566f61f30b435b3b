"""The policy server over loopback: the client gives what the policy gives, histories included."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest

from vla.policy import Policy, PolicyClient, PolicyServer
from vla.sim import SimConfig, SyntheticEnv


def observations(seed: int, steps: int) -> list[dict]:
    env = SyntheticEnv(SimConfig())
    obs = [env.reset(seed)]
    for _ in range(steps - 1):
        obs.append(env.step(env.expert_action())[0])
    return obs


def test_client_round_trip_over_loopback_matches_the_local_policy(tiny_export):
    local = Policy.load(tiny_export)
    server = PolicyServer(Policy.load(tiny_export), host="127.0.0.1", port=0).start()
    try:
        client = PolicyClient(server.url)
        assert server.url.startswith("http://127.0.0.1:")
        episodes = [observations(0, 4), observations(1, 4)]

        client.reset()
        local.reset()
        for step in range(4):
            batch = [episode[step] for episode in episodes]
            np.testing.assert_allclose(client.act_batch(batch), local.act_batch(batch), rtol=1e-5, atol=1e-6)

        client.reset(env_index=0)
        local.reset(env_index=0)
        batch = [episodes[0][0], episodes[1][0]]
        np.testing.assert_allclose(client.act_batch(batch), local.act_batch(batch), rtol=1e-5, atol=1e-6)

        client.reset()
        local.reset()
        action = client.act(episodes[0][0])
        assert action.shape == (7,) and action[6] in (-1.0, 1.0)
        np.testing.assert_allclose(action, local.act(episodes[0][0]), rtol=1e-5, atol=1e-6)

        with pytest.raises(urllib.error.HTTPError) as unknown:
            urllib.request.urlopen(urllib.request.Request(server.url + "/nope", data=b"{}"), timeout=10)
        assert unknown.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as malformed:
            urllib.request.urlopen(urllib.request.Request(server.url + "/act", data=b"{}"), timeout=10)
        assert malformed.value.code == 400
    finally:
        server.stop()
