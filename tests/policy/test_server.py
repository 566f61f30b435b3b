"""The policy server over loopback: the client gives what the policy gives, histories included;
sessions keep clients apart; every malformed or hostile request is refused with a 4xx."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

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


@pytest.fixture(scope="module")
def server(tiny_export):
    server = PolicyServer(Policy.load(tiny_export), read_timeout_s=1.0, max_body_bytes=1 << 20).start()
    yield server
    server.stop()


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_every_client_has_its_own_session(server, tiny_export):
    """One client's two environments never change what another client's one environment gets."""
    two, one = PolicyClient(server.url), PolicyClient(server.url, transport="msgpack")
    local_two, local_one = Policy.load(tiny_export), Policy.load(tiny_export)
    episodes = [observations(0, 3), observations(1, 3)]
    for step in range(3):
        batch = [episode[step] for episode in episodes]
        np.testing.assert_allclose(two.act_batch(batch), local_two.act_batch(batch), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one.act(episodes[1][step]), local_one.act(episodes[1][step]), rtol=1e-5, atol=1e-6)
    two.reset()  # resets only its own session
    np.testing.assert_allclose(one.act(episodes[0][0]), local_one.act(episodes[0][0]), rtol=1e-5, atol=1e-6)
    two.close()
    with pytest.raises(urllib.error.HTTPError) as closed:
        two._post("/act", {"session": "0" * 16, "observations": []})
    assert closed.value.code == 404


def image(shape) -> dict:
    return {"shape": list(shape), "data": base64.b64encode(bytes(int(np.prod(shape)))).decode()}


def observation(**changes) -> dict:
    obs = {"images": {"static": image((32, 32, 3)), "wrist": image((32, 32, 3))}, "instruction": "pick up the block"}
    obs.update(changes)
    return obs


MALFORMED = {
    "no observations": ({"observations": []}, "observations: expected a non-empty list"),
    "RGBA": ({"observations": [observation(images={"static": image((32, 32, 4)), "wrist": image((32, 32, 3))})]},
             "observations[0].images.static.shape: expected 3 channels"),
    "2-D": ({"observations": [observation(images={"static": image((32, 32)), "wrist": image((32, 32, 3))})]},
            "observations[0].images.static.shape: expected [H, W, 3]"),
    "CHW": ({"observations": [observation(images={"static": image((3, 32, 32)), "wrist": image((32, 32, 3))})]},
            "channels first"),
    "0x0": ({"observations": [observation(images={"static": image((0, 0, 3)), "wrist": image((32, 32, 3))})]},
            "observations[0].images.static.shape: expected H >= 1 and W >= 1"),
    "empty instruction": ({"observations": [observation(instruction="  ")]},
                          "observations[0].instruction: expected a non-empty instruction"),
    "missing camera": ({"observations": [observation(images={"static": image((32, 32, 3))})]},
                       "observations[0].images: expected exactly the cameras"),
    "short data": ({"observations": [observation(images={"static": {"shape": [32, 32, 3], "data": ""},
                                                         "wrist": image((32, 32, 3))})]},
                   "observations[0].images.static.data: expected 3072 bytes"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_act_gets_a_400_naming_the_field(server, case):
    session = PolicyClient(server.url)._session_id()
    body, message = MALFORMED[case]
    status, reply = post(server.url + "/act", json.dumps({"session": session, **body}).encode())
    assert status == 400 and message in reply["error"], reply


def test_reset_of_a_negative_environment_is_refused_not_dropped(server):
    session = PolicyClient(server.url)._session_id()
    status, reply = post(server.url + "/reset", json.dumps({"session": session, "env_index": -1}).encode())
    assert status == 400 and reply["error"].startswith("env_index: expected null")
    status, _ = post(server.url + "/reset", json.dumps({"session": session, "env_index": 0}).encode())
    assert status == 200


def read_until_closed(sock: socket.socket) -> str:
    """The whole answer of an HTTP/1.0 server: its headers and body may come in separate reads."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_short_or_oversized_body_does_not_tie_up_the_server(server):
    host, port = server.url.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)))
    stalled.sendall(b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{")
    # Meanwhile another client is served at once.
    client = PolicyClient(server.url)
    assert client.act(observations(0, 1)[0]).shape == (7,)
    stalled.settimeout(5)
    answer = read_until_closed(stalled)
    assert answer.startswith("HTTP/1.0 408") and "Content-Length" in answer
    stalled.close()

    oversized = socket.create_connection((host, int(port)))
    oversized.sendall(b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n")
    oversized.settimeout(5)
    answer = read_until_closed(oversized)
    assert answer.startswith("HTTP/1.0 413") and "body: expected at most 1048576 bytes" in answer
    oversized.close()


def test_a_token_protects_the_server(tiny_export):
    server = PolicyServer(Policy.load(tiny_export), token="secret").start()
    try:
        status, reply = post(server.url + "/session", b"{}")
        assert status == 401 and "Authorization" in reply["error"]
        status, _ = post(server.url + "/session", b"{}", {"Authorization": "Bearer wrong"})
        assert status == 401
        client = PolicyClient(server.url, token="secret", transport="msgpack")
        assert client.act(observations(0, 1)[0]).shape == (7,)
    finally:
        server.stop()


def test_serve_command_starts_the_server(tiny_export):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "VLA_SERVER_TOKEN": "t0ken"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(root / "pipelines/serve.py"), "--export", tiny_export,
                                "--port", str(port)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert "token required" in process.stdout.readline()
        client = PolicyClient(f"http://127.0.0.1:{port}", token="t0ken")
        assert client.act(observations(0, 1)[0]).shape == (7,)
    finally:
        process.terminate()
        process.wait(timeout=30)
    bad = subprocess.run([sys.executable, str(root / "pipelines/serve.py"), "--export", "/nonexistent"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --export /nonexistent")
