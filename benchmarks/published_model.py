"""A user's checkpoint folder of a published backbone with random weights, for runs without its weights.

    python -m benchmarks.published_model paligemma OUT --layers 4    # 4 vision + 4 LM blocks, published widths
    python -m benchmarks.published_model paligemma OUT --small       # gpu_step --small's reduced config (CPU)

What ``model.pretrained_path`` then reads: ``config.json`` (the published config,
``benchmarks.gpu_step.published_config``), seeded random weights in bf16 written by
``save_pretrained``, the published preprocessor and generation configs, and the small stand-in
tokenizer of ``tests/model/published.py`` (the real ones are not redistributable) with the
published special tokens at their ids.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from benchmarks.gpu_step import published_config
from tests.model.published import PUBLISHED, write_tokenizer
from vla.model import BACKBONES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=["paligemma", "kosmos2"])
    parser.add_argument("out")
    parser.add_argument("--layers", type=int, default=None, help="at most this many vision and LM blocks")
    parser.add_argument("--small", action="store_true", help="gpu_step --small's reduced widths and depth")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    out, source = Path(args.out), PUBLISHED / args.family
    out.mkdir(parents=True, exist_ok=True)
    config = published_config(args.family, small=args.small, layers=args.layers)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # random init is fast on a GPU
    with device:
        model = BACKBONES[args.family].hf_model_class(config).to(torch.bfloat16)
    model.save_pretrained(str(out))
    for name in ("preprocessor_config.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    write_tokenizer(args.family, source, out)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.family}: {params / 1e9:.3f}B parameters (bf16) in {out}, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
