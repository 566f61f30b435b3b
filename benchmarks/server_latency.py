"""The policy server under a fleet: latency and throughput for 1-64 robots, batched against one-at-a-time.

    python benchmarks/server_latency.py [--export DIR] [--clients 1 8 32 64] [--seconds 8] [--device cpu]

Each client is a robot in a closed loop over openpi's websocket protocol: it sends an observation
(two 224 px RGB frames and a prompt), waits for the chunk, sends the next. The same application
(`vla.policy.server`, local Ray Serve) runs twice: batched (`--max-batch 64`: observations of
every connection stepped in one forward pass) and one-at-a-time (`--max-batch 1`). Printed per
client count: p50 / p99 milliseconds per answer, answers/s, actions/s (answers x chunk length) and
the mean batch (observations per forward pass, from the replica's /healthz, warm-up included).
Without --export an untrained model of the demo's architecture with an LSTM head over a 4-frame
history and 5-step chunks is built (the figures measure serving, not skill).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import time
import urllib.request

import numpy as np
import torch
from websockets.asyncio.client import connect

from vla.action_space import ActionSpace
from vla.config import load_config
from vla.data import ActionStats, Normalization
from vla.model import build_model, save_export
from vla.policy.msgpack_numpy import packb, unpackb

MODEL = ["model.head=lstm", "model.window_size=4", "model.fwd_pred_next_n=5"]


def demo_export(directory: str, overrides: list[str] = MODEL) -> str:
    """An untrained export of the demo's model with ``overrides`` (unit statistics: normalization is the identity)."""
    cfg = load_config("configs/demo.yaml", overrides)
    torch.manual_seed(0)
    stats = ActionStats(count=1, min=[-1.0] * 7, max=[1.0] * 7, mean=[0.0] * 7, std=[1.0] * 7,
                        q01=[-1.0] * 7, q99=[1.0] * 7)
    normalization = Normalization.from_stats(stats, None, ActionSpace(), None, cfg.data)
    save_export(directory, build_model(cfg.model), run_config=cfg.to_dict(), normalization=normalization.to_dict())
    return directory


async def robot(url: str, frame: bytes, deadline: float, warmup: float, latencies: list[float]) -> int:
    """One closed-loop client until ``deadline``; latencies after ``warmup``; returns the chunk length."""
    async with connect(url, compression=None, max_size=None) as websocket:
        chunk_length = unpackb(await websocket.recv())["chunk_length"]
        while (start := time.perf_counter()) < deadline:
            await websocket.send(frame)
            unpackb(await websocket.recv())
            if start >= warmup:
                latencies.append((time.perf_counter() - start) * 1000)
        return chunk_length


async def fleet(url: str, frame: bytes, clients: int, seconds: float) -> tuple[list[float], float, int]:
    warmup = time.perf_counter() + 2.0
    deadline = warmup + seconds
    latencies: list[float] = []
    chunk_lengths = await asyncio.gather(*(robot(url, frame, deadline, warmup, latencies) for _ in range(clients)))
    return latencies, seconds, chunk_lengths[0]


def counts(port: int) -> np.ndarray:
    """The replica's (forward passes, observations) so far, from /healthz."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as answer:
        health = json.load(answer)
    return np.array([health["forward_passes"], health["observations"]])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured per row, after 2 s of warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=224, help="pixels of each camera's frame the robots send")
    args = parser.parse_args()
    export = args.export or demo_export(tempfile.mkdtemp(prefix="vla_bench_export_"))

    import ray
    from ray import serve

    from vla.policy.server import APP_NAME, build_app

    ray.init(address="local", log_to_driver=False)  # its own cluster, never another process's
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rng = np.random.default_rng(0)
    observation = {"images": {c: rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8) for c in ("static", "wrist")},
                   "prompt": "pick up the red block", "state": np.zeros(4, np.float32)}
    frame = packb(observation)
    print(f"2 x {args.image_size} px frames ({len(frame) / 1024:.0f} KiB a frame), {args.seconds:.0f} s per row, device {args.device}")
    print("| mode | clients | p50 ms | p99 ms | answers/s | actions/s | mean batch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, max_batch in (("batched", max(args.clients)), ("one-at-a-time", 1)):
        serve.run(build_app({"export": export, "device": args.device, "max_batch": max_batch,
                             "max_connections": max(args.clients)}), name=APP_NAME, route_prefix="/")
        for clients in args.clients:
            before = counts(port)
            latencies, seconds, chunk = asyncio.run(fleet(f"ws://127.0.0.1:{port}/", frame, clients, args.seconds))
            passes, observations = counts(port) - before
            p50, p99 = np.percentile(latencies, [50, 99])
            rate = len(latencies) / seconds
            print(f"| {mode} | {clients} | {p50:.1f} | {p99:.1f} | {rate:.0f} | {rate * chunk:.0f} "
                  f"| {observations / passes:.1f} |", flush=True)
    serve.shutdown()


if __name__ == "__main__":
    main()
