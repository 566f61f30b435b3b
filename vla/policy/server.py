"""A policy server worth putting on a robot: per-client sessions, strict requests, JSON or msgpack.

    python pipelines/serve.py --export ~/vla_runs/demo/export --port 8000 --token SECRET

    server = PolicyServer(Policy.load(export_dir), port=8000, token="SECRET").start()
    client = PolicyClient("http://127.0.0.1:8000", token="SECRET", transport="msgpack")
    action = client.act(observation)          # the Policy API, remotely, in the client's own session

Requests (POST; ``Content-Type: application/json`` or ``application/msgpack``, answered alike):
    /session  {}                                            -> {"session": id}
    /act      {"session": id, "observations": [obs, ...]}   -> {"actions": [[7 floats], ...]}
    /reset    {"session": id, "env_index": int | null}      -> {}
    /close    {"session": id}                               -> {}
An observation is ``{"images": {camera: image}, "instruction": str}``; an image is
``{"shape": [H, W, 3], "data": bytes}`` of uint8 RGB (base64 text in JSON, raw bytes in msgpack).

Every session holds its own policy state (its environments' histories): no client can disturb
another's. Every malformed request gets a 4xx whose ``error`` names the field and what was
expected; a body over ``max_body_bytes`` is refused unread (413), one shorter than its
``Content-Length`` times out after ``read_timeout_s`` (408) on its own connection thread, so no
client ties up the server. With ``token`` every request needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import json
import secrets
import socket
import threading
import urllib.request
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgpack
import numpy as np

from vla.model import ActionStepper
from vla.policy.policy import Observation, Policy

ROUTES = ("/session", "/act", "/reset", "/close")
JSON, MSGPACK = "application/json", "application/msgpack"
MAX_BODY_BYTES = 16 << 20  # 2 x 224 px RGB frames are ~0.4 MB in msgpack, ~0.55 MB in JSON
MAX_SESSIONS = 256  # the least recently used session is closed beyond this


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def bad(field: str, expected: str, got: Any = None) -> RequestError:
    shown = "" if got is None else f", got {got!r}"[:200]
    return RequestError(400, f"{field}: expected {expected}{shown}")


def encode_image(image: np.ndarray, binary: bool) -> dict:
    data = np.ascontiguousarray(image, np.uint8).tobytes()
    return {"shape": list(np.shape(image)), "data": data if binary else base64.b64encode(data).decode()}


def encode_observation(obs: Observation, binary: bool = False) -> dict:
    return {"images": {camera: encode_image(image, binary) for camera, image in obs["images"].items()},
            "instruction": obs["instruction"]}


def decode_image(value: Any, field: str) -> np.ndarray:
    """One image of a request, checked: ``[H, W, 3]`` uint8 RGB with H, W >= 1 and matching bytes."""
    if not isinstance(value, dict) or "shape" not in value or "data" not in value:
        raise bad(field, 'an image {"shape": [H, W, 3], "data": ...}', type(value).__name__)
    shape = value["shape"]
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise bad(f"{field}.shape", "a list of integers [H, W, 3]", shape)
    if len(shape) != 3:
        raise bad(f"{field}.shape", "[H, W, 3] (a color image; 2-D grayscale is not accepted)", shape)
    if shape[2] != 3:
        hint = " (channels first? send [H, W, 3])" if shape[0] in (1, 3, 4) else ""
        raise bad(f"{field}.shape", f"3 channels (RGB) last{hint}", shape)
    if shape[0] < 1 or shape[1] < 1:
        raise bad(f"{field}.shape", "H >= 1 and W >= 1", shape)
    data = value["data"]
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"{field}.data", "base64 of the uint8 pixels") from None
    if not isinstance(data, bytes):
        raise bad(f"{field}.data", "the uint8 pixels (base64 in JSON, bytes in msgpack)", type(data).__name__)
    if len(data) != shape[0] * shape[1] * 3:
        raise bad(f"{field}.data", f"{shape[0] * shape[1] * 3} bytes for shape {shape}", f"{len(data)} bytes")
    return np.frombuffer(data, np.uint8).reshape(shape)


def decode_observation(value: Any, field: str, cameras: list[str]) -> Observation:
    """One observation of a request, checked against the policy's cameras."""
    if not isinstance(value, dict):
        raise bad(field, 'an observation {"images": {...}, "instruction": "..."}', type(value).__name__)
    images = value.get("images")
    if not isinstance(images, dict):
        raise bad(f"{field}.images", f"a mapping of the cameras {cameras} to images", type(images).__name__)
    missing, extra = [c for c in cameras if c not in images], sorted(set(images) - set(cameras))
    if missing or extra:
        raise bad(f"{field}.images", f"exactly the cameras {cameras}", sorted(images))
    instruction = value.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise bad(f"{field}.instruction", "a non-empty instruction", instruction)
    return {"images": {c: decode_image(images[c], f"{field}.images.{c}") for c in cameras},
            "instruction": instruction}


