"""Small composable transforms from a stored episode row to training windows (openpi style).

Episode-level transforms (``EpisodeChain``) run once per episode in a Ray task: decode each
frame once, tokenize the instruction once, normalize the actions once. Windows are cut at batch
time by ``WindowBatcher``: an index view into the decoded episode, copied once into the batch,
then augmented (``RandomShift`` during the copy, ``ColorJitter``) with a generator seeded by the window.
Where the model reads the robot state, episodes carry ``state [S, state_dim]`` (normalized) and
batches ``state [B, T, state_dim]``: the state of each frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vla.action_space import ActionSpace
from vla.data.episodes import FrameSizes, Problem, image_problems, row_actions, row_problems, row_state
from vla.data.metadata import DataError, image_column
from vla.data.stats import Normalization

EPISODE_KEYS = ("images", "actions", "state", "instruction", "input_ids", "attention_mask")


@dataclass
class CheckRow:
    """Raise ``DataError`` (naming file, episode and field) for a malformed episode row (lengths,
    actions against the action space, the state where ``state_dim`` is set, instruction;
    ``DecodeImages`` checks the frames as it decodes them)."""

    cameras: list[str]
    space: ActionSpace = ActionSpace()
    state_dim: int | None = None  # the state's length, when the model reads it

    def __call__(self, row: dict) -> dict:
        problems = row_problems(row, self.cameras, row.get("path", "<dataset>"), space=self.space,
                                state_dim=self.state_dim)
        if problems:
            raise DataError("; ".join(map(str, problems)))
        checked = {key: value for key, value in row.items() if key != "state"}  # read only when used
        checked["actions"] = row_actions(row)
        if self.state_dim:
            checked["state"] = row_state(row)
        return checked


@dataclass
class DecodeImages:
    """Encoded frames of every camera -> ``images [S, V, 3, size + 2 margin, size + 2 margin]`` uint8.

    Each frame is decoded once, resized, and written channel by channel into the episode array
    (no stacking or transposing copies); ``margin`` pixels around it repeat the edge pixels (the
    largest random shift: a shifted window is then a plain crop). With ``frame_sizes`` each
    frame's mode and size are checked from the header it is decoded from (``image_problems``)."""

    cameras: list[str]
    size: int
    frame_sizes: FrameSizes | None = None  # camera -> (height, width) in metadata.json
    margin: int = 0

    def __call__(self, row: dict) -> dict:
        path, episode = row.get("path", "<dataset>"), row["episode_id"]
        images = episode_frames(len(row[image_column(self.cameras[0])]), len(self.cameras), self.size, self.margin)
        problems = []
        for view, camera in enumerate(self.cameras):
            expected = (self.frame_sizes or {}).get(camera)
            for step, data in enumerate(row[image_column(camera)]):
                field = f"{image_column(camera)}[{step}]"
                try:
                    with Image.open(io.BytesIO(data)) as img:
                        problems += image_problems(img, expected, path, episode, field)
                        if not problems:
                            put_frame(images, step, view, img, self.margin)
                except Exception as err:  # PIL raises many kinds for corrupt bytes
                    problems.append(Problem(path, f"image does not decode: {err}", episode, field))
        if problems:
            raise DataError("; ".join(map(str, problems)))
        replicate_margin(images, self.margin)
        return {**row, "images": images}


def episode_frames(steps: int, views: int, size: int, margin: int) -> np.ndarray:
    """The uninitialised ``[S, V, 3, size + 2 margin, size + 2 margin]`` uint8 frames of an episode."""
    return np.empty((steps, views, 3, size + 2 * margin, size + 2 * margin), np.uint8)


def put_frame(images: np.ndarray, step: int, view: int, img: Image.Image, margin: int) -> None:
    """Frame ``img`` (any mode; resized to the episode's size) into ``images[step, view]`` inside the
    margin, channel by channel (PIL extracts each band: cheaper than transposing ``HxWx3``)."""
    size = images.shape[-1] - 2 * margin
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    inner = images[step, view, :, margin:margin + size, margin:margin + size]
    for channel, band in enumerate("RGB"):
        inner[channel] = np.frombuffer(img.tobytes("raw", band), np.uint8).reshape(size, size)


def replicate_margin(images: np.ndarray, margin: int) -> None:
    """Fill the ``margin`` of ``images [..., H, W]`` with the nearest edge pixel (``np.pad`` ``edge``)."""
    if margin == 0:
        return
    m = margin
    images[..., :m, m:-m] = images[..., m:m + 1, m:-m]
    images[..., -m:, m:-m] = images[..., -m - 1:-m, m:-m]
    images[..., :m] = images[..., m:m + 1]
    images[..., -m:] = images[..., -m - 1:-m]


