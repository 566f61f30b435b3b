"""The policy server as robots meet it: `pipelines/serve.py` on the test's Ray cluster, driven by
openpi's own client (in the robot's virtual environment) and by ``vla.policy.PolicyClient``.

The chunks it returns equal ``Policy`` run locally, one session per connection; malformed,
oversized, unauthorized, slow and dead clients are refused or outlived without disturbing others.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from test_policy import expert_rollout
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.policy.conftest import write_tiny_export  # (tests/policy's conftest, by its full name)
from vla.policy import Policy, PolicyClient
from vla.policy.msgpack_numpy import packb

ROOT = Path(__file__).resolve().parents[2]
ROBOT_PYTHON = ROOT / ".venv-robot" / "bin" / "python"
API_KEY = "robot-fleet-key"
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # batch compositions differ from the local calls


def wire(observation: dict, **extra) -> dict:
    return {"images": observation["images"], "prompt": observation["instruction"],
            "state": observation["state"], **extra}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    host: str
    port: int

    def client(self, api_key: str | None = API_KEY) -> PolicyClient:
        return PolicyClient(self.host, self.port, api_key=api_key)


@pytest.fixture(scope="module")
def export(tmp_path_factory, synthetic_root) -> str:
    """A tiny policy that reads the robot's 4-value state and predicts 3-step chunks."""
    return write_tiny_export(tmp_path_factory.mktemp("served_export"), synthetic_root,
                             ["model.state_dim=4", "model.fwd_pred_next_n=3"])


