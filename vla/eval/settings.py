"""What an evaluation of a training checkpoint runs (``train.eval``): evaluation during
training (``train.eval_every``) and the closed-loop score of sweep trials both use it.

Kept free of torch and Ray: ``vla.train.config`` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vla.typed_config import check


@dataclass
class CheckpointEvalConfig:
    episodes: int = 24  # closed-loop episodes in the training data's environment (vla.eval.environments); 0 skips them
    offline_batches: int = 4  # batches of the validation split for offline metrics; 0 skips them
    calvin_dataset: str = ""  # a CALVIN dataset folder: its long-horizon protocol too (needs calvin_env)
    calvin_chains: int = 20  # CALVIN chains of 5 subtasks per evaluation
    cpus: float = 0.5  # CPUs of the evaluation task (spare CPUs beside the training workers)
    gpus: float = 0.0  # GPUs of the evaluation task
    timeout_s: float = 900.0  # an evaluation running longer is cancelled and logged as failed
    seed: int = 0  # scene seeds start at vla.eval.environments.EVAL_SEED_OFFSET + seed

    def validate(self) -> None:
        for key in ("episodes", "offline_batches", "calvin_chains"):
            check(getattr(self, key) >= 0, key, "must be >= 0")
        check(self.cpus > 0, "cpus", "must be > 0")
        check(self.gpus >= 0, "gpus", "must be >= 0")
        check(self.timeout_s > 0, "timeout_s", "must be > 0")
