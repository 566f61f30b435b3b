"""The data stream: Parquet episode shards -> decoded episodes (Ray tasks) -> batches of windows.

In the driver (checks the dataset before any worker starts)::

    train = build_window_stream(cfg.data, cfg.data.train_split, window_size=8, fwd_pred_next_n=1,
                                image_size=32, tokenizer_dir=tok_dir, train=True)
    TorchTrainer(loop, train_loop_config={"streams": {"train": train, ...}, ...})

In each training worker::

    for batch in train.batches(epoch=epoch, rank=rank, world_size=world_size, skip=batches_done):
        model(batch["images"], batch["input_ids"], batch["attention_mask"])

Each rank computes its plan for the epoch (``vla.data.plan``: a function of seed, epoch, rank
and world size), decodes the episodes the plan needs in Ray tasks, in the order it needs them,
with at most ``data.decode_ahead`` ahead, and cuts each batch's windows out of the decoded
episodes it holds (at most ``data.open_episodes``). ``skip`` batches are skipped in the plan:
their episodes are never decoded unless later windows need them.
"""

from __future__ import annotations

import functools
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from vla.action_space import ActionSpace
from vla.configuration import ConfigError, import_function
from vla.data.config import DataConfig
from vla.data.episodes import Problem, camera_frame_sizes, check_schema
from vla.data.metadata import DataError, DatasetMetadata, image_column, load_metadata, open_root
from vla.data.plan import EpisodeIndex, EpochPlan, epoch_plan, read_episode_index
from vla.data.shard_cache import open_shard
from vla.data.stats import Normalization, compute_stats
from vla.data.transforms import (
    CheckRow,
    ColorJitter,
    CutWindows,
    DecodeImages,
    EpisodeChain,
    Normalize,
    RandomShift,
    Tokenize,
    WindowBatcher,
)


def split_files(root: str, meta: DatasetMetadata, split: str, cameras: list[str]) -> list[str]:
    """The shard paths of ``split`` after cheap checks (metadata, file existence, every
    shard's schema from its footer); every problem found is raised in one ``DataError``."""
    fs, path = open_root(root)
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


