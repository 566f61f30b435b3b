"""Episodes stored in the project's Parquet format (``data.format: parquet``, docs/data.md): the
checks a run makes before it starts, the episode index of a split, and the reader a decode task
calls with an episode's address ``(file, row group, row)``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from vla.data.config import DataConfig
from vla.data.episodes import Problem, camera_frame_sizes, check_schema
from vla.data.metadata import DataError, DatasetMetadata, image_column, load_metadata
from vla.data.pipeline import DataSpec, frame_margin, state_dim_used, window_batcher
from vla.data.plan import EpisodeIndex
from vla.data.stats import Normalization, compute_stats
from vla.data.transforms import CheckRow, DecodeImages, EpisodeChain, Normalize, Tokenize, WindowBatcher
from vla.storage import filesystem, open_file


class ParquetSource:
    """The dataset at ``data.path`` (``metadata.json`` and Parquet shards)."""

    def __init__(self, data_cfg: DataConfig) -> None:
        self.data_cfg = data_cfg
        self.meta = load_metadata(data_cfg.path)

    def check(self, splits: list[str], use_state: bool | None) -> DataSpec:
        """Metadata and every shard's footer and schema; the train split's state statistics when
        the model reads the state and the dataset was written before they were kept."""
        cfg, meta = self.data_cfg, self.meta
        files = {split: split_files(cfg.path, meta, split, cfg.cameras) for split in splits}
        state_dim = state_dim_used(meta.state_dim, use_state, f"{cfg.path}/metadata.json")
        train = meta.splits.get(cfg.train_split)
        if state_dim and train is not None and train.state_stats is None:
            train_files = files.get(cfg.train_split) or split_files(cfg.path, meta, cfg.train_split, cfg.cameras)
            train.state_stats = compute_stats(filesystem(cfg.path)[0], train_files, "state", state_dim)
        return DataSpec(meta.action_space, state_dim, Normalization.from_metadata(meta, cfg, bool(state_dim)))

    def index(self, split: str) -> EpisodeIndex:
        """The split's episodes, after the cheap checks of ``split_files``."""
        split_files(self.data_cfg.path, self.meta, split, self.data_cfg.cameras)
        return read_episode_index(self.data_cfg.path, split)

    def reader(self, image_size: int, margin: int, normalization: Normalization | None) -> ParquetEpisodes:
        """What a decode task calls with an episode's address: the row, decoded and normalized."""
        chain = decode_chain(self.data_cfg, self.meta, image_size, margin, normalization)
        return ParquetEpisodes(self.data_cfg.path, self.data_cfg.cameras, chain, self.data_cfg.cache_remote,
                               state=normalization is not None and normalization.state is not None)


def read_episode_index(root: str, split: str) -> EpisodeIndex:
    """Reads only the ``episode_id`` and ``num_steps`` columns and the footers of the split's shards."""
    meta = load_metadata(root)
    if split not in meta.splits:
        raise DataError(f"{root}: no split {split!r} (splits: {', '.join(meta.splits) or 'none'})")
    fs, path = filesystem(root)
    ids, steps, addresses = [], [], []
    for shard in meta.splits[split].shards:
        file = f"{path}/{shard.file}"
        with fs.open_input_file(file) as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=["episode_id", "num_steps"])
                ids += table["episode_id"].to_pylist()
                steps += table["num_steps"].to_pylist()
                addresses += [(file, group, row) for row in range(len(table))]
    return EpisodeIndex(np.asarray(ids, np.int64), np.asarray(steps, np.int64), addresses)


def split_files(root: str, meta: DatasetMetadata, split: str, cameras: list[str]) -> list[str]:
    """The shard paths of ``split`` after cheap checks (metadata, file existence, every
    shard's schema from its footer); every problem found is raised in one ``DataError``."""
    fs, path = filesystem(root)
    info = meta.splits.get(split)
    if info is None:
        raise DataError(f"{root}: no split {split!r} (splits: {', '.join(meta.splits) or 'none'})")
    if info.episodes == 0 or not info.shards:
        raise DataError(f"{root}: split {split!r} is empty (no episodes)")
    problems = [Problem("metadata.json", f"camera {c!r} is not in the dataset ({', '.join(meta.cameras)})",
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


def episode_columns(cameras: list[str], state: bool = False) -> list[str]:
    """The columns a decode task reads (``state`` too when the model reads the robot state)."""
    return ["episode_id", "instruction", "num_steps", "actions", *(["state"] if state else []),
            *(image_column(c) for c in cameras)]


def decode_chain(data_cfg: DataConfig, meta: DatasetMetadata, image_size: int, margin: int = 0,
                 normalization: Normalization | None = None) -> EpisodeChain:
    """What a decode task does to a stored episode row (tokenizing happens in the worker);
    ``normalization`` defaults to the metadata's train statistics, without the state. The state
    is read and normalized when ``normalization`` has a state normalizer."""
    normalization = normalization or Normalization.from_metadata(meta, data_cfg, use_state=False)
    state_dim = meta.state_dim if normalization.state is not None else None
    return EpisodeChain([CheckRow(data_cfg.cameras, meta.action_space, state_dim),
                         DecodeImages(data_cfg.cameras, image_size, camera_frame_sizes(meta.cameras, data_cfg.cameras),
                                      margin),
                         Normalize(normalization)])


@dataclass
class ParquetEpisodes:
    """Reads one stored episode and runs ``chain`` on it (the body of a decode task)."""

    root: str
    cameras: list[str]
    chain: EpisodeChain
    cache_remote: bool = True  # data.cache_remote: read shards on object storage from a node-local copy
    state: bool = False  # read the state column (the model reads the robot state)

    def __call__(self, file: str, row_group: int, row: int) -> dict:
        with open_file(self.root, file, self.cache_remote) as f:
            table = pq.ParquetFile(f).read_row_group(row_group, columns=episode_columns(self.cameras, self.state))
        return self.chain({**table.slice(row, 1).to_pylist()[0], "path": file})


@dataclass
class InProcessWindows:
    """The stream's transforms without Ray: every window of every episode row of a table, in
    this process (the plain-loop benchmark, offline evaluation during training, tests)."""

    decode: EpisodeChain
    tokenize: Tokenize
    batcher: WindowBatcher

    def windows(self, table, epoch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """One dict of stacked windows (the batch keys) per episode row of ``table``."""
        for row in table.to_pylist():
            episode = self.decode({**row, "path": row.get("path", "<table>")})
            episode = self.tokenize(episode)
            starts = self.batcher.cut.starts(len(episode["actions"])).tolist()
            yield self.batcher([episode] * len(starts), starts, [row["episode_id"]] * len(starts), epoch)


def episode_to_windows(data_cfg: DataConfig, meta: DatasetMetadata, *, window_size: int, fwd_pred_next_n: int,
                       image_size: int, tokenizer, train: bool,
                       normalization: Normalization | None = None) -> InProcessWindows:
    """The transforms of ``build_window_stream`` as one in-process chain (rows read with
    ``episode_columns(cameras, state=True)`` where ``normalization`` has a state normalizer)."""
    return InProcessWindows(decode_chain(data_cfg, meta, image_size, frame_margin(data_cfg, train), normalization),
                            Tokenize(tokenizer, data_cfg.max_text_len),
                            window_batcher(data_cfg, window_size=window_size, fwd_pred_next_n=fwd_pred_next_n,
                                           train=train))
