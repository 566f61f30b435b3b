"""Write episodes into the Parquet format, from one process or from parallel Ray tasks.

A converter is a few lines::

    from vla.data import Episode, EpisodeWriter

    with EpisodeWriter("/data/my_set", cameras=["static", "wrist"]) as writer:
        for demo in my_demos():
            writer.write(Episode(
                instruction=demo.text,
                actions=demo.actions,                      # [S, 7]: 6 pose + gripper -1 close / +1 open
                images={"static": demo.rgb, "wrist": demo.wrist_rgb},  # [S, H, W, 3] uint8
                state=demo.proprio,                        # optional [S, D]
            ), split="train")
    # closing writes metadata.json, with action (and state) statistics from a streaming pass

The default action space is the 7-DOF arm; any other robot passes its own, e.g.
``EpisodeWriter(root, cameras, action_space=ActionSpace(dim=6, binary_grippers=()))`` for six
joint positions with no binary gripper (``vla.action_space``).

Nothing is lost when a conversion fails: on a local disk the writer fills a staging folder
beside the target (``.<name>.partial-<id>``) and swaps it in only when ``metadata.json`` is
written, so a failed or interrupted conversion leaves an old dataset at the target exactly as
it was. Object storage has no rename: there the target's ``metadata.json`` is removed first
and written last, so a failed conversion leaves no metadata claiming its shards (write to a
new prefix to keep the old dataset).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType
from tqdm import tqdm

from vla.action_space import ActionSpace
from vla.data.episodes import Episode, encode_image, row_problems
from vla.data.metadata import (
    METADATA_FILE,
    CameraInfo,
    DataError,
    DatasetMetadata,
    ShardInfo,
    SplitInfo,
    episode_schema,
    image_column,
    load_metadata,
    save_metadata,
)
from vla.data.stats import compute_stats
from vla.ray_init import start_or_join_ray
from vla.storage import filesystem, is_uri

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
    split across shards. ``action_space``: what the actions are (the 7-DOF arm by default);
    ``state_names``: the names of the state's values, when the source has them.
    ``close()`` (or leaving the ``with`` block) writes ``metadata.json``
    with per-split counts and action and state statistics (``compute_stats=False`` skips them, for
    partial outputs that ``merge_datasets`` combines) and swaps the staged dataset in;
    leaving the block with an exception discards it. ``stage=False`` writes in place.
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
        stage: bool = True,
        action_space: ActionSpace = ActionSpace(),
        state_names: list[str] | None = None,
    ):
        check_writer_args(root, cameras, image_encoding, jpeg_quality, max_shard_bytes)
        self.target, self.cameras = root, list(cameras)
        self.root = staging_folder(root) if stage and not is_uri(root) else root
        self.fs, self.path = filesystem(self.root)
        if self.root == root:
            forget_finished(root)
        self.fs.create_dir(self.path, recursive=True)
        self.encoding, self.jpeg_quality = image_encoding, jpeg_quality
        self.max_shard_bytes, self.compute_stats = max_shard_bytes, compute_stats
        self.schema = episode_schema(self.cameras)
        self.meta = DatasetMetadata(cameras={}, splits={}, action_space=action_space, source=source,
                                    state_names=list(state_names) if state_names else None)
        self._open: dict[str, _Shard] = {}
        self._ids: dict[str, set[int]] = {}

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
            return
        for shard in self._open.values():
            shard.writer.close()
        if self.root != self.target:
            self.fs.delete_dir(self.path)

    def write(self, episode: Episode, split: str = "train") -> int:
        """Encode and append one episode to ``split``; returns its episode id."""
        ids = self._ids.setdefault(split, set())
        episode_id = len(ids) if episode.episode_id is None else int(episode.episode_id)
        if episode_id in ids:
            raise DataError(f"{self.target}: split {split}: episode id {episode_id} written twice")
        row = self._encode(episode, episode_id)
        problems = row_problems(row, self.cameras, f"{self.target} ({split})", space=self.meta.action_space,
                                state_dim=self.meta.state_dim)
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
            add_stats(self.root, self.meta)
        save_metadata(self.root, self.meta)
        if self.root != self.target:
            swap_in(self.root, self.target)
        return self.meta

    def _encode(self, episode: Episode, episode_id: int) -> dict:
        actions = np.asarray(episode.actions, np.float32)
        steps = len(actions)
        where = f"{self.target}: episode {episode_id}"
        dim = self.meta.action_space.dim
        if actions.ndim != 2 or actions.shape[1] != dim:
            raise DataError(f"{where}, field actions: shape {actions.shape}, expected [steps, {dim}] "
                            f"(the writer's action space: {self.meta.action_space.describe()})")
        row = {
            "episode_id": episode_id,
            "instruction": str(episode.instruction),
            "num_steps": steps,
            "step_ids": (np.arange(steps) if episode.step_ids is None else np.asarray(episode.step_ids)).tolist(),
            "actions": actions.tolist(),
            "state": None,
        }
        if any(self._ids.values()) and (episode.state is None) != (self.meta.state_dim is None):
            raise DataError(f"{where}, field state: " + ("missing, earlier episodes have states" if episode.state is None
                                                          else "given, earlier episodes have none"))
        if episode.state is not None:
            state = np.asarray(episode.state, np.float32).reshape(steps, -1)
            if self.meta.state_dim not in (None, state.shape[1]):
                raise DataError(f"{where}, field state: {state.shape[1]} values, earlier episodes have "
                                f"{self.meta.state_dim}")
            if self.meta.state_names is not None and len(self.meta.state_names) != state.shape[1]:
                raise DataError(f"{where}, field state: {state.shape[1]} values for "
                                f"{len(self.meta.state_names)} state names")
            self.meta.state_dim = state.shape[1]
            row["state"] = state.tolist()
        extra = sorted(set(episode.images) - set(self.cameras))
        if extra:
            raise DataError(f"{where}, field images: camera(s) {', '.join(extra)} not among the writer's cameras "
                            f"({', '.join(self.cameras)})")
        for camera in self.cameras:
            frames = episode.images.get(camera)
            if frames is None:
                raise DataError(f"{where}, field {image_column(camera)}: no images for camera {camera!r}")
            frames = np.asarray(frames)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or 0 in frames.shape[1:3]:
                raise DataError(f"{where}, field {image_column(camera)}: expected [steps, H, W, 3] uint8 RGB "
                                f"with H, W >= 1, got {frames.shape} {frames.dtype}")
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


def check_writer_args(root: str, cameras: list[str], image_encoding: str, jpeg_quality: int,
                      max_shard_bytes: int) -> None:
    """Refuse bad writer arguments, naming each, before anything is written."""
    if not root:
        raise DataError("output: must name a dataset folder")
    if not cameras:
        raise DataError("cameras: must name at least one camera")
    if image_encoding not in ("png", "jpeg"):
        raise DataError(f"image_encoding: must be 'png' or 'jpeg', got {image_encoding!r}")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"jpeg_quality: must be in 1..100, got {jpeg_quality}")
    if max_shard_bytes < 1:
        raise DataError(f"max_shard_bytes: must be >= 1, got {max_shard_bytes}")
    if not is_uri(root):
        check_replaceable(root)


def check_replaceable(root: str) -> None:
    """A local target must be absent, empty, or a dataset: any other folder would be replaced whole."""
    fs, path = filesystem(root)
    info = fs.get_file_info(path)
    if info.type == FileType.NotFound:
        return
    if info.type != FileType.Directory:
        raise DataError(f"{root}: exists and is not a folder")
    if os.listdir(path) and fs.get_file_info(f"{path}/{METADATA_FILE}").type == FileType.NotFound:
        raise DataError(f"{root}: a non-empty folder without {METADATA_FILE} is not a dataset this writer "
                        "may replace; choose an empty or new folder")


def staging_folder(root: str) -> str:
    """A fresh folder beside ``root`` (same filesystem, so the final rename is atomic)."""
    _, path = filesystem(root)
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")


def swap_in(staging: str, root: str) -> None:
    """Replace ``root`` by the complete dataset in ``staging`` (two renames, then the old one goes)."""
    _, target = filesystem(root)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    old = None
    if os.path.exists(target):
        old = f"{staging}.old"
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old)


def forget_finished(root: str) -> None:
    """A folder being (re)written is no finished dataset: remove its ``metadata.json`` first, so a
    failed conversion into an old dataset's folder never leaves the old metadata claiming new shards."""
    fs, path = filesystem(root)
    if fs.get_file_info(f"{path}/{METADATA_FILE}").type != FileType.NotFound:
        fs.delete_file(f"{path}/{METADATA_FILE}")


