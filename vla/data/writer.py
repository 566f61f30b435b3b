"""Write episodes into the Parquet format, from one process or from parallel Ray tasks.

A converter is a few lines::

    from vla.data import Episode, EpisodeWriter

    with EpisodeWriter("/data/my_set", cameras=["static", "wrist"]) as writer:
        for demo in my_demos():
            writer.write(Episode(
                instruction=demo.text,
                actions=demo.actions,                      # [S, 7], gripper -1 close / +1 open
                images={"static": demo.rgb, "wrist": demo.wrist_rgb},  # [S, H, W, 3] uint8
                state=demo.proprio,                        # optional [S, D]
            ), split="train")
    # closing writes metadata.json, with action statistics from a streaming pass
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType
from tqdm import tqdm

from vla.data.episodes import Episode, encode_image, row_problems
from vla.data.metadata import (
    ACTION_DIM,
    METADATA_FILE,
    CameraInfo,
    DataError,
    DatasetMetadata,
    ShardInfo,
    SplitInfo,
    episode_schema,
    image_column,
    load_metadata,
    open_root,
    save_metadata,
)
from vla.data.stats import compute_action_stats

DEFAULT_SHARD_BYTES = 256 << 20
ROW_GROUP_BYTES = 4 << 20  # a decode task reads the whole row group holding its episode


@dataclass
class _Shard:
    """The open shard of one split: rows are buffered and written a row group at a time."""

    writer: pq.ParquetWriter
    info: ShardInfo
    rows: list[dict] = field(default_factory=list)
    buffered_bytes: int = 0
    written_bytes: int = 0


class EpisodeWriter:
    """Writes episodes into ``root`` (local, ``s3://``, ``gs://``) as bounded Parquet shards.

    ``cameras``: the camera names, in order; every episode gives one image stream per camera.
    ``image_encoding``: "png" (lossless) or "jpeg" (``jpeg_quality``).
    ``max_shard_bytes``: a shard is closed once it holds this many bytes; an episode is never
    split across shards. ``close()`` (or leaving the ``with`` block) writes ``metadata.json``
    with per-split counts and action statistics (``compute_stats=False`` skips them, for
    partial outputs that ``merge_datasets`` combines).
    """

    def __init__(
        self,
        root: str,
        cameras: list[str],
        *,
        image_encoding: str = "png",
        jpeg_quality: int = 95,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        source: str = "custom",
        compute_stats: bool = True,
    ):
        if image_encoding not in ("png", "jpeg"):
            raise ValueError(f"image_encoding must be 'png' or 'jpeg', got {image_encoding!r}")
        if not cameras:
            raise ValueError("cameras must name at least one camera")
        self.root, self.cameras = root, list(cameras)
        self.fs, self.path = open_root(root)
        self.fs.create_dir(self.path, recursive=True)
        forget_finished(root)
        self.encoding, self.jpeg_quality = image_encoding, jpeg_quality
        self.max_shard_bytes, self.compute_stats = max_shard_bytes, compute_stats
        self.schema = episode_schema(self.cameras)
        self.meta = DatasetMetadata(cameras={}, splits={}, source=source)
        self._open: dict[str, _Shard] = {}
        self._ids: dict[str, set[int]] = {}

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            for shard in self._open.values():
                shard.writer.close()

    def write(self, episode: Episode, split: str = "train") -> int:
        """Encode and append one episode to ``split``; returns its episode id."""
        ids = self._ids.setdefault(split, set())
        episode_id = len(ids) if episode.episode_id is None else int(episode.episode_id)
        if episode_id in ids:
            raise DataError(f"{self.root}: split {split}: episode id {episode_id} written twice")
        row = self._encode(episode, episode_id)
        problems = row_problems(row, self.cameras, f"{self.root} ({split})")
        if problems:
            raise DataError("; ".join(map(str, problems)))
        ids.add(episode_id)
        shard = self._open.get(split) or self._new_shard(split)
        size = sum(map(len, (b for c in self.cameras for b in row[image_column(c)]))) + row["num_steps"] * 64
        shard.rows.append(row)
        shard.buffered_bytes += size
        shard.info.episodes += 1
        shard.info.steps += row["num_steps"]
        if shard.buffered_bytes >= ROW_GROUP_BYTES:
            self._flush(shard)
        if shard.written_bytes + shard.buffered_bytes >= self.max_shard_bytes:
            self._close_shard(split)
        return episode_id

    def close(self) -> DatasetMetadata:
        """Close every shard and write ``metadata.json``; returns the metadata."""
        for split in list(self._open):
            self._close_shard(split)
        if self.compute_stats:
            add_action_stats(self.root, self.meta)
        save_metadata(self.root, self.meta)
        return self.meta

    def _encode(self, episode: Episode, episode_id: int) -> dict:
        actions = np.asarray(episode.actions, np.float32)
        steps = len(actions)
        where = f"{self.root}: episode {episode_id}"
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
            raise DataError(f"{where}, field actions: shape {actions.shape}, expected [steps, {ACTION_DIM}]")
        row = {
            "episode_id": episode_id,
            "instruction": str(episode.instruction),
            "num_steps": steps,
            "step_ids": (np.arange(steps) if episode.step_ids is None else np.asarray(episode.step_ids)).tolist(),
            "actions": actions.tolist(),
            "state": None,
        }
        if episode.state is not None:
            state = np.asarray(episode.state, np.float32).reshape(steps, -1)
            if self.meta.state_dim not in (None, state.shape[1]):
                raise DataError(f"{where}, field state: {state.shape[1]} values, earlier episodes have "
                                f"{self.meta.state_dim}")
            self.meta.state_dim = state.shape[1]
            row["state"] = state.tolist()
        for camera in self.cameras:
            frames = episode.images.get(camera)
            if frames is None:
                raise DataError(f"{where}, field {image_column(camera)}: no images for camera {camera!r}")
            frames = np.asarray(frames)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
                raise DataError(f"{where}, field {image_column(camera)}: expected [steps, H, W, 3] uint8, "
                                f"got {frames.shape} {frames.dtype}")
            info = CameraInfo(int(frames.shape[1]), int(frames.shape[2]), self.encoding)
            known = self.meta.cameras.setdefault(camera, info)
            if known != info:
                raise DataError(f"{where}, field {image_column(camera)}: images of {info.height}x{info.width}, "
                                f"earlier episodes have {known.height}x{known.width}")
            row[image_column(camera)] = [encode_image(f, self.encoding, self.jpeg_quality) for f in frames]
        return row

    def _new_shard(self, split: str) -> _Shard:
        info = self.meta.splits.setdefault(split, SplitInfo())
        file = f"{split}/part-{len(info.shards):05d}.parquet"
        self.fs.create_dir(f"{self.path}/{split}", recursive=True)
        sink = self.fs.open_output_stream(f"{self.path}/{file}")
        writer = pq.ParquetWriter(sink, self.schema, use_dictionary=["instruction"], compression="zstd")
        shard = _Shard(writer, ShardInfo(file, 0, 0))
        info.shards.append(shard.info)
        self._open[split] = shard
        return shard

    def _flush(self, shard: _Shard) -> None:
        if shard.rows:
            shard.writer.write_table(pa.Table.from_pylist(shard.rows, schema=self.schema))
            shard.written_bytes += shard.buffered_bytes
            shard.rows, shard.buffered_bytes = [], 0

    def _close_shard(self, split: str) -> None:
        shard = self._open.pop(split)
        self._flush(shard)
        shard.writer.close()
        info = self.meta.splits[split]
        info.episodes += shard.info.episodes
        info.steps += shard.info.steps


def forget_finished(root: str) -> None:
    """A folder being (re)written is no finished dataset: remove its ``metadata.json`` first, so a
    failed conversion into an old dataset's folder never leaves the old metadata claiming new shards."""
    fs, path = open_root(root)
    if fs.get_file_info(f"{path}/{METADATA_FILE}").type != FileType.NotFound:
        fs.delete_file(f"{path}/{METADATA_FILE}")


def add_action_stats(root: str, meta: DatasetMetadata) -> None:
    """Fill ``action_stats`` of every non-empty split by the streaming pass over its shards."""
    fs, path = open_root(root)
    for name, split in meta.splits.items():
        if split.steps:
            split.action_stats = compute_action_stats(fs, [f"{path}/{s.file}" for s in split.shards])


def merge_datasets(root: str, parts: list[str]) -> DatasetMetadata:
    """Move the shards of the partial datasets ``parts`` (written with ``compute_stats=False``)
    into ``root`` under consecutive names, then write the combined ``metadata.json``."""
    fs, path = open_root(root)
    forget_finished(root)
    merged: DatasetMetadata | None = None
    for part in parts:
        meta = load_metadata(part)
        part_fs, part_path = open_root(part)
        if merged is None:
            merged = DatasetMetadata(cameras=meta.cameras, splits={}, state_dim=meta.state_dim, source=meta.source)
        elif meta.cameras and merged.cameras and meta.cameras != merged.cameras:
            raise DataError(f"{part}: cameras {meta.cameras} differ from the other parts' {merged.cameras}")
        merged.cameras = merged.cameras or meta.cameras
        merged.state_dim = merged.state_dim or meta.state_dim
        for name, split in meta.splits.items():
            target = merged.splits.setdefault(name, SplitInfo())
            fs.create_dir(f"{path}/{name}", recursive=True)
            for shard in split.shards:
                file = f"{name}/part-{len(target.shards):05d}.parquet"
                part_fs.move(f"{part_path}/{shard.file}", f"{path}/{file}")
                target.shards.append(ShardInfo(file, shard.episodes, shard.steps))
            target.episodes += split.episodes
            target.steps += split.steps
        part_fs.delete_dir(part_path)
    if merged is None:
        raise DataError(f"{root}: nothing to merge")
    add_action_stats(root, merged)
    save_metadata(root, merged)
    return merged


def write_dataset(
    root: str,
    jobs: list[Callable[[], Iterable[tuple[str, Episode]]]],
    cameras: list[str],
    *,
    parallel: bool = False,
    desc: str = "episodes",
    max_shard_bytes: int | None = None,
    **writer_args,
) -> DatasetMetadata:
    """Run converter ``jobs`` (each yields ``(split, episode)`` pairs) into the dataset ``root``.

    In process, one writer takes every job in order. With ``parallel=True`` each job is a Ray
    task writing its own partial dataset under ``<root>/_parts/``; the parts are merged at the
    end. Memory stays bounded by one episode per job plus one row group per open shard.
    ``max_shard_bytes=None`` keeps the writer's default.
    """
    writer_args["max_shard_bytes"] = max_shard_bytes or DEFAULT_SHARD_BYTES
    if not parallel:
        with EpisodeWriter(root, cameras, **writer_args) as writer, tqdm(desc=desc, unit="ep") as bar:
            for job in jobs:
                for split, episode in job():
                    writer.write(episode, split)
                    bar.update()
        return writer.meta

    import ray

    parts = [f"{root.rstrip('/')}/_parts/job-{i:05d}" for i in range(len(jobs))]
    remote = ray.remote(_write_part)
    pending = [remote.remote(part, job, cameras, writer_args) for part, job in zip(parts, jobs)]
    with tqdm(total=len(pending), desc=f"{desc} (jobs)", unit="job") as bar:
        while pending:
            done, pending = ray.wait(pending)
            ray.get(done)
            bar.update(len(done))
    meta = merge_datasets(root, parts)
    fs, path = open_root(root)
    fs.delete_dir(f"{path}/_parts")
    return meta


def _write_part(part: str, job: Callable[[], Iterable[tuple[str, Episode]]], cameras: list[str],
                writer_args: dict) -> None:
    with EpisodeWriter(part, cameras, compute_stats=False, **writer_args) as writer:
        for split, episode in job():
            writer.write(episode, split)
