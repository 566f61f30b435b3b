"""Act latency of each policy head on the demo's model (tune_spaces/heads.yaml's presets), in process.

    nice -n 10 python benchmarks/head_latency.py [--requests 50] [--envs 8]

Run from the repository root. For each preset of tune_spaces/heads.yaml the demo's model
(configs/demo.yaml: tiny PaliGemma, hidden 128, 2 cameras at 32 px) is built with that head (untrained: the latency does not depend
on the weights), exported and loaded with ``Policy.load``. Prints the median and p90 milliseconds
of ``Policy.act`` (one environment, one frame) and of ``Policy.act_chunk_batch`` over ``--envs``
environments, calls interleaved across heads so that load changes on a shared machine hit every
head alike, and the share of ``act`` the head itself takes (its forward alone, timed the same way).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from server_latency import demo_export  # benchmarks/, on the path when this script runs

from vla.policy import Policy

SPACE = Path(__file__).resolve().parents[1] / "tune_spaces" / "heads.yaml"


def milliseconds(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--envs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    presets = yaml.safe_load(SPACE.read_text())["presets"]
    root = Path(tempfile.mkdtemp(prefix="vla_head_latency_"))
    policies = {name: Policy.load(demo_export(str(root / name), [f"{k}={v}" for k, v in overrides.items()]))
                for name, overrides in presets.items()}
    rng = np.random.default_rng(0)
    first = next(iter(policies.values()))
    observation = {"images": {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in first.cameras},
                   "instruction": "pick up the red block"}
    batch = [observation] * args.envs
    times = {name: {"act": [], "chunk": [], "head": []} for name in policies}
    for policy in policies.values():  # first calls (allocation, lazy init) paid before timing
        policy.act(observation)
        policy.reset()
        policy.act_chunk_batch(batch)
    for _ in range(args.requests):
        for name, policy in policies.items():
            policy.reset()
            times[name]["act"].append(milliseconds(lambda: policy.act(observation)))
            policy.reset()
            times[name]["chunk"].append(milliseconds(lambda: policy.act_chunk_batch(batch)))
            model = policy.model
            features = torch.zeros(1, 1, model.config.latent_num, model.backbone.hidden_size)
            with torch.no_grad():
                times[name]["head"].append(milliseconds(lambda: model.head(features)))
    print(f"{args.requests} calls each, interleaved; 1 thread; act_chunk_batch over {args.envs} environments")
    print("| head | chunk steps | `Policy.act` median (p90) | `act_chunk_batch` median (p90) | head forward median |")
    print("|---|---|---|---|---|")
    for name, policy in policies.items():
        row = [f"{statistics.median(times[name][k]):.2f} ({statistics.quantiles(times[name][k], n=10)[-1]:.2f}) ms"
               for k in ("act", "chunk")]
        print(f"| {name} | {policy.chunk_length} | {row[0]} | {row[1]} | "
              f"{statistics.median(times[name]['head']):.2f} ms |")


if __name__ == "__main__":
    main()
