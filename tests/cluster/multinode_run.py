"""A training run on a 3-node Ray cluster on this machine; one worker node is removed mid-run.

    python tests/cluster/multinode_run.py DATA_ROOT STORAGE OUT_JSON [key=value ...]

Runs in its own process (its own Ray cluster, apart from the test session's): a head with
1 CPU (the driver, decode tasks) and two worker nodes of 3 CPUs, each with its own custom
resource, so 2 training workers of 1.5 CPU fit on each. When the checkpoint of step
``KILL_AFTER_CHECKPOINT`` is complete, node ``b`` is removed the way a spot instance goes
(raylet and workers killed, no drain). Then a node ``c`` of 6 CPUs joins, and the same run
(same global batch, 4 workers) trains again as plain FSDP (``hsdp_replicas=1``), all its
workers on that one node: the reference for the HSDP run's losses before the node was lost.
Writes what happened to OUT_JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray._private import state
from ray.cluster_utils import Cluster

from vla.config import load_config
from vla.train.checkpoint import TRAIN_STATE_FILE
from vla.train.launch import run_training

KILL_AFTER_CHECKPOINT = 4
TIMEOUT_S = 240


def alive_workers(names: dict[str, str]) -> dict[str, str]:
    """Alive Ray Train workers: actor id -> the name of its node."""
    return {
        actor_id: names.get(actor["Address"]["NodeID"], "?")
        for actor_id, actor in state.actors().items()
        if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE"
    }


def per_node(workers: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in workers.values():
        counts[node] = counts.get(node, 0) + 1
    return counts


def wait_for(condition, what: str, deadline: float):
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"timed out waiting for {what}")


def main(data_root: str, storage: str, out_json: str, overrides: list[str]) -> None:
    # Its own temp dir: the cluster's address file must not make other processes' ray.init() join it.
    temp_dir = tempfile.mkdtemp(prefix="vla-multinode-")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp_dir})
    try:
        run(cluster, data_root, storage, out_json, overrides)
    finally:
        ray.shutdown()
        cluster.shutdown()


def run(cluster: Cluster, data_root: str, storage: str, out_json: str, overrides: list[str]) -> None:
    nodes = {name: cluster.add_node(num_cpus=3, resources={f"node_{name}": 1}) for name in ("a", "b")}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=True)
    names = {cluster.head_node.node_id: "head", **{node.node_id: name for name, node in nodes.items()}}
    cfg = load_config(None, [f"data.path={data_root}", f"run.storage_path={storage}", *overrides])
    run_dir = Path(storage) / cfg.run.name
    deadline = time.monotonic() + TIMEOUT_S
    thread, outcome = start_training(cfg)
    first = wait_for(lambda: (w := alive_workers(names)) and len(w) == cfg.train.num_workers and w,
                     "the first worker group", deadline)
    marker = run_dir / f"checkpoint_step{KILL_AFTER_CHECKPOINT:07d}" / TRAIN_STATE_FILE
    wait_for(marker.is_file, f"checkpoint {KILL_AFTER_CHECKPOINT}", deadline)
    cluster.remove_node(nodes["b"], allow_graceful=False)
    restarted = wait_for(
        lambda: (w := alive_workers(names)) and not w.keys() & first.keys() and len(w) >= cfg.train.min_workers and w,
        "the restarted worker group", deadline)
    thread.join(timeout=max(1.0, deadline - time.monotonic()))
    result = outcome.get("result")
    report = {
        "placement_before": per_node(first),
        "placement_after": per_node(restarted),
        "error": outcome.get("error") or (None if result else "no result before the timeout"),
        "final_step": result.metrics.get("step") if result else None,
        "run_dir": str(run_dir),
    }
    if result:
        names[cluster.add_node(num_cpus=6, resources={"node_c": 1}).node_id] = "c"
        cluster.wait_for_nodes()
        report["reference"] = single_node_fsdp(names, data_root, storage, overrides, deadline + TIMEOUT_S)
    Path(out_json).write_text(json.dumps(report))


def start_training(cfg) -> tuple[threading.Thread, dict]:
    """``run_training(cfg)`` in a thread; the dict gets its ``result`` or its ``error``."""
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = run_training(cfg)
        except Exception as err:  # reported to the test through OUT_JSON
            outcome["error"] = repr(err)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    return thread, outcome


def single_node_fsdp(names: dict[str, str], data_root: str, storage: str, overrides: list[str],
                     deadline: float) -> dict:
    """The same run as plain FSDP over as many workers, packed on one node, from scratch."""
    cfg = load_config(None, [f"data.path={data_root}", f"run.storage_path={storage}", *overrides,
                             "run.name=fsdp-reference", "train.hsdp_replicas=1", "train.min_workers=0",
                             "train.max_failures=0"])
    thread, outcome = start_training(cfg)
    workers = wait_for(lambda: (w := alive_workers(names)) and len(w) == cfg.train.num_workers and w,
                       "the reference worker group", deadline)
    thread.join(timeout=max(1.0, deadline - time.monotonic()))
    return {
        "placement": per_node(workers),
        "error": outcome.get("error") or (None if outcome.get("result") else "no result before the timeout"),
        "run_dir": str(Path(storage) / cfg.run.name),
    }


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
