"""CALVIN (public layout) -> Parquet episodes: one episode per language-annotated segment.

Layout read::

    <calvin>/training/episode_0358656.npz ...          # one frame per file, ids with gaps
    <calvin>/training/lang_annotations/auto_lang_ann.npy
    <calvin>/validation/...                            # same layout

``auto_lang_ann.npy`` is a pickled dict: ``language.ann`` (instructions) and ``info.indx``
(inclusive ``(start, end)`` frame ids). Each segment becomes one episode: ``rel_actions`` as
the action (any float dtype, stored float32), ``rgb_static`` / ``rgb_gripper`` as the
``static`` / ``wrist`` cameras, ``robot_obs`` as the state, the frame ids as ``step_ids``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from vla.data.episodes import Episode
from vla.data.metadata import DataError, DatasetMetadata
from vla.data.writer import write_dataset

SPLITS = {"training": "train", "validation": "val"}
CAMERAS = {"static": "rgb_static", "wrist": "rgb_gripper"}


def read_annotations(split_dir: Path) -> list[tuple[str, int, int]]:
    """``(instruction, first frame id, last frame id)`` of every annotated segment of a split."""
    file = split_dir / "lang_annotations" / "auto_lang_ann.npy"
    if not file.is_file():
        raise DataError(f"{file}: not found (CALVIN keeps the language annotations there)")
    try:
        ann = np.load(file, allow_pickle=True)
        ann = ann.item() if isinstance(ann, np.ndarray) else ann  # np.save wraps the dict in a 0-d array
        texts, spans = ann["language"]["ann"], ann["info"]["indx"]
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise DataError(f"{file}: not a CALVIN annotation file ({type(err).__name__}: {err})") from None
    if len(texts) != len(spans):
        raise DataError(f"{file}: {len(texts)} instructions but {len(spans)} segments")
    return [(str(t), int(s), int(e)) for t, (s, e) in zip(texts, spans)]


def read_segment(split_dir: Path, instruction: str, start: int, end: int, episode_id: int) -> Episode:
    """Load the frames ``start..end`` (inclusive) of a segment as an episode."""
    actions, states, images = [], [], {camera: [] for camera in CAMERAS}
    for frame in range(start, end + 1):
        file = split_dir / f"episode_{frame:07d}.npz"
        try:
            with np.load(file) as data:
                actions.append(np.asarray(data["rel_actions"], np.float32))
                states.append(np.asarray(data["robot_obs"], np.float32))
                for camera, key in CAMERAS.items():
                    images[camera].append(np.asarray(data[key], np.uint8))
        except FileNotFoundError:
            raise DataError(f"{file}: frame {frame} of annotated segment {episode_id} "
                            f"({start}..{end}, {instruction!r}) is missing") from None
        except KeyError as err:
            raise DataError(f"{file}: episode {episode_id}, field {err.args[0]}: missing from the frame") from None
    return Episode(
        instruction=instruction,
        actions=np.stack(actions),
        images={camera: np.stack(frames) for camera, frames in images.items()},
        state=np.stack(states),
        step_ids=np.arange(start, end + 1),
        episode_id=episode_id,
    )


def _segments(jobs: list[tuple[str, str, str, int, int, int]]) -> Iterator[tuple[str, Episode]]:
    for split_dir, split, instruction, start, end, episode_id in jobs:
        yield split, read_segment(Path(split_dir), instruction, start, end, episode_id)


def convert_calvin(source: str, root: str, *, parallel: int = 0, image_encoding: str = "png",
                   max_shard_bytes: int | None = None) -> DatasetMetadata:
    """Convert the ``training`` and ``validation`` splits found under ``source`` into ``root``
    (splits ``train`` and ``val``); ``parallel > 1`` spreads segments over that many Ray tasks."""
    if parallel < 0:
        raise DataError(f"parallel: must be >= 0, got {parallel}")
    if not Path(source).is_dir():
        raise DataError(f"{source}: not a folder (expected a CALVIN folder holding training/ and/or validation/)")
    work = []
    for folder, split in SPLITS.items():
        split_dir = Path(source) / folder
        if split_dir.is_dir():
            work += [(str(split_dir), split, text, s, e, i) for i, (text, s, e) in enumerate(read_annotations(split_dir))]
    if not work:
        raise DataError(f"{source}: no CALVIN split found (expected training/ and/or validation/ folders)")
    jobs_n = max(parallel, 1)
    jobs = [partial(_segments, work[i::jobs_n]) for i in range(jobs_n)]
    return write_dataset(root, jobs, list(CAMERAS), parallel=parallel > 1, source="calvin", desc="calvin",
                         image_encoding=image_encoding, max_shard_bytes=max_shard_bytes)
