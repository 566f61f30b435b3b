"""Damaged checkpoints and run folders, without Ray: real DCP checkpoints of a small model saved
by a one-process gloo group, then damaged the ways a crash or a disk does."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from vla.train.checkpoint import (
    RAY_SNAPSHOT_FILE,
    TRAIN_STATE_FILE,
    CheckpointError,
    TrainState,
    checkpoint_damage,
    load_checkpoint,
    newest_intact_checkpoint,
    save_checkpoint,
    set_aside_stale_ray_snapshot,
)
from vla.train.progress import METRICS_FILE, RunLogger, read_metrics


@pytest.fixture(scope="module")
def process_group():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def training_state(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


@pytest.fixture
def run_dir(tmp_path, process_group) -> Path:
    """A run folder with complete checkpoints at steps 10, 20 and 30."""
    for step in (10, 20, 30):
        folder = tmp_path / f"checkpoint_step{step:07d}"
        folder.mkdir()
        save_checkpoint(folder, *training_state(step), TrainState(step=step))
    return tmp_path


def shard(folder: Path) -> Path:
    return next(folder.glob("*.distcp"))


def test_the_newest_intact_checkpoint_wins_over_an_older_registered_one(run_dir):
    # Ray registered step 10 last; step 30 is complete on disk (the worker died before Ray registered it).
    assert newest_intact_checkpoint(str(run_dir), str(run_dir / "checkpoint_step0000010")).endswith("0000030")
    assert newest_intact_checkpoint(str(run_dir)).endswith("0000030")


def test_a_missing_marker_falls_back_to_the_previous_checkpoint(run_dir, caplog):
    (run_dir / "checkpoint_step0000030" / TRAIN_STATE_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="vla.train"):
        assert newest_intact_checkpoint(str(run_dir)).endswith("0000020")
    assert "checkpoint_step0000030" in caplog.text and TRAIN_STATE_FILE in caplog.text


def test_a_truncated_or_zeroed_shard_is_detected_before_loading(run_dir, caplog):
    truncated = shard(run_dir / "checkpoint_step0000030")
    truncated.write_bytes(truncated.read_bytes()[:-100])
    zeroed = shard(run_dir / "checkpoint_step0000020")
    data = zeroed.read_bytes()
    zeroed.write_bytes(bytes(64) + data[64:])
    with caplog.at_level(logging.WARNING, logger="vla.train"):
        assert newest_intact_checkpoint(str(run_dir)).endswith("0000010")
    assert "checkpoint_step0000030" in caplog.text and "checkpoint_step0000020" in caplog.text
    assert f"{truncated.name} holds {truncated.stat().st_size} bytes, {truncated.stat().st_size + 100} were written" \
        in caplog.text
    assert checkpoint_damage(str(zeroed.parent)) == f"{zeroed.name} does not match the checksum recorded when it was written"


def test_loading_a_corrupt_shard_names_the_checkpoint_and_step(run_dir):
    folder = run_dir / "checkpoint_step0000020"
    marker = json.loads((folder / TRAIN_STATE_FILE).read_text())
    del marker["files"]  # a checkpoint written before sizes were recorded: damage shows only on load
    (folder / TRAIN_STATE_FILE).write_text(json.dumps(marker))
    shard(folder).write_bytes(shard(folder).read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"checkpoint_step0000020 \(step 20\) cannot be loaded"):
        load_checkpoint(folder, *training_state(0))


def test_loading_into_another_model_names_the_key_that_differs(run_dir):
    torch.manual_seed(0)
    other = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))  # keys 0 and 2
    optimizer = torch.optim.AdamW(other.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(CheckpointError, match=r"\(step 20\) cannot be loaded: RuntimeError: Missing key in checkpoint "
                                              r"state_dict: model\.2\.weight.*model config changed"):
        load_checkpoint(run_dir / "checkpoint_step0000020", other, optimizer, scheduler)


def test_a_restored_state_equals_the_saved_one(run_dir):
    model, optimizer, scheduler = training_state(0)
    state = load_checkpoint(run_dir / "checkpoint_step0000020", model, optimizer, scheduler)
    saved_model, saved_optimizer, _ = training_state(20)
    assert state.step == 20
    for restored, saved in zip(model.parameters(), saved_model.parameters()):
        assert torch.equal(restored, saved)


def test_a_ray_record_naming_a_deleted_checkpoint_is_set_aside(tmp_path):
    (tmp_path / "checkpoint_step0000010").mkdir()
    snapshot = tmp_path / RAY_SNAPSHOT_FILE
    names = ["checkpoint_step0000010", "checkpoint_step0000020"]
    snapshot.write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": n} for n in names]}))
    assert set_aside_stale_ray_snapshot(str(tmp_path)) == f"{RAY_SNAPSHOT_FILE}.stale"
    assert not snapshot.exists() and (tmp_path / f"{RAY_SNAPSHOT_FILE}.stale").is_file()
    snapshot.write_text(json.dumps({"checkpoint_results": [{"checkpoint_dir_name": names[0]}]}))
    assert set_aside_stale_ray_snapshot(str(tmp_path)) is None and snapshot.is_file()


def test_a_resumed_run_cuts_the_metrics_back_to_its_step(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 31)]
    (tmp_path / METRICS_FILE).write_text("\n".join(lines) + '\n{"step": 31, "lo')  # torn by a kill
    logger = RunLogger(str(tmp_path), "r", "vla", "disabled", {})
    logger.cut_after(20)
    logger.log(21, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path / METRICS_FILE)] == list(range(1, 22))
