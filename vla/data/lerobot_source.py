"""A LeRobot dataset folder (v2.x or v3.0, image or mp4 video cameras) streamed as windows without
first converting it to Parquet episodes: each decode task reads one episode's rows from its data
file and decodes its frames from the video with PyAV (``vla.data.converters.lerobot``), resizes
them and normalizes the actions; the plan, the windows and the batches are those of
``vla.data.pipeline.WindowStream``. Training reads such a folder with ``data.format: lerobot``
(``vla.data.sources`` opens it as a ``LeRobotFolderSource``)::

    data_cfg = DataConfig(path="/data/lerobot/pusht", format="lerobot")
    stream = build_window_stream(data_cfg, "train", window_size=8, fwd_pred_next_n=1, image_size=224,
                                 tokenizer_dir=tok, train=True)
    for batch in stream.batches(epoch=0, rank=rank, world_size=world_size): ...

The feature mapping (``data.lerobot_cameras``, ``data.lerobot_action``, ``data.lerobot_state``),
gripper declarations (``data.lerobot_grippers``) and split rule (``data.lerobot_val_fraction``) are
the converter's (docs/data.md). Action and state statistics (for ``quantile`` / ``mean_std``) come
from a pass over the train episodes' action and state columns (no frames decoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vla.action_space import map_grippers
from vla.data.config import DataConfig
from vla.data.converters.lerobot import (
    INFO_FILE,
    EpisodeRef,
    LeRobotSource,
    _import_av,
    _info_field,
    _read_parquet,
    assign_splits,
    list_episodes,
    load_info,
    map_features,
    read_data_file,
    read_episode,
    read_tasks,
)
from vla.data.metadata import DataError
from vla.data.pipeline import DataSpec, state_dim_used
from vla.data.plan import EpisodeIndex
from vla.data.stats import Normalization, action_stats
from vla.data.transforms import Normalize, episode_frames, put_frame, replicate_margin


@dataclass
class LeRobotEpisodes:
    """Reads one LeRobot episode and prepares it as a decode task does (called in a Ray task)."""

    source: LeRobotSource
    cameras: list[str]  # our camera names, in batch order
    image_size: int
    normalization: Normalization  # with a state normalizer: the episode carries its state
    margin: int = 0  # replicated edge pixels around each frame (``frame_margin``)

    def __call__(self, ref: EpisodeRef) -> dict:
        episode = read_episode(self.source, ref, read_data_file(self.source, ref.data_file, ref.index))
        images = episode_frames(len(episode.actions), len(self.cameras), self.image_size, self.margin)
        for view, camera in enumerate(self.cameras):
            for step, frame in enumerate(episode.images[camera]):
                put_frame(images, step, view, Image.fromarray(frame), self.margin)
        replicate_margin(images, self.margin)
        decoded = {"images": images, "actions": episode.actions.astype(np.float32), "instruction": episode.instruction}
        if self.normalization.state is not None:
            decoded["state"] = episode.state
        return Normalize(self.normalization)(decoded)


def train_chunks(source: LeRobotSource, refs: list[EpisodeRef], key: str):
    """The rows of feature ``key`` (the action, gripper dimensions mapped to -1/+1, or the state) of
    ``refs``, one chunk per data file (only that column is read)."""
    by_file: dict[Path, set[int]] = {}
    for ref in refs:
        by_file.setdefault(ref.data_file, set()).add(ref.index)
    for file, indices in by_file.items():
        table = _read_parquet(file, ["episode_index", key])
        keep = np.isin(table.column("episode_index").to_numpy(), list(indices))
        values = np.asarray(table.column(key).to_pylist(), np.float32)[keep]
        yield map_grippers(values, source.features.grippers) if key == source.features.action else values


@dataclass(frozen=True)
class LeRobotFolder:
    """A checked LeRobot folder: how to read its episodes, and which episodes each split holds."""

    root: Path
    source: LeRobotSource
    splits: dict[str, list[EpisodeRef]]  # "train" / "val" -> episodes in index order

    def refs(self, split: str) -> list[EpisodeRef]:
        refs = self.splits.get(split, [])
        if not refs:
            raise DataError(f"{self.root}: split {split!r} has no episodes (LeRobot splits: train, val; "
                            f"data.lerobot_val_fraction sets val's share)")
        return refs

    def index(self, split: str) -> EpisodeIndex:
        refs = self.refs(split)
        return EpisodeIndex(np.asarray([r.index for r in refs], np.int64), np.asarray([r.length for r in refs], np.int64),
                            [(r,) for r in refs])


def open_lerobot(data_cfg: DataConfig) -> LeRobotFolder:
    """``data.path`` as a LeRobot folder: ``meta/info.json``, the mapped features (every camera an
    image or video feature), every episode's data file and videos present, PyAV importable for
    videos; raises ``DataError`` naming the file and field, reading no frame."""
    root = Path(data_cfg.path)
    info, version = load_info(root)
    features = map_features(info, root / INFO_FILE, cameras=data_cfg.lerobot_cameras or None,
                            action_key=data_cfg.lerobot_action, state_key=data_cfg.lerobot_state,
                            grippers=data_cfg.lerobot_grippers)
    if list(features.cameras) != list(data_cfg.cameras):
        raise DataError(f"{root / INFO_FILE}: cameras {list(features.cameras)} do not match data.cameras "
                        f"{data_cfg.cameras} (map them with data.lerobot_cameras)")
    if features.videos:
        _import_av()
    episodes = list_episodes(root, info, version, features)
    split_of = assign_splits(info, root / INFO_FILE, [e.index for e in episodes], val_episodes=None,
                             val_fraction=data_cfg.lerobot_val_fraction)
    source = LeRobotSource(float(_info_field(info, root, "fps")), read_tasks(root, version), features)
    return LeRobotFolder(root, source, {split: [e for e in episodes if split_of[e.index] == split]
                                        for split in ("train", "val")})


def lerobot_normalization(folder: LeRobotFolder, data_cfg: DataConfig, state_dim: int) -> Normalization:
    """The train episodes' normalization of the actions (and of the state when ``state_dim``)."""
    refs = folder.splits.get(data_cfg.train_split, [])
    features = folder.source.features

    def stats(key: str):
        return action_stats(lambda: train_chunks(folder.source, refs, key)) if refs else None

    return Normalization.from_stats(stats(features.action), stats(features.state) if state_dim else None,
                                    features.action_space, state_dim, data_cfg)


class LeRobotFolderSource:
    """The LeRobot folder at ``data.path`` (``data.format: lerobot``), checked when opened."""

    def __init__(self, data_cfg: DataConfig) -> None:
        self.data_cfg = data_cfg
        self.folder = open_lerobot(data_cfg)

    def check(self, splits: list[str], use_state: bool | None) -> DataSpec:
        """Each split has episodes; the ``DataSpec`` of the train split (its statistics read
        from the action and state columns)."""
        for split in splits:
            self.folder.refs(split)
        features = self.folder.source.features
        state_dim = state_dim_used(features.state_dim, use_state, str(self.folder.root / INFO_FILE))
        return DataSpec(features.action_space, state_dim, lerobot_normalization(self.folder, self.data_cfg, state_dim))

    def index(self, split: str) -> EpisodeIndex:
        return self.folder.index(split)

    def reader(self, image_size: int, margin: int, normalization: Normalization | None) -> LeRobotEpisodes:
        """What a decode task calls with an episode's address; without ``normalization``, the
        actions' alone, computed from the train episodes."""
        return LeRobotEpisodes(self.folder.source, list(self.data_cfg.cameras), image_size,
                               normalization or lerobot_normalization(self.folder, self.data_cfg, state_dim=0), margin)
