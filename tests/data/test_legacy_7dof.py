"""A dataset and an export written before action spaces existed (``tests/fixtures/legacy_7dof``,
written by commit d6aa330's code) load as the 7-DOF arm, and the export acts exactly as it did."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vla.action_space import ActionSpace
from vla.config import load_config
from vla.data import load_metadata, validate_dataset
from vla.policy import Policy
from vla.train.launch import check_run

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_7dof"


@pytest.mark.timeout(60)
def test_the_old_export_acts_exactly_as_before():
    recorded = np.load(LEGACY / "acting.npz")
    policy = Policy.load(str(LEGACY / "export"))
    assert policy.action_space == ActionSpace() and policy.state_dim == 0 and policy.chunk_length == 1
    actions = []
    for episode in range(2):  # 2 episodes of 3 steps, each from a reset
        policy.reset()
        for step in range(3):
            i = 3 * episode + step
            actions.append(policy.act({"images": {"static": recorded["static"][i], "wrist": recorded["wrist"][i]},
                                       "instruction": str(recorded["instructions"][i])}))
    np.testing.assert_array_equal(np.stack(actions), recorded["actions"])
    assert set(recorded["actions"][:, 6]) == {-1.0, 1.0}  # both gripper commands are exercised


@pytest.mark.timeout(60)
def test_the_old_dataset_reads_as_the_arm_and_trains_with_its_state(tmp_path):
    data = shutil.copytree(LEGACY / "dataset", tmp_path / "dataset")
    meta = load_metadata(str(data))
    assert meta.action_space == ActionSpace() and meta.state_dim == 4
    assert meta.splits["train"].state_stats is None  # written before state statistics
    assert validate_dataset(str(data)) == []
    checked = check_run(load_config(None, [f"data.path={data}", f"run.storage_path={tmp_path / 'runs'}"]))
    model = checked.cfg.model
    assert (model.action_dim, model.binary_grippers, model.state_dim) == (7, [6], 4)
    assert checked.normalization_json and '"state"' in checked.normalization_json  # computed on the driver
    off = check_run(load_config(None, [f"data.path={data}", "model.use_state=false",
                                       f"run.storage_path={tmp_path / 'runs'}"]))
    assert off.cfg.model.state_dim == 0


@pytest.mark.timeout(60)
def test_a_run_started_before_states_resumes_with_the_model_it_has(tmp_path):
    data = shutil.copytree(LEGACY / "dataset", tmp_path / "dataset")
    run_dir = tmp_path / "runs" / "old"
    run_dir.mkdir(parents=True)
    shutil.copy(LEGACY / "export" / "config.yaml", run_dir / "config.yaml")  # what that code saved with the run
    overrides = [f"data.path={data}", f"run.storage_path={tmp_path / 'runs'}"]
    assert check_run(load_config(None, [*overrides, "run.name=old"])).cfg.model.state_dim == 0
    assert check_run(load_config(None, [*overrides, "run.name=new"])).cfg.model.state_dim == 4
