"""The platform's training step on one device against a bare loop, at real model sizes, no Ray.

    python -m benchmarks.gpu_step --family paligemma                     # one GPU: 4 windows x 8 frames x 2 views, 224 px
    python -m benchmarks.gpu_step --family kosmos2 --frames 16 --chunk 10
    python -m benchmarks.gpu_step --family paligemma --compile false --optimizer adamw   # what each change buys
    python -m benchmarks.gpu_step --small                                # CPU: the same path end to end, ~1 min
    python -m benchmarks.gpu_step --family paligemma --layers 4 --json out.json   # 4 vision + 4 LM blocks; figures as JSON

The backbone is built (random weights) from its published config
(``tests/fixtures/hf-published/<family>/config.json``), the head and loss from the project's
CALVIN config (``configs/calvin_<family>.yaml``). ``--small`` cuts every width and depth
(1 vision and 1 LM block, 1/8 of the hidden sizes and of the vocabulary) so that the identical code runs on a CPU;
``--layers N`` keeps at most N blocks in the vision tower and in the LM (the depth
``benchmarks/gpu_ray.sh`` trains through Ray, to compare the same model).

Platform: ``vla.train.step`` at world size 1 exactly as a Ray Train worker runs it:
``parallelize`` (per-block compile, activation checkpointing if asked, FSDP2 with mixed
precision), the configured AdamW, clipping, the schedule, on-device metrics. Bare loop: the
same model on the device, no FSDP, autocast, ``torch.optim.AdamW`` with its defaults.

Printed: time per step, frames/s, model FLOPs utilization (forward + backward FLOPs counted by
``FlopCounterMode`` on one uncompiled bare step with eager attention, over the step time and the device's dense
peak, stated), and peak memory. Ray and ``vla.data`` are never imported, so this runs on a GPU
machine without Ray; ``benchmarks/train_throughput.py`` times the Ray Train + Ray-task stream path.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.utils.flop_counter import FlopCounterMode
from transformers import PretrainedConfig

from vla.model import BACKBONES, build_model
from vla.model.config import ModelConfig
from vla.train.config import TrainConfig
from vla.train.parallelize import compile_enabled, param_dtype_for, weights_dtype_for
from vla.train.schedule import optimizer_choice
from vla.train.step import Batch, build_trainer, train_step
from vla.typed_config import from_dict, parse_override

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "tests" / "fixtures" / "hf-published"
# Dense bf16/fp16 tensor-core peaks (TFLOP/s) by device name; MFU is always stated against these.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "V100": 125.0, "T4": 65.0}
# --small: every width divided by this, one block in the tower and one in the LM.
SMALL_DIVISOR = 8


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["paligemma", "kosmos2"], default="paligemma")
    parser.add_argument("--windows", type=int, default=None, help="windows per step (4; --small: 2)")
    parser.add_argument("--frames", type=int, default=None, help="frames per window (8; --small: 2)")
    parser.add_argument("--chunk", type=int, default=1, help="future actions predicted per frame (fwd_pred_next_n)")
    parser.add_argument("--text-len", type=int, default=16, help="instruction tokens (data.max_text_len)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (20; --small: 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--small", action="store_true", help="reduced widths and depths: runs on a CPU")
    parser.add_argument("--precision", default="auto", help="train.precision: auto, fp32, bf16, fp16")
    parser.add_argument("--compile", default="auto", help="train.compile: auto, true, false")
    parser.add_argument("--optimizer", default="auto", help="train.optimizer: auto, adamw_fused, adamw_foreach, adamw")
    parser.add_argument("--weights", default="fp32", help="train.weights: fp32 master weights, or bf16 (half the memory)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak if not in the table")
    parser.add_argument("--skip-bare", action="store_true", help="time only the platform step")
    parser.add_argument("--layers", type=int, default=None, help="at most this many vision and LM blocks")
    parser.add_argument("--json", help="also write the platform step's figures to this JSON file")
    args = parser.parse_args()
    args.windows = args.windows or (2 if args.small else 4)
    args.frames = args.frames or (2 if args.small else 8)
    args.steps = args.steps or (5 if args.small else 20)
    return args


def cut_depth(config: dict, layers: int) -> dict:
    """The published config with at most ``layers`` blocks in the vision tower and in the LM."""
    cut = dict(config)
    for key in ("text_config", "vision_config"):
        sub = dict(config[key])
        for name in ("num_hidden_layers", "layers"):
            if name in sub:
                sub[name] = min(sub[name], layers)
        cut[key] = sub
    return cut


def shrink(config: dict) -> dict:
    """The published config with widths / SMALL_DIVISOR and one block per stack (same architecture)."""
    widths = ("hidden_size", "intermediate_size", "embed_dim", "ffn_dim", "projection_dim", "vocab_size")
    heads = ("num_attention_heads", "attention_heads")
    small = dict(config)
    for key in ("text_config", "vision_config"):
        sub = dict(config[key])
        for name in widths:
            if name in sub:
                sub[name] //= SMALL_DIVISOR
        for name in heads:
            if name in sub:
                sub[name] = max(1, sub[name] // SMALL_DIVISOR)
        if "head_dim" in sub or sub.get("model_type") == "gemma":
            sub["head_dim"] = sub["hidden_size"] // sub["num_attention_heads"]
        small[key] = sub
    for name in ("hidden_size", "projection_dim", "vocab_size"):
        if name in small:
            small[name] //= SMALL_DIVISOR
    return cut_depth(small, 1)


def load_model_config(args: argparse.Namespace) -> tuple[ModelConfig, object]:
    """The CALVIN config's model section with this run's shapes, and the backbone's HF config."""
    section = yaml.safe_load((REPO / "configs" / f"calvin_{args.family}.yaml").read_text())["model"]
    section.update(pretrained_path=None, window_size=args.frames, fwd_pred_next_n=args.chunk)
    model_cfg = from_dict(ModelConfig, section)
    return model_cfg, published_config(args.family, small=args.small, layers=args.layers)


