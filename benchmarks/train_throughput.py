"""Training throughput of the platform against a bare torch loop on the same model.

    python benchmarks/train_throughput.py --backbone paligemma --hidden 64 --layers 2 --workers 2 --steps 40
    python benchmarks/train_throughput.py --gpu --workers 1 --hidden 1024 --layers 8 --batch 16   # on a GPU node
    python benchmarks/train_throughput.py --hidden 128 --window 1 --batch 16 --steps 300 --fsdp-unit model  # the demo's shape

Platform: ``run_training`` (Ray Train, FSDP2, episodes streamed from Parquet by Ray tasks, progress,
checkpoint at the end). Bare loop: one process, the same model and optimizer, one batch of
the same global size preloaded as tensors. Prints samples/s, time per step, peak memory per
worker, the platform/bare ratio and, on GPU, model FLOPs utilization (FLOPs of one step
counted by torch's FlopCounterMode, over the measured step time and the accelerator peak).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vla.config import load_config
from vla.data.converters.synthetic import convert_synthetic
from vla.model import build_model, count_parameters
from vla.train.launch import run_training
from vla.train.progress import peak_memory_mb, read_metrics

WARMUP_STEPS = 5


def run_arguments(description: str, *, steps: int, episodes: int) -> argparse.ArgumentParser:
    """The model, batch and run shape that ``platform_run`` trains (shared with object_storage.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="paligemma")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="windows per worker per step")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--episodes", type=int, default=episodes)
    return parser


def parse_args() -> argparse.Namespace:
    parser = run_arguments(__doc__, steps=40, episodes=100)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--fsdp-unit", choices=("block", "model"), default="block", help="train.fsdp_unit")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator bf16 peak (H100/H200 dense: 989)")
    return parser.parse_args()


def overrides(args: argparse.Namespace, data: str, storage: str) -> list[str]:
    return [
        f"data.path={data}", f"run.storage_path={storage}", "run.name=bench", "run.wandb_mode=disabled",
        "run.export=false", f"model.backbone={args.backbone}", f"model.tiny_hidden_size={args.hidden}",
        f"model.tiny_num_layers={args.layers}", f"model.image_size={args.image_size}",
        f"model.window_size={args.window}", f"data.batch_size={args.batch}", f"train.num_workers={args.workers}",
        f"train.max_steps={args.steps}", "train.log_every=1", "train.lr=1e-4", f"train.use_gpu={str(args.gpu).lower()}",
        f"train.cpus_per_worker={4 if args.gpu else 0.5}",
    ]


def platform_run(args: argparse.Namespace, data: str, storage: str, extra: list[str] = ()) -> dict[str, float]:
    cfg = load_config(None, [*overrides(args, data, storage), *extra])
    result = run_training(cfg)
    records = [r for r in read_metrics(Path(result.run_dir) / "metrics.jsonl") if "step_time_s" in r]
    steady = [r for r in records if r["step"] > WARMUP_STEPS]
    step_time = sum(r["step_time_s"] for r in steady) / len(steady)
    return {
        "samples_per_s": args.batch * args.workers / step_time,
        "step_time_s": step_time,
        "data_wait_s": sum(r["data_wait_s"] for r in steady) / len(steady),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records),
    }


def bare_loop(args: argparse.Namespace, data: str) -> dict[str, float]:
    """The same model trained on one preloaded batch of the same global size, no platform."""
    cfg = load_config(None, overrides(args, data, "/tmp/unused"))
    device = torch.device("cuda" if args.gpu else "cpu")
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b, t, v, size = args.batch * args.workers, args.window, cfg.model.num_views, args.image_size
    batch = {
        "images": torch.randint(0, 256, (b, t, v, 3, size, size), dtype=torch.uint8, device=device),
        "input_ids": torch.randint(3, 300, (b, cfg.data.max_text_len), device=device),
        "attention_mask": torch.ones(b, cfg.data.max_text_len, dtype=torch.long, device=device),
        "actions": torch.rand(b, t, 1, 7, device=device) * 2 - 1,
        "action_mask": torch.ones(b, t, 1, device=device),
    }
    batch["actions"][..., 6] = batch["actions"][..., 6].sign()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.gpu)

    def step() -> None:
        with autocast:
            out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
            loss = model.loss(out, batch["actions"], batch["action_mask"])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if args.gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_time = sum(times[WARMUP_STEPS:]) / len(times[WARMUP_STEPS:])
    return {
        "samples_per_s": b / step_time,
        "step_time_s": step_time,
        "peak_memory_mb": peak_memory_mb(),
        "flops_per_step": counter.get_total_flops(),
    }


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/data"
        convert_synthetic(data, episodes=args.episodes, val_episodes=4, image_size=args.image_size)
        platform = platform_run(args, data, f"{tmp}/runs", [f"train.fsdp_unit={args.fsdp_unit}"])
        bare = bare_loop(args, data)
        model = build_model(load_config(None, overrides(args, data, tmp)).model)
    _, params = count_parameters(model)
    device = "GPU" if args.gpu else "CPU"
    print(f"\n{args.backbone} hidden {args.hidden} x {args.layers} layers, {params / 1e6:.2f}M params, "
          f"window {args.window}, {args.batch} windows/worker, {args.workers} worker(s) on {device}, "
          f"FSDP units per {args.fsdp_unit}")
    print(f"{'':>10} {'samples/s':>10} {'step (s)':>9} {'data wait (s)':>13} {'peak MB/worker':>15}")
    print(f"{'platform':>10} {platform['samples_per_s']:10.1f} {platform['step_time_s']:9.3f} "
          f"{platform['data_wait_s']:13.3f} {platform['peak_memory_mb']:15.0f}")
    print(f"{'bare loop':>10} {bare['samples_per_s']:10.1f} {bare['step_time_s']:9.3f} {'-':>13} {bare['peak_memory_mb']:15.0f}")
    print(f"platform / bare throughput: {platform['samples_per_s'] / bare['samples_per_s']:.2f}")
    print(f"FLOPs per step (global batch): {bare['flops_per_step'] / 1e9:.2f} GFLOP")
    if args.gpu:
        peak = args.peak_tflops * 1e12
        for name, run, devices in (("platform", platform, args.workers), ("bare loop", bare, 1)):
            print(f"model FLOPs utilization, {name}: {100 * bare['flops_per_step'] / run['step_time_s'] / (peak * devices):.1f}%")


if __name__ == "__main__":
    main()
