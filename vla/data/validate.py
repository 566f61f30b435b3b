"""``validate_dataset(root)``: check a whole dataset and report every problem, not just the first.

Checked: metadata.json (present, parseable, counts, statistics finite), every shard (listed
and present, readable, columns and types, unlisted extra shards), every episode (step
counts, action length, finite actions, binary grippers in {-1, +1}, states of the dataset's
length, one frame per step and camera)
and every frame (RGB, of the size in the metadata, and with ``decode_images`` decodes): the
checks of ``vla.data.episodes`` that the writer and training apply too. Reads one row group at a time.
"""

from __future__ import annotations

import math

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from vla.data.episodes import Problem, camera_frame_sizes, check_schema, frame_problems, row_problems
from vla.data.metadata import METADATA_FILE, DataError, DatasetMetadata, load_metadata
from vla.data.parquet_source import episode_columns
from vla.storage import filesystem


def validate_dataset(root: str, *, decode_images: bool = True) -> list[Problem]:
    """Every problem of the dataset at ``root`` (an empty list: the dataset is usable)."""
    try:
        meta = load_metadata(root)
    except DataError as err:
        return [Problem(METADATA_FILE, str(err))]
    problems = _metadata_problems(meta)
    fs, path = filesystem(root)
    for name, split in meta.splits.items():
        listed = {s.file for s in split.shards}
        on_disk = pafs.FileSelector(f"{path}/{name}", allow_not_found=True)
        for info in fs.get_file_info(on_disk):
            file = f"{name}/{info.base_name}"
            if info.base_name.endswith(".parquet") and file not in listed:
                problems.append(Problem(file, "shard is not listed in metadata.json (its episodes are never read)"))
        for shard in tqdm(split.shards, desc=f"validate {name}", unit="shard", leave=False):
            found, shard_problems = _shard_problems(fs, path, shard.file, meta, decode_images)
            problems += shard_problems
            if found is not None and found != shard.episodes:
                problems.append(Problem(shard.file, f"holds {found} episodes, metadata.json says {shard.episodes}"))
    return problems


def _metadata_problems(meta: DatasetMetadata) -> list[Problem]:
    problems = []
    if not meta.splits or all(s.episodes == 0 for s in meta.splits.values()):
        problems.append(Problem(METADATA_FILE, "the dataset is empty (no episodes in any split)"))
    for name, split in meta.splits.items():
        if split.episodes != sum(s.episodes for s in split.shards):
            problems.append(Problem(METADATA_FILE, f"split {name}: {split.episodes} episodes but its shards "
                                    f"list {sum(s.episodes for s in split.shards)}", field="episodes"))
        stats = split.action_stats
        if split.episodes and stats is None:
            problems.append(Problem(METADATA_FILE, f"split {name} has no action statistics", field="action_stats"))
        elif stats is not None:
            values = [v for key in ("min", "max", "mean", "std", "q01", "q99") for v in getattr(stats, key)]
            if not all(math.isfinite(v) for v in values):
                problems.append(Problem(METADATA_FILE, f"split {name}: action statistics are not finite",
                                        field="action_stats"))
    return problems


def _shard_problems(fs, path: str, file: str, meta: DatasetMetadata, decode: bool) -> tuple[int | None, list[Problem]]:
    cameras = list(meta.cameras)
    try:
        handle = fs.open_input_file(f"{path}/{file}")
        parquet = pq.ParquetFile(handle)
    except FileNotFoundError:
        return None, [Problem(file, "shard listed in metadata.json is missing")]
    except (OSError, ValueError) as err:
        return None, [Problem(file, f"shard cannot be read: {err}")]
    with handle:
        problems = check_schema(parquet.schema_arrow, cameras, file)
        problems += [Problem(file, "column of a camera that metadata.json does not list", field=name)
                     for name in parquet.schema_arrow.names
                     if name.startswith("image_") and name[len("image_"):] not in cameras]
        if problems:
            return parquet.metadata.num_rows, problems
        episodes = 0
        for group in range(parquet.num_row_groups):
            try:
                columns = episode_columns(cameras, state=bool(meta.state_dim))
                rows = parquet.read_row_group(group, columns=columns).to_pylist()
            except (OSError, ValueError) as err:
                problems.append(Problem(file, f"row group {group} cannot be read: {err}"))
                continue
            for row in rows:
                episodes += 1
                problems += row_problems(row, cameras, file, space=meta.action_space, state_dim=meta.state_dim)
                problems += frame_problems(row, camera_frame_sizes(meta.cameras, cameras), file, decode=decode)
    return episodes, problems
