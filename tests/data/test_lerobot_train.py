"""``data.format: lerobot``: training reads a LeRobot v3 video folder as it is (frames decoded with
PyAV in the decode tasks) through the real Ray Train path; a broken folder is refused with one
line naming the file or field, before Ray starts and before anything is written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_lerobot import EPISODES, make_lerobot

from vla.config import load_config
from vla.data import DataError, count_windows
from vla.train.launch import check_run, run_training

ROOT = Path(__file__).resolve().parents[2]
CAMERAS = {"static": "observation.images.top", "wrist": "observation.images.wrist"}


@pytest.fixture(scope="module")
def lerobot_v3(tmp_path_factory) -> Path:
    """Five episodes (data files 0-2 and 3-4), each camera one mpeg4 video holding every episode."""
    root = tmp_path_factory.mktemp("lerobot") / "v3"
    make_lerobot(root, "v3.0", video=True)
    return root


def lerobot_overrides(root: Path) -> list[str]:
    return ["data.format=lerobot", f"data.path={root}", "data.lerobot_val_fraction=0.2",
            *(f"data.lerobot_cameras.{name}={key}" for name, key in CAMERAS.items())]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_training_reads_a_lerobot_video_folder(ray_session, tiny_run, lerobot_v3, tmp_path, monkeypatch):
    import vla.data.lerobot_source as lerobot_source

    computed = []  # action and state statistics of the train episodes (a read of their columns), on this driver
    normalization = lerobot_source.lerobot_normalization
    monkeypatch.setattr(lerobot_source, "lerobot_normalization", lambda *a: computed.append(a[2]) or normalization(*a))
    log = tmp_path / "windows"
    cfg = load_config(None, [*tiny_run(tmp_path, "lerobot"), *lerobot_overrides(lerobot_v3), f"data.window_log={log}",
                             "train.max_steps=3", "train.val_every=3", "run.export=false"])
    train_steps = sum(steps for _, steps in EPISODES[:-1])  # the last episode is val
    assert count_windows(cfg.data, "train") == train_steps
    result = run_training(cfg)
    assert computed == [4]  # the check's, with the 4-value state; the train and val streams reuse them
    assert result.metrics["step"] == 3
    saved = load_config(Path(result.run_dir) / "config.yaml")
    assert (saved.model.action_dim, saved.model.binary_grippers, saved.model.state_dim) == (7, [], 4)
    assert math.isfinite(result.metrics["loss"]) and math.isfinite(result.metrics["val_loss"])
    seen = {tuple(w) for rank in range(2) for line in (log / f"train-rank{rank}.jsonl").read_text().splitlines()
            for w in json.loads(line)["windows"]}
    assert len(seen) == 3 * 2 * cfg.data.batch_size  # 3 steps x 2 ranks x batch, no window twice
    assert {episode for episode, _ in seen} <= set(range(len(EPISODES) - 1))


def without_info(root: Path) -> str:
    (root / "meta/info.json").unlink()
    return f"{root / 'meta/info.json'}: not found"


def without_video(root: Path) -> str:
    video = root / "videos/observation.images.wrist/chunk-000/file-000.mp4"
    video.unlink()
    return f"{video}: video of episode 0, feature observation.images.wrist is missing"


def unknown_camera(root: Path) -> str:
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.side"] = info["features"].pop("observation.images.wrist")
    (root / "meta/info.json").write_text(json.dumps(info))
    return "info.json: field features: camera 'wrist' names 'observation.images.wrist', which is not an image"


BAD = {"missing info.json": without_info, "missing video": without_video, "unknown camera": unknown_camera}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(BAD))
def test_a_broken_lerobot_folder_is_refused_in_one_line(lerobot_v3, tmp_path, case):
    import shutil

    root = Path(shutil.copytree(lerobot_v3, tmp_path / "v3"))
    message = BAD[case](root)
    cfg = load_config(None, [*lerobot_overrides(root), f"run.storage_path={tmp_path / 'runs'}"])
    with pytest.raises(DataError) as err:
        check_run(cfg)  # what run_training runs before Ray starts
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.timeout(120)
def test_the_train_command_refuses_it_before_ray_and_writes_nothing(lerobot_v3, tmp_path):
    import shutil

    root = Path(shutil.copytree(lerobot_v3, tmp_path / "v3"))
    message = without_video(root)
    result = subprocess.run([sys.executable, str(ROOT / "pipelines/train.py"), *lerobot_overrides(root),
                             f"run.storage_path={tmp_path / 'runs'}", "run.name=broken"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=110)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == f"error: {message}"
    assert "Started a local Ray instance" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()
