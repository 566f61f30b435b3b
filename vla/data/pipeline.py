"""The Ray Data pipeline: Parquet episode shards -> training windows -> torch batches.

In the driver::

    train_ds = build_window_dataset(cfg.data, cfg.data.train_split, window_size=8, fwd_pred_next_n=1,
                                    image_size=32, tokenizer_dir=tok_dir, train=True)
    TorchTrainer(loop, datasets={"train": train_ds, "val": val_ds}, ...)

In each training worker::

    for batch in iter_batches(ray.train.get_dataset_shard("train"), cfg.data, epoch=epoch):
        model(batch["images"], batch["input_ids"], batch["attention_mask"])

The dataset reads one row per episode (shards in a seeded order that changes every epoch
when ``train``), decodes each frame once, cuts every window and augments in Ray Data tasks;
the worker only shuffles windows locally and batches them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from vla.data.config import DataConfig
from vla.data.episodes import Problem, camera_frame_sizes, check_schema
from vla.data.metadata import ACTION_DIM, DataError, DatasetMetadata, image_column, load_metadata, open_root
from vla.data.stats import ActionNormalizer
from vla.data.transforms import (
    CheckRow,
    ColorJitter,
    CutWindows,
    DecodeImages,
    EpisodeToWindows,
    Normalize,
    RandomShift,
    Tokenize,
)

BATCH_DTYPES = {
    "images": torch.uint8,
    "input_ids": torch.int64,
    "attention_mask": torch.int64,
    "actions": torch.float32,
    "action_mask": torch.float32,
}


def split_files(root: str, meta: DatasetMetadata, split: str, cameras: list[str]) -> list[str]:
    """The shard paths of ``split`` after cheap checks (metadata, file existence, every
    shard's schema from its footer); every problem found is raised in one ``DataError``."""
    fs, path = open_root(root)
    info = meta.splits.get(split)
    if info is None:
        raise DataError(f"{root}: no split {split!r} (splits: {', '.join(meta.splits) or 'none'})")
    if info.episodes == 0 or not info.shards:
        raise DataError(f"{root}: split {split!r} is empty (no episodes)")
    problems = []
    if meta.action_dim != ACTION_DIM:
        problems.append(Problem("metadata.json", f"action_dim is {meta.action_dim}, expected {ACTION_DIM}",
                                field="action_dim"))
    problems += [Problem("metadata.json", f"camera {c!r} is not in the dataset ({', '.join(meta.cameras)})",
                         field="cameras") for c in cameras if c not in meta.cameras]
    files = []
    for shard in info.shards:
        file = f"{path}/{shard.file}"
        try:
            with fs.open_input_file(file) as f:
                problems += check_schema(pq.read_schema(f), cameras, shard.file)
        except FileNotFoundError:
            problems.append(Problem(shard.file, "shard listed in metadata.json is missing"))
        except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) for bad files
            problems.append(Problem(shard.file, f"shard cannot be read: {err}"))
        files.append(file)
    if problems:
        raise DataError(f"{root}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
    return files


def load_tokenizer(tokenizer_dir: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"{tokenizer_dir}: cannot load a tokenizer: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def episode_to_windows(data_cfg: DataConfig, meta: DatasetMetadata, *, window_size: int, fwd_pred_next_n: int,
                       image_size: int, tokenizer, train: bool) -> EpisodeToWindows:
    """The transform chain of ``build_window_dataset`` (also used by the single-process benchmark)."""
    cameras = data_cfg.cameras
    augment = []
    if train and (data_cfg.shift_static or data_cfg.shift_wrist):
        augment.append(RandomShift([data_cfg.shift_static if v == 0 else data_cfg.shift_wrist
                                    for v in range(len(cameras))]))
    if train and data_cfg.color_jitter > 0:
        augment.append(ColorJitter(data_cfg.color_jitter))
    return EpisodeToWindows(
        episode_transforms=[
            CheckRow(cameras, camera_frame_sizes(meta.cameras, cameras)),
            DecodeImages(cameras, image_size),
            Tokenize(tokenizer, data_cfg.max_text_len),
            Normalize(ActionNormalizer.from_metadata(meta, data_cfg)),
        ],
        cut=CutWindows(window_size, fwd_pred_next_n, data_cfg.stride),
        augment=augment,
    )


def episode_columns(cameras: list[str]) -> list[str]:
    return ["episode_id", "instruction", "num_steps", "actions", *(image_column(c) for c in cameras)]


def build_window_dataset(data_cfg: DataConfig, split: str, *, window_size: int, fwd_pred_next_n: int,
                         image_size: int, tokenizer_dir: str, train: bool):
    """A ``ray.data.Dataset`` of training windows (the batch keys of docs/design.md, one row per
    window) of ``split``. Structural problems raise ``DataError`` here, before training."""
    import ray.data

    meta = load_metadata(data_cfg.path)
    files = split_files(data_cfg.path, meta, split, data_cfg.cameras)
    transform = episode_to_windows(data_cfg, meta, window_size=window_size, fwd_pred_next_n=fwd_pred_next_n,
                                   image_size=image_size, tokenizer=load_tokenizer(tokenizer_dir), train=train)
    fs, _ = open_root(data_cfg.path)
    shuffle = ray.data.FileShuffleConfig(seed=data_cfg.seed, reseed_after_execution=True) if train else None
    ds = ray.data.read_parquet(files, filesystem=fs, include_paths=True, shuffle=shuffle)
    ds = ds.select_columns([*episode_columns(data_cfg.cameras), "path"])  # pushed down into the read
    return ds.map_batches(transform, batch_format="pyarrow", batch_size=1, zero_copy_batch=True)


def iter_batches(data_iterator, data_cfg: DataConfig, *, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``data_cfg.batch_size`` windows from a Ray ``DataIterator`` (or ``Dataset``):
    a local shuffle buffer seeded by ``seed + epoch``, prefetching, torch tensors."""
    shuffle = data_cfg.shuffle_buffer or None
    yield from data_iterator.iter_torch_batches(
        batch_size=data_cfg.batch_size,
        dtypes=BATCH_DTYPES,
        local_shuffle_buffer_size=shuffle,
        local_shuffle_seed=data_cfg.seed + epoch if shuffle else None,
        prefetch_batches=data_cfg.prefetch_batches,
    )


def count_windows(data_cfg: DataConfig, split: str) -> int:
    """Windows per epoch of ``split`` (reads only the ``num_steps`` column of each shard)."""
    meta = load_metadata(data_cfg.path)
    fs, path = open_root(data_cfg.path)
    total = 0
    for shard in meta.splits[split].shards:
        with fs.open_input_file(f"{path}/{shard.file}") as f:
            steps = pq.read_table(f, columns=["num_steps"]).column(0).to_numpy()
        total += int(np.ceil(steps / data_cfg.stride).sum())
    return total
