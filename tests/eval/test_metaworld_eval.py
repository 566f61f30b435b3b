"""MetaWorld end to end on the real paths: expert demonstrations of 2 tasks written by Ray tasks,
a few FSDP training steps on Ray Train whose checkpoint is evaluated in MetaWorld while training
runs (``train.eval_every``), then ``pipelines/evaluate.py``'s evaluation of the export: per-task
success beside the baselines, the plot, strips and GIFs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_overrides import TINY_RUN

import vla.sim.metaworld  # noqa: F401  (first: it sets MUJOCO_GL before mujoco is imported)

pytest.importorskip("metaworld", reason="pip install -e '.[metaworld]'")

from vla.config import load_config  # noqa: E402
from vla.data import load_metadata  # noqa: E402
from vla.data.converters.metaworld import MetaWorldData, convert_metaworld, read_sidecar  # noqa: E402
from vla.eval.evaluate import ExportEvalOptions, run_evaluation  # noqa: E402
from vla.train.launch import run_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

def evaluate_cli(argv: list[str]) -> int:
    """``vla-evaluate`` (``pipelines/evaluate.py``) as a program: its ``main``."""
    from vla.cli.evaluate import main

    return main(argv)


TASKS = ["reach-v3", "push-v3"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demonstrations_training_and_closed_loop_evaluation_on_metaworld(ray_session, tmp_path, capsys):
    data = str(tmp_path / "metaworld")
    meta, sidecar = convert_metaworld(data, MetaWorldData(TASKS, episodes_per_task=2, val_episodes_per_task=1,
                                                          image_size=32), parallel=2)
    assert meta.splits["train"].episodes == 4 and meta.splits["val"].episodes == 2
    assert load_metadata(data).source == "metaworld" and read_sidecar(data)["tasks"] == TASKS == sidecar["tasks"]

    cfg = load_config(str(ROOT / "configs" / "metaworld.yaml"), [
        f"data.path={data}", f"run.storage_path={tmp_path / 'runs'}", "run.name=metaworld", *TINY_RUN,
        "train.max_steps=4", "train.val_every=0", "train.checkpoint_every=2", "train.eval_every=4",
        "train.eval.episodes=2", "train.eval.offline_batches=1", "train.warmup_steps=0"])
    result = run_training(cfg)
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if "eval_success_rate" in r]
    assert [r["step"] for r in scored] == [4] and scored[0]["eval_episodes"] == 2, records
    assert {f"eval_success_{task}" for task in TASKS} <= set(scored[0])  # one episode of each task

    out = tmp_path / "eval"
    report = run_evaluation(str(Path(result.run_dir) / "export"), str(out),
                            ExportEvalOptions(episodes=2, tasks_per_policy=1, record=1, offline_split=None))
    loop = report["closed_loop"]
    assert loop["env"] == "metaworld" and loop["tasks"] == TASKS and loop["seeds"] == [1_000_000, 1_000_000]
    assert len(loop["constant_action"]) == 4
    for policy in loop["policies"].values():
        assert policy["episodes"] == 2 and set(policy["per_task"]) == set(TASKS)
        assert sum(policy["outcomes"].values()) == 2
    assert Path(report["files"]["plot"]).is_file()
    assert len(report["files"]["gifs"]) == 3 and all(Path(p).is_file() for p in report["files"]["gifs"])

    export = str(Path(result.run_dir) / "export")
    assert evaluate_cli(["--export", export, "--env-tasks", "reach-v3,pushh-v3"]) == 2  # refused before Ray
    assert "--env-tasks: unknown MetaWorld task 'pushh-v3'; valid: MT10, MT50" in capsys.readouterr().err
