"""What a run shows while it trains: progress lines, a metrics file, wandb, and a plot, and the
on-device metric sums and step timing they are made of.

Only rank 0 owns a ``RunLogger``. wandb runs offline when no API key is set, so a run never
fails for lack of network; the same metrics always land in ``metrics.jsonl`` too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vla.plots import plot_run_metrics
from vla.storage import exists, is_uri, read_bytes, upload
from vla.train import collectives

log = logging.getLogger("vla.train")

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
WANDB_EVAL_STEP = "eval/step"  # the x axis of evaluations on wandb: the step each one scored


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def peak_memory_mb() -> float:
    """This process's peak memory: GPU memory allocated on CUDA, else resident CPU memory."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``: host clocks then measure what the GPU did."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def lm_tokens_per_frame(model: torch.nn.Module, text_len: int) -> int:
    """Tokens the LM processes per frame: BOS, every view's vision tokens, the instruction
    (padded to ``text_len``), the action tokens and EOS (``vla.model.sequence.assemble``).

    Read off the backbone's config, so it also counts for a backbone still on the meta device.
    """
    cfg = model.config
    vision_tokens = model.backbone.vision_tokens(model.image_size)
    return 1 + cfg.num_views * vision_tokens + text_len + cfg.latent_num + 1


class MetricSums:
    """Weighted sums of metrics over micro-batches, kept on the device as detached tensors.

    Adding never waits for the device; ``mean_over_ranks`` is the one all-reduce and the one
    host read, made only on the steps that log, validate or report. Each batch weighs 1 unless
    ``add`` is given its ``weight`` (validation: the batch's predicted steps, so that validation
    and offline evaluation average the same way: over every predicted step inside an episode).
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.weight: torch.Tensor | float = 0.0

    def add(self, metrics: dict[str, torch.Tensor], weight: torch.Tensor | None = None) -> None:
        weight = weight.detach().float() if weight is not None else 1.0
        for key, value in metrics.items():
            value = value.detach().float() * weight
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.weight = self.weight + weight

    def mean_over_ranks(self) -> dict[str, float]:
        """The weighted mean of every metric over every batch added on every rank; then start over."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        device = self.sums[keys[0]].device
        weight = torch.as_tensor(self.weight, dtype=torch.float32, device=device).reshape(())
        totals = collectives.all_reduce(torch.stack([self.sums[key] for key in keys] + [weight]))
        *values, total_weight = totals.tolist()
        self.sums, self.weight = {}, 0.0
        return {key: value / total_weight if total_weight > 0 else 0.0 for key, value in zip(keys, values)}


