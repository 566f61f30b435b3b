"""Every kind of bad input gets a clear error naming file, episode and field; validate lists all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from episode_factories import marker_episode

from vla.data import DataConfig, DataError, EpisodeWriter, build_window_stream, load_metadata, validate_dataset
from vla.data.parquet_source import episode_to_windows

FIRST = "train/part-00000.parquet"


@pytest.fixture
def dataset(tmp_path) -> str:
    root = str(tmp_path / "ds")
    with EpisodeWriter(root, ["static", "wrist"], max_shard_bytes=2500) as writer:
        for i in range(4):
            writer.write(marker_episode(i, 4), "train")
    assert len(load_metadata(root).splits["train"].shards) >= 2
    return root


def edit_rows(root: str, file: str, edit) -> None:
    """Rewrite one shard after ``edit(rows)``, keeping its schema (to plant a fault)."""
    table = pq.read_table(f"{root}/{file}")
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), f"{root}/{file}")


def build(root: str, tokenizer_dir: str):
    cfg = DataConfig(path=root, normalization="none")
    return build_window_stream(cfg, "train", window_size=2, fwd_pred_next_n=1, image_size=16,
                               tokenizer_dir=tokenizer_dir, train=True)


def run_transform(root: str, tokenizer_dir: str) -> None:
    """The pipeline's per-episode chain over every shard, in this process (no Ray)."""
    from vla.data.pipeline import load_tokenizer

    meta = load_metadata(root)
    transform = episode_to_windows(DataConfig(path=root, normalization="none"), meta, window_size=2,
                                   fwd_pred_next_n=1, image_size=16, tokenizer=load_tokenizer(tokenizer_dir),
                                   train=True)
    for shard in meta.splits["train"].shards:
        table = pq.read_table(f"{root}/{shard.file}")
        table = table.append_column("path", pa.array([shard.file] * len(table)))
        list(transform.windows(table))


def messages(root: str) -> list[str]:
    return [str(p) for p in validate_dataset(root)]


def test_a_clean_dataset_has_no_problems(dataset, tokenizer_dir):
    assert validate_dataset(dataset) == []
    run_transform(dataset, tokenizer_dir)


def test_missing_shard(dataset, tokenizer_dir, tmp_path):
    (tmp_path / "ds" / FIRST).unlink()
    with pytest.raises(DataError, match=f"{FIRST}: shard listed in metadata.json is missing"):
        build(dataset, tokenizer_dir)
    assert messages(dataset) == [f"{FIRST}: shard listed in metadata.json is missing"]


def test_unreadable_shard(dataset, tokenizer_dir, tmp_path):
    (tmp_path / "ds" / FIRST).write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=f"{FIRST}: shard cannot be read"):
        build(dataset, tokenizer_dir)
    assert any(m.startswith(f"{FIRST}: shard cannot be read") for m in messages(dataset))


def test_missing_and_wrong_columns(dataset, tokenizer_dir):
    table = pq.read_table(f"{dataset}/{FIRST}")
    table = table.drop_columns(["image_wrist"]).set_column(
        table.schema.get_field_index("instruction"), "instruction", pa.array([1] * len(table)))
    pq.write_table(table, f"{dataset}/{FIRST}")
    with pytest.raises(DataError) as err:
        build(dataset, tokenizer_dir)
    assert f"{FIRST}, field instruction: column has the wrong type int64" in str(err.value)
    assert f"{FIRST}, field image_wrist: column is missing" in str(err.value)
    assert len(messages(dataset)) == 2


def test_wrong_action_length(dataset, tokenizer_dir):
    def edit(rows):
        rows[0]["actions"][2] = [0.0] * 6
    edit_rows(dataset, FIRST, edit)
    expected = f"{FIRST}, episode 0, field actions[2]: action has length 6, expected 7"
    assert messages(dataset) == [expected]
    with pytest.raises(DataError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        run_transform(dataset, tokenizer_dir)


def test_nan_and_inf_actions(dataset, tokenizer_dir):
    def edit(rows):
        rows[0]["actions"][1][0] = float("nan")
        rows[0]["actions"][3][2] = float("inf")
    edit_rows(dataset, FIRST, edit)
    problems = messages(dataset)
    assert [p.split(":")[0] for p in problems] == [f"{FIRST}, episode 0, field actions[1]",
                                                    f"{FIRST}, episode 0, field actions[3]"]
    assert all("not finite" in p for p in problems)
    with pytest.raises(DataError, match="not finite"):
        run_transform(dataset, tokenizer_dir)
    with pytest.raises(DataError, match=r"episode 0, field actions\[1\]: action is not finite"):
        with EpisodeWriter(str(dataset) + "_new", ["static", "wrist"]) as writer:
            episode = marker_episode(0, 3)
            episode.actions[1, 0] = np.nan
            writer.write(episode)


def test_undecodable_image(dataset, tokenizer_dir):
    def edit(rows):
        rows[1]["image_static"][3] = b"\x89PNG garbage"
    edit_rows(dataset, FIRST, edit)
    problems = messages(dataset)
    assert len(problems) == 1 and problems[0].startswith(f"{FIRST}, episode 1, field image_static[3]: image does not decode")
    with pytest.raises(DataError, match=r"episode 1, field image_static\[3\]: image does not decode"):
        run_transform(dataset, tokenizer_dir)


def test_empty_dataset_and_missing_metadata(tmp_path, tokenizer_dir):
    root = str(tmp_path / "empty")
    EpisodeWriter(root, ["static", "wrist"]).close()
    assert messages(root) == ["metadata.json: the dataset is empty (no episodes in any split)"]
    with pytest.raises(DataError, match="no split 'train'"):
        build(root, tokenizer_dir)
    with pytest.raises(DataError, match="metadata.json: not found"):
        build(str(tmp_path / "nothing"), tokenizer_dir)
    assert messages(str(tmp_path / "nothing"))[0].startswith("metadata.json: ")


def test_validate_reports_every_problem_not_just_the_first(dataset, tmp_path):
    def edit(rows):
        rows[0]["actions"][0][6] = 0.5
        rows[1]["image_wrist"] = rows[1]["image_wrist"][:2]
    edit_rows(dataset, FIRST, edit)
    (tmp_path / "ds" / "train" / "part-00009.parquet").write_bytes(b"stray")
    problems = messages(dataset)
    assert len(problems) == 3
    assert any("gripper must be -1 (close) or +1 (open), got 0.5" in p for p in problems)
    assert any("episode 1, field image_wrist: 2 frames for 4 steps" in p for p in problems)
    assert any("part-00009.parquet: shard is not listed" in p for p in problems)


def test_a_failed_rewrite_leaves_the_old_dataset_as_it_was(dataset):
    """Converting into an old dataset's folder and failing leaves the old dataset byte for byte."""
    before = {p: p.read_bytes() for p in Path(dataset).rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="field actions"):
        with EpisodeWriter(dataset, ["static", "wrist"]) as writer:
            writer.write(marker_episode(0, 4), "train")
            bad = marker_episode(1, 4)
            bad.actions = bad.actions[:, :6]
            writer.write(bad, "train")
    assert {p: p.read_bytes() for p in Path(dataset).rglob("*") if p.is_file()} == before
    assert not [p for p in Path(dataset).parent.iterdir() if ".partial-" in p.name]
    assert validate_dataset(dataset) == []
