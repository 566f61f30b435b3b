"""Sharded checkpoints with torch.distributed.checkpoint (DCP), reported to Ray Train.

Layout of one checkpoint folder (Ray merges every rank's folder into it):
    .metadata, __<rank>_0.distcp    model + optimizer shards (DCP)
    rng_rank<r>.pt                  each rank's RNG states
    train_state.json                step, epoch, data position, scheduler, and the size and
                                    CRC-32 of every other file; written last, by rank 0

``train_state.json`` is the completeness marker: a folder without it was not completely
written. A folder whose files differ from the sizes and checksums the marker recorded is
damaged. Neither is ever resumed from: ``choose_resume_checkpoint`` takes the newest intact
checkpoint of the run folder (Ray's registered latest is one of them, so a newer complete one
that Ray did not register in time wins) and names every one it skips.
"""

from __future__ import annotations

import json
import logging
import random
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vla.model.checkpoint import TRAIN_STATE_FILE, CheckpointError, read_train_state
from vla.storage import filesystem
from vla.train import collectives

log = logging.getLogger("vla.train")

CHECKPOINT_NAME = re.compile(r"^checkpoint_step(\d+)$")
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of reported checkpoints
CHUNK_BYTES = 8 << 20


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch
    samples_seen: int = 0  # windows seen by all ranks together


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
) -> int:
    """Every rank calls this with its own empty ``directory``; rank 0 gets the metadata.

    Returns the bytes every rank wrote together.
    """
    rank = dist.get_rank()
    sharded = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    dcp.save(sharded, checkpoint_id=str(directory))
    torch.save(_rng_state(), directory / f"rng_rank{rank}.pt")
    manifests = collectives.all_gather_objects(file_manifest(directory))
    files = {name: entry for manifest in manifests for name, entry in manifest.items()}
    if rank == 0:
        record = {"train_state": asdict(state), "scheduler": scheduler.state_dict(),
                  "world_size": dist.get_world_size(), "files": files}
        (directory / TRAIN_STATE_FILE).write_text(json.dumps(record, indent=1))
    return sum(entry["bytes"] for entry in files.values())


def _crc32(stream) -> int:
    crc = 0
    while chunk := stream.read(CHUNK_BYTES):
        crc = zlib.crc32(chunk, crc)
    return crc


def file_manifest(directory: Path) -> dict[str, dict[str, int]]:
    """``{file name: {"bytes": size, "crc32": checksum}}`` of every file this rank wrote."""
    manifest = {}
    for file in sorted(directory.iterdir()):
        if file.is_file() and file.name != TRAIN_STATE_FILE:
            with file.open("rb") as stream:
                manifest[file.name] = {"bytes": file.stat().st_size, "crc32": _crc32(stream)}
    return manifest


def checkpoint_damage(directory: str, *, checksums: bool = True) -> str | None:
    """Why the checkpoint folder ``directory`` (local path or URI) cannot be resumed from, or None.

    Missing ``.metadata`` or marker, a file the marker lists that is missing, of another size,
    or (``checksums``) with another CRC-32. Markers written before sizes were recorded are
    trusted as they are.
    """
    fs, path = filesystem(directory)
    try:
        with fs.open_input_stream(f"{path}/{TRAIN_STATE_FILE}") as stream:
            record = json.loads(stream.read())
    except FileNotFoundError:
        return f"no {TRAIN_STATE_FILE} (the checkpoint was not completely written)"
    except (OSError, ValueError) as err:
        return f"{TRAIN_STATE_FILE} cannot be read: {err}"
    files = record.get("files", {})
    names = [".metadata", *files] if ".metadata" not in files else list(files)
    infos = {info.base_name: info for info in fs.get_file_info([f"{path}/{name}" for name in names])}
    for name in names:
        info = infos[name]
        if info.type == pafs.FileType.NotFound:
            return f"{name} is missing"
        expected = files.get(name)
        if expected is None:
            continue
        if info.size != expected["bytes"]:
            return f"{name} holds {info.size} bytes, {expected['bytes']} were written"
        if checksums:
            with fs.open_input_stream(f"{path}/{name}") as stream:
                if _crc32(stream) != expected["crc32"]:
                    return f"{name} does not match the checksum recorded when it was written"
    return None


