"""A served policy from Python with this package's numpy: openpi's protocol, one session per client.

    client = PolicyClient("127.0.0.1", 8000, api_key=os.environ.get("VLA_API_KEY"))
    chunk = client.infer({"images": {...}, "prompt": "pick up the red block"})["actions"]   # [N, D]

Robots use ``openpi_client.websocket_client_policy.WebsocketClientPolicy(host, port)`` itself;
this twin serves callers that cannot take its ``numpy<2`` pin (benchmarks, evaluation scripts).
"""

from __future__ import annotations

from websockets.sync.client import connect

from vla.policy.msgpack_numpy import packb, unpackb


class ServerError(RuntimeError):
    """The server answered with a text frame (the message names the field)."""


class PolicyClient:
    def __init__(self, host: str, port: int, api_key: str | None = None, timeout: float = 60.0):
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self.websocket = connect(f"ws://{host}:{port}/", compression=None, max_size=None,
                                 additional_headers=headers, open_timeout=timeout,
                                 legacy=True)  # a connection this object holds, closed by close()
        self.timeout = timeout
        self.metadata = unpackb(self.websocket.recv(timeout))

    def infer(self, observation: dict) -> dict:
        self.websocket.send(packb(observation))
        answer = self.websocket.recv(self.timeout)
        if isinstance(answer, str):
            raise ServerError(answer)
        return unpackb(answer)

    def close(self) -> None:
        self.websocket.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
