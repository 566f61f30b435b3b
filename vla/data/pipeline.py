"""The window stream of any episode source (``vla.data.sources``): episodes decoded in Ray tasks ->
batches of windows.

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
import torch

from vla.action_space import ActionSpace
from vla.data.config import DataConfig
from vla.data.metadata import DataError
from vla.data.plan import EpisodeIndex, EpochPlan, epoch_plan
from vla.data.stats import Normalization
from vla.data.transforms import ColorJitter, CutWindows, RandomShift, Tokenize, WindowBatcher
from vla.typed_config import ConfigError, import_function


def load_tokenizer(tokenizer_dir: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"{tokenizer_dir}: cannot load a tokenizer: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
