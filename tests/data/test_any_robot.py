"""Robots that are not the 7-DOF arm, end to end: an SO-100 recording in LeRobot's own layout
(6 joint positions as action and state, AV1 videos) converted, trained through the real Ray
path, exported and acted with its state; a 14-value bimanual action with two binary grippers;
a 2-value action with none; and the bad input each can bring."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_lerobot import Layout, make_lerobot

from vla.action_space import ActionSpace
from vla.config import load_config
from vla.data import DataError, Episode, EpisodeWriter, Normalization, load_metadata
from vla.data.parquet_source import episode_columns, episode_to_windows, split_files
from vla.data.pipeline import load_tokenizer
from vla.model import build_model, build_tokenizer, save_export
from vla.policy import Policy
from vla.train.launch import check_run, run_training

ROOT = Path(__file__).resolve().parents[2]
JOINTS = ("shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos",
          "gripper.pos")
# LeRobot's SO-100 recording: 6 joint positions as action and state, two cameras in AV1 (its default codec)
SO100 = Layout(action_dim=6, state_dim=6, action_names=JOINTS, state_names=JOINTS,
               cameras=(("observation.images.front", (64, 64)), ("observation.images.wrist", (64, 64))),
               codec="libsvtav1")


def prepare_data_main():
    from vla.cli.prepare_data import main

    return main


@pytest.fixture(scope="module")
def so100(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("so100") / "lerobot"
    return root, make_lerobot(root, "v3.0", video=True, layout=SO100)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_so100_recording_converts_trains_and_acts_in_joint_units(ray_session, tiny_run, so100, tmp_path):
    source, episodes = so100
    out = str(tmp_path / "parquet")
    assert prepare_data_main()(["lerobot", str(source), out, "--val-episodes", "1"]) == 0
    meta = load_metadata(out)
    assert meta.action_space == ActionSpace(dim=6, names=JOINTS, binary_grippers=())  # gripper.pos is a joint
    assert (meta.state_dim, meta.state_names) == (6, list(JOINTS))

    cfg = load_config(None, [*tiny_run(tmp_path, "so100"), f"data.path={out}", "model.image_size=32",
                             "train.max_steps=3", "train.val_every=3"])
    result = run_training(cfg)
    assert math.isfinite(result.metrics["loss"]) and "gripper_accuracy" not in result.metrics

    policy = Policy.load(result.export_dir)
    assert policy.action_space.dim == 6 and policy.state_dim == 6
    stats = meta.splits["train"].action_stats
    policy.reset()
    for step in range(3):
        frames = {"static": episodes[0].frames["observation.images.front"][step],
                  "wrist": episodes[0].frames["observation.images.wrist"][step]}
        action = policy.act({"images": frames, "instruction": episodes[0].task, "state": episodes[0].state[step]})
        assert action.shape == (6,) and action.dtype == np.float32
        # quantile normalization (the default): the head's [-1, 1] maps onto the joints' q01..q99
        assert np.all(action >= np.asarray(stats.q01) - 1e-5) and np.all(action <= np.asarray(stats.q99) + 1e-5)
    with pytest.raises(ValueError, match="^state: missing; this policy reads the robot state, 6 floats$"):
        policy.act({"images": frames, "instruction": episodes[0].task})


@pytest.mark.timeout(60)
def test_the_so100_folder_streams_as_it_is_with_its_state(so100, tmp_path):
    source, _ = so100
    cameras = ["data.lerobot_cameras.static=observation.images.front",
               "data.lerobot_cameras.wrist=observation.images.wrist"]
    checked = check_run(load_config(None, ["data.format=lerobot", f"data.path={source}", *cameras,
                                           f"run.storage_path={tmp_path / 'runs'}"]))
    model = checked.cfg.model
    assert (model.action_dim, model.binary_grippers, model.state_dim) == (6, [], 6)
    declared = check_run(load_config(None, ["data.format=lerobot", f"data.path={source}", *cameras,
                                            "data.lerobot_grippers=['5:continuous']", "model.use_state=false",
                                            f"run.storage_path={tmp_path / 'runs'}"]))
    assert (declared.cfg.model.binary_grippers, declared.cfg.model.state_dim) == ([], 0)


def write_robot_dataset(root: Path, space: ActionSpace, state_dim: int, episodes: int = 4) -> None:
    """Random episodes of ``space`` (binary grippers -1 / +1) with a ``state_dim`` state."""
    rng = np.random.default_rng(0)
    with EpisodeWriter(str(root), ["static", "wrist"], action_space=space) as writer:
        for index in range(episodes):
            steps = 5 + index
            actions = rng.uniform(-1, 1, (steps, space.dim)).astype(np.float32)
            actions[:, list(space.binary_grippers)] = rng.choice([-1.0, 1.0], (steps, len(space.binary_grippers)))
            images = {c: rng.integers(1, 255, (steps, 16, 16, 3), dtype=np.uint8) for c in ("static", "wrist")}
            writer.write(Episode(f"task {index % 2}", actions, images, state=rng.normal(size=(steps, state_dim))),
                         "val" if index == episodes - 1 else "train")


SPACES = {
    "bimanual": (ActionSpace(dim=14, binary_grippers=(6, 13)), 14),  # ALOHA: two arms, two grippers
    "pusht": (ActionSpace(dim=2, binary_grippers=()), 2),  # a 2-D target, no gripper
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(SPACES))
def test_any_action_space_trains_exports_and_acts(tmp_path, name):
    space, state_dim = SPACES[name]
    write_robot_dataset(tmp_path / "data", space, state_dim)
    cfg = check_run(load_config(None, [f"data.path={tmp_path / 'data'}", "model.tiny_hidden_size=32",
                                       "model.tiny_num_layers=1", "model.window_size=2", "model.fwd_pred_next_n=2",
                                       "model.head_hidden_size=32", "model.image_size=16",
                                       f"run.storage_path={tmp_path / 'runs'}"])).cfg
    assert (cfg.model.action_dim, cfg.model.binary_grippers, cfg.model.state_dim) == (
        space.dim, list(space.binary_grippers), state_dim)
    build_tokenizer(cfg.model).save_pretrained(str(tmp_path / "tok"))
    meta = load_metadata(cfg.data.path)
    normalization = Normalization.from_metadata(meta, cfg.data, use_state=True)
    windows = episode_to_windows(cfg.data, meta, window_size=2, fwd_pred_next_n=2, image_size=16,
                                 tokenizer=load_tokenizer(str(tmp_path / "tok")), train=True,
                                 normalization=normalization)
    table = pq.read_table(split_files(cfg.data.path, meta, "train", cfg.data.cameras)[0],
                          columns=episode_columns(cfg.data.cameras, state=True))
    batch = {k: torch.from_numpy(v) for k, v in next(windows.windows(table)).items()}
    assert batch["state"].shape[-1] == state_dim and batch["actions"].shape[-1] == space.dim

    torch.manual_seed(0)
    model = build_model(cfg.model)
    metrics = model.loss(model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["state"]),
                         batch["actions"], batch["action_mask"])
    assert ("gripper_accuracy" in metrics) == bool(space.binary_grippers)
    metrics["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []

    save_export(tmp_path / "export", model, run_config=cfg.to_dict(), normalization=normalization.to_dict())
    policy = Policy.load(str(tmp_path / "export"))
    obs = {"images": {c: np.full((16, 16, 3), 90, np.uint8) for c in ("static", "wrist")}, "instruction": "task 0",
           "state": np.zeros(state_dim)}
    action, chunk = policy.act(obs), policy.act_chunk_batch([obs])
    assert action.shape == (space.dim,) and chunk.shape == (1, 2, space.dim)
    assert set(np.unique(chunk[..., list(space.binary_grippers)])) <= {-1.0, 1.0}


def bad_episode(problem: str) -> Episode:
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (4, 14)).astype(np.float32)
    actions[:, [6, 13]] = 1.0
    state = rng.normal(size=(4, 14))
    if problem == "action_dim":
        actions = actions[:, :13]
    elif problem == "state length":
        state = state[:, :12]
    elif problem == "gripper not binary":
        actions[2, 13] = 0.4
    images = {c: np.full((4, 16, 16, 3), 80, np.uint8) for c in ("static", "wrist")}
    return Episode("task", actions, images, state=state)


BAD = {
    "action_dim": r"data: episode 1, field actions: shape \(4, 13\), expected \[steps, 14\]",
    "state length": r"data: episode 1, field state: 12 values, earlier episodes have 14",
    "gripper not binary": r"episode 1, field actions\[2\]\[13\]: binary gripper must be -1 \(close\) or \+1 "
                          r"\(open\), got 0.4",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("problem", list(BAD))
def test_an_episode_that_disagrees_is_one_line_and_nothing_is_written(tmp_path, problem):
    target = tmp_path / "data"
    with pytest.raises(DataError, match=BAD[problem]) as err:
        with EpisodeWriter(str(target), ["static", "wrist"], action_space=ActionSpace(14, binary_grippers=(6, 13))) as w:
            w.write(bad_episode("none"))
            w.write(bad_episode(problem))
    assert "\n" not in str(err.value)
    assert not target.exists() and list(tmp_path.iterdir()) == []  # the staging folder is gone too


@pytest.mark.timeout(30)
def test_a_gripper_flag_out_of_range_is_refused_before_anything_is_read(so100, tmp_path):
    source, _ = so100
    main = prepare_data_main()
    assert main(["lerobot", str(source), str(tmp_path / "out"), "--gripper", "6:signed"]) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # argparse: not INDEX:CONVENTION
        main(["lerobot", str(source), str(tmp_path / "out"), "--gripper", "gripper"])


@pytest.mark.timeout(30)
def test_use_state_on_a_dataset_without_one_is_refused(tmp_path):
    images = {c: np.full((3, 16, 16, 3), 80, np.uint8) for c in ("static", "wrist")}
    with EpisodeWriter(str(tmp_path / "data"), ["static", "wrist"], action_space=ActionSpace(2, binary_grippers=())) as w:
        w.write(Episode("push the T", np.zeros((3, 2), np.float32), images))
    with pytest.raises(DataError, match=r"data/metadata.json: the dataset has no state, but model.use_state is true"):
        check_run(load_config(None, [f"data.path={tmp_path / 'data'}", "model.use_state=true", "train.val_every=0",
                                     "train.max_steps=1", f"run.storage_path={tmp_path / 'runs'}"]))
