"""Action statistics in a streaming pass, and the normalizer that uses them.

``compute_action_stats`` reads only the ``actions`` column, one row group at a time, twice:
pass 1 merges count / min / max / mean / M2 per dimension (Chan et al.), pass 2 fills a
fixed-size histogram per dimension between the global min and max, from which q01 and q99
are interpolated. Memory is bounded by one row group plus ``dims x bins`` counters; the
quantile error is at most one bin, ``(max - min) / bins``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vla.data.config import DataConfig
from vla.data.metadata import ACTION_DIM, GRIPPER_DIM, ActionStats, DataError, DatasetMetadata

HISTOGRAM_BINS = 4096


def iter_action_chunks(fs: pafs.FileSystem, files: list[str]) -> Iterator[np.ndarray]:
    """``[n, 7]`` float64 blocks of every action in ``files``, one row group at a time."""
    for file in files:
        with fs.open_input_file(file) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["actions"]):
                steps = batch.column(0).flatten()
                values = steps.flatten().to_numpy(zero_copy_only=False)
                if len(values) != len(steps) * ACTION_DIM:
                    raise DataError(f"{file}: field actions: some actions do not have {ACTION_DIM} values "
                                    "(run `prepare_data.py validate` for the episodes)")
                yield values.reshape(-1, ACTION_DIM).astype(np.float64)


def action_stats(chunks: Callable[[], Iterable[np.ndarray]], bins: int = HISTOGRAM_BINS) -> ActionStats:
    """Statistics of the rows of every ``[n, D]`` chunk; ``chunks()`` is called twice (two passes)."""
    count, mean, m2, lo, hi = 0, None, None, None, None
    for chunk in chunks():
        if len(chunk) == 0:
            continue
        n, chunk_mean = len(chunk), chunk.mean(axis=0)
        chunk_m2 = ((chunk - chunk_mean) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2, lo, hi = n, chunk_mean, chunk_m2, chunk.min(axis=0), chunk.max(axis=0)
            continue
        delta, total = chunk_mean - mean, count + n
        mean = mean + delta * n / total
        m2 = m2 + chunk_m2 + delta**2 * count * n / total
        lo, hi, count = np.minimum(lo, chunk.min(axis=0)), np.maximum(hi, chunk.max(axis=0)), total
    if mean is None:
        raise DataError("no actions to compute statistics from (the split is empty)")
    width = np.where(hi > lo, (hi - lo) / bins, 1.0)
    hist = np.zeros((len(mean), bins), np.int64)
    for chunk in chunks():
        index = np.clip(((chunk - lo) / width).astype(np.int64), 0, bins - 1)
        for d in range(len(mean)):
            hist[d] += np.bincount(index[:, d], minlength=bins)

    def order_statistic(d: int, k: int) -> float:
        """The k-th smallest value of dim d, placed uniformly inside its histogram bin."""
        cdf = np.cumsum(hist[d])
        b = int(np.searchsorted(cdf, k, side="right"))
        below = cdf[b - 1] if b > 0 else 0
        return float(min(lo[d] + (b + (k - below + 0.5) / hist[d][b]) * width[d], hi[d]))

    def quantile(q: float) -> list[float]:
        rank = q * (count - 1)  # numpy's default ("linear") definition
        k, frac = int(rank), rank - int(rank)
        upper = min(k + 1, count - 1)
        return [(1 - frac) * order_statistic(d, k) + frac * order_statistic(d, upper) for d in range(len(mean))]

    return ActionStats(
        count=int(count),
        min=lo.tolist(),
        max=hi.tolist(),
        mean=mean.tolist(),
        std=np.sqrt(m2 / count).tolist(),
        q01=quantile(0.01),
        q99=quantile(0.99),
    )


def compute_action_stats(fs: pafs.FileSystem, files: list[str]) -> ActionStats:
    """The streaming two-pass statistics of the actions stored in ``files``."""
    return action_stats(lambda: iter_action_chunks(fs, files))


@dataclass
class ActionNormalizer:
    """``normalized = (pose - offset) / scale`` on dims 0-5 (then clipped to [-1, 1] when
    ``clip``); the gripper (dim 6) passes through untouched in both directions.

    Modes: ``clip`` (clip to +-bound, scale to [-1, 1]; RoboVLMs uses 0.65 on CALVIN),
    ``quantile`` (q01/q99 of the training split map to -1/+1, then clip; OpenVLA),
    ``mean_std`` (zero mean, unit std), ``none``.
    """

    mode: str
    offset: list[float]
    scale: list[float]
    clip: bool

    @classmethod
    def from_stats(cls, stats: ActionStats | None, mode: str, clip_bound: float = 1.0) -> ActionNormalizer:
        pose = slice(0, GRIPPER_DIM)
        if mode == "none":
            return cls(mode, [0.0] * GRIPPER_DIM, [1.0] * GRIPPER_DIM, clip=False)
        if mode == "clip":
            return cls(mode, [0.0] * GRIPPER_DIM, [clip_bound] * GRIPPER_DIM, clip=True)
        if stats is None:
            raise DataError(f"normalization {mode!r} needs action statistics, and the dataset has none")
        if mode == "quantile":
            lo, hi = np.asarray(stats.q01[pose]), np.asarray(stats.q99[pose])
            return cls(mode, ((hi + lo) / 2).tolist(), _safe_scale((hi - lo) / 2), clip=True)
        if mode == "mean_std":
            return cls(mode, list(stats.mean[pose]), _safe_scale(np.asarray(stats.std[pose])), clip=False)
        raise DataError(f"unknown normalization mode {mode!r} (clip, quantile, mean_std, none)")

    @classmethod
    def from_metadata(cls, meta: DatasetMetadata, cfg: DataConfig) -> ActionNormalizer:
        """The normalizer of ``cfg.normalization`` from the statistics of ``cfg.train_split``."""
        split = meta.splits.get(cfg.train_split)
        return cls.from_stats(split.action_stats if split else None, cfg.normalization, cfg.clip_bound)

    def normalize(self, actions):
        """``[..., 7]`` numpy array or torch tensor -> normalized copy of the same kind."""
        offset, scale = self._params(actions)
        out = actions.copy() if isinstance(actions, np.ndarray) else actions.clone()
        pose = (actions[..., :GRIPPER_DIM] - offset) / scale
        out[..., :GRIPPER_DIM] = pose.clip(-1.0, 1.0) if self.clip else pose
        return out

    def unnormalize(self, actions):
        """Inverse of ``normalize`` (up to the clipping)."""
        offset, scale = self._params(actions)
        out = actions.copy() if isinstance(actions, np.ndarray) else actions.clone()
        out[..., :GRIPPER_DIM] = actions[..., :GRIPPER_DIM] * scale + offset
        return out

    def _params(self, actions):
        if isinstance(actions, np.ndarray):
            dtype = actions.dtype if actions.dtype.kind == "f" else np.float32
            return np.asarray(self.offset, dtype), np.asarray(self.scale, dtype)
        import torch

        return (torch.tensor(self.offset, dtype=actions.dtype, device=actions.device),
                torch.tensor(self.scale, dtype=actions.dtype, device=actions.device))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ActionNormalizer:
        return cls(str(data["mode"]), [float(v) for v in data["offset"]],
                   [float(v) for v in data["scale"]], bool(data["clip"]))


def _safe_scale(scale: np.ndarray) -> list[float]:
    """Constant dimensions (e.g. unused rotations) get scale 1 instead of a division by zero."""
    return np.where(scale > 1e-8, scale, 1.0).tolist()


