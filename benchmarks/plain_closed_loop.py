"""Closed-loop success of a demo variant trained in one process: the comparisons of docs/evaluation.md.

    python -m benchmarks.plain_closed_loop                                    # the demo's config and data
    python -m benchmarks.plain_closed_loop --action-noise 0 model.head=lstm model.window_size=4 \\
        model.fwd_pred_next_n=2 data.batch_size=4                            # a variant: key=value overrides
    python -m benchmarks.plain_closed_loop --hide-gripper model.use_state=true   # the hidden-state task

The demo's optimization (configs/demo.yaml: AdamW, warmup + cosine, clipping, its global batch
and steps) runs in this process on every training window preloaded as tensors, without Ray
Train's start-up and per-step overhead (the closed-loop guard, tests/eval/test_closed_loop.py,
trains through the product instead). Then ``--eval-episodes`` closed-loop episodes of the trained policy on the
unseen evaluation scenes. Prints the training time, the success rate with its 95% interval and
the offline loss and pose error on the validation episodes.
``--hide-gripper`` runs the hidden-state variant (``vla.sim.env``): the gripper is only in the
robot state, which the model reads with ``model.use_state=true`` (the demo config turns it off).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from vla.config import Config, load_config
from vla.data import Normalization, check_dataset, load_metadata
from vla.data.converters.synthetic import convert_synthetic
from vla.data.parquet_source import episode_columns, episode_to_windows, split_files
from vla.data.pipeline import load_tokenizer
from vla.eval.environments import SyntheticEnvironment, evaluation_episodes
from vla.eval.offline import evaluate_offline_local
from vla.eval.rollout import run_episodes, summarize
from vla.model import build_model, build_tokenizer, save_export
from vla.policy import Policy
from vla.sim import SimConfig
from vla.train.launch import DEMO_ACTION_NOISE, DEMO_EPISODES, with_data_spec
from vla.train.schedule import build_scheduler
from vla.train.step import forward_loss

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def data_normalization(cfg: Config) -> Normalization:
    """The run's normalization, with the state's when the model reads it (as ``check_run`` computes it)."""
    return Normalization.from_metadata(load_metadata(cfg.data.path), cfg.data, use_state=cfg.model.state_dim > 0)


def training_windows(cfg: Config, tokenizer_dir: str) -> dict[str, torch.Tensor]:
    """Every training window of the split, built by the data pipeline's own transform chain (no Ray)."""
    meta = load_metadata(cfg.data.path)
    transform = episode_to_windows(cfg.data, meta, window_size=cfg.model.window_size,
                                   fwd_pred_next_n=cfg.model.fwd_pred_next_n, image_size=cfg.model.image_size,
                                   tokenizer=load_tokenizer(tokenizer_dir), train=False,
                                   normalization=data_normalization(cfg))
    columns = episode_columns(cfg.data.cameras, state=cfg.model.state_dim > 0)
    parts = [w for file in split_files(cfg.data.path, meta, "train", cfg.data.cameras)
             for w in transform.windows(pq.read_table(file, columns=columns))]
    return {key: torch.from_numpy(np.concatenate([p[key] for p in parts])) for key in parts[0]}


def train_plainly(cfg: Config, windows: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The demo's optimization in one process: what the Ray Train loop computes, without Ray Train's
    start-up and per-step overhead (batches drawn uniformly from every window)."""
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
        loss = forward_loss(model, batch)["loss"]  # the training step's (the flow head trains on the labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        scheduler.step()
    return model.eval()


def write_export(directory: str | Path, model: torch.nn.Module, cfg: Config) -> str:
    """What ``vla.train.loop.export_policy`` writes: the model, ``normalization.json``, ``config.yaml``."""
    save_export(directory, model, run_config=cfg.to_dict(), normalization=data_normalization(cfg).to_dict())
    return str(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=DEMO_EPISODES, help="training demonstrations")
    parser.add_argument("--action-noise", type=float, default=DEMO_ACTION_NOISE, help="DART noise of the demonstrations")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--hide-gripper", action="store_true", help="the hidden-state variant of the task")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of configs/demo.yaml")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="vla_plain_")
    convert_synthetic(f"{work}/data", episodes=args.episodes, val_episodes=4, action_noise=args.action_noise,
                      show_gripper=not args.hide_gripper)
    cfg = load_config(str(DEMO_CONFIG), [f"data.path={work}/data", *args.overrides])
    cfg = with_data_spec(cfg, check_dataset(cfg.data, ["train"], cfg.model.use_state))
    build_tokenizer(cfg.model).save_pretrained(f"{work}/tokenizer")
    windows = training_windows(cfg, f"{work}/tokenizer")
    start = time.perf_counter()
    model = train_plainly(cfg, windows)
    seconds = time.perf_counter() - start
    policy = Policy.load(write_export(f"{work}/export", model, cfg), "cpu")
    offline = evaluate_offline_local(policy, cfg, "val", batch_size=32, max_batches=16)
    env = SyntheticEnvironment(SimConfig(image_size=cfg.model.image_size, show_gripper=not args.hide_gripper))
    result = summarize(run_episodes(policy, evaluation_episodes(env, args.eval_episodes), env), env.outcomes)
    low, high = result["success_ci95"]
    task = "hidden-state task" if args.hide_gripper else "demo task"
    print(f"{task}: {args.episodes} demonstrations (action noise {args.action_noise}), {len(windows['actions'])} "
          f"windows, overrides {args.overrides or 'none'}, state read: {cfg.model.state_dim or 'no'}")
    print(f"training: {cfg.train.max_steps} steps in {seconds:.0f} s; closed loop: {result['success_rate']:.0%} "
          f"of {args.eval_episodes} episodes (95% interval {low:.1%}-{high:.1%})")
    print(f"offline ({offline['windows']} val windows): loss {offline['loss']:.4f}, pose error {offline['pose_error']:.4f}"
          + (f", gripper accuracy {offline['gripper_accuracy']:.3f}" if "gripper_accuracy" in offline else ""))


if __name__ == "__main__":
    main()
