"""Policy exports for the evaluation tests, laid out as training writes them (model, stats, run config)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.plain_closed_loop import write_export
from vla.config import load_config
from vla.model import build_model

TINY_MODEL = ["model.tiny_hidden_size=32", "model.tiny_num_layers=1", "model.window_size=2",
              "model.head_hidden_size=32", "model.head_num_layers=1"]


@pytest.fixture(scope="session")
def export_writer():
    """``write_export`` for tests that train their own model."""
    return write_export


@pytest.fixture(scope="session")
def untrained_export(tmp_path_factory, synthetic_root) -> str:
    cfg = load_config(None, [f"data.path={synthetic_root}", *TINY_MODEL])
    torch.manual_seed(0)
    return write_export(tmp_path_factory.mktemp("untrained"), build_model(cfg.model), cfg)
