"""Where training data comes from and how it is cut, augmented and batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vla.configuration import check


@dataclass
class DataConfig:
    path: str = ""  # dataset root (local path, s3:// or gs://) holding metadata.json + shards
    train_split: str = "train"
    val_split: str = "val"
    cameras: list[str] = field(default_factory=lambda: ["static", "wrist"])
    max_text_len: int = 16  # instruction tokens, right-padded / truncated
    stride: int = 1  # distance between window start indices
    normalization: Literal["clip", "quantile", "mean_std", "none"] = "clip"
    clip_bound: float = 1.0  # "clip": clip pose to +-bound and scale to [-1, 1] (CALVIN: 0.65)
    shift_static: int = 0  # random-shift augmentation in pixels (replicate pad + crop back)
    shift_wrist: int = 0
    color_jitter: float = 0.0  # brightness/contrast jitter amplitude, 0 disables
    batch_size: int = 8  # per training worker
    open_episodes: int = 32  # train: windows interleave from this many episodes (decoded, held per worker)
    decode_ahead: int = 4  # episodes decoding ahead of need per worker (Ray tasks)
    prefetch_batches: int = 2  # batches assembled ahead by each worker (a thread)
    cache_remote: bool = True  # s3:// / gs:// data: each node copies a shard whole to $VLA_CACHE_DIR on first read
    seed: int = 0  # with the epoch, rank and world size: the order and augmentation of every window
    window_log: str = ""  # debug: local folder where each rank appends the (episode_id, start) of every batch

    def validate(self) -> None:
        check(bool(self.cameras), "cameras", "must name at least one camera")
        check(self.max_text_len >= 1, "max_text_len", "must be >= 1")
        check(self.stride >= 1, "stride", "must be >= 1")
        check(self.clip_bound > 0, "clip_bound", "must be > 0")
        check(self.shift_static >= 0 and self.shift_wrist >= 0, "shift_static", "must be >= 0")
        check(self.color_jitter >= 0, "color_jitter", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.open_episodes >= 1, "open_episodes", "must be >= 1")
        check(self.decode_ahead >= 1, "decode_ahead", "must be >= 1")
        check(self.prefetch_batches >= 0, "prefetch_batches", "must be >= 0")
