"""How a run trains (optimizer, schedule, distribution) and where it keeps its results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vla.eval.settings import CheckpointEvalConfig
from vla.typed_config import check


@dataclass
class TrainConfig:
    # Optimizer and schedule: AdamW, linear warmup, cosine decay to min_lr
    # AdamW's implementation: auto = fused on CUDA, foreach (multi-tensor) elsewhere
    optimizer: Literal["auto", "adamw_fused", "adamw_foreach", "adamw"] = "auto"
    lr: float = 2e-5
    min_lr: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    # Length: max_steps wins when > 0, else epochs over the training split
    epochs: int = 1
    max_steps: int = 0
    steps_per_epoch: int = 0  # 0: counted from the dataset before training starts
    # Validation, logging and checkpoints, every K optimizer steps (0 disables)
    val_every: int = 0
    val_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    # Evaluation of every K-th step's checkpoint as Ray tasks beside the workers (0 disables;
    # a multiple of checkpoint_every); what it runs: vla.eval.settings.CheckpointEvalConfig
    eval_every: int = 0
    eval: CheckpointEvalConfig = field(default_factory=CheckpointEvalConfig)
    # Distribution: one place configures it
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # < 1 on small nodes so the decode tasks keep a CPU
    # Compute precision of the sharded blocks: auto = bf16 on GPU, fp32 on CPU; fp16 adds
    # gradient scaling (GPUs without bf16, e.g. V100/T4). Gradient reduction stays fp32, the
    # head computes in fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # The sharded weights the optimizer updates: fp32 master weights, or bf16 (half the memory
    # of weights and optimizer state, but AdamW steps smaller than half a bf16 step are lost:
    # at lr 2e-5 most of them; only for models whose fp32 shards do not fit, with bf16 compute).
    weights: Literal["fp32", "bf16"] = "fp32"
    # What FSDP2 gathers at once: each vision and LM block (only one block's full weights in
    # memory at a time), or the whole model (one all-gather and one reduce-scatter per step:
    # small models, whose many collectives cost more in latency than in bytes, as on CPU)
    fsdp_unit: Literal["block", "model"] = "block"
    activation_checkpointing: bool = False  # recompute every vision and LM block in backward
    compile: Literal["auto", True, False] = "auto"  # torch.compile each block; auto = on CUDA only
    hsdp_replicas: int = 1  # > 1: replicate across this many groups (nodes), shard within
    tensor_parallel_size: int = 1  # > 1: split each LM decoder block over this many ranks (docs/cluster.md)
    max_failures: int = 0  # worker-group restarts from the latest checkpoint
    # > 0: elastic, a (re)started worker group takes what the cluster has, between min_workers
    # and num_workers (a node lost to preemption); DCP reshards the checkpoint to the new size.
    min_workers: int = 0
    # A worker group that cannot get its resources fails after (1 + this) x 60 s instead of
    # waiting forever; -1 waits forever (an autoscaling cluster still booting GPU nodes).
    worker_start_retries: int = 2
    seed: int = 0
    # Fault injection, to exercise restarts: raise once per run at this step (0: off)
    inject_failure_at_step: int = 0
    inject_kill_at_step: int = 0  # SIGKILL one worker once per run after this step's checkpoint

    def validate(self) -> None:
        check(self.lr > 0, "lr", "must be > 0")
        check(0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr]")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        check(self.grad_accum_steps >= 1, "grad_accum_steps", "must be >= 1")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.max_steps >= 0, "max_steps", "must be >= 0")
        check(self.steps_per_epoch >= 0, "steps_per_epoch", "must be >= 0")
        for key in ("val_every", "log_every", "checkpoint_every", "eval_every"):
            check(getattr(self, key) >= 0, key, "must be >= 0")
        check(
            not self.eval_every or (self.checkpoint_every and self.eval_every % self.checkpoint_every == 0),
            "eval_every",
            f"must be a multiple of checkpoint_every ({self.checkpoint_every}): evaluation reads checkpoints",
        )
        check(self.val_batches >= 1, "val_batches", "must be >= 1")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.weights == "fp32" or self.precision in ("auto", "bf16"), "weights",
              "bf16 weights need bf16 compute (train.precision auto or bf16)")
        check(self.hsdp_replicas >= 1, "hsdp_replicas", "must be >= 1")
        check(
            self.num_workers % self.hsdp_replicas == 0,
            "hsdp_replicas",
            f"must divide num_workers ({self.num_workers})",
        )
        check(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        check(self.fsdp_unit == "block" or self.tensor_parallel_size == 1, "fsdp_unit",
              "model gathers every block at once; tensor parallelism is for LMs too large for that (use block)")
        check(
            self.num_workers % (self.hsdp_replicas * self.tensor_parallel_size) == 0,
            "tensor_parallel_size",
            f"hsdp_replicas x tensor_parallel_size must divide num_workers ({self.num_workers})",
        )
        check(0 <= self.min_workers <= self.num_workers, "min_workers", f"must be in [0, num_workers ({self.num_workers})]")
        check(
            self.min_workers % (self.hsdp_replicas * self.tensor_parallel_size) == 0,
            "min_workers",
            "must be a multiple of hsdp_replicas x tensor_parallel_size",
        )
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(self.worker_start_retries >= -1, "worker_start_retries", "must be >= -1")
        check(self.inject_failure_at_step >= 0, "inject_failure_at_step", "must be >= 0")
        check(self.inject_kill_at_step >= 0, "inject_kill_at_step", "must be >= 0")


@dataclass
class RunConfig:
    name: str = "demo"  # re-running with the same name resumes from its latest checkpoint
    storage_path: str = "~/vla_runs"  # local path or s3:// / gs:// URI
    wandb_project: str = "vla"
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: offline without a key
    export: bool = True  # write a consolidated policy export at the end

    def validate(self) -> None:
        check(bool(self.name) and "/" not in self.name, "name", "must be a non-empty name without '/'")
        check(bool(self.storage_path), "storage_path", "must not be empty")
