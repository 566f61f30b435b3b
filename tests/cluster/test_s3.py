"""Dataset, run, checkpoints, resume and export on object storage, through a real S3 server.

Credentials and endpoint come from the environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
...), as an AWS user sets them; each pipeline runs as a user runs it, in its own process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from procs import BUCKET, ROOT, pythonpath, run_pipeline
from run_overrides import TINY_RUN

from vla.storage import StorageError, check_storage, exists, localize, read_bytes

TINY = [*TINY_RUN, "train.num_workers=2"]


def list_dirs(uri: str, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, inner = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(inner))
    return sorted(f"s3://{i.path}" for i in infos if i.base_name.startswith(prefix) and i.type == pafs.FileType.Directory)


def printed(output: str, label: str) -> str:
    """The location ``pipelines/train.py`` printed after ``label:``."""
    return re.search(rf"^{label}:\s+(\S+)$", output, re.M)[1]


@pytest.fixture
def aws(s3_env, monkeypatch, tmp_path):
    """This process with the user's AWS environment and its own download cache."""
    for key, value in {**s3_env, "VLA_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    return s3_env


def test_bad_credentials_fail_before_anything_starts(aws):
    wrong = {**aws, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = run_pipeline("train.py", [f"data.path=s3://{BUCKET}/nothing", f"run.storage_path=s3://{BUCKET}/runs"], wrong)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: data.path s3://{BUCKET}/nothing: access denied")
    assert "Ray" not in proc.stdout + proc.stderr  # no Ray instance, no worker was started


def test_missing_bucket_fails_before_anything_starts(aws):
    with pytest.raises(StorageError, match=r"^run.storage_path s3://no-such-bucket/runs: bucket 'no-such-bucket' does"):
        check_storage("s3://no-such-bucket/runs", "run.storage_path", writable=True)
    check_storage(f"s3://{BUCKET}/runs", "run.storage_path", writable=True)
    assert not exists(f"s3://{BUCKET}/runs/.vla_write_check")  # the probe leaves nothing behind


def test_localize_caches_a_folder_and_refetches_it_when_it_changes(aws):
    from vla.storage import write_bytes

    write_bytes(f"s3://{BUCKET}/cached/a.txt", b"one")
    local = localize(f"s3://{BUCKET}/cached")
    assert open(f"{local}/a.txt", "rb").read() == b"one"
    assert localize(f"s3://{BUCKET}/cached") == local
    write_bytes(f"s3://{BUCKET}/cached/a.txt", b"two!")
    assert open(f"{localize(f's3://{BUCKET}/cached')}/a.txt", "rb").read() == b"two!"
    with pytest.raises(StorageError, match=f"s3://{BUCKET}/absent: no such folder"):
        localize(f"s3://{BUCKET}/absent")


def test_decode_tasks_read_shards_on_s3_from_one_local_copy_per_node(aws, tmp_path):
    from vla.data.config import DataConfig
    from vla.data.converters.synthetic import convert_synthetic
    from vla.data.metadata import load_metadata
    from vla.data.parquet_source import ParquetEpisodes, decode_chain, read_episode_index
    from vla.storage import remote_stamp

    data = f"s3://{BUCKET}/datasets/cached"
    convert_synthetic(data, episodes=3, val_episodes=1, image_size=32)
    chain = decode_chain(DataConfig(path=data), load_metadata(data), image_size=32)
    (file, group, row) = read_episode_index(data, "train").addresses[1]
    direct = ParquetEpisodes(data, ["static", "wrist"], chain, cache_remote=False)(file, group, row)
    cached = ParquetEpisodes(data, ["static", "wrist"], chain, cache_remote=True)(file, group, row)
    assert np.array_equal(cached["images"], direct["images"]) and np.array_equal(cached["actions"], direct["actions"])
    copy = tmp_path / "cache" / "s3" / file
    assert copy.is_file() and copy.stat().st_size == remote_stamp(f"s3://{file}")[0]

    # Later reads on this node are local: they work with the object gone from the bucket.
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(data)
    stored = read_bytes(f"s3://{file}")
    fs.delete_file(file)
    assert np.array_equal(ParquetEpisodes(data, ["static", "wrist"], chain)(file, group, row)["actions"],
                          direct["actions"])
    # A job started after the shard was rewritten (another size) downloads it again.
    remote_stamp.cache_clear()
    convert_synthetic(data, episodes=4, val_episodes=1, image_size=32, seed=7)
    assert read_bytes(f"s3://{file}") != stored
    ParquetEpisodes(data, ["static", "wrist"], chain)(file, group, row)
    assert copy.read_bytes() == read_bytes(f"s3://{file}")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_train_resume_export_act_and_evaluate_entirely_on_s3(aws, tmp_path):
    data = f"s3://{BUCKET}/datasets/synthetic"
    made = run_pipeline("prepare_data.py", ["synthetic", data, "--episodes", "8", "--val-episodes", "2"], aws)
    assert made.returncode == 0, made.stderr
    run = [f"data.path={data}", f"run.storage_path=s3://{BUCKET}/runs", "run.name=s3run", *TINY]

    # The workers fail at step 2, before its checkpoint: the group restarts from step 1's, on S3.
    proc = run_pipeline(
        "train.py", [*run, "train.max_steps=3", "train.checkpoint_every=1", "train.inject_failure_at_step=2",
                     "train.max_failures=1"], aws)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming at step 1 of 3" in proc.stderr
    assert printed(proc.stdout, "run folder") == f"s3://{BUCKET}/runs/s3run"
    assert printed(proc.stdout, "checkpoint") == f"s3://{BUCKET}/runs/s3run/checkpoint_step0000003"
    assert printed(proc.stdout, "policy") == f"s3://{BUCKET}/runs/s3run/export"
    checkpoints = list_dirs(f"s3://{BUCKET}/runs/s3run", "checkpoint_")
    assert checkpoints[-1].endswith("checkpoint_step0000003")
    for checkpoint in checkpoints:  # nothing half-written: the marker file is written last
        assert exists(f"{checkpoint}/train_state.json"), checkpoint

    from vla.policy import Policy

    policy = Policy.load(printed(proc.stdout, "policy"))
    observation = {"images": {camera: np.zeros((32, 32, 3), np.uint8) + 40 for camera in policy.preprocessor.cameras},
                   "instruction": "push the block"}
    action = policy.act(observation)
    assert action.shape == (7,) and np.isfinite(action).all()

    # pipelines/evaluate.py takes the same location; its rollout tasks run on another node
    # (another download cache) and load the export there, not from the driver's copy.
    node_cache = tmp_path / "node-cache"
    evaluation = subprocess.run(
        [sys.executable, str(ROOT / "tests/cluster/evaluate_on_node.py"), str(node_cache),
         "--export", printed(proc.stdout, "policy"), "--episodes", "2", "--tasks", "1", "--out", str(tmp_path / "eval")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath()}, capture_output=True, text=True, timeout=240,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["export"] == printed(proc.stdout, "policy")
    assert report["closed_loop"]["policies"]["trained"]["episodes"] == 2
    assert (node_cache / "s3" / BUCKET / "runs/s3run/export/model.safetensors").is_file()


def test_sweep_report_keeps_the_scheme_of_trial_checkpoints(aws):
    """Ray reports a checkpoint on S3 as ``bucket/key``: the sweep's table gives it back its scheme."""
    import ray.train
    import ray.tune

    from vla.config import load_config
    from vla.tune.report import trial_rows
    from vla.tune.runner import Sweep
    from vla.tune.space import parse_space

    base = load_config(None, [f"run.storage_path=s3://{BUCKET}/sweeps", "train.max_steps=4", "train.val_every=2"])
    space = parse_space({"params": {"train.lr": {"choice": [1e-3]}}}, base.to_dict())
    sweep = Sweep(name="s3-sweep", directory=f"s3://{BUCKET}/sweeps/s3-sweep", space=space, base=base.to_dict())
    run_dir = f"{sweep.directory}/runs/trial-0"
    checkpoint = ray.train.Checkpoint(f"{run_dir}/checkpoint_step0000004")
    # As SweepReportCallback reports it, and Tune adds the trial config.
    reported = {"step": 4, "checkpoint_path": checkpoint.path, "config": {"train.lr": 1e-3}}
    result = ray.tune.Result(metrics=reported, checkpoint=None, error=None, path=f"{sweep.directory}/trial-0")
    (row,) = trial_rows([result], sweep, max_steps=4)
    assert row.checkpoint == f"{run_dir}/checkpoint_step0000004"
    assert row.run_dir == run_dir
