"""LeRobot datasets (github.com/huggingface/lerobot, a local folder) -> Parquet episodes.

Two layouts are read, told apart by ``codebase_version`` in ``meta/info.json``.

v2.x (one file per episode)::

    meta/info.json        codebase_version "v2.0"/"v2.1", fps, chunks_size, features, splits,
                          data_path  "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
                          video_path "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
    meta/episodes.jsonl   {"episode_index", "tasks", "length"} per line
    meta/tasks.jsonl      {"task_index", "task"} per line

``episode_chunk`` is ``episode_index // chunks_size``; an episode's video starts at time 0.

v3.0 (many episodes per file)::

    meta/info.json        codebase_version "v3.0", fps, features, splits,
                          data_path  "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
                          video_path "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    meta/tasks.parquet    column task_index; the task string is the pandas index ("task", or unnamed)
    meta/episodes/chunk-*/file-*.parquet   one row per episode: episode_index, length,
                          data/chunk_index, data/file_index, and per video key
                          videos/<key>/chunk_index, videos/<key>/file_index,
                          videos/<key>/from_timestamp, videos/<key>/to_timestamp

An episode's rows are those of its data file with its ``episode_index``; its frames are those of
the video file between ``from_timestamp`` and ``to_timestamp`` (the names LeRobot's own
``LeRobotDatasetMetadata.get_data_file_path`` / ``get_video_file_path`` and ``_query_videos`` use).

Per frame the data parquet gives ``episode_index``, ``frame_index`` (kept as ``step_ids``),
``timestamp`` (seconds from the episode start), ``task_index`` (the instruction: the task of the
episode's first frame), the action and state features, and the ``dtype: "image"`` features as
structs ``{bytes, path}`` (the embedded bytes are decoded). ``dtype: "video"`` features are
decoded with PyAV (``pip install vla[lerobot]``): step ``i`` takes the frame at
``from_timestamp + timestamp[i]`` (within half a frame), and an episode whose video holds another
number of frames than it has rows is an error. Frames keep their size (the pipeline resizes).

Mapping (arguments of ``convert_lerobot``, flags of ``prepare_data.py lerobot``):

- ``cameras``: our camera name -> LeRobot feature; default: the first two image/video features
  in ``info.json`` order, as ``static`` and ``wrist`` (one feature: ``static`` only).
- ``action_key`` (default ``action``): any 1-D shape; its ``names`` in ``info.json`` become the
  action space's names.
- ``state_key``: default ``observation.state`` when the dataset has it (any 1-D shape, names kept).
- ``grippers``: ``INDEX:CONVENTION`` for each action dimension that is a gripper
  (``vla.action_space``): a binary convention maps it to our -1 close / +1 open, ``continuous``
  only names it. Without one, no dimension is a gripper (an SO-100's ``gripper.pos`` is a joint).
- Splits: ``val_episodes`` (the last K episodes by index) if given; else the episodes that
  ``info.json`` ``splits`` put in a ``val``, ``validation`` or ``test`` range ("start:end"); else
  the last ``round(val_fraction * episodes)``. Every other episode goes to ``train``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vla.action_space import ActionSpace, GripperError, action_space_of, declared_grippers, map_grippers
from vla.data.episodes import Episode, decode_image
from vla.data.metadata import DataError, DatasetMetadata
from vla.data.writer import write_dataset

log = logging.getLogger(__name__)

INFO_FILE = "meta/info.json"
DEFAULT_CAMERAS = ("static", "wrist")
DEFAULT_STATE_KEY = "observation.state"
VAL_SPLIT_NAMES = ("val", "validation", "test")


@dataclass(frozen=True)
class FeatureMap:
    """Which LeRobot features become which fields of an episode."""

    cameras: dict[str, str]  # our camera name -> LeRobot feature key
    videos: frozenset[str]  # the mapped camera features stored as video
    action: str
    state: str | None
    grippers: dict[int, str]  # action dimension -> gripper convention (``vla.action_space``)
    action_space: ActionSpace
    state_dim: int | None = None
    state_names: list[str] | None = None


@dataclass(frozen=True)
class LeRobotSource:
    """What every episode read needs: the dataset's fps, tasks and feature map."""

    fps: float
    tasks: dict[int, str]
    features: FeatureMap


