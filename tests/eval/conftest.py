"""Policy exports for the evaluation tests, laid out as training writes them (model, stats, run config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vla.config import Config, load_config
from vla.data import ActionNormalizer, load_metadata
from vla.model import VLAModel, build_model, save_export

TINY_MODEL = ["model.tiny_hidden_size=32", "model.tiny_num_layers=1", "model.window_size=2",
              "model.head_hidden_size=32", "model.head_num_layers=1"]


def write_export(directory: Path, model: VLAModel, cfg: Config) -> str:
    """What ``vla.train.loop.export_policy`` writes: the model, ``normalization.json``, ``config.yaml``."""
    normalizer = ActionNormalizer.from_metadata(load_metadata(cfg.data.path), cfg.data)
    save_export(directory, model, run_config=cfg.to_dict(), normalization=normalizer.to_dict())
    return str(directory)


@pytest.fixture(scope="session")
def export_writer():
    """``write_export`` for tests that train their own model."""
    return write_export


@pytest.fixture(scope="session")
def untrained_export(tmp_path_factory, synthetic_root) -> str:
    cfg = load_config(None, [f"data.path={synthetic_root}", *TINY_MODEL])
    torch.manual_seed(0)
    return write_export(tmp_path_factory.mktemp("untrained"), build_model(cfg.model), cfg)
