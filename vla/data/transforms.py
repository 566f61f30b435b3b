"""Small composable transforms from a stored episode row to training windows (openpi style).

Episode-level transforms run once per episode (decode each frame once, tokenize the
instruction once, normalize the actions once); ``CutWindows`` then cuts every window with
numpy indexing, and window-level transforms (augmentation) act on stacked windows.
Every sample is a ``dict[str, np.ndarray]``; see ``EpisodeToWindows`` for the whole chain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vla.data.episodes import FrameSizes, decode_image, row_actions, row_problems
from vla.data.metadata import DataError, image_column
from vla.data.stats import ActionNormalizer

BATCH_KEYS = ("images", "input_ids", "attention_mask", "actions", "action_mask")


@dataclass
class CheckRow:
    """Raise ``DataError`` (naming file, episode and field) for a malformed episode row."""

    cameras: list[str]
    frame_sizes: FrameSizes | None = None  # camera -> (height, width) in metadata.json

    def __call__(self, row: dict) -> dict:
        problems = row_problems(row, self.cameras, row.get("path", "<dataset>"), self.frame_sizes)
        if problems:
            raise DataError("; ".join(map(str, problems)))
        return {**row, "actions": row_actions(row)}


@dataclass
class DecodeImages:
    """Encoded frames of every camera -> ``images [S, V, 3, size, size]`` uint8."""

    cameras: list[str]
    size: int

    def __call__(self, row: dict) -> dict:
        per_camera = []
        for camera in self.cameras:
            frames = []
            for step, data in enumerate(row[image_column(camera)]):
                try:
                    frames.append(decode_image(data, self.size))
                except Exception as err:  # PIL raises many kinds for corrupt bytes
                    raise DataError(f"{row.get('path', '<dataset>')}, episode {row['episode_id']}, field "
                                    f"{image_column(camera)}[{step}]: image does not decode: {err}") from None
            per_camera.append(np.stack(frames))
        images = np.stack(per_camera, axis=1)  # [S, V, H, W, 3]
        return {**row, "images": np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3))}


@dataclass
class Tokenize:
    """Instruction -> ``input_ids`` / ``attention_mask`` of ``max_len`` (no special tokens, right-padded)."""

    tokenizer: Any  # a transformers tokenizer (pickles into the Ray Data tasks)
    max_len: int

    def __call__(self, row: dict) -> dict:
        enc = self.tokenizer(row["instruction"], add_special_tokens=False, padding="max_length",
                             truncation=True, max_length=self.max_len)
        return {**row, "input_ids": np.asarray(enc["input_ids"], np.int64),
                "attention_mask": np.asarray(enc["attention_mask"], np.int64)}


@dataclass
class Normalize:
    normalizer: ActionNormalizer

    def __call__(self, row: dict) -> dict:
        return {**row, "actions": self.normalizer.normalize(row["actions"]).astype(np.float32)}


@dataclass
class CutWindows:
    """An episode of ``S`` steps -> windows starting at ``0, stride, 2*stride, ... < S``.

    Window ``w`` covers steps ``start .. start + T + N - 2``: ``images [T, V, 3, H, W]``,
    ``actions[t, n]`` = action of step ``start + t + n``, ``action_mask[t, n]`` = 1 inside the
    episode. Past the end the last frame / action repeats and the mask is 0 (RoboVLMs).
    """

    window_size: int
    fwd_pred_next_n: int
    stride: int = 1

    def __call__(self, row: dict) -> dict:
        steps = len(row["actions"])
        starts = np.arange(0, steps, self.stride)
        t = np.arange(self.window_size)
        n = np.arange(self.fwd_pred_next_n)
        frame = np.minimum(starts[:, None] + t, steps - 1)  # [W, T]
        step = starts[:, None, None] + t[:, None] + n  # [W, T, N]
        count = len(starts)
        return {
            "images": row["images"][frame],
            "actions": row["actions"][np.minimum(step, steps - 1)],
            "action_mask": (step < steps).astype(np.float32),
            "input_ids": np.repeat(row["input_ids"][None], count, axis=0),
            "attention_mask": np.repeat(row["attention_mask"][None], count, axis=0),
            "episode_id": np.full(count, row["episode_id"], np.int64),
            "start": starts.astype(np.int64),
        }


@dataclass
class RandomShift:
    """Replicate-pad each camera by ``pads[v]`` pixels and crop back at a random offset; one
    offset per window and camera, the same for all its frames (RoboVLMs: 10 static, 4 wrist at 224)."""

    pads: list[int]

    def __call__(self, windows: dict, rng: np.random.Generator) -> dict:
        images = windows["images"].copy()  # [W, T, V, 3, H, W]
        height, width = images.shape[-2:]
        for v, pad in enumerate(self.pads):
            if pad <= 0:
                continue
            padded = np.pad(images[:, :, v], ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
            for w, (dy, dx) in enumerate(rng.integers(0, 2 * pad + 1, size=(len(images), 2))):
                images[w, :, v] = padded[w, :, :, dy:dy + height, dx:dx + width]
        return {**windows, "images": images}


@dataclass
class ColorJitter:
    """Brightness and contrast factors drawn from ``1 +- amount`` per window and camera."""

    amount: float

    def __call__(self, windows: dict, rng: np.random.Generator) -> dict:
        images = windows["images"].astype(np.float32)
        shape = (len(images), 1, images.shape[2], 1, 1, 1)
        brightness = rng.uniform(1 - self.amount, 1 + self.amount, shape).astype(np.float32)
        contrast = rng.uniform(1 - self.amount, 1 + self.amount, shape).astype(np.float32)
        mean = images.mean(axis=(3, 4, 5), keepdims=True)
        images = ((images - mean) * contrast + mean) * brightness
        return {**windows, "images": np.clip(images + 0.5, 0, 255).astype(np.uint8)}


@dataclass
class EpisodeToWindows:
    """The whole chain, as a Ray Data ``map_batches`` function over episode rows (Arrow)::

        CheckRow -> DecodeImages -> Tokenize -> Normalize -> CutWindows -> [RandomShift, ColorJitter]

    Yields batches of at most ``max_windows`` windows holding exactly ``BATCH_KEYS``.
    Augmentation (``augment``) draws fresh randomness on every call, so every epoch differs.
    """

    episode_transforms: list
    cut: CutWindows
    augment: list
    max_windows: int = 64

    def windows(self, table: pa.Table) -> Iterator[dict]:
        rng = np.random.default_rng()
        for row in table.to_pylist():
            for transform in self.episode_transforms:
                row = transform(row)
            windows = self.cut(row)
            for transform in self.augment:
                windows = transform(windows, rng)
            yield {key: windows[key] for key in BATCH_KEYS}

    def __call__(self, table: pa.Table) -> Iterator[dict]:
        for windows in self.windows(table):
            count = len(windows["actions"])
            for i in range(0, count, self.max_windows):
                yield {key: value[i:i + self.max_windows] for key, value in windows.items()}