@pytest.fixture(scope="module")
def served(ray_session, export):
    """`pipelines/serve.py` joined to the test's Ray cluster (RAY_ADDRESS), with an API key and a 1 MiB frame limit."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLA_API_KEY": API_KEY,
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "pipelines/serve.py"), "--export", export, "--port", str(port),
         "--max-batch", "8", "--max-frame-mb", "1"], stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    while (line := process.stdout.readline()) and not line.startswith("serving"):
        lines.append(line)
    assert line.startswith("serving") and f"ws://127.0.0.1:{port}/" in line and "API key required" in line, lines
    yield Served("127.0.0.1", port)
    process.send_signal(signal.SIGINT)  # serve.py deletes its application
    process.wait(timeout=60)
    from ray import serve

    serve.shutdown()


# --- openpi's own client, in the robot's virtual environment ------------------------------------

@pytest.fixture
def robot(served, tmp_path):
    """``robot(scenario, episodes) -> dict``: tests/policy/robot_client.py run by openpi-client 0.1.2."""
    if not ROBOT_PYTHON.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{ROBOT_PYTHON} is missing: .ci/run creates the robot's virtual environment")
        pytest.skip(f"no robot virtual environment at {ROBOT_PYTHON}: python -m venv .venv-robot && "
                    ".venv-robot/bin/pip install openpi-client==0.1.2 typing_extensions==4.16.0")

    def run(scenario: str, episodes: list[list[dict]]) -> dict:
        arrays = {}
        for i, observations in enumerate(episodes):
            for camera in observations[0]["images"]:
                arrays[f"c{i}_{camera}"] = np.stack([obs["images"][camera] for obs in observations])
            arrays[f"c{i}_state"] = np.stack([obs["state"] for obs in observations])
            arrays[f"c{i}_prompt"] = np.array(observations[0]["instruction"])
        np.savez(tmp_path / "episodes.npz", **arrays)
        done = subprocess.run([str(ROBOT_PYTHON), str(Path(__file__).with_name("robot_client.py")), served.host,
                               str(served.port), API_KEY, scenario, str(tmp_path / "episodes.npz"),
                               str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return dict(np.load(tmp_path / "out.npz"))

    return run


def test_openpi_client_handshake_states_the_policy(robot, export):
    policy = Policy.load(export)
    seen = robot("handshake", [expert_rollout(0, 1)])
    assert list(seen["cameras"]) == list(policy.cameras)
    assert (int(seen["chunk_length"]), int(seen["action_dim"]), int(seen["state_dim"]), int(seen["image_size"])) \
        == (policy.chunk_length, policy.action_space.dim, policy.state_dim, policy.image_size)


def test_openpi_action_chunk_broker_steps_the_chunks_policy_predicts(robot, export):
    """20 robot steps through ActionChunkBroker: the server saw every chunk_length-th frame, in one session."""
    observations = expert_rollout(1, 20)
    actions = robot("broker", [observations])["actions"]
    local = Policy.load(export)
    n = local.chunk_length
    expected = [local.act_chunk_batch([observations[step]])[0] if step % n == 0 else None for step in range(20)]
    for step in range(20):
        chunk = expected[step - step % n]
        np.testing.assert_allclose(actions[step], chunk[step % n], **TOLERANCE)
    assert actions.shape == (20, local.action_space.dim) and actions.dtype == np.float32


def test_four_openpi_clients_at_once_each_get_their_own_session(robot, export):
    episodes = [expert_rollout(seed, 5) for seed in range(4)]
    seen = robot("four_clients", episodes)
    for i, observations in enumerate(episodes):
        local = Policy.load(export)  # a fresh history, as a new connection has
        expected = np.stack([local.act_chunk_batch([obs])[0] for obs in observations])
        np.testing.assert_allclose(seen[f"c{i}"], expected, **TOLERANCE)


def test_openpi_client_gets_a_bad_frame_answered_in_text(robot):
    seen = robot("bad_frame", [expert_rollout(0, 1)])
    error = str(seen["error"])  # openpi's client raises RuntimeError("Error in inference server:\n<text>")
    assert error.splitlines()[-1].startswith("images: expected a map of exactly the cameras"), error
    assert int(seen["close_code"]) == 1011


# --- sessions, refusals and bad clients (this package's PolicyClient) ----------------------------

def test_two_interleaving_clients_keep_their_own_history_and_reset(served, export):
    a_steps, b_steps = expert_rollout(2, 4), expert_rollout(3, 4)
    local_a, local_b = Policy.load(export), Policy.load(export)
    with served.client() as a, served.client() as b:
        for obs_a, obs_b in zip(a_steps, b_steps):
            np.testing.assert_allclose(a.infer(wire(obs_a))["actions"], local_a.act_chunk_batch([obs_a])[0], **TOLERANCE)
            np.testing.assert_allclose(b.infer(wire(obs_b))["actions"], local_b.act_chunk_batch([obs_b])[0], **TOLERANCE)
        fresh = Policy.load(export)
        np.testing.assert_allclose(a.infer(wire(b_steps[0], reset=True))["actions"],
                                   fresh.act_chunk_batch([b_steps[0]])[0], **TOLERANCE)
        np.testing.assert_allclose(b.infer(wire(a_steps[0]))["actions"],  # b's history is untouched
                                   local_b.act_chunk_batch([a_steps[0]])[0], **TOLERANCE)


def changed(**changes) -> dict:
    observation = wire(expert_rollout(0, 1)[0])
    for key, value in changes.items():
        if value is None:
            del observation[key]
        else:
            observation[key] = value
    return observation


IMAGE = np.zeros((32, 32, 3), np.uint8)
MALFORMED = {
    "no images": (changed(images=None), "images: expected a map of exactly the cameras"),
    "float image": (changed(images={"static": IMAGE.astype(np.float32), "wrist": IMAGE}),
                    "images.static: expected dtype uint8"),
    "channels first": (changed(images={"static": np.zeros((3, 32, 32), np.uint8), "wrist": IMAGE}),
                       "images.static: expected shape [H, W, 3] (RGB, channels last) (channels first?"),
    "image as a list": (changed(images={"static": [[1, 2, 3]], "wrist": IMAGE}), "images.static: expected an HxWx3"),
    "no prompt": (changed(prompt=None), 'prompt: expected the instruction as exactly one of "prompt" or "instruction"'),
    "empty prompt": (changed(prompt="  "), "prompt: expected a non-empty string"),
    "reset not a bool": (changed(reset="yes"), "reset: expected true or false"),
    "no state": (changed(state=None), "state: missing; this policy reads the robot state, 4 floats"),
    "short state": (changed(state=np.zeros(3, np.float32)), "state: 3 values, expected 4"),
    "state of text": (changed(state="up"), "state: expected 4 floats, got 'str'"),
    "not a map": ([1, 2], "observation: expected a map"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_observation_gets_a_text_error_naming_the_field_and_a_close(served, case):
    message, error = MALFORMED[case]
    assert_refused(served, packb(message), error, 1011)


def assert_refused(served: Served, frame: bytes | str, error: str, code: int) -> None:
    with served.client() as bystander, served.client() as client:
        bystander.infer(wire(expert_rollout(0, 1)[0]))
        client.websocket.send(frame)
        answer = client.websocket.recv(30)
        assert isinstance(answer, str) and answer.startswith(error), answer
        with pytest.raises(ConnectionClosed) as closed:
            client.websocket.recv(30)
        assert closed.value.rcvd.code == code
        assert bystander.infer(wire(expert_rollout(0, 1)[0]))["actions"].shape[0] >= 1  # unaffected


def test_frames_that_are_not_openpi_msgpack_are_refused(served):
    assert_refused(served, "{}", "frame: expected a binary msgpack frame, got text", 1011)
    assert_refused(served, b"\xc1", "frame: expected one msgpack message", 1011)
    bad_array = {b"__ndarray__": True, b"data": b"\0" * 10, b"dtype": "|u1", b"shape": [32, 32, 3]}
    assert_refused(served, packb({**wire(expert_rollout(0, 1)[0]), "images": {"static": bad_array, "wrist": IMAGE}}),
                   "images.static: 10 bytes of data for shape (32, 32, 3) uint8 (3072 expected)", 1011)


def test_an_oversized_observation_is_refused(served):
    big = changed(images={"static": np.zeros((700, 700, 3), np.uint8), "wrist": IMAGE})  # 1.4 MiB > 1 MiB
    assert_refused(served, packb(big), "frame: ", 1009)


def test_the_api_key_is_required_and_healthz_answers(served):
    for key in (None, "wrong"):
        with pytest.raises(InvalidStatus) as refused:
            served.client(api_key=key)
        assert refused.value.response.status_code == 403
    with urllib.request.urlopen(f"http://{served.host}:{served.port}/healthz", timeout=30) as health:
        assert health.status == 200 and json.load(health)["status"] == "ok"


def test_a_slow_and_a_dead_client_never_block_the_batch(served):
    observation = wire(expert_rollout(0, 1)[0])
    headers = {"Authorization": f"Api-Key {API_KEY}"}
    with connect(f"ws://{served.host}:{served.port}/", additional_headers=headers) as slow:
        slow.recv(30)  # metadata
        frame = packb(observation)
        begun = bytes([0x82, 0x80 | 126]) + len(frame).to_bytes(2, "big") + bytes(4) + frame[:100]
        slow.socket.sendall(begun)  # a masked binary frame begun, never ended
        dead = served.client()
        dead.websocket.send(packb(observation))
        dead.websocket.socket.close()  # gone before its answer
        results = []
        worker = threading.Thread(target=lambda: results.extend(
            served.client().infer(observation)["actions"] for _ in range(3)))
        worker.start()
        worker.join(timeout=60)
        assert len(results) == 3


def test_serve_command_refuses_bad_arguments_before_ray_starts(tmp_path):
    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "pipelines/serve.py"), *args], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})

    missing = serve("--export", "/nonexistent")
    assert missing.returncode == 2 and missing.stderr.startswith("error: --export /nonexistent")
    (tmp_path / "config.yaml").write_text("{}")
    zero = serve("--export", str(tmp_path), "--max-batch", "0")
    assert zero.returncode == 2 and zero.stderr.startswith("error: --max-batch: must be >= 1"), zero.stderr
