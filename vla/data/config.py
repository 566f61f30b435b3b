"""Where training data comes from and how it is cut, augmented and batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vla.action_space import GripperError, parse_gripper
from vla.typed_config import check


@dataclass
class DataConfig:
    path: str = ""  # dataset root (local path, s3:// or gs://) holding metadata.json + shards
    format: Literal["parquet", "lerobot"] = "parquet"  # lerobot: path is a local LeRobot v2.x/v3.0 folder, streamed as is
    lerobot_cameras: dict[str, str] = field(default_factory=dict)  # camera -> LeRobot feature (default: info.json order)
    lerobot_action: str = "action"  # LeRobot feature holding the action (any length)
    lerobot_state: str = "observation.state"  # LeRobot feature holding the state (used when present)
    # "INDEX:CONVENTION" per action dimension that is a gripper, e.g. ["5:open_fraction"]: a binary
    # convention (vla.data.converters.lerobot.GRIPPER_CONVENTIONS) maps it to -1/+1, "continuous"
    # only names it; without an entry no dimension is a gripper
    lerobot_grippers: list[str] = field(default_factory=list)
    lerobot_val_fraction: float = 0.1  # LeRobot episodes held out as val (last ones; info.json val/test splits win)
    train_split: str = "train"
    val_split: str = "val"
    cameras: list[str] = field(default_factory=lambda: ["static", "wrist"])
    max_text_len: int = 16  # instruction tokens, right-padded / truncated
    stride: int = 1  # distance between window start indices
    # Actions (every dimension but binary grippers): "quantile" maps q01/q99 to -1/+1 (any robot's
    # units); "clip" clips to +-clip_bound and scales (for deltas already near [-1, 1]: CALVIN 0.65)
    normalization: Literal["clip", "quantile", "mean_std", "none"] = "quantile"
    clip_bound: float = 1.0
    state_normalization: Literal["clip", "quantile", "mean_std", "none"] = "mean_std"  # the robot state
    shift_static: int = 0  # random-shift augmentation in pixels (replicate pad + crop back)
    shift_wrist: int = 0
    color_jitter: float = 0.0  # brightness/contrast jitter amplitude, 0 disables
    batch_size: int = 8  # per training worker
    open_episodes: int = 32  # train: windows interleave from this many episodes (decoded, held per worker)
    decode_ahead: int = 4  # episodes decoding ahead of need per worker (Ray tasks)
    prefetch_batches: int = 2  # batches assembled ahead by each worker (a thread)
    cache_remote: bool = True  # s3:// / gs:// data: each node copies a shard whole to $VLA_CACHE_DIR on first read
    seed: int = 0  # with the epoch, rank and world size: the order and augmentation of every window
    # Dotted paths of functions (decoded episode dict -> episode dict) run in order on every decoded
    # episode, in the decode tasks (docs/data.md, "Your own transforms")
    transforms: list[str] = field(default_factory=list)
    window_log: str = ""  # debug: local folder where each rank appends the (episode_id, start) of every batch

    def validate(self) -> None:
        check(bool(self.cameras), "cameras", "must name at least one camera")
        if self.format == "lerobot":
            check(bool(self.path) and "://" not in self.path, "path",
                  f"format lerobot reads a local (or mounted) LeRobot folder, got {self.path!r}")
            check(not self.lerobot_cameras or list(self.lerobot_cameras) == list(self.cameras), "lerobot_cameras",
                  f"must map exactly data.cameras {self.cameras}, in order")
        for entry in self.lerobot_grippers:
            try:
                parse_gripper(entry)
            except GripperError as err:
                check(False, "lerobot_grippers", str(err))
        check(0 <= self.lerobot_val_fraction <= 1, "lerobot_val_fraction", "must be in [0, 1]")
        check(self.max_text_len >= 1, "max_text_len", "must be >= 1")
        check(self.stride >= 1, "stride", "must be >= 1")
        check(self.clip_bound > 0, "clip_bound", "must be > 0")
        check(self.shift_static >= 0 and self.shift_wrist >= 0, "shift_static", "must be >= 0")
        check(self.color_jitter >= 0, "color_jitter", "must be >= 0")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.open_episodes >= 1, "open_episodes", "must be >= 1")
        check(self.decode_ahead >= 1, "decode_ahead", "must be >= 1")
        check(self.prefetch_batches >= 0, "prefetch_batches", "must be >= 0")
        for number, path in enumerate(self.transforms):  # imported on the driver by check_dataset
            check(all(path.split(".")) and "." in path, f"transforms[{number}]",
                  f"{path!r} is not a dotted path (package.module.function)")
