"""Shared fixtures: one local Ray session for the whole test run (starting Ray costs seconds)."""

from __future__ import annotations

import os

import pytest

# No test ever talks to the wandb servers.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray cluster shared by every test that asks for it.

    Four logical CPUs on a 2-core machine: Ray Data tasks and two Train workers at
    0.5 CPU each then always both get a budget (see the stack notes on the data hang).
    The dashboard stays on: Tune + Train V2 leaks placement groups without it.
    """
    import ray

    ray.init(
        num_cpus=4,
        include_dashboard=True,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield ray
    ray.shutdown()