@dataclass(frozen=True)
class VideoSegment:
    file: Path
    start: float  # seconds into the file where the episode begins (v3 from_timestamp)
    end: float | None  # where it ends (v3 to_timestamp); None: the end of the file (v2)


@dataclass(frozen=True)
class EpisodeRef:
    """Where one LeRobot episode lives."""

    index: int
    length: int
    data_file: Path
    videos: dict[str, VideoSegment]  # LeRobot video key -> segment


def load_info(root: Path) -> tuple[dict, int]:
    """``meta/info.json`` and the layout version it declares (2 or 3)."""
    file = root / INFO_FILE
    if not file.is_file():
        raise DataError(f"{file}: not found (a LeRobot dataset keeps its metadata there)")
    try:
        info = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{file}: not valid JSON ({err})") from None
    version = str(info.get("codebase_version"))
    if re.fullmatch(r"v2\.\d+", version):
        return info, 2
    if version == "v3.0":
        return info, 3
    raise DataError(f"{file}: field codebase_version: {version!r} is not a layout this importer reads "
                    f"(v2.x or v3.0)")


def feature_names(feature: dict) -> list[str] | None:
    """A feature's per-value ``names`` in ``info.json``: a list, or a mapping holding one list
    (``{"motors": [...]}`` in older datasets); None when absent."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    return [str(n) for n in names] if isinstance(names, list) else None


def vector_length(features: dict, key: str, info_file: Path) -> int:
    """The length of a 1-D numeric feature (``shape: [D]``)."""
    shape = list(features[key].get("shape", []))
    if len(shape) != 1 or not isinstance(shape[0], int) or shape[0] < 1:
        raise DataError(f"{info_file}: feature {key}: shape {shape}, expected one dimension [D]")
    return shape[0]


def map_features(info: dict, info_file: Path, *, cameras: dict[str, str] | None, action_key: str,
                 state_key: str | None, grippers: list[str]) -> FeatureMap:
    """Check the requested features against ``info.json`` and resolve the defaults."""
    features = info.get("features") or {}
    visual = [key for key, ft in features.items() if ft.get("dtype") in ("image", "video")]
    if cameras is None:
        cameras = dict(zip(DEFAULT_CAMERAS, visual))
    if not cameras:
        raise DataError(f"{info_file}: field features: no image or video feature to use as a camera")
    for name, key in cameras.items():
        if key not in visual:
            raise DataError(f"{info_file}: field features: camera {name!r} names {key!r}, which is not an image "
                            f"or video feature (those are {visual})")
    if action_key not in features:
        raise DataError(f"{info_file}: field features: no action feature {action_key!r} (features: {list(features)})")
    action_dim = vector_length(features, action_key, info_file)
    try:
        declared = declared_grippers(list(grippers), action_dim)
    except GripperError as err:
        raise DataError(f"{info_file}: feature {action_key}: {err}") from None
    space = action_space_of(action_dim, feature_names(features[action_key]), declared)
    if state_key is not None and state_key not in features:
        if state_key != DEFAULT_STATE_KEY:
            raise DataError(f"{info_file}: field features: no state feature {state_key!r}")
        state_key = None
    state_dim = vector_length(features, state_key, info_file) if state_key else None
    state_names = feature_names(features[state_key]) if state_key else None
    videos = frozenset(key for key in cameras.values() if features[key]["dtype"] == "video")
    return FeatureMap(dict(cameras), videos, action_key, state_key, declared, space, state_dim,
                      state_names if state_names and len(state_names) == state_dim else None)


def read_tasks(root: Path, version: int) -> dict[int, str]:
    """``task_index -> task`` from ``meta/tasks.jsonl`` (v2) or ``meta/tasks.parquet`` (v3)."""
    if version == 2:
        rows = _read_jsonl(root / "meta/tasks.jsonl", ("task_index", "task"))
        return {int(row["task_index"]): str(row["task"]) for row in rows}
    table = _read_parquet(root / "meta/tasks.parquet")
    index = [c for c in (table.schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
    text = "task" if "task" in table.column_names else next(iter(index), None)
    if text is None or "task_index" not in table.column_names:
        raise DataError(f"{root / 'meta/tasks.parquet'}: field task / task_index: expected a task_index column "
                        f"indexed by the task string")
    return dict(zip(map(int, table.column("task_index").to_pylist()), map(str, table.column(text).to_pylist())))


def list_episodes(root: Path, info: dict, version: int, features: FeatureMap) -> list[EpisodeRef]:
    """Every episode in index order, with its data file and video segments (checked to exist)."""
    episodes = _episodes_v2(root, info, features) if version == 2 else _episodes_v3(root, info, features)
    for episode in episodes:
        _require(episode.data_file, f"data file of episode {episode.index}")
        for key, segment in episode.videos.items():
            _require(segment.file, f"video of episode {episode.index}, feature {key}")
    return sorted(episodes, key=lambda e: e.index)


def _episodes_v2(root: Path, info: dict, features: FeatureMap) -> list[EpisodeRef]:
    chunks_size = _info_field(info, root, "chunks_size")
    episodes = []
    for row in _read_jsonl(root / "meta/episodes.jsonl", ("episode_index", "length")):
        index = int(row["episode_index"])
        chunk = index // chunks_size
        data_file = root / _template(info, root, "data_path", episode_chunk=chunk, episode_index=index)
        videos = {key: VideoSegment(root / _template(info, root, "video_path", episode_chunk=chunk,
                                                     episode_index=index, video_key=key), 0.0, None)
                  for key in features.videos}
        episodes.append(EpisodeRef(index, int(row["length"]), data_file, videos))
    return episodes


def _episodes_v3(root: Path, info: dict, features: FeatureMap) -> list[EpisodeRef]:
    files = sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DataError(f"{root / 'meta/episodes'}: no chunk-*/file-*.parquet episode tables")
    columns = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    for key in sorted(features.videos):
        columns += [f"videos/{key}/{name}" for name in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    episodes = []
    for file in files:
        for row in _read_parquet(file, columns).to_pylist():
            data_file = root / _template(info, root, "data_path", chunk_index=row["data/chunk_index"],
                                         file_index=row["data/file_index"])
            videos = {}
            for key in features.videos:
                video_file = _template(info, root, "video_path", video_key=key,
                                       chunk_index=row[f"videos/{key}/chunk_index"],
                                       file_index=row[f"videos/{key}/file_index"])
                videos[key] = VideoSegment(root / video_file, float(row[f"videos/{key}/from_timestamp"]),
                                           float(row[f"videos/{key}/to_timestamp"]))
            episodes.append(EpisodeRef(int(row["episode_index"]), int(row["length"]), data_file, videos))
    return episodes


def assign_splits(info: dict, info_file: Path, indices: list[int], *, val_episodes: int | None,
                  val_fraction: float) -> dict[int, str]:
    """``episode index -> "train" | "val"`` by the rule of the module docstring."""
    if val_episodes is not None and not 0 <= val_episodes <= len(indices):
        raise ValueError(f"val_episodes must be in [0, {len(indices)}] (the episodes), got {val_episodes}")
    if not 0 <= val_fraction <= 1:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    named = _val_ranges(info, info_file) if val_episodes is None else None
    if named is not None:
        val = named & set(indices)
    else:
        count = round(val_fraction * len(indices)) if val_episodes is None else val_episodes
        val = set(indices[len(indices) - count:])
    return {index: "val" if index in val else "train" for index in indices}


def _val_ranges(info: dict, info_file: Path) -> set[int] | None:
    """The episodes ``info.json`` ``splits`` put in val/validation/test ranges; None when it names none."""
    ranges = {name: span for name, span in (info.get("splits") or {}).items() if name in VAL_SPLIT_NAMES}
    if not ranges:
        return None
    val = set()
    for name, span in ranges.items():
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(span))
        if match is None:
            raise DataError(f"{info_file}: field splits.{name}: {span!r} is not a 'start:end' episode range")
        val |= set(range(int(match[1]), int(match[2])))
    return val


def read_data_file(source: LeRobotSource, file: Path, episode: int | None = None) -> pa.Table:
    """The columns ``read_episode`` needs from one data file (v2: one episode, v3: many), only
    episode ``episode``'s rows when given (row groups whose statistics exclude it are skipped)."""
    fmap = source.features
    image_keys = [key for key in fmap.cameras.values() if key not in fmap.videos]
    columns = ["episode_index", "frame_index", "timestamp", "task_index", fmap.action,
               *([fmap.state] if fmap.state else []), *image_keys]
    return _read_parquet(file, columns, filters=None if episode is None else [("episode_index", "=", episode)])


