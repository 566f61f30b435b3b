"""Per-request latency of the policy server, JSON vs msgpack, for 2 x 224 px frames.

    python benchmarks/server_latency.py [--export DIR] [--requests 50]

Without --export a tiny untrained policy (hidden 32, 1 layer, image_size 32) is built, so the
figures are dominated by transport (encoding, HTTP, decoding, resizing 224 -> the model's size).
Prints median and p90 milliseconds per /act and the request size for each transport, and the
same policy's ``act`` called in process (no transport) for reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import msgpack
import numpy as np
import torch

from vla.action_space import ActionSpace
from vla.config import load_config
from vla.data import ActionStats, Normalization
from vla.model import build_model, save_export
from vla.policy import Policy, PolicyClient, PolicyServer
from vla.policy.server import encode_observation

TINY = ["model.tiny_hidden_size=32", "model.tiny_num_layers=1", "model.window_size=4",
        "model.head_hidden_size=32", "model.head_num_layers=1"]


def tiny_export(directory: str, overrides: list[str] = TINY) -> str:
    """An untrained export of ``overrides``' model (unit action statistics: normalization is the identity)."""
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    stats = ActionStats(count=1, min=[-1.0] * 7, max=[1.0] * 7, mean=[0.0] * 7, std=[1.0] * 7,
                        q01=[-1.0] * 7, q99=[1.0] * 7)
    normalization = Normalization.from_stats(stats, None, ActionSpace(), None, cfg.data)
    save_export(directory, build_model(cfg.model), run_config=cfg.to_dict(), normalization=normalization.to_dict())
    return directory


def measure(act, observation: dict, requests: int) -> list[float]:
    act(observation)  # session opened, first-call costs paid
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        act(observation)
        times.append((time.perf_counter() - start) * 1000)
    return times


def show(name: str, times: list[float], size: str = "") -> None:
    p90 = statistics.quantiles(times, n=10)[-1]
    print(f"{name:10s} median {statistics.median(times):7.2f} ms   p90 {p90:7.2f} ms   {size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    export = args.export or tiny_export(tempfile.mkdtemp(prefix="vla_bench_export_"))
    policy = Policy.load(export)
    rng = np.random.default_rng(0)
    observation = {"images": {c: rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
                              for c in policy.preprocessor.cameras}, "instruction": "pick up the red block"}
    server = PolicyServer(policy).start()
    try:
        print(f"{len(policy.preprocessor.cameras)} x 224 px frames, {args.requests} requests per transport")
        acts = {"json": PolicyClient(server.url).act, "msgpack": PolicyClient(server.url, transport="msgpack").act,
                "in process": Policy.load(export).act}
        times = {name: [] for name in acts}
        for _ in range(args.requests):  # interleaved, so load changes hit every transport alike
            for name, act in acts.items():
                times[name] += measure(act, observation, 1)
        for name in acts:
            size = ""
            if name != "in process":
                body = {"session": "x" * 16, "observations": [encode_observation(observation, name == "msgpack")]}
                size = len(msgpack.packb(body)) if name == "msgpack" else len(json.dumps(body).encode())
                size = f"request {size / 1024:.1f} KiB"
            show(name, times[name], size)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
