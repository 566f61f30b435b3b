"""Small composable transforms from a stored episode row to training windows (openpi style).

Episode-level transforms (``EpisodeChain``) run once per episode in a Ray task: decode each
frame once, tokenize the instruction once, normalize the actions once. Windows are cut at batch
time by ``WindowBatcher``: an index view into the decoded episode, copied once into the batch,
then augmented (``RandomShift`` during the copy, ``ColorJitter``) with a generator seeded by the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.data.episodes import decode_image, row_actions, row_problems
from vla.data.metadata import DataError, image_column
from vla.data.stats import ActionNormalizer

BATCH_KEYS = ("images", "input_ids", "attention_mask", "actions", "action_mask")
EPISODE_KEYS = ("images", "actions", "instruction", "input_ids", "attention_mask")


@dataclass
class CheckRow:
    """Raise ``DataError`` (naming file, episode and field) for a malformed episode row."""

    cameras: list[str]

    def __call__(self, row: dict) -> dict:
        problems = row_problems(row, self.cameras, row.get("path", "<dataset>"))
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
                             padding_side="right", truncation=True, max_length=self.max_len)
        return {**row, "input_ids": np.asarray(enc["input_ids"], np.int64),
                "attention_mask": np.asarray(enc["attention_mask"], np.int64)}


@dataclass
class Normalize:
    normalizer: ActionNormalizer

    def __call__(self, row: dict) -> dict:
        return {**row, "actions": self.normalizer.normalize(row["actions"]).astype(np.float32)}


@dataclass
class EpisodeChain:
    """Episode-level transforms run in order on a stored row, e.g. in a Ray task::

        CheckRow -> DecodeImages -> Normalize [-> Tokenize]

    The result keeps the decoded episode (``images [S, V, 3, H, W]`` uint8, ``actions [S, 7]``,
    the instruction, and ``input_ids`` / ``attention_mask [L]`` once tokenized), not the encoded frames."""

    transforms: list

    def __call__(self, row: dict) -> dict:
        for transform in self.transforms:
            row = transform(row)
        return {key: row[key] for key in EPISODE_KEYS if key in row}


@dataclass
class CutWindows:
    """Window indices into an episode of ``S`` steps; starts are ``0, stride, 2*stride, ... < S``.

    Window ``start`` covers steps ``start .. start + T + N - 2``: frame ``t`` is step ``start + t``,
    ``actions[t, n]`` the action of step ``start + t + n``, ``action_mask[t, n]`` 1 inside the
    episode. Past the end the last frame / action repeats and the mask is 0 (RoboVLMs).
    """

    window_size: int
    fwd_pred_next_n: int
    stride: int = 1

    def starts(self, steps: int) -> np.ndarray:
        return np.arange(0, steps, self.stride)

    def frames(self, start: int, steps: int) -> np.ndarray:
        return np.minimum(start + np.arange(self.window_size), steps - 1)

    def action_steps(self, start: int) -> np.ndarray:
        return start + np.arange(self.window_size)[:, None] + np.arange(self.fwd_pred_next_n)  # [T, N]

    def __call__(self, episode: dict, starts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every window of ``episode`` (or those at ``starts``), stacked (copies; for in-process use)."""
        steps = len(episode["actions"])
        starts = self.starts(steps) if starts is None else np.asarray(starts)
        frame = np.stack([self.frames(s, steps) for s in starts])  # [W, T]
        step = np.stack([self.action_steps(s) for s in starts])  # [W, T, N]
        return {
            "images": episode["images"][frame],
            "actions": episode["actions"][np.minimum(step, steps - 1)],
            "action_mask": (step < steps).astype(np.float32),
            "input_ids": np.repeat(episode["input_ids"][None], len(starts), axis=0),
            "attention_mask": np.repeat(episode["attention_mask"][None], len(starts), axis=0),
            "start": starts.astype(np.int64),
        }


def shift_clamped(dst: np.ndarray, src: np.ndarray, dy: int, dx: int) -> None:
    """``dst[..., y, x] = src[..., clip(y + dy), clip(x + dx)]`` with slice copies only."""
    height, width = src.shape[-2:]
    ys, yd = (slice(dy, height), slice(0, height - dy)) if dy >= 0 else (slice(0, height + dy), slice(-dy, height))
    xs, xd = (slice(dx, width), slice(0, width - dx)) if dx >= 0 else (slice(0, width + dx), slice(-dx, width))
    dst[..., yd, xd] = src[..., ys, xs]
    if dx > 0:
        dst[..., yd, width - dx:] = dst[..., yd, width - dx - 1:width - dx]
    elif dx < 0:
        dst[..., yd, :-dx] = dst[..., yd, -dx:1 - dx]
    if dy > 0:
        dst[..., height - dy:, :] = dst[..., height - dy - 1:height - dy, :]
    elif dy < 0:
        dst[..., :-dy, :] = dst[..., -dy:1 - dy, :]


