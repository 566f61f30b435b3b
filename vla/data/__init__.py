"""Parquet episode format, writer, converters, statistics, normalization, validation, and the
deterministic window stream (Ray tasks decode episodes). See docs/data.md."""

from vla.data.config import DataConfig
from vla.data.episodes import Episode, Problem
from vla.data.metadata import ActionStats, DataError, DatasetMetadata, load_metadata
from vla.data.pipeline import WindowStream
from vla.data.sources import build_window_stream, check_dataset, count_windows
from vla.data.stats import Normalization, Normalizer, compute_stats
from vla.data.validate import validate_dataset
from vla.data.writer import EpisodeWriter, merge_datasets, write_dataset

__all__ = [
    "ActionStats",
    "DataConfig",
    "DataError",
    "DatasetMetadata",
    "Episode",
    "EpisodeWriter",
    "Normalization",
    "Normalizer",
    "Problem",
    "WindowStream",
    "build_window_stream",
    "check_dataset",
    "compute_stats",
    "count_windows",
    "load_metadata",
    "merge_datasets",
    "validate_dataset",
    "write_dataset",
]
