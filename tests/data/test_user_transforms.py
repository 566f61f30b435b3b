"""``data.transforms``: a user's function, named by its dotted path, runs in the decode tasks on
every decoded episode, in the stream and in a training run (from a file that is no installed
package: it travels to the Ray workers by value); a bad path fails before Ray starts."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from vla.config import load_config
from vla.data import DataConfig, build_window_stream, check_dataset
from vla.train.launch import run_training
from vla.typed_config import ConfigError


def batches(cfg: DataConfig, tokenizer_dir: str) -> list[dict[str, np.ndarray]]:
    stream = build_window_stream(cfg, "val", window_size=2, fwd_pred_next_n=1, image_size=16,
                                 tokenizer_dir=tokenizer_dir, train=False)
    return [{key: value.numpy() for key, value in batch.items()} for batch in stream.batches(epoch=0)]


@pytest.mark.timeout(120)
def test_the_stream_maps_the_users_function_over_every_episode(ray_session, synthetic_dataset, tokenizer_dir):
    plain = batches(DataConfig(path=synthetic_dataset, batch_size=8), tokenizer_dir)
    inverted = batches(DataConfig(path=synthetic_dataset, batch_size=8,
                                  transforms=["user_transforms.invert_images"]), tokenizer_dir)
    assert len(plain) == len(inverted) > 1
    for a, b in zip(plain, inverted):
        np.testing.assert_array_equal(b["images"], 255 - a["images"])
        np.testing.assert_array_equal(b["actions"], a["actions"])


USER_FILE = """
import os

def mark_episode(episode):
    with open(os.path.join({folder!r}, f"{{os.getpid()}}-{{len(os.listdir({folder!r}))}}"), "w") as f:
        f.write(episode["instruction"])
    return episode
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_training_run_applies_a_function_from_the_users_own_file(ray_session, tiny_run, synthetic_root,
                                                                  tmp_path, monkeypatch):
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "my_lab_transforms.py").write_text(USER_FILE.format(folder=str(marks)))
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here only, as a script beside the user's config
    cfg = load_config(None, [*tiny_run(tmp_path, "transformed"), "data.transforms=[my_lab_transforms.mark_episode]",
                             "train.max_steps=2", "train.val_every=2", "run.export=false"])
    result = run_training(cfg)
    assert result.metrics["step"] == 2
    decoded = list(marks.iterdir())
    assert len(decoded) >= 2 and all(int(mark.name.split("-")[0]) != os.getpid() for mark in decoded)  # Ray tasks
    instructions = {row["instruction"] for split in ("train", "val")
                    for row in pq.read_table(f"{synthetic_root}/{split}", columns=["instruction"]).to_pylist()}
    assert {mark.read_text() for mark in decoded} <= instructions


def test_a_path_that_is_not_dotted_fails_in_the_config():
    with pytest.raises(ConfigError, match=r"data\.transforms\[1\]: 'invert_images' is not a dotted path"):
        load_config(None, ["data.transforms=[user_transforms.invert_images, invert_images]"])


@pytest.mark.parametrize("path, problem", [
    ("no_such_module.invert", "cannot import no_such_module"),
    ("user_transforms.missing", "user_transforms has no missing"),
])
def test_a_function_that_does_not_import_fails_the_drivers_check(synthetic_dataset, path, problem):
    """Before Ray starts (``check_run`` calls ``check_dataset``)."""
    cfg = DataConfig(path=synthetic_dataset, transforms=[path])
    with pytest.raises(ConfigError, match=rf"data\.transforms\[0\]: '{path}': {problem}"):
        check_dataset(cfg, ["train"])
