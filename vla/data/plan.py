"""Which windows an epoch holds, in which order, on which rank: pure numpy, no Ray, no decoding.

A window is a pair ``(episode, start)``. An epoch's plan is a function of ``(data.seed, epoch,
rank, world size)`` only:

1. ``train``: the episodes are permuted with ``default_rng([seed, epoch])`` (``val``: stored order).
2. The windows, listed episode by episode in that order, are cut into ``world_size`` equal
   contiguous runs (the last ``total % world_size`` windows are dropped); rank ``r`` takes run ``r``.
   An episode is decoded by one rank, or by two when it straddles a run boundary.
3. ``train``: within its run, the rank orders windows by the key ``p + K * u`` (``p`` the
   position of the window's episode in the run, ``u`` uniform from ``default_rng([seed, epoch,
   rank, world_size])``, ``K = data.open_episodes``). An episode's windows spread over keys
   ``[p, p + K)``, so consecutive windows come from the about ``K`` episodes whose positions lie
   within ``K`` of each other, and at no point are more than ``K`` episodes open (started and
   not finished): the bound on decoded episodes a worker holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla.data.config import DataConfig


@dataclass(frozen=True)
class EpisodeIndex:
    """The episodes of a split: id, length, and where each lives (its reader's arguments)."""

    episode_id: np.ndarray  # [E]
    num_steps: np.ndarray  # [E]
    addresses: list[tuple]  # [E] Parquet: (file, row group, row in it)

    def windows_per_episode(self, stride: int) -> np.ndarray:
        return -(-self.num_steps // stride)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's windows of one epoch, in the order it trains on them."""

    episode: np.ndarray  # [W] index into the EpisodeIndex
    start: np.ndarray  # [W] first step of the window

    def __len__(self) -> int:
        return len(self.episode)

    def __getitem__(self, part: slice) -> EpochPlan:
        return EpochPlan(self.episode[part], self.start[part])


def epoch_plan(index: EpisodeIndex, data_cfg: DataConfig, *, epoch: int, rank: int, world_size: int,
               shuffle: bool) -> EpochPlan:
    """The windows rank ``rank`` of ``world_size`` trains on in ``epoch`` (see the module doc)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    counts = index.windows_per_episode(data_cfg.stride)
    order = np.random.default_rng([data_cfg.seed, epoch]).permutation(len(counts)) if shuffle else np.arange(len(counts))
    episode = np.repeat(order, counts[order])
    first = np.concatenate([[0], np.cumsum(counts[order])[:-1]]).repeat(counts[order])
    start = (np.arange(len(episode)) - first) * data_cfg.stride
    per_rank = len(episode) // world_size
    run = slice(rank * per_rank, (rank + 1) * per_rank)
    episode, start = episode[run], start[run]
    if shuffle and per_rank:
        position = np.cumsum(np.concatenate([[0], episode[1:] != episode[:-1]]))
        noise = np.random.default_rng([data_cfg.seed, epoch, rank, world_size]).random(per_rank)
        keys = position + data_cfg.open_episodes * noise
        chosen = np.argsort(keys, kind="stable")
        episode, start = episode[chosen], start[chosen]
    return EpochPlan(episode, start)


def batch_diversity(plan: EpochPlan, batch_size: int) -> float:
    """Mean number of distinct episodes in the plan's full batches."""
    full = len(plan) // batch_size * batch_size
    if full == 0:
        return 0.0
    batches = np.sort(plan.episode[:full].reshape(-1, batch_size), axis=1)
    return float(1 + (batches[:, 1:] != batches[:, :-1]).sum(axis=1).mean())


def ideal_diversity(index: EpisodeIndex, stride: int, batch_size: int) -> float:
    """Expected distinct episodes in a batch drawn from a uniform permutation of all windows."""
    counts = index.windows_per_episode(stride).astype(np.float64)
    total = counts.sum()
    if batch_size > total:
        return float(len(counts))
    # P(episode e absent from a batch of b drawn without replacement) = C(total - c_e, b) / C(total, b)
    steps = np.arange(batch_size)
    absent = np.prod(np.clip((total - counts[:, None] - steps) / (total - steps), 0, None), axis=1)
    return float((1 - absent).sum())