def read_episode(source: LeRobotSource, ref: EpisodeRef, data: pa.Table) -> Episode:
    """One LeRobot episode as an ``Episode`` (actions mapped, frames decoded at their own size),
    from the table ``read_data_file`` gave for its data file."""
    fmap = source.features
    where = f"{ref.data_file}: episode {ref.index}"
    table = data.filter(pc.field("episode_index") == ref.index)
    if table.num_rows != ref.length:
        raise DataError(f"{where}: {table.num_rows} rows, but the episode metadata says length {ref.length}")
    if table.num_rows == 0:
        raise DataError(f"{where}: the episode has no rows")
    actions = _float_column(table, fmap.action, where)
    if actions.shape[1] != fmap.action_space.dim:
        raise DataError(f"{where}, feature {fmap.action}: shape {list(actions.shape)}, "
                        f"expected [steps, {fmap.action_space.dim}] (meta/info.json)")
    try:
        map_grippers(actions, fmap.grippers)
    except GripperError as err:
        raise DataError(f"{where}, feature {fmap.action}: gripper {err}; name the source's convention "
                        f"with --gripper INDEX:CONVENTION") from None
    state = _float_column(table, fmap.state, where) if fmap.state else None
    if state is not None and state.shape[1] != fmap.state_dim:
        raise DataError(f"{where}, feature {fmap.state}: shape {list(state.shape)}, "
                        f"expected [steps, {fmap.state_dim}] (meta/info.json)")
    task = int(table.column("task_index")[0].as_py())
    if task not in source.tasks:
        raise DataError(f"{where}, field task_index: task {task} is not in the dataset's tasks")
    timestamps = np.asarray(table.column("timestamp").to_pylist(), np.float64)
    images = {}
    for name, key in fmap.cameras.items():
        if key in fmap.videos:
            images[name] = read_video(ref.videos[key], timestamps, source.fps, f"episode {ref.index}, feature {key}",
                                      ref.data_file)
        else:
            images[name] = _image_column(table, key, where)
    return Episode(
        instruction=source.tasks[task],
        actions=actions,
        images=images,
        state=state,
        step_ids=np.asarray(table.column("frame_index").to_pylist(), np.int64),
        episode_id=ref.index,
    )


