"""Peak host memory of loading a 3B backbone: sharded training workers and ``Policy.load``.

    python benchmarks/load_memory.py prepare                # once: ~11.7 GB of random bf16 weights on disk
    python benchmarks/load_memory.py train --workers 2      # peak RSS of each FSDP worker while building + sharding
    python benchmarks/load_memory.py policy                 # peak RSS of Policy.load in bf16

    # model.lm_layers: SmolVLM2-500M whole, then cut to 16 and 8 LM blocks (load, then time training steps)
    python benchmarks/load_memory.py prepare --family smolvlm2
    python benchmarks/load_memory.py train --family smolvlm2 --workers 1 [--lm-layers 16]
    python benchmarks/load_memory.py lm-step --family smolvlm2 --steps 3 [--lm-layers 16]

The model is a published config at full depth (``--family``: tests/fixtures/hf-published/<family>;
PaliGemma-3B by default) with random weights. ``prepare`` streams them tensor by tensor into safetensors files
(never a full copy in memory): a Hugging Face folder (config.json, model.safetensors, a
tokenizer) and a policy export of the same model. ``train`` starts ``--workers`` processes
(torch.multiprocessing + gloo, no Ray); each runs ``vla.model.build_sharded_model`` with
``vla.train.parallelize`` in bf16, as a training worker does, and reports its peak RSS
(VmHWM: everything since the process started, imports included). ``lm-step`` loads the model in
one process (transformers' ``from_pretrained``, bf16) and times forward + backward of the LM alone
on one frame's sequence. ``--lm-layers K`` sets ``model.lm_layers``. ``policy`` loads the export
in a fresh process. Targets: a worker <= one bf16 copy / workers + a fixed overhead;
``Policy.load`` <= one bf16 copy + a fixed overhead.
"""

from __future__ import annotations

import argparse
import json
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vla.config import load_config
from vla.data.stats import Normalization, Normalizer
from vla.model import ModelConfig, build_sharded_model
from vla.model.backbones import BACKBONES
from vla.model.export import BACKBONE_CONFIG, MODEL_CONFIG, WEIGHTS, run_files
from vla.model.meta import parameters_on_meta
from vla.model.tokenizer import build_tiny_tokenizer
from vla.model.vla_model import build_model
from vla.train.config import TrainConfig
from vla.train.parallelize import parallelize
from vla.typed_config import to_dict

PUBLISHED = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hf-published"
GB = 1024**3
SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32"}


def memory_gb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GB
    raise KeyError(field)


