"""Episodes in memory: the ``Episode`` a converter writes, image coding, and the checks every
stored episode must pass (shared by the writer, the training pipeline and ``validate``).

The one set of data checks (``row_problems`` and ``frame_problems``): at least one step, an
action of ``action_dim`` finite values per step with every binary gripper in {-1, +1}
(``vla.action_space``), a state of ``state_dim`` finite values per step where the dataset has
states, a non-empty instruction (an
episode without one cannot teach a language-conditioned policy, so it is refused, not
guessed), one frame per step and camera, every frame RGB (3 channels: grayscale and RGBA are
refused, not converted) and of the camera's size in ``metadata.json``. The writer also refuses
images of cameras it was not told about.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from vla.action_space import ActionSpace
from vla.data.metadata import image_column


@dataclass
class Episode:
    """One demonstration of ``S`` steps, as a converter hands it to ``EpisodeWriter.write``."""

    instruction: str
    actions: np.ndarray  # [S, D] float; binary grippers in {-1, +1} (the writer's ``action_space``)
    images: dict[str, np.ndarray]  # camera -> [S, H, W, 3] uint8
    state: np.ndarray | None = None  # [S, D] proprio state
    step_ids: np.ndarray | None = None  # [S] source step / frame ids (default 0..S-1)
    episode_id: int | None = None  # default: the writer numbers episodes per split


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, located as precisely as known."""

    file: str
    message: str
    episode: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.episode is not None:
            where.append(f"episode {self.episode}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{', '.join(where)}: {self.message}"


def encode_image(image: np.ndarray, encoding: str, jpeg_quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=3)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """Encoded bytes -> ``HxWx3`` uint8 RGB, resized (bilinear) to ``size x size`` when given."""
    with Image.open(io.BytesIO(data)) as img:
        return _resized(img.convert("RGB"), size)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array resized exactly as ``decode_image`` resizes (policies at inference)."""
    return _resized(Image.fromarray(np.asarray(image, np.uint8)), size)


def _resized(img: Image.Image, size: int | None) -> np.ndarray:
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img)


def check_schema(schema: pa.Schema, cameras: list[str], file: str) -> list[Problem]:
    """Columns the reader needs that are missing or of the wrong type."""
    expected = {
        "episode_id": pa.types.is_integer,
        "instruction": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
        "num_steps": pa.types.is_integer,
        "actions": lambda t: pa.types.is_list(t) and pa.types.is_list(t.value_type)
        and pa.types.is_floating(t.value_type.value_type),
        **{image_column(c): lambda t: pa.types.is_list(t) and pa.types.is_binary(t.value_type) for c in cameras},
    }
    problems = []
    for name, ok in expected.items():
        index = schema.get_field_index(name)
        if index < 0:
            problems.append(Problem(file, "column is missing", field=name))
        elif not ok(schema.field(index).type):
            problems.append(Problem(file, f"column has the wrong type {schema.field(index).type}", field=name))
    return problems


FrameSizes = dict[str, tuple[int, int]]  # camera -> (height, width)


def row_problems(row: dict, cameras: list[str], file: str, frame_sizes: FrameSizes | None = None, *,
                 space: ActionSpace = ActionSpace(), state_dim: int | None = None) -> list[Problem]:
    """Problems of one stored episode row (lengths, action values against ``space``, the state
    against ``state_dim`` when the dataset has states, instruction and, with ``frame_sizes``,
    every frame's size and channels read from its header, not decoded)."""
    episode, steps = row["episode_id"], row["num_steps"]
    problems = []

    def bad(field: str, message: str) -> None:
        problems.append(Problem(file, message, episode=episode, field=field))

    if not steps or steps < 1:
        bad("num_steps", f"an episode needs at least one step, got {steps}")
        return problems
    if not str(row.get("instruction") or "").strip():
        bad("instruction", "is empty: every episode needs a language instruction")
    actions = row["actions"] or []
    if len(actions) != steps:
        bad("actions", f"{len(actions)} actions for {steps} steps")
    for i, action in enumerate(actions):
        if action is None or len(action) != space.dim:
            bad(f"actions[{i}]", f"action has length {0 if action is None else len(action)}, expected {space.dim}")
            continue
        values = np.asarray(action, np.float64)
        if not np.isfinite(values).all():
            bad(f"actions[{i}]", f"action is not finite: {values.tolist()}")
            continue
        for dim in space.binary_grippers:
            if values[dim] not in (-1.0, 1.0):
                bad(f"actions[{i}][{dim}]", f"binary gripper must be -1 (close) or +1 (open), got {values[dim]}")
    if state_dim:
        _check_states(row.get("state"), steps, state_dim, bad)
    for camera in cameras:
        frames = row.get(image_column(camera)) or []
        if len(frames) != steps:
            bad(image_column(camera), f"{len(frames)} frames for {steps} steps")
    if frame_sizes is not None:
        problems += frame_problems(row, frame_sizes, file)
    return problems


def _check_states(states, steps: int, state_dim: int, bad) -> None:
    """A dataset with states has one of ``state_dim`` finite values at every step of every episode
    (each problem reported through ``bad(field, message)``)."""
    if states is None:
        bad("state", f"is missing: the dataset's episodes have states of {state_dim} values")
        return
    if len(states) != steps:
        bad("state", f"{len(states)} states for {steps} steps")
    for i, state in enumerate(states):
        if state is None or len(state) != state_dim:
            bad(f"state[{i}]", f"state has length {0 if state is None else len(state)}, expected {state_dim}")
        elif not np.isfinite(np.asarray(state, np.float64)).all():
            bad(f"state[{i}]", f"state is not finite: {list(state)}")


def frame_problems(row: dict, frame_sizes: FrameSizes, file: str, *, decode: bool = False) -> list[Problem]:
    """Frames of ``row`` that are not RGB of their camera's ``(height, width)``; ``decode`` also
    decodes every frame (catching corrupt data past the header), otherwise only headers are read."""
    problems = []
    for camera, size in frame_sizes.items():
        for step, data in enumerate(row.get(image_column(camera)) or []):
            field = f"{image_column(camera)}[{step}]"
            try:
                with Image.open(io.BytesIO(data)) as img:
                    if decode:
                        img.load()
                    problems += image_problems(img, size, file, row["episode_id"], field)
            except Exception as err:  # PIL raises many kinds for corrupt bytes
                problems.append(Problem(file, f"image does not decode: {err}", row["episode_id"], field))
    return problems


def image_problems(img: Image.Image, size: tuple[int, int] | None, file: str, episode: int, field: str) -> list[Problem]:
    """An opened frame that is not RGB, or (``size`` given) not ``(height, width)``; reads the header only."""
    problems = []
    if img.mode != "RGB":
        problems.append(Problem(file, f"image is {img.mode}, expected RGB (3 channels)", episode, field))
    if size is not None and (img.height, img.width) != tuple(size):
        problems.append(Problem(file, f"image is {img.height}x{img.width}, metadata.json says {size[0]}x{size[1]}",
                                episode, field))
    return problems


def camera_frame_sizes(cameras: dict, names: list[str]) -> FrameSizes:
    """``(height, width)`` of each camera in ``names`` from the metadata's ``CameraInfo`` map."""
    return {name: (cameras[name].height, cameras[name].width) for name in names if name in cameras}


def row_actions(row: dict) -> np.ndarray:
    """The ``[S, D]`` float32 actions of a row that passed ``row_problems``."""
    return np.asarray(row["actions"], np.float32).reshape(row["num_steps"], -1)


def row_state(row: dict) -> np.ndarray:
    """The ``[S, state_dim]`` float32 states of a row that passed ``row_problems`` with its ``state_dim``."""
    return np.asarray(row["state"], np.float32).reshape(row["num_steps"], -1)