def read_video(segment: VideoSegment, timestamps: np.ndarray, fps: float, what: str, data_file: Path) -> np.ndarray:
    """The ``[S, H, W, 3]`` uint8 frames of one episode's video segment, one per timestamp."""
    av = _import_av()
    half = 0.5 / fps
    frames, times = [], []
    try:
        with av.open(str(segment.file)) as container:
            stream = container.streams.video[0]
            if segment.start > half:
                container.seek(int((segment.start - half) / stream.time_base), stream=stream)
            for frame in container.decode(stream):
                if frame.time < segment.start - half:
                    continue
                if segment.end is not None and frame.time >= segment.end - half:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(frame.time)
    except av.FFmpegError as err:
        raise DataError(f"{segment.file}: {what}: cannot decode the video ({err})") from None
    span = f"{segment.start:.3f}s to {'the end' if segment.end is None else f'{segment.end:.3f}s'}"
    if len(frames) != len(timestamps):
        raise DataError(f"{segment.file}: {what}: {len(frames)} video frames from {span}, but {data_file} has "
                        f"{len(timestamps)} steps (episode length mismatch)")
    offset = np.abs(np.asarray(times) - (segment.start + timestamps))
    if (offset > half).any():
        step = int(np.argmax(offset > half))
        raise DataError(f"{segment.file}: {what}: no frame at step {step}'s timestamp {timestamps[step]:.3f}s "
                        f"(nearest is {offset[step]:.3f}s away)")
    return np.stack(frames)


def _episodes(source: LeRobotSource, work: list[tuple[str, EpisodeRef]]) -> Iterator[tuple[str, Episode]]:
    """Read each data file once: in v3 one file holds many consecutive episodes."""
    data, data_file = None, None
    for split, ref in work:
        if ref.data_file != data_file:
            data, data_file = read_data_file(source, ref.data_file), ref.data_file
        yield split, read_episode(source, ref, data)


