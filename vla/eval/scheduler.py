"""The one scheduler of checkpoint evaluations, used by training (``train.eval_every=K``) and by
sweeps (``sweep.closed_loop``).

Each checkpoint offered is handed to one Ray task (``vla.eval.checkpoint.evaluate_checkpoint``:
closed loop in the environment of the training data (the built-in simulator or MetaWorld,
``vla.eval.environments``), offline metrics on the validation split, CALVIN where installed)
that runs beside the training workers on spare resources (``train.eval.cpus`` /
``train.eval.gpus``). The scheduler never blocks unless asked to (``finish``):

- at most one evaluation is in flight; a checkpoint offered while one runs is skipped (logged),
  except the last one: ``finish`` evaluates the latest skipped checkpoint after the one in
  flight, so the final weights always get a record;
- the task starts at the next ``poll``; a local checkpoint is first hard-linked into a snapshot
  folder, so Ray pruning old checkpoints (``train.keep_checkpoints``) cannot pull it away mid-read;
- an evaluation that raises, or runs past ``train.eval.timeout_s`` (then cancelled), is logged
  as a warning and recorded as ``{"eval_failed": 1.0}``; the caller goes on;
- ``finish`` waits for what is queued and in flight (each at most ``train.eval.timeout_s``).

Training's rank 0 polls after every optimizer step and offers every K-th checkpoint; its
``record`` writes ``metrics.jsonl``, wandb and the run's plot (``vla.train.progress.RunLogger``).
A sweep trial's Train controller offers each reported checkpoint and calls ``finish`` at once,
so ASHA sees the score in the report of the checkpoint it scored (``vla.tune.scoring``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train

from vla.config import Config
from vla.eval.checkpoint import evaluate_checkpoint
from vla.storage import is_uri

log = logging.getLogger("vla.eval")

SNAPSHOT_PREFIX = ".eval_snapshot_step"


@dataclass
class _InFlight:
    step: int
    ref: ray.ObjectRef
    started: float
    snapshot: Path | None


def snapshot(checkpoint: ray.train.Checkpoint, step: int) -> tuple[ray.train.Checkpoint, Path | None]:
    """A hard-linked copy of a local checkpoint beside it (object storage: the checkpoint itself)."""
    if is_uri(checkpoint.path) or not os.path.isdir(checkpoint.path):
        return checkpoint, None
    source = Path(checkpoint.path)
    target = source.parent / f"{SNAPSHOT_PREFIX}{step:07d}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=os.link)
    return ray.train.Checkpoint(str(target)), target


Record = Callable[[int, dict[str, float], int], None]  # (step scored, metrics, step when they came back)


class CheckpointEvaluator:
    """``offer`` checkpoints, ``poll`` often, ``finish`` at the end; never raises."""

    def __init__(self, cfg: Config, run_dir: str, record: Record, *, offline: bool = True, calvin: bool = True) -> None:
        settings = cfg.train.eval
        self.run_dir = run_dir
        self.run_dict = cfg.to_dict()
        self.record = record
        self.options = {"offline": offline, "calvin": calvin}
        self.timeout_s = settings.timeout_s
        self.task = ray.remote(num_cpus=settings.cpus, num_gpus=settings.gpus, max_retries=0,
                               scheduling_strategy="DEFAULT")(evaluate_checkpoint)  # not in the workers' bundles
        self.pending: tuple[int, ray.train.Checkpoint] | None = None
        self.skipped: tuple[int, ray.train.Checkpoint] | None = None  # the latest checkpoint skipped
        self.in_flight: _InFlight | None = None
        self.current_step = 0
        if calvin and settings.calvin_dataset:
            log.info("evaluation of checkpoints: CALVIN on %s when calvin_env is installed", settings.calvin_dataset)

    def offer(self, step: int, checkpoint: ray.train.Checkpoint | None) -> None:
        """The checkpoint of ``step``: queued, or skipped while another is queued or evaluated."""
        if checkpoint is None:
            return
        if self.in_flight is not None or self.pending is not None:
            busy = self.in_flight.step if self.in_flight is not None else self.pending[0]
            log.info("evaluation of step %d still running: the checkpoint of step %d is skipped", busy, step)
            self.skipped = (step, checkpoint)
        else:
            self.pending, self.skipped = (step, checkpoint), None

    def poll(self, step: int) -> None:
        """Collect a finished evaluation, cancel an overdue one, start the queued one. Never blocks."""
        self.current_step = step
        try:
            if self.in_flight is not None:
                done, _ = ray.wait([self.in_flight.ref], timeout=0)
                if done:
                    self._collect()
                elif time.monotonic() - self.in_flight.started > self.timeout_s:
                    ray.cancel(self.in_flight.ref, force=True)
                    self._fail(f"it ran past train.eval.timeout_s={self.timeout_s:g} s and was cancelled")
            if self.in_flight is None and self.pending is not None:
                self._start()
        except Exception as err:  # an evaluation problem never ends the run
            log.warning("evaluation of checkpoints: %s: %s", type(err).__name__, err)

    def finish(self, step: int) -> None:
        """Evaluate what is queued, in flight and the latest skipped checkpoint (each bounded); the
        run's plot, drawn after this, then holds their records."""
        try:
            self._drain(step)
            if self.skipped is not None:
                self.pending, self.skipped = self.skipped, None
                self._drain(step)
        except Exception as err:  # an evaluation problem never ends the run
            log.warning("evaluation of checkpoints: %s: %s", type(err).__name__, err)

    def _drain(self, step: int) -> None:
        """Start the queued evaluation and wait for the one in flight (at most ``timeout_s``)."""
        self.poll(step)
        if self.in_flight is not None:
            waited = time.monotonic() - self.in_flight.started
            ray.wait([self.in_flight.ref], timeout=max(0.0, self.timeout_s - waited))
            self.poll(step)
        if self.in_flight is not None:
            ray.cancel(self.in_flight.ref, force=True)
            self._fail("it ran past train.eval.timeout_s at the end")

    def _start(self) -> None:
        step, checkpoint = self.pending
        self.pending = None
        checkpoint, snapshot_dir = snapshot(checkpoint, step)
        ref = self.task.remote(checkpoint, self.run_dir, self.run_dict, **self.options)
        self.in_flight = _InFlight(step, ref, time.monotonic(), snapshot_dir)
        log.info("evaluating the checkpoint of step %d (Ray task)", step)

    def _collect(self) -> None:
        try:
            metrics = ray.get(self.in_flight.ref)
        except Exception as err:
            self._fail(f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
            return
        step = self._release()
        self.record(step, {key: float(value) for key, value in metrics.items()}, self.current_step)
        log.info("evaluation of step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _fail(self, reason: str) -> None:
        step = self._release()
        log.warning("evaluation of step %d failed (the run goes on): %s", step, reason)
        self.record(step, {"eval_failed": 1.0}, self.current_step)

    def _release(self) -> int:
        step, snapshot_dir = self.in_flight.step, self.in_flight.snapshot
        self.in_flight = None
        if snapshot_dir is not None:
            shutil.rmtree(snapshot_dir, ignore_errors=True)
        return step
