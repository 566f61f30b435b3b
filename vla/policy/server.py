"""A policy behind a Ray Serve application that speaks openpi's websocket protocol.

    python pipelines/serve.py --export ~/vla_runs/demo/export --port 8000     # local Ray
    serve deploy configs/serve/policy.yaml                                  # a Ray cluster

A robot connects to ``ws://HOST:PORT/`` with ``openpi_client``'s ``WebsocketClientPolicy(HOST, PORT)``:

- on connect the server sends one binary msgpack frame of metadata (``protocol.metadata``);
- each binary frame from the client is an observation (``protocol.parse_observation``), arrays
  in openpi's msgpack_numpy encoding (``vla.policy.msgpack_numpy``); it is answered with one
  binary frame ``{"actions": [N, D] float32}``, the whole predicted chunk;
- a malformed or oversized frame is answered with a text frame naming the field, then the
  connection closes (1011; 1009 when too large); other connections are unaffected;
- with ``api_key_env`` set, the handshake needs ``Authorization: Api-Key <key>`` (the key read
  from that environment variable on the replica), otherwise it is refused (HTTP 403).

A connection is a session: its own policy history (``Policy.act_chunk_sessions``), forgotten
when it closes or when an observation carries ``"reset": true``. Observations arriving from
many connections are stepped together in one forward pass (``@serve.batch``), each session
keeping its own history; a connection takes part in a batch only once its whole frame has
arrived, and each answer is sent on its own connection, so a slow or dead client holds up
nobody. ``GET /healthz`` answers from the same application.
"""

import asyncio
import hmac
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket
from ray import serve
from ray.serve import Application

from vla.policy.msgpack_numpy import WireError, packb, unpackb
from vla.policy.policy import Observation, Policy
from vla.policy.protocol import ObservationError, metadata, parse_observation
from vla.typed_config import check, from_dict

APP_NAME = "vla-policy"
PROXY_FRAME_LIMIT_MB = 16.0  # the Serve proxy's own websocket limit (uvicorn's default)
INTERNAL_ERROR, POLICY_VIOLATION, TOO_BIG = 1011, 1008, 1009  # websocket close codes


@dataclass
class ServeConfig:
    """One replica's settings (the ``args`` of a ``serve deploy`` config)."""

    export: str = ""  # the policy export folder (local path or s3://)
    device: str = "cpu"  # torch device of each replica's policy (cuda: one GPU per replica)
    replicas: int = 1  # copies of the policy, each behind the same endpoint
    max_batch: int = 32  # observations stepped in one forward pass, at most
    batch_wait_ms: float = 0.0  # how long a batch waits for more observations once one arrived
    max_connections: int = 256  # robots connected to one replica at once (each is an ongoing request)
    max_frame_mb: float = 8.0  # larger observation frames are refused (2 x 224 px RGB is ~0.3 MB)
    api_key_env: str | None = None  # the environment variable holding the API key; None: no auth

    def validate(self) -> None:
        check(bool(self.export), "export", "must name a policy export folder")
        check(self.replicas >= 1, "replicas", "must be >= 1")
        check(self.max_batch >= 1, "max_batch", "must be >= 1")
        check(self.batch_wait_ms >= 0, "batch_wait_ms", "must be >= 0")
        check(self.max_connections >= self.max_batch, "max_connections", "must be >= max_batch")
        check(0 < self.max_frame_mb <= PROXY_FRAME_LIMIT_MB, "max_frame_mb",
              f"must be in (0, {PROXY_FRAME_LIMIT_MB}] (the Serve proxy's own limit)")
        check(self.api_key_env is None or bool(self.api_key_env), "api_key_env", "must be null or a variable name")

    @property
    def max_frame_bytes(self) -> int:
        return int(self.max_frame_mb * 2**20)


class FrameError(ValueError):
    """A frame refused before it is decoded; ``code`` is the websocket close code."""

    def __init__(self, message: str, code: int = INTERNAL_ERROR):
        super().__init__(message)
        self.code = code


