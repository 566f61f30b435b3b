"""The epoch plan: a function of (seed, epoch, rank, world size), a partition of the epoch's windows,
at most ``open_episodes`` episodes open at once, batches drawn from many episodes."""

from __future__ import annotations

import numpy as np
import pytest

from vla.data import DataConfig
from vla.data.parquet_source import read_episode_index
from vla.data.plan import EpisodeIndex, batch_diversity, epoch_plan, ideal_diversity


def index_of(lengths) -> EpisodeIndex:
    lengths = np.asarray(lengths, np.int64)
    return EpisodeIndex(episode_id=np.arange(len(lengths)) + 1000, num_steps=lengths,
                        addresses=[("f", 0, row) for row in range(len(lengths))])


@pytest.fixture(scope="module")
def index() -> EpisodeIndex:
    return index_of(np.random.default_rng(1).integers(20, 90, 300))  # CALVIN-like segment lengths


def pairs(plan) -> list[tuple[int, int]]:
    return list(zip(plan.episode.tolist(), plan.start.tolist()))


def all_windows(index: EpisodeIndex, stride: int) -> set[tuple[int, int]]:
    return {(e, s) for e, steps in enumerate(index.num_steps.tolist()) for s in range(0, steps, stride)}


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("stride", [1, 3])
def test_ranks_split_the_epoch_into_equal_disjoint_parts(index, world_size, stride):
    cfg = DataConfig(stride=stride, open_episodes=8)
    plans = [pairs(epoch_plan(index, cfg, epoch=2, rank=r, world_size=world_size, shuffle=True))
             for r in range(world_size)]
    windows = all_windows(index, stride)
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) == len(windows) // world_size
    seen = [w for p in plans for w in p]
    assert len(set(seen)) == len(seen)  # no window twice in an epoch
    assert set(seen) <= windows and len(windows) - len(seen) < world_size


def test_the_order_is_a_function_of_seed_epoch_rank_and_world_size(index):
    cfg = DataConfig(open_episodes=8)

    def plan(seed=0, epoch=0, rank=0, world_size=2):
        cfg.seed = seed
        return pairs(epoch_plan(index, cfg, epoch=epoch, rank=rank, world_size=world_size, shuffle=True))

    assert plan() == plan()
    assert plan(epoch=1) != plan() and plan(seed=5) != plan() and plan(rank=1) != plan()
    assert set(plan(world_size=3)) != set(plan())
    cfg.seed = 0
    unshuffled = epoch_plan(index, cfg, epoch=3, rank=0, world_size=1, shuffle=False)
    assert pairs(unshuffled) == sorted(all_windows(index, 1))  # validation: stored order


@pytest.mark.parametrize("open_episodes", [1, 4, 32])
def test_never_more_than_open_episodes_are_held(index, open_episodes):
    plan = epoch_plan(index, DataConfig(open_episodes=open_episodes), epoch=0, rank=1, world_size=2, shuffle=True)
    episodes = plan.episode
    first = {e: i for i, e in reversed(list(enumerate(episodes.tolist())))}
    last = {e: i for i, e in enumerate(episodes.tolist())}
    opened = np.zeros(len(episodes) + 1, np.int64)
    for e in first:
        opened[first[e]] += 1
        opened[last[e] + 1] -= 1
    assert np.cumsum(opened).max() <= open_episodes


def test_batches_draw_from_many_episodes(index):
    batch = 8
    ideal = ideal_diversity(index, stride=1, batch_size=batch)
    assert 7.5 < ideal <= 8

    def diversity(open_episodes: int) -> float:
        plan = epoch_plan(index, DataConfig(open_episodes=open_episodes), epoch=0, rank=0, world_size=1, shuffle=True)
        return batch_diversity(plan, batch)

    assert diversity(32) >= 0.85 * ideal
    assert diversity(1) < 2  # one episode at a time: what an episode-ordered stream gives
    unshuffled = epoch_plan(index, DataConfig(), epoch=0, rank=0, world_size=1, shuffle=False)
    assert batch_diversity(unshuffled, batch) < 1.2


def test_ideal_diversity_matches_sampling():
    index = index_of([1, 2, 3, 10])
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [1, 2, 3, 10])
    sampled = np.mean([len(set(rng.permutation(labels)[:4])) for _ in range(20000)])
    assert ideal_diversity(index, stride=1, batch_size=4) == pytest.approx(sampled, abs=0.02)


@pytest.mark.parametrize("stride", [1, 3])
def test_the_schedule_counts_the_windows_the_stream_makes(synthetic_dataset, stride):
    """With stride > 1 an episode of S steps has ceil(S / stride) windows; the schedule once
    counted ceil(total steps / stride), fewer than the stream makes."""
    import pyarrow.parquet as pq

    from vla.config import load_config
    from vla.data import count_windows, load_metadata
    from vla.train.launch import total_steps_of

    meta = load_metadata(synthetic_dataset)
    steps = np.concatenate([pq.read_table(f"{synthetic_dataset}/{s.file}", columns=["num_steps"])["num_steps"].to_numpy()
                            for s in meta.splits["train"].shards])
    expected = int(sum(-(-steps // stride)))
    cfg = load_config(None, [f"data.path={synthetic_dataset}", f"data.stride={stride}", "data.batch_size=2",
                             "train.num_workers=2", "train.grad_accum_steps=1"])
    assert count_windows(cfg.data, "train") == expected
    assert total_steps_of(cfg) == expected // 4
    plans = [epoch_plan(read_episode_index(synthetic_dataset, "train"), cfg.data, epoch=0, rank=r, world_size=2,
                        shuffle=True) for r in range(2)]
    assert sum(map(len, plans)) == expected // 2 * 2
