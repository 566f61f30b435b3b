"""The on-disk episode format: where files live, what the columns are, what ``metadata.json`` holds.

A dataset root (local path, ``s3://`` or ``gs://``) holds::

    metadata.json                 # DatasetMetadata below
    <split>/part-00000.parquet    # one row per episode, episodes never straddle shards
    <split>/part-00001.parquet

Columns of every shard (one row = one episode of ``num_steps`` steps):

    episode_id   int64                  unique within the split
    instruction  string                 the language instruction
    num_steps    int32                  S, the length of every list below
    step_ids     list<int64>            the step index (source frame id) of each step
    actions      list<list<float32>>    S actions of ``action_dim`` values (``vla.action_space``)
    state        list<list<float32>>    S proprio states of ``state_dim`` values, or null when the source has none
    image_<cam>  list<binary>           S encoded frames (PNG or JPEG) per camera
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from vla.action_space import ActionSpace
from vla.storage import filesystem

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"


class DataError(ValueError):
    """A dataset is missing, malformed or unusable; the message names file, episode and field."""


def image_column(camera: str) -> str:
    return f"image_{camera}"


def episode_schema(cameras: list[str]) -> pa.Schema:
    steps = pa.list_(pa.list_(pa.float32()))
    return pa.schema(
        [
            pa.field("episode_id", pa.int64(), nullable=False),
            pa.field("instruction", pa.string(), nullable=False),
            pa.field("num_steps", pa.int32(), nullable=False),
            pa.field("step_ids", pa.list_(pa.int64()), nullable=False),
            pa.field("actions", steps, nullable=False),
            pa.field("state", steps),
            *(pa.field(image_column(c), pa.list_(pa.binary()), nullable=False) for c in cameras),
        ]
    )


@dataclass
class CameraInfo:
    height: int
    width: int
    encoding: str  # "png" or "jpeg"


@dataclass
class ActionStats:
    """Per-dimension statistics of a split's actions (lists of ``action_dim`` floats) or states."""

    count: int
    min: list[float]
    max: list[float]
    mean: list[float]
    std: list[float]
    q01: list[float]
    q99: list[float]


@dataclass
class ShardInfo:
    file: str  # relative to the root, e.g. "train/part-00000.parquet"
    episodes: int
    steps: int


@dataclass
class SplitInfo:
    episodes: int = 0
    steps: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    action_stats: ActionStats | None = None
    state_stats: ActionStats | None = None


@dataclass
class DatasetMetadata:
    """``metadata.json``. The action space is written as ``action_dim``, ``action_names`` and
    ``grippers``; a file written before action spaces existed (no ``grippers``) reads as the 7-DOF arm."""

    cameras: dict[str, CameraInfo]
    splits: dict[str, SplitInfo]
    action_space: ActionSpace = field(default_factory=ActionSpace)
    state_dim: int | None = None
    state_names: list[str] | None = None
    source: str = "custom"
    schema_version: int = SCHEMA_VERSION

    @property
    def action_dim(self) -> int:
        return self.action_space.dim

    def to_json(self) -> str:
        data = asdict(self)
        del data["action_space"]
        return json.dumps({**self.action_space.to_dict(), **data}, indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> DatasetMetadata:
        splits = {}
        for name, s in data["splits"].items():
            stats, state_stats = s.get("action_stats"), s.get("state_stats")
            splits[name] = SplitInfo(
                episodes=int(s["episodes"]),
                steps=int(s["steps"]),
                shards=[ShardInfo(**shard) for shard in s["shards"]],
                action_stats=ActionStats(**stats) if stats else None,
                state_stats=ActionStats(**state_stats) if state_stats else None,
            )
        return cls(
            cameras={name: CameraInfo(**c) for name, c in data["cameras"].items()},
            splits=splits,
            action_space=ActionSpace.from_dict(data),
            state_dim=data.get("state_dim"),
            state_names=data.get("state_names"),
            source=data.get("source", "custom"),
            schema_version=int(data["schema_version"]),
        )


def load_metadata(root: str) -> DatasetMetadata:
    """Read ``<root>/metadata.json``; a missing or malformed file raises ``DataError`` naming it."""
    fs, path = filesystem(root)
    where = f"{root.rstrip('/')}/{METADATA_FILE}"
    try:
        with fs.open_input_stream(f"{path}/{METADATA_FILE}") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise DataError(f"{where}: not found (is {root} a dataset root written by EpisodeWriter?)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{where}: cannot be read: {err}") from None
    try:
        meta = DatasetMetadata.from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where}: malformed metadata ({type(err).__name__}: {err})") from None
    if meta.schema_version > SCHEMA_VERSION:
        raise DataError(f"{where}: schema version {meta.schema_version} is newer than this code ({SCHEMA_VERSION})")
    return meta


def save_metadata(root: str, meta: DatasetMetadata) -> None:
    fs, path = filesystem(root)
    with fs.open_output_stream(f"{path}/{METADATA_FILE}") as f:
        f.write(meta.to_json().encode())