def published_config(family: str, *, small: bool = False, layers: int | None = None) -> PretrainedConfig:
    """The family's published backbone config; ``small``: ``shrink``-ed; ``layers``: ``cut_depth``."""
    published = json.loads((PUBLISHED / family / "config.json").read_text())
    published = shrink(published) if small else published
    published = cut_depth(published, layers) if layers else published
    return BACKBONES[family].hf_model_class.config_class.from_dict(published)


def make_batch(model_cfg: ModelConfig, image_size: int, args: argparse.Namespace, vocab: int, device) -> Batch:
    g = torch.Generator().manual_seed(0)
    w, f, v = args.windows, args.frames, model_cfg.num_views
    actions = torch.rand(w, f, args.chunk, 7, generator=g) * 2 - 1
    actions[..., 6] = actions[..., 6].sign()
    ids = torch.randint(3, min(vocab, 1000), (w, args.text_len), generator=g)
    batch = {
        "images": torch.randint(0, 256, (w, f, v, 3, image_size, image_size), dtype=torch.uint8, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "actions": actions,
        "action_mask": torch.ones(w, f, args.chunk),
    }
    return {k: t.to(device) for k, t in batch.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset; on CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_steps(step: Callable[[], None], args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(seconds per step, peak memory in GiB) over ``args.steps`` steps after ``args.warmup``."""
    for _ in range(args.warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / args.steps, peak_memory_gib(device)


def build(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, ModelConfig]:
    model_cfg, hf_config = load_model_config(args)
    torch.manual_seed(0)
    with device:
        model = build_model(model_cfg, hf_config=hf_config, dtype=dtype)
    return model, model_cfg


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module):
    """Attention as explicit matmuls while inside: ``FlopCounterMode`` rejects (torch 2.11) or counts
    as zero (torch 2.13) SDPA with fewer key/value heads than query heads, as in Gemma's."""
    configs = {id(m.config): m.config for m in model.modules() if isinstance(getattr(m, "config", None), PretrainedConfig)}
    saved = {key: config._attn_implementation for key, config in configs.items()}
    for config in configs.values():
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]


def bare_loop(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """The model alone on the device: autocast, default AdamW; FLOPs counted on an extra first step."""
    model, model_cfg = build(args, device)
    batch = make_batch(model_cfg, model.image_size, args, model.backbone.text_config.vocab_size, device)
    dtype = param_dtype_for(TrainConfig(precision=args.precision), device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            output = model(batch["images"], batch["input_ids"], batch["attention_mask"])
            loss = model.loss(output, batch["actions"], batch["action_mask"])["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with eager_attention(model), FlopCounterMode(display=False) as counter:
        step()
    step_time, peak = time_steps(step, args, device)
    del model, optimizer
    return {"step_time_s": step_time, "peak_gib": peak, "flops": counter.get_total_flops()}


def platform_step(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """``vla.train.step`` at world size 1: what one Ray Train worker runs."""
    overrides = [
        f"precision={args.precision}", f"compile={args.compile}", f"optimizer={args.optimizer}", f"weights={args.weights}"
    ]
    train_cfg = from_dict(
        TrainConfig,
        {**dict(parse_override(o) for o in overrides), "lr": 1e-5, "activation_checkpointing": args.activation_checkpointing},
    )
    model, model_cfg = build(args, device, weights_dtype_for(train_cfg))
    trainer = build_trainer(
        model, train_cfg, device, 1, total_steps=args.warmup + args.steps, text_len=args.text_len
    )
    batch = make_batch(model_cfg, model.image_size, args, model.backbone.text_config.vocab_size, device)
    batches = itertools.repeat(batch)
    step_time, peak = time_steps(lambda: train_step(trainer, batches), args, device)
    loss = trainer.micro_metrics.mean_over_ranks()["loss"]
    return {
        "step_time_s": step_time,
        "peak_gib": peak,
        "tokens_per_frame": trainer.tokens_per_frame,
        "views": model_cfg.num_views,
        "loss": loss,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "settings": f"{train_cfg.precision} -> {param_dtype_for(train_cfg, device)}, "
        f"compile {compile_enabled(train_cfg, device)}, {optimizer_choice(train_cfg, device)}, "
        f"activation checkpointing {train_cfg.activation_checkpointing}, {train_cfg.weights} weights",
    }


def init_single_process_group(device: torch.device) -> None:
    """World size 1 for FSDP2 (nccl on GPU, gloo on CPU), on a free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def device_peak(device: torch.device, override: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "CPU", override
    name = torch.cuda.get_device_name(device)
    peak = override or next((value for key, value in PEAK_TFLOPS.items() if key in name), None)
    return name, peak


def main() -> None:
    args = parse_args()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_single_process_group(device)
    bare = None if args.skip_bare else bare_loop(args, device)
    platform = platform_step(args, device)
    dist.destroy_process_group()

    name, peak = device_peak(device, args.peak_tflops)
    frames = args.windows * args.frames
    size = "reduced (--small)" if args.small else "published"
    print(f"\n{args.family} ({size} config), {platform['params'] / 1e9:.3f}B parameters "
          f"({platform['trainable'] / 1e9:.3f}B trainable), {args.windows} windows x {args.frames} frames x {platform['views']} views, "
          f"chunk {args.chunk}, {platform['tokens_per_frame']} LM tokens per frame, on {name}")
    print(f"platform: {platform['settings']}; loss after {args.warmup + args.steps} steps {platform['loss']:.4f}")
    flops = bare["flops"] if bare else None
    if flops:
        print(f"model FLOPs per step (forward + backward, FlopCounterMode): {flops / 1e12:.3f} TFLOP")
    print(f"peak: {f'{peak:.0f} TFLOP/s dense bf16/fp16' if peak else 'unknown (pass --peak-tflops)'}")
    print(f"{'':>10} {'step (s)':>9} {'frames/s':>9} {'MFU':>7} {'peak memory (GiB)':>18}")
    for label, run in (("platform", platform), ("bare loop", bare)):
        if run is None:
            continue
        mfu = f"{100 * flops / run['step_time_s'] / (peak * 1e12):6.1f}%" if flops and peak else f"{'-':>7}"
        print(f"{label:>10} {run['step_time_s']:9.3f} {frames / run['step_time_s']:9.1f} {mfu} {run['peak_gib']:18.2f}")
    if bare:
        print(f"platform / bare throughput: {bare['step_time_s'] / platform['step_time_s']:.2f}")
    if args.json:
        figures = {k: v for k, v in platform.items() if k != "settings"} | {"frames_per_s": frames / platform["step_time_s"]}
        Path(args.json).write_text(json.dumps(figures | {"settings": platform["settings"], "device": name}, indent=1))


if __name__ == "__main__":
    main()
