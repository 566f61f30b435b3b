"""Action and state statistics in a streaming pass, and the normalizers that use them.

``compute_stats`` reads only one column (``actions`` or ``state``), one row group at a time, twice:
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

from vla.action_space import ActionSpace
from vla.data.config import DataConfig
from vla.data.metadata import ActionStats, DataError, DatasetMetadata

HISTOGRAM_BINS = 4096


def iter_value_chunks(fs: pafs.FileSystem, files: list[str], column: str, dim: int) -> Iterator[np.ndarray]:
    """``[n, dim]`` float64 blocks of every step's ``column`` (``actions`` or ``state``) in ``files``,
    one row group at a time."""
    for file in files:
        with fs.open_input_file(file) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=[column]):
                steps = batch.column(0).flatten()
                values = steps.flatten().to_numpy(zero_copy_only=False)
                if len(values) != len(steps) * dim:
                    raise DataError(f"{file}: field {column}: some steps do not have {dim} values "
                                    "(run `prepare_data.py validate` for the episodes)")
                yield values.reshape(-1, dim).astype(np.float64)


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


def compute_stats(fs: pafs.FileSystem, files: list[str], column: str, dim: int) -> ActionStats:
    """The streaming two-pass statistics of ``column`` (``dim`` values per step) stored in ``files``."""
    return action_stats(lambda: iter_value_chunks(fs, files, column, dim))


@dataclass
class Normalizer:
    """``normalized = (value - offset) / scale`` on the dimensions ``dims`` (then clipped to
    [-1, 1] when ``clip``); every other dimension (a binary gripper) passes through untouched.

    Modes: ``clip`` (clip to +-bound, scale to [-1, 1]; RoboVLMs uses 0.65 on CALVIN),
    ``quantile`` (q01/q99 of the training split map to -1/+1, then clip; OpenVLA),
    ``mean_std`` (zero mean, unit std), ``none``. ``dims`` None (exports written before action
    spaces) means the first ``len(offset)`` dimensions: the 7-DOF arm's pose.
    """

    mode: str
    offset: list[float]
    scale: list[float]
    clip: bool
    dims: list[int] | None = None

    @classmethod
    def from_stats(cls, stats: ActionStats | None, mode: str, dims: list[int] | tuple[int, ...],
                   clip_bound: float = 1.0, what: str = "action") -> Normalizer:
        """The normalizer of ``mode`` over ``dims`` (``what`` names the values in errors)."""
        dims, n = list(dims), len(dims)
        if mode == "none":
            return cls(mode, [0.0] * n, [1.0] * n, clip=False, dims=dims)
        if mode == "clip":
            return cls(mode, [0.0] * n, [clip_bound] * n, clip=True, dims=dims)
        if stats is None:
            raise DataError(f"normalization {mode!r} needs {what} statistics, and the dataset has none")
        if mode == "quantile":
            lo, hi = np.asarray(stats.q01)[dims], np.asarray(stats.q99)[dims]
            return cls(mode, ((hi + lo) / 2).tolist(), _safe_scale((hi - lo) / 2), clip=True, dims=dims)
        if mode == "mean_std":
            return cls(mode, np.asarray(stats.mean)[dims].tolist(), _safe_scale(np.asarray(stats.std)[dims]),
                       clip=False, dims=dims)
        raise DataError(f"unknown normalization mode {mode!r} (clip, quantile, mean_std, none)")

    @property
    def normalized_dims(self) -> list[int]:
        return self.dims if self.dims is not None else list(range(len(self.offset)))

    def normalize(self, values):
        """``[..., D]`` numpy array or torch tensor -> normalized copy of the same kind."""
        offset, scale = self._params(values)
        dims = self.normalized_dims
        out = values.copy() if isinstance(values, np.ndarray) else values.clone()
        normalized = (values[..., dims] - offset) / scale
        out[..., dims] = normalized.clip(-1.0, 1.0) if self.clip else normalized
        return out

    def unnormalize(self, values):
        """Inverse of ``normalize`` (up to the clipping)."""
        offset, scale = self._params(values)
        dims = self.normalized_dims
        out = values.copy() if isinstance(values, np.ndarray) else values.clone()
        out[..., dims] = values[..., dims] * scale + offset
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
    def from_dict(cls, data: dict) -> Normalizer:
        dims = data.get("dims")
        return cls(str(data["mode"]), [float(v) for v in data["offset"]], [float(v) for v in data["scale"]],
                   bool(data["clip"]), [int(d) for d in dims] if dims is not None else None)


@dataclass
class Normalization:
    """How a run's data was normalized: the actions (continuous dimensions) and, when the model
    reads it, the state. Saved as ``normalization.json`` beside every run and export."""

    action: Normalizer
    state: Normalizer | None = None

    @classmethod
    def from_metadata(cls, meta: DatasetMetadata, cfg: DataConfig, use_state: bool) -> Normalization:
        """``cfg.normalization`` of the actions (``cfg.state_normalization`` of the states when
        ``use_state``) from the statistics of ``cfg.train_split``."""
        split = meta.splits.get(cfg.train_split)
        return cls.from_stats(split.action_stats if split else None, split.state_stats if split else None,
                              meta.action_space, meta.state_dim if use_state else None, cfg)

    @classmethod
    def from_stats(cls, action_stats: ActionStats | None, state_stats: ActionStats | None, space: ActionSpace,
                   state_dim: int | None, cfg: DataConfig) -> Normalization:
        action = Normalizer.from_stats(action_stats, cfg.normalization, space.continuous, cfg.clip_bound)
        if not state_dim:
            return cls(action)
        state = Normalizer.from_stats(state_stats, cfg.state_normalization, range(state_dim), what="state")
        return cls(action, state)

    def to_dict(self) -> dict:
        return {"action": self.action.to_dict(), "state": self.state.to_dict() if self.state else None}

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        """Read ``to_dict``; a file written before states (the action normalizer alone) too."""
        if "action" not in data:
            return cls(Normalizer.from_dict(data))
        return cls(Normalizer.from_dict(data["action"]),
                   Normalizer.from_dict(data["state"]) if data.get("state") else None)


def _safe_scale(scale: np.ndarray) -> list[float]:
    """Constant dimensions (e.g. unused rotations) get scale 1 instead of a division by zero."""
    return np.where(scale > 1e-8, scale, 1.0).tolist()