@dataclass
class Step:
    """One observation waiting for the batch: the session it continues and what to feed."""

    session: str
    observation: Observation


fastapi_app = FastAPI()


@serve.deployment(name="PolicyDeployment")
@serve.ingress(fastapi_app)
class PolicyDeployment:
    def __init__(self, config: ServeConfig):
        config.validate()
        self.config = config
        self.api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        if config.api_key_env and not self.api_key:
            raise ValueError(f"api_key_env: ${config.api_key_env} is not set on this replica's node")
        self.policy = Policy.load(config.export, device=config.device)
        self.metadata_frame = packb(metadata(self.policy))
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self.forward_passes = self.observations = 0
        self.step.set_max_batch_size(config.max_batch)
        self.step.set_batch_wait_timeout_s(config.batch_wait_ms / 1000)

    @fastapi_app.get("/healthz")
    def healthz(self) -> dict:
        """Liveness, and this replica's counts since it started (observations / forward passes = mean batch)."""
        return {"status": "ok", "forward_passes": self.forward_passes, "observations": self.observations}

    @fastapi_app.websocket("/")
    async def connect(self, websocket: WebSocket) -> None:
        if not self.authorized(websocket.headers.get("authorization", "")):
            await websocket.close(code=POLICY_VIOLATION)  # before accept: the handshake gets HTTP 403
            return
        await websocket.accept()
        session = uuid.uuid4().hex
        try:
            await websocket.send_bytes(self.metadata_frame)
            while (frame := await self.receive(websocket)) is not None:
                observation, reset = parse_observation(unpackb(frame), self.policy)
                if reset:
                    self.policy.end_session(session)
                actions = await self.step(Step(session, observation))
                await websocket.send_bytes(packb({"actions": actions}))
        except (FrameError, WireError, ObservationError) as err:
            await self.refuse(websocket, str(err), getattr(err, "code", INTERNAL_ERROR))
        except Exception as err:  # a fault of the server (or a client gone mid-answer): this connection only
            await self.refuse(websocket, f"server error: {type(err).__name__}: {err}", INTERNAL_ERROR)
        finally:
            self.policy.end_session(session)

    def authorized(self, header: str) -> bool:
        return self.api_key is None or hmac.compare_digest(header.encode(), f"Api-Key {self.api_key}".encode())

    async def receive(self, websocket: WebSocket) -> bytes | None:
        """The next binary frame, or None once the client has gone."""
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        frame = message.get("bytes")
        if frame is None:
            raise FrameError("frame: expected a binary msgpack frame, got text")
        if len(frame) > self.config.max_frame_bytes:
            raise FrameError(f"frame: {len(frame)} bytes, over the server's limit of "
                             f"{self.config.max_frame_bytes} bytes", TOO_BIG)
        return frame

    @staticmethod
    async def refuse(websocket: WebSocket, message: str, code: int) -> None:
        """A text frame with ``message``, then close with ``code``; a client already gone is let go."""
        try:
            await websocket.send_text(message)
            await websocket.close(code=code)
        except Exception:  # the connection is already closed: nobody left to tell
            pass

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def step(self, steps: list[Step]) -> list[np.ndarray]:
        """The observations of many sessions in one forward pass (on the model's own thread)."""
        chunks = await asyncio.get_running_loop().run_in_executor(
            self._model_thread, self.policy.act_chunk_sessions,
            [s.session for s in steps], [s.observation for s in steps])
        self.forward_passes += 1
        self.observations += len(steps)
        return list(chunks.astype(np.float32))


def build_app(args: dict[str, Any]) -> Application:
    """The application of ``serve deploy`` (``import_path: vla.policy.server:build_app``, ``args``
    the ``ServeConfig`` fields); an unknown or bad argument fails here, naming it."""
    config = from_dict(ServeConfig, dict(args))  # validated
    gpus = 1 if config.device.startswith("cuda") else 0
    return PolicyDeployment.options(num_replicas=config.replicas, max_ongoing_requests=config.max_connections,
                                    ray_actor_options={"num_cpus": 1, "num_gpus": gpus}).bind(config)
