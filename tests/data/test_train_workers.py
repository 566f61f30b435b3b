"""The pipeline feeds 2 Ray Train workers at 0.5 CPU each (a 2-CPU node's budget), no deadlock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vla.data import DataConfig, build_window_dataset, count_windows

T, N, SIZE = 3, 2, 24


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_train_workers_get_batches_of_the_right_shapes(ray_session, synthetic_dataset, tokenizer_dir, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = DataConfig(path=synthetic_dataset, batch_size=4, shift_static=2, shift_wrist=1)
    datasets = {
        split: build_window_dataset(cfg, split, window_size=T, fwd_pred_next_n=N, image_size=SIZE,
                                    tokenizer_dir=tokenizer_dir, train=split == "train")
        for split in ("train", "val")
    }
    out = tmp_path / "workers"
    out.mkdir()

    def loop(config):
        import ray.train

        from vla.data import iter_batches

        rank = ray.train.get_context().get_world_rank()
        seen = {}
        for split, epochs in (("train", 2), ("val", 1)):
            windows = 0
            for epoch in range(epochs):
                for batch in iter_batches(ray.train.get_dataset_shard(split), config["data"], epoch=epoch):
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
        train_loop_config={"data": cfg, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets=datasets,
        run_config=RunConfig(name="data_feed", storage_path=str(tmp_path / "runs")),
    )
    trainer.fit()
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for split, epochs in (("train", 2), ("val", 1)):
        # Ray Train splits each epoch equally between the ranks (dropping at most one window per rank)
        assert seen[0][split] == seen[1][split] > 0
        assert epochs * (count_windows(cfg, split) - 1) <= sum(s[split] for s in seen) <= epochs * count_windows(cfg, split)
