"""Collectives under NCCL, checked on a CPU: every collective the training worker issues goes
through ``vla.train.collectives``, which puts tensors on the trainer's device and makes a CUDA
device current before an object collective; a checkpoint and a resume issue no collective on a
host tensor while the trainer's device is not the CPU, and a resume restores exactly the model
and optimizer tensors that were saved.

A GPU trainer is simulated: tensors on the ``meta`` device, ``torch.cuda.set_device`` recorded.
"""

from __future__ import annotations

import ast
import functools
import inspect
import shutil
from pathlib import Path

import pytest
import ray.train
import torch
import torch.distributed as dist
from test_step import make_batch, make_trainer, run_ranks
from torch.distributed.tensor import DTensor

from vla.config import Config
from vla.train import collectives
from vla.train.config import TrainConfig
from vla.train.loop import Run, checkpoint_and_report, resume
from vla.train.progress import METRICS_FILE, RunLogger, read_metrics
from vla.train.step import train_step

ROOT = Path(__file__).resolve().parents[2]
# What the training worker runs (vla/train) and what it calls that could issue collectives.
WORKER_CODE = [*sorted((ROOT / "vla" / "train").glob("*.py")), ROOT / "vla/eval/scheduler.py",
               ROOT / "vla/tune/scoring.py"]
TENSOR_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
                      "reduce", "gather", "scatter", "all_to_all_single")
OBJECT_COLLECTIVES = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list")
COLLECTIVES = {*TENSOR_COLLECTIVES, *OBJECT_COLLECTIVES, "barrier", "send", "recv"}
META = torch.device("meta")


def direct_collectives(path: Path) -> list[str]:
    """``file:line name`` of every torch.distributed collective called in ``path``."""
    tree = ast.parse(path.read_text())
    aliases, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == "torch.distributed"}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
            names |= {a.asname or a.name for a in node.names if a.name in COLLECTIVES}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in COLLECTIVES and ast.unparse(func.value) in aliases:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {func.attr}")
        elif isinstance(func, ast.Name) and func.id in names:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {func.id}")
    return found


def test_every_collective_of_the_worker_goes_through_the_helper():
    helper = ROOT / "vla" / "train" / "collectives.py"
    assert direct_collectives(helper), "the scan finds the helper's own calls"
    outside = [hit for path in WORKER_CODE if path != helper and path.is_file() for hit in direct_collectives(path)]
    assert outside == [], f"collectives issued around vla.train.collectives: {outside}"


@pytest.fixture
def process_group():
    """World size 1 over gloo, in this process; the helper's device is restored afterwards."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        collectives.use_device(torch.device("cpu"))


def test_tensor_collectives_run_on_the_trainers_device(process_group, monkeypatch):
    seen = []
    for name in ("all_reduce", "broadcast"):
        monkeypatch.setattr(dist, name, lambda tensor, *args, name=name, **kwargs: seen.append((name, tensor.device)))
    collectives.use_device(META)
    host = torch.ones(3)
    assert collectives.all_reduce(host).device == META
    assert collectives.broadcast(host, src=0).device == META
    assert seen == [("all_reduce", META), ("broadcast", META)]


def test_object_collectives_run_with_the_trainers_gpu_current(process_group, monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    issued = []
    real_gather, real_broadcast = dist.all_gather_object, dist.broadcast_object_list
    monkeypatch.setattr(dist, "all_gather_object",
                        lambda *a, **k: issued.append(current[-1:]) or real_gather(*a, **k))
    monkeypatch.setattr(dist, "broadcast_object_list",
                        lambda *a, **k: issued.append(current[-1:]) or real_broadcast(*a, **k))
    monkeypatch.setattr(dist, "barrier", lambda device_ids=None: issued.append(device_ids))
    gpu = torch.device("cuda", 3)
    collectives.use_device(gpu)
    current.append(torch.device("cuda", 0))  # something else made another GPU current since
    assert collectives.all_gather_objects({"a": 1}) == [{"a": 1}]
    current.append(torch.device("cuda", 0))
    assert collectives.broadcast_object("x") == "x"
    collectives.barrier()
    assert issued == [[gpu], [gpu], [3]]


# --- a checkpoint and a resume in the loop, on 2 FSDP ranks -----------------------------------


def local_state(trainer) -> dict[str, torch.Tensor]:
    """This rank's shard of every parameter and optimizer-state tensor, by name (copies)."""
    names = {param: name for name, param in trainer.model.named_parameters()}
    local = (lambda t: t.to_local() if isinstance(t, DTensor) else t)
    state = {name: local(param).detach().clone() for param, name in names.items()}
    for param, values in trainer.optimizer.state.items():
        state |= {f"{names[param]}/{key}": local(v).clone() for key, v in values.items() if torch.is_tensor(v)}
    return state


