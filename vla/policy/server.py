"""A small policy server (stdlib HTTP + JSON) so a robot process can query a ``Policy``.

    server = PolicyServer(Policy.load(export_dir), port=8000).start()    # serves on 127.0.0.1
    client = PolicyClient("http://127.0.0.1:8000")
    client.reset()
    action = client.act(observation)                                      # the Policy API, remotely

Requests (POST, JSON bodies):
    /act     {"observations": [obs, ...]}  -> {"actions": [[7 floats], ...]}
    /reset   {"env_index": int | null}      -> {}
An observation's images travel as ``{"shape": [H, W, 3], "data": base64 of the uint8 bytes}``.
One lock serializes requests: the policy's history is per server, like one robot's.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from vla.policy.policy import Observation, Policy

ROUTES = ("/act", "/reset")


def encode_observation(obs: Observation) -> dict:
    images = {camera: {"shape": list(np.shape(image)),
                       "data": base64.b64encode(np.ascontiguousarray(image, np.uint8).tobytes()).decode()}
              for camera, image in obs["images"].items()}
    return {"images": images, "instruction": obs["instruction"]}


def decode_observation(data: dict) -> Observation:
    images = {camera: np.frombuffer(base64.b64decode(image["data"]), np.uint8).reshape(image["shape"])
              for camera, image in data["images"].items()}
    return {"images": images, "instruction": data["instruction"]}


class PolicyServer:
    """Serves ``policy`` over HTTP in a background thread; ``port=0`` picks a free port."""

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 0):
        self.policy = policy
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer((host, port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> PolicyServer:
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def handle(self, path: str, body: dict) -> dict:
        """Answer one request (``path`` is ``/act`` or ``/reset``)."""
        with self._lock:
            if path == "/act":
                observations = [decode_observation(obs) for obs in body["observations"]]
                return {"actions": self.policy.act_batch(observations).tolist()}
            self.policy.reset(body.get("env_index"))
            return {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path not in ROUTES:
                    status, reply = 404, {"error": f"unknown path {self.path} (routes: {', '.join(ROUTES)})"}
                else:
                    try:
                        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                        status, reply = 200, server.handle(self.path, body)
                    except (KeyError, TypeError, ValueError) as err:  # a malformed request
                        status, reply = 400, {"error": f"{type(err).__name__}: {err}"}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args) -> None:  # requests are not logged
                return

        return Handler


class PolicyClient:
    """The ``Policy`` API (``reset``, ``act``, ``act_batch``) over a ``PolicyServer``."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.loads(response.read())

    def reset(self, env_index: int | None = None) -> None:
        self._post("/reset", {"env_index": env_index})

    def act(self, observation: Observation) -> np.ndarray:
        return self.act_batch([observation])[0]

    def act_batch(self, observations: list[Observation]) -> np.ndarray:
        reply = self._post("/act", {"observations": [encode_observation(obs) for obs in observations]})
        return np.asarray(reply["actions"], np.float32)
