"""The done criterion on a small budget: a briefly trained policy succeeds closed-loop far more
often than the random and constant baselines, on the environment its demonstrations came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vla.config import Config, load_config
from vla.data import load_metadata
from vla.data.converters.synthetic import convert_synthetic
from vla.data.pipeline import episode_to_windows, load_tokenizer, split_files
from vla.data.transforms import BATCH_KEYS
from vla.eval.evaluate import EvalOptions, closed_loop
from vla.eval.rollout import ConstantPolicy, RandomPolicy, run_episodes
from vla.model import build_model, build_tokenizer
from vla.sim import SimConfig
from vla.train.launch import DEMO_EPISODES
from vla.train.schedule import build_scheduler

DEMO_CONFIG = Path(__file__).parents[2] / "configs" / "demo.yaml"


def training_windows(cfg: Config, tokenizer_dir: str) -> dict[str, torch.Tensor]:
    """Every training window of the split, built by the data pipeline's own transform chain (no Ray)."""
    meta = load_metadata(cfg.data.path)
    transform = episode_to_windows(cfg.data, meta, window_size=cfg.model.window_size,
                                   fwd_pred_next_n=cfg.model.fwd_pred_next_n, image_size=cfg.model.image_size,
                                   tokenizer=load_tokenizer(tokenizer_dir), train=False)
    parts = [w for file in split_files(cfg.data.path, meta, "train", cfg.data.cameras)
             for w in transform.windows(pq.read_table(file))]
    return {key: torch.from_numpy(np.concatenate([p[key] for p in parts])) for key in BATCH_KEYS}


def train_plainly(cfg: Config, windows: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The demo's optimization (AdamW, warmup + cosine, clipping, its global batch and steps) in one
    process: what the Ray Train loop computes, without Ray Train's start-up and per-step overhead."""
    tcfg = cfg.train
    torch.manual_seed(tcfg.seed)
    model = build_model(cfg.model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                                  betas=tcfg.betas, weight_decay=tcfg.weight_decay)
    scheduler = build_scheduler(optimizer, lr=tcfg.lr, min_lr=tcfg.min_lr, warmup_steps=tcfg.warmup_steps,
                                total_steps=tcfg.max_steps)
    generator = torch.Generator().manual_seed(tcfg.seed)
    count, batch_size = len(windows["actions"]), cfg.data.batch_size * tcfg.num_workers
    for _ in range(tcfg.max_steps):
        rows = torch.randint(0, count, (batch_size,), generator=generator)  # one draw for every key
        batch = {key: value[rows] for key, value in windows.items()}
        output = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        loss = model.loss(output, batch["actions"], batch["action_mask"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        scheduler.step()
    return model.eval()


def test_baselines_rarely_succeed():
    sim, seeds = SimConfig(), list(range(1_000_000, 1_000_040))
    for policy in (RandomPolicy(0), ConstantPolicy([0.0, 0.0, -0.1, 0.0, 0.0, 0.0, 1.0])):
        assert sum(r.success for r in run_episodes(policy, seeds, sim)) <= 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_briefly_trained_policy_beats_random_and_constant_closed_loop(ray_session, export_writer, tmp_path):
    """The demo's config and data (configs/demo.yaml, DEMO_EPISODES scenes) trained in one process."""
    root = str(tmp_path / "synthetic")
    convert_synthetic(root, episodes=DEMO_EPISODES, val_episodes=4, image_size=32, seed=0)
    cfg = load_config(str(DEMO_CONFIG), [f"data.path={root}"])
    tokenizer_dir = str(tmp_path / "tokenizer")
    build_tokenizer(cfg.model).save_pretrained(tokenizer_dir)
    model = train_plainly(cfg, training_windows(cfg, tokenizer_dir))
    export = export_writer(tmp_path / "export", model, cfg)

    report, _ = closed_loop(export, cfg, EvalOptions(episodes=100, tasks_per_policy=2, record=0))
    rates = {name: result["success_rate"] for name, result in report["policies"].items()}
    assert rates["trained"] >= 0.08, rates  # measured 0.20 at seed 0 (docs/evaluation.md)
    assert rates["trained"] >= max(rates["random"], rates["constant"]) + 0.05, rates
