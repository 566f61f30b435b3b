"""Where a run's episodes come from (``data.format``), and the stream built over them.

An episode source answers three questions, and the generic stream (``vla.data.pipeline``,
``vla.data.plan``) needs nothing else from a format:

- ``check(splits, use_state) -> DataSpec``: what the driver checks before Ray starts, and the
  action space, state length and normalization the dataset hands the model;
- ``index(split) -> EpisodeIndex``: the split's episodes, their lengths and addresses;
- ``reader(image_size, margin, normalization)``: the picklable callable a decode task calls with
  one address, returning the decoded, normalized episode.

A new format is a class with these three methods, registered in ``SOURCES``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vla.data.config import DataConfig
from vla.data.lerobot_source import LeRobotFolderSource
from vla.data.parquet_source import ParquetSource
from vla.data.pipeline import DataSpec, WindowStream, frame_margin, load_tokenizer, user_transforms, window_batcher
from vla.data.plan import EpisodeIndex
from vla.data.stats import Normalization
from vla.data.transforms import Tokenize


class EpisodeSource(Protocol):
    def check(self, splits: list[str], use_state: bool | None) -> DataSpec: ...

    def index(self, split: str) -> EpisodeIndex: ...

    def reader(self, image_size: int, margin: int, normalization: Normalization | None) -> Callable[..., dict]: ...


SOURCES: dict[str, Callable[[DataConfig], EpisodeSource]] = {"parquet": ParquetSource, "lerobot": LeRobotFolderSource}


def open_source(data_cfg: DataConfig) -> EpisodeSource:
    """The source of ``data.path`` in ``data.format`` (its metadata read and checked)."""
    return SOURCES[data_cfg.format](data_cfg)


def check_dataset(data_cfg: DataConfig, splits: list[str], use_state: bool | None = None) -> DataSpec:
    """What a run checks on the driver before Ray starts, raising ``DataError`` naming the file and
    field (``ConfigError`` for ``data.transforms``); returns the dataset's ``DataSpec``
    (``use_state`` is ``model.use_state``)."""
    user_transforms(data_cfg)
    return open_source(data_cfg).check(splits, use_state)


def count_windows(data_cfg: DataConfig, split: str) -> int:
    """Windows per epoch of ``split``: ``ceil(num_steps / stride)`` per episode, summed (the
    count the schedule uses; the plan gives every rank ``count // world_size`` of them)."""
    return int(open_source(data_cfg).index(split).windows_per_episode(data_cfg.stride).sum())


def build_window_stream(data_cfg: DataConfig, split: str, *, window_size: int, fwd_pred_next_n: int,
                        image_size: int, tokenizer_dir: str, train: bool,
                        normalization: Normalization | None = None) -> WindowStream:
    """The stream of ``split``'s windows. Structural problems raise ``DataError`` here, before
    training. ``normalization``: the run's (``check_dataset`` returns it); the windows carry the
    state when it has a state normalizer."""
    source = open_source(data_cfg)
    return WindowStream(
        data_cfg=data_cfg,
        split=split,
        index=source.index(split),
        reader=source.reader(image_size, frame_margin(data_cfg, train), normalization),
        tokenize=Tokenize(load_tokenizer(tokenizer_dir), data_cfg.max_text_len),
        batcher=window_batcher(data_cfg, window_size=window_size, fwd_pred_next_n=fwd_pred_next_n, train=train),
        train=train,
        transforms=user_transforms(data_cfg),
    )
