"""HSDP across two Ray nodes matches FSDP on one, and a node lost mid-run (as a spot instance is): the run goes on.

The cluster is a real multi-node Ray cluster on this machine (a head and two worker nodes,
each its own raylet), driven from its own process so the test session's Ray is untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from multinode_run import KILL_AFTER_CHECKPOINT
from procs import ROOT, pythonpath
from run_overrides import TINY_RUN

from vla.train.progress import read_metrics

STEPS = 10
LOSS_RTOL = 1e-4  # HSDP and FSDP sum the same gradients in another order
RUN = [
    "run.name=multinode",
    *TINY_RUN,
    f"train.max_steps={STEPS}",
    "train.checkpoint_every=2",
    "train.num_workers=4",
    "train.cpus_per_worker=1.5",
    "train.hsdp_replicas=2",
    "train.min_workers=2",
    "train.max_failures=2",
]


def records(run_dir: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(run_dir / "metrics.jsonl") if key in r]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_hsdp_on_two_nodes_matches_fsdp_on_one_and_survives_losing_a_node(synthetic_root, tmp_path):
    out = tmp_path / "outcome.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/cluster/multinode_run.py"), synthetic_root, str(tmp_path / "runs"),
         str(out), *RUN],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath()}, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-4000:]
    outcome = json.loads(out.read_text())
    assert outcome["error"] is None, proc.stderr[-4000:]

    # Placement: two workers on each worker node (HSDP: replicate across them, shard within).
    assert outcome["placement_before"] == {"a": 2, "b": 2}
    # Node b went away: the group restarted on what was left (elastic, 2 workers on a).
    assert outcome["placement_after"] == {"a": 2}
    assert re.search(rf"resuming at step \d+ of {STEPS} on 2 cpu worker", proc.stderr)
    assert outcome["final_step"] == STEPS

    run_dir = Path(outcome["run_dir"])
    resumed = [step for step, _ in records(run_dir, "checkpoint_load_s")]
    assert resumed and resumed[0] >= 4
    # The loss curve continues: every step logged, the later ones lower.
    losses = dict(records(run_dir, "loss"))
    assert set(range(1, STEPS + 1)) <= set(losses)
    assert sum(losses[s] for s in range(STEPS - 2, STEPS + 1)) < sum(losses[s] for s in range(1, 4))
    # Nothing half-written: every checkpoint folder kept is complete.
    for checkpoint in run_dir.glob("checkpoint_step*"):
        assert (checkpoint / "train_state.json").is_file(), checkpoint

    # Until node b was lost, HSDP over the two nodes trained as plain FSDP of the same global
    # batch on one node does: the same windows per rank (the plan is a function of seed, epoch,
    # rank and world size) and the same mean gradients, so the same losses.
    reference = outcome["reference"]
    assert reference["error"] is None, proc.stderr[-4000:]
    assert reference["placement"] == {"c": 4}
    fsdp = dict(records(Path(reference["run_dir"]), "loss"))
    before_loss = range(1, KILL_AFTER_CHECKPOINT + 1)
    assert [fsdp[s] for s in before_loss] == pytest.approx([losses[s] for s in before_loss], rel=LOSS_RTOL)