def copy_window(dst: np.ndarray, images: np.ndarray, start: int, offsets: list[tuple[int, int]]) -> None:
    """Frames ``start .. start + T - 1`` of ``images [S, V, 3, H, W]`` into ``dst [T, V, 3, H, W]``,
    camera ``v`` shifted by ``offsets[v]`` (``shift_clamped``); past the episode's end the last
    frame repeats. Slice copies straight from the decoded episode: its only copy."""
    inside = min(len(dst), len(images) - start)
    for v, (dy, dx) in enumerate(offsets):
        shift_clamped(dst[:inside, v], images[start:start + inside, v], dy, dx)
    dst[inside:] = dst[inside - 1]


@dataclass
class RandomShift:
    """Replicate-pad each camera by ``pads[v]`` pixels and crop back at a random offset, one offset
    per camera shared by the window's frames (RoboVLMs: 10 static, 4 wrist at 224); applied by
    ``copy_window`` as a shifted copy plus edge replication (the same pixels as padding then cropping)."""

    pads: list[int]

    def offsets(self, rng: np.random.Generator) -> list[tuple[int, int]]:
        return [tuple(int(o) for o in rng.integers(-pad, pad + 1, size=2)) if pad > 0 else (0, 0)
                for pad in self.pads]


@dataclass
class ColorJitter:
    """Brightness and contrast factors drawn from ``1 +- amount`` per camera of a window."""

    amount: float

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``images [T, V, 3, H, W]`` of one window, changed in place."""
        views = images.shape[1]
        brightness = rng.uniform(1 - self.amount, 1 + self.amount, (1, views, 1, 1, 1)).astype(np.float32)
        contrast = rng.uniform(1 - self.amount, 1 + self.amount, (1, views, 1, 1, 1)).astype(np.float32)
        pixels = images.astype(np.float32)
        mean = pixels.mean(axis=(2, 3, 4), keepdims=True)  # per frame and camera
        images[:] = np.clip(((pixels - mean) * contrast + mean) * brightness + 0.5, 0, 255).astype(np.uint8)
        return images


@dataclass
class WindowBatcher:
    """Cuts a batch of windows out of decoded episodes, straight into the batch arrays (the only
    copy of the frames), augmenting each window with its own generator seeded by ``(seed, epoch,
    episode, start)``: the same window gets the same augmentation whichever rank or batch it lands in."""

    cut: CutWindows
    shift: RandomShift | None
    jitter: ColorJitter | None
    seed: int

    def __call__(self, episodes: list[dict], starts: list[int], keys: list[int], epoch: int) -> dict[str, np.ndarray]:
        """Window ``i`` is ``starts[i]`` of ``episodes[i]``; ``keys[i]`` names the episode for its seed."""
        first = episodes[0]
        size, (T, N) = len(starts), (self.cut.window_size, self.cut.fwd_pred_next_n)
        views = first["images"].shape[1]
        batch = {
            "images": np.empty((size, T, *first["images"].shape[1:]), np.uint8),
            "input_ids": np.empty((size, *first["input_ids"].shape), np.int64),
            "attention_mask": np.empty((size, *first["attention_mask"].shape), np.int64),
            "actions": np.empty((size, T, N, first["actions"].shape[-1]), np.float32),
            "action_mask": np.empty((size, T, N), np.float32),
        }
        for i, (episode, start, key) in enumerate(zip(episodes, starts, keys)):
            steps = len(episode["actions"])
            rng = np.random.default_rng([self.seed, epoch, key, start]) if self.shift or self.jitter else None
            offsets = self.shift.offsets(rng) if self.shift else [(0, 0)] * views
            copy_window(batch["images"][i], episode["images"], start, offsets)
            if self.jitter:
                self.jitter(batch["images"][i], rng)
            step = self.cut.action_steps(start)
            batch["actions"][i] = episode["actions"][np.minimum(step, steps - 1)]
            batch["action_mask"][i] = step < steps
            batch["input_ids"][i] = episode["input_ids"]
            batch["attention_mask"][i] = episode["attention_mask"]
        return batch