class StepTimer:
    """Splits wall time between waiting for data and the rest of a step, and estimates the time left.

    The host runs ahead of a GPU, so ``window`` synchronizes the device first: the window's
    wall time then covers all the work queued in it. ``data_wait_s`` is the host's time blocked
    on the data iterator (the GPU idles for it only when the host is not already ahead);
    ``compute_s`` is the rest of the step. Time spent in ``excluded()`` (validation,
    checkpoints) counts in neither.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start a new measuring window."""
        self.data_s = 0.0
        self.excluded_s = 0.0
        self.samples = 0
        self.tokens = 0
        self.steps = 0
        self._start = time.perf_counter()

    def next_batch(self, batches: Iterator[Any]) -> Any:
        """The next item of ``batches`` (None at the end), timed as data wait."""
        start = time.perf_counter()
        item = next(batches, None)
        self.data_s += time.perf_counter() - start
        return item

    def computed(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens

    def step_done(self) -> None:
        self.steps += 1

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """Time that belongs to no step (validation, checkpoints): the steps' queued work ends first."""
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.excluded_s += time.perf_counter() - start

    def window(self, steps_left: int) -> dict[str, float]:
        """Rates since the last call (after the device finished), then start a new window."""
        synchronize(self.device)
        elapsed = max(1e-9, time.perf_counter() - self._start - self.excluded_s)
        steps = max(1, self.steps)
        per_step = elapsed / steps
        stats = {
            "samples_per_s": self.samples / elapsed,
            "tokens_per_s": self.tokens / elapsed,
            "data_wait_s": self.data_s / steps,
            "compute_s": max(0.0, elapsed - self.data_s) / steps,
            "step_time_s": per_step,
            "eta_s": per_step * steps_left,
            "peak_memory_mb": peak_memory_mb(),
        }
        self.reset()
        return stats


def wandb_mode(configured: str) -> str:
    if configured != "auto":
        return configured
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class RunLogger:
    """Rank 0's record of a run, kept in ``run_dir`` (a local path or an object-storage URI)."""

    def __init__(self, run_dir: str, run_name: str, wandb_project: str, mode: str, config: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.local_dir = Path(tempfile.mkdtemp(prefix="vla_run_")) if is_uri(run_dir) else Path(run_dir)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.local_dir / METRICS_FILE
        self.wandb = None
        if wandb_mode(mode) != "disabled":
            import wandb

            self.wandb = wandb.init(
                project=wandb_project,
                name=run_name,
                id=run_name,
                resume="allow",
                mode=wandb_mode(mode),
                dir=str(self.local_dir),
                config=config,
            )
            self.wandb.define_metric(WANDB_EVAL_STEP)  # evaluations arrive after their step: their own axis
            self.wandb.define_metric("eval/*", step_metric=WANDB_EVAL_STEP)

    def cut_after(self, step: int) -> None:
        """Drop the records of steps after ``step``: a run resumed there logs them again."""
        remote = f"{self.run_dir}/{METRICS_FILE}"
        if is_uri(self.run_dir) and exists(remote):
            self.metrics_path.write_bytes(read_bytes(remote))
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.is_file() else []
        kept = [line + "\n" for line in lines if (found := _step_of(line)) is not None and found <= step]
        partial = self.metrics_path.with_suffix(".partial")
        partial.write_text("".join(kept))
        partial.replace(self.metrics_path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def record_evaluation(self, step: int, metrics: dict[str, float], reported_at_step: int) -> None:
        """An evaluation of the checkpoint of ``step`` (``vla.eval.scheduler``): one ``metrics.jsonl``
        line tagged with the step it scored and the step it came back at; on wandb against the
        ``eval/step`` axis."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics, "eval_reported_at_step": reported_at_step}) + "\n")
        if self.wandb is not None:
            named = {f"eval/{key.removeprefix('eval_')}": value for key, value in metrics.items()}
            self.wandb.log({**named, WANDB_EVAL_STEP: step})

    def progress(self, step: int, total_steps: int, metrics: dict[str, float]) -> None:
        """One human-readable line: step, loss, lr, throughput, data/compute split, ETA."""
        parts = [f"step {step}/{total_steps}"]
        parts += [f"{k} {metrics[k]:.4f}" for k in ("loss", "val_loss", "pose_error") if k in metrics]
        if "lr" in metrics:
            parts.append(f"lr {metrics['lr']:.2e}")
        if "samples_per_s" in metrics:
            parts.append(f"{metrics['samples_per_s']:.1f} samples/s, {metrics['tokens_per_s']:.0f} tokens/s")
            parts.append(f"data {metrics['data_wait_s']:.3f}s + compute {metrics['compute_s']:.3f}s per step")
            parts.append(f"ETA {format_duration(metrics['eta_s'])}")
        log.info(" | ".join(parts))

    def sync(self) -> None:
        """Upload the local record when the run lives on object storage."""
        if is_uri(self.run_dir):
            upload(self.metrics_path, f"{self.run_dir}/{METRICS_FILE}")

    def finish(self) -> Path:
        """Plot the curves, close wandb, upload; returns the plot's local path."""
        plot = plot_run_metrics(read_metrics(self.metrics_path), self.local_dir / PLOT_FILE)
        if self.wandb is not None:
            self.wandb.finish()
        if is_uri(self.run_dir):
            upload(plot, f"{self.run_dir}/{PLOT_FILE}")
        self.sync()
        return plot


def _step_of(line: str) -> int | None:
    """The step of one metrics record; None for a line torn by a killed writer."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
