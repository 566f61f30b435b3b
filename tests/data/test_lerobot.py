"""LeRobot (v2.1 and v3.0 layouts) -> Parquet: episodes, instructions, actions, state and frames
survive; splits follow the documented rule; bad input names file and field."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla.action_space import ActionSpace, gripper_to_pm1
from vla.data import DataError, load_metadata, validate_dataset
from vla.data.converters.lerobot import assign_splits, convert_lerobot
from vla.data.episodes import decode_image, encode_image

ROOT = Path(__file__).resolve().parents[2]
FPS = 10
TASKS = ["pick up the red block", "open the drawer", "push the button"]
# (task index, steps) per episode
EPISODES = [(0, 6), (1, 8), (0, 5), (2, 7), (1, 9)]
CAMERAS = {"observation.images.top": (32, 32), "observation.images.wrist": (32, 24)}  # key -> (height, width)
VIDEO_TOLERANCE = 4.0  # mean absolute error per pixel after an mpeg4 round trip (consecutive steps differ by ~10)


@dataclass(frozen=True)
class Layout:
    """What a written LeRobot dataset holds: the default is a 7-value action and a 4-value state
    (no names), two small cameras in mpeg4; ``SO100`` in test_any_robot is LeRobot's SO-100 shape."""

    action_dim: int = 7
    state_dim: int = 4
    action_names: tuple[str, ...] | None = None
    state_names: tuple[str, ...] | None = None
    cameras: tuple[tuple[str, tuple[int, int]], ...] = tuple(CAMERAS.items())
    codec: str = "mpeg4"


@dataclass
class SourceEpisode:
    task: str
    actions: np.ndarray
    state: np.ndarray
    frames: dict[str, np.ndarray]  # LeRobot camera key -> [S, H, W, 3]


def frame(episode: int, step: int, height: int, width: int) -> np.ndarray:
    """A smooth image (mpeg4 keeps it well) that differs visibly from step to step."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 10 * step + 2 * x
    image[..., 1] = 200 - 12 * step - 10 * episode
    image[..., 2] = 3 * y + 20 * episode
    return image


def source_episodes(gripper_fraction: bool, layout: Layout) -> list[SourceEpisode]:
    rng = np.random.default_rng(0)
    episodes = []
    for index, (task, steps) in enumerate(EPISODES):
        actions = rng.uniform(-1, 1, (steps, layout.action_dim)).astype(np.float32)
        if layout.action_dim == 7:
            actions[:, 6] = rng.uniform(0, 1, steps) if gripper_fraction else rng.choice([-1.0, 1.0], steps)
        frames = {key: np.stack([frame(index, s, h, w) for s in range(steps)]) for key, (h, w) in layout.cameras}
        state = rng.normal(size=(steps, layout.state_dim)).astype(np.float32)
        episodes.append(SourceEpisode(TASKS[task], actions, state, frames))
    return episodes


def write_video(path: Path, frames: np.ndarray, codec: str = "mpeg4") -> None:
    """An mp4 of ``frames``. SVT-AV1 (``libsvtav1``) run as root moves the calling thread to
    SCHED_FIFO 99 and leaves it there; every process started from it afterwards (the suite's gloo
    ranks) would then spin at real-time priority and starve the machine: the policy is restored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    policy = (os.sched_getscheduler(0), os.sched_getparam(0)) if hasattr(os, "sched_getscheduler") else None  # Linux
    try:
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=FPS)
            stream.height, stream.width, stream.pix_fmt, stream.bit_rate = *frames.shape[1:3], "yuv420p", 8_000_000
            for pts, image in enumerate(frames):
                video_frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                video_frame.pts = pts
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode())
    finally:
        if policy is not None:
            os.sched_setscheduler(0, *policy)