@torch.no_grad()
def negate(trainer) -> None:
    """Flip the sign of every parameter and optimizer-state tensor (a sum of magnitudes would not see it)."""
    for param in trainer.model.parameters():
        param.mul_(-1)
    for values in trainer.optimizer.state.values():
        for value in values.values():
            if torch.is_tensor(value):
                value.mul_(-1)


def host_tensor_collectives(monkeypatch) -> list[str]:
    """Record each tensor collective that code in ``vla`` issues on a tensor off the helper's device."""
    wrong = []
    for name in TENSOR_COLLECTIVES:
        real = getattr(dist, name)

        def recorded(*args, real=real, name=name, **kwargs):
            caller = inspect.stack()[1].filename
            tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
            if caller.startswith(str(ROOT / "vla")) and any(t.device != collectives.device() for t in tensors):
                wrong.append(f"{name} on {tensors[0].device} from {caller}")
            return real(*args, **kwargs)

        monkeypatch.setattr(dist, name, recorded)
    return wrong


def _checkpoint_then_resume(rank: int, run_dir: str) -> None:
    monkeypatch = pytest.MonkeyPatch()
    trainer = make_trainer(TrainConfig(lr=1e-2, warmup_steps=1))
    batches = iter([make_batch(seed=rank + 2 * i, size=2) for i in range(2)])
    logger = RunLogger(run_dir, "resume", "vla", "disabled", {}) if rank == 0 else None
    run = Run(cfg=Config(), run_dir=run_dir, total_steps=10, trainer=trainer, logger=logger)
    assert train_step(trainer, batches) and train_step(trainer, batches)

    def report(metrics, checkpoint, checkpoint_dir_name):  # Ray Train's: every rank's files merged, then synced
        shutil.copytree(checkpoint.path, f"{run_dir}/{checkpoint_dir_name}", dirs_exist_ok=True)
        dist.barrier()

    monkeypatch.setattr(ray.train, "report", report)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)  # resumed from what is on disk
    wrong = host_tensor_collectives(monkeypatch)
    collectives.use_device(META)  # the trainer's device as the collectives see it: not the CPU
    saved, saved_lr = local_state(trainer), trainer.scheduler.get_last_lr()
    checkpoint_and_report(run)

    negate(trainer)
    for _ in range(3):
        trainer.scheduler.step()
    trainer.state.step = 7
    resume(run, rank)
    monkeypatch.undo()
    assert wrong == [], wrong

    assert trainer.state.step == 2 and trainer.scheduler.get_last_lr() == saved_lr
    restored = local_state(trainer)
    assert restored.keys() == saved.keys() and any("/exp_avg" in key for key in saved)
    for name, value in saved.items():
        torch.testing.assert_close(restored[name], value, rtol=0, atol=0, msg=name)
    if rank == 0:
        records = read_metrics(Path(run_dir) / METRICS_FILE)
        assert [r["step"] for r in records if "checkpoint_gb" in r and r["checkpoint_save_s"] > 0] == [2]
        assert [r["step"] for r in records if "checkpoint_load_s" in r] == [2]


def test_a_checkpoint_and_resume_restore_every_tensor_and_issue_no_host_collective(tmp_path):
    run_ranks(functools.partial(_checkpoint_then_resume, run_dir=str(tmp_path)))