def write_safetensors(path: Path, tensors: list[tuple[str, torch.Size, torch.dtype, callable]]) -> None:
    """A safetensors file written one tensor at a time (``make()`` gives each): never all in memory."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype, _ in tensors:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for _, shape, dtype, make in tensors:
            value = make().to(dtype).contiguous()
            assert value.shape == shape
            f.write(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")


def random_bf16(shape: torch.Size):
    return lambda: torch.randn(shape, dtype=torch.bfloat16) * 0.02


def model_config(family: str, folder: Path, lm_layers: int | None = None) -> ModelConfig:
    """224 px frames (a fixed-size tower's own size wins: SmolVLM2 runs at 512), 2 cameras, window 8."""
    return ModelConfig(backbone=family, pretrained_path=str(folder), image_size=224, num_views=2, window_size=8,
                       lm_layers=lm_layers)


def prepare(root: Path, family: str) -> None:
    """The Hugging Face folder and a policy export of the published config, random bf16 weights."""
    folder, export = root / "hf", root / "export"
    folder.mkdir(parents=True, exist_ok=True)
    export.mkdir(parents=True, exist_ok=True)
    hf_class = BACKBONES[family].hf_model_class
    config = hf_class.config_class.from_json_file(str(PUBLISHED / family / "config.json"))
    config.save_pretrained(str(folder))
    build_tiny_tokenizer().save_pretrained(str(folder))  # the config names every special id
    with parameters_on_meta():
        vlm = hf_class(config)
    specs = [(name, p.shape, torch.bfloat16, random_bf16(p.shape)) for name, p in vlm.named_parameters()
             if not name.startswith("lm_head.")]  # tied to the embeddings
    started = time.time()
    write_safetensors(folder / "model.safetensors", specs)
    print(f"wrote {folder / 'model.safetensors'}: {len(specs)} tensors, "
          f"{sum(s.numel() for _, s, _, _ in specs) / 1e9:.2f}B parameters in {time.time() - started:.0f} s")

    cfg = model_config(family, folder)
    model = build_model(cfg, dtype=torch.bfloat16, backbone_on_meta=True)
    specs = [(name, t.shape, t.dtype, random_bf16(t.shape) if t.is_meta else (lambda t=t: t.detach()))
             for name, t in model.state_dict(keep_vars=True).items()]
    write_safetensors(export / WEIGHTS, specs)
    (export / MODEL_CONFIG).write_text(json.dumps(to_dict(cfg), indent=2))
    model.backbone.hf_config.to_json_file(str(export / BACKBONE_CONFIG))
    build_tiny_tokenizer().save_pretrained(str(export))
    run = load_config(None, [f"model.backbone={family}", f"model.pretrained_path={folder}", "model.image_size=224"])
    for name, text in run_files(run.to_dict(), Normalization(Normalizer.from_stats(None, "none", range(6))).to_dict()).items():
        (export / name).write_text(text)
    print(f"wrote the policy export {export}")


def lm_step(args: argparse.Namespace) -> None:
    """Mean seconds of forward + backward through the LM alone (what ``model.lm_layers`` cuts) on one
    frame's sequence: every camera's vision tokens, an 8-token instruction, BOS, [LRN], EOS."""
    torch.manual_seed(0)
    model = build_model(model_config(args.family, Path(args.root) / "hf", args.lm_layers), dtype=torch.bfloat16)
    backbone = model.backbone
    per_view = backbone.vision_tokens(model.image_size)
    views = model.config.num_views
    image_index = torch.cat([torch.zeros(1), torch.arange(1, views + 1).repeat_interleave(per_view), torch.zeros(11)])
    image_index = image_index.long().unsqueeze(0)
    embeds = torch.randn(1, image_index.shape[1], backbone.hidden_size, dtype=torch.bfloat16) * 0.02
    mask = torch.ones_like(image_index)
    times = []
    for _ in range(args.steps + 1):
        started = time.perf_counter()
        backbone.run_language_model(embeds, mask, image_index)[:, -2].float().sum().backward()
        times.append(time.perf_counter() - started)
    print(f"{args.family}, model.lm_layers={args.lm_layers}: {len(backbone.decoder_blocks())} LM blocks, "
          f"{image_index.shape[1]} tokens: LM forward + backward {sum(times[1:]) / args.steps:.2f} s "
          f"(mean of {args.steps} after a warm-up); peak RSS {memory_gb('VmHWM'):.2f} GiB")


def train_worker(rank: int, args: argparse.Namespace, store: str, results) -> None:
    workers = args.workers
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=workers)
    cpu = torch.device("cpu")
    after_imports = memory_gb("VmRSS")
    started = time.time()
    cfg = model_config(args.family, Path(args.root) / "hf", args.lm_layers)
    model = build_sharded_model(cfg, lambda m: parallelize(m, TrainConfig(precision="bf16"), cpu, workers), cpu,
                                torch.bfloat16)
    seconds = time.time() - started
    shard = sum(p.to_local().numel() * p.element_size() for p in model.parameters()) / GB
    total = sum(p.numel() * p.element_size() for p in model.parameters()) / GB
    results.put((rank, after_imports, memory_gb("VmHWM"), shard, total, seconds))
    dist.barrier()
    dist.destroy_process_group()


def train(args: argparse.Namespace) -> None:
    workers = args.workers
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=train_worker, args=(r, args, f"{tmp}/store", results)) for r in range(workers)]
        for p in procs:
            p.start()
        rows = sorted(results.get() for _ in procs)
        for p in procs:
            p.join()
    copy = rows[0][4]
    print(f"{args.family}, model.lm_layers={args.lm_layers}: {copy:.2f} GiB in bf16 (one copy); {workers} workers, "
          f"target per worker: {copy / workers:.2f} GiB + a fixed overhead")
    for rank, base, peak, shard, _, seconds in rows:
        print(f"worker {rank}: peak RSS {peak:.2f} GiB = shard {shard:.2f} GiB + {peak - shard:.2f} GiB overhead "
              f"(after imports {base:.2f} GiB); built, sharded and loaded in {seconds:.1f} s")


def policy(root: Path) -> None:
    from vla.policy import Policy

    after_imports = memory_gb("VmRSS")
    started = time.time()
    loaded = Policy.load(str(root / "export"), dtype=torch.bfloat16)
    seconds = time.time() - started
    copy = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / GB
    peak = memory_gb("VmHWM")
    print(f"Policy.load: peak RSS {peak:.2f} GiB = one bf16 copy {copy:.2f} GiB + {peak - copy:.2f} GiB overhead "
          f"(after imports {after_imports:.2f} GiB); loaded in {seconds:.0f} s")


def main(argv: Iterator[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prepare", "train", "lm-step", "policy"])
    parser.add_argument("--family", default="paligemma", choices=sorted(BACKBONES))
    parser.add_argument("--root", help="default: ~/.cache/vla/bench/<family> (paligemma: .../paligemma-3b)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lm-layers", type=int, default=None, help="model.lm_layers (train)")
    parser.add_argument("--steps", type=int, default=3, help="forward + backward steps timed (lm-step)")
    args = parser.parse_args(argv)
    default_name = "paligemma-3b" if args.family == "paligemma" else args.family
    args.root = args.root or str(Path(f"~/.cache/vla/bench/{default_name}").expanduser())
    root = Path(args.root)
    if args.step == "prepare":
        prepare(root, args.family)
    elif args.step == "train":
        train(args)
    elif args.step == "lm-step":
        lm_step(args)
    else:
        policy(root)


if __name__ == "__main__":
    main()
