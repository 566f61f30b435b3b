"""A robot's side of the serving tests: openpi's own client (openpi-client 0.1.2, numpy<2), unchanged.

Run by tests/policy/test_server.py in the robot's virtual environment (.venv-robot):

    python robot_client.py HOST PORT API_KEY SCENARIO EPISODES.npz OUT.npz

EPISODES.npz holds ``c<client>_<camera>`` frames ``[T, H, W, 3]``, ``c<client>_state`` ``[T, S]``
and ``c<client>_prompt``;
OUT.npz gets what the scenario saw. Nothing here imports vla.
"""

import sys
import threading

import numpy as np
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy


def observation(episodes, client, step, cameras):
    return {"images": {cam: episodes[f"c{client}_{cam}"][step] for cam in cameras},
            "prompt": str(episodes[f"c{client}_prompt"]), "state": episodes[f"c{client}_state"][step]}


def handshake(connect, episodes):
    metadata = connect().get_server_metadata()
    return {"cameras": np.array(metadata["cameras"]), "chunk_length": metadata["chunk_length"],
            "action_dim": metadata["action_dim"], "state_dim": metadata["state_dim"],
            "image_size": metadata["image_size"]}


def broker(connect, episodes, steps=20):
    policy = connect()
    metadata = policy.get_server_metadata()
    robot = ActionChunkBroker(policy, action_horizon=metadata["chunk_length"])
    actions = [robot.infer(observation(episodes, 0, step, metadata["cameras"]))["actions"] for step in range(steps)]
    return {"actions": np.stack(actions)}


def four_clients(connect, episodes, clients=4):
    chunks, errors = {}, []

    def robot(client):
        try:
            policy = connect()
            cameras = policy.get_server_metadata()["cameras"]
            steps = len(episodes[f"c{client}_{cameras[0]}"])
            chunks[client] = np.stack([policy.infer(observation(episodes, client, step, cameras))["actions"]
                                       for step in range(steps)])
        except Exception as err:  # reported to the test, which fails on it
            errors.append(repr(err))

    threads = [threading.Thread(target=robot, args=(client,)) for client in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors)
    return {f"c{client}": chunks[client] for client in range(clients)}


def bad_frame(connect, episodes):
    policy = connect()
    try:
        policy.infer({"images": {"static": episodes["c0_static"][0]}, "prompt": "pick up the red block"})
    except RuntimeError as err:
        error = str(err)
    try:
        policy.infer(observation(episodes, 0, 0, policy.get_server_metadata()["cameras"]))
        close_code = -1
    except Exception as err:  # websockets' ConnectionClosedError
        close_code = err.rcvd.code if getattr(err, "rcvd", None) else -2
    return {"error": np.array(error), "close_code": close_code}


SCENARIOS = {"handshake": handshake, "broker": broker, "four_clients": four_clients, "bad_frame": bad_frame}


def main():
    host, port, api_key, scenario, episodes_path, out = sys.argv[1:]
    episodes = dict(np.load(episodes_path))

    def connect():
        return WebsocketClientPolicy(host, int(port), api_key=api_key or None)

    np.savez(out, **SCENARIOS[scenario](connect, episodes))


if __name__ == "__main__":
    main()