def data_table(episodes: list[SourceEpisode], indices: list[int], video: bool, layout: Layout = Layout()) -> pa.Table:
    """LeRobot frame rows of the episodes ``indices`` (images embedded as ``{bytes, path}`` structs)."""
    rows, first = [], sum(len(e.actions) for e in episodes[:indices[0]])
    for index in indices:
        episode = episodes[index]
        for step in range(len(episode.actions)):
            row = {"action": episode.actions[step].tolist(), "observation.state": episode.state[step].tolist(),
                   "timestamp": np.float32(step / FPS).item(), "frame_index": step, "episode_index": index,
                   "index": first + len(rows), "task_index": TASKS.index(episode.task)}
            if not video:
                for key, frames in episode.frames.items():
                    row[key] = {"bytes": encode_image(frames[step], "png"), "path": f"frame_{step:06d}.png"}
            rows.append(row)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("action", pa.list_(pa.float32(), layout.action_dim)),
                        ("observation.state", pa.list_(pa.float32(), layout.state_dim)),
                        ("timestamp", pa.float32()), ("frame_index", pa.int64()), ("episode_index", pa.int64()),
                        ("index", pa.int64()), ("task_index", pa.int64()),
                        *([] if video else [(key, image) for key, _ in layout.cameras])])
    return pa.Table.from_pylist(rows, schema=schema)


def make_info(version: str, video: bool, splits: dict, layout: Layout = Layout()) -> dict:
    features = {key: {"dtype": "video" if video else "image", "shape": [h, w, 3],
                      "names": ["height", "width", "channels"]} for key, (h, w) in layout.cameras}
    features |= {"observation.state": {"dtype": "float32", "shape": [layout.state_dim],
                                       "names": list(layout.state_names) if layout.state_names else None},
                 "action": {"dtype": "float32", "shape": [layout.action_dim],
                            "names": list(layout.action_names) if layout.action_names else None},
                 **{k: {"dtype": "int64", "shape": [1]}
                    for k in ("frame_index", "episode_index", "index", "task_index")},
                 "timestamp": {"dtype": "float32", "shape": [1]}}
    if version == "v2.1":
        paths = {"data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                 "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}
    else:
        paths = {"data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                 "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}
    return {"codebase_version": version, "robot_type": "test", "total_episodes": len(EPISODES), "fps": FPS,
            "chunks_size": 1000, "splits": splits, **paths, "features": features}


def make_lerobot(root: Path, version: str, *, video: bool, gripper_fraction: bool = False,
                 splits: dict | None = None, layout: Layout = Layout()) -> list[SourceEpisode]:
    """Write a LeRobot dataset folder of ``EPISODES``; returns what it holds, for checking."""
    episodes = source_episodes(gripper_fraction, layout)
    (root / "meta").mkdir(parents=True)
    info = make_info(version, video, splits or {"train": f"0:{len(EPISODES)}"}, layout)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (write_v21 if version == "v2.1" else write_v30)(root, episodes, video, layout)
    return episodes


def write_v21(root: Path, episodes: list[SourceEpisode], video: bool, layout: Layout) -> None:
    lines = [{"episode_index": i, "tasks": [e.task], "length": len(e.actions)} for i, e in enumerate(episodes)]
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (root / "meta/tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                   for i, t in enumerate(TASKS)))
    for index, episode in enumerate(episodes):
        file = root / f"data/chunk-000/episode_{index:06d}.parquet"
        file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data_table(episodes, [index], video, layout), file)
        for key, frames in episode.frames.items():
            if video:
                write_video(root / f"videos/chunk-000/{key}/episode_{index:06d}.mp4", frames, layout.codec)


def write_v30(root: Path, episodes: list[SourceEpisode], video: bool, layout: Layout) -> None:
    """Episodes 0-2 in data file 0 and 3-4 in data file 1; each camera's video in one file, concatenated."""
    pd.DataFrame({"task_index": range(len(TASKS))}, index=pd.Index(TASKS, name="task")).to_parquet(
        root / "meta/tasks.parquet")
    files = [[0, 1, 2], [3, 4]]
    rows, start = [], 0
    for file_index, indices in enumerate(files):
        path = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data_table(episodes, indices, video, layout), path)
        for index in indices:
            steps = len(episodes[index].actions)
            row = {"episode_index": index, "tasks": [episodes[index].task], "length": steps,
                   "data/chunk_index": 0, "data/file_index": file_index,
                   "dataset_from_index": start, "dataset_to_index": start + steps}
            for key, _ in layout.cameras if video else ():
                row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": start / FPS,
                        f"videos/{key}/to_timestamp": (start + steps) / FPS}
            rows.append(row)
            start += steps
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")
    for key, _ in layout.cameras if video else ():
        write_video(root / f"videos/{key}/chunk-000/file-000.mp4", np.concatenate([e.frames[key] for e in episodes]),
                    layout.codec)


