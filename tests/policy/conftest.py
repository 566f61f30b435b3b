"""A tiny untrained policy export, laid out as training writes it (model, stats, run config)."""

from __future__ import annotations


import pytest
import torch

from vla.config import load_config
from vla.data import ActionNormalizer, load_metadata
from vla.model import build_model, save_export

TINY_MODEL = ["model.tiny_hidden_size=32", "model.tiny_num_layers=1", "model.window_size=3",
              "model.head_hidden_size=32", "model.head_num_layers=1"]


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, synthetic_root) -> str:
    """Quantile normalization, so un-normalizing really rescales the pose."""
    cfg = load_config(None, [f"data.path={synthetic_root}", "data.normalization=quantile", *TINY_MODEL])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    normalizer = ActionNormalizer.from_metadata(load_metadata(synthetic_root), cfg.data)
    directory = tmp_path_factory.mktemp("export")
    save_export(directory, model, run_config=cfg.to_dict(), normalization=normalizer.to_dict())
    return str(directory)
