"""The stream feeds 2 Ray Train workers at 0.5 CPU each (a 2-CPU node's budget), no deadlock, each
rank its own equal, disjoint part of the epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla.data import DataConfig, build_window_stream, count_windows

T, N, SIZE = 3, 2, 24


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_train_workers_get_batches_of_the_right_shapes(ray_session, synthetic_dataset, tokenizer_dir, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    log = tmp_path / "windows"
    cfg = DataConfig(path=synthetic_dataset, batch_size=4, shift_static=2, shift_wrist=1, window_log=str(log))
    streams = {
        split: build_window_stream(cfg, split, window_size=T, fwd_pred_next_n=N, image_size=SIZE,
                                   tokenizer_dir=tokenizer_dir, train=split == "train")
        for split in ("train", "val")
    }
    out = tmp_path / "workers"
    out.mkdir()

    def loop(config):
        import ray.train

        context = ray.train.get_context()
        rank, world_size = context.get_world_rank(), context.get_world_size()
        seen = {}
        for split, epochs in (("train", 2), ("val", 1)):
            windows = 0
            for epoch in range(epochs):
                for batch in config["streams"][split].batches(epoch=epoch, rank=rank, world_size=world_size):
                    b = len(batch["images"])
                    assert 1 <= b <= 4
                    assert tuple(batch["images"].shape) == (b, T, 2, 3, SIZE, SIZE)
                    assert tuple(batch["input_ids"].shape) == (b, 16) == tuple(batch["attention_mask"].shape)
                    assert tuple(batch["actions"].shape) == (b, T, N, 7)
                    assert tuple(batch["action_mask"].shape) == (b, T, N)
                    windows += b
            seen[split] = windows
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps(seen))
        ray.train.report({"windows": seen["train"]})

    trainer = TorchTrainer(
        loop,
        train_loop_config={"streams": streams, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="data_feed", storage_path=str(tmp_path / "runs")),
    )
    trainer.fit()
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for split, epochs in (("train", 2), ("val", 1)):
        assert seen[0][split] == seen[1][split] == epochs * (count_windows(cfg, split) // 2)
    records = [json.loads(line) for r in range(2) for line in (log / f"train-rank{r}.jsonl").read_text().splitlines()]
    for epoch in range(2):
        per_rank = [{tuple(w) for rec in records if rec["epoch"] == epoch and rec["rank"] == r for w in rec["windows"]}
                    for r in range(2)]
        assert not per_rank[0] & per_rank[1] and len(per_rank[0]) == len(per_rank[1]) == count_windows(cfg, "train") // 2