def load_tokenizer(tokenizer_dir: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"{tokenizer_dir}: cannot load a tokenizer: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def episode_columns(cameras: list[str], state: bool = False) -> list[str]:
    """The columns a decode task reads (``state`` too when the model reads the robot state)."""
    return ["episode_id", "instruction", "num_steps", "actions", *(["state"] if state else []),
            *(image_column(c) for c in cameras)]


def frame_margin(data_cfg: DataConfig, train: bool) -> int:
    """Pixels of replicated edge kept around each decoded frame: the largest random shift when
    training (a shifted window is then a crop), else 0."""
    return max(data_cfg.shift_static, data_cfg.shift_wrist) if train else 0


def user_transforms(data_cfg: DataConfig) -> list[Callable[[dict], dict]]:
    """The functions named by ``data.transforms`` (dotted paths, checked by ``DataConfig.validate``).
    Their modules travel to the Ray workers by value: a file importable where the run is started
    needs no install on the cluster."""
    from ray import cloudpickle

    functions = []
    for number, path in enumerate(data_cfg.transforms):
        try:
            functions.append(import_function(path))
        except ValueError as err:
            raise ConfigError(f"data.transforms[{number}]: {err}") from None
    for function in functions:
        cloudpickle.register_pickle_by_value(sys.modules[function.__module__])
    return functions


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


def window_batcher(data_cfg: DataConfig, *, window_size: int, fwd_pred_next_n: int, train: bool) -> WindowBatcher:
    """Cuts windows out of episodes decoded with ``frame_margin(data_cfg, train)``."""
    shift = train and (data_cfg.shift_static or data_cfg.shift_wrist)
    return WindowBatcher(
        CutWindows(window_size, fwd_pred_next_n, data_cfg.stride),
        shift=RandomShift([data_cfg.shift_static if v == 0 else data_cfg.shift_wrist
                           for v in range(len(data_cfg.cameras))]) if shift else None,
        jitter=ColorJitter(data_cfg.color_jitter) if train and data_cfg.color_jitter > 0 else None,
        seed=data_cfg.seed,
        margin=frame_margin(data_cfg, train),
    )


@dataclass
class ParquetEpisodes:
    """Reads one stored episode and runs ``chain`` on it (the body of a decode task)."""

    root: str
    cameras: list[str]
    chain: EpisodeChain
    cache_remote: bool = True  # data.cache_remote: read shards on object storage from a node-local copy
    state: bool = False  # read the state column (the model reads the robot state)

    def __call__(self, file: str, row_group: int, row: int) -> dict:
        with open_shard(self.root, file, self.cache_remote) as f:
            table = pq.ParquetFile(f).read_row_group(row_group, columns=episode_columns(self.cameras, self.state))
        return self.chain({**table.slice(row, 1).to_pylist()[0], "path": file})


@dataclass
class EpisodeDecoder:
    """What a decode task runs: ``reader`` (a ``ParquetEpisodes``, ``LeRobotEpisodes``) at an
    episode's address, then the user's ``data.transforms`` in order."""

    reader: Callable[..., dict]
    transforms: list[Callable[[dict], dict]]

    def __call__(self, *address) -> dict:
        episode = self.reader(*address)
        for transform in self.transforms:
            episode = transform(episode)
        return episode


def read_episode(decoder: EpisodeDecoder, *address) -> dict:
    """The body of a decode task."""
    return decoder(*address)


@functools.cache
def decode_task():
    """1 CPU, outside any placement group: a Tune trial's group would capture the task into the
    Train worker's bundle (0.5 CPU), where it can never fit."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return ray.remote(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))(read_episode)


@dataclass
class WindowStream:
    """The windows of one split, for any epoch, rank and world size (picklable: built on the
    driver, shipped to the workers in the loop config)."""

    data_cfg: DataConfig
    split: str
    index: EpisodeIndex
    reader: Callable[..., dict]  # called in Ray tasks with an episode's address, once per episode and epoch
    tokenize: Tokenize  # runs in the worker, once per episode and epoch
    batcher: WindowBatcher
    train: bool
    transforms: list[Callable[[dict], dict]] = field(default_factory=list)  # data.transforms, in the decode tasks

    def plan(self, *, epoch: int, rank: int = 0, world_size: int = 1) -> EpochPlan:
        return epoch_plan(self.index, self.data_cfg, epoch=epoch, rank=rank, world_size=world_size,
                          shuffle=self.train)

    def batches(self, *, epoch: int, rank: int = 0, world_size: int = 1,
                skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches of ``epoch`` after the first ``skip`` (torch tensors, the batch of
        docs/design.md); the last one may be short."""
        plan = self.plan(epoch=epoch, rank=rank, world_size=world_size)[skip * self.data_cfg.batch_size:]
        numbered = self._numpy_batches(plan, epoch)
        if self.data_cfg.prefetch_batches:
            numbered = prefetched(numbered, self.data_cfg.prefetch_batches)
        log = WindowLog(self.data_cfg.window_log, self.split, rank, world_size) if self.data_cfg.window_log else None
        for number, windows, batch in numbered:
            if log is not None:
                log.write(epoch, skip + number, windows)
            yield {key: torch.from_numpy(value) for key, value in batch.items()}

    def _numpy_batches(self, plan: EpochPlan, epoch: int) -> Iterator[tuple[int, list, dict[str, np.ndarray]]]:
        fetcher = EpisodeFetcher(self, plan)
        size = self.data_cfg.batch_size
        for number, begin in enumerate(range(0, len(plan), size)):
            part = plan[begin:begin + size]
            episodes = [fetcher.get(e, begin + len(part) - 1) for e in part.episode]
            batch = self.batcher(episodes, part.start.tolist(), part.episode.tolist(), epoch)
            fetcher.release_before(begin + size)
            windows = np.stack([self.index.episode_id[part.episode], part.start], axis=1).tolist()
            yield number, windows, batch


class EpisodeFetcher:
    """Decoded episodes of a plan: submitted as Ray tasks in order of first use, at most
    ``decode_ahead`` beyond those already needed, and dropped after their last window."""

    def __init__(self, stream: WindowStream, plan: EpochPlan):
        self.stream = stream
        episodes, first = np.unique(plan.episode, return_index=True)
        _, last_reversed = np.unique(plan.episode[::-1], return_index=True)
        by_first_use = np.argsort(first)
        self.order = episodes[by_first_use]
        self.first_use = first[by_first_use]
        self.last_use = dict(zip(episodes.tolist(), (len(plan) - 1 - last_reversed).tolist()))
        self.submitted: dict[int, object] = {}  # episode -> ObjectRef of its decode task
        self.held: dict[int, dict] = {}  # episode -> decoded and tokenized episode
        self.next = 0
        self.decoder = None

    def _submit_until(self, position: int) -> None:
        import ray

        if self.decoder is None:
            self.decoder = ray.put(EpisodeDecoder(self.stream.reader, self.stream.transforms))
        while self.next < len(self.order) and (self.first_use[self.next] <= position
                                               or len(self.submitted) < self.stream.data_cfg.decode_ahead):
            e = int(self.order[self.next])
            self.submitted[e] = decode_task().remote(self.decoder, *self.stream.index.addresses[e])
            self.next += 1

    def get(self, episode: int, position: int) -> dict:
        """The decoded episode for a window at ``position`` of the plan (decoding ahead as it goes)."""
        import ray

        if episode not in self.held:
            self._submit_until(position)
            decoded = ray.get(self.submitted.pop(episode))
            self.held[episode] = self.stream.tokenize(decoded)
        return self.held[episode]

    def release_before(self, position: int) -> None:
        for episode in [e for e in self.held if self.last_use[e] < position]:
            del self.held[episode]


def prefetched(items: Iterator, depth: int) -> Iterator:
    """``items`` produced by a thread up to ``depth`` ahead; errors re-raised here; closing the
    returned generator stops the thread."""
    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    thread = threading.Thread(target=produce, daemon=True, name="vla-batches")
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass
class WindowLog:
    """Debug record (``data.window_log``): one JSON line per batch handed to the training loop."""

    folder: str
    split: str
    rank: int
    world_size: int

    def write(self, epoch: int, batch: int, windows: list) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        record = {"split": self.split, "epoch": epoch, "rank": self.rank, "world_size": self.world_size,
                  "batch": batch, "windows": windows}
        with open(Path(self.folder) / f"{self.split}-rank{self.rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class DataSpec:
    """What a dataset hands the model, decided on the driver: the action space, the length of the
    state the model reads (0: none) and how actions and state are normalized."""

    action_space: ActionSpace
    state_dim: int
    normalization: Normalization


def state_dim_used(dataset_state_dim: int | None, use_state: bool | None, where: str) -> int:
    """The state length the model reads: the dataset's unless ``model.use_state`` is false (None:
    on when the dataset has a state); ``use_state: true`` on a dataset without one is an error."""
    if use_state and not dataset_state_dim:
        raise DataError(f"{where}: the dataset has no state, but model.use_state is true")
    return int(dataset_state_dim or 0) if use_state is not False else 0


def check_dataset(data_cfg: DataConfig, splits: list[str], use_state: bool | None = None) -> DataSpec:
    """What a run checks on the driver before Ray starts (metadata, every shard's footer and
    schema; for ``data.format: lerobot`` the folder's metadata, features, data files and videos),
    raising ``DataError`` naming the file and field; returns the dataset's ``DataSpec``
    (``use_state`` is ``model.use_state``)."""
    user_transforms(data_cfg)
    if data_cfg.format == "lerobot":
        from vla.data.lerobot_stream import check_lerobot  # it builds on this module

        return check_lerobot(data_cfg, splits, use_state)
    meta = load_metadata(data_cfg.path)
    files = {split: split_files(data_cfg.path, meta, split, data_cfg.cameras) for split in splits}
    state_dim = state_dim_used(meta.state_dim, use_state, f"{data_cfg.path}/metadata.json")
    train = meta.splits.get(data_cfg.train_split)
    if state_dim and train is not None and train.state_stats is None:  # written before state statistics
        train_files = files.get(data_cfg.train_split) or split_files(data_cfg.path, meta, data_cfg.train_split,
                                                                     data_cfg.cameras)
        train.state_stats = compute_stats(open_root(data_cfg.path)[0], train_files, "state", state_dim)
    return DataSpec(meta.action_space, state_dim, Normalization.from_metadata(meta, data_cfg, bool(state_dim)))


def build_window_stream(data_cfg: DataConfig, split: str, *, window_size: int, fwd_pred_next_n: int,
                        image_size: int, tokenizer_dir: str, train: bool,
                        normalization: Normalization | None = None) -> WindowStream:
    """The stream of ``split``'s windows (of Parquet episodes, or of a LeRobot folder with
    ``data.format: lerobot``). Structural problems raise ``DataError`` here, before training.

    ``normalization``: the run's (``check_dataset`` returns it); the windows carry the state when
    it has a state normalizer. Without it the stream computes the actions' alone (a pass over a
    LeRobot folder's actions).
    """
    if data_cfg.format == "lerobot":
        from vla.data.lerobot_stream import build_lerobot_stream  # it builds on this module

        return build_lerobot_stream(data_cfg, split, window_size=window_size, fwd_pred_next_n=fwd_pred_next_n,
                                    image_size=image_size, tokenizer_dir=tokenizer_dir, train=train,
                                    normalization=normalization)
    meta = load_metadata(data_cfg.path)
    split_files(data_cfg.path, meta, split, data_cfg.cameras)
    chain = decode_chain(data_cfg, meta, image_size, frame_margin(data_cfg, train), normalization)
    return WindowStream(
        data_cfg=data_cfg,
        split=split,
        index=read_episode_index(data_cfg.path, split),
        reader=ParquetEpisodes(data_cfg.path, data_cfg.cameras, chain, data_cfg.cache_remote,
                               state=normalization is not None and normalization.state is not None),
        tokenize=Tokenize(load_tokenizer(tokenizer_dir), data_cfg.max_text_len),
        batcher=window_batcher(data_cfg, window_size=window_size, fwd_pred_next_n=fwd_pred_next_n, train=train),
        train=train,
        transforms=user_transforms(data_cfg),
    )


@dataclass
class InProcessWindows:
    """The stream's transforms without Ray: every window of every episode row of a table, in
    this process (the plain-loop benchmark, tests, the closed-loop guard)."""

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