def checkpoints_on_disk(run_dir: str) -> list[tuple[int, str]]:
    """``(step, folder)`` of every ``checkpoint_step*`` folder of the run, newest first."""
    fs, path = filesystem(run_dir)
    found = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        match = CHECKPOINT_NAME.match(info.base_name)
        if match and info.type == pafs.FileType.Directory:
            found.append((int(match.group(1)), f"{run_dir.rstrip('/')}/{info.base_name}"))
    return sorted(found, reverse=True)


def newest_intact_checkpoint(run_dir: str, registered: str | None = None) -> str | None:
    """The newest intact checkpoint among the run folder's and Ray's ``registered`` one.

    Ray registers a checkpoint only after every rank's report reached its controller: a run
    killed just after a save leaves a newer complete checkpoint on disk than Ray's latest.
    Every checkpoint skipped on the way is named in a warning.
    """
    candidates = {folder: step for step, folder in checkpoints_on_disk(run_dir)}
    if registered is not None:  # Ray's path (without a URI scheme on object storage): in the run folder
        name = registered.rstrip("/").rsplit("/", 1)[-1]
        match = CHECKPOINT_NAME.match(name)
        candidates.setdefault(f"{run_dir.rstrip('/')}/{name}", int(match.group(1)) if match else -1)
    for folder, _ in sorted(candidates.items(), key=lambda item: item[1], reverse=True):
        damage = checkpoint_damage(folder)
        if damage is None:
            return folder
        log.warning("skipping damaged checkpoint %s: %s", folder, damage)
    return None


def choose_resume_checkpoint(run_dir: str, registered) -> str | None:
    """``newest_intact_checkpoint`` chosen by rank 0 and handed to every rank (all load the same).

    ``registered``: ``ray.train.get_checkpoint()`` (a ``Checkpoint`` or None).
    """
    choice = None
    if dist.get_rank() == 0:
        choice = newest_intact_checkpoint(run_dir, registered.path if registered is not None else None)
    return collectives.broadcast_object(choice, src=0)


def set_aside_stale_ray_snapshot(run_dir: str) -> str | None:
    """Move Ray Train's checkpoint record aside when it names a folder that is gone.

    Ray refuses to start a run whose record names a missing checkpoint and asks for the whole
    run folder to be deleted; without the record it starts clean and the loop still resumes
    from the newest intact checkpoint on disk. Returns the name the record was moved to.
    """
    fs, path = filesystem(run_dir.rstrip("/"))
    snapshot = f"{path}/{RAY_SNAPSHOT_FILE}"
    try:
        with fs.open_input_stream(snapshot) as stream:
            record = json.loads(stream.read())
        names = [entry["checkpoint_dir_name"] for entry in record["checkpoint_results"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        names = None  # unreadable: Ray could not use it either
    if names is not None:
        infos = fs.get_file_info([f"{path}/{name}" for name in names])
        if all(info.type != pafs.FileType.NotFound for info in infos):
            return None
    stale = f"{RAY_SNAPSHOT_FILE}.stale"
    fs.move(snapshot, f"{path}/{stale}")
    log.warning("%s/%s names checkpoints that are gone: moved it to %s; resuming from the newest "
                "intact checkpoint on disk", run_dir, RAY_SNAPSHOT_FILE, stale)
    return stale


def _cause(err: BaseException) -> str:
    """The first rank's own exception inside DCP's ``CheckpointException`` (which names only the ranks)."""
    failures = getattr(err, "failures", None)
    if failures:
        failure = next(iter(failures.values()))
        err = failure[0] if isinstance(failure, tuple) else failure
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainState:
    """Restore model, optimizer, scheduler and RNG in place (any world size); return the train state."""
    record = read_train_state(directory)
    sharded = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    try:
        dcp.load(sharded, checkpoint_id=str(directory))
    except (CheckpointException, Exception) as err:  # DCP gathers every rank's failure (a BaseException)
        raise CheckpointError(
            f"checkpoint {directory} (step {record['train_state']['step']}) cannot be loaded: {_cause(err)} "
            "(a missing or unexpected key means the run's model config changed since it was saved: "
            "compare config.yaml with the run's config.attempt*.yaml)"
        ) from err
    set_model_state_dict(model, sharded["model"])
    set_optimizer_state_dict(model, optimizer, sharded["optimizer"])
    scheduler.load_state_dict(record["scheduler"])
    rng_file = directory / f"rng_rank{dist.get_rank()}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**record["train_state"])