def session_policy(policy: Policy) -> Policy:
    """A policy that shares ``policy``'s model but holds a state (histories) of its own."""
    session = copy.copy(policy)
    session.stepper = ActionStepper(policy.model)  # the histories live in the stepper
    return session


class PolicyServer:
    """Serves ``policy`` over HTTP in background threads; ``port=0`` picks a free port."""

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, read_timeout_s: float = 10.0,
                 max_sessions: int = MAX_SESSIONS):
        self.policy = policy
        self.cameras = list(policy.preprocessor.cameras)
        self.token, self.max_body_bytes, self.max_sessions = token, max_body_bytes, max_sessions
        self.read_timeout_s = read_timeout_s
        self._sessions: OrderedDict[str, Policy] = OrderedDict()
        self._lock = threading.Lock()  # sessions and the model: one inference at a time
        # Every model call runs on this one long-lived thread: torch's per-thread pools are set up
        # once, not for each connection's new thread (that cost ~250 ms per request on 2 cores).
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._http = ThreadingHTTPServer((host, port), self._handler())
        self._http.daemon_threads = True
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
        self._inference.shutdown()

    def _session(self, body: dict) -> tuple[str, Policy]:
        session_id = body.get("session")
        if not isinstance(session_id, str):
            raise bad("session", "the id POST /session returned", session_id)
        session = self._sessions.get(session_id)
        if session is None:
            raise RequestError(404, f"session: {session_id!r} is not open (closed, or evicted after "
                                    f"{self.max_sessions} newer sessions); open one with POST /session")
        self._sessions.move_to_end(session_id)
        return session_id, session

    def handle(self, path: str, body: Any) -> dict:
        """Answer one decoded request; ``RequestError`` for anything malformed."""
        if not isinstance(body, dict):
            raise bad("body", "a mapping", type(body).__name__)
        with self._lock:
            if path == "/session":
                session_id = secrets.token_hex(8)
                self._sessions[session_id] = session_policy(self.policy)
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
                return {"session": session_id}
            session_id, session = self._session(body)
            if path == "/close":
                del self._sessions[session_id]
                return {}
            if path == "/reset":
                return self._reset(session, body.get("env_index"))
            return self._act(session, body.get("observations"))

    def _reset(self, session: Policy, env_index: Any) -> dict:
        if env_index is not None and (not isinstance(env_index, int) or isinstance(env_index, bool) or env_index < 0):
            raise bad("env_index", "null (every environment) or an integer >= 0", env_index)
        session.reset(env_index)
        return {}

    def _act(self, session: Policy, observations: Any) -> dict:
        if not isinstance(observations, list) or not observations:
            raise bad("observations", "a non-empty list of observations", observations)
        decoded = [decode_observation(obs, f"observations[{i}]", self.cameras) for i, obs in enumerate(observations)]
        try:
            actions = self._inference.submit(session.act_batch, decoded).result()
        except ValueError as err:  # a batch of another size than the session's environments
            raise RequestError(409, f"observations: {err}") from None
        return {"actions": actions.tolist()}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = server.read_timeout_s  # a body shorter than Content-Length times out

            def setup(self) -> None:
                super().setup()  # headers and body go out in two writes: no Nagle delay between them
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                content_type = JSON
                try:
                    content_type = MSGPACK if self.headers.get("Content-Type", "").startswith(MSGPACK) else JSON
                    body = self._read_body(content_type)
                    status, reply = 200, server.handle(self.path, body)
                except RequestError as err:
                    status, reply = err.status, {"error": str(err)}
                except TimeoutError:
                    status, reply = 408, {"error": f"body: not received within {server.read_timeout_s} s "
                                                   "(shorter than its Content-Length?)"}
                    self.close_connection = True
                except Exception as err:  # a server fault: answered, never a dropped connection
                    status, reply = 500, {"error": f"{type(err).__name__}: {err}"}
                self._send(status, reply, content_type)

            def _read_body(self, content_type: str) -> Any:
                if server.token is not None:
                    given = self.headers.get("Authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {server.token}".encode()):
                        raise RequestError(401, "Authorization: expected 'Bearer <token>' with the server's token")
                if self.path not in ROUTES:
                    raise RequestError(404, f"path: {self.path} is not a route ({', '.join(ROUTES)})")
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise RequestError(411, f"Content-Length: expected the body's size in bytes, got {length!r}")
                if int(length) > server.max_body_bytes:
                    self.close_connection = True  # the body is never read
                    raise RequestError(413, f"body: expected at most {server.max_body_bytes} bytes, got {length}")
                raw = self.rfile.read(int(length))
                if len(raw) < int(length):
                    self.close_connection = True
                    raise RequestError(400, f"body: {len(raw)} bytes received, Content-Length says {length}")
                try:
                    if content_type == MSGPACK:
                        return msgpack.unpackb(raw, raw=False) if raw else {}
                    return json.loads(raw) if raw else {}
                except (ValueError, msgpack.UnpackException) as err:
                    raise bad("body", "JSON" if content_type == JSON else "msgpack", str(err)) from None

            def _send(self, status: int, reply: dict, content_type: str) -> None:
                data = msgpack.packb(reply) if content_type == MSGPACK else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client went away
                    self.close_connection = True

            def log_message(self, format: str, *args) -> None:  # requests are not logged
                return

        return Handler


