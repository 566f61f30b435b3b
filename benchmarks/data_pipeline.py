"""Throughput of the window pipeline: Ray Data vs a plain single-process loop, same shards, same decode.

    python benchmarks/data_pipeline.py --episodes 200 --image-size 64 --out-size 32 --num-cpus 2 --step-rows

Prints windows/s of both, their ratio, the per-core PNG decode rate (the bound: every
window needs ``T x V`` frames, each decoded once per episode), and with ``--step-rows`` the
same Ray pipeline over a one-row-per-step copy of the data (regrouped by ``groupby``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla.data import DataConfig, build_window_dataset, iter_batches, load_metadata
from vla.data.converters.synthetic import convert_synthetic
from vla.data.episodes import decode_image
from vla.data.pipeline import episode_columns, episode_to_windows, load_tokenizer
from vla.model.tokenizer import build_tiny_tokenizer

log = logging.getLogger("benchmark")


def plain_loop(cfg: DataConfig, args, tokenizer_dir: str) -> int:
    """Read every shard with pyarrow and run the same transform chain in this process."""
    meta = load_metadata(cfg.path)
    transform = episode_to_windows(cfg, meta, window_size=args.window, fwd_pred_next_n=args.fwd,
                                   image_size=args.out_size, tokenizer=load_tokenizer(tokenizer_dir), train=True)
    windows = 0
    for shard in meta.splits["train"].shards:
        for batch in pq.ParquetFile(f"{cfg.path}/{shard.file}").iter_batches(columns=episode_columns(cfg.cameras)):
            table = pa.Table.from_batches([batch])
            table = table.append_column("path", pa.array([shard.file] * len(table)))
            windows += sum(len(w["actions"]) for w in transform(table))
    return windows


def ray_pipeline(cfg: DataConfig, args, tokenizer_dir: str) -> int:
    ds = build_window_dataset(cfg, "train", window_size=args.window, fwd_pred_next_n=args.fwd,
                              image_size=args.out_size, tokenizer_dir=tokenizer_dir, train=True)
    return sum(len(b["actions"]) for b in iter_batches(ds, cfg, epoch=0))


def step_rows_pipeline(cfg: DataConfig, args, tokenizer_dir: str, step_root: str) -> int:
    """The alternative layout: one row per step, regrouped into episodes with a groupby."""
    import ray.data

    meta = load_metadata(cfg.path)
    transform = episode_to_windows(cfg, meta, window_size=args.window, fwd_pred_next_n=args.fwd,
                                   image_size=args.out_size, tokenizer=load_tokenizer(tokenizer_dir), train=True)
    list_columns = ["actions", *(c for c in episode_columns(cfg.cameras) if c.startswith("image_"))]

    def regroup(group: pa.Table):
        group = group.sort_by("step")
        table = pa.table({
            "episode_id": [group["episode_id"][0].as_py()],
            "instruction": [group["instruction"][0].as_py()],
            "num_steps": [len(group)],
            "path": ["step-rows"],
            **{c: pa.ListArray.from_arrays([0, len(group)], group[c].combine_chunks()) for c in list_columns},
        })
        yield from transform(table)

    ds = ray.data.read_parquet(step_root).groupby("episode_id").map_groups(regroup, batch_format="pyarrow")
    return sum(len(b["actions"]) for b in iter_batches(ds, cfg, epoch=0))


def write_step_rows(cfg: DataConfig, step_root: str) -> None:
    meta = load_metadata(cfg.path)
    Path(step_root).mkdir(parents=True)
    for shard in meta.splits["train"].shards:
        table = pq.read_table(f"{cfg.path}/{shard.file}", columns=episode_columns(cfg.cameras))
        steps = table["num_steps"].to_numpy()
        per_step = {
            "episode_id": np.repeat(table["episode_id"].to_numpy(), steps),
            "instruction": np.repeat(np.asarray(table["instruction"].to_pylist(), object), steps),
            "step": np.concatenate([np.arange(s) for s in steps]),
        }
        for column in episode_columns(cfg.cameras)[3:]:
            per_step[column] = table[column].combine_chunks().flatten()
        pq.write_table(pa.table(per_step), f"{step_root}/{Path(shard.file).name}")


def decode_rate(cfg: DataConfig, size: int) -> float:
    meta = load_metadata(cfg.path)
    frames = pq.read_table(f"{cfg.path}/{meta.splits['train'].shards[0].file}",
                           columns=["image_static"])["image_static"].combine_chunks().flatten().to_pylist()
    start = time.perf_counter()
    for data in frames:
        decode_image(data, size)
    return len(frames) / (time.perf_counter() - start)


def timed(fn, *fn_args) -> tuple[int, float]:
    start = time.perf_counter()
    windows = fn(*fn_args)
    return windows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64, help="stored image size")
    parser.add_argument("--out-size", type=int, default=32, help="decoded + resized size")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--fwd", type=int, default=1)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--step-rows", action="store_true", help="also time the one-row-per-step layout")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import ray

    work = tempfile.mkdtemp(prefix="vla_bench_")
    convert_synthetic(f"{work}/ds", episodes=args.episodes, val_episodes=1, image_size=args.image_size,
                      max_shard_bytes=256 << 10)
    build_tiny_tokenizer().save_pretrained(f"{work}/tok")
    cfg = DataConfig(path=f"{work}/ds", batch_size=32, shift_static=2, shift_wrist=1)
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ray_pipeline(cfg, args, f"{work}/tok")  # warm up workers (imports), not timed

    plain_n, plain_s = timed(plain_loop, cfg, args, f"{work}/tok")
    ray_n, ray_s = timed(ray_pipeline, cfg, args, f"{work}/tok")
    rate = decode_rate(cfg, args.out_size)
    meta = load_metadata(cfg.path)
    log.info("data: %d episodes, %d steps, %d shards, %dpx PNG -> %dpx, window %d, %d cameras",
             meta.splits["train"].episodes, meta.splits["train"].steps, len(meta.splits["train"].shards),
             args.image_size, args.out_size, args.window, len(cfg.cameras))
    log.info("plain single-process loop : %8.0f windows/s (%d windows, %.1f s)", plain_n / plain_s, plain_n, plain_s)
    log.info("Ray Data pipeline (%d CPU) : %8.0f windows/s (%d windows, %.1f s)", args.num_cpus, ray_n / ray_s,
             ray_n, ray_s)
    log.info("ratio Ray / plain          : %8.2f", (ray_n / ray_s) / (plain_n / plain_s))
    log.info("PNG decode, one core       : %8.0f frames/s -> bound %.0f windows/s per core (each frame "
             "decoded once, %d frames per step)", rate, rate / len(cfg.cameras), len(cfg.cameras))
    if args.step_rows:
        write_step_rows(cfg, f"{work}/steps")
        step_n, step_s = timed(step_rows_pipeline, cfg, args, f"{work}/tok", f"{work}/steps")
        log.info("Ray, one row per step     : %8.0f windows/s (%d windows, %.1f s; groupby regroup)",
                 step_n / step_s, step_n, step_s)


if __name__ == "__main__":
    main()