def convert_lerobot(
    source: str,
    root: str,
    *,
    cameras: dict[str, str] | None = None,
    action_key: str = "action",
    state_key: str | None = DEFAULT_STATE_KEY,
    grippers: list[str] = (),
    val_episodes: int | None = None,
    val_fraction: float = 0.1,
    parallel: int = 0,
    image_encoding: str = "png",
    max_shard_bytes: int | None = None,
) -> DatasetMetadata:
    """Convert the LeRobot dataset folder ``source`` into ``root`` (splits ``train`` and ``val``).

    Everything in the metadata is checked (features, tasks, that every data and video file
    exists) before the first episode is read; ``parallel > 1`` spreads episodes over that many
    Ray tasks. See the module docstring for the mapping and split rules.
    """
    folder = Path(source)
    info, version = load_info(folder)
    features = map_features(info, folder / INFO_FILE, cameras=cameras, action_key=action_key, state_key=state_key,
                            grippers=list(grippers))
    if features.videos:
        _import_av()
    episodes = list_episodes(folder, info, version, features)
    if not episodes:
        raise DataError(f"{folder}: the dataset lists no episodes")
    splits = assign_splits(info, folder / INFO_FILE, [e.index for e in episodes], val_episodes=val_episodes,
                           val_fraction=val_fraction)
    lerobot = LeRobotSource(float(_info_field(info, folder, "fps")), read_tasks(folder, version),
                            features)
    work = [(splits[e.index], e) for e in episodes]
    log.info("%s: LeRobot v%d, %d episodes (%d val), cameras %s, actions: %s, state: %s", folder, version,
             len(work), sum(split == "val" for split, _ in work), features.cameras, features.action_space.describe(),
             features.state_dim or "none")
    jobs_n = max(parallel, 1)
    per_job = -(-len(work) // jobs_n)  # contiguous runs of episodes, so a job reads a data file once
    jobs = [partial(_episodes, lerobot, work[i * per_job:(i + 1) * per_job]) for i in range(jobs_n)]
    return write_dataset(root, jobs, list(features.cameras), parallel=parallel > 1, source="lerobot",
                         desc="lerobot", image_encoding=image_encoding, max_shard_bytes=max_shard_bytes,
                         action_space=features.action_space, state_names=features.state_names)


def _import_av():
    try:
        import av
    except ImportError:
        raise DataError("this LeRobot dataset stores cameras as video, and decoding them needs PyAV: "
                        "pip install vla[lerobot] (in a checkout: pip install -e '.[lerobot]')") from None
    return av


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: {what} is missing")


def _info_field(info: dict, root: Path, name: str):
    if name not in info:
        raise DataError(f"{root / INFO_FILE}: field {name} is missing")
    return info[name]


def _template(info: dict, root: Path, name: str, **values) -> str:
    template = _info_field(info, root, name)
    try:
        return str(template).format(**values)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(f"{root / INFO_FILE}: field {name}: cannot fill {template!r} ({err!r})") from None


def _read_jsonl(file: Path, fields: tuple[str, ...]) -> list[dict]:
    """The JSON objects of ``file``, one per line, each checked to hold ``fields``."""
    if not file.is_file():
        raise DataError(f"{file}: not found")
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{file}: line {number}: not valid JSON ({err})") from None
            missing = [name for name in fields if name not in row]
            if missing:
                raise DataError(f"{file}: line {number}, field {missing[0]}: missing")
            rows.append(row)
    return rows


def _read_parquet(file: Path, columns: list[str] | None = None, filters=None) -> pa.Table:
    if not file.is_file():
        raise DataError(f"{file}: not found")
    if columns is not None:
        names = pq.read_schema(file).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{file}: field {missing[0]}: column is missing")
    try:
        return pq.read_table(file, columns=columns, filters=filters)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{file}: cannot be read ({err})") from None


def _float_column(table: pa.Table, key: str, where: str) -> np.ndarray:
    """A numeric feature column as ``[rows, values]`` float32."""
    try:
        values = np.asarray(table.column(key).to_pylist(), np.float32)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}, feature {key}: not a fixed-length list of numbers ({err})") from None
    return values.reshape(len(values), -1)


def _image_column(table: pa.Table, key: str, where: str) -> np.ndarray:
    """An ``image`` feature (structs with embedded ``bytes``) as ``[rows, H, W, 3]`` uint8."""
    frames = []
    for step, item in enumerate(table.column(key).to_pylist()):
        data = (item or {}).get("bytes")
        if data is None:
            raise DataError(f"{where}, feature {key}: step {step} has no embedded image bytes")
        try:
            frames.append(decode_image(data))
        except OSError as err:
            raise DataError(f"{where}, feature {key}: step {step} does not decode ({err})") from None
    return np.stack(frames)