class PolicyClient:
    """The ``Policy`` API (``reset``, ``act``, ``act_batch``) over a ``PolicyServer``, in a session
    of its own (opened on first use). ``transport``: "json" or "msgpack"."""

    def __init__(self, url: str, timeout: float = 30.0, *, token: str | None = None, transport: str = "json"):
        if transport not in ("json", "msgpack"):
            raise ValueError(f"transport: expected 'json' or 'msgpack', got {transport!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token
        self.binary = transport == "msgpack"
        self.session: str | None = None

    def _post(self, path: str, body: dict) -> dict:
        content_type = MSGPACK if self.binary else JSON
        data = msgpack.packb(body) if self.binary else json.dumps(body).encode()
        headers = {"Content-Type": content_type}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            raw = response.read()
        return msgpack.unpackb(raw, raw=False) if self.binary else json.loads(raw)

    def _session_id(self) -> str:
        if self.session is None:
            self.session = self._post("/session", {})["session"]
        return self.session

    def reset(self, env_index: int | None = None) -> None:
        self._post("/reset", {"session": self._session_id(), "env_index": env_index})

    def act(self, observation: Observation) -> np.ndarray:
        return self.act_batch([observation])[0]

    def act_batch(self, observations: list[Observation]) -> np.ndarray:
        body = {"session": self._session_id(),
                "observations": [encode_observation(obs, self.binary) for obs in observations]}
        return np.asarray(self._post("/act", body)["actions"], np.float32)

    def close(self) -> None:
        if self.session is not None:
            self._post("/close", {"session": self.session})
            self.session = None
