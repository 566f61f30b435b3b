"""Distributed training on a real local Ray cluster: 2 CPU workers, FSDP2 over gloo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vla.config import load_config
from vla.model import ActionStepper, load_export
from vla.model.checkpoint import TRAIN_STATE_FILE, CheckpointError, load_checkpoint_model, read_train_state
from vla.train.launch import run_training
from vla.train.progress import read_metrics
from vla.train.schedule import lr_factor

TOTAL_STEPS = 40


def records(run_dir: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if key in r]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_fsdp_training_resumes_after_kill_and_retries_a_failed_worker_group(ray_session, tiny_run, tmp_path):
    base = tiny_run(tmp_path, "fsdp")
    base += [f"train.max_steps={TOTAL_STEPS}", "train.checkpoint_every=4", "train.val_every=8", "train.warmup_steps=2"]

    # 1. The run dies at step 6 with no retry allowed: the last checkpoint is step 4.
    with pytest.raises(Exception, match="inject_failure_at_step=6"):
        run_training(load_config(None, [*base, "train.inject_failure_at_step=6", "train.max_failures=0"]))

    # 2. Re-running the same name resumes at step 4; a failure injected at step 10 is retried
    #    by Ray Train from the step-8 checkpoint, and the run finishes.
    result = run_training(load_config(None, [*base, "train.inject_failure_at_step=10", "train.max_failures=1"]))
    run_dir = result.run_dir
    assert result.metrics["step"] == TOTAL_STEPS

    # Resumed from the step-4 and step-8 checkpoints (that a load restores the saved state
    # exactly: tests/train/test_collectives.py); every save logged its time and size.
    assert [step for step, _ in records(run_dir, "checkpoint_load_s")] == [4, 8]
    saves = dict(records(run_dir, "checkpoint_gb"))
    assert set(saves) == set(range(4, TOTAL_STEPS + 1, 4)) and all(size > 0 for size in saves.values())

    # The schedule continued: every logged lr is the one warmup + cosine gives at that step.
    lrs = records(run_dir, "lr")
    assert {step for step, _ in lrs} == set(range(1, TOTAL_STEPS + 1))
    for step, lr in lrs:
        expected = 1e-3 * lr_factor(step - 1, warmup_steps=2, total_steps=TOTAL_STEPS, min_ratio=0.0)
        assert lr == pytest.approx(expected, rel=1e-6)

    # It learned: the loss of the last 8 steps is below that of the first 8.
    losses = dict(records(run_dir, "loss"))
    first, last = range(1, 9), range(TOTAL_STEPS - 7, TOTAL_STEPS + 1)
    assert sum(losses[s] for s in last) < sum(losses[s] for s in first)
    assert [step for step, _ in records(run_dir, "val_loss")] == [8, 16, 24, 32, 40]

    # The parameters really are sharded: rank 0 holds about half of them.
    share = result.metrics["local_param_numel"] / result.metrics["total_params"]
    assert 0.4 < share < 0.6

    # The checkpoint is complete and keeps only the last two.
    checkpoint = Path(result.checkpoint)
    assert read_train_state(checkpoint)["train_state"]["step"] == TOTAL_STEPS
    assert len(list(Path(run_dir).glob("checkpoint_step*"))) == 2
    assert (Path(run_dir) / "config.yaml").is_file() and (Path(run_dir) / "metrics.png").is_file()

    # The export (no Ray, no FSDP) acts exactly like the final sharded checkpoint.
    exported, model_cfg = load_export(result.export_dir)
    reference = load_checkpoint_model(checkpoint, model_cfg)
    exported.eval()
    reference.eval()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 2, 3, 32, 32), dtype=torch.uint8)
    input_ids = torch.randint(3, 100, (3, 6))
    mask = torch.ones_like(input_ids)
    state = torch.randn(3, model_cfg.state_dim) if model_cfg.state_dim else None  # the synthetic robot's state
    actions = [ActionStepper(m).step(images, input_ids, mask, state) for m in (exported, reference)]
    torch.testing.assert_close(actions[0], actions[1], rtol=0, atol=0)
    assert json.loads((Path(result.export_dir) / "normalization.json").read_text())


def test_an_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / ".metadata").write_bytes(b"")
    with pytest.raises(CheckpointError, match="incomplete"):
        read_train_state(tmp_path)
    (tmp_path / TRAIN_STATE_FILE).write_text(json.dumps({"train_state": {"step": 3}}))
    assert read_train_state(tmp_path)["train_state"]["step"] == 3
