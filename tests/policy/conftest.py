"""A tiny untrained policy export, laid out as training writes it (model, stats, run config)."""

from __future__ import annotations

import pytest
import torch

from vla.config import load_config
from vla.data import Normalization, load_metadata
from vla.model import build_model, save_export

TINY_MODEL = ["model.tiny_hidden_size=32", "model.tiny_num_layers=1", "model.window_size=3",
              "model.head_hidden_size=32", "model.head_num_layers=1"]


def write_tiny_export(directory, synthetic_root: str, overrides: list[str] = ()) -> str:
    """Quantile normalization, so un-normalizing really rescales the pose; the state's
    normalization saved too when the overrides give the model a state."""
    cfg = load_config(None, [f"data.path={synthetic_root}", "data.normalization=quantile", *TINY_MODEL, *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    normalization = Normalization.from_metadata(load_metadata(synthetic_root), cfg.data, use_state=cfg.model.state_dim > 0)
    save_export(directory, model, run_config=cfg.to_dict(), normalization=normalization.to_dict())
    return str(directory)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, synthetic_root) -> str:
    return write_tiny_export(tmp_path_factory.mktemp("export"), synthetic_root)


@pytest.fixture(scope="session")
def state_export(tmp_path_factory, synthetic_root) -> str:
    """A policy that reads the synthetic task's 4-value robot state."""
    return write_tiny_export(tmp_path_factory.mktemp("state_export"), synthetic_root, ["model.state_dim=4"])
