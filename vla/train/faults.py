"""Fault injection for the fault-injection tests: a Train worker that dies by SIGKILL.

``train.inject_kill_at_step=N`` kills the rank-1 worker (rank 0 on one worker) with SIGKILL
right after the checkpoint of step ``N`` was reported, once per run (a marker file in the
run folder remembers it): Ray may not have registered that checkpoint yet, which is exactly
the case resuming from the newest checkpoint on disk is for.
"""

from __future__ import annotations

import os
import signal

import torch.distributed as dist

from vla.storage import exists, write_bytes


def maybe_kill_after_checkpoint(step: int, kill_at: int, run_dir: str) -> None:
    victim = min(1, dist.get_world_size() - 1)
    marker = f"{run_dir}/injected_kill_step{kill_at}"
    if kill_at and step == kill_at and dist.get_rank() == victim and not exists(marker):
        write_bytes(marker, b"")
        os.kill(os.getpid(), signal.SIGKILL)