@dataclass
class Tokenize:
    """Instruction -> ``input_ids`` / ``attention_mask`` of ``max_len`` (no special tokens, right-padded)."""

    tokenizer: Any  # a transformers tokenizer (pickled with the stream into the training workers)
    max_len: int

    def __call__(self, row: dict) -> dict:
        enc = self.tokenizer(row["instruction"], add_special_tokens=False, padding="max_length",
                             padding_side="right", truncation=True, max_length=self.max_len)
        return {**row, "input_ids": np.asarray(enc["input_ids"], np.int64),
                "attention_mask": np.asarray(enc["attention_mask"], np.int64)}


@dataclass
class Normalize:
    """Normalizes the actions, and the state where the episode carries one."""

    normalization: Normalization

    def __call__(self, row: dict) -> dict:
        out = {**row, "actions": self.normalization.action.normalize(row["actions"]).astype(np.float32)}
        if "state" in row and self.normalization.state is not None:
            out["state"] = self.normalization.state.normalize(row["state"]).astype(np.float32)
        return out


@dataclass
class EpisodeChain:
    """Episode-level transforms run in order on a stored row, e.g. in a Ray task::

        CheckRow -> DecodeImages -> Normalize [-> Tokenize]

    The result keeps the decoded episode (``images [S, V, 3, H, W]`` uint8, ``actions [S, D]``,
    ``state [S, state_dim]`` where read, the instruction, and ``input_ids`` / ``attention_mask [L]``
    once tokenized), not the encoded frames."""

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
        windows = {
            "images": episode["images"][frame],
            "actions": episode["actions"][np.minimum(step, steps - 1)],
            "action_mask": (step < steps).astype(np.float32),
            "input_ids": np.repeat(episode["input_ids"][None], len(starts), axis=0),
            "attention_mask": np.repeat(episode["attention_mask"][None], len(starts), axis=0),
            "start": starts.astype(np.int64),
        }
        if "state" in episode:
            windows["state"] = episode["state"][frame]
        return windows


def copy_window(dst: np.ndarray, images: np.ndarray, start: int, offsets: list[tuple[int, int]]) -> None:
    """Frames ``start .. start + T - 1`` of ``images [S, V, 3, H + 2m, W + 2m]`` (``m`` the margin
    of replicated edge pixels, ``DecodeImages``) into ``dst [T, V, 3, H, W]``, camera ``v`` cropped
    at ``offsets[v]`` from the centre (a shift with replicate padding, for ``|offset| <= m``);
    past the episode's end the last frame repeats. One slice copy per camera: the only copy."""
    height, width = dst.shape[-2:]
    margin = (images.shape[-1] - width) // 2
    inside = min(len(dst), len(images) - start)
    for v, (dy, dx) in enumerate(offsets):
        top, left = margin + dy, margin + dx
        dst[:inside, v] = images[start:start + inside, v, :, top:top + height, left:left + width]
    dst[inside:] = dst[inside - 1]


@dataclass
class RandomShift:
    """Replicate-pad each camera by ``pads[v]`` pixels and crop back at a random offset, one offset
    per camera shared by the window's frames (RoboVLMs: 10 static, 4 wrist at 224); applied by
    ``copy_window`` as a crop of the decoded episode, whose margin already holds the padding."""

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
    margin: int = 0  # the episodes' margin of replicated edge pixels (``DecodeImages``)

    def __post_init__(self):
        if self.shift and max(self.shift.pads) > self.margin:
            raise ValueError(f"a random shift of {max(self.shift.pads)} px needs episodes decoded with a margin "
                             f"of at least that, got {self.margin}")

    def __call__(self, episodes: list[dict], starts: list[int], keys: list[int], epoch: int) -> dict[str, np.ndarray]:
        """Window ``i`` is ``starts[i]`` of ``episodes[i]``; ``keys[i]`` names the episode for its seed."""
        first = episodes[0]
        size, (T, N) = len(starts), (self.cut.window_size, self.cut.fwd_pred_next_n)
        views, channels, height, width = first["images"].shape[1:]
        batch = {
            "images": np.empty((size, T, views, channels, height - 2 * self.margin, width - 2 * self.margin), np.uint8),
            "input_ids": np.empty((size, *first["input_ids"].shape), np.int64),
            "attention_mask": np.empty((size, *first["attention_mask"].shape), np.int64),
            "actions": np.empty((size, T, N, first["actions"].shape[-1]), np.float32),
            "action_mask": np.empty((size, T, N), np.float32),
        }
        if "state" in first:
            batch["state"] = np.empty((size, T, first["state"].shape[-1]), np.float32)
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
            if "state" in batch:
                batch["state"][i] = episode["state"][self.cut.frames(start, steps)]
            batch["input_ids"][i] = episode["input_ids"]
            batch["attention_mask"][i] = episode["attention_mask"]
        return batch