def read_rows(root: str, split: str) -> list[dict]:
    rows = []
    for shard in load_metadata(root).splits[split].shards:
        rows += pq.read_table(f"{root}/{shard.file}").to_pylist()
    return sorted(rows, key=lambda r: r["episode_id"])


def check_round_trip(out: str, episodes: list[SourceEpisode], splits: dict[str, list[int]], cameras: dict[str, str],
                     video: bool, space: ActionSpace) -> None:
    """Every episode landed in its split with its instruction, actions, state, step ids and frames."""
    meta = load_metadata(out)
    assert meta.source == "lerobot" and meta.state_dim == 4 and meta.action_space == space
    assert {c: (i.height, i.width) for c, i in meta.cameras.items()} == {c: CAMERAS[k] for c, k in cameras.items()}
    assert {name: s.episodes for name, s in meta.splits.items()} == {n: len(i) for n, i in splits.items() if i}
    for split, indices in splits.items():
        rows = read_rows(out, split) if indices else []
        assert [r["episode_id"] for r in rows] == indices
        for row in rows:
            source = episodes[row["episode_id"]]
            assert row["instruction"] == source.task
            assert row["step_ids"] == list(range(len(source.actions)))
            np.testing.assert_array_equal(np.asarray(row["actions"], np.float32), source.actions)
            np.testing.assert_array_equal(np.asarray(row["state"], np.float32), source.state)
            for camera, key in cameras.items():
                decoded = np.stack([decode_image(b) for b in row[f"image_{camera}"]]).astype(int)
                if video:
                    error = np.abs(decoded - source.frames[key]).mean(axis=(1, 2, 3))
                    assert error.max() < VIDEO_TOLERANCE, error
                else:
                    np.testing.assert_array_equal(decoded, source.frames[key])
    assert validate_dataset(out) == []


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="scheduling policies are Linux's")
def test_writing_an_av1_video_leaves_the_writers_scheduling_policy_alone(tmp_path):
    """As root, SVT-AV1 left the thread at SCHED_FIFO 99: the gloo ranks spawned by a later test
    inherited it, busy-waited at real-time priority and hung the suite (CI ran out of time)."""
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "av1.mp4", frames, codec="libsvtav1")
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
    with av.open(str(tmp_path / "av1.mp4")) as container:
        assert container.streams.video[0].codec_context.name in ("libdav1d", "libaom-av1", "av1")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_video_dataset_round_trip(tmp_path, version):
    episodes = make_lerobot(tmp_path / "src", version, video=True)
    out = str(tmp_path / "out")
    convert_lerobot(str(tmp_path / "src"), out, val_episodes=2, grippers=["6:signed"])
    # default cameras: the first two camera features in info.json order, as static and wrist
    cameras = {"static": "observation.images.top", "wrist": "observation.images.wrist"}
    check_round_trip(out, episodes, {"train": [0, 1, 2], "val": [3, 4]}, cameras, video=True,
                     space=ActionSpace(7, binary_grippers=(6,)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_image_dataset_round_trip_with_mapping_and_info_splits(tmp_path, version):
    episodes = make_lerobot(tmp_path / "src", version, video=False, gripper_fraction=True,
                            splits={"train": "0:3", "test": "3:5"})
    out = str(tmp_path / "out")
    cameras = {"wrist": "observation.images.wrist"}
    convert_lerobot(str(tmp_path / "src"), out, cameras=cameras, grippers=["6:open_fraction"], image_encoding="png")
    for episode in episodes:  # open fraction >= 0.5 is open (+1), below is closed (-1)
        episode.actions[:, 6] = np.where(episode.actions[:, 6] >= 0.5, 1.0, -1.0)
    check_round_trip(out, episodes, {"train": [0, 1, 2], "val": [3, 4]}, cameras, video=False,
                     space=ActionSpace(7, binary_grippers=(6,)))


@pytest.mark.timeout(60)
def test_without_a_gripper_declaration_no_dimension_is_a_gripper(tmp_path):
    episodes = make_lerobot(tmp_path / "src", "v3.0", video=False, gripper_fraction=True)
    out = str(tmp_path / "out")
    convert_lerobot(str(tmp_path / "src"), out, val_episodes=2)
    cameras = {"static": "observation.images.top", "wrist": "observation.images.wrist"}
    # dimension 6 holds open fractions in [0, 1]: kept as they are, regressed like the others
    check_round_trip(out, episodes, {"train": [0, 1, 2], "val": [3, 4]}, cameras, video=False,
                     space=ActionSpace(7, binary_grippers=()))


@pytest.mark.timeout(10)
def test_split_rule():
    info = {"splits": {"train": "0:10"}}

    def split(**kwargs) -> list[int]:
        return sorted(i for i, s in assign_splits(info, Path("info.json"), list(range(10)), **kwargs).items()
                      if s == "val")

    assert split(val_episodes=None, val_fraction=0.2) == [8, 9]  # the last round(0.2 * 10)
    assert split(val_episodes=3, val_fraction=0.2) == [7, 8, 9]
    assert split(val_episodes=0, val_fraction=0.2) == []
    info["splits"] |= {"validation": "2:4", "test": "9:10"}  # info.json val/test ranges beat the fraction
    assert split(val_episodes=None, val_fraction=0.2) == [2, 3, 9]
    assert split(val_episodes=1, val_fraction=0.2) == [9]  # an explicit count beats info.json
    info["splits"]["test"] = "nine:ten"
    with pytest.raises(DataError, match=r"info.json: field splits.test: 'nine:ten'"):
        split(val_episodes=None, val_fraction=0.2)
    with pytest.raises(ValueError, match="val_episodes"):
        split(val_episodes=11, val_fraction=0.2)


@pytest.mark.timeout(10)
def test_gripper_conventions():
    values = np.array([-0.7, 1.0, 0.2, -1.0], np.float32)
    np.testing.assert_array_equal(gripper_to_pm1(values, "signed"), [-1, 1, 1, -1])
    np.testing.assert_array_equal(gripper_to_pm1(values, "signed_inverted"), [1, -1, -1, 1])
    fractions = np.array([0.0, 0.49, 0.5, 1.0], np.float32)
    np.testing.assert_array_equal(gripper_to_pm1(fractions, "open_fraction"), [-1, -1, 1, 1])
    np.testing.assert_array_equal(gripper_to_pm1(fractions, "close_fraction"), [1, 1, -1, -1])
    with pytest.raises(ValueError, match="value 0.0 does not fit the 'signed'"):
        gripper_to_pm1(np.array([1.0, 0.0]), "signed")
    with pytest.raises(ValueError, match="value -1.0 does not fit the 'open_fraction'"):
        gripper_to_pm1(np.array([-1.0]), "open_fraction")


def edit_info(root: Path, edit) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    edit(info)
    (root / "meta/info.json").write_text(json.dumps(info))


def shorter_video(root: Path) -> None:
    """Episode 1's video loses its last frame."""
    file = root / "videos/chunk-000/observation.images.wrist/episode_000001.mp4"
    with av.open(str(file)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    write_video(file, np.stack(frames[:-1]))


def narrower_actions(root: Path) -> None:
    """Episode 2's data file stores 6-value actions although info.json says 7."""
    file = root / "data/chunk-000/episode_000002.parquet"
    table = pq.read_table(file)
    actions = pa.array([a[:6] for a in table.column("action").to_pylist()], pa.list_(pa.float32(), 6))
    pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", actions), file)


BAD_INPUT = {
    "missing info.json": (lambda r: (r / "meta/info.json").unlink(), {},
                          r"meta/info.json: not found"),
    "unknown version": (lambda r: edit_info(r, lambda i: i.update(codebase_version="v1.6")), {},
                        r"meta/info.json: field codebase_version: 'v1.6'"),
    "missing data file": (lambda r: (r / "data/chunk-000/episode_000003.parquet").unlink(), {},
                          r"data/chunk-000/episode_000003.parquet: data file of episode 3 is missing"),
    "missing video file": (lambda r: (r / "videos/chunk-000/observation.images.top/episode_000004.mp4").unlink(), {},
                           r"episode_000004.mp4: video of episode 4, feature observation.images.top is missing"),
    "unknown camera": (lambda r: None, {"cameras": {"static": "observation.images.side"}},
                       r"meta/info.json: field features: camera 'static' names 'observation.images.side'"),
    "action shape in info.json": (lambda r: edit_info(r, lambda i: i["features"]["action"].update(shape=[7, 1])), {},
                                  r"meta/info.json: feature action: shape \[7, 1\], expected one dimension \[D\]"),
    "action dim in info.json": (lambda r: edit_info(r, lambda i: i["features"]["action"].update(shape=[6])), {},
                                r"episode_000000.parquet: episode 0, feature action: shape \[6, 7\], "
                                r"expected \[steps, 6\]"),
    "action dim in the data": (narrower_actions, {},
                               r"episode_000002.parquet: episode 2, feature action: shape \[5, 6\]"),
    "video shorter than the episode": (shorter_video, {},
                                       r"observation.images.wrist/episode_000001.mp4: episode 1, feature "
                                       r"observation.images.wrist: 7 video frames .* but .*episode_000001.parquet "
                                       r"has 8 steps \(episode length mismatch\)"),
    "gripper convention": (lambda r: None, {"grippers": ["6:open_fraction"]},
                           r"episode_000000.parquet: episode 0, feature action: gripper dimension 6: value -1.0 does "
                           r"not fit the 'open_fraction' convention"),
    "gripper out of range": (lambda r: None, {"grippers": ["7:signed"]},
                             r"meta/info.json: feature action: gripper '7:signed': dimension 7 is out of range"),
    "gripper twice": (lambda r: None, {"grippers": ["6:signed", "6:continuous"]},
                      r"meta/info.json: feature action: gripper '6:continuous': dimension 6 is declared twice"),
}


@pytest.fixture(scope="module")
def video_v21(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lerobot") / "src"
    make_lerobot(root, "v2.1", video=True)
    return root


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_names_file_and_field(tmp_path, video_v21, case):
    plant, kwargs, message = BAD_INPUT[case]
    source = tmp_path / "src"
    shutil.copytree(video_v21, source)
    plant(source)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message):
        convert_lerobot(str(source), str(out), **kwargs)
    assert not (out / "metadata.json").exists()  # nothing is claimed as a finished dataset


@pytest.mark.timeout(10)
def test_v30_episode_missing_from_its_data_file(tmp_path):
    make_lerobot(tmp_path / "src", "v3.0", video=False)
    file = tmp_path / "src/meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(file)
    file_index = table.column("data/file_index").to_pylist()
    file_index[3] = 0  # episode 3 claims data file 0, which does not hold it
    pq.write_table(table.set_column(table.schema.get_field_index("data/file_index"), "data/file_index",
                                    pa.array(file_index, pa.int64())), file)
    with pytest.raises(DataError, match=r"file-000.parquet: episode 3: 0 rows, but the episode metadata says length 7"):
        convert_lerobot(str(tmp_path / "src"), str(tmp_path / "out"))
    assert not (tmp_path / "out/metadata.json").exists()


@pytest.mark.timeout(10)
def test_video_dataset_without_pyav_says_what_to_install(tmp_path, video_v21, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    with pytest.raises(DataError, match=r"pip install vla\[lerobot\]"):
        convert_lerobot(str(video_v21), str(tmp_path / "out"))


@pytest.mark.timeout(30)
def test_prepare_data_lerobot_command(tmp_path, video_v21):
    from vla.cli.prepare_data import main
    out = str(tmp_path / "out")
    assert main(["lerobot", str(video_v21), out, "--camera", "static=observation.images.wrist",
                 "--val-episodes", "1", "--image-encoding", "jpeg", "--gripper", "6:signed"]) == 0
    meta = load_metadata(out)
    assert (meta.splits["train"].episodes, meta.splits["val"].episodes) == (4, 1)
    assert list(meta.cameras) == ["static"] and meta.cameras["static"].encoding == "jpeg"
    assert meta.action_space.binary_grippers == (6,)
    assert main(["lerobot", str(video_v21), str(tmp_path / "bad"), "--camera", "static=nope"]) == 1
    assert not (tmp_path / "bad/metadata.json").exists()


@pytest.mark.timeout(60)
def test_parallel_ray_tasks_match_serial(tmp_path, ray_session):
    make_lerobot(tmp_path / "src", "v3.0", video=True)
    serial, parallel = str(tmp_path / "serial"), str(tmp_path / "parallel")
    convert_lerobot(str(tmp_path / "src"), serial, val_episodes=1)
    convert_lerobot(str(tmp_path / "src"), parallel, val_episodes=1, parallel=2)
    for split in ("train", "val"):
        a, b = read_rows(serial, split), read_rows(parallel, split)
        assert [r["episode_id"] for r in a] == [r["episode_id"] for r in b]
        assert [r["actions"] for r in a] == [r["actions"] for r in b]
        assert [r["image_static"] for r in a] == [r["image_static"] for r in b]
    assert validate_dataset(parallel) == []
