"""A model's weights from a training checkpoint folder (DCP shards of any world size), and the
marker that says the folder was completely written (``vla.train.checkpoint`` writes both)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp

from vla.model.config import ModelConfig
from vla.model.vla_model import VLAModel, build_model

TRAIN_STATE_FILE = "train_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or does not match the run."""


def read_train_state(directory: Path) -> dict:
    """The ``train_state.json`` record of a complete checkpoint; ``CheckpointError`` otherwise."""
    marker = directory / TRAIN_STATE_FILE
    if not (directory / ".metadata").is_file() or not marker.is_file():
        raise CheckpointError(
            f"checkpoint {directory} is incomplete (no .metadata or {TRAIN_STATE_FILE}): "
            "it was not completely written and will not be resumed from"
        )
    return json.loads(marker.read_text())


def load_checkpoint_model(checkpoint_dir: Path, model_cfg: ModelConfig) -> VLAModel:
    """The model of ``model_cfg`` with the weights of a complete (sharded) training checkpoint,
    unsharded in this process (DCP reshards on load)."""
    read_train_state(checkpoint_dir)  # refuses an incomplete checkpoint
    model = build_model(model_cfg)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # one process reading every rank's shards is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(checkpoint_dir), no_dist=True)
    model.load_state_dict(state["model"])
    return model
