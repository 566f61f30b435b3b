"""A real Ray Train run fails mid-epoch and resumes from its checkpoint: it continues with exactly
the windows it had not yet seen, and the windows trained on make up exactly one uninterrupted epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla.config import load_config
from vla.data import build_window_stream, count_windows
from vla.train.launch import run_training, tokenizer_directory

STEPS, FAILS_AT, CHECKPOINT_EVERY = 26, 10, 4


def read_log(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (folder / f"train-rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_resumed_run_sees_each_window_of_the_epoch_exactly_once(ray_session, tiny_run, tmp_path):
    log = tmp_path / "windows"
    overrides = [*tiny_run(tmp_path, "resume"), f"data.window_log={log}", "data.shift_static=2",
                 f"train.max_steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}",
                 f"train.inject_failure_at_step={FAILS_AT}", "train.max_failures=1", "run.export=false"]
    cfg = load_config(None, overrides)
    result = run_training(cfg)
    assert result.metrics["step"] == STEPS

    # The uninterrupted plan of epoch 0, per rank, as (episode_id, start).
    stream = build_window_stream(cfg.data, cfg.data.train_split, window_size=cfg.model.window_size,
                                 fwd_pred_next_n=cfg.model.fwd_pred_next_n, image_size=cfg.model.image_size,
                                 tokenizer_dir=tokenizer_directory(cfg, str(tmp_path / "tok")), train=True)
    batches_per_rank = -(-(count_windows(cfg.data, "train") // 2) // cfg.data.batch_size)
    assert STEPS > batches_per_rank > FAILS_AT  # the run finishes epoch 0 (one micro-batch per step)
    resumed_at = FAILS_AT // CHECKPOINT_EVERY * CHECKPOINT_EVERY

    epoch = set()
    for rank in range(2):
        records = read_log(log, rank)
        # Attempt 1 trained batches 0..9 of epoch 0 and failed; attempt 2 resumed from the step-8
        # checkpoint at batch 8 (no batch before it handed out again), ran to the end of the
        # epoch, then into epoch 1.
        assert [(r["epoch"], r["batch"]) for r in records] == (
            [(0, b) for b in range(FAILS_AT)] + [(0, b) for b in range(resumed_at, batches_per_rank)]
            + [(1, b) for b in range(STEPS - batches_per_rank)])
        by_batch: dict[tuple[int, int], list] = {}
        for record in records:
            windows = [tuple(w) for w in record["windows"]]
            assert by_batch.setdefault((record["epoch"], record["batch"]), windows) == windows  # deterministic
        trained = [w for b in range(batches_per_rank) for w in by_batch[(0, b)]]
        plan = stream.plan(epoch=0, rank=rank, world_size=2)
        assert trained == list(zip(stream.index.episode_id[plan.episode].tolist(), plan.start.tolist()))
        assert not epoch & set(trained)
        epoch |= set(trained)
    every_window = {(int(e), s) for e, steps in zip(stream.index.episode_id, stream.index.num_steps)
                    for s in range(steps)}
    assert epoch <= every_window and len(epoch) == len(every_window) // 2 * 2
