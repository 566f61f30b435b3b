"""Data and runs, whatever fails: converters never destroy a dataset, one set of data checks
(writer, validate, training transforms), validation before Ray that writes nothing."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vla.config import load_config
from vla.data import DataConfig, DataError, Episode, EpisodeWriter, load_metadata, validate_dataset
from vla.data.converters.synthetic import convert_synthetic
from vla.data.parquet_source import decode_chain
from vla.train.launch import check_run, write_run_files
from vla.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FIRST = "train/part-00000.parquet"


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def episode(seed: int, steps: int = 3, size: int = 16, **changes) -> Episode:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps, 7)).astype(np.float32)
    actions[:, 6] = 1.0
    images = {c: rng.integers(0, 256, (steps, size, size, 3), dtype=np.uint8) for c in ("static", "wrist")}
    return Episode(**{"instruction": "pick up the block", "actions": actions, "images": images, **changes})


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "ds"
    with EpisodeWriter(str(root), ["static", "wrist"]) as writer:
        for i in range(3):
            writer.write(episode(i), "train")
    return root


def prepare(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pipelines/prepare_data.py"), *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


@pytest.mark.parametrize("parallel", [[], ["--parallel", "2"]], ids=["in-process", "parallel"])
def test_an_invalid_argument_leaves_the_dataset_untouched(dataset, parallel):
    before = files(dataset)
    result = prepare("synthetic", str(dataset), "--episodes", "-5", *parallel)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # and no Ray started to say so
    assert result.stderr.strip() == "episodes: must be >= 1, got -5"
    assert files(dataset) == before


def test_an_interrupted_conversion_leaves_the_old_dataset_intact(dataset):
    """kill -9 in the middle of converting into an existing dataset's folder."""
    before = files(dataset)
    process = subprocess.Popen([sys.executable, str(ROOT / "pipelines/prepare_data.py"), "synthetic", str(dataset),
                                "--episodes", "400", "--val-episodes", "0"], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.glob("train/*.parquet") for p in dataset.parent.glob(".ds.partial-*")):
        assert time.monotonic() < deadline and process.poll() is None, "the conversion never started writing"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert files(dataset) == before
    assert validate_dataset(str(dataset)) == []


def plant(root: Path, edit) -> None:
    table = pq.read_table(root / FIRST)
    rows = table.to_pylist()
    edit(rows[0])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), root / FIRST)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


FAULTS = {
    "wrong size": (lambda row: row.update(image_static=[png(np.zeros((20, 16, 3), np.uint8))] * 3),
                   "field image_static[0]: image is 20x16, metadata.json says 16x16"),
    "grayscale": (lambda row: row.update(image_static=[png(np.zeros((16, 16), np.uint8))] * 3),
                  "field image_static[0]: image is L, expected RGB (3 channels)"),
    "RGBA": (lambda row: row.update(image_wrist=[png(np.zeros((16, 16, 4), np.uint8))] * 3),
             "field image_wrist[0]: image is RGBA, expected RGB (3 channels)"),
    "empty instruction": (lambda row: row.update(instruction=" "),
                          "field instruction: is empty: every episode needs a language instruction"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_validate_and_training_refuse_the_same_frames_and_instructions(dataset, fault):
    edit, message = FAULTS[fault]
    plant(dataset, edit)
    assert any(message in str(p) for p in validate_dataset(str(dataset))), validate_dataset(str(dataset))
    assert any(message in str(p) for p in validate_dataset(str(dataset), decode_images=False))
    chain = decode_chain(DataConfig(path=str(dataset), normalization="none"), load_metadata(str(dataset)), 8)
    row = pq.read_table(dataset / FIRST).to_pylist()[0]
    with pytest.raises(DataError, match=re.escape(message)):
        chain({**row, "path": FIRST})


def test_the_writer_refuses_them_too(tmp_path):
    cases = {
        "grayscale": (dict(images={"static": np.zeros((3, 16, 16), np.uint8),
                                   "wrist": np.zeros((3, 16, 16, 3), np.uint8)}), "expected [steps, H, W, 3]"),
        "0x0": (dict(images={"static": np.zeros((3, 0, 0, 3), np.uint8),
                             "wrist": np.zeros((3, 16, 16, 3), np.uint8)}), "with H, W >= 1"),
        "empty instruction": (dict(instruction=""), "field instruction: is empty"),
        "extra camera": (dict(images={c: np.zeros((3, 16, 16, 3), np.uint8) for c in ("static", "wrist", "top")}),
                         "field images: camera(s) top not among the writer's cameras"),
    }
    for name, (changes, message) in cases.items():
        with pytest.raises(DataError, match=re.escape(message)):
            with EpisodeWriter(str(tmp_path / name), ["static", "wrist"]) as writer:
                writer.write(episode(0, **changes))
        assert not (tmp_path / name).exists(), name


def test_a_camera_column_metadata_does_not_list_is_reported(dataset):
    table = pq.read_table(dataset / FIRST)
    pq.write_table(table.append_column("image_top", table.column("image_static")), dataset / FIRST)
    assert [str(p) for p in validate_dataset(str(dataset))] == [
        f"{FIRST}, field image_top: column of a camera that metadata.json does not list"]


def test_a_bad_shard_fails_before_ray_and_the_run_folder_is_untouched(tmp_path):
    data = tmp_path / "data"
    convert_synthetic(str(data), episodes=4, val_episodes=1, image_size=16)
    run_dir = tmp_path / "runs" / "demo"
    good = load_config(None, [f"data.path={data}", f"run.storage_path={tmp_path / 'runs'}", "run.name=demo"])
    write_run_files(str(run_dir), good, "{}")  # an earlier good attempt
    before = files(run_dir)
    shard = data / FIRST
    shard.write_bytes(shard.read_bytes()[:-50])
    result = subprocess.run([sys.executable, str(ROOT / "pipelines/train.py"), f"data.path={data}",
                             f"run.storage_path={tmp_path / 'runs'}", "run.name=demo"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and f"{FIRST}: shard cannot be read" in result.stderr
    assert "Started a local Ray instance" not in result.stderr + result.stdout
    assert files(run_dir) == before
    with pytest.raises(DataError, match=FIRST):
        check_run(good)


def test_an_earlier_attempts_config_is_kept(tmp_path):
    first = load_config(None, ["train.lr=1e-4"])
    second = load_config(None, ["train.lr=2e-4"])
    write_run_files(str(tmp_path), first, "{}")
    write_run_files(str(tmp_path), first, "{}")  # the same config again: nothing to keep
    write_run_files(str(tmp_path), second, "{}")
    assert "lr: 0.0001" in (tmp_path / "config.attempt1.yaml").read_text()
    assert "lr: 0.0002" in (tmp_path / "config.yaml").read_text()
    assert not (tmp_path / "config.attempt2.yaml").exists()


def test_a_config_error_names_where_the_value_came_from(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lr: abc\n")
    with pytest.raises(ConfigError, match=r"train.lr: expected a number, got 'abc' \(in .*run.yaml\)"):
        load_config(config)
    with pytest.raises(ConfigError, match=r"train.lr: expected a number, got 'xyz' \(from the command line: train.lr=xyz\)"):
        load_config(config, ["train.lr=xyz"])
    assert load_config(config, ["train.lr=1e-3"]).train.lr == 1e-3
    with pytest.raises(ConfigError, match=r"\(from the command line: data.cameras=\[a\]\)"):
        load_config(None, ["data.cameras=[a]"])
