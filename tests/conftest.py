"""Shared fixtures: one local Ray session for the whole test run (starting Ray costs seconds)."""

from __future__ import annotations

import os

import pytest
from run_overrides import TINY_RUN

# No test ever talks to the wandb servers.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """A local Ray cluster shared by every test that asks for it.

    Four logical CPUs on a 2-core machine: the decode tasks and two Train workers at
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


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """A small synthetic dataset (train + val splits) written once per test session."""
    from vla.data.converters.synthetic import convert_synthetic

    root = str(tmp_path_factory.mktemp("synthetic"))
    convert_synthetic(root, episodes=12, val_episodes=4, image_size=32, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_run(synthetic_root):
    """``tiny_run(storage, name)``: overrides for a tiny, fast 2-worker run on the synthetic dataset."""
    return lambda storage, name: tiny_run_overrides(synthetic_root, str(storage), name)


def tiny_run_overrides(data_root: str, storage: str, name: str) -> list[str]:
    return [
        f"data.path={data_root}",
        f"run.storage_path={storage}",
        f"run.name={name}",
        *TINY_RUN,
        "train.num_workers=2",
        "train.val_batches=2",
    ]
