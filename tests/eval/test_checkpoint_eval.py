"""A training checkpoint (sharded DCP) evaluates as the same policy as the export of the same
weights: what evaluation during training and closed-loop sweep scores rely on. No Ray."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from vla.config import load_config
from vla.eval.checkpoint import closed_loop_metrics
from vla.eval.offline import evaluate_offline_local
from vla.model import build_model
from vla.policy import Policy
from vla.sim import SimConfig, SyntheticEnv
from vla.train.checkpoint import TRAIN_STATE_FILE, CheckpointError

TINY = ["model.tiny_hidden_size=32", "model.tiny_num_layers=1", "model.window_size=2",
        "model.head_hidden_size=32", "model.head_num_layers=1", "data.batch_size=4", "train.eval.episodes=3"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, synthetic_root, export_writer):
    cfg = load_config(None, [f"data.path={synthetic_root}", *TINY])
    torch.manual_seed(3)
    model = build_model(cfg.model)
    root = tmp_path_factory.mktemp("weights")
    export = export_writer(root / "export", model, cfg)
    checkpoint = root / "checkpoint"
    with warnings.catch_warnings():  # one process writing the checkpoint is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(checkpoint), no_dist=True)
    return cfg, export, checkpoint


def test_a_checkpoint_acts_and_scores_as_its_export(weights):
    cfg, export, checkpoint = weights
    with pytest.raises(CheckpointError, match="incomplete"):  # no train_state.json yet
        Policy.from_checkpoint(checkpoint, cfg, {})
    (checkpoint / TRAIN_STATE_FILE).write_text("{}")
    normalization = json.loads((Path(export) / "normalization.json").read_text())
    from_checkpoint, from_export = Policy.from_checkpoint(checkpoint, cfg, normalization), Policy.load(export)

    observations = [SyntheticEnv(SimConfig()).reset(seed) for seed in (1, 2)]
    np.testing.assert_allclose(from_checkpoint.act_batch(observations), from_export.act_batch(observations), atol=1e-5)
    offline = [evaluate_offline_local(policy, cfg, "val", batch_size=4, max_batches=2)
               for policy in (from_checkpoint, from_export)]
    assert offline[0]["windows"] == 8 and offline[0]["loss"] == pytest.approx(offline[1]["loss"], rel=1e-5)
    score = closed_loop_metrics(from_checkpoint, cfg, cfg.train.eval)
    assert score["eval_episodes"] == 3 and 0.0 <= score["eval_success_rate"] <= 1.0
