"""Evaluation while training runs (``train.eval_every=K``), owned by rank 0.

Each checkpoint reported at a multiple of K steps is handed to one Ray task
(``vla.eval.checkpoint.evaluate_checkpoint``: closed loop in the environment of the training
data (the built-in simulator or MetaWorld, ``vla.eval.environments``), offline
metrics on the validation split, CALVIN where installed) that runs beside the FSDP workers
on spare resources (``train.eval.cpus`` / ``train.eval.gpus``). Training never waits for it:

- at most one evaluation is in flight; a checkpoint offered while one runs is skipped (logged),
  except the last one: when training ends, the latest skipped checkpoint is evaluated after
  the one in flight, so the final weights always get a record;
- the task starts at the next step's poll, after every rank's shards are in storage; a local
  checkpoint is first hard-linked into a snapshot folder, so Ray pruning old checkpoints
  (``train.keep_checkpoints``) cannot pull it away mid-read;
- an evaluation that raises, or runs past ``train.eval.timeout_s`` (then cancelled), is
  logged as a warning and an ``eval_failed`` record; training goes on;
- at the end of training the run waits for those evaluations (each at most
  ``train.eval.timeout_s``) so their records land.

Results are ``eval_*`` metrics written to ``metrics.jsonl`` with the step they scored
(``step``) and the step at which they came back (``eval_reported_at_step``), to wandb
against the ``eval/step`` axis, and to the run's plot (``metrics.png``: ``draw_success`` is its
closed-loop success panel, the offline metrics join the loss and pose-error panels).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train

from vla.config import Config
from vla.eval.checkpoint import SUCCESS_METRIC, evaluate_checkpoint
from vla.storage import is_uri
from vla.train.progress import RunLogger

log = logging.getLogger("vla.eval")

WANDB_STEP = "eval/step"
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


class CheckpointEvaluator:
    """``after_step`` every step (``poll`` + ``offer``), ``finish`` at the end; never raises."""

    def __init__(self, cfg: Config, run_dir: str, logger: RunLogger) -> None:
        settings = cfg.train.eval
        self.run_dir = run_dir
        self.run_dict = cfg.to_dict()
        self.logger = logger
        self.timeout_s = settings.timeout_s
        self.every = cfg.train.eval_every
        self.task = ray.remote(num_cpus=settings.cpus, num_gpus=settings.gpus, max_retries=0,
                               scheduling_strategy="DEFAULT")(evaluate_checkpoint)  # not in the workers' bundles
        self.pending: tuple[int, ray.train.Checkpoint] | None = None
        self.skipped: tuple[int, ray.train.Checkpoint] | None = None  # the latest checkpoint skipped
        self.in_flight: _InFlight | None = None
        self.current_step = 0
        if logger.wandb is not None:
            logger.wandb.define_metric(WANDB_STEP)
            logger.wandb.define_metric("eval/*", step_metric=WANDB_STEP)
        if settings.calvin_dataset:
            log.info("evaluation during training: CALVIN on %s when calvin_env is installed", settings.calvin_dataset)

    @classmethod
    def for_rank(cls, rank: int, cfg: Config, run_dir: str, logger: RunLogger | None) -> CheckpointEvaluator | None:
        """Rank 0's evaluator when ``train.eval_every`` is on, else None."""
        if rank != 0 or not cfg.train.eval_every or logger is None:
            return None
        return cls(cfg, run_dir, logger)

    def after_step(self, step: int, checkpoint_step: int) -> None:
        """Every optimizer step: ``poll``, then ``offer`` the checkpoint if one was reported at ``step``."""
        self.poll(step)
        if checkpoint_step == step and step % self.every == 0:
            self.offer(step)

    def offer(self, step: int) -> None:
        """After a checkpoint was reported at ``step``: queue it, or skip it while one is evaluated."""
        checkpoint = ray.train.get_checkpoint()  # the checkpoint just reported, as persisted
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
        except Exception as err:  # an evaluation problem never ends training
            log.warning("evaluation during training: %s: %s", type(err).__name__, err)

    def finish(self, step: int) -> None:
        """Evaluate what is queued, in flight and the latest skipped checkpoint (each bounded); the
        run's plot, drawn after this, then holds their records."""
        try:
            self._drain(step)
            if self.skipped is not None:
                self.pending, self.skipped = self.skipped, None
                self._drain(step)
        except Exception as err:  # an evaluation problem never ends training
            log.warning("evaluation during training: %s: %s", type(err).__name__, err)

    def _drain(self, step: int) -> None:
        """Start the queued evaluation and wait for the one in flight (at most ``timeout_s``)."""
        self.poll(step)
        if self.in_flight is not None:
            waited = time.monotonic() - self.in_flight.started
            ray.wait([self.in_flight.ref], timeout=max(0.0, self.timeout_s - waited))
            self.poll(step)
        if self.in_flight is not None:
            ray.cancel(self.in_flight.ref, force=True)
            self._fail("training ended and it ran past train.eval.timeout_s")

    def _start(self) -> None:
        step, checkpoint = self.pending
        self.pending = None
        checkpoint, snapshot_dir = snapshot(checkpoint, step)
        ref = self.task.remote(checkpoint, self.run_dir, self.run_dict)
        self.in_flight = _InFlight(step, ref, time.monotonic(), snapshot_dir)
        log.info("evaluating the checkpoint of step %d (Ray task)", step)

    def _collect(self) -> None:
        try:
            metrics = ray.get(self.in_flight.ref)
        except Exception as err:
            self._fail(f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}")
            return
        step = self._release()
        self.record(step, metrics)
        log.info("evaluation of step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _fail(self, reason: str) -> None:
        step = self._release()
        log.warning("evaluation of step %d failed (training goes on): %s", step, reason)
        self.record(step, {"eval_failed": 1.0})

    def _release(self) -> int:
        step, snapshot_dir = self.in_flight.step, self.in_flight.snapshot
        self.in_flight = None
        if snapshot_dir is not None:
            shutil.rmtree(snapshot_dir, ignore_errors=True)
        return step

    def record(self, step: int, metrics: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` line tagged with the step it scored, and the same on wandb."""
        values = {key: float(value) for key, value in metrics.items()}
        line = {"step": step, **values, "eval_reported_at_step": self.current_step}
        with self.logger.metrics_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        if self.logger.wandb is not None:
            named = {f"eval/{key.removeprefix('eval_')}": value for key, value in values.items()}
            self.logger.wandb.log({**named, WANDB_STEP: step})


def draw_success(ax, records: list[dict[str, float]]) -> bool:
    """Closed-loop success (with its 95% interval) against the step each record scored, on ``ax``
    (the success panel of ``vla.train.progress.plot_metrics``); False when no record has it."""
    scored = sorted((r["step"], r) for r in records if SUCCESS_METRIC in r)
    if not scored:
        return False
    steps = [step for step, _ in scored]
    rates = [r[SUCCESS_METRIC] for _, r in scored]
    low = [r[SUCCESS_METRIC] - r["eval_success_ci_low"] for _, r in scored]
    high = [r["eval_success_ci_high"] - r[SUCCESS_METRIC] for _, r in scored]
    ax.errorbar(steps, rates, yerr=[low, high], marker="o", capsize=3, label="closed-loop success (95% CI)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("closed-loop success rate")
    ax.legend()
    ax.grid(alpha=0.3)
    return True