def add_stats(root: str, meta: DatasetMetadata) -> None:
    """Fill ``action_stats`` (and ``state_stats`` when the episodes have states) of every non-empty
    split by the streaming pass over its shards."""
    fs, path = filesystem(root)
    for name, split in meta.splits.items():
        if split.steps:
            files = [f"{path}/{s.file}" for s in split.shards]
            split.action_stats = compute_stats(fs, files, "actions", meta.action_dim)
            if meta.state_dim:
                split.state_stats = compute_stats(fs, files, "state", meta.state_dim)


def merge_datasets(root: str, parts: list[str]) -> DatasetMetadata:
    """Move the shards of the partial datasets ``parts`` (written with ``compute_stats=False``)
    into ``root`` under consecutive names, then write the combined ``metadata.json``."""
    fs, path = filesystem(root)
    forget_finished(root)
    merged: DatasetMetadata | None = None
    for part in parts:
        meta = load_metadata(part)
        part_fs, part_path = filesystem(part)
        if merged is None:
            merged = DatasetMetadata(cameras=meta.cameras, splits={}, action_space=meta.action_space,
                                     state_dim=meta.state_dim, state_names=meta.state_names, source=meta.source)
        elif meta.cameras and merged.cameras and meta.cameras != merged.cameras:
            raise DataError(f"{part}: cameras {meta.cameras} differ from the other parts' {merged.cameras}")
        elif meta.state_dim and merged.state_dim and meta.state_dim != merged.state_dim:
            raise DataError(f"{part}: field state_dim: {meta.state_dim}, the other parts have {merged.state_dim}")
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
    add_stats(root, merged)
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
    check_writer_args(root, cameras, writer_args.get("image_encoding", "png"), writer_args.get("jpeg_quality", 95),
                      writer_args["max_shard_bytes"])
    if not parallel:
        with EpisodeWriter(root, cameras, **writer_args) as writer, tqdm(desc=desc, unit="ep") as bar:
            for job in jobs:
                for split, episode in job():
                    writer.write(episode, split)
                    bar.update()
        return writer.meta

    import ray

    start_or_join_ray(log_to_driver=False)  # only now, once every argument has been checked
    staging = root if is_uri(root) else staging_folder(root)
    fs, path = filesystem(staging)
    try:
        parts = [f"{staging.rstrip('/')}/_parts/job-{i:05d}" for i in range(len(jobs))]
        remote = ray.remote(_write_part)
        pending = [remote.remote(part, job, cameras, writer_args) for part, job in zip(parts, jobs)]
        with tqdm(total=len(pending), desc=f"{desc} (jobs)", unit="job") as bar:
            while pending:
                done, pending = ray.wait(pending)
                ray.get(done)
                bar.update(len(done))
        meta = merge_datasets(staging, parts)
        fs.delete_dir(f"{path}/_parts")
    except BaseException:
        if staging != root:
            shutil.rmtree(path, ignore_errors=True)
        raise
    if staging != root:
        swap_in(staging, root)
    return meta


def _write_part(part: str, job: Callable[[], Iterable[tuple[str, Episode]]], cameras: list[str],
                writer_args: dict) -> None:
    with EpisodeWriter(part, cameras, compute_stats=False, stage=False, **writer_args) as writer:
        for split, episode in job():
            writer.write(episode, split)
